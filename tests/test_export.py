"""export(): every format reloads and matches PyTorch on shapes other than the export example."""

import json
import re

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import transformers

from distill import evaluate as ev
from distill.errors import DistillError
from distill.export import export, summary_line
from distill.models.hub import load_tokenizer, minilm_l6_path, save_pretrained
from tests.conftest import padded_batch
from tests.export_helpers import sentences, sequence_rows, tiny_model, tiny_tokenizer

TAGS = ["O", "B-PER", "I-PER"]
AUTO = {"sequence": transformers.AutoModelForSequenceClassification,
        "token": transformers.AutoModelForTokenClassification}
TEXTS = [" ".join(s) for s in sentences(10, seed=7)]


def saved(tmp_path, task="sequence", labels=("LABEL_0", "LABEL_1"), **kw):
    """A checkpoint dir as training leaves it: weights, config, tokenizer (labels possibly unnamed)."""
    model = tiny_model(task, labels=labels, initializer_range=0.2, **kw)
    tok = kw.pop("tokenizer", None) or tiny_tokenizer()
    return model, save_pretrained(model, tmp_path / "run" / "best", tok)


def other_shape_batch(task, vocab=34):
    ids, mask = padded_batch(3, batch=5, length=13, vocab=vocab)  # export example is (2, T₀)
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}


def diff(a, b, batch):
    a, b = torch.as_tensor(a), torch.as_tensor(b)
    if a.dim() == 3:
        real = batch["attention_mask"].bool()
        a, b = a[real], b[real]
    return float((a - b).abs().max())


