"""Two teachers vs one: a student distilled from an ensemble of two differently seeded fine-tuned
teachers (``teacher=ensemble``) vs the same student distilled from either teacher alone.

    python benchmarks/teachers.py                                   # MR, recipe=mr_logits, student seeds 0,1,2
    python benchmarks/teachers.py recipe=mr_logits seeds=0 teacher_seeds=0,1 trainer.epochs=1

The recipe's teacher is fine-tuned twice (the pipeline's teacher stage with ``finetune.seed`` 0 and 1;
reused when done). For every student seed the recipe's student is distilled from teacher A, from
teacher B and from the ensemble [A, B] (same data, steps and losses; a student built from teacher
layers takes them from A for the ensemble, and a run from the ensemble draws the same random numbers as
one from A alone). Prints each seed's test metric, the medians, and for every seed paired tests
(McNemar, paired bootstrap) of the ensemble's student against each single-teacher student; the last
line is JSON.
"""

from __future__ import annotations

import json
import logging
import statistics
import sys
from pathlib import Path

import hydra

from distill import evaluate as ev
from distill.config_check import compose_checked
from distill.models.hub import load_tokenizer
from distill.pipeline import stage, teacher_stage_config
from distill.preflight import eval_split

NAMES = ("A", "B", "A+B")


def teachers(args: list[str], teacher_seeds: list[int], root: Path) -> list[Path]:
    """The recipe's teacher fine-tuned once per seed (the pipeline's stage: reused when done)."""
    return [stage("teacher", teacher_stage_config(compose_checked([*args, f"+finetune.seed={s}"])), root) / "student"
            for s in teacher_seeds]


def students(args: list[str], seed: int, dirs: list[Path], root: Path) -> dict[str, Path]:
    """The recipe's student distilled from A, from B, and from both."""
    nodes = {"A": {"_target_": "distill.models.hub.from_pretrained", "name_or_path": str(dirs[0])},
             "B": {"_target_": "distill.models.hub.from_pretrained", "name_or_path": str(dirs[1])},
             "A+B": {"_target_": "distill.models.ensemble.ensemble", "members": [str(d) for d in dirs]}}
    out = {}
    for name, node in nodes.items():
        cfg = compose_checked([*args, f"trainer.seed={seed}"])
        cfg.teacher, cfg.trainer.cache_dir = node, str(root / "teacher_cache")
        out[name] = stage("teachers", cfg, root)
    return out


def main(argv: list[str]) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("distill").setLevel(logging.INFO)
    seeds, teacher_seeds, args = [0, 1, 2], [0, 1], []
    for arg in argv:
        key, _, value = arg.partition("=")
        if key in ("seeds", "teacher_seeds"):
            (seeds if key == "seeds" else teacher_seeds)[:] = [int(s) for s in value.split(",")]
        else:
            args.append(arg)
    if not any(a.startswith("recipe=") for a in args):
        args.insert(0, "recipe=mr_logits")
    if len(teacher_seeds) != 2:
        raise SystemExit(f"teacher_seeds={teacher_seeds}: give exactly two fine-tuning seeds (teachers A and B)")
    cfg = compose_checked(args)
    root = Path(hydra.utils.to_absolute_path(cfg.stage_root))
    dirs = teachers(args, teacher_seeds, root)
    runs = {seed: students(args, seed, dirs, root) for seed in seeds}
    data = hydra.utils.instantiate(cfg.data.source)
    key = ev.main_metric(data.task)
    score = {s: {n: json.loads((d / "metrics.json").read_text()) for n, d in r.items()} for s, r in runs.items()}
    print(f"{'seed':>4} " + " ".join(f"{n:>8}" for n in NAMES) + f"   (student {key}, test split; teachers "
          f"A {score[seeds[0]]['A']['teacher'][key]:.4f}, B {score[seeds[0]]['B']['teacher'][key]:.4f}, "
          f"A+B {score[seeds[0]]['A+B']['teacher'][key]:.4f})")
    for s in seeds:
        print(f"{s:>4} " + " ".join(f"{score[s][n]['student'][key]:8.4f}" for n in NAMES))
    median = {n: statistics.median(score[s][n]["student"][key] for s in seeds) for n in NAMES}
    print(f"{'med':>4} " + " ".join(f"{median[n]:8.4f}" for n in NAMES))
    rows, names, _ = eval_split(data, load_tokenizer(runs[seeds[0]]["A"] / "student"), split="test",
                                max_length=int(cfg.data.max_length))
    from distill.models.hub import from_pretrained

    tests = {}
    for s in seeds:  # every seed, not one picked by the ensemble's own score
        preds = {n: ev.predict(ev.torch_forward(from_pretrained(d / "student", task=data.task)), rows, data.task)
                 for n, d in runs[s].items()}
        tests[s] = {n: {"mcnemar_p": ev.mcnemar(preds["A+B"].correct, preds[n].correct)["p_value"],
                        "paired_bootstrap": ev.paired_bootstrap(preds["A+B"], preds[n], names)} for n in ("A", "B")}
        for n, t in tests[s].items():
            b = t["paired_bootstrap"]
            print(f"seed {s}: A+B vs {n}: {b['diff']:+.4f} (95% CI {b['ci95'][0]:+.4f} .. {b['ci95'][1]:+.4f}), "
                  f"McNemar p = {t['mcnemar_p']:.3g}, paired bootstrap p = {b['p_value']:.3g}")
    print(json.dumps({"metric": key, "seeds": seeds, "median": median,
                      "teachers": {n: score[seeds[0]][n]["teacher"][key] for n in NAMES},
                      "ensemble_vs": tests, "teacher_dirs": [str(d) for d in dirs]}))


if __name__ == "__main__":
    main(sys.argv[1:])
