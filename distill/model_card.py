"""Model cards (README.md) of a trained student dir and of an export dir: what the model is, how it scores and
compares, how it was made; Hub metadata through huggingface_hub's ``ModelCardData``."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from distill.models.student import count_parameters
from distill.tables import fused_ops_text


def _recipe_text(recipe: str | os.PathLike | Mapping) -> str:
    if isinstance(recipe, Mapping):
        return json.dumps(recipe, indent=2, default=str)
    path = Path(recipe)
    return path.read_text() if path.is_file() else str(recipe)


def _exports_table(results: Sequence[dict]) -> list[str]:
    lines = ["| format | path | size MB | check |", "|---|---|---|---|"]
    for r in results:
        if r["format"] == "trim_vocab":
            check = (f"{r['vocab_before']} → {r['vocab_after']} tokens ({r['bytes_saved'] / 2**20:.2f} MB saved); "
                     f"identical predictions on {r['n_texts']} training texts")
            if "check_unchanged" in r:
                check += (f"; validation: {100 * r['check_unchanged']:.1f}% predictions unchanged, "
                          f"{100 * r['check_unk_rate']:.1f}% tokens now [UNK]")
            lines.append(f"| vocabulary trim | – | – | {check} |")
            continue
        check = f"max abs logit diff vs PyTorch {r['parity_max_abs_diff']:.1e}"
        if r.get("parity_tolerance") is not None:
            check += f" (≤ {r['parity_tolerance']:g} on shapes {r['checked_shapes']})"
        if r.get("fused_ops"):
            check += f"; onnxruntime's transformer fusions: {fused_ops_text(r['fused_ops'])}"
        if r["format"] == "int8":
            check += f"; p50 latency {r['speedup_vs_fp32']:.2f}× faster than fp32 PyTorch ({r['threads']} thread(s))"
            if r.get("metric_change") is not None:
                check += (f"; {r['metric']} {100 * r['metric_fp32']:.2f} → {100 * r['metric_int8']:.2f} "
                          f"({100 * r['metric_change']:+.2f} pts on {r['eval_rows']} validation rows)")
        rel = Path(r["path"]).name if r["format"] != "hf" else ""
        lines.append(f"| {r['format']} | `{r['format']}/{rel}` | {r['size_bytes'] / 2**20:.2f} | {check} |")
    return lines


PIPELINE_TAGS = {"sequence": "text-classification", "token": "token-classification"}  # else fill-mask


def hub_metadata(model, name: str, metrics: Mapping[str, float] | None = None, dataset: str | None = None,
                 base_model: str | None = None, eval_results=None, split: str = "test") -> str:
    """The card's YAML header, through huggingface_hub's ``ModelCardData``: library, pipeline tag, base
    model (a hub id only), and the ``split`` metrics as a ``model-index`` the Hub reads."""
    from huggingface_hub import EvalResult, ModelCardData

    task = PIPELINE_TAGS.get(model.task, "fill-mask")
    results = list(eval_results or []) + [
        EvalResult(task_type=task, dataset_type=dataset or "custom", dataset_name=dataset or "custom",
                   dataset_split=split, metric_type=k, metric_value=round(float(v), 6))
        for k, v in (metrics or {}).items()]
    hub_id = base_model if base_model and ", " not in base_model and not Path(base_model).expanduser().exists() \
        else None  # a local dir, or an ensemble's members ("A, B"), is no hub id
    data = ModelCardData(library_name="transformers", pipeline_tag=task, tags=["distillation", "bert", "distill"],
                         base_model=hub_id, model_name=name, eval_results=results or None)
    return f"---\n{data.to_yaml()}\n---"


def _value(metric: str, v: float) -> str:
    return f"{v:.2f}" if "perplexity" in metric else f"{100 * v:.2f}"  # rates as percentages


def write_student_card(folder: Path, model, label_names: Sequence[str], summary: Mapping, teacher: str | None,
                       dataset: str | None, recipe: str | None, command: str) -> Path:
    """``folder/README.md`` for a trained student: its metrics on the test split (validation for raw text)
    with 95% bootstrap intervals, beside the teacher's; teacher, data, recipe and the command that made it."""
    split = summary.get("split", "test")
    student, teacher_m = summary.get("student", {}), summary.get("teacher", {})
    intervals = summary.get("ci95", {}).get("student", {})
    n = count_parameters(model)
    c = model.config
    classifier = model.task in PIPELINE_TAGS
    lines = [hub_metadata(model, folder.name, student, dataset, teacher, split=split), "",
             f"# Distilled student ({dataset or 'custom data'})", "",
             f"{c.num_hidden_layers} layers, hidden {c.hidden_size}, {c.num_attention_heads} heads: "
             f"{n['total'] / 1e6:.2f}M parameters. Teacher: `{teacher or 'none'}`; recipe: `{recipe or 'none'}`.", ""]
    if classifier:
        lines += ["Labels: " + ", ".join(f"`{i}` = {name}" for i, name in enumerate(label_names)), ""]
    if student:
        lines += [f"## {split.capitalize()} split", "", "| metric | student | 95% interval | teacher |",
                  "|---|---|---|---|"]
        for k, v in student.items():
            lo, hi = intervals.get(k, (None, None))
            ci = f"{_value(k, lo)} – {_value(k, hi)}" if lo is not None else "–"
            lines.append(f"| {k} | {_value(k, v)} | {ci} | {_value(k, teacher_m[k]) if k in teacher_m else '–'} |")
        lines.append("")
    use = ("`transformers.AutoModelForSequenceClassification` / `AutoModelForTokenClassification`, or `distill "
           "predict model=<this dir> input=FILE.csv`") if classifier else "`transformers.AutoModelForMaskedLM`"
    lines += ["## Made with", "", "```bash", command, "```", "", f"Load it with {use}.", ""]
    path = folder / "README.md"
    path.write_text("\n".join(lines))
    return path


