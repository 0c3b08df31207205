"""`distill pipeline recipe=auto`: size a distillation from the data, train each candidate student,
ship the one the user's constraint picks, and say why.

Sizing (each rule's inputs and result go into ``auto.json`` / ``auto.md``):
  * ``data.max_length``: the 95th percentile of the training rows' length in the teacher's tokens,
    rounded up to a multiple of 16, within [32, 256];
  * teacher fine-tuning: about ``FINETUNE_STEPS`` optimizer steps, 2 to 10 epochs;
  * augmentation: teacher-labelled variants until the training set holds about ``AUGMENTED_ROWS`` rows
    (at most 8 per row; none from that many rows up);
  * each student's distillation: about ``KD_STEPS`` steps over the (augmented) rows, 1 to 5 epochs.
Every candidate (``auto.students``) distils from the same fine-tuned teacher and the same augmented
rows (stages are reused by their config, so the teacher is fine-tuned once). ``compare`` scores them
on the test split and times them on this CPU; ``choose`` applies ``target``:
  * ``max_latency_ms`` (p50 at batch 1) and/or ``max_params``: the most accurate student within them;
  * ``min_retention`` alone: the fastest student that keeps that share of the teacher's metric;
  * none: the most accurate student.
When no candidate meets the target, the most accurate one ships and the report and the last line say
the target was missed.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import hydra
import numpy as np
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from distill import launch
from distill.config_check import target_config, trainer_config
from distill.data.corpus import train_texts
from distill.errors import DistillError
from distill.pipeline import teacher_stage_config, train_stages
from distill.schema import TargetConfig as Target

log = logging.getLogger(__name__)

FINETUNE_STEPS, AUGMENTED_ROWS, KD_STEPS = 600, 30_000, 3_000


@dataclass
class Plan:
    """What the data's size and lengths set, with the numbers each rule read."""

    rows: int
    p95_tokens: int
    batch_size: int
    max_length: int
    finetune_epochs: int
    augment_n: int
    kd_epochs: int
    reasons: list[str] = field(default_factory=list)


def plan_for(rows: int, lengths: list[int], batch_size: int, given: dict | None = None) -> Plan:
    """The sizing rules in the module docstring, for ``rows`` training rows of ``lengths`` tokens;
    ``given``: values the user set on the command line (Plan field → value; ``max_steps`` notes), kept."""
    if rows < 2:
        raise DistillError(f"the training split has {rows} row(s); recipe=auto needs a labelled training set")
    given = given or {}
    p95 = math.ceil(np.percentile(lengths, 95)) if lengths else 32
    max_length = given["max_length"] if "max_length" in given else min(256, max(32, 16 * math.ceil(p95 / 16)))
    finetune = given["finetune_epochs"] if "finetune_epochs" in given else \
        min(10, max(2, math.ceil(FINETUNE_STEPS * batch_size / rows)))
    n = 0 if rows >= AUGMENTED_ROWS else min(8, math.ceil(AUGMENTED_ROWS / rows) - 1)
    n = given.get("augment_n", n)
    kd = given["kd_epochs"] if "kd_epochs" in given else min(5, max(1, round(KD_STEPS * batch_size / (rows * (n + 1)))))
    yours = " (set on the command line)"
    reasons = [
        f"max_length {max_length}: " + (f"{yours.strip(' ()')}; 95% of the {rows:,} training rows have at most {p95} "
                                        f"teacher tokens" if "max_length" in given else
                                        f"95% of the {rows:,} training rows have at most {p95} teacher tokens"),
        f"teacher fine-tuning {finetune} epochs" + (yours if "finetune_epochs" in given else
                                                     f": ~{FINETUNE_STEPS} steps of {batch_size} rows (2-10 epochs)"),
        f"augmentation n={n}" + (yours if "augment_n" in given else
                                 f": {rows:,} rows x {n + 1} ~ {rows * (n + 1):,} rows (aim ~{AUGMENTED_ROWS:,})" if n
                                 else f": {rows:,} rows are enough (>= {AUGMENTED_ROWS:,}): none"),
        f"distillation {kd} epochs" + (yours if "kd_epochs" in given else
                                       f": ~{KD_STEPS:,} steps over {rows * (n + 1):,} rows (1-5 epochs)"),
    ]
    reasons += [f"{key}={value} (set on the command line) caps the epochs above" for key, value in
                given.get("max_steps", {}).items()]
    return Plan(rows, p95, batch_size, max_length, finetune, n, kd, reasons)


GIVEN = {"data.max_length": "max_length", "finetune.epochs": "finetune_epochs", "data.augment.n": "augment_n",
         "trainer.epochs": "kd_epochs"}


