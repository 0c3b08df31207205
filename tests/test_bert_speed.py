"""benchmarks/bert_speed.py and dropout_speed.py as the README runs them (tiny shapes): they run, and the last
line is the JSON the README quotes, each ratio a positive number; the timed numbers are not asserted."""

import json
import subprocess
import sys
from pathlib import Path

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
    out = subprocess.run([sys.executable, "benchmarks/dropout_speed.py", "--steps", "2", "--repeats", "1", "--no-wait"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    last = json.loads(out.stdout.strip().splitlines()[-1])
    assert last["auto_precision"] in ("bf16", "no")
    assert all(last[f"{p}_{k}"] > 0 for p in ("fp32", "auto") for k in ("speedup", "change_speedup"))
