"""An unlabelled transfer set mixed into the labelled train split.

The teacher's soft targets label it; the hard-label loss skips it (label -100), so a student sees
many more examples of the task's input distribution than the labelled split holds. With the
teacher-logit cache the teacher runs on each transfer row once.

    data.transfer: {source: {_target_: distill.data.sources.imdb_raw}, max_rows: 20000}
"""

from __future__ import annotations

import hashlib
import logging
import re

import datasets

from distill.data.corpus import TaskData
from distill.errors import DistillError
from distill.outputs import IGNORE_INDEX

log = logging.getLogger(__name__)
SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def _key(text: str) -> str:
    """Case, punctuation and spacing ignored: what makes two texts "the same" for leakage."""
    return " ".join(re.sub(r"[^\w]+", " ", text.lower()).split())


def sentences(texts, min_words: int = 4, max_words: int = 60) -> list[str]:
    """Reviews → sentences of ``min_words``..``max_words`` words (MR-like units), de-duplicated."""
    seen, out = set(), []
    for text in texts:
        for sentence in SENTENCE_END.split(text.replace("<br />", " ")):
            sentence = " ".join(sentence.split())
            if min_words <= len(sentence.split()) <= max_words and _key(sentence) not in seen:
                seen.add(_key(sentence))
                out.append(sentence)
    return out


def with_transfer(data: TaskData, source: TaskData, max_rows: int | None = 20000, split_sentences: bool = True,
                  seed: int = 0) -> TaskData:
    """``data`` with ``max_rows`` unlabelled texts of ``source``'s train split appended to train.

    Texts also found in ``data``'s validation or test split are dropped, so the transfer set never
    leaks evaluation text. The pick is a stable hash order, the same on every machine.
    """
    if data.task != "sequence":
        raise DistillError(f"a transfer set needs a sequence-classification task, not task={data.task!r}")
    if "train" not in source.splits or "text" not in source.splits["train"].column_names:
        raise DistillError("the transfer source needs a train split with a 'text' column (e.g. imdb_raw)")
    texts = list(source.splits["train"]["text"])
    texts = sentences(texts) if split_sentences else [" ".join(t.split()) for t in texts if t.strip()]
    held_out = {_key(t) for s in ("validation", "test") if s in data.splits for t in data.splits[s]["text"]}
    texts = [t for t in texts if _key(t) not in held_out]
    texts.sort(key=lambda t: hashlib.sha256(f"{seed}|{t}".encode()).hexdigest())
    texts = texts[:max_rows] if max_rows else texts
    if not texts:
        raise DistillError("the transfer source gave no usable text; check its source and max_rows")
    train = data.splits["train"].cast_column("label", datasets.Value("int64"))  # ClassLabel has no -100
    extra = {"text": texts, "label": [IGNORE_INDEX] * len(texts)}
    for column in train.column_names:
        if column not in extra:
            extra[column] = [None] * len(texts)
    mixed = datasets.concatenate_datasets([train, datasets.Dataset.from_dict(extra, features=train.features)])
    # An in-memory dataset gets a random fingerprint; a stable one (labelled split + the picked
    # texts) lets the tokenization and the teacher-logit cache be reused by the next run or seed.
    digest = hashlib.sha256(train._fingerprint.encode())
    for text in texts:
        digest.update(text.encode() + b"\0")
    mixed = mixed.select(range(len(mixed)), new_fingerprint=digest.hexdigest()[:16])
    log.info("transfer set: %d unlabelled texts appended to %d labelled train rows", len(texts), len(train))
    splits = datasets.DatasetDict({**data.splits, "train": mixed})
    return TaskData(splits=splits, label_names=data.label_names, task=data.task, name=f"{data.name}+transfer",
                    stats=dict(getattr(data, "stats", {}) or {}))
