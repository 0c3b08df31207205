"""benchmarks/quality.py as the README runs it, with tiny random models: two seeds, trim_vocab=true, the
quickstart's augmentation with the control row.

Every seed's students are shipped (trimmed) and scored; the medians and the report's median seed agree
with the per-seed figures; the KD student is tested against the control (what the teacher's labels add)."""

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoConfig

from distill.pipeline import CONTROL
from tests.test_augment import TINY_MLM

ROOT = Path(__file__).resolve().parents[1]


def test_quality_benchmark_scores_every_seed_as_shipped(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "DISTILL_CACHE": str(tmp_path / "cache")}
    args = ["recipe=quickstart", "teacher=tiny", "student=tiny", "data.limit=48", "trainer.max_steps=2",
            "finetune.max_steps=2", "seeds=0,1", "trim_vocab=true", "control=true", *TINY_MLM]
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "quality.py"), *args], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    shipped = {s["seed"]: s["kd_shipped"] for s in result["per_seed"]}
    assert set(shipped) == {0, 1} and all(0 <= v <= 1 for v in shipped.values())
    assert all(0 <= s["baseline_shipped"] <= 1 and 0 <= s["control_shipped"] <= 1 for s in result["per_seed"])
    assert result["shipped_metric"] == round(statistics.median(shipped.values()), 4)
    teacher = result["teacher_metric"]  # rounded to 4 places, as the retention's divisor was not
    assert result["shipped_retention"] == pytest.approx(statistics.median(shipped.values()) / teacher, abs=2e-4)
    # the report compares the shipped (trimmed) students of the median seed: its score is that seed's own
    median_seed = sorted(shipped, key=shipped.get)[1]
    assert result["median_seed_shipped_metric"] == round(shipped[median_seed], 4)
    quality = tmp_path / "outputs" / "quality" / "quickstart"
    for row in result["per_seed"]:
        for stage in ("distill", "baseline", "control"):
            vocab = AutoConfig.from_pretrained(quality / f"seed{row['seed']}" / f"{stage}-trimmed" / "hf").vocab_size
            assert vocab < 30522  # trimmed to the training split's tokens
            if stage == "distill":
                assert row["kd_shipped_vocab"] == vocab
    report = json.loads((quality / f"seed{median_seed}" / "report.json").read_text())
    kd = report["models"]["student (KD)"]
    assert kd["path"] == str(quality / f"seed{median_seed}" / "distill-trimmed" / "hf")
    assert report["models"][CONTROL]["path"] == str(quality / f"seed{median_seed}" / "control-trimmed" / "hf")
    assert result["kd_vs_control_p"] == kd["mcnemar"][CONTROL]["p_value"] and 0 <= result["kd_vs_control_p"] <= 1
    assert any(line.startswith(f"student (KD) vs {CONTROL}: ") for line in report["notes"])
    assert f"{'KD ship':>9}" in run.stdout
