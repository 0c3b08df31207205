"""compare(): metrics with CIs match the libraries, report figures are consistent, plots are PNGs,
and the teacher pre-flight catches a teacher that was never fine-tuned."""

import json
import logging
import re
from dataclasses import replace

import matplotlib.image
import numpy as np
import pytest
from scipy.stats import binomtest
from seqeval.metrics import f1_score as seqeval_f1
from sklearn.metrics import accuracy_score, f1_score

from distill import evaluate as ev
from distill.compare import Measure, compare, mentions_by_novelty
from distill.errors import DistillError
from distill.plots import training_curves
from distill.preflight import check_labels, teacher_preflight
from tests.export_helpers import sentences, sequence_rows, tiny_model, tiny_tokenizer, token_rows

PNG = b"\x89PNG\r\n\x1a\n"
TAGS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
FAST = Measure(n_boot=200, warmup=1, repeats=3, threads=1)


def assert_png(path):
    with open(path, "rb") as f:
        assert f.read(8) == PNG
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


def test_metrics_and_bootstrap_agree_with_sklearn():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    p = np.where(rng.random(300) < 0.7, y, rng.integers(0, 3, 300))
    pred = ev.Predictions("sequence", y, p, np.arange(300))
    scores = ev.metrics(pred, ["a", "b", "c"])
    assert scores["accuracy"] == pytest.approx(accuracy_score(y, p))
    assert scores["macro_f1"] == pytest.approx(f1_score(y, p, average="macro"))
    full = ev._from_stats("sequence", ev._group_stats(pred, ["a", "b", "c"]).sum(0))  # what the bootstrap computes
    assert full["accuracy"] == pytest.approx(scores["accuracy"])
    assert full["macro_f1"] == pytest.approx(scores["macro_f1"])
    ci = ev.bootstrap(pred, ["a", "b", "c"], n_boot=500, seed=1)
    for key, (lo, hi) in ci.items():
        assert lo < scores[key] < hi and 0.05 < hi - lo < 0.2  # n=300: a ~±5-point interval
    assert ci == ev.bootstrap(pred, ["a", "b", "c"], n_boot=500, seed=1)


def test_entity_f1_bootstrap_matches_seqeval():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["O", "B-LOC", "I-LOC"], ["B-PER", "O"]]
    guess = [["B-PER", "I-PER", "O", "O"], ["O", "B-LOC", "O"], ["B-PER", "O"]]
    ids = {t: i for i, t in enumerate(TAGS)}
    flat = lambda s: np.array([ids[t] for row in s for t in row])  # noqa: E731
    group = np.repeat(np.arange(3), [4, 3, 2])
    pred = ev.Predictions("token", flat(gold), flat(guess), group)
    scores = ev.metrics(pred, TAGS)
    assert scores["entity_f1"] == pytest.approx(seqeval_f1(gold, guess)) == pytest.approx(2 * 2 / (4 + 3))
    full = ev._from_stats("token", ev._group_stats(pred, TAGS).sum(0))
    assert full["entity_f1"] == pytest.approx(scores["entity_f1"])
    assert full["token_accuracy"] == pytest.approx(7 / 9) == pytest.approx(scores["token_accuracy"])


def test_mcnemar_exact_and_chi_square():
    a = np.array([True] * 3 + [False] * 9 + [True] * 50)
    b = np.array([False] * 3 + [True] * 9 + [True] * 50)
    small = ev.mcnemar(a, b)
    assert (small["b"], small["c"], small["method"]) == (3, 9, "exact binomial")
    assert small["p_value"] == pytest.approx(2 * (1 + 12 + 66 + 220) / 4096) == pytest.approx(binomtest(3, 12).pvalue)
    a = np.array([True] * 30 + [False] * 10)
    big = ev.mcnemar(a, ~a)
    assert big["statistic"] == pytest.approx((20 - 1) ** 2 / 40)
    assert big["p_value"] == pytest.approx(0.0026635, rel=1e-3)
    assert ev.mcnemar(a, a)["p_value"] == 1.0


def test_label_mapping_checks():
    config = tiny_model(labels=("negative", "positive")).config
    assert check_labels(config, ["Negative", "Positive"]) is None
    with pytest.raises(DistillError, match="orders its labels"):
        check_labels(config, ["positive", "negative"])
    with pytest.raises(DistillError, match="predicts 2 labels"):
        check_labels(config, ["a", "b", "c"])
    assert "assuming" in check_labels(tiny_model(labels=("LABEL_0", "LABEL_1")).config, ["neg", "pos"])


