"""`distill pipeline`: fine-tune teacher → [intermediate stage] → distill student → no-KD baseline → compare → export.

Each training stage runs in ``stage_root/<stage>-<hash of its resolved config>``; a stage whose
directory already holds ``metrics.json`` is reused, so the teacher is fine-tuned once per
(teacher, data, fine-tune settings) and shared by every recipe on that data.
"""

from __future__ import annotations

import hashlib
import json
import logging
from importlib import resources
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from distill import launch
from distill.checkpoint import ADDED_WITH, BOOKKEEPING
from distill.data.corpus import train_texts
from distill.errors import DistillError
from distill.run import run_training
from distill.schema import TrainerConfig

log = logging.getLogger(__name__)
STAGE_KEYS = ("teacher", "student", "data", "losses", "trainer")
CONTROL = "student (augmented, gold labels, no KD)"
FOREIGN = "distill.models.foreign.from_pretrained"  # a teacher with its own tokenizer: distilled as it is
ENSEMBLE = "distill.models.ensemble.ensemble"  # several fine-tuned teachers: distilled as they are


def _load(relative: str) -> DictConfig:
    return OmegaConf.create((resources.files("distill") / "conf" / relative).read_text())


def stage(name: str, cfg: DictConfig, root: Path) -> Path:
    """Run (or reuse) one training stage; returns its directory."""
    resolved = {k: OmegaConf.to_container(cfg[k], resolve=True) if cfg.get(k) is not None else None
                for k in STAGE_KEYS}
    key = hashlib.sha256(json.dumps(stage_identity(resolved), sort_keys=True).encode()).hexdigest()[:12]
    out = root / f"{name}-{key}"
    if (out / "metrics.json").is_file():
        log.info("stage %s: reusing %s (same resolved config)", name, out)
        return out
    log.info("stage %s: running in %s", name, out)
    out.mkdir(parents=True, exist_ok=True)
    state = launch.state()
    if state.is_main_process:
        OmegaConf.save(OmegaConf.create(resolved), out / "stage.yaml")  # what this stage ran, for the record
    run_training(cfg, out)
    state.wait_for_everyone()  # rank 0 writes metrics.json, which the next stage reads
    return out


def stage_identity(resolved: dict) -> dict:
    """What decides a stage's result: the resolved config less the bookkeeping keys (where and how it
    logs, caches, keeps checkpoints), with the launcher's precision and accumulation where the config
    leaves them to it — a stage trained under ``accelerate launch --mixed_precision bf16`` is another stage."""
    if isinstance(resolved.get("teacher"), dict):  # a guard, not what the stage computes
        resolved = {**resolved, "teacher": {k: v for k, v in resolved["teacher"].items() if k != "allow_untrained"}}
    augment = (resolved.get("data") or {}).get("augment")
    if isinstance(augment, dict):
        resolved = {**resolved, "data": {**resolved["data"], "augment": _without_added(augment)}}
    trainer = resolved.get("trainer")
    if trainer is None:
        return resolved
    trainer = {k: v for k, v in _without_added(trainer).items() if k not in BOOKKEEPING}
    if "mixed_precision" in trainer:
        trainer["mixed_precision"] = launch.effective_precision(trainer["mixed_precision"])
    if trainer.get("grad_accum", 1) is None:
        trainer["grad_accum"] = launch.launcher_grad_accum()
    return {**resolved, "trainer": trainer}


def _without_added(node: dict) -> dict:
    """``node`` less the keys added after stages existed that hold the value those stages computed with."""
    return {k: v for k, v in node.items() if not (k in ADDED_WITH and v == ADDED_WITH[k])}


def default_trainer() -> DictConfig:
    """The trainer node of a run with no trainer overrides: conf/trainer/default.yaml over its schema."""
    node = _load("trainer/default.yaml")
    node.pop("defaults")
    return OmegaConf.merge(OmegaConf.structured(TrainerConfig), node)


