"""Tokenization with the teacher's tokenizer, cached by ``datasets`` across runs.

``tokenize`` runs one ``Dataset.map(batched=True)`` per split with an explicit fingerprint built
from the split's own fingerprint, the tokenizer's vocabulary/normaliser (not its mutable
truncation state, which would change the hash after the first call) and ``max_length``. Sources
are memory-mapped files, so ``map`` writes ``cache-<fingerprint>.arrow`` beside them and a second
run loads it instead of tokenizing; ``datasets`` writes to a temp file and renames, so an error
leaves nothing half-written.

Output columns (all ints, one row per example; raw text: one row per chunk):
    input_ids (T,), attention_mask (T,), token_type_ids (T,), idx (row within split), truncated,
    labels: int (sequence) | (T,) with -100 on specials and non-first sub-tokens (token) | absent (raw),
    word_ids (T,), -1 for specials (token tasks only),
    gold: 1 = a human label, 0 = a teacher-labelled augmented row (only where the split has ``gold``),
    teacher_input_ids, teacher_attention_mask (T_t,) (+ teacher_token_type_ids where its tokenizer makes
    them; token tasks: teacher_word_index (T,)): only with ``teacher_tokenizer``, a teacher of another
    vocabulary (see ``distill.models.foreign``).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import statistics
from pathlib import Path

import datasets

from distill.data.corpus import TaskData
from distill.errors import DistillError
from distill.outputs import IGNORE_INDEX

log = logging.getLogger(__name__)

VERSION = 2  # bump when the encoding below changes, so old cache files are not reused
IDS = datasets.List(datasets.Value("int32"))
MASK = datasets.List(datasets.Value("int8"))


def tokenizer_key(tokenizer) -> str:
    """A hash of what decides the token ids: class, vocab, normaliser, specials — not call state."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise DistillError(f"{type(tokenizer).__name__} is a slow tokenizer; load a fast one (use_fast=True)")
    spec = json.loads(backend.to_str())
    spec.pop("truncation", None)  # set by every call with truncation=True
    spec.pop("padding", None)
    spec["class"] = type(tokenizer).__name__
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def _truncated(encoding) -> list[bool]:
    return [bool(e.overflowing) for e in encoding.encodings]


def _encode_sequence(batch: dict, indices: list[int], tokenizer, max_length: int, teacher_tokenizer=None) -> dict:
    """Texts (and pairs) → ids; the longer side of a pair is cut first."""
    pair = batch.get("text_pair")
    enc = tokenizer(batch["text"], pair, truncation=True, max_length=max_length, return_token_type_ids=True)
    out = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
           "token_type_ids": enc["token_type_ids"], "labels": batch["label"], "idx": indices,
           "truncated": _truncated(enc)}
    if teacher_tokenizer is not None:
        out.update(_teacher_columns(teacher_tokenizer(batch["text"], pair, truncation=True, max_length=max_length),
                                    teacher_tokenizer))
    return _with_gold(batch, out)


def _teacher_columns(enc, teacher_tokenizer) -> dict:
    out = {"teacher_input_ids": enc["input_ids"], "teacher_attention_mask": enc["attention_mask"]}
    if "token_type_ids" in teacher_tokenizer.model_input_names:
        out["teacher_token_type_ids"] = enc["token_type_ids"]
    return out


def teacher_word_index(student_words: list[int | None], teacher_words: list[int | None]) -> list[int]:
    """For each student position, the teacher position of its word's first sub-token (-1: a special
    token, or a word the teacher's truncation cut off)."""
    first: dict[int, int] = {}
    for position, word in enumerate(teacher_words):
        if word is not None:
            first.setdefault(word, position)
    return [-1 if word is None else first.get(word, -1) for word in student_words]


def _with_gold(batch: dict, out: dict) -> dict:
    if "gold" in batch:  # augmented split: which rows carry a human label
        out["gold"] = batch["gold"]
    return out


