"""recipe=auto (issue 17): stages sized from the data, two students, the target picks the one shipped."""

import json

import pytest

from distill.auto import Target, choose, plan_for
from distill.errors import DistillError
from tests import cli_run


def test_plan_sizes_every_stage_from_rows_and_lengths():
    small = plan_for(210, [10] * 200 + [40] * 10, batch_size=16)
    assert (small.max_length, small.finetune_epochs, small.augment_n, small.kd_epochs) == (32, 10, 8, 5)
    mr = plan_for(8530, list(range(1, 101)), batch_size=32)  # p95 of 1..100 = 95.05 -> 96 tokens
    assert (mr.p95_tokens, mr.max_length, mr.finetune_epochs, mr.augment_n, mr.kd_epochs) == (96, 96, 3, 3, 3)
    large = plan_for(50_000, [600] * 10, batch_size=32)  # long rows: capped at 256; enough rows: no augmentation
    assert (large.max_length, large.finetune_epochs, large.augment_n, large.kd_epochs) == (256, 2, 0, 2)
    assert "augmentation n=0: 50,000 rows are enough" in large.reasons[2]
    with pytest.raises(DistillError, match="needs a labelled training set"):
        plan_for(1, [5], 32)
    yours = plan_for(8530, [20] * 10, 32, {"max_length": 64, "augment_n": 0, "max_steps": {"trainer.max_steps": 30}})
    assert (yours.max_length, yours.augment_n, yours.kd_epochs) == (64, 0, 5)
    assert yours.reasons[0] == "max_length 64: set on the command line; 95% of the 8,530 training rows have at most " \
        "20 teacher tokens"
    assert yours.reasons[2] == "augmentation n=0 (set on the command line)"
    assert yours.reasons[-1] == "trainer.max_steps=30 (set on the command line) caps the epochs above"


def test_augment_n_0_is_autos_no_augmentation_and_other_values_are_still_checked(tmp_path):
    from distill.config_check import compose_checked
    from distill.pipeline import train_stages

    assert compose_checked(["recipe=auto", "data.augment.n=0"]).data.augment.n == 0  # the plan keeps it: none
    with pytest.raises(DistillError, match="data.augment.p=2.0 must be a probability"):
        compose_checked(["recipe=auto", "data.augment.p=2"])
    cfg = compose_checked(["recipe=auto", "control=true", f"stage_root={tmp_path / 'stages'}"])
    with pytest.raises(DistillError, match="with recipe=auto it needs auto.baselines=true"):
        train_stages(cfg, baselines=False)  # as run_auto calls it by default: the control was silently skipped
    assert not (tmp_path / "stages").exists()


def test_what_the_user_sets_wins_over_the_plan_and_the_candidate():
    from omegaconf import OmegaConf

    from distill.auto import candidate_config, given_on_command_line

    cfg = OmegaConf.create({"data": {"max_length": 128, "augment": {"n": 2}}, "finetune": {"epochs": 2},  # as Hydra
                            "trainer": {"lr": 1e-5, "epochs": 4, "max_steps": 50}, "student": {"a": 1},  # composed
                            "auto": {}, "target": {}})  # the overrides below into the recipe
    overrides = ["recipe=auto", "trainer.lr=1e-5", "++data.augment.n=2", "~trainer.seed", "trainer.max_steps=50"]
    given, keys = given_on_command_line(cfg, overrides)
    assert given == {"augment_n": 2, "max_steps": {"trainer.max_steps": 50}}
    assert keys == {"recipe", "trainer.lr", "data.augment.n", "trainer.max_steps"}  # a deletion sets nothing
    plan = plan_for(1000, [10] * 10, 32, given)
    assert plan.augment_n == 2 and plan.reasons[-1] == "trainer.max_steps=50 (set on the command line) caps the " \
        "epochs above"
    candidate = OmegaConf.create({"student": {"b": 2}, "trainer": {"lr": 3e-4, "seed": 7}})
    out = candidate_config(cfg, plan, candidate, keys)
    assert out.trainer.lr == 1e-5 and out.trainer.max_steps == 50  # the user's beat the candidate's
    assert out.trainer.seed == 7 and out.trainer.epochs == plan.kd_epochs  # the candidate's, the plan's
    assert out.data.augment.n == 2 and out.student == {"b": 2} and out.auto is None and out.target is None


def _results(**students):
    return {name: {"metrics": {"accuracy": {"value": acc}}, "latency": {"p50_ms": ms}, "params": {"total": params},
                   "retention": {"accuracy": acc / 0.80}} for name, (acc, ms, params) in students.items()}


