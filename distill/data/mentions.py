"""Entity-mention swaps for token tasks: a mention is replaced by another of the same type, tags rebuilt.

Tags are BIO names (``B-person``, ``I-person``, ``O``). A mention is a ``B-X`` word and the ``I-X``
words after it; a swapped-in mention of type X gets ``B-X I-X …`` again, so words and tags stay
aligned whatever the lengths. The bank holds the training split's own mentions only.
"""

from __future__ import annotations

import random


def spans(tags: list[str]) -> list[tuple[int, int, str]]:
    """[(start, end, type)] of BIO mentions (``end`` exclusive); a stray ``I-X`` starts a mention."""
    out, start, kind = [], None, None
    for i, tag in enumerate([*tags, "O"]):
        inside = tag.startswith("I-") and kind == tag[2:]
        if start is not None and not inside:
            out.append((start, i, kind))
            start, kind = None, None
        if tag.startswith(("B-", "I-")) and start is None:
            start, kind = i, tag[2:]
    return out


def mention_bank(rows: list[tuple[list[str], list[str]]]) -> dict[str, list[tuple[str, ...]]]:
    """{type: distinct mentions (word tuples)} over (words, tag names) rows, in first-seen order."""
    bank: dict[str, dict[tuple[str, ...], None]] = {}
    for words, tags in rows:
        for start, end, kind in spans(tags):
            bank.setdefault(kind, {})[tuple(words[start:end])] = None
    return {kind: list(found) for kind, found in bank.items()}


def swap(words: list[str], tags: list[str], bank: dict[str, list[tuple[str, ...]]], p: float,
         rng: random.Random) -> tuple[list[str], list[str]]:
    """Each mention, with probability ``p``, becomes another mention of its type from ``bank``."""
    out_words, out_tags, last = [], [], 0
    for start, end, kind in spans(tags):
        out_words += words[last:start]
        out_tags += tags[last:start]
        mention = tuple(words[start:end])
        others = bank.get(kind, [])
        if others and rng.random() < p:
            pick = others[rng.randrange(len(others))]
            if pick == mention and len(others) > 1:
                pick = others[(others.index(pick) + 1) % len(others)]
            mention = pick
        out_words += list(mention)
        out_tags += [f"B-{kind}"] + [f"I-{kind}"] * (len(mention) - 1)
        last = end
    return out_words + words[last:], out_tags + tags[last:]
