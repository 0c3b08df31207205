"""Export a trained model so it loads anywhere, each format checked against the PyTorch model.

``export(model_dir, out_dir, formats, ...)`` writes ``out_dir/<format>/`` for
  * ``hf``: save_pretrained layout + tokenizer, ``id2label`` = the data's label names; reloaded with
    transformers' Auto* class (no missing/unexpected keys) and compared logit for logit;
  * ``onnx``: dynamic batch and sequence axes, onnxruntime's transformer fusions applied (``optimize``);
    onnxruntime vs PyTorch on inputs whose shapes differ from the export example;
  * ``int8``: onnxruntime dynamic quantization of the (optimized) ONNX graph; the metric change on the
    validation split and the latency change are reported (the logits are *meant* to move);
  * ``torchscript``: a trace, reloaded and compared on other shapes;
and a model card ``README.md``. With ``trim_vocab`` every format is built from the trimmed model.
The per-format writers and their parity checks live in :mod:`distill.export_formats`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from distill.data.tokenize import read_trained_tokens
from distill.errors import DistillError
from distill.export_formats import (
    FALLBACK_TEXTS,
    export_hf,
    export_int8,
    export_onnx,
    export_torchscript,
    parity_inputs,
    task_of,
)
from distill.models.hub import from_pretrained, load_config, load_tokenizer, resolve
from distill.tables import fused_ops_text
from distill.vocab_trim import trim_vocab as trim
from distill.vocab_trim import write_vocab

log = logging.getLogger(__name__)
FORMATS = ("hf", "onnx", "int8", "torchscript")


def _eval_texts(data) -> list[str]:
    split = data.splits["validation"] if "validation" in data.splits else data.splits[list(data.splits)[0]]
    if data.task == "token":
        return [" ".join(tokens) for tokens in split["tokens"]]
    return list(split["text"]) + (list(split["text_pair"]) if "text_pair" in split.column_names else [])


def _name_labels(model, names: list[str]) -> list[str]:
    """The data's label names onto the model's config (a reordering raises); the names the export carries."""
    if names:
        from distill.preflight import check_labels

        if len(names) != model.config.num_labels:
            raise DistillError(f"{len(names)} label names {names} for a model with {model.config.num_labels} "
                               "labels; pass the dataset the model was trained on")
        unnamed = all(n.startswith("LABEL_") for n in model.config.id2label.values())
        renamed = check_labels(model.config, names)  # a reordering raises
        if renamed and not unnamed:
            log.warning("export: %s; the export uses the data's names", renamed)
        model.config.id2label = dict(enumerate(names))
        model.config.label2id = {n: i for i, n in enumerate(names)}
    names = [model.config.id2label[i] for i in range(model.config.num_labels)]
    if all(n.startswith("LABEL_") for n in names):
        log.warning("export: the model's labels are unnamed (%s...); pass label_names or eval_data", names[0])
    return names


@dataclass
class _Inputs:
    """What every format is checked with: the trace example, parity batches of other shapes, rows for
    timing, and the validation split for int8's metric change."""

    example: dict
    checks: list
    rows: list
    eval_split: object
    names: list[str]
    threads: int


def _export_one(fmt: str, model, tokenizer, out: Path, inputs: _Inputs, onnx_too: bool, optimize: bool) -> dict:
    """One format into ``out/fmt``, verified; every dir carries what it needs to run (tokenizer, labels)."""
    target = out / fmt
    if fmt == "hf":
        return export_hf(model, tokenizer, target, inputs.checks)
    if fmt == "onnx":
        result = export_onnx(model, target / "model.onnx", inputs.example, inputs.checks, inputs.threads,
                             optimize=optimize)
    elif fmt == "torchscript":
        result = export_torchscript(model, target / "model.pt", inputs.example, inputs.checks)
    else:  # int8: quantizes the fp32 ONNX file, exported first when onnx is not among the formats
        fp32 = out / "onnx" / "model.onnx"
        temp = not onnx_too or not fp32.is_file()
        if temp:
            fp32 = target / "fp32-tmp" / "model.onnx"
            export_onnx(model, fp32, inputs.example, inputs.checks, inputs.threads, optimize=optimize)
        result = export_int8(model, fp32, target / "model.onnx", inputs.checks, inputs.rows, inputs.eval_split,
                             inputs.names, inputs.threads)
        if temp:
            shutil.rmtree(fp32.parent, ignore_errors=True)
    tokenizer.save_pretrained(str(target))
    write_vocab(tokenizer, target)
    model.config.to_json_file(str(target / "config.json"))
    return result


def _card_results(model_dir: Path) -> list:
    """The test metrics a student dir's own card holds (none without a card); an untrimmed export's
    hf / onnx logits equal the student's (parity checked), so its metrics are theirs."""
    if not (model_dir / "README.md").is_file():
        return []
    from huggingface_hub import ModelCard

    return list(ModelCard.load(model_dir / "README.md").data.eval_results or [])


