"""One report for teacher vs students: metrics with 95% CIs, McNemar tests, size, CPU latency.

``compare`` writes ``report.md``, ``report.json`` and PNGs (the teacher pre-flight it reports is
``distill.preflight``'s, the check training runs before distilling).

Ratios are all "model / teacher" except ``speedup_p50`` (teacher p50 / model p50, > 1 = faster) and
``speedup_same_runtime`` (the same, against the teacher in the model's runtime: with ONNX models among
those compared, the teacher is exported too — onnxruntime fp32 and int8, optimized as ``distill export``
writes them — so an ONNX student is timed against an ONNX teacher).
"""

from __future__ import annotations

import json
import logging
import os
import platform
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from distill import evaluate as ev
from distill import plots
from distill.data.mentions import mention_texts, spans
from distill.errors import DistillError
from distill.export_formats import CHECK_ROWS
from distill.preflight import ModelRef, check_labels, eval_split, load, preflight_from_predictions, split_name
from distill.report import notes, render_markdown

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- inputs


def own_tokenizer(ref):
    """The tokenizer saved beside a checkpoint dir or ``.onnx`` file (None for a model object)."""
    if isinstance(ref, torch.nn.Module):
        return None
    from distill.models.hub import saved_tokenizer

    return saved_tokenizer(Path(ref).parent if Path(ref).suffix == ".onnx" else Path(ref))


def latency_inputs(tokenizer, dataset, texts: Sequence[str] | None = None, max_length: int = 128):
    """Batch-1 and batch-32 inputs from ``texts`` (tokenized here) or the split's first 64 rows."""
    if not texts:
        return ev.latency_inputs([dataset[i] for i in range(min(64, len(dataset)))], batch_size=32)
    if tokenizer is None:
        raise DistillError("latency_texts need a tokenizer; pass tokenizer=")
    enc = tokenizer(list(texts), truncation=True, max_length=max_length)
    return ev.latency_inputs([dict(zip(enc, vals)) for vals in zip(*enc.values())], batch_size=32)


def size_and_params(model, info: dict) -> dict:
    """Bytes of the weights on disk and parameter counts (total, outside embeddings)."""
    if model is None:  # ONNX: the file (and its external data) is the model
        import onnx

        path = Path(info["path"])
        graph = onnx.load(str(path), load_external_data=False).graph
        total = sum(int(torch.Size(t.dims).numel()) for t in graph.initializer)
        size = sum(f.stat().st_size for f in path.parent.iterdir() if f.name.startswith(path.name))
        return {"size_bytes": size, "params": {"total": total, "non_embedding": None}}
    from distill.models.hub import save_pretrained
    from distill.models.student import count_parameters

    with tempfile.TemporaryDirectory() as tmp:  # what save_pretrained writes is what ships
        size = (save_pretrained(model, Path(tmp) / "m") / "model.safetensors").stat().st_size
    return {"size_bytes": size, "params": count_parameters(model)}


def _is_onnx(ref) -> bool:
    return not isinstance(ref, torch.nn.Module) and Path(ref).suffix == ".onnx"


