"""benchmarks/bert_speed.py, dropout_speed.py, trim_speed.py and onednn_speed.py as the README runs them (tiny
shapes; the MR ones in batches of 4 instead of 32): they run, and the last line is the JSON the README quotes,
each ratio a positive number; the timed numbers are not asserted."""

import json
import subprocess
import sys
from pathlib import Path

from distill.models import heads
from tests.conftest import padded_batch, tiny_config

ROOT = Path(__file__).resolve().parents[1]


def test_bert_speed_prints_its_ratios_as_json():
    out = subprocess.run([sys.executable, "benchmarks/bert_speed.py", "--batch", "2", "--seq", "16", "--repeats", "1"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    last = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(last) == {"infer_speedup", "train_maps_speedup", "train_speedup"}
    assert all(v > 0 for v in last.values())
    assert "train step, logits only" in out.stdout


def test_dropout_speed_prints_its_ratios_as_json():
    """benchmarks/dropout_speed.py (2 steps, 1 round): both dropouts train through the engine; JSON last line."""
    out = subprocess.run([sys.executable, "benchmarks/dropout_speed.py", "--steps", "2", "--batch", "4",
                          "--repeats", "1", "--no-wait"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    last = json.loads(out.stdout.strip().splitlines()[-1])
    assert last["auto_precision"] in ("bf16", "no")
    assert all(last[f"{p}_{k}"] > 0 for p in ("fp32", "auto") for k in ("speedup", "change_speedup"))


def test_trim_speed_prints_its_ratios_as_json():
    """benchmarks/trim_speed.py (2 steps, 1 round): each model trains through the engine with the used rows and
    with every row; the table's rows are MR's training ids."""
    out = subprocess.run([sys.executable, "benchmarks/trim_speed.py", "--steps", "2", "--batch", "4",
                          "--repeats", "1", "--no-wait"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    last = json.loads(out.stdout.strip().splitlines()[-1])
    assert all(last[f"{m}_speedup"] > 0 for m in ("student", "compact", "teacher"))
    assert 5_000 < last["rows_trained"] < last["rows"] == 30522


def test_onednn_speed_prints_its_ratios_as_json():
    """benchmarks/onednn_speed.py (2 batches, 1 round): teacher forward, inference and KD step on both paths; the
    two paths' logits agree to fp32 rounding."""
    out = subprocess.run([sys.executable, "benchmarks/onednn_speed.py", "--steps", "2", "--batch", "4",
                          "--repeats", "1", "--no-wait"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    last = json.loads(out.stdout.strip().splitlines()[-1])
    assert all(last[f"{k}_speedup"] > 0 for k in ("teacher_forward", "inference", "kd_step"))
    assert 0 < last["max_logit_diff"] < 1e-4  # two different GEMMs: equal up to rounding, not bit for bit


def test_dropout_speed_swaps_every_dropout_site(monkeypatch):
    """The variants dropout_speed.py times really differ: its swap reaches all 8 dropout sites of a 2-layer
    classifier (embeddings; per layer attention probabilities and two residual branches; the classifier),
    and "before" sends attention through SDPA (6 sites left); afterwards our dropout and path are back."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import dropout_speed as bench

    model = heads.BertForSequenceClassification(tiny_config()).train()
    ids, mask = padded_batch(0)
    calls = []

    def counting(x, p):
        calls.append(tuple(x.shape))
        return bench.torch_dropout(x, p)

    bench.with_dropout(counting, lambda: model(ids, mask))
    assert len(calls) == 8 and sum(len(shape) == 4 for shape in calls) == 2  # two (B, nh, T, T) maps
    calls.clear()
    bench.with_dropout(counting, lambda: model(ids, mask), explicit=False)
    assert len(calls) == 6 and all(len(shape) != 4 for shape in calls)
    assert bench.ops.dropout is bench.OURS and bench.bert.CPU_DROPOUT_EXPLICIT
