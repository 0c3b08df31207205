"""Deterministic splits: exact-duplicate removal and train/validation/test carved by a stable hash.

Every row has a *key* (its text; a sentence pair or a token list joined with ``\\x1f``). Rows whose
*normalised* keys are equal form a group; a group is never split across train/validation/test, so a
review that appears twice with different spacing or case cannot leak from train into test.

Splits are carved by sorting groups on ``blake2b(normalised key)`` (same on every run, machine and
Python version, unlike ``hash``) and filling test, then validation, up to ``ceil(fraction * rows)``;
the rest is train. Every split is stored in hash order, so "the first N rows" of a split is a
deterministic sample that mixes labels even when the source file is sorted by label.
"""

from __future__ import annotations

import hashlib
import math
import unicodedata
from collections.abc import Sequence

from distill.errors import DistillError

KEY_SEPARATOR = "\x1f"  # joins pair texts / word lists; str.split() treats it as whitespace


def normalise(key: str) -> str:
    """Unicode NFKC, case-folded, whitespace runs collapsed to one space."""
    return " ".join(unicodedata.normalize("NFKC", key).casefold().split())


def _hash(norm: str) -> int:
    return int.from_bytes(hashlib.blake2b(norm.encode("utf-8"), digest_size=8).digest(), "big")


def stable_hash(key: str) -> int:
    """A 64-bit hash of ``normalise(key)``, identical on every machine and run."""
    return _hash(normalise(key))


def drop_duplicates(keys: Sequence[str]) -> list[int]:
    """Indices of the first occurrence of every exact key, in input order."""
    seen: set[str] = set()
    keep = []
    for i, key in enumerate(keys):
        if key not in seen:
            seen.add(key)
            keep.append(i)
    return keep


def hash_order(keys: Sequence[str], norm: Sequence[str] | None = None) -> list[int]:
    """Indices sorted by (hash of normalised key, normalised key, position): a stable shuffle."""
    norm = norm if norm is not None else [normalise(k) for k in keys]
    hashes = [_hash(n) for n in norm]
    return sorted(range(len(keys)), key=lambda i: (hashes[i], norm[i], i))


def carve(keys: Sequence[str], fractions: Sequence[tuple[str, float]], rest: str = "train") -> dict[str, list[int]]:
    """Split row indices into ``fractions`` (filled in the order given) and ``rest``.

    Each named split gets at least ``ceil(fraction * len(keys))`` rows (more only when a group of
    normalised duplicates sits on the boundary); groups never straddle splits. Every returned list
    is in hash order.
    """
    norms = [normalise(k) for k in keys]
    order = hash_order(keys, norms)
    targets = [(name, math.ceil(round(f * len(keys), 6))) for name, f in fractions]
    out: dict[str, list[int]] = {name: [] for name, _ in fractions}
    out[rest] = []
    slot, last_norm = 0, None
    for i in order:
        norm = norms[i]
        # move on to the next split only at a group boundary
        while slot < len(targets) and len(out[targets[slot][0]]) >= targets[slot][1] and norm != last_norm:
            slot += 1
        out[targets[slot][0] if slot < len(targets) else rest].append(i)
        last_norm = norm
    return out


def check_fractions(test_fraction: float | None, validation_fraction: float) -> None:
    """Fractions must leave rows for every split."""
    total = (test_fraction or 0.0) + validation_fraction
    if test_fraction is not None and not 0 < test_fraction < 1:
        raise DistillError(f"test_fraction={test_fraction} must be between 0 and 1 (e.g. 0.2)")
    if not 0 < validation_fraction < 1:
        raise DistillError(f"validation_fraction={validation_fraction} must be between 0 and 1 (e.g. 0.1)")
    if total >= 0.9:
        raise DistillError(
            f"test_fraction + validation_fraction = {total:g} leaves under 10% for train; lower them"
        )
