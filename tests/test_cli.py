"""The command line: every recipe composes and builds, runs land in their dir, errors are one line."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import hydra
import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from distill.cli import main
from distill.config_check import options, trainer_config
from distill.errors import DistillError
from distill.models.student import count_parameters
from distill.run import build_models, check_compatible
from tests import cli_run

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ["teacher=tiny", "student=tiny", "data.limit=32", "trainer.max_steps=2"]


@pytest.mark.parametrize("recipe", options("recipe"))
def test_every_recipe_composes_and_instantiates(recipe):
    overrides = [f"recipe={recipe}"] + SMOKE
    if recipe == "finetune_teacher_mr":  # no teacher: the packaged MiniLM itself is trained
        overrides = [o for o in overrides if not o.startswith(("teacher=", "student="))]
    with initialize_config_module("distill.conf", version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    data = hydra.utils.instantiate(cfg.data.source)
    assert set(data.splits) >= {"train", "validation"} and 0 < len(data.splits["train"]) <= 32
    teacher, student = build_models(cfg, data)
    check_compatible(teacher, student)
    loss = hydra.utils.instantiate(cfg.losses)
    loss.setup(student.config, teacher.config if teacher is not None else None)
    assert loss.uses_teacher == (teacher is not None and recipe != "finetune_teacher_mr")
    assert trainer_config(cfg.trainer).max_steps == 2
    if teacher is not None:
        assert count_parameters(student)["total"] < count_parameters(teacher)["total"]
        if data.label_names:
            assert student.config.id2label == dict(enumerate(data.label_names))


def _process(*args, cwd=ROOT, env=None):
    """`python -m distill.cli ARGS` in a process of its own (what only a process shows; tests/cli_run.py)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "distill.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


_cli = cli_run.distill  # `distill ARGS` in this process: the same main(), without ~10 s of imports per run


@pytest.mark.parametrize("command, expected", [
    ("train", "== Configuration groups =="), ("pipeline", "recipe=NAME"),
    ("compare", "distill compare run=RUN_DIR"), ("export", "distill export run=RUN_DIR | model=DIR"),
    ("predict", "distill predict model=DIR|RUN_DIR|FILE.onnx"), ("check", "distill check")])
def test_every_subcommand_has_help(command, expected, tmp_path):
    run = _cli(command, "--help", cwd=tmp_path)
    assert run.returncode == 0 and expected in run.stdout, run.stdout + run.stderr[-2000:]
    assert not list(tmp_path.iterdir())  # help runs nothing


