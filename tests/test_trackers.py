"""Trackers from the command line: tensorboard and wandb get flat scalar hyper-parameters, every logged
value and the test metrics of metrics.json, read back through each library's own reader."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from distill.engine import flat_scalars
from tests.wandb_log import read_run

ROOT = Path(__file__).resolve().parents[1]


def test_flat_scalars_turns_a_nested_config_into_scalar_hparams():
    config = {"trainer": {"lr": 1e-4, "grad_accum": 1, "log_with": None}, "student": {"layers": [0, 5]}, "seed": 0}
    assert flat_scalars(config) == {"trainer.lr": 1e-4, "trainer.grad_accum": 1, "trainer.log_with": "None",
                                    "student.layers": "[0, 5]", "seed": 0}


def _train(tmp_path, *overrides):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "DISTILL_CACHE": str(tmp_path / "cache")}
    run = subprocess.run([sys.executable, "-m", "distill.cli", "train", "teacher=tiny", "student=tiny", "data=tiny",
                          "trainer.max_steps=6", "trainer.log_every=2", *overrides,
                          f"hydra.run.dir={tmp_path / 'run'}"], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    final = json.loads((tmp_path / "run" / "metrics.json").read_text())
    tests = {f"test/{model}.{k}": v for model in ("student", "teacher") for k, v in final[model].items()}
    return logged, tests


def test_tensorboard_from_the_cli_logs_what_metrics_jsonl_holds(tmp_path):
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    logged, tests = _train(tmp_path, "logger=tensorboard")
    (events,) = (tmp_path / "run" / "distill").glob("events.out.tfevents.*")
    acc = event_accumulator.EventAccumulator(str(events))
    acc.Reload()  # the writer is closed by end_training: the file is complete, nothing to wait for
    losses = {row["step"]: row["train/loss"] for row in logged if "train/loss" in row}
    assert sorted(losses) == [2, 4, 6]
    scalars = {e.step: e.value for e in acc.Scalars("train/loss")}
    assert scalars == pytest.approx(losses, rel=1e-6)
    evals = {row["step"]: row["eval/accuracy"] for row in logged if "eval/accuracy" in row}
    assert {e.step: e.value for e in acc.Scalars("eval/accuracy")} == pytest.approx(evals, rel=1e-6)
    assert len(tests) == 4  # accuracy and macro-F1 of student and teacher
    for key, value in tests.items():  # logged once, at the last step
        assert [(e.step, e.value) for e in acc.Scalars(key)] == [(6, pytest.approx(value, rel=1e-6))], key


def test_wandb_from_the_cli_logs_what_metrics_jsonl_holds(tmp_path):
    logged, tests = _train(tmp_path, "logger=wandb", "trainer.run_name=tiny-kd", "trainer.tags=[smoke,tiny]")
    (log,) = (tmp_path / "run" / "wandb").glob("offline-run-*/run-*.wandb")
    run = read_run(log)  # the process has exited: wandb finished the run and closed its log
    assert run["exited"] and run["name"] == "tiny-kd" and run["tags"] == ["smoke", "tiny"]
    assert run["config"]["trainer.max_steps"] == 6 and run["config"]["trainer.tags"] == "['smoke', 'tiny']"
    by_step = {}
    for row in run["history"]:
        by_step.setdefault(row["step"], {}).update(row)
    for row in logged:  # every value of metrics.jsonl, at its step
        assert by_step[row["step"]] == pytest.approx({**by_step[row["step"]], **row}, rel=1e-6), row["step"]
    assert {k: by_step[6][k] for k in tests} == pytest.approx(tests, rel=1e-6)