def teacher_stage_config(cfg: DictConfig) -> DictConfig:
    """Fine-tuning the teacher: the teacher node becomes the trained model, gold labels only."""
    if cfg.teacher.get("_target_") == ENSEMBLE:
        raise DistillError("distill pipeline fine-tunes one teacher; an ensemble of fine-tuned teachers is distilled "
                           "with `distill train teacher=ensemble teacher.members=[DIR,DIR]`")
    if cfg.teacher.get("_target_") == FOREIGN:
        raise DistillError("distill pipeline fine-tunes a BERT teacher; a teacher of another architecture is "
                           "distilled as it is: fine-tune it with transformers, then run `distill train "
                           "teacher=hf_any teacher.name_or_path=DIR`")
    trainer = OmegaConf.merge(default_trainer(), cfg.get("finetune") or {})
    data = OmegaConf.to_container(cfg.data)  # interpolations kept: they are relative to the data node
    data.pop("transfer", None)  # the teacher learns from gold labels only
    data.pop("augment", None)
    student = OmegaConf.to_container(cfg.teacher)  # the teacher's loader; its guard is no loader argument
    student.pop("allow_untrained", None)
    return OmegaConf.create({"teacher": None, "student": student, "data": data,
                             "losses": _load("losses/hard_only.yaml"), "trainer": trainer})


def train_stages(cfg: DictConfig, baselines: bool = True) -> dict[str, Path]:
    """Teacher fine-tuning, the optional intermediate stage, distillation and the no-KD baseline (each
    reused when already done); returns their dirs by stage name."""
    if cfg.get("control") and cfg.data.get("augment") is None:  # before the teacher stage, not silently skipped
        raise DistillError("control=true trains a student on the augmented rows with gold labels, and this run "
                           "augments nothing; turn augmentation on (augment=words, or a recipe such as "
                           "recipe=quickstart) or drop control=true")
    if cfg.get("control") and cfg.data.get("augment") is not None and cfg.data.augment.get("entity_words"):
        raise DistillError("control=true trains the augmented rows with their source's tags, and "
                           "data.augment.entity_words=true replaces words inside entity mentions, whose copied tags "
                           "would then be guesses; drop one of them")
    if cfg.get("control") and not baselines:
        raise DistillError("control=true trains a no-teacher student beside the KD one; with recipe=auto it needs "
                           "auto.baselines=true")
    root = Path(hydra.utils.to_absolute_path(cfg.stage_root))
    teacher_dir = stage("teacher", teacher_stage_config(cfg), root) / "student"
    fine_tuned = {"_target_": "distill.models.hub.from_pretrained", "name_or_path": str(teacher_dir)}
    kd_cfg = OmegaConf.merge(cfg, {"teacher": None})
    kd_cfg.teacher = fine_tuned
    if kd_cfg.trainer.get("cache_dir") is None:  # one cache dir for all recipes; entries keyed by teacher + data
        kd_cfg.trainer.cache_dir = str(root / "teacher_cache")
    dirs = {"teacher": teacher_dir}
    if cfg.get("intermediate") is not None:  # TinyBERT's first task step: the KD stage starts from its student
        dirs["intermediate"] = stage("intermediate", intermediate_stage_config(kd_cfg, cfg.intermediate), root)
        kd_cfg.student = {"_target_": "distill.models.student.student_from_pretrained",
                          "name_or_path": str(dirs["intermediate"] / "student")}
    dirs["distill"] = stage("distill", kd_cfg, root)
    if not baselines:  # recipe=auto ships a student; its no-KD twins are optional
        return dirs
    baseline = {k: v for k, v in OmegaConf.to_container(cfg.get("baseline") or {}).items() if v is not None}
    augmenting = cfg.data.get("augment") is not None
    if augmenting and not {"epochs", "max_steps"} & set(baseline):
        baseline["max_steps"] = kd_steps(dirs)  # gold rows only, for as many steps as the KD stages took
    base_cfg = OmegaConf.merge(kd_cfg, {"losses": None, "student": None, "trainer": baseline})
    base_cfg.losses = _load("losses/hard_only.yaml")
    base_cfg.student = cfg.student  # the recipe's own student: no teacher-trained start for the baseline
    if augmenting:
        base_cfg.data.augment = None  # the no-KD twin trains on the labelled rows it was given
    dirs["baseline"] = stage("baseline", base_cfg, root)
    if cfg.get("control"):  # the same augmented rows (checked above) with their source's gold label, no teacher
        control = OmegaConf.merge(base_cfg, {"trainer": {"max_steps": kd_steps(dirs)}})
        control.data.augment = OmegaConf.merge(kd_cfg.data.augment, {"label": "gold"})
        dirs["control"] = stage("control", control, root)
    return dirs