@pytest.mark.parametrize("task", ["sequence", "token"])
def test_hf_dir_loads_with_auto_class_and_names_labels(tmp_path, task):
    names = ["negative", "positive"] if task == "sequence" else TAGS
    model, run = saved(tmp_path, task, labels=[f"LABEL_{i}" for i in range(len(names))])
    [result] = export(run, tmp_path / "export", ["hf"], texts=TEXTS, label_names=names)
    assert result["parity_max_abs_diff"] <= 1e-5 and result["loads_with"] == AUTO[task].__name__
    hf, info = AUTO[task].from_pretrained(tmp_path / "export" / "hf", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert hf.config.id2label == dict(enumerate(names)) and hf.config.label2id == {n: i for i, n in enumerate(names)}
    batch = other_shape_batch(task)
    with torch.no_grad():
        assert diff(hf.eval()(**batch).logits, model(**batch).logits, batch) <= 1e-5
    if task == "sequence":  # the pipeline answers with the dataset's label names
        pipe = transformers.pipeline("text-classification", model=str(tmp_path / "export" / "hf"), device="cpu")
        answers = pipe(TEXTS[:4])
        expected = ev.torch_forward(model)(ev.pad_rows([dict(zip(e, v)) for e in [tiny_tokenizer()(TEXTS[:4])]
                                                         for v in zip(*e.values())])).argmax(-1)
        assert [a["label"] for a in answers] == [names[i] for i in expected]
    assert (tmp_path / "export" / "README.md").is_file() and (tmp_path / "export" / "hf" / "README.md").is_file()


@pytest.mark.parametrize("task", ["sequence", "token"])
def test_onnx_and_torchscript_parity_on_new_shapes(tmp_path, task):
    model, run = saved(tmp_path, task)
    onnx_result, ts_result = export(run, tmp_path / "export", ["onnx", "torchscript"], texts=TEXTS)
    assert onnx_result["parity_max_abs_diff"] <= 1e-4 and ts_result["parity_max_abs_diff"] <= 1e-5
    example = onnx_result["example_shape"]
    assert all(shape != example for shape in onnx_result["checked_shapes"])
    graph = onnx.load(onnx_result["path"]).graph
    dims = [[d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in graph.input]
    assert dims == [["batch", "sequence"]] * 3  # dynamic axes, not the example's numbers
    batch = other_shape_batch(task)
    assert list(batch["input_ids"].shape) != example
    with torch.no_grad():
        ref = model(**batch).logits
    session = ort.InferenceSession(onnx_result["path"], providers=["CPUExecutionProvider"])
    got = session.run(None, {k: v.numpy() for k, v in batch.items()})[0]
    onnx_diff = diff(got, ref, batch)
    traced = torch.jit.load(ts_result["path"])
    with torch.no_grad():
        ts_diff = diff(traced(*batch.values()), ref, batch)
    print(f"{task}: onnx {onnx_diff:.2e}, torchscript {ts_diff:.2e} on shape {list(batch['input_ids'].shape)}")
    assert onnx_diff <= 1e-4 and ts_diff <= 1e-5
    assert (tmp_path / "export" / "onnx" / "tokenizer.json").is_file()  # each dir runs on its own
    assert "max|Δlogit|" in summary_line(onnx_result)


def test_int8_reports_metric_change_on_validation(tmp_path):
    tok = load_tokenizer(minilm_l6_path())  # a real 30k vocabulary: the embedding dominates the size
    model = tiny_model(vocab_size=tok.vocab_size, labels=("negative", "positive"), initializer_range=0.2)
    run = save_pretrained(model, tmp_path / "run", tok)
    texts = [" ".join(s) for s in sentences(80, seed=9)]
    rows = sequence_rows(tok, texts, np.random.default_rng(0).integers(0, 2, len(texts)))
    onnx_result, int8 = export(run, tmp_path / "export", ["onnx", "int8"], texts=texts[:8], eval_data=rows)
    assert int8["size_bytes"] < 0.4 * onnx_result["size_bytes"]  # int8 weights, fp32 scales
    forward = ev.onnx_forward(int8["path"])
    accuracy = ev.metrics(ev.predict(forward, rows, "sequence"), ["negative", "positive"])["accuracy"]
    assert int8["metric"] == "accuracy" and int8["metric_int8"] == pytest.approx(accuracy)
    assert int8["metric_change"] == pytest.approx(int8["metric_int8"] - int8["metric_fp32"])
    assert int8["eval_rows"] == 80
    assert int8["speedup_vs_fp32"] == pytest.approx(int8["fp32_latency_p50_ms"] / int8["latency_p50_ms"])
    assert "accuracy" in summary_line(int8)
    card = (tmp_path / "export" / "README.md").read_text()
    assert "| int8 |" in card and "validation rows" in card


def test_model_card_carries_compare_table_and_recipe(tmp_path):
    _, run = saved(tmp_path)
    report = {"metric": "accuracy", "teacher": "teacher", "baseline": None, "notes": ["a note"], "models": {
        name: {"metrics": {"accuracy": {"value": v, "ci95": [v - 0.05, v + 0.05]}}, "retention": {"accuracy": v / 0.9},
               "agreement_with_teacher": 0.9, "params": {"total": 22e6, "non_embedding": 11e6}, "size_bytes": 9e7,
               "latency": {"p50_ms": 5.0, "p90_ms": 6.0, "throughput_per_s": 300.0}, "speedup_p50": 1.0,
               "size_ratio": 1.0, "mcnemar": {}} for name, v in (("teacher", 0.9), ("student", 0.85))}}
    (tmp_path / "report.json").write_text(json.dumps(report))
    export(run, tmp_path / "export", ["hf"], texts=TEXTS, label_names=["neg", "pos"],
           recipe={"student": {"num_hidden_layers": 2}}, compare_report=tmp_path / "report.json")
    card = (tmp_path / "export" / "README.md").read_text()
    assert "pipeline_tag: text-classification" in card and "`0` = neg" in card
    assert re.search(r"^\| student +\| 85\.0 \(80\.0–90\.0\) +\|", card, re.M)
    assert "a note" in card and '"num_hidden_layers": 2' in card


def test_export_mistakes_are_one_line_errors(tmp_path):
    _, run = saved(tmp_path)
    with pytest.raises(DistillError, match="choose from"):
        export(run, tmp_path / "e", ["tflite"])
    with pytest.raises(DistillError, match="needs texts"):
        export(run, tmp_path / "e", ["hf"], trim_vocab=True)
    with pytest.raises(DistillError, match="3 label names"):
        export(run, tmp_path / "e", ["hf"], label_names=["a", "b", "c"])
    _, named = saved(tmp_path / "named", labels=("negative", "positive"))
    with pytest.raises(DistillError, match="orders its labels"):  # data in another order: never relabel silently
        export(named, tmp_path / "e", ["hf"], label_names=["positive", "negative"])


def test_export_from_task_data_with_trimmed_vocab(tmp_path, monkeypatch):
    sources = pytest.importorskip("distill.data.sources")
    monkeypatch.setenv("DISTILL_CACHE", str(tmp_path / "cache"))
    data = sources.tiny("sequence", rows=120)
    tok = load_tokenizer(minilm_l6_path())
    model = tiny_model(vocab_size=tok.vocab_size, labels=("LABEL_0", "LABEL_1"), initializer_range=0.2)
    run = save_pretrained(model, tmp_path / "run", tok)
    train = list(data.splits["train"]["text"])
    results = export(run, tmp_path / "export", ["hf", "int8"], trim_vocab=True, texts=train, eval_data=data)
    trim, hf, int8 = results
    assert trim["format"] == "trim_vocab" and trim["identical_predictions"] and trim["vocab_after"] < 500
    assert 0 <= trim["check_unk_rate"] < 0.5 and trim["check_n_texts"] == len(data.splits["validation"])
    config = json.loads((tmp_path / "export" / "hf" / "config.json").read_text())
    assert config["vocab_size"] == trim["vocab_after"] and config["id2label"] == {"0": "negative", "1": "positive"}
    assert int8["eval_rows"] == len(data.splits["validation"])
    # compare reads the exported int8 file next to PyTorch models: one table, one thread setting
    from distill.compare import Measure, compare

    report = compare({"teacher": run, "int8": int8["path"]}, None, data, out_dir=tmp_path / "cmp",
                     measure=Measure(split="validation", n_boot=100, warmup=1, repeats=3, threads=1))
    assert report["models"]["int8"]["runtime"] == "onnxruntime"
    assert report["models"]["int8"]["size_bytes"] == int8["size_bytes"]


def test_parity_checks_a_spread_of_the_corpus_and_its_longest_text():
    from distill.export_formats import parity_inputs

    tokenizer = load_tokenizer(minilm_l6_path())
    texts = [f"review number {i} " + "very " * (i // 100) + "good" for i in range(1000)] + ["long " * 60]
    example, checks, rows = parity_inputs(tokenizer, texts, max_length=32, max_rows=30)
    assert len(rows) == 31 and rows[-1]["input_ids"][:2] == tokenizer("long")["input_ids"][:2]  # the longest last
    assert len(rows[-1]["input_ids"]) == 32  # cut at max_length
    lengths = {len(r["input_ids"]) for r in rows}
    assert len(lengths) >= 8  # spread over the corpus (its first 30 texts have one length)
    assert all(tuple(b["input_ids"].shape) != tuple(example["input_ids"].shape) for b in checks)
    assert checks[-1]["input_ids"].shape == (1, 32)
