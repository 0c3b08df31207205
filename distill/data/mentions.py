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
         rng: random.Random, names: frozenset[str] = frozenset()) -> tuple[list[str], list[str], int]:
    """Each mention, with probability ``p``, becomes another mention of its type from ``bank``; returns
    (words, tags, words swapped in). Unswapped mentions keep their own tags; a type whose ``B-X`` /
    ``I-X`` tags are not all in ``names`` (when given) is never swapped."""
    out_words, out_tags, last, swapped = [], [], 0, 0
    for start, end, kind in spans(tags):
        out_words += words[last:start]
        out_tags += tags[last:start]
        mention, mention_tags = tuple(words[start:end]), tags[start:end]
        others = bank.get(kind, [])
        taggable = not names or {f"B-{kind}", f"I-{kind}"} <= names
        if others and taggable and rng.random() < p:
            pick = others[rng.randrange(len(others))]
            if pick == mention and len(others) > 1:
                pick = others[(others.index(pick) + 1) % len(others)]
            if pick != mention:
                mention, mention_tags = pick, [f"B-{kind}"] + [f"I-{kind}"] * (len(pick) - 1)
                swapped += len(pick)
        out_words += list(mention)
        out_tags += list(mention_tags)
        last = end
    return out_words + words[last:], out_tags + tags[last:], swapped


def mention_texts(rows: list[tuple[list[str], list[str]]]) -> set[tuple[str, ...]]:
    """The lower-cased words of every mention (any type) in (words, tag names) rows: a test mention
    found here was *seen* in training."""
    return {tuple(w.lower() for w in words[start:end]) for words, tags in rows for start, end, _ in spans(tags)}