def onnx_precision(path) -> str:
    """"int8" for a graph with 8-bit weights (onnxruntime's quantizer wrote it), else "fp32"."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    eight_bit = {onnx.TensorProto.INT8, onnx.TensorProto.UINT8}
    return "int8" if any(t.data_type in eight_bit for t in graph.initializer) else "fp32"


def teacher_exports(ref, name: str, task: str, dataset, out: Path, measure: Measure) -> dict[str, str]:
    """The teacher as ``distill export`` writes it (onnxruntime's fusions, parity checked on the split's
    rows) in fp32 and int8 → {"<name> (ONNX fp32)": path, "<name> (ONNX int8)": path}; {} with one log line
    when it does not export (e.g. an ensemble)."""
    from distill.export_formats import export_onnx, parity_batches, quantize_int8

    model = load(ref, task, measure.threads)[2]
    if model is None:  # an ONNX teacher: compare() stops on it with its own message
        return {}
    step = max(1, len(dataset) // CHECK_ROWS)
    example, checks, _ = parity_batches([dataset[i] for i in range(0, len(dataset), step)][:CHECK_ROWS])
    fp32, int8 = out / "onnx" / "model.onnx", out / "int8" / "model.onnx"
    log.info("compare: exporting %s to ONNX (%s) to time it in onnxruntime as well", name, out)
    try:
        export_onnx(model, fp32, example, checks, measure.threads)
        quantize_int8(fp32, int8)
    except Exception as e:  # extra rows: the compare stands without them
        log.warning("compare: %s does not export to ONNX (%s: %s); timed in PyTorch only", name, type(e).__name__, e)
        return {}
    return {f"{name} (ONNX fp32)": str(fp32), f"{name} (ONNX int8)": str(int8)}


# ---------------------------------------------------------------- compare


@dataclass(frozen=True)
class Measure:
    """How every model is measured: the split and what its text is tokenized to (the run's
    ``data.max_length``, so models are scored on the inputs they were trained and tested on), the
    bootstrap, CPU timing, and the teacher pre-flight's kappa floor."""

    split: str | None = None  # None: test if the data has one, else validation
    max_length: int = 128
    n_boot: int = 1000
    seed: int = 0
    threads: int | None = None  # None: min(4, cores)
    warmup: int = 5
    repeats: int = 50
    batch_size: int = 32
    min_kappa: float = 0.1
    teacher_onnx: bool | None = None  # the teacher in onnxruntime too; None: when another model is an ONNX file


def compare(models: Mapping[str, ModelRef], tokenizer, data, task: str | None = None,
            label_names: Sequence[str] | None = None, out_dir: str | os.PathLike = "compare",
            teacher: str = "teacher", baseline: str | None = None, latency_texts: Sequence[str] | None = None,
            curves: Mapping[str, str | os.PathLike | Sequence[Mapping]] | None = None,
            measure: Measure = Measure(), pairs: Sequence[tuple[str, str]] = ()) -> dict:
    """Evaluate every model on one split, time it on CPU, and write report.md / report.json / PNGs.

    ``models``: name → our model, checkpoint dir, or ``.onnx`` file; ``teacher`` names the reference
    and ``baseline`` (e.g. the no-KD student) gets its own McNemar column. ``curves``: run name →
    metrics.jsonl / run dir / list of step dicts for the training-curve plot. ``pairs``: more (model,
    other) paired tests, e.g. the KD student against the control trained on the same rows without a teacher.
    """
    named = [("teacher", teacher), ("baseline", baseline), *(("pairs", n) for pair in pairs for n in pair)]
    for role, name in named:
        if name is not None and name not in models:
            raise DistillError(f"{role}={name!r} is not among the models {list(models)}; name one of them")
    tokenizer = tokenizer or own_tokenizer(models[teacher])
    dataset, names, data_task = eval_split(data, tokenizer, measure.split, measure.max_length)
    label_names = list(label_names or names or [])
    task = task or data_task or getattr(models[teacher], "task", None)
    if not label_names or task not in ("sequence", "token"):
        raise DistillError("a tokenized split needs label_names= and task=sequence|token (or pass TaskData)")
    measure = replace(measure, threads=measure.threads or min(4, os.cpu_count() or 1))
    shared = (dataset, *latency_inputs(tokenizer, dataset, latency_texts, measure.max_length))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    onnx_teacher = {}
    if measure.teacher_onnx or (measure.teacher_onnx is None and any(map(_is_onnx, models.values()))):
        onnx_teacher = teacher_exports(models[teacher], teacher, task, dataset, out / "teacher_export", measure)
    if onnx_teacher:  # listed right after the teacher
        models = {teacher: models[teacher], **onnx_teacher, **{n: r for n, r in models.items() if n != teacher}}

    novelty = _mention_novelty(data, measure.split) if task == "token" else None
    results, preds, preflight = {}, {}, None
    for name, ref in models.items():
        forward, info, model = load(ref, task, measure.threads)
        if model is None:
            info["precision"] = onnx_precision(ref)
        inputs = _inputs_for(name, ref, model, data, tokenizer, shared, label_names, latency_texts, measure)
        log.info("compare: evaluating %s (%s)", name, info["runtime"])
        preds[name] = ev.predict(forward, inputs[0], task, measure.batch_size)
        results[name] = {**info, **size_and_params(model, info),
                         **_scores(forward, preds[name], inputs, label_names, measure)}
        if novelty is not None:
            results[name]["mentions"] = mentions_by_novelty(preds[name], label_names, *novelty)
        if name == teacher:
            if model is None:
                raise DistillError("the teacher must be a PyTorch model or checkpoint dir, not an ONNX file")
            preflight = preflight_from_predictions(preds[name], model.config, label_names, measure.min_kappa)
        del model, forward
    _relative_to(results, preds, teacher, baseline, label_names, measure.seed, pairs)
    _same_runtime(results, teacher, next(iter(onnx_teacher), None))

    report = {
        "task": task, "metric": ev.main_metric(task), "teacher": teacher, "baseline": baseline,
        "teacher_onnx": list(onnx_teacher),
        "label_names": label_names,
        "settings": {"n_rows": len(dataset), "n_units": int(len(preds[teacher].y_true)),
                     "unit": "word" if task == "token" else "row", "n_boot": measure.n_boot, "seed": measure.seed,
                     "threads": measure.threads, "warmup": measure.warmup, "repeats": measure.repeats,
                     "device": "cpu", "torch": torch.__version__, "cpu": platform.processor() or platform.machine()},
        "preflight": preflight, "models": results,
    }
    report["notes"] = notes(report)
    return _write(report, out, curves)