def kd_steps(dirs: dict[str, Path]) -> int:
    """Optimizer steps of the intermediate and KD stages together (from their metrics.json)."""
    return sum(json.loads((dirs[name] / "metrics.json").read_text())["steps"]
               for name in ("intermediate", "distill") if name in dirs)


def intermediate_stage_config(kd_cfg: DictConfig, intermediate: DictConfig) -> DictConfig:
    """The intermediate-layer stage: the KD stage's teacher, student and data with its own losses
    (e.g. MiniLM relations + hidden MSE) and trainer keys. Its task head is not trained, so the run
    keeps its last weights rather than the best validation accuracy."""
    if not isinstance(intermediate, DictConfig) or intermediate.get("losses") is None:
        raise DistillError("intermediate needs a losses node (e.g. a CompositeLoss of MiniLMRelation and "
                           "HiddenMSE, see `distill recipes`: mr_compact); set intermediate=null for no such stage")
    trainer = OmegaConf.merge(kd_cfg.trainer, intermediate.get("trainer") or {},
                              {"load_best_at_end": False, "early_stopping_patience": None})
    out = OmegaConf.merge(kd_cfg, {"losses": None, "trainer": None})
    out.losses, out.trainer = intermediate.losses, trainer
    return out


def run_pipeline(cfg: DictConfig, out_dir: str | Path) -> dict:
    out = Path(out_dir)
    dirs = train_stages(cfg)
    if not launch.state().is_main_process:  # every process trained each stage; rank 0 compares and exports
        return {}
    teacher_dir, kd_dir, base_dir = dirs["teacher"], dirs["distill"], dirs["baseline"]
    (out / "pipeline.json").write_text(json.dumps({name: str(d) for name, d in dirs.items()}, indent=1))

    from distill.compare import Measure, compare
    from distill.export import export

    data = hydra.utils.instantiate(cfg.data.source)
    models = {"teacher": str(teacher_dir), "student (KD)": str(kd_dir / "student"),
              "student (no KD)": str(base_dir / "student")}
    curves = {"KD": kd_dir / "metrics.jsonl", "no KD": base_dir / "metrics.jsonl"}
    if "control" in dirs:
        models[CONTROL] = str(dirs["control"] / "student")
        curves["augmented, gold labels"] = dirs["control"] / "metrics.jsonl"
    report = compare(models, None, data, out_dir=out, teacher="teacher", baseline="student (no KD)", curves=curves,
                     measure=Measure(max_length=cfg.data.max_length),
                     pairs=[("student (KD)", CONTROL)] if CONTROL in models else [])  # what the teacher's labels add
    texts = train_texts(data)
    exports = export(kd_dir / "student", out / "export", formats=list(cfg.export.formats),
                     trim_vocab=bool(cfg.export.trim_vocab), texts=texts, eval_data=data,
                     recipe=OmegaConf.to_container(cfg, resolve=True), compare_report=out / "report.json",
                     max_length=cfg.data.max_length, optimize=bool(cfg.export.optimize),
                     vocab_size=cfg.export.get("vocab_size"))
    return {"report": report, "exports": exports}
