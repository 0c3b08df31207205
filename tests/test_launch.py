"""Multi-process launches as the README shows them: one run dir, one student, the 1-process result.

Each launch runs the real CLI in a subprocess (tiny models, CPU, gloo). Nothing here waits on a
clock: every assertion reads files the finished processes wrote.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from accelerate.commands.config.config_args import load_config_from_file
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# global batch 16 split over the processes; no dropout, so 1 and 2 processes see the same function
RUN = ["train", "teacher=tiny", "student=tiny", "data=tiny", "trainer.max_steps=6", "trainer.split_batches=true",
       "+student.hidden_dropout_prob=0", "+student.attention_probs_dropout_prob=0"]


def _env(tmp_path: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "WORLD_SIZE", "RANK",
                                                                     "LOCAL_RANK", "MASTER_"))}
    return {**env, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
            "DISTILL_CACHE": str(tmp_path / "cache")}


def _launch(cmd: list[str], cwd: Path) -> str:
    """Run a launch in ``cwd`` (its outputs/runs/ lands there); returns stdout + stderr."""
    cwd.mkdir(parents=True, exist_ok=True)
    run = subprocess.run(cmd, cwd=cwd, env=_env(cwd), capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    return run.stdout + run.stderr


def _one_run_dir(cwd: Path) -> Path:
    (run_dir,) = (cwd / "outputs" / "runs").iterdir()  # every process wrote into one dir
    return run_dir


def _weights(run_dir: Path) -> dict:
    """The student's weights, and the logged training rows (read back as the loop wrote them)."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {**load_file(run_dir / "student" / "model.safetensors"),
            "logged": [(r["step"], r["train/loss"], r["train/nonfinite"]) for r in rows if "train/loss" in r]}


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> dict:
    cwd = tmp_path_factory.mktemp("one")
    log = _launch([str(BIN / "distill"), *RUN], cwd)
    assert "1 process(es)" in log
    return _weights(_one_run_dir(cwd))


def _assert_two_processes_match(cwd: Path, log: str, one: dict) -> None:
    assert "2 process(es), mixed precision no, batch 8 per device, 16 global x 1 accumulation " \
           "(distributed: MULTI_CPU; " in log
    assert log.count("run dir: ") == 1  # rank 0 reports, rank 1 stays quiet
    run_dir = _one_run_dir(cwd)
    assert (run_dir / ".hydra" / "config.yaml").is_file() and (run_dir / "metrics.json").is_file()
    two = _weights(run_dir)
    assert max((one[k] - two[k]).abs().max().item() for k in one if k != "logged") <= 1e-5
    # the finite check agrees over processes (none skipped) and the logged loss is the global batch's, not N times it
    assert [(step, nonfinite) for step, _, nonfinite in two["logged"]] == [(s, 0) for s, _, _ in one["logged"]]
    assert [loss for _, loss, _ in two["logged"]] == pytest.approx([loss for _, loss, _ in one["logged"]], rel=1e-2)


def test_accelerate_launch_two_cpu_processes_train_as_one_run(tmp_path, one_process):
    cwd = tmp_path / "accelerate"
    log = _launch([str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                   "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "distill.cli", *RUN], cwd)
    _assert_two_processes_match(cwd, log, one_process)


def test_torchrun_two_processes_train_as_one_run(tmp_path, one_process):
    cwd = tmp_path / "torchrun"
    log = _launch([str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", "-m", "distill.cli", *RUN], cwd)
    _assert_two_processes_match(cwd, log, one_process)


@pytest.mark.parametrize(("override", "expected"), [([], "bf16"), (["trainer.mixed_precision=no"], "no")])
def test_launcher_mixed_precision_applies_unless_the_config_sets_it(tmp_path, override, expected):
    log = _launch([str(BIN / "accelerate"), "launch", "--num_processes", "1", "--num_machines", "1",
                   "--mixed_precision", "bf16", "--dynamo_backend", "no", "-m", "distill.cli", "train",
                   "teacher=tiny", "student=tiny", "data=tiny", "trainer.max_steps=2", *override], tmp_path)
    assert f"1 process(es), mixed precision {expected}," in log


def test_accelerate_cpu_flag_with_several_processes_says_it_runs_one(tmp_path):
    log = _launch([str(BIN / "accelerate"), "launch", "--cpu", "--num_processes", "2", "--num_machines", "1",
                   "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "distill.cli", "train",
                   "teacher=tiny", "student=tiny", "data=tiny", "trainer.max_steps=2"], tmp_path)
    assert "accelerate launch --cpu starts ONE process" in log and "1 process(es)" in log


@pytest.mark.parametrize(("name", "kind"), [("multi_gpu", "MULTI_GPU"), ("deepspeed_zero2", "DEEPSPEED"),
                                            ("fsdp", "FSDP")])
def test_shipped_accelerate_configs_load_with_accelerate(name, kind):
    config = load_config_from_file(str(ROOT / "distill" / "conf" / "accelerate" / f"{name}.yaml"))
    assert config.distributed_type.value == kind and config.mixed_precision == "bf16" and not config.use_cpu
    if kind == "DEEPSPEED":
        assert config.deepspeed_config["zero_stage"] == 2
    if kind == "FSDP":
        assert config.fsdp_config["fsdp_transformer_layer_cls_to_wrap"] == "BertLayer"