def export(model_dir: str | os.PathLike, out_dir: str | os.PathLike, formats: Sequence[str] = FORMATS,
           trim_vocab: bool = False, texts: Sequence[str] | None = None, eval_data=None, *,
           label_names: Sequence[str] | None = None, recipe: str | Mapping | None = None,
           compare_report: str | os.PathLike | Mapping | None = None, threads: int = 1,
           max_length: int = 128, optimize: bool = True, vocab_size: int | None = None) -> list[dict]:
    """Export ``model_dir`` into ``out_dir/<format>/`` and return one verified result per format.

    ``texts``: the training corpus (vocabulary trimming) and real inputs for the parity checks;
    ``eval_data``: TaskData (or a tokenized validation split when not trimming) for the int8 metric
    change; ``label_names`` override the data's; ``recipe``/``compare_report`` go into the model card;
    ``max_length``: the run's ``data.max_length`` (evaluation and parity inputs are cut there);
    ``optimize``: onnxruntime's transformer fusions on the ONNX graph (int8 is quantized from it);
    ``vocab_size``: with ``trim_vocab``, the most tokens kept: the training texts' tokens always, then those
    the model's training rows used (``trained_tokens.json`` beside it: augmented variants), most frequent
    first; None keeps the training texts' tokens alone.
    """
    from distill.model_card import write_model_card

    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise DistillError(f"formats={list(formats)}: choose from {list(FORMATS)}")
    if trim_vocab and not texts:
        raise DistillError("trim_vocab=true needs texts= (the training texts the vocabulary is kept for)")
    out = Path(out_dir)
    task = task_of(load_config(resolve(model_dir)))
    model, tokenizer = from_pretrained(model_dir, task=task), load_tokenizer(model_dir)
    is_taskdata = hasattr(eval_data, "splits")
    names = _name_labels(model, list(label_names or (eval_data.label_names if is_taskdata else [])))
    if eval_data is not None and not is_taskdata and trim_vocab:
        raise DistillError("with trim_vocab, pass eval_data as TaskData so it is tokenized with the trimmed vocab")

    results = []
    if trim_vocab:
        check = _eval_texts(eval_data) if is_taskdata else None
        trained = read_trained_tokens(resolve(model_dir)) if vocab_size is not None else None
        model, tokenizer, report = trim(model, tokenizer, texts, check_texts=check, max_vocab=vocab_size,
                                        trained=trained)
        results.append({"format": "trim_vocab", "path": None, "size_bytes": None, **report})
    eval_split = None
    if is_taskdata:
        from distill.preflight import eval_split as tokenized

        split = "validation" if "validation" in eval_data.splits else None
        eval_split = tokenized(eval_data, tokenizer, split=split, max_length=max_length)[0]
    elif eval_data is not None:
        eval_split = eval_data
    example, checks, rows = parity_inputs(tokenizer, list(texts or []) or (_eval_texts(eval_data) if is_taskdata
                                                                      else FALLBACK_TEXTS), max_length)
    inputs = _Inputs(example, checks, rows, eval_split, names, threads)
    for fmt in formats:
        log.info("export: %s", fmt)
        results.append({"format": fmt, **_export_one(fmt, model, tokenizer, out, inputs, "onnx" in formats, optimize)})
    card = write_model_card(out, model, names, results, recipe=recipe, compare_report=compare_report,
                            student_results=[] if trim_vocab else _card_results(Path(resolve(model_dir))))
    if (out / "hf").is_dir():
        shutil.copyfile(card, out / "hf" / "README.md")
    return results


def summary_line(result: dict) -> str:
    """One printable line per format: size and its parity figure."""
    size = "" if result.get("size_bytes") is None else f"{result['size_bytes'] / 2**20:8.2f} MB"
    if result["format"] == "trim_vocab":
        return (f"{'trim_vocab':12s} {result['vocab_before']} → {result['vocab_after']} tokens, "
                f"{result['bytes_saved'] / 2**20:.2f} MB saved, identical predictions on {result['n_texts']} texts"
                + (f" ({result['trained_extra']} more tokens kept from the rows the model trained on)"
                   if result.get("trained_extra") else "")
                + (f"; validation: {100 * result['check_unchanged']:.1f}% unchanged, "
                   f"{100 * result['check_unk_rate']:.1f}% tokens [UNK]" if "check_unchanged" in result else ""))
    extra = ""
    if result["format"] == "int8" and result.get("metric_change") is not None:
        extra = f"  {result['metric']} {100 * result['metric_change']:+.2f} pts"
    with contextlib.suppress(KeyError, TypeError):
        extra = f"  max|Δlogit| {result['parity_max_abs_diff']:.1e}" + extra
    if result.get("fused_ops"):
        extra += "  fused: " + fused_ops_text(result["fused_ops"])
    return f"{result['format']:12s} {size}{extra}  {result['path']}"