def test_hydra_flags_with_values_reach_hydra(tmp_path):
    """--cfg job --package X and --info defaults take values Hydra's parser knows; the recipe still applies,
    wherever the flags stand."""
    run = _cli("train", "recipe=quickstart", "--cfg", "job", "--package", "data.augment", cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    augment = OmegaConf.create(run.stdout)  # the node alone: augment exists only through the recipe
    assert augment.n == 8 and augment.top_k == 15 and augment.method == "neighbours"
    trainer = OmegaConf.create(_cli("train", "--cfg", "job", "--package", "trainer", "recipe=quickstart",
                                    cwd=tmp_path).stdout)  # the schema's keys with the recipe's values
    assert (trainer.epochs, trainer.lr, trainer.mixed_precision, trainer.keep_last) == (1, 2e-4, "auto", 2)
    info = _cli("pipeline", "--info", "defaults", "recipe=wnut16_augment", cwd=tmp_path)
    assert info.returncode == 0, info.stderr[-2000:]
    lines = info.stdout.splitlines()
    assert any("recipe/wnut16_augment" in ln for ln in lines) and any("data/wnut16" in ln for ln in lines)
    assert len([ln for ln in lines if "recipe/wnut16_augment" in ln]) == 1  # printed once, not twice
    assert not list(tmp_path.iterdir())


def test_train_subprocess_writes_the_run_dir(tmp_path):
    run = _process("train", "recipe=mr_logits", *SMOKE, "data.limit=64", "trainer.max_steps=5",
                   f"hydra.run.dir={tmp_path}")
    assert run.returncode == 0, run.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["steps"] == 5
    assert "teacher" in metrics
    # the reported test accuracy is the saved student's, re-measured from its dir on the same split
    from distill import evaluate as ev
    from distill.data.sources import mr
    from distill.models.hub import load_tokenizer
    from distill.preflight import eval_split, load

    rows, names, _ = eval_split(mr(limit=64), load_tokenizer(tmp_path / "student"), split="test")
    forward, _, _ = load(tmp_path / "student", "sequence")
    assert metrics["student"]["accuracy"] == ev.metrics(ev.predict(forward, rows, "sequence"), names)["accuracy"]
    for path in (".hydra/config.yaml", "student/config.json", "student/model.safetensors", "student/tokenizer.json",
                 "training_curves.png", "metrics.jsonl", "cli.log"):
        assert (tmp_path / path).is_file(), path
    log = (tmp_path / "cli.log").read_text()
    assert "device cpu, 1 process(es), mixed precision no, batch 32 per device, 32 global x 1 accumulation" in log
    import torch

    assert f"CPU kernels {torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads" in log
    # 2 batches per epoch: epoch-end checkpoints at steps 2 and 4, the final one at 5; keep_last=2
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_00000004", "step_00000005"]
    from distill.models.hub import from_pretrained

    assert from_pretrained(tmp_path / "student").config.id2label == {0: "negative", 1: "positive"}
    exported = _process("export", f"run={tmp_path}", "formats=[hf]")  # as the README shows it, right after train
    assert exported.returncode == 0, exported.stderr[-3000:]
    assert (tmp_path / "export" / "hf" / "model.safetensors").is_file()
    from huggingface_hub import ModelCard

    for card_dir in (tmp_path / "student", tmp_path / "export" / "hf"):  # the student's card, and its export's
        card = ModelCard.load(card_dir / "README.md")  # huggingface_hub's parser: YAML header and model-index
        assert card.data.pipeline_tag == "text-classification" and "distillation" in card.data.tags
        assert {r.metric_type: r.metric_value for r in card.data.eval_results} == {
            k: round(v, 6) for k, v in metrics["student"].items()}
    lo, hi = metrics["ci95"]["student"]["accuracy"]
    assert lo <= metrics["student"]["accuracy"] <= hi and lo < hi
    text = (tmp_path / "student" / "README.md").read_text()
    assert f"{100 * lo:.2f} – {100 * hi:.2f}" in text and "recipe: `mr_logits`" in text
    assert "distill train recipe=mr_logits teacher=tiny" in text  # the command that made it
    (tmp_path / "new.csv").write_text("text\na moving film\nslow and dull\n")
    predicted = _process("predict", f"model={tmp_path}", f"input={tmp_path / 'new.csv'}",  # as the README shows it
                         f"output={tmp_path / 'preds.csv'}")
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    rows = (tmp_path / "preds.csv").read_text().splitlines()
    assert rows[0] == "text,predicted_label,p_negative,p_positive" and len(rows) == 3


def test_sweep_ends_with_a_leaderboard(tmp_path):
    run = _cli("train", "-m", "recipe=mr_logits", *SMOKE, "losses.logits.temperature=1,4",
               "trainer.metric_for_best=macro_f1", f"hydra.sweep.dir={tmp_path}")
    assert run.returncode == 0, run.stderr[-3000:]
    board = (tmp_path / "leaderboard.md").read_text()
    assert "losses.logits.temperature=1" in board and "losses.logits.temperature=4" in board
    rows = (tmp_path / "leaderboard.csv").read_text().strip().splitlines()
    assert rows[0].startswith("run,overrides,validation,ranked_by,test_accuracy") and len(rows) == 3
    assert all(",macro_f1," in row for row in rows[1:])  # ranked by trainer.metric_for_best
    card = (tmp_path / "1" / "student" / "README.md").read_text()  # job 1's own command, not the sweep's
    assert "losses.logits.temperature=4" in card and "temperature=1,4" not in card


def test_pipeline_reuses_finished_stages(tmp_path):
    args = ["pipeline", "recipe=mr_logits", *SMOKE, "data.limit=48", "finetune.max_steps=2",
            f"stage_root={tmp_path / 'stages'}", "export.formats=[hf,onnx]", "export.trim_vocab=false"]
    first = _cli(*args, f"hydra.run.dir={tmp_path / 'a'}")
    assert first.returncode == 0, first.stderr[-3000:]
    stages = sorted(p.name.split("-")[0] for p in (tmp_path / "stages").iterdir() if p.name != "teacher_cache")
    assert stages == ["baseline", "distill", "teacher"]
    assert len(list((tmp_path / "stages" / "teacher_cache").glob("teacher-*"))) == 1  # shared by every seed
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    assert {"teacher", "student (KD)", "student (no KD)"} <= set(report["models"])
    assert (tmp_path / "a" / "export" / "onnx").is_dir()
    # where and how a stage logs, or what the run exports, does not make it another stage
    second = _cli(*args, "trainer.log_every=3", "trainer.tags=[again]", "export.formats=[hf]",
                  f"hydra.run.dir={tmp_path / 'b'}")
    assert second.returncode == 0, second.stderr[-3000:]
    assert (second.stdout + second.stderr).count("reusing") == 3  # teacher fine-tuned once, nothing retrained
    assert len(list((tmp_path / "stages").iterdir())) == 4  # 3 stages + the shared teacher cache


def test_stage_identity_has_the_launchers_precision_not_the_bookkeeping(monkeypatch):
    from distill.pipeline import stage_identity

    def identity(**trainer):
        return stage_identity({"student": {"layers": 2}, "trainer": {"lr": 1e-4, **trainer}})

    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    monkeypatch.delenv("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", raising=False)
    plain = identity(mixed_precision=None, grad_accum=None)
    assert plain == identity(mixed_precision="no", grad_accum=1, log_every=5, tags=["x"], run_name="r", resume="never")
    assert plain != identity(mixed_precision="bf16", grad_accum=1) != identity(mixed_precision="no", grad_accum=2)
    # a key added later with a None default keeps older stage dirs reusable; set, it is another stage
    assert plain == identity(mixed_precision=None, grad_accum=None, metric_for_best=None)
    assert plain != identity(mixed_precision=None, grad_accum=None, metric_for_best="macro_f1")
    assert plain == identity(mixed_precision=None, grad_accum=None, freeze_word_embeddings=False)
    assert plain != identity(mixed_precision=None, grad_accum=None, freeze_word_embeddings=True)
    assert plain == identity(mixed_precision=None, grad_accum=None, ema_decay=None)
    assert plain != identity(mixed_precision=None, grad_accum=None, ema_decay=0.999)
    augment = {"n": 8, "p": 0.4}  # data.augment.mask_share came later too: at 0 the stage is the one before it
    assert stage_identity({"data": {"augment": {**augment, "mask_share": 0.0}}}) == {"data": {"augment": augment}}
    assert stage_identity({"data": {"augment": {**augment, "mask_share": 0.3}}}) != {"data": {"augment": augment}}
    assert stage_identity({"data": {"augment": {**augment, "entity_words": False}}}) == {"data": {"augment": augment}}
    assert stage_identity({"data": {"augment": {**augment, "entity_words": True}}}) != {"data": {"augment": augment}}
    teacher = {"_target_": "distill.models.hub.from_pretrained", "name_or_path": "t"}
    assert stage_identity({"teacher": {**teacher, "allow_untrained": False}}) == {"teacher": teacher}
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")  # accelerate launch --mixed_precision bf16
    assert identity(mixed_precision=None, grad_accum=None) == identity(mixed_precision="bf16", grad_accum=1)
    import distill.launch

    for native, resolved in ((True, "bf16"), (False, "no")):  # auto: what this machine runs
        monkeypatch.setattr(distill.launch, "fast_bf16", lambda native=native: native)
        assert identity(mixed_precision="auto", grad_accum=1) == identity(mixed_precision=resolved, grad_accum=1)


def test_intermediate_stage_starts_the_kd_student_but_not_the_baseline(tmp_path):
    """mr_compact: relation + hidden stage first; with lr 0 in the KD and baseline stages their students
    stay exactly where they start: the intermediate stage's weights, and the recipe's fresh student."""
    import torch

    from distill.config_check import compose_checked
    from distill.models.hub import load_state_dict
    from distill.pipeline import train_stages

    cfg = compose_checked(["recipe=mr_compact", *SMOKE, "data.limit=48", "finetune.max_steps=2",
                           "data.transfer.source.limit=100", "data.transfer.max_rows=64", "trainer.lr=0",
                           f"stage_root={tmp_path}"])
    dirs = train_stages(cfg)
    assert sorted(dirs) == ["baseline", "distill", "intermediate", "teacher"]
    weights = {name: load_state_dict(dirs[name] / "student") for name in ("intermediate", "distill", "baseline")}
    assert all(torch.equal(v, weights["intermediate"][k]) for k, v in weights["distill"].items())
    moved = [k for k, v in weights["baseline"].items() if not torch.equal(v, weights["intermediate"][k])]
    assert any(".attention." in k for k in moved)  # the intermediate stage trained (lr 5e-4), the baseline did not
    stage = OmegaConf.load(dirs["intermediate"] / "stage.yaml")
    assert stage.trainer.load_best_at_end is False and stage.trainer.lr == 5.0e-4
    assert OmegaConf.load(dirs["baseline"] / "stage.yaml").student == cfg.student
    bad = _cli("pipeline", "recipe=mr_compact", *SMOKE, "~intermediate.losses", f"stage_root={tmp_path}",
               cwd=tmp_path)  # its run dir: not in the repo
    assert bad.returncode != 0 and "intermediate needs a losses node" in bad.stderr.strip().splitlines()[-1]


def test_student_group_pretrained_starts_from_a_saved_bert(tmp_path):
    import torch

    from distill.config_check import compose_checked
    from distill.models.hub import save_pretrained
    from distill.models.student import random_bert

    saved = random_bert(num_hidden_layers=1, hidden_size=16, num_attention_heads=2, intermediate_size=32)
    save_pretrained(saved, tmp_path / "s")
    cfg = compose_checked(["teacher=tiny", "student=pretrained", f"student.name_or_path={tmp_path / 's'}",
                           "data.limit=32"])
    data = hydra.utils.instantiate(cfg.data.source)
    teacher, student = build_models(cfg, data)
    check_compatible(teacher, student)
    assert student.config.id2label == dict(enumerate(data.label_names))
    assert all(torch.equal(v, saved.state_dict()[k]) for k, v in student.state_dict().items())


def test_wheel_ships_configs_and_recipes(tmp_path):
    wheel_dir, target = tmp_path / "wheel", tmp_path / "site"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(wheel_dir), str(ROOT)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-2000:]
    wheel = next(wheel_dir.glob("distill-*.whl"))
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
                              str(wheel)], capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr[-2000:]
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    code = "import distill, sys; from distill.cli import main; print(distill.__file__); sys.exit(main(['recipes']))"
    run = subprocess.run([sys.executable, "-c", code], cwd=outside, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(target)})
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.splitlines()[0].startswith(str(target))  # not the checkout
    assert "quickstart" in run.stdout and "mr_tinybert" in run.stdout