def write_model_card(out: str | os.PathLike, model, label_names: Sequence[str], results: Sequence[dict],
                     recipe: str | os.PathLike | Mapping | None = None,
                     compare_report: str | os.PathLike | Mapping | None = None, student_results=None) -> Path:
    """Write ``out/README.md`` and return its path; ``student_results``: the exported student's own card's
    ``EvalResult``s (its test metrics), kept in the export's metadata."""
    c, task = model.config, model.task
    n = count_parameters(model)
    pipeline_tag = "token-classification" if task == "token" else "text-classification"
    lines = [
        hub_metadata(model, Path(out).name, eval_results=student_results), "",
        f"# Distilled BERT for {pipeline_tag.replace('-', ' ')}", "",
        f"{c.num_hidden_layers} layers, hidden {c.hidden_size}, {c.num_attention_heads} heads, vocabulary "
        f"{c.vocab_size}: {n['total'] / 1e6:.2f}M parameters ({n['non_embedding'] / 1e6:.2f}M outside the "
        "embeddings). Made with `distill`; every export below was checked against the PyTorch model.", "",
        "Labels: " + ", ".join(f"`{i}` = {name}" for i, name in enumerate(label_names)), "",
        "## Use", "", "```python", "from transformers import pipeline",
        f'clf = pipeline("{pipeline_tag}", model="hf")', 'print(clf("a gripping, beautifully shot film."))', "",
        "import onnxruntime, transformers  # or, without PyTorch:",
        'tok = transformers.AutoTokenizer.from_pretrained("onnx")',
        'sess = onnxruntime.InferenceSession("int8/model.onnx")',
        'logits = sess.run(None, dict(tok(["so good"], return_tensors="np")))[0]', "```", "",
        "## Exports", "", *_exports_table(results), "",
    ]
    if compare_report is not None:
        from distill.report import table

        report = compare_report if isinstance(compare_report, Mapping) else json.loads(Path(compare_report).read_text())
        lines += ["## Compared with the teacher", "", table(report), *[f"- {x}" for x in report.get("notes", [])], ""]
    if recipe is not None:
        lines += ["## Recipe", "", "```yaml", _recipe_text(recipe).rstrip(), "```", ""]
    path = Path(out) / "README.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))
    return path