def align_tags(word_ids: list[int | None], tags: list[int]) -> list[int]:
    """Per-word tags → per-sub-token labels: the tag on a word's first sub-token, -100 elsewhere."""
    labels, previous = [], None
    for word in word_ids:
        labels.append(IGNORE_INDEX if word is None or word == previous else tags[word])
        previous = word
    return labels


def _vanished(words: list[str], word_ids: list[int | None], truncated: bool) -> list[int]:
    """Words the tokenizer turned into no sub-token at all (U+200B, a lone combining accent): their
    tags would silently drop out of training and of the F1 (cut-off words at the end are truncation)."""
    seen = {w for w in word_ids if w is not None}
    last = max(seen, default=-1) if truncated else len(words) - 1
    return [i for i in range(last + 1) if i not in seen]


def _encode_token(batch: dict, indices: list[int], tokenizer, max_length: int, teacher_tokenizer=None) -> dict:
    """Word lists → sub-token ids, labels aligned to first sub-tokens, word ids kept (-1: special).
    A word that tokenizes to nothing is read as the tokenizer's unknown token, so it keeps its tag."""
    words = batch["tokens"]
    enc = tokenizer(words, is_split_into_words=True, truncation=True, max_length=max_length,
                    return_token_type_ids=True)
    truncated = _truncated(enc)
    empty = {i: _vanished(w, enc.word_ids(i), t) for i, (w, t) in enumerate(zip(words, truncated))}
    if any(empty.values()):
        lost = [words[i][j] for i, js in empty.items() for j in js]
        log.warning("%d word(s) tokenize to nothing (e.g. %r); read as %s so their tags still count",
                    len(lost), lost[0], tokenizer.unk_token)
        words = [[tokenizer.unk_token if j in empty[i] else w for j, w in enumerate(row)]
                 for i, row in enumerate(words)]
        enc = tokenizer(words, is_split_into_words=True, truncation=True, max_length=max_length,
                        return_token_type_ids=True)
    word_ids = [enc.word_ids(i) for i in range(len(batch["tokens"]))]
    out = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
           "token_type_ids": enc["token_type_ids"],
           "labels": [align_tags(w, tags) for w, tags in zip(word_ids, batch["tags"])],
           "word_ids": [[-1 if i is None else i for i in w] for w in word_ids],
           "idx": indices, "truncated": _truncated(enc)}
    if teacher_tokenizer is not None:
        out.update(_teacher_token_columns(batch["tokens"], word_ids, out["labels"], teacher_tokenizer, max_length))
    return _with_gold(batch, out)


def _teacher_token_columns(words: list[list[str]], word_ids: list, labels: list, teacher_tokenizer,
                           max_length: int) -> dict:
    """The teacher's own encoding of the words (a word its tokenizer drops is read as its unknown token,
    as for the student) and, per student position, where the teacher's logits for that word sit."""
    def encode(rows):
        return teacher_tokenizer(rows, is_split_into_words=True, truncation=True, max_length=max_length)

    t = encode(words)
    empty = {i: _vanished(w, t.word_ids(i), cut) for i, (w, cut) in enumerate(zip(words, _truncated(t)))}
    if any(empty.values()):
        unk = teacher_tokenizer.unk_token
        t = encode([[unk if j in empty[i] else w for j, w in enumerate(row)] for i, row in enumerate(words)])
    index = [teacher_word_index(w, t.word_ids(i)) for i, w in enumerate(word_ids)]
    lost = sum(1 for row, labs in zip(index, labels) for k, lab in zip(row, labs) if lab != IGNORE_INDEX and k < 0)
    if lost:
        log.warning("%d labelled word(s) lie past the teacher's max_length %d in its own tokens: the KD loss skips "
                    "them and the teacher's score counts them as missed; raise data.max_length", lost, max_length)
    return {**_teacher_columns(t, teacher_tokenizer), "teacher_word_index": index}


def _encode_raw(batch: dict, tokenizer, max_length: int) -> dict:
    """Each text → consecutive chunks of up to ``max_length`` tokens, each with [CLS] … [SEP]."""
    enc = tokenizer(batch["text"], truncation=True, max_length=max_length, return_overflowing_tokens=True,
                    return_token_type_ids=True)
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
            "token_type_ids": enc["token_type_ids"], "truncated": [False] * len(enc["input_ids"])}


