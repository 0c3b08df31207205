"""User data: local csv / tsv / json / jsonl / parquet / CoNLL files, and hub datasets.

Tables are read with ``datasets.load_dataset`` (its own cache under ``$DISTILL_CACHE/hf``), columns
renamed to the canonical ``text`` / ``text_pair`` / ``label`` (``tokens`` / ``tags`` for token
tasks), then handed to ``corpus.build``, which checks, splits and caches them like a shipped corpus.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import datasets

from distill.data.corpus import Table, TaskData, build, cache_dir, file_key
from distill.errors import DistillError

log = logging.getLogger(__name__)

FORMATS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet",
           ".conll": "conll", ".txt": "conll"}
HUB_SPLITS = {"train": "train", "validation": "validation", "valid": "validation", "dev": "validation",
              "test": "test"}


def read_conll(path: str | os.PathLike, origin: str | None = None) -> Table:
    """``token<TAB>tag`` per line, sentences separated by blank (or whitespace-only) lines.

    Returns a table with ``tokens`` and ``tags`` (one list per sentence). A line that is not a
    sentence break and lacks a token or a tag is an error naming its line number.
    """
    origin = origin or str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DistillError(f"{origin} is not UTF-8 text (byte {e.start}); re-save it as UTF-8") from None
    tokens, tags, words, labels = [], [], [], []
    for lineno, line in enumerate(text.split("\n"), start=1):
        line = line.rstrip("\r")
        if not line.strip() or line.startswith("-DOCSTART-"):
            if words:
                tokens.append(words)
                tags.append(labels)
                words, labels = [], []
            continue
        fields = line.split("\t") if "\t" in line else line.split()
        if len(fields) < 2 or not fields[0].strip() or not fields[-1].strip():
            raise DistillError(
                f"{origin} line {lineno}: expected 'token<TAB>tag', got {line!r}; fix or delete that line"
            )
        words.append(fields[0].strip())
        labels.append(fields[-1].strip())
    if words:
        tokens.append(words)
        tags.append(labels)
    return Table({"tokens": tokens, "tags": tags}, origin)


ARGUMENT = {"text": "text_column", "tokens": "text_column", "text_pair": "text_pair_column",
            "label": "label_column", "tags": "label_column"}


def _columns(ds: datasets.Dataset, wanted: dict[str, str | None], origin: str) -> dict[str, list]:
    """Pick ``{canonical: source column}`` out of ``ds``; a missing one is an error listing the columns."""
    out = {}
    for canonical, column in wanted.items():
        if column is None:
            continue
        if column not in ds.column_names:
            raise DistillError(
                f"{origin} has no column {column!r} (it has: {', '.join(ds.column_names)}); "
                f"set {ARGUMENT[canonical]}=... to the right one"
            )
        out[canonical] = ds[column]
    return out


def _wanted(task: str, text_column, text_pair_column, label_column) -> dict[str, str | None]:
    if task == "token":
        return {"tokens": text_column or "tokens", "tags": label_column or "tags"}
    wanted = {"text": text_column or "text", "text_pair": text_pair_column}
    if task == "sequence":
        wanted["label"] = label_column or "label"
    return wanted


def _read_file(path: Path, task: str, wanted: dict[str, str | None]) -> Table:
    origin = path.name
    if not path.is_file():
        raise DistillError(f"data file {str(path)!r} does not exist; check the path (relative to {os.getcwd()})")
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise DistillError(f"{origin}: unknown file type {path.suffix!r}; use {', '.join(sorted(FORMATS))}")
    if fmt == "conll":
        if task == "raw" and path.suffix.lower() == ".txt":  # plain text, one example per line
            lines = [line.strip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines()]
            return Table({"text": [line for line in lines if line]}, origin)
        if task != "token":
            raise DistillError(f"{origin} is read as token<TAB>tag lines; set task=token (or task=raw for .txt)")
        return read_conll(path, origin)
    kwargs = {"delimiter": "\t"} if path.suffix.lower() == ".tsv" else {}
    hf_cache = str(cache_dir("hf", write=True))  # outside the try: its one line is not a malformed file
    try:
        ds = datasets.load_dataset(fmt, data_files=str(path), split="train", cache_dir=hf_cache, **kwargs)
    except Exception as e:  # parser errors of pandas / pyarrow / json all mean "the file is malformed"
        if "corresponds to no data" in str(e):  # a header and no rows
            raise DistillError(f"{origin} has no rows; give a file with at least one example") from None
        cause = e
        while cause.__cause__ is not None or cause.__context__ is not None:  # datasets wraps the reader's error
            cause = cause.__cause__ or cause.__context__
            if isinstance(cause, UnicodeDecodeError):
                byte = cause.object[cause.start:cause.start + 1]
                raise DistillError(f"{origin} is not UTF-8 text (it holds byte {byte!r}); re-save it as UTF-8, "
                                   "e.g. iconv -f latin1 -t utf-8") from None
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        raise DistillError(f"could not read {origin} as {fmt} ({type(e).__name__}: {first}); fix the file") from None
    return Table(_columns(ds, wanted, origin), origin, renamed={c: col for c, col in wanted.items() if col})


def files(
    train_file: str | os.PathLike,
    validation_file: str | os.PathLike | None = None,
    test_file: str | os.PathLike | None = None,
    text_column: str | None = None,
    text_pair_column: str | None = None,
    label_column: str | None = None,
    label_names: list[str] | None = None,
    task: str = "sequence",
    limit: int | None = None,
    test_fraction: float = 0.2,
    validation_fraction: float = 0.1,
    dedupe: bool = True,
) -> TaskData:
    """Local files → ``TaskData``. Missing validation/test splits are carved from train by hash.

    ``text_column`` defaults to "text" ("tokens" for ``task="token"``), ``label_column`` to "label"
    ("tags"); labels may be names or int ids. ``.conll``/``.txt`` files are ``token<TAB>tag`` lines
    (``task="token"``); a ``.txt`` file with ``task="raw"`` is one text per line.
    """
    paths = {"train": train_file, "validation": validation_file, "test": test_file}
    paths = {split: Path(os.path.expanduser(str(p))) for split, p in paths.items() if p is not None}
    wanted = _wanted(task, text_column, text_pair_column, label_column)
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise DistillError(f"data file {missing[0]!r} does not exist; check the path (relative to {os.getcwd()})")
    key = {"files": {s: file_key(p) for s, p in paths.items()}, "columns": wanted}
    name = Path(paths["train"]).stem
    return build(
        f"files-{name}", key, lambda: {s: _read_file(p, task, wanted) for s, p in paths.items()},
        task=task, label_names=label_names, limit=limit, dedupe=dedupe,
        test_fraction=test_fraction, validation_fraction=validation_fraction,
    )


def _class_names(feature) -> list[str] | None:
    """Names of a ``ClassLabel`` feature, or of the ``ClassLabel`` inside a list feature."""
    names = getattr(feature, "names", None) or getattr(getattr(feature, "feature", None), "names", None)
    return list(names) if names else None


def _unlabelled(values: list) -> bool:
    """True when every label is a negative int (how hub datasets hide test labels)."""
    flat = (v for row in values for v in (row if isinstance(row, list) else [row]))
    return all(isinstance(v, int) and v < 0 for v in flat)


def hub(
    name: str,
    config: str | None = None,
    text_column: str | None = None,
    text_pair_column: str | None = None,
    label_column: str | None = None,
    label_names: list[str] | None = None,
    task: str = "sequence",
    limit: int | None = None,
    revision: str | None = None,
    test_fraction: float = 0.2,
    validation_fraction: float = 0.1,
    dedupe: bool = True,
) -> TaskData:
    """``datasets.load_dataset(name, config)`` → ``TaskData``; needs a network the first time only.

    Splits named train / validation (valid, dev) / test are used; a split whose labels are all
    negative (hidden test labels, as in GLUE) is dropped and carved from train instead. A
    ``ClassLabel`` label column keeps its published names and ids.
    """
    wanted = _wanted(task, text_column, text_pair_column, label_column)
    label_key = {"sequence": "label", "token": "tags"}.get(task)

    def read() -> dict[str, Table]:
        hf_cache = str(cache_dir("hf", write=True))
        try:
            loaded = datasets.load_dataset(name, config, revision=revision, cache_dir=hf_cache)
        except Exception as e:  # offline, unknown name, missing config: one line for all
            raise DistillError(
                f"could not load {name!r}{f' ({config})' if config else ''} from the Hugging Face hub "
                f"({type(e).__name__}); without a network save it as a file and use data=files"
            ) from None
        tables = {}
        for split, ds in loaded.items():
            canonical = HUB_SPLITS.get(split)
            if canonical is None or canonical in tables:
                log.info("hub %s: ignoring split %r", name, split)
                continue
            cols = _columns(ds, wanted, f"{name}[{split}]")
            if label_key and canonical != "train" and _unlabelled(cols[label_key]):
                log.info("hub %s: split %r has no labels; carving %s from train instead", name, split, canonical)
                continue
            names = _class_names(ds.features[wanted[label_key]]) if label_key else None
            tables[canonical] = Table(cols, f"{name}[{split}]", names, {c: col for c, col in wanted.items() if col})
        return tables

    key = {"hub": name, "config": config, "revision": revision, "columns": wanted}
    return build(f"hub-{name.replace('/', '--')}", key, read, task=task, label_names=label_names, limit=limit,
                 test_fraction=test_fraction, validation_fraction=validation_fraction, dedupe=dedupe)