def test_a_run_dir_that_is_a_file_is_one_line(tmp_path, capsys):
    (tmp_path / "afile").write_text("")
    assert main(["train", "teacher=tiny", f"hydra.run.dir={tmp_path / 'afile'}"]) == 1
    assert capsys.readouterr().err.strip() == f"error: hydra.run.dir={tmp_path / 'afile'} is a file, not a dir; " \
        "point hydra.run.dir at a new or existing dir"


def test_a_run_composes_its_config_once(tmp_path, monkeypatch):
    """`distill train` composes its config once, Hydra's composition for the job: distill composes nothing
    to check it first. (Hydra 1.3's @hydra.main also composes once to read hydra.mode, before any job.)"""
    from hydra._internal.hydra import Hydra
    from hydra.types import RunMode

    modes, real = [], Hydra.compose_config
    counted = lambda self, *a, **k: modes.append(k.get("run_mode")) or real(self, *a, **k)  # noqa: E731
    monkeypatch.setattr(Hydra, "compose_config", counted)
    monkeypatch.chdir(tmp_path)
    assert main(["train", "recipe=mr_logits", *SMOKE, "trainer.lr=3e-4", f"hydra.run.dir={tmp_path / 'run'}"]) == 0
    assert modes == [RunMode.MULTIRUN, RunMode.RUN]  # Hydra's get_mode probe, then the job's config
    saved = OmegaConf.load(tmp_path / "run" / ".hydra" / "config.yaml")
    assert saved.trainer.lr == 3e-4 and saved.trainer.max_steps == 2 and saved.data.limit == 32
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["steps"] == 2


