"""Trackers from the command line: tensorboard gets flat scalar hyper-parameters and every logged value."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from distill.engine import flat_scalars

ROOT = Path(__file__).resolve().parents[1]


def test_flat_scalars_turns_a_nested_config_into_scalar_hparams():
    config = {"trainer": {"lr": 1e-4, "grad_accum": 1, "log_with": None}, "student": {"layers": [0, 5]}, "seed": 0}
    assert flat_scalars(config) == {"trainer.lr": 1e-4, "trainer.grad_accum": 1, "trainer.log_with": "None",
                                    "student.layers": "[0, 5]", "seed": 0}


def test_tensorboard_from_the_cli_logs_what_metrics_jsonl_holds(tmp_path):
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "DISTILL_CACHE": str(tmp_path / "cache")}
    run = subprocess.run([sys.executable, "-m", "distill.cli", "train", "teacher=tiny", "student=tiny", "data=tiny",
                          "trainer.max_steps=6", "trainer.log_every=2", "logger=tensorboard",
                          f"hydra.run.dir={tmp_path / 'run'}"], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    (events,) = (tmp_path / "run" / "distill").glob("events.out.tfevents.*")
    acc = event_accumulator.EventAccumulator(str(events))
    acc.Reload()  # the writer is closed by end_training: the file is complete, nothing to wait for
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = {row["step"]: row["train/loss"] for row in logged if "train/loss" in row}
    assert sorted(losses) == [2, 4, 6]
    scalars = {e.step: e.value for e in acc.Scalars("train/loss")}
    assert scalars == pytest.approx(losses, rel=1e-6)
    evals = {row["step"]: row["eval/accuracy"] for row in logged if "eval/accuracy" in row}
    assert {e.step: e.value for e in acc.Scalars("eval/accuracy")} == pytest.approx(evals, rel=1e-6)