def given_on_command_line(cfg: DictConfig, overrides: list[str]) -> tuple[dict, set[str]]:
    """The plan's values the user set in ``overrides`` (Plan field → value, and ``max_steps``), and every key
    they set (a deletion, ``~key``, sets nothing)."""
    keys = {o.lstrip("+").partition("=")[0] for o in overrides if not o.startswith("~")}
    given = {field_: OmegaConf.select(cfg, key) for key, field_ in GIVEN.items() if key in keys}
    steps = {key: OmegaConf.select(cfg, key) for key in ("finetune.max_steps", "trainer.max_steps")
             if key in keys and OmegaConf.select(cfg, key) is not None}
    return {**given, **({"max_steps": steps} if steps else {})}, keys


def measure_data(cfg: DictConfig):
    """The data, and its training rows' lengths in the teacher's tokens."""
    from distill.models.hub import load_tokenizer

    data = hydra.utils.instantiate(cfg.data.source)
    teacher = hydra.utils.instantiate({k: v for k, v in OmegaConf.to_container(cfg.teacher).items()
                                       if k != "allow_untrained"}, task=data.task)
    tokenizer = load_tokenizer(teacher.config.name_or_path)
    train = data.splits["train"]
    if data.task == "token":
        enc = tokenizer(list(train["tokens"]), is_split_into_words=True)
    elif data.task == "sequence":
        enc = tokenizer(list(train["text"]), list(train["text_pair"]) if "text_pair" in train.column_names else None)
    else:
        raise DistillError(f"recipe=auto distils sequence or token tasks; {data.name} is a {data.task} task")
    return data, [len(ids) for ids in enc["input_ids"]]


def candidate_config(cfg: DictConfig, plan: Plan, candidate: DictConfig, keys: set[str] = frozenset()) -> DictConfig:
    """The pipeline config of one candidate: the recipe, the plan's sizes, the candidate's student and
    trainer keys — and, over those, any ``trainer.*`` key the user set on the command line (``keys``)."""
    out = OmegaConf.merge(cfg, {"student": None, "auto": None, "target": None})
    out.student = candidate.student
    out.data.max_length = plan.max_length
    out.finetune.epochs = plan.finetune_epochs
    mine = OmegaConf.create()
    for key in sorted(k for k in keys if k.startswith("trainer.")):
        OmegaConf.update(mine, key.removeprefix("trainer."), OmegaConf.select(cfg, key), merge=False)
    out.trainer = OmegaConf.merge(out.trainer, candidate.get("trainer") or {}, {"epochs": plan.kd_epochs}, mine)
    if plan.augment_n:
        out.data.augment.n = plan.augment_n
    else:
        out.data.augment = None
    return out


def choose(results: dict, metric: str, target: Target) -> tuple[str, bool, str]:
    """(the student to ship, whether it meets the target, why) from compare's per-model results."""
    def value(name): return results[name]["metrics"][metric]["value"]
    def latency(name): return results[name]["latency"]["p50_ms"]
    def params(name): return results[name]["params"]["total"]
    def retention(name): return results[name]["retention"][metric]  # None when the teacher scores 0
    def shown(r): return "n/a" if r is None else f"{r:.3f}"

    checks = {"max_latency_ms": lambda n: latency(n) <= target.max_latency_ms,
              "max_params": lambda n: params(n) <= target.max_params,
              "min_retention": lambda n: retention(n) is not None and retention(n) >= target.min_retention}
    given = {k: v for k, v in asdict(target).items() if v is not None}
    meets = [n for n in results if all(checks[k](n) for k in given)]
    best = max(results, key=value)
    said = ", ".join(f"{k}={v:g}" for k, v in given.items())
    if not given:
        return best, True, f"no target given: {best} has the highest test {metric} ({value(best):.4f})"
    if not meets:
        return best, False, (f"no student meets {said}; shipping {best}, the most accurate ({metric} "
                             f"{value(best):.4f}, p50 {latency(best):.2f} ms, {params(best):,} params, retention "
                             f"{shown(retention(best))}): relax the target or add a smaller student to auto.students")
    if set(given) == {"min_retention"}:
        pick = min(meets, key=latency)
        return pick, True, (f"{pick} is the fastest student (p50 {latency(pick):.2f} ms) that keeps {said} "
                            f"(retention {shown(retention(pick))}; {len(meets)} of {len(results)} do)")
    pick = max(meets, key=value)
    return pick, True, (f"{pick} has the highest test {metric} ({value(pick):.4f}) among the {len(meets)} of "
                        f"{len(results)} students within {said} (p50 {latency(pick):.2f} ms, {params(pick):,} params)")