def test_choose_follows_the_target():
    results = _results(big=(0.79, 4.0, 20_000_000), small=(0.77, 1.0, 5_000_000), tiny=(0.70, 0.5, 1_000_000))
    assert choose(results, "accuracy", Target())[:2] == ("big", True)
    assert choose(results, "accuracy", Target(max_latency_ms=2.0))[:2] == ("small", True)
    assert choose(results, "accuracy", Target(max_params=2_000_000))[:2] == ("tiny", True)
    pick, met, why = choose(results, "accuracy", Target(min_retention=0.95))  # big 0.9875, small 0.9625
    assert (pick, met) == ("small", True) and "fastest student (p50 1.00 ms) that keeps min_retention=0.95" in why
    pick, met, why = choose(results, "accuracy", Target(max_latency_ms=0.1))
    assert (pick, met) == ("big", False) and why.startswith("no student meets max_latency_ms=0.1; shipping big")
    for r in results.values():  # a teacher scoring 0 (entity F1 on a small split): no retention to compare
        r["retention"]["accuracy"] = None
    pick, met, why = choose(results, "accuracy", Target(min_retention=0.9))
    assert (pick, met) == ("big", False) and "retention n/a" in why
    with pytest.raises(DistillError, match="is a share of the teacher's metric"):
        Target(min_retention=99)


def test_auto_on_a_users_csv_ships_the_student_that_meets_the_target(tmp_path):
    """The README's `distill pipeline recipe=auto data=files ...` with tiny models: the teacher is fine-tuned once
    for both candidates, the 2-layer one is over max_params, so the compact one ships and is exported."""
    from distill.data.sources import tiny

    rows = tiny("sequence").splits["train"]
    (tmp_path / "train.csv").write_text("review,stars\n" + "".join(
        f"{t},{['neg', 'pos'][y]}\n" for t, y in zip(rows["text"], rows["label"])))
    tiny_models = ["teacher=tiny", "auto.students.two_layer.student.layers=[0,1]",
                   "auto.students.compact.student.hidden_size=16", "auto.students.compact.student.intermediate_size=32",
                   "data.augment.mlm.model._target_=distill.models.student.random_bert", "data.augment.mlm.epochs=1",
                   "data.augment.top_k=3", "data.augment.pool=5", "finetune.max_steps=20", "trainer.max_steps=30"]
    env = {"DISTILL_CACHE": str(tmp_path / "cache")}
    run = cli_run.distill("pipeline", "recipe=auto", "data=files", f"data.train_file={tmp_path / 'train.csv'}",
                          "data.text_column=review", "data.label_column=stars", "target.max_params=700000",
                          *tiny_models, f"stage_root={tmp_path / 'stages'}", "export.formats=[hf]",
                          f"hydra.run.dir={tmp_path / 'run'}", env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "auto.json").read_text())
    params = {name: s["params"] for name, s in summary["students"].items()}
    assert params["two_layer"] > 700_000 >= params["compact"]
    assert summary["shipped"] == "compact" and summary["target_met"]
    assert summary["plan"]["augment_n"] == 8 and summary["plan"]["finetune_epochs"] == 10
    teachers = {s["teacher"] for s in summary["stages"].values()}
    assert len(teachers) == 1  # one fine-tuned teacher for both candidates
    assert "shipped: compact has the highest test accuracy" in run.stdout
    assert "**Shipped: compact** (target met)" in (tmp_path / "run" / "auto.md").read_text()
    exported = json.loads((tmp_path / "run" / "export" / "hf" / "config.json").read_text())
    assert exported["hidden_size"] == 16 and exported["id2label"] == {"0": "neg", "1": "pos"}
    auto_md = (tmp_path / "run" / "auto.md").read_text()
    assert "trainer.max_steps=30 (set on the command line) caps the epochs above" in auto_md
    # the run dir works with predict as the README shows it for a pipeline: the shipped student, at its max_length
    assert json.loads((tmp_path / "run" / "pipeline.json").read_text())["max_length"] == 32
    (tmp_path / "new.csv").write_text("text\na good film\n")
    predicted = cli_run.distill("predict", f"model={tmp_path / 'run'}", f"input={tmp_path / 'new.csv'}",
                                f"output={tmp_path / 'preds.csv'}", env=env)
    assert predicted.returncode == 0, predicted.stderr[-2000:]
    assert (tmp_path / "preds.csv").read_text().splitlines()[0] == "text,predicted_label,p_neg,p_pos"