def _seq_data(n=120, seed=0):
    tok = tiny_tokenizer()
    texts = [" ".join(s) for s in sentences(n, seed)]
    return tok, texts


def test_compare_report_figures_are_consistent(tmp_path):
    tok, texts = _seq_data()
    teacher = tiny_model(seed=0, initializer_range=0.2)
    rows = sequence_rows(tok, texts, [0] * len(texts))
    labels = ev.predict(ev.torch_forward(teacher), rows, "sequence").y_pred  # gold = the teacher's answers
    rows = sequence_rows(tok, texts, labels)
    student = tiny_model(seed=2, initializer_range=0.2)
    baseline = tiny_model(seed=1)
    history = [{"step": s, "loss": 1 / s, "eval/accuracy": 0.5 + s / 100} for s in range(1, 20)]
    report = compare({"teacher": teacher, "kd": student, "no_kd": baseline}, tok, rows, task="sequence",
                     label_names=["negative", "positive"], out_dir=tmp_path, baseline="no_kd",
                     curves={"kd": history}, measure=FAST)
    saved = json.loads((tmp_path / "report.json").read_text())
    t, s = saved["models"]["teacher"], saved["models"]["kd"]
    assert t["metrics"]["accuracy"]["value"] == 1.0 and not saved["preflight"]["near_chance"]
    assert saved["preflight"]["kappa"] == 1.0 and 0.4 < t["metrics"]["macro_f1"]["value"] == 1.0
    for key in ("accuracy", "macro_f1"):
        assert s["retention"][key] == pytest.approx(s["metrics"][key]["value"] / t["metrics"][key]["value"])
        lo, hi = s["metrics"][key]["ci95"]
        assert lo <= s["metrics"][key]["value"] <= hi
    assert s["speedup_p50"] == pytest.approx(t["latency"]["p50_ms"] / s["latency"]["p50_ms"])
    assert s["size_ratio"] == pytest.approx(s["size_bytes"] / t["size_bytes"])
    assert s["params_ratio"] == pytest.approx(1.0)  # same architecture
    assert s["agreement_with_teacher"] == pytest.approx(s["metrics"]["accuracy"]["value"])  # gold = teacher
    assert t["retention"]["accuracy"] == 1.0 and t["mcnemar"] == {"no_kd": t["mcnemar"]["no_kd"]}
    assert set(s["mcnemar"]) == {"teacher", "no_kd"}
    wrong = round(len(rows) * (1 - s["metrics"]["accuracy"]["value"]))
    assert s["mcnemar"]["teacher"]["b"] == 0 and s["mcnemar"]["teacher"]["c"] == wrong  # b: only kd right
    assert saved["settings"]["threads"] == 1 and saved["settings"]["n_rows"] == len(rows)
    assert report["models"]["kd"]["latency"]["p90_ms"] >= report["models"]["kd"]["latency"]["p50_ms"] > 0
    assert report["models"]["kd"]["metrics"] == s["metrics"]  # what compare returns is what it saved
    assert len(saved["plots"]) == 2
    for path in saved["plots"]:
        assert_png(path)
    md = (tmp_path / "report.md").read_text()
    assert "| **teacher** |" in md and re.search(r"^\| kd +\| ", md, re.M) and "1 thread(s)" in md and "noise" in md


def test_preflight_warns_for_random_head_teacher(caplog):
    tok, texts = _seq_data(200, seed=3)
    rows = sequence_rows(tok, texts, np.random.default_rng(0).integers(0, 2, len(texts)))
    for teacher in (tiny_model(seed=5), tiny_model(seed=0, initializer_range=0.2)):  # constant / varied answers
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            verdict = teacher_preflight(teacher, rows, task="sequence", label_names=["negative", "positive"])
        assert verdict["near_chance"] and abs(verdict["kappa"]) < 0.1
        assert any("TEACHER NEAR CHANCE" in r.getMessage() for r in caplog.records)
    with pytest.raises(DistillError, match="orders its labels"):
        teacher_preflight(tiny_model(seed=5), rows, task="sequence", label_names=["positive", "negative"])