@pytest.mark.parametrize("args,words", [
    (["train", "recipe=nope"], ["unknown recipe 'nope'", "quickstart"]),
    (["train", "data=mrr"], ["unknown data 'mrr'", "sms_spam"]),
    (["train", "trainer.lrr=3"], ["unknown key 'trainer.lrr'", "lr"]),
    (["train", "trainer.lr=abc"], ["trainer.lr", "abc"]),
    (["train", "data=files"], ["missing required value data.train_file"]),
    (["train", "student=tiny", "student.layers=[1]"], ["unknown key 'student.layers'"]),
    # two unknown keys under a node that does not exist: the first is named, with the keys of its parent
    (["train", "recipe=general_compact", "data.mlm.head.epochs=8", "data.mlm.head.lr=0.05"],
     ["unknown key 'data.mlm.head.epochs'", "valid keys under data.mlm: probability"]),
    (["train", "augment=words", "trainer.lrr=1"], ["unknown key 'trainer.lrr'"]),  # augment is a group, not a key
    (["train", "~trainer.foo"], ["Could not delete from config"]),
    (["train", "+trainer.lr=1"], ["Could not append to config"]),
    (["train", "-m", "trainer.lr=1e-4,abc"], ["trainer.lr", "'abc'"]),  # before job 0 trains, not after
    (["train", "-m", "recipe=glob(zz*)"], ["matches no recipe", "quickstart"]),  # was Hydra's ConfigLoader trace
    (["train", "teacher=null"],
     ["teacher=null: a config group takes one of ensemble, hf_any, hf_dir, minilm_l6, tiny", "~teacher"]),
    (["train", "augment=null"], ["augment=null: a config group takes one of words", "data.augment=null"]),
    (["train", "recipe=null"], ["recipe=null: a config group takes one of", "leave recipe out"]),
    # ~augment drops the group's keys; the recipe's own data.augment values stay behind
    (["train", "recipe=quickstart", "~augment"], ["data.augment.mlm.model is missing", "data.augment=null"]),
    # checked when the config is, not in the KD stage after the pipeline fine-tuned its teacher
    (["pipeline", "recipe=quickstart", "data.augment.mlm.batch_size=0"],
     ["data.augment.mlm.batch_size=0 must be at least 1"]),
    (["train", "recipe=auto"], ["recipe=auto trains several students", "distill pipeline recipe=auto"]),
    (["pipeline", "recipe=auto", "target.min_retention=99"], ["target.min_retention=99", "e.g. 0.99"]),
    (["pipeline", "recipe=auto", "target.max_latency_ms=-1"], ["target.max_latency_ms=-1.0 must be a positive number"]),
    (["pipeline", "trainer.metric_for_best=f1"], ["trainer.metric_for_best='f1' is no validation metric", "macro_f1"]),
    # compare and export name a mistyped key instead of running with its default (hydra.run.dir is `distill
    # train`'s; compare writes to out=)
    (["compare", "teacher=t", "students=[s]", "data=mr", "hydra.run.dir=x"],
     ["unknown key 'hydra.run.dir'; distill compare takes run= teacher= students=", "out="]),
    (["compare", "teacher=t", "students=[s]", "data=mr", "treads=1"], ["unknown key 'treads'", "threads="]),
    (["export", "model=m", "trim_vocabs=true"], ["unknown key 'trim_vocabs'", "trim_vocab=", "data.*"]),
    (["predict", "model=m", "input=i", "data.x=1"], ["unknown key 'data.x'; distill predict takes model="]),
    (["train", "data=files", "data.train_file=x.csv", "data.task=token", "trainer.metric_for_best=accuracy"],
     ["trainer.metric_for_best='accuracy' is not a validation metric of a token task", "entity_f1"]),
])
def test_config_errors_are_one_line(capsys, args, words, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a value error is found in Hydra's run dir (outputs/runs/...), here
    assert main(args) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    for word in words:
        assert word in err, err
    assert not list(tmp_path.rglob("*.yaml")), "a config mistake left a run dir behind"


def test_runtime_errors_are_one_line(tmp_path):
    run = _cli("train", "recipe=mr_logits", "teacher=tiny", "data.limit=16", f"hydra.run.dir={tmp_path}")
    assert run.returncode == 1
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("error: student layers=[0, 5] is impossible for a 2-layer teacher"), run.stderr[-2000:]
    assert "Traceback" not in run.stderr


def test_no_teacher_with_a_student_built_from_one_is_one_line(tmp_path):
    run = _cli("train", "~teacher", "student=tiny", "data=tiny", "losses=hard_only", f"hydra.run.dir={tmp_path}")
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert run.stderr.strip().splitlines()[-1].startswith(
        "error: the student <distill.models.student.student_from_config> is built from a teacher, and there is none")


def test_every_mr_recipe_shares_one_fine_tuned_teacher():
    """The teacher stage depends on teacher, data (without any transfer set or augmentation) and fine-tune
    settings only; the quickstart's differs by its precision alone (bf16 where native)."""
    import json as _json

    from distill.config_check import compose_checked
    from distill.pipeline import STAGE_KEYS, stage_identity, teacher_stage_config

    keys = set()
    for args in (["recipe=quickstart", "finetune.mixed_precision=no"], ["recipe=mr_logits"], ["recipe=mr_transfer"],
                 ["recipe=mr_tinybert"]):
        stage_cfg = teacher_stage_config(compose_checked(args))
        assert "transfer" not in stage_cfg.data and "augment" not in stage_cfg.data
        resolved = {k: OmegaConf.to_container(stage_cfg[k], resolve=True) if stage_cfg.get(k) is not None else None
                    for k in STAGE_KEYS}
        keys.add(_json.dumps(stage_identity(resolved), sort_keys=True))  # the key pipeline.stage hashes
    assert len(keys) == 1


@pytest.mark.parametrize("precision", ["bf16", "auto"])
def test_bf16_mixed_precision_and_token_task_run(tmp_path, precision):
    """bf16 autocast through accelerate on CPU, on the token-classification recipe (entity F1); ``auto``
    as the README shows it runs bf16 where the CPU has it natively."""
    from distill.launch import fast_bf16

    run = _cli("train", "recipe=wnut16_ner", *SMOKE, f"trainer.mixed_precision={precision}",
               f"hydra.run.dir={tmp_path}")
    assert run.returncode == 0, run.stderr[-3000:]
    expected = "bf16" if precision == "bf16" or fast_bf16() else "no"
    assert f"mixed precision {expected}," in (tmp_path / "cli.log").read_text()
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert set(metrics["student"]) == {"entity_f1", "token_accuracy"} and metrics["nonfinite"] == 0
    assert "eval/entity_f1" in (tmp_path / "metrics.jsonl").read_text()


def test_leaderboard_ranks_by_validation_and_shows_test_beside(tmp_path):
    from distill.leaderboard import leaderboard_rows

    for job, validation, test in (("0", 0.70, 0.90), ("1", 0.80, 0.60), ("2", None, 0.99)):
        (tmp_path / job).mkdir()
        (tmp_path / job / "metrics.json").write_text(json.dumps(
            {"best_validation": validation, "student": {"accuracy": test}}))
    rows = leaderboard_rows(tmp_path)
    assert [(r["run"], r["validation"], r["test_accuracy"]) for r in rows] == \
        [("1", 0.80, 0.60), ("0", 0.70, 0.90), ("2", None, 0.99)]


def test_an_untrained_teacher_head_stops_unless_allowed(tmp_path, capsys, monkeypatch):
    """Issue 17: `distill train` distilled from the packaged MiniLM's random classifier with a warning only."""
    monkeypatch.chdir(tmp_path)
    args = ["train", "recipe=mr_logits", "student=tiny", "data.limit=16", "trainer.max_steps=1"]
    assert main([*args, f"hydra.run.dir={tmp_path / 'a'}"]) == 1
    assert "error: the teacher's classifier was never trained (its checkpoint has no classifier.bias); fine-tune " \
        "it first with `distill pipeline recipe=NAME`, or pass teacher=hf_dir teacher.name_or_path=<fine-tuned dir>; " \
        "teacher.allow_untrained=true distils from it anyway" in capsys.readouterr().err
    assert not (tmp_path / "a" / "student").exists()
    assert main([*args, "teacher.allow_untrained=true", f"hydra.run.dir={tmp_path / 'b'}"]) == 0
    assert json.loads((tmp_path / "b" / "metrics.json").read_text())["steps"] == 1


def test_a_checkpoint_saved_before_a_new_trainer_key_still_resumes():
    from distill.checkpoint import changed_settings

    old = {"trainer.lr": 1e-4}  # saved before trainer.metric_for_best existed
    assert changed_settings(old, {"trainer.lr": 1e-4, "trainer.metric_for_best": "None"}) == []
    assert changed_settings(old, {"trainer.lr": 1e-4, "teacher.allow_untrained": False}) == []  # a guard only
    assert changed_settings(old, {"trainer.lr": 1e-4, "trainer.metric_for_best": "macro_f1"}) == [
        "trainer.metric_for_best=None (now macro_f1)"]
    # saved before trainer.trim_embeddings: those runs trained every row, and resume so
    assert changed_settings(old, {"trainer.lr": 1e-4, "trainer.trim_embeddings": False}) == []
    assert changed_settings(old, {"trainer.lr": 1e-4, "trainer.trim_embeddings": True}) == [
        "trainer.trim_embeddings=False (now True)"]
    # data.augment.mask_share came later too; an untyped node's 0 is the 0.0 it was, a number compared by value
    assert changed_settings(old, {"trainer.lr": 1e-4, "data.augment.mask_share": 0}) == []
    assert changed_settings(old, {"trainer.lr": 1e-4, "trainer.freeze_word_embeddings": False}) == []  # later too
    assert changed_settings(old, {"trainer.lr": 1e-4, "trainer.freeze_word_embeddings": True}) == [
        "trainer.freeze_word_embeddings=False (now True)"]
    assert changed_settings(old, {"trainer.lr": 1e-4, "data.augment.mask_share": 0.5}) == [
        "data.augment.mask_share=0.0 (now 0.5)"]
    assert changed_settings({"data.augment.n": 8}, {"data.augment.n": 8.0}) == []
    assert changed_settings({"trainer.trim_embeddings": False}, {"trainer.trim_embeddings": 0}) != []  # not a number


def test_rerun_in_a_run_dir_with_other_settings_is_refused_and_loses_nothing(tmp_path):
    """Issue 19 #3: a changed lr was ignored (the old schedule continued), a changed width called the
    checkpoints unreadable. Now: one line naming what changed; the run's checkpoints stay as they were."""
    args = ["train", "teacher=tiny", "student=tiny", "data=tiny", "trainer.max_steps=4", f"hydra.run.dir={tmp_path}"]
    first = _cli(*args)
    assert first.returncode == 0, first.stderr[-3000:]
    before = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    changed = _cli(*args, "trainer.lr=5e-3", "student.hidden_size=64", "trainer.log_every=1")
    assert changed.returncode == 1 and "Traceback" not in changed.stderr
    (line,) = [ln for ln in changed.stderr.splitlines() if ln.startswith("error:")]
    assert "holds checkpoints of a run with other settings: student.hidden_size=32 (now 64), trainer.lr=0.0001 " \
           "(now 0.005);" in line
    assert "log_every" not in line and "new hydra.run.dir" in line
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == before
    same = _cli(*args, "trainer.log_every=1")  # logging settings may change: it resumes (nothing left to do)
    assert same.returncode == 0 and "resumed from" in same.stdout + same.stderr


def _error_line(run) -> str:
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr[-3000:]
    (line,) = [ln for ln in run.stderr.splitlines() if ln.startswith("error:")]
    return line


def test_unwritable_dirs_stop_before_any_step_and_lose_nothing(tmp_path):
    """Issue 19: a read-only run dir, checkpoints dir, teacher cache or $DISTILL_CACHE gave PermissionError
    traces, and a read-only checkpoints dir lost the trained steps (the first save failed after them).
    Root ignores permission bits, so as root the refused runs are processes with CAP_DAC_OVERRIDE dropped
    (setpriv); the first run and the resumed one write where they may and run in this process."""
    unprivileged = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--"] if os.geteuid() == 0 else []
    if unprivileged and (not shutil.which("setpriv") or subprocess.run([*unprivileged, "true"]).returncode != 0):
        pytest.skip("running as root, which ignores permission bits, and cannot drop CAP_DAC_OVERRIDE (setpriv)")

    def cli(*args, env=None):
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "DISTILL_CACHE": str(tmp_path / "cache"), **(env or {})}
        return subprocess.run([*unprivileged, sys.executable, "-m", "distill.cli", *args], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=600)

    run, locked = tmp_path / "run", [tmp_path / d for d in ("ro", "ro-cache", "ro-data")]
    for folder in locked:
        folder.mkdir()
        folder.chmod(0o555)
    args = ["train", "teacher=tiny", "student=tiny", "data=tiny", f"hydra.run.dir={run}"]
    writable = {"DISTILL_CACHE": str(tmp_path / "cache")}  # runs that write where they may: in this process
    first = _cli(*args, "trainer.max_steps=4", env=writable)
    assert first.returncode == 0, first.stderr[-3000:]
    before = sorted(p.name for p in (run / "checkpoints").iterdir())
    (run / "checkpoints").chmod(0o555)
    line = _error_line(cli(*args, "trainer.max_steps=6"))  # train longer: refused before step 5, not after it
    assert f"cannot write in {run / 'checkpoints'} (Permission denied); make it writable" in line
    assert f"cannot write in the run dir {locked[0]}; make it writable or point hydra.run.dir" in \
        _error_line(cli(*args[:-1], f"hydra.run.dir={locked[0]}"))
    assert f"cannot write in {locked[0]}, where the run dir {locked[0]}/new would be made" in \
        _error_line(cli(*args[:-1], f"hydra.run.dir={locked[0]}/new"))
    assert "set trainer.cache_dir to a writable dir" in _error_line(
        cli(*args[:-1], f"hydra.run.dir={tmp_path / 'cached'}", "trainer.max_steps=4", "trainer.teacher_cache=true",
            f"trainer.cache_dir={locked[1]}"))
    assert f"cannot write in {locked[2] / 'data'} (Permission denied); set DISTILL_CACHE to a writable dir" in \
        _error_line(cli(*args[:-1], f"hydra.run.dir={tmp_path / 'other'}", env={"DISTILL_CACHE": str(locked[2])}))
    (run / "checkpoints").chmod(0o755)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == before  # the kept checkpoint resumes
    resumed = _cli(*args, "trainer.max_steps=6", env=writable)
    assert resumed.returncode == 0 and "resumed from" in resumed.stderr + resumed.stdout, resumed.stderr[-3000:]
    assert json.loads((run / "metrics.json").read_text())["steps"] == 6


