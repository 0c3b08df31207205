"""Sentence pairs for next-sentence prediction (BERT's second pre-training objective).

Each document (a raw text) is split into sentences and walked from the start: segment A takes
consecutive sentences up to half of the ``max_length − 3`` token budget (one pair in ten: up to a random
length instead, so short A segments occur, as in BERT; always at least one sentence), segment
B then is, with probability ½, the sentences that follow A in the same document (label 0, "is next"),
otherwise sentences from a random other document of the same map batch (label 1, "random"), up to the
rest of the budget; the walk goes on after A's sentences. A row is ``[CLS] A [SEP] B [SEP]`` with
``token_type_ids`` 0 on ``[CLS] A [SEP]`` and 1 on ``B [SEP]``; an over-long pair drops tokens from the
end of its longer segment. Deterministic per ``seed`` and document; cached by ``datasets``.

Written here because transformers removed its NSP dataset (``TextDatasetForNextSentencePrediction``)
and no library builds NSP pairs from a ``datasets`` split.
"""

from __future__ import annotations

import functools
import hashlib
import random
import re

import datasets

from distill.data.corpus import TaskData
from distill.data.tokenize import IDS, MASK, tokenizer_key
from distill.errors import DistillError

VERSION = 1  # bump when the pairing below changes, so cached pairs are rebuilt
SENTENCE_END = re.compile(r"(?<=[.!?])\s+|<br\s*/?>\s*(?:<br\s*/?>\s*)*")
FEATURES = datasets.Features({"input_ids": IDS, "attention_mask": MASK, "token_type_ids": MASK,
                              "next_sentence_label": datasets.Value("int64"), "idx": datasets.Value("int64"),
                              "truncated": datasets.Value("bool")})


def _sentences(text: str) -> list[str]:
    return [s.strip() for s in SENTENCE_END.split(text) if s and s.strip()]


def _take(sentences: list[list[int]], start: int, budget: int) -> tuple[list[int], int]:
    """Ids of sentences[start:end] within ``budget`` tokens (always at least one sentence), and end."""
    ids, end = [], start
    while end < len(sentences) and (not ids or len(ids) + len(sentences[end]) <= budget):
        ids += sentences[end]
        end += 1
    return ids, end


def _fit(a: list[int], b: list[int], budget: int) -> tuple[list[int], list[int]]:
    while len(a) + len(b) > budget:
        if len(a) >= len(b):
            a = a[:-1]
        else:
            b = b[:-1]
    return a, b


def _encode_pairs(batch: dict, indices: list[int], tokenizer, max_length: int, seed: int) -> dict:
    split = [_sentences(t) for t in batch["text"]]
    flat = tokenizer([s for doc in split for s in doc], add_special_tokens=False, verbose=False)["input_ids"]
    docs, at = [], 0
    for doc in split:
        docs.append(flat[at:at + len(doc)])
        at += len(doc)
    budget = max_length - 3
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    out = {k: [] for k in FEATURES}
    texts = [o for o in range(len(docs)) if docs[o]]  # documents a random segment B may come from
    for d, (doc, index) in enumerate(zip(docs, indices)):
        rng = random.Random(f"{seed}|{index}")
        others = [o for o in texts if o != d]
        start = 0
        while start < len(doc) - 1:
            a, end = _take(doc, start, max(budget // 2, 1) if rng.random() < 0.9 else rng.randint(1, budget))
            if rng.random() < 0.5 or not others:
                b, _ = _take(doc, end, budget - len(a))
                label = 0 if b else None
            else:
                other = docs[rng.choice(others)]
                b, _ = _take(other, rng.randrange(len(other)), budget - len(a))
                label = 1
            start = end
            if label is None:  # A reached the document's end: no next sentence to pair with
                break
            out["truncated"].append(len(a) + len(b) > budget)
            a, b = _fit(a, b, budget)
            ids = [cls, *a, sep, *b, sep]
            out["input_ids"].append(ids)
            out["attention_mask"].append([1] * len(ids))
            out["token_type_ids"].append([0] * (len(a) + 2) + [1] * (len(b) + 1))
            out["next_sentence_label"].append(label)
            out["idx"].append(0)  # numbered after the map, once the count is known
    return out


def _number(batch: dict, indices: list[int]) -> dict:
    return {"idx": indices}


def sentence_pairs(data: TaskData, tokenizer, max_length: int = 128, seed: int = 0) -> datasets.DatasetDict:
    """Every split of a raw ``TaskData`` → NSP pair rows (see the module doc)."""
    if data.task != "raw":
        raise DistillError(f"next-sentence pairs are built from raw text (data task raw), not task={data.task!r}")
    if max_length < 8:
        raise DistillError(f"data.max_length={max_length} leaves no room for a sentence pair; use at least 8")
    out = {}
    for split, ds in data.splits.items():
        key = hashlib.sha256(f"{ds._fingerprint}|{tokenizer_key(tokenizer)}|{max_length}|{seed}|pairs|{VERSION}"
                             .encode()).hexdigest()[:16]
        pairs = ds.map(functools.partial(_encode_pairs, tokenizer=tokenizer, max_length=max_length, seed=seed),
                       batched=True, batch_size=1000, with_indices=True, remove_columns=ds.column_names,
                       features=FEATURES, new_fingerprint=key, desc=f"sentence pairs {data.name} {split}")
        if len(pairs) == 0:
            raise DistillError(f"{data.name} {split}: no document has two sentences; NSP needs running text")
        out[split] = pairs.map(_number, batched=True, with_indices=True, new_fingerprint=key[::-1])
    return datasets.DatasetDict(out)