def test_compare_token_task_reports_entity_f1_and_warning(tmp_path):
    tok = tiny_tokenizer()
    words = sentences(60, seed=4)
    rng = np.random.default_rng(1)
    tags = [[int(t) for t in rng.integers(0, len(TAGS), len(s))] for s in words]
    rows = token_rows(tok, words, tags)
    teacher, student = tiny_model("token", labels=TAGS, seed=0), tiny_model("token", labels=TAGS, seed=1)
    report = compare({"teacher": teacher, "student": student}, tok, rows, task="token", label_names=TAGS,
                     out_dir=tmp_path, latency_texts=["the film was good", "not very funny"], measure=FAST)
    s = report["models"]["student"]
    assert set(s["metrics"]) == {"entity_f1", "token_accuracy"} and report["settings"]["unit"] == "word"
    assert report["settings"]["n_units"] == sum(len(w) for w in words)
    assert report["preflight"]["near_chance"]
    assert "TEACHER NEAR CHANCE" in (tmp_path / "report.md").read_text()
    assert "mentions" not in s  # tokenized rows: no training split to call a mention seen in


def test_mentions_by_novelty_counts_exact_matches_on_either_side_golden():
    """Row 1 has no words (a gap in ``group``); "Ann" is seen as "ann"; "Paris" tagged PER is a wrong guess."""
    words = [["Ann", "met", "Bob", "Smith"], [], ["in", "Paris", "with", "Zed"]]
    gold = [["B-PER", "O", "B-PER", "I-PER"], ["O", "B-LOC", "O", "B-PER"]]
    guess = [["B-PER", "B-LOC", "B-PER", "O"], ["O", "B-PER", "O", "B-PER"]]
    flat = lambda rows: np.array([TAGS.index(t) for row in rows for t in row])  # noqa: E731
    pred = ev.Predictions("token", flat(gold), flat(guess), np.array([0, 0, 0, 0, 2, 2, 2, 2]))
    got = mentions_by_novelty(pred, TAGS, words, {("ann",), ("paris",)})
    assert got == {"seen": {"gold": 2, "found": 1, "predicted": 2, "recall": 0.5, "precision": 0.5},
                   "unseen": {"gold": 2, "found": 1, "predicted": 3, "recall": 0.5, "precision": 1 / 3}}
    from seqeval.metrics import precision_score, recall_score

    assert recall_score(gold, guess) == (1 + 1) / (2 + 2) and precision_score(gold, guess) == (1 + 1) / (2 + 3)


def test_compare_token_task_splits_mentions_by_whether_training_had_them(tmp_path):
    """TaskData with a training split: each model's seen + unseen counts add up to seqeval's entity F1."""
    import datasets

    from distill.data.corpus import TaskData
    from distill.data.mentions import spans

    tok, words = tiny_tokenizer(), sentences(40, seed=4)
    rng = np.random.default_rng(2)
    tags = [[int(t) for t in rng.integers(0, len(TAGS), len(s))] for s in words]
    split = lambda a, b: datasets.Dataset.from_dict({"tokens": words[a:b], "tags": tags[a:b]})  # noqa: E731
    data = TaskData(datasets.DatasetDict({"train": split(0, 30), "test": split(20, 40)}), TAGS, "token")
    models = {"teacher": tiny_model("token", labels=TAGS, seed=0), "student": tiny_model("token", labels=TAGS, seed=1)}
    report = compare(models, tok, data, out_dir=tmp_path, measure=replace(FAST, max_length=64))
    overlap = sum(len(spans([TAGS[t] for t in row])) for row in tags[20:30])  # test rows training also had
    for r in report["models"].values():
        seen, unseen = r["mentions"]["seen"], r["mentions"]["unseen"]
        assert seen["gold"] >= overlap > 0
        assert seen["gold"] + unseen["gold"] == sum(len(spans([TAGS[t] for t in row])) for row in tags[20:40])
        found, gold = seen["found"] + unseen["found"], seen["gold"] + unseen["gold"]
        f1 = 2 * found / (gold + seen["predicted"] + unseen["predicted"])  # 2PR / (P + R) in counts
        assert r["metrics"]["entity_f1"]["value"] == pytest.approx(f1)
    assert "student, mentions by whether their text is a training-split mention: seen" in (
        tmp_path / "report.md").read_text()