def _add_idx(batch: dict, indices: list[int]) -> dict:
    return {"idx": indices}


def _features(task: str, gold: bool = False, teacher_tokenizer=None) -> datasets.Features:
    """Column types of the map output (ids as int32 on disk; the collator makes int64 tensors)."""
    feats = {"input_ids": IDS, "attention_mask": MASK, "token_type_ids": MASK}
    if teacher_tokenizer is not None:
        feats.update(teacher_input_ids=IDS, teacher_attention_mask=MASK)
        if "token_type_ids" in teacher_tokenizer.model_input_names:
            feats["teacher_token_type_ids"] = MASK
        if task == "token":
            feats["teacher_word_index"] = IDS
    if gold:
        feats["gold"] = datasets.Value("int8")
    if task == "sequence":
        feats["labels"] = datasets.Value("int64")
    elif task == "token":
        feats["labels"] = datasets.List(datasets.Value("int64"))
        feats["word_ids"] = IDS
    if task != "raw":  # raw chunks get idx in a second pass, once their number is known
        feats["idx"] = datasets.Value("int64")
    feats["truncated"] = datasets.Value("bool")
    return datasets.Features(feats)


def tokenize(data: TaskData, tokenizer, max_length: int = 128, teacher_tokenizer=None) -> datasets.DatasetDict:
    """``TaskData`` → tokenized ``DatasetDict`` (columns in the module docstring); cached on disk.
    ``teacher_tokenizer``: a teacher of another vocabulary also gets its own encoding of every row."""
    if not isinstance(max_length, int) or max_length < 4:
        raise DistillError(f"max_length={max_length!r} must be an integer of at least 4 tokens")
    limit = getattr(tokenizer, "model_max_length", None) or 0
    if 0 < limit < 10**6 and max_length > limit:
        raise DistillError(f"max_length={max_length} exceeds the tokenizer's model_max_length {limit}; lower it")
    key = tokenizer_key(tokenizer)
    teacher_limit = getattr(teacher_tokenizer, "model_max_length", None) or 0
    if 0 < teacher_limit < 10**6 and max_length > teacher_limit:
        raise DistillError(f"max_length={max_length} exceeds the teacher tokenizer's model_max_length {teacher_limit}; "
                           "lower data.max_length")
    if teacher_tokenizer is not None:
        if data.task not in ("sequence", "token"):
            raise DistillError(f"a teacher with its own tokenizer distils sequence or token tasks, not {data.task}")
        key += "|teacher " + tokenizer_key(teacher_tokenizer)
    out = {}
    for split, ds in data.splits.items():
        fingerprint = hashlib.sha256(
            f"{ds._fingerprint}|{key}|{max_length}|{data.task}|{VERSION}".encode()).hexdigest()[:16]
        cached = bool(ds.cache_files) and _cache_exists(ds, fingerprint)
        desc = f"tokenizing {data.name or 'data'} {split}"
        if data.task == "raw":
            chunks = ds.map(functools.partial(_encode_raw, tokenizer=tokenizer, max_length=max_length),
                            batched=True, remove_columns=ds.column_names, new_fingerprint=fingerprint,
                            features=_features("raw"), desc=desc)
            out[split] = chunks.map(_add_idx, batched=True, with_indices=True, new_fingerprint=fingerprint[::-1],
                                    desc=f"indexing {data.name} {split}")
        else:
            encode = _encode_token if data.task == "token" else _encode_sequence
            out[split] = ds.map(functools.partial(encode, tokenizer=tokenizer, max_length=max_length,
                                                  teacher_tokenizer=teacher_tokenizer),
                                batched=True, with_indices=True, remove_columns=ds.column_names,
                                new_fingerprint=fingerprint,
                                features=_features(data.task, "gold" in ds.column_names, teacher_tokenizer),
                                desc=desc)
        log.debug("%s %s: %s", data.name, split, "loaded from the datasets cache" if cached else "tokenized")
    return datasets.DatasetDict(out)


