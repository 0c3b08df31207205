"""``TaskData`` and the one path every source takes: validate → label ids → dedupe → split → cache.

A source only reads its rows (``read()`` → ``{split: Table}``); ``build`` does the rest, writes the
result with ``save_to_disk`` into ``$DISTILL_CACHE/data/<name>-<key>`` (temp dir + rename, so an
error never leaves half a dataset) and returns memory-mapped datasets loaded from there. Datasets
backed by files are what lets ``Dataset.map`` (tokenization) cache its results across runs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import datasets

from distill.atomic import atomic_dir, check_writable
from distill.data.labels import encode_labels
from distill.data.splits import KEY_SEPARATOR, carve, check_fractions, drop_duplicates, hash_order, normalise
from distill.errors import DistillError

log = logging.getLogger(__name__)

TASKS = ("sequence", "token", "raw")
SPLITS = ("train", "validation", "test")
FORMAT_VERSION = 1  # bump when the split/dedupe rules change, so old caches are not reused


@dataclass
class TaskData:
    """A corpus ready for tokenization.

    ``splits`` has "train", "validation", "test" (raw text: "train", "validation"); columns are
    sequence: "text" (str), optional "text_pair" (str), "label" (int id into ``label_names``);
    token: "tokens" (list[str]), "tags" (list[int]); raw: "text".
    """

    splits: datasets.DatasetDict
    label_names: list[str]
    task: str
    name: str = ""
    stats: dict[str, int] = field(default_factory=dict)  # rows_read, duplicates_dropped, ...


def train_texts(data: TaskData) -> list[str]:
    """The training split as plain text (a token task's words joined by spaces): what vocabulary
    trimming keeps tokens for and a pruned student ranks the teacher's parts on."""
    train = data.splits["train"]
    return list(train["text"]) if "text" in train.column_names else [" ".join(t) for t in train["tokens"]]


@dataclass
class Table:
    """Rows of one split as read from a source, not yet checked. ``origin`` names it in errors."""

    columns: dict[str, list]
    origin: str
    label_names: list[str] | None = None  # published names (a hub ClassLabel); ids index them
    renamed: dict[str, str] = field(default_factory=dict)  # canonical column → the user's name


def cache_dir(sub: str = "", write: bool = False) -> Path:
    """``$DISTILL_CACHE`` (or ``~/.cache/distill``), or its folder ``sub``. ``write``: made and proven
    writable first, so that an unwritable cache stops the run before the work whose result it would keep."""
    path = Path(os.path.expanduser(os.environ.get("DISTILL_CACHE", "~/.cache/distill"))) / sub
    return check_writable(path, "set DISTILL_CACHE to a writable dir") if write else path


def file_key(path: Path) -> dict:
    """What identifies a source file's content cheaply: resolved path, size, mtime."""
    stat = path.stat()
    return {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _check_text(values: list, column: str, origin: str, words: bool) -> None:
    """Text must be non-empty ``str`` (``words``: a non-empty list of non-empty ``str``)."""
    for row, value in enumerate(values, start=1):
        if words:
            ok = isinstance(value, list) and value and all(isinstance(w, str) and w.strip() for w in value)
            want = "a non-empty list of words"
        else:
            ok = isinstance(value, str) and value.strip() != ""
            want = "non-empty text"
        if not ok:
            raise DistillError(
                f"{origin} row {row}: column {column!r} holds {value!r} ({type(value).__name__}), not {want}; "
                "fix that row or point text_column at the right column"
            )


def _keys(columns: dict[str, list], task: str) -> list[str]:
    if task == "token":
        return [KEY_SEPARATOR.join(words) for words in columns["tokens"]]
    if "text_pair" in columns:
        return [a + KEY_SEPARATOR + b for a, b in zip(columns["text"], columns["text_pair"])]
    return list(columns["text"])


def _take(columns: dict[str, list], rows: list[int]) -> dict[str, list]:
    return {name: [values[i] for i in rows] for name, values in columns.items()}


def _features(columns: dict[str, list], task: str, label_names: list[str]) -> datasets.Features:
    feats = {}
    if task == "token":
        feats["tokens"] = datasets.List(datasets.Value("string"))
        feats["tags"] = datasets.List(datasets.ClassLabel(names=label_names))
    else:
        feats["text"] = datasets.Value("string")
        if "text_pair" in columns:
            feats["text_pair"] = datasets.Value("string")
        if task == "sequence":
            feats["label"] = datasets.ClassLabel(names=label_names)
    return datasets.Features(feats)


def assemble(
    tables: dict[str, Table], task: str, label_names: list[str] | None,
    test_fraction: float, validation_fraction: float, dedupe: bool,
) -> tuple[datasets.DatasetDict, list[str], dict[str, int]]:
    """Checked, label-encoded, deduplicated, split, hash-ordered in-memory datasets."""
    if "train" not in tables:
        raise DistillError("a source needs a train split; pass train_file=...")
    columns: dict[str, dict[str, list]] = {}
    for split, table in tables.items():
        cols = table.columns
        if not next(iter(cols.values()), []):
            raise DistillError(f"{table.origin} has no rows; give a file with at least one example")
        text_col = "tokens" if task == "token" else "text"
        _check_text(cols[text_col], table.renamed.get(text_col, text_col), table.origin, words=task == "token")
        if "text_pair" in cols:
            _check_text(cols["text_pair"], table.renamed.get("text_pair", "text_pair"), table.origin, words=False)
        columns[split] = dict(cols)
    label_col = {"sequence": "label", "token": "tags"}.get(task)
    label_names = label_names if label_names is not None else tables["train"].label_names
    if label_col:
        names, ids = encode_labels({s: (t.columns[label_col], t.origin) for s, t in tables.items()},
                                   per_word=task == "token", label_names=label_names)
        for split in columns:
            columns[split][label_col] = ids[split]
    else:
        names = []
    stats = _drop_repeats(columns, task, text_col, dedupe)
    missing = [(s, f) for s, f in (("test", test_fraction), ("validation", validation_fraction))
               if s not in columns and f]
    pool = len(columns["train"][text_col])
    if missing:
        parts = carve(_keys(columns["train"], task), missing)
        train = columns.pop("train")
        for split, rows in parts.items():
            columns[split] = _take(train, rows)
    out = {}
    for split in [s for s in SPLITS if s in columns]:
        cols = columns[split]
        if not cols[text_col]:
            raise DistillError(
                f"the {split} split is empty ({pool} train rows{' before carving ' if missing else ''}"
                f"{' and '.join(s for s, _ in missing)}); give more rows or a separate {split} file"
            )
        cols = _take(cols, hash_order(_keys(cols, task)))
        out[split] = datasets.Dataset.from_dict(cols, features=_features(cols, task, names), split=split)
    return datasets.DatasetDict(out), names, stats


def _drop_repeats(columns: dict[str, dict[str, list]], task: str, text_col: str, dedupe: bool) -> dict[str, int]:
    """In place: exact duplicates within a split (the first kept, when ``dedupe``), and any text of a later
    split (test, validation) from the earlier ones — a test text must not also be trained or tuned on."""
    stats = {"rows_read": sum(len(next(iter(c.values()))) for c in columns.values()),
             "duplicates_dropped": 0, "overlap_dropped": 0}
    for split, cols in columns.items():
        if dedupe:
            keep = drop_duplicates(_keys(cols, task))
            stats["duplicates_dropped"] += len(cols[text_col]) - len(keep)
            columns[split] = _take(cols, keep)
    for later, earlier in (("test", "train"), ("test", "validation"), ("validation", "train")):
        if later in columns and earlier in columns:
            seen = {normalise(k) for k in _keys(columns[later], task)}
            keep = [i for i, k in enumerate(_keys(columns[earlier], task)) if normalise(k) not in seen]
            stats["overlap_dropped"] += len(columns[earlier][text_col]) - len(keep)
            columns[earlier] = _take(columns[earlier], keep)
    return stats


def save_dataset(path: Path, splits: datasets.DatasetDict, meta: dict) -> None:
    """Write into a temp dir beside ``path`` and rename: readers never see a partial dataset."""
    with atomic_dir(path, replace=False) as tmp:  # a cache entry another process wrote first is the same
        quiet = not datasets.utils.are_progress_bars_disabled()
        if quiet:
            datasets.utils.disable_progress_bars()
        try:
            splits.save_to_disk(str(tmp))
        finally:
            if quiet:
                datasets.utils.enable_progress_bars()
        (tmp / "distill.json").write_text(json.dumps(meta, indent=1))


def build(
    name: str, key: dict, read: Callable[[], dict[str, Table]], *, task: str,
    label_names: list[str] | None = None, limit: int | None = None,
    test_fraction: float = 0.2, validation_fraction: float = 0.1, dedupe: bool = True,
) -> TaskData:
    """Read (only on a cache miss), assemble, cache and return a source; ``limit`` caps each split."""
    if task not in TASKS:
        raise DistillError(f"task={task!r} is unknown; use one of {', '.join(TASKS)}")
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise DistillError(f"limit={limit!r} must be a positive number of rows per split (or null)")
    if task == "raw":
        test_fraction = 0.0
    check_fractions(test_fraction or None, validation_fraction)
    settings = {"key": key, "task": task, "label_names": label_names, "test": test_fraction,
                "validation": validation_fraction, "dedupe": dedupe, "format": FORMAT_VERSION}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]
    path = cache_dir("data") / f"{name}-{digest}"
    if not (path / "distill.json").is_file():
        cache_dir("data", write=True)
        splits, names, stats = assemble(read(), task, label_names, test_fraction, validation_fraction, dedupe)
        save_dataset(path, splits, {"name": name, "task": task, "label_names": names, "stats": stats})
    meta = json.loads((path / "distill.json").read_text())
    splits = datasets.load_from_disk(str(path))
    stats = dict(meta["stats"])
    if limit is not None:
        splits = datasets.DatasetDict({s: d.select(range(min(limit, len(d)))) for s, d in splits.items()})
    sizes = " / ".join(f"{s} {len(d):,}" for s, d in splits.items())
    log.info("data %s (%s): %s rows read, %s exact duplicates dropped, %s dropped as in a later split; %s%s",
             name, task, f"{stats['rows_read']:,}", stats["duplicates_dropped"], stats["overlap_dropped"],
             sizes, f" (limit {limit})" if limit is not None else "")
    return TaskData(splits, list(meta["label_names"]), task, name=name, stats=stats)