def test_training_curves_from_jsonl(tmp_path):
    lines = [{"step": s, "loss": 2.0 / s} for s in range(1, 30)] + [{"step": 30, "eval/entity_f1": 0.4}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    path = training_curves({"run": tmp_path, "other": lines[:10]}, tmp_path / "curves.png")
    assert_png(path)
    with pytest.raises(DistillError, match="does not exist"):
        training_curves({"run": tmp_path / "missing"}, tmp_path / "x.png")


def test_compare_tokenizes_raw_data_at_the_runs_max_length(tmp_path):
    """Gold = the teacher's answers on text cut at 4 tokens: scored at max_length=4 the teacher is
    exact; at full length it is not (a fixed 128 made the report disagree with metrics.json)."""
    import datasets

    from distill.data.corpus import TaskData

    tok, texts = _seq_data(n=200, seed=3)
    teacher = tiny_model(seed=0, initializer_range=0.2)
    enc = tok(texts, truncation=True, max_length=4)
    rows = [dict(zip(enc, vals)) for vals in zip(*enc.values())]
    gold = ev.predict(ev.torch_forward(teacher), [{**r, "labels": 0} for r in rows], "sequence").y_pred
    data = TaskData(datasets.DatasetDict({"test": datasets.Dataset.from_dict(
        {"text": texts, "label": [int(y) for y in gold]})}), ["negative", "positive"], "sequence")
    at = {n: compare({"teacher": teacher}, tok, data, out_dir=tmp_path / str(n), measure=replace(FAST, max_length=n))
          for n in (4, 64)}
    accuracy = {n: r["models"]["teacher"]["metrics"]["accuracy"]["value"] for n, r in at.items()}
    assert accuracy[4] == 1.0 and accuracy[64] < 0.95


def test_compare_names_the_model_whose_labels_do_not_fit(tmp_path):
    tok, texts = _seq_data(n=20)
    rows = sequence_rows(tok, texts, [0] * len(texts))
    three = tiny_model(seed=1, labels=("a", "b", "c"))
    with pytest.raises(DistillError, match=r"^model 'student' \(.*\): the model predicts 3 labels \['a', 'b', 'c'\] "
                                           r"but the data has 2"):
        compare({"teacher": tiny_model(), "student": three}, tok, rows, task="sequence",
                label_names=["negative", "positive"], out_dir=tmp_path, measure=FAST)


def test_paired_bootstrap_matches_the_normal_approximation_and_its_edges():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 2000)
    a = np.where(rng.random(2000) < 0.80, y, 1 - y)
    b = np.where(rng.random(2000) < 0.75, y, 1 - y)
    pa, pb = (ev.Predictions("sequence", y, p, np.arange(2000)) for p in (a, b))
    test = ev.paired_bootstrap(pa, pb, ["n", "p"], n_boot=4000, seed=1)
    d = (a == y).astype(float) - (b == y).astype(float)  # per-row paired difference in accuracy
    se = d.std() / np.sqrt(len(d))
    assert test["diff"] == pytest.approx(d.mean())
    assert test["ci95"] == pytest.approx([d.mean() - 1.96 * se, d.mean() + 1.96 * se], abs=0.004)
    assert test["p_value"] < 0.01 and test["unit"] == "row"
    same = ev.paired_bootstrap(pa, pa, ["n", "p"], n_boot=500)
    assert same["diff"] == 0 and same["p_value"] == 1.0


def test_paired_bootstrap_resamples_sentences_for_entity_f1():
    gold = [["B-PER", "I-PER", "O"], ["O", "B-LOC"], ["B-PER", "O"]] * 40
    good = [["B-PER", "I-PER", "O"], ["O", "B-LOC"], ["B-PER", "O"]] * 40
    bad = [["B-PER", "O", "O"], ["O", "B-LOC"], ["O", "O"]] * 40
    ids = {t: i for i, t in enumerate(TAGS)}
    flat = lambda s: np.array([ids[t] for row in s for t in row])  # noqa: E731
    group = np.repeat(np.arange(120), [3, 2, 2] * 40)
    pa, pb = (ev.Predictions("token", flat(gold), flat(p), group) for p in (good, bad))
    test = ev.paired_bootstrap(pa, pb, TAGS, n_boot=1000)
    assert test["unit"] == "sentence" and test["diff"] == pytest.approx(1.0 - seqeval_f1(gold, bad))
    assert test["p_value"] == pytest.approx(1 / 1000) and test["ci95"][0] > 0


def test_latency_figures_are_the_percentiles_of_the_timed_calls(monkeypatch):
    """measure_latency on a fake clock that each call advances by a known time: batch-1 calls of 1..10 ms
    give p50 5.5 ms and p90 9.1 ms (numpy's linear percentiles); 3 passes of a 32-row batch taking 16 ms
    each give 2,000 rows/s. Warm-up calls are not timed."""
    now = [0.0]
    monkeypatch.setattr(ev.time, "perf_counter", lambda: now[0])

    def forward(batch):
        now[0] += batch["ms"] / 1000

    singles = [{"input_ids": [[0]], "ms": ms} for ms in range(1, 11)]
    big = [{"input_ids": [[0]] * 32, "ms": 16}]
    got = ev.measure_latency(forward, singles, big, threads=1, warmup=3, repeats=10)
    assert got["p50_ms"] == pytest.approx(5.5) and got["p90_ms"] == pytest.approx(9.1)
    assert got["throughput_per_s"] == pytest.approx(2000.0) and got["batch_size"] == 32