def _scores(forward, pred, inputs, label_names, measure: Measure) -> dict:
    """A model's metrics with bootstrap 95% intervals, and its CPU latency on ``inputs``' latency rows."""
    scores = ev.metrics(pred, label_names)
    ci = ev.bootstrap(pred, label_names, n_boot=measure.n_boot, seed=measure.seed)
    _, singles, big = inputs
    return {"metrics": {k: {"value": v, "ci95": list(ci[k])} for k, v in scores.items()},
            "latency": ev.measure_latency(forward, singles, big, measure.threads, measure.warmup, measure.repeats)}


def _mention_novelty(data, split: str | None) -> tuple[list[list[str]], set[tuple[str, ...]]] | None:
    """A token task's evaluated words and the training split's mention texts, for recall on the mentions
    training had vs those it never had (where a tagger student usually loses); None without a training
    split to look them up in (an already tokenized split, or the training split itself evaluated)."""
    if not hasattr(data, "splits") or "train" not in data.splits:
        return None
    name = split_name(data, split)
    if name == "train":
        return None
    train = data.splits["train"]
    seen = mention_texts([(w, [data.label_names[t] for t in tags]) for w, tags in zip(train["tokens"], train["tags"])])
    return list(data.splits[name]["tokens"]), seen


def mentions_by_novelty(pred: ev.Predictions, label_names: Sequence[str], words: Sequence[Sequence[str]],
                        seen: set[tuple[str, ...]]) -> dict[str, dict]:
    """Token task: entity recall and precision on the mentions seen in training (their lower-cased words are
    in ``seen``, e.g. ``data.mentions.mention_texts`` of the training split) and on the unseen rest; a gold
    mention counts as found when type and span match exactly, as entity F1 counts it.

    ``words``: the evaluated split's word lists, indexed by ``pred.group`` (a truncated row's tags cover a
    prefix of its words). → {"seen" | "unseen": {gold, found, recall, predicted, precision}}, with
    recall / precision None where nothing was there to count.
    """
    counts = {side: dict.fromkeys(("gold", "found", "predicted"), 0) for side in ("seen", "unseen")}
    rows = np.unique(pred.group)  # ascending, as predict numbers them: one per sentence of pred.sentences
    for row, gold_tags, pred_tags in zip(rows, *pred.sentences(label_names)):
        text = [w.lower() for w in words[row]]
        gold, guess = set(spans(gold_tags)), set(spans(pred_tags))
        for mention in gold | guess:
            c = counts["seen" if tuple(text[mention[0]:mention[1]]) in seen else "unseen"]
            c["gold"] += mention in gold
            c["predicted"] += mention in guess
            c["found"] += mention in gold and mention in guess
    for c in counts.values():
        c["recall"] = c["found"] / c["gold"] if c["gold"] else None
        c["precision"] = c["found"] / c["predicted"] if c["predicted"] else None  # a right guess is a found mention
    return counts


