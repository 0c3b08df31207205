"""benchmarks/general.py as the README runs it, at smoke size: the general stage, then both task arms on MR
and WNUT-16 from the real packaged teacher and corpora (slow: real weights and data, a few minutes)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ["seeds=0", "general.data.limit=64", "general.trainer.max_steps=2", "general.data.mlm.head_texts=32",
         "general.trainer.eval_every=null", "data.limit=64", "trainer.max_steps=2", "finetune.max_steps=2",
         "data.augment.n=1"]


@pytest.mark.slow
def test_general_benchmark_runs_both_arms_on_both_corpora(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "DISTILL_CACHE": str(tmp_path / "cache")}
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "general.py"), *SMOKE], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=1800)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["general_stage"]["steps"] == 2 and set(result["general_stage"]["student"]) >= {"mlm_accuracy"}
    assert set(result["corpora"]) == {"mr", "wnut16"}
    for corpus in result["corpora"].values():
        assert set(corpus["per_seed"]["0"]) == {"general", "PCA"}
        test = corpus["general_vs_pca"]["0"]
        assert 0 <= test["mcnemar_p"] <= 1 and 0 <= test["bootstrap_p"] <= 1
    # the general arm really started from the general stage's student, the PCA arm from the recipe's own
    stages = tmp_path / "outputs" / "stages"
    (general,) = stages.glob("general-*")
    starts = [OmegaConf.load(d / "stage.yaml").student.get("name_or_path") for d in stages.glob("distill-*")]
    assert sorted(map(str, starts)) == sorted([str(general / "student")] * 2 + ["None"] * 2)
    assert result["general_student"] == str(general / "student")