def test_one_off_costs_of_each_input_shape_stay_out_of_the_timing(monkeypatch):
    """A forward whose first call on each input costs 100 ms (oneDNN building a kernel per sequence length) and
    1 ms after: every input is run before the clock starts, so p50 and p90 are 1 ms. Before, 3 warm-up calls
    left 7 of the 10 inputs cold, and the first of two same-shape students in a report timed slower."""
    now, seen = [0.0], set()
    monkeypatch.setattr(ev.time, "perf_counter", lambda: now[0])

    def forward(batch):
        now[0] += (1 if batch["id"] in seen else 100) / 1000
        seen.add(batch["id"])

    singles = [{"input_ids": [[0] * n], "id": n} for n in range(1, 11)]
    big = [{"input_ids": [[0]] * 32, "id": "big"}]
    got = ev.measure_latency(forward, singles, big, threads=1, warmup=3, repeats=10)
    assert got["p50_ms"] == pytest.approx(1.0) and got["p90_ms"] == pytest.approx(1.0)
    assert got["throughput_per_s"] == pytest.approx(32 / 0.001)


def test_onnx_students_are_timed_against_the_teacher_in_onnxruntime(tmp_path):
    from distill.export_formats import export_onnx, parity_inputs

    tok, texts = _seq_data(60)
    teacher = tiny_model(seed=0, initializer_range=0.2)
    rows = sequence_rows(tok, texts, [0] * len(texts))
    rows = sequence_rows(tok, texts, ev.predict(ev.torch_forward(teacher), rows, "sequence").y_pred)
    student = tiny_model(seed=2, initializer_range=0.2)
    example, checks, _ = parity_inputs(tok, texts)
    student_onnx = export_onnx(student, tmp_path / "student" / "model.onnx", example, checks)["path"]
    report = compare({"teacher": teacher, "kd": student, "kd onnx": student_onnx}, tok, rows, task="sequence",
                     label_names=["negative", "positive"], out_dir=tmp_path / "report", measure=FAST)
    models = report["models"]
    assert list(models) == ["teacher", "teacher (ONNX fp32)", "teacher (ONNX int8)", "kd", "kd onnx"]
    assert report["teacher_onnx"] == ["teacher (ONNX fp32)", "teacher (ONNX int8)"]
    assert [(m["runtime"], m.get("precision")) for m in models.values()] == [
        ("pytorch", None), ("onnxruntime", "fp32"), ("onnxruntime", "int8"), ("pytorch", None), ("onnxruntime", "fp32")]
    onnx_teacher = models["teacher (ONNX fp32)"]
    assert onnx_teacher["metrics"]["accuracy"]["value"] == 1.0  # parity: the teacher's own answers
    assert onnx_teacher["path"] == str(tmp_path / "report" / "teacher_export" / "onnx" / "model.onnx")
    for name, ref in (("kd onnx", onnx_teacher), ("teacher (ONNX int8)", onnx_teacher), ("kd", models["teacher"])):
        same = ref["latency"]["p50_ms"] / models[name]["latency"]["p50_ms"]
        assert models[name]["speedup_same_runtime"] == pytest.approx(same)
    md = (tmp_path / "report" / "report.md").read_text()
    assert re.search(r"^\| teacher \(ONNX fp32\) +\|.*\| onnxruntime fp32 +\|", md, re.M)
    assert re.search(r"^\| teacher \(ONNX int8\) +\|.*\| onnxruntime int8 +\|", md, re.M)
    assert "speed-up, same runtime" in md and "Speed-up, same runtime: " in md

    off = compare({"teacher": teacher, "kd onnx": student_onnx}, tok, rows, task="sequence",
                  label_names=["negative", "positive"], out_dir=tmp_path / "off",
                  measure=replace(FAST, teacher_onnx=False))
    assert list(off["models"]) == ["teacher", "kd onnx"] and off["teacher_onnx"] == []
    assert "same runtime" not in (tmp_path / "off" / "report.md").read_text()