def _cache_exists(ds: datasets.Dataset, fingerprint: str) -> bool:
    try:
        return os.path.exists(ds._get_cache_file_path(fingerprint))
    except Exception:  # private API: if it moves, only the debug line is lost
        return False


def lengths(ds: datasets.Dataset) -> list[int]:
    """Token count per row, read from the Arrow column (no Python lists of ids)."""
    import pyarrow.compute as pc

    column = ds.with_format("arrow")["input_ids"]
    return pc.list_value_length(column).to_pylist()


def summarize(data: TaskData, tokenized: datasets.DatasetDict) -> str:
    """One line for the start of a run: rows per split, train label counts, tokens, truncation."""
    rows = ", ".join(f"{s} {len(d):,}" for s, d in tokenized.items())
    if data.task == "raw":
        docs = sum(len(d) for d in data.splits.values())
        rows = f"{rows} (chunks of {docs:,} texts)"
    parts = [f"data {data.name or '?'} ({data.task}): {rows}"]
    train = data.splits.get("train")
    if train is not None and data.label_names:
        if data.task == "token":
            counts = [0] * len(data.label_names)
            for tags in train["tags"]:
                for t in tags:
                    counts[t] += 1
            named = [(n[2:], c) for n, c in zip(data.label_names, counts) if n.startswith("B-")] or \
                [(n, c) for n, c in zip(data.label_names, counts)]
            parts.append("train entities " + ", ".join(f"{n} {c:,}" for n, c in named))
        else:
            counts = [0] * len(data.label_names)
            unlabelled = 0
            gold = train["gold"] if "gold" in train.column_names else [1] * len(train)
            for label, human in zip(train["label"], gold):
                if label < 0 or not human:  # a transfer-set or augmented row: the teacher labels it
                    unlabelled += 1
                else:
                    counts[label] += 1
            parts.append("train labels " + ", ".join(f"{n} {c:,}" for n, c in zip(data.label_names, counts))
                         + (f", teacher-labelled {unlabelled:,}" if unlabelled else ""))
    all_lengths = [n for d in tokenized.values() for n in lengths(d)]
    truncated = sum(sum(d["truncated"]) for d in tokenized.values())
    if all_lengths:
        parts.append(f"tokens mean {statistics.fmean(all_lengths):.1f}, max {max(all_lengths)}")
        parts.append(f"truncated {100 * truncated / len(all_lengths):.1f}%")
    return "; ".join(parts)


TRAINED_TOKENS = "trained_tokens.json"


def write_trained_tokens(out_dir: str | Path, input_ids) -> Path:
    """What a student's embedding rows were trained on, for vocabulary trimming (``distill.vocab_trim``):
    ``out_dir/trained_tokens.json``: {token id: occurrences} over ``input_ids`` (an arrow list column or
    a list of id lists: the tokenized training rows, augmented ones included)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    column = input_ids if isinstance(input_ids, (pa.Array, pa.ChunkedArray)) else pa.array(input_ids)
    counts = pc.value_counts(pc.list_flatten(column)).to_pylist()
    path = Path(out_dir) / TRAINED_TOKENS
    tmp = path.with_suffix(".tmp")  # renamed into place: a crash never leaves half a file
    tmp.write_text(json.dumps({"counts": {str(c["values"]): c["counts"] for c in counts}}) + "\n")
    os.replace(tmp, path)
    return path


def read_trained_tokens(model_dir: str | Path) -> dict[int, int] | None:
    """The counts :func:`write_trained_tokens` wrote beside a model, or None where it has none."""
    path = Path(model_dir) / TRAINED_TOKENS
    if not path.is_file():
        return None
    try:
        return {int(i): int(n) for i, n in json.loads(path.read_text())["counts"].items()}
    except (ValueError, KeyError, TypeError, AttributeError):
        raise DistillError(f"{path} is not a token-count file distill wrote; delete it to trim to the "
                           "training texts alone") from None