def _inputs_for(name, ref, model, data, tokenizer, shared, label_names, latency_texts, measure: Measure):
    """The split and latency inputs in ``ref``'s own ids: the shared ones unless it carries another
    vocabulary (a trimmed export); its head checked against the data's labels first."""
    if model is not None:
        try:
            check_labels(model.config, label_names)
        except DistillError as e:  # which of the models compared is the odd one out
            raise DistillError(f"model {name!r} ({ref}): {e}") from None
    own = own_tokenizer(ref)
    if own is None or tokenizer is None or own.get_vocab() == tokenizer.get_vocab():
        return shared
    if not hasattr(data, "splits"):
        raise DistillError(f"model {name!r} has its own vocabulary; pass TaskData (not a tokenized split) "
                           "so each model is tokenized with its own tokenizer")
    own_split = eval_split(data, own, measure.split, measure.max_length)[0]  # e.g. a trimmed export: same rows
    return (own_split, *latency_inputs(own, own_split, latency_texts, measure.max_length))


def _relative_to(results: dict, preds: dict, teacher: str, baseline: str | None, label_names, seed: int,
                 pairs: Sequence[tuple[str, str]] = ()) -> None:
    """Ratios to the teacher, agreement with it, and paired tests against the teacher, the baseline and
    each model's partners in ``pairs``."""
    ref = results[teacher]
    for name, r in results.items():
        r["retention"] = {k: _ratio(v["value"], ref["metrics"][k]["value"]) for k, v in r["metrics"].items()}
        r["speedup_p50"] = _ratio(ref["latency"]["p50_ms"], r["latency"]["p50_ms"])
        r["throughput_ratio"] = _ratio(r["latency"]["throughput_per_s"], ref["latency"]["throughput_per_s"])
        r["size_ratio"] = _ratio(r["size_bytes"], ref["size_bytes"])
        r["params_ratio"] = _ratio(r["params"]["total"], ref["params"]["total"])
        r["agreement_with_teacher"] = ev.agreement(preds[name], preds[teacher])
        partners = [other for model, other in pairs if model == name]
        others = [other for other in (teacher, baseline, *partners) if other is not None and other != name]
        r["mcnemar"] = {other: ev.mcnemar(preds[name].correct, preds[other].correct) for other in others}
        r["paired_bootstrap"] = {other: ev.paired_bootstrap(preds[name], preds[other], label_names, seed=seed)
                                 for other in others}


def _same_runtime(results: dict, teacher: str, onnx_teacher: str | None) -> None:
    """Each model's speed-up over the teacher in its own runtime: PyTorch, or onnxruntime fp32 for every
    ONNX model (fp32 and int8 alike, as the export targets are set); None without an ONNX teacher."""
    for r in results.values():
        ref = results[teacher] if r["runtime"] == "pytorch" else results.get(onnx_teacher)
        r["speedup_same_runtime"] = None if ref is None else _ratio(ref["latency"]["p50_ms"], r["latency"]["p50_ms"])


def _write(report: dict, out: Path, curves) -> dict:
    """The trade-off (and training-curve) plots, report.json and report.md."""
    key, results = report["metric"], report["models"]
    report["plots"] = [str(plots.tradeoff_plot(
        {n: {"latency_ms": r["latency"]["p50_ms"], "metric": r["metrics"][key]["value"],
             "ci": r["metrics"][key]["ci95"], "params": r["params"]["total"]} for n, r in results.items()},
        key, out / "tradeoff.png"))]
    if curves:
        report["plots"].append(str(plots.training_curves(curves, out / "training_curves.png")))
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(render_markdown(report))
    report["paths"] = {"json": str(out / "report.json"), "markdown": str(out / "report.md")}
    return report


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b