def run_auto(cfg: DictConfig, out_dir: str | Path, overrides: list[str] | None = None) -> dict:
    """Plan, train every candidate (one shared teacher stage), compare, choose, export; auto.json/auto.md.
    ``overrides``: the command line's (default: Hydra's), whose values the plan keeps."""
    out = Path(out_dir)
    teacher_stage_config(cfg)  # a teacher the pipeline cannot fine-tune stops here, before any model loads
    target = target_config(cfg.target) if cfg.get("target") is not None else Target()
    names = list(cfg.auto.get("students") or {})
    if not names or "teacher" in names:
        raise DistillError("auto.students needs at least one candidate, none named 'teacher' (see recipe=auto)")
    if cfg.data.get("augment") is None:
        raise DistillError("recipe=auto sizes data.augment; keep augment=words (auto sets n, 0 for large data)")
    data, lengths = measure_data(cfg)
    if overrides is None:
        from hydra.core.hydra_config import HydraConfig

        overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    given, keys = given_on_command_line(cfg, overrides)
    plan = plan_for(len(data.splits["train"]), lengths, int(cfg.data.batch_size), given)
    for line in plan.reasons:
        log.info("auto: %s", line)
    configs = {}
    for name in names:  # a candidate's typo stops here, not after the stages before it
        try:
            configs[name] = candidate_config(cfg, plan, cfg.auto.students[name], keys)
            trainer_config(configs[name].trainer)
        except (DistillError, OmegaConfBaseException) as e:
            raise DistillError(f"auto.students.{name}: {getattr(e, 'msg', e)}") from None
    dirs = {name: train_stages(c, baselines=bool(cfg.auto.baselines)) for name, c in configs.items()}
    if not launch.state().is_main_process:
        return {}
    return ship(cfg, out, data, plan, target, configs, dirs)


def ship(cfg: DictConfig, out: Path, data, plan: Plan, target: Target, configs: dict, dirs: dict) -> dict:
    """Compare the candidates (and any no-KD twins) with the teacher, choose among the KD students, export."""
    from distill.compare import Measure, compare
    from distill.export import export

    students = {name: str(d["distill"] / "student") for name, d in dirs.items()}
    twins = {f"{name} (no KD)": str(d["baseline"] / "student") for name, d in dirs.items() if "baseline" in d}
    teacher_dir = next(iter(dirs.values()))["teacher"]
    report = compare({"teacher": str(teacher_dir), **students, **twins}, None, data, out_dir=out, teacher="teacher",
                     measure=Measure(max_length=plan.max_length))
    metric = cfg.trainer.get("metric_for_best") or report["metric"]
    results = {n: report["models"][n] for n in students}
    pick, met, why = choose(results, metric, target)
    (log.info if met else log.warning)("auto: %s", why)
    exports = export(students[pick], out / "export", formats=list(cfg.export.formats),
                     trim_vocab=bool(cfg.export.trim_vocab), texts=train_texts(data), eval_data=data,
                     recipe=OmegaConf.to_container(configs[pick], resolve=True), compare_report=out / "report.json",
                     max_length=plan.max_length, optimize=bool(cfg.export.optimize),
                     vocab_size=cfg.export.get("vocab_size"))
    summary = {"plan": asdict(plan), "target": asdict(target), "metric": metric, "shipped": pick, "target_met": met,
               "why": why, "stages": {n: {k: str(v) for k, v in d.items()} for n, d in dirs.items()},
               "students": {n: {"metric": r["metrics"][metric]["value"], "retention": r["retention"][metric],
                                "p50_ms": r["latency"]["p50_ms"], "params": r["params"]["total"]}
                            for n, r in results.items()},
               "export": str(out / "export")}
    (out / "auto.json").write_text(json.dumps(summary, indent=1) + "\n")
    (out / "auto.md").write_text(render(summary, report))
    # what `distill compare|export|predict run=` read: the shipped student and the length it trained at
    (out / "pipeline.json").write_text(json.dumps({"teacher": str(teacher_dir), "distill": str(dirs[pick]["distill"]),
                                                   "max_length": plan.max_length, "shipped": pick}, indent=1))
    return {"report": report, "exports": exports, "auto": summary}


def render(summary: dict, report: dict) -> str:
    from distill.report import table

    plan, metric = summary["plan"], summary["metric"]
    out = ["# distill auto", "", f"**Shipped: {summary['shipped']}** "
           + ("(target met)" if summary["target_met"] else "(**target NOT met**)") + f": {summary['why']}.", "",
           f"Exported to `{summary['export']}`.", "", "## Sizing from the data", ""]
    out += [f"- {line}" for line in plan["reasons"]]
    out += ["", f"## Candidates (test split, {metric}; p50 at batch 1 on this CPU)", "", table(report), ""]
    return "\n".join(out)
