"""`distill predict`: label a file of texts with a saved student dir or an exported ``.onnx`` file.

Sequence models add ``predicted_label`` and one ``p_<label>`` probability column per class; token
models split each text on whitespace and add ``predicted_tags`` (one tag per word, space-separated).
The input's own columns (a gold ``label`` too) are kept as they were. Rows are batched by length (fewer
pad tokens) and written back in the input's order.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from distill.errors import DistillError
from distill.evaluate import pad_rows
from distill.export_formats import task_of
from distill.models.hub import load_config, load_tokenizer
from distill.preflight import load

log = logging.getLogger(__name__)
READERS = {".csv": {"sep": ","}, ".tsv": {"sep": "\t"}}


def read_inputs(path: str, text_column: str) -> tuple[pd.DataFrame, list[str]]:
    """``-`` or ``.txt``: one text per line; ``.csv`` / ``.tsv`` / ``.jsonl``: the ``text_column``."""
    if path == "-" or Path(path).suffix.lower() == ".txt":
        lines = sys.stdin.read() if path == "-" else _read_text(Path(path))
        frame = pd.DataFrame({text_column: [ln for ln in lines.splitlines() if ln.strip()]})
    else:
        file, suffix = Path(path), Path(path).suffix.lower()
        if suffix not in (*READERS, ".jsonl"):
            raise DistillError(f"input={path}: use a .csv, .tsv, .jsonl or .txt file, or - for lines on stdin")
        if not _read_text(file).strip():  # also one clear line for a missing or non-UTF-8 file
            raise DistillError(f"input={path} is empty")
        try:
            frame = pd.read_json(file, lines=True, dtype=False, convert_dates=False) if suffix == ".jsonl" else \
                pd.read_csv(file, **READERS[suffix], dtype=str, keep_default_na=False)  # "007" stays "007"
        except (ValueError, pd.errors.ParserError) as e:
            raise DistillError(f"input={path} could not be parsed ({type(e).__name__}); check its format") from None
        if text_column not in frame.columns:
            have = ", ".join(map(str, frame.columns))
            raise DistillError(f"input={path} has no column {text_column!r} (it has: {have}); set text_column=...")
    texts = [" ".join(map(str, t)) if isinstance(t, list) else str(t) for t in frame[text_column]]  # jsonl words
    if not texts:
        raise DistillError(f"input={path} has no texts")
    return frame, texts


def _read_text(file: Path) -> str:
    if not file.is_file():
        raise DistillError(f"input file {file} does not exist")
    try:
        return file.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DistillError(f"{file} is not UTF-8 text (it holds byte {e.object[e.start:e.start + 1]!r}); "
                           "re-save it as UTF-8") from None


def _model_dir(model: str) -> Path:
    path = Path(os.path.expanduser(model))
    folder = path.parent if path.suffix == ".onnx" else path
    if not path.exists():
        raise DistillError(f"model={model} does not exist; give a student dir or an exported .onnx file")
    return folder


def _task(config, model: str) -> str:
    """sequence | token from the saved head; a model without a classification head labels nothing."""
    arch = (config.architectures or ["?"])[0]
    if not arch.endswith(("ForSequenceClassification", "ForTokenClassification")):
        raise DistillError(f"model={model} is a {arch}, not a classifier: predict needs a student trained on a "
                           "labelled task (a general / masked-LM student has no classification head)")
    return task_of(config)


def _encode(tokenizer, texts: list[str], task: str, max_length: int) -> tuple[list[dict], list[list[int]]]:
    """Tokenized rows and, for token tasks, each row's first sub-token position per word (-1: cut off)."""
    if task == "sequence":
        enc = tokenizer(texts, truncation=True, max_length=max_length)
        return [dict(zip(enc, vals)) for vals in zip(*enc.values())], []
    words = [t.split() for t in texts]
    enc = tokenizer(words, is_split_into_words=True, truncation=True, max_length=max_length)
    rows = [dict(zip(enc, vals)) for vals in zip(*enc.values())]
    firsts = []
    for i, row_words in enumerate(words):
        first: dict[int, int] = {}
        for pos, word in enumerate(enc.word_ids(i)):
            if word is not None:
                first.setdefault(word, pos)
        firsts.append([first.get(w, -1) for w in range(len(row_words))])
    return rows, firsts


def predict_texts(model: str, texts: list[str], max_length: int = 128, batch_size: int = 32,
                  threads: int | None = None) -> tuple[str, list[str], list]:
    """(task, label names, per-row results): probabilities (C,) for sequence rows, tag ids per word for
    token rows (-1 for a word beyond ``max_length``)."""
    folder = _model_dir(model)
    config = load_config(folder)
    task, names = _task(config, model), [config.id2label[i] for i in range(config.num_labels)]
    forward, _, _ = load(model if str(model).endswith(".onnx") else folder, task, threads or torch.get_num_threads())
    rows, firsts = _encode(load_tokenizer(folder), texts, task, max_length)
    order = np.argsort([len(r["input_ids"]) for r in rows], kind="stable")  # similar lengths share a batch
    results: list = [None] * len(rows)
    for start in tqdm(range(0, len(rows), batch_size), desc="predict", unit="batch"):
        idx = order[start:start + batch_size]
        logits = forward(pad_rows([rows[i] for i in idx])).float()  # (B, C) or (B, T, C)
        for j, i in enumerate(idx):
            if task == "sequence":
                results[i] = torch.softmax(logits[j], -1).numpy()
            else:
                tags = logits[j].argmax(-1).numpy()
                results[i] = [int(tags[p]) if p >= 0 else -1 for p in firsts[i]]
    return task, names, results


def predict_file(model: str, source: str, output: str, text_column: str = "text", max_length: int = 128,
                 batch_size: int = 32, threads: int | None = None) -> Path:
    """Label ``source`` (see ``read_inputs``) and write ``output`` as CSV: the input's columns + predictions."""
    frame, texts = read_inputs(source, text_column)
    task, names, results = predict_texts(model, texts, max_length, batch_size, threads)
    added = ["predicted_label", *(f"p_{n}" for n in names)] if task == "sequence" else ["predicted_tags"]
    clash = [c for c in added if c in frame.columns]
    if clash:
        raise DistillError(f"input={source} already has a column {clash[0]!r}; rename it (predict adds "
                           f"{', '.join(added)})")
    if task == "sequence":
        probs = np.stack(results)  # (N, C)
        frame["predicted_label"] = [names[k] for k in probs.argmax(1)]
        for c, name in enumerate(names):
            frame[f"p_{name}"] = probs[:, c].round(6)
    else:
        cut = sum(tag < 0 for tags in results for tag in tags)
        if cut:
            log.warning("predict: %d words lie beyond max_length=%d and get no tag ('-'); raise max_length", cut,
                        max_length)
        frame["predicted_tags"] = [" ".join(names[t] if t >= 0 else "-" for t in tags) for tags in results]
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(out, index=False)
    log.info("predict: %d rows labelled by %s at max_length %d -> %s", len(frame), model, max_length, out)
    return out