def _one_class_csv(folder: Path) -> Path:
    csv = folder / "one.csv"
    csv.write_text("text,label\n" + "".join(f"review number {i} was fine,positive\n" for i in range(60)))
    return csv


def test_a_train_split_with_one_class_stops_with_one_line(tmp_path):
    """Issue 19 #4: it trained a 1-label head and reported accuracy 1.0."""
    csv = _one_class_csv(tmp_path)
    run = _cli("train", "teacher=tiny", "student=tiny", "data=files", f"data.train_file={csv}",
               "trainer.max_steps=2", f"hydra.run.dir={tmp_path / 'run'}", env={"DISTILL_CACHE": str(tmp_path)})
    assert run.returncode == 1 and "Traceback" not in run.stderr
    (line,) = [ln for ln in run.stderr.splitlines() if ln.startswith("error:")]
    assert "the train split holds one class ('positive'" in line and "data.label_column" in line
    assert not (tmp_path / "run" / "student").exists()


def test_a_run_stopped_by_its_data_never_loads_the_scoring_and_plotting_libraries(tmp_path):
    """sklearn / scipy / seqeval and matplotlib take ~3 s to import on 2 cores: `distill recipes` and a run that
    stops before it scores or plots (here a one-class train split) never load them."""
    csv = _one_class_csv(tmp_path)
    args = ["train", "teacher=tiny", "student=tiny", "data=files", f"data.train_file={csv}",
            f"hydra.run.dir={tmp_path / 'run'}"]
    code = (f"import sys; from distill.cli import main; main(['recipes']); code = main({args!r}); "
            "print(code, [m for m in ('sklearn', 'scipy.stats', 'seqeval', 'matplotlib') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "HF_HUB_OFFLINE": "1", "DISTILL_CACHE": str(tmp_path / "cache")})
    assert "the train split holds one class" in out.stderr, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "1 []"


def test_recipes_into_a_closed_pipe_exits_quietly():
    """`distill recipes | head`: the reader is gone before we write (no timing: its end is closed first)."""
    read, write = os.pipe()
    os.close(read)
    run = subprocess.run([sys.executable, "-m", "distill.cli", "recipes"], cwd=ROOT, stdout=write,
                         stderr=subprocess.PIPE, text=True, timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    os.close(write)
    assert run.returncode == 0 and run.stderr == ""


def test_compare_teacher_students_baseline_as_the_readme_shows(tmp_path):
    trained = _cli("train", "teacher=tiny", "student=tiny", "data=tiny", "trainer.max_steps=4",
                   f"hydra.run.dir={tmp_path / 'run'}")
    assert trained.returncode == 0, trained.stderr[-3000:]
    student, best = tmp_path / "run" / "student", tmp_path / "run" / "best"  # the same weights (best = last here)
    run = _cli("compare", f"teacher={student}", f"students=[{student},{best}]", f"baseline={best}", "data=tiny",
               f"out={tmp_path / 'cmp'}", "threads=1")
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads((tmp_path / "cmp" / "report.json").read_text())
    assert report["baseline"] == "best" and set(report["models"]) == {"teacher", "student", "best"}
    boot = report["models"]["student"]["paired_bootstrap"]["best"]
    assert boot["diff"] == 0 and boot["p_value"] == 1.0
    assert "student vs best: paired bootstrap over rows" in run.stdout


def test_compare_run_of_a_train_run_as_the_readme_shows(tmp_path):
    """`distill compare run=outputs/runs/<time>` right after `distill train teacher=hf_dir ...`: the run's
    student against the teacher dir it read; a teacher that was built, not read (teacher=tiny), is one line."""
    first = _cli("train", "teacher=tiny", "student=tiny", "data=tiny", "trainer.max_steps=2",
                 f"hydra.run.dir={tmp_path / 'a'}")
    assert first.returncode == 0, first.stderr[-3000:]
    refused = _cli("compare", f"run={tmp_path / 'a'}")
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    assert refused.stderr.strip().splitlines()[-1] == (
        f"error: {tmp_path / 'a'} is a `distill train` run whose teacher is not a saved model dir; pass "
        f"teacher=DIR students=[{tmp_path / 'a' / 'student'}] data=NAME")
    teacher = tmp_path / "a" / "student"
    second = _cli("train", "teacher=hf_dir", f"teacher.name_or_path={teacher}", "student=tiny", "data=tiny",
                  "trainer.max_steps=2", f"hydra.run.dir={tmp_path / 'b'}")
    assert second.returncode == 0, second.stderr[-3000:]
    run = _cli("compare", f"run={tmp_path / 'b'}", "threads=1")
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads((tmp_path / "b" / "report.json").read_text())
    assert set(report["models"]) == {"teacher", "student (KD)"} and report["baseline"] is None
    metrics = json.loads((tmp_path / "b" / "metrics.json").read_text())  # the run's own test score, re-measured
    for name, key in (("student (KD)", "student"), ("teacher", "teacher")):
        assert report["models"][name]["metrics"]["accuracy"]["value"] == pytest.approx(metrics[key]["accuracy"])


def test_a_dir_without_a_run_config_is_one_line(tmp_path):
    from distill.cli import _run_models

    (tmp_path / "student").mkdir()  # a copied student dir's parent: no .hydra/config.yaml
    with pytest.raises(DistillError, match="holds no .hydra/config.yaml, so it is not a distill run dir"):
        _run_models(tmp_path)


def test_compare_and_export_keep_paths_as_written():
    """Paths are not read as Hydra values: a sweep-named run dir, a number-like dir, ~ and spaces stay
    text; other keys take Hydra's grammar, as `distill train` does."""
    from distill.cli import _kv

    kv = _kv(["run=outputs/lr=1e-4,epochs=2", "students=[runs/a (copy), ~/b]", "out=2026", "threads=2",
              "data.limit=32"], "compare")
    assert kv == {"run": "outputs/lr=1e-4,epochs=2", "students": ["runs/a (copy)", "~/b"], "out": "2026",
                  "threads": 2, "data.limit": "data.limit=32"}
    assert _kv(["formats=[hf,onnx]", "trim_vocab=true", "out=2026"], "export") == {
        "formats": ["hf", "onnx"], "trim_vocab": True, "out": "2026"}
    with pytest.raises(DistillError, match=r"cannot parse 'formats=\[hf'.*distill export --help"):
        _kv(["formats=[hf"], "export")


def test_a_trainer_key_may_point_at_another_part_of_the_config():
    """Interpolations resolve against the whole config before the trainer schema checks the values."""
    from distill.config_check import compose_checked

    cfg = compose_checked(["stage_root=/tmp/st", "trainer.cache_dir=${stage_root}/cache"])
    assert trainer_config(cfg.trainer).cache_dir == "/tmp/st/cache"
