"""General (task-agnostic) distillation first, or not (issue 16): the compact 4x128 student after
``recipe=general_compact``, task-distilled on MR and WNUT-16, against the same task stage from the
PCA-initialised student with random layers: same fine-tuned teacher, augmented rows, teacher labels,
losses and steps.

    python benchmarks/general.py                          # general stage + MR and WNUT-16, seeds 0,1,2
    python benchmarks/general.py general=DIR seeds=0      # reuse a general student dir (config.json + weights)
    python benchmarks/general.py corpora=mr general.trainer.max_steps=1600   # general.KEY=V: the general stage

The general stage is ``recipe=general_compact data.mlm.head_texts=4000 trainer.max_steps=800`` (800 steps
of 32 chunks of IMDB reviews) plus any ``general.KEY=V``; other Hydra overrides go to every task stage.
Per corpus: ``recipe=<corpus>_compact_general student.name_or_path=<general student>`` against
``recipe=<corpus>_compact_augment intermediate=null`` — the pipeline's stages (the teacher fine-tuned once
and shared, every stage reused when done; no no-KD twins). Prints the general stage's held-out masked-LM
figures, each seed's test metric of both, the medians, and on every seed the paired tests of general vs
PCA (McNemar; paired bootstrap over rows — sentences or tweets); the last line is JSON.
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
from distill.models.hub import from_pretrained, load_tokenizer
from distill.pipeline import stage, train_stages
from distill.preflight import eval_split

GENERAL = ["recipe=general_compact", "data.mlm.head_texts=4000", "trainer.max_steps=800"]
ARMS = {  # corpus -> (general-start task recipe, PCA-start task recipe)
    "mr": (["recipe=mr_compact_general"], ["recipe=mr_compact_augment", "intermediate=null"]),
    "wnut16": (["recipe=wnut16_compact_general"], ["recipe=wnut16_compact_augment"]),
}


def general_student(overrides: list[str], root: Path) -> tuple[Path, dict]:
    """The general stage (reused when done): its student dir and its metrics.json."""
    out = stage("general", compose_checked(GENERAL + overrides), root)
    return out / "student", json.loads((out / "metrics.json").read_text())


def task_runs(corpus: str, general: Path, seed: int, args: list[str]) -> dict[str, Path]:
    """The KD stage of each arm for one seed; the teacher stage is the same config for both."""
    general_args, pca_args = ARMS[corpus]
    runs = {}
    for name, arm in (("general", [*general_args, f"student.name_or_path={general}"]), ("PCA", pca_args)):
        dirs = train_stages(compose_checked([*arm, *args, f"trainer.seed={seed}"]), baselines=False)
        if runs.get("teacher", dirs["teacher"]) != dirs["teacher"]:  # the arms must share one teacher
            raise SystemExit(f"{corpus}: the two arms fine-tuned different teachers ({runs['teacher']}, "
                             f"{dirs['teacher']}); give both the same finetune settings")
        runs[name], runs["teacher"] = dirs["distill"], dirs["teacher"]
    return runs


def paired(data, max_length: int, runs: dict[int, dict[str, Path]]) -> dict[int, dict]:
    """General vs PCA on the test split, every seed: McNemar and the paired bootstrap."""
    first = next(iter(runs.values()))
    rows, names, _ = eval_split(data, load_tokenizer(first["PCA"] / "student"), split="test",
                                max_length=max_length)
    tests = {}
    for seed, dirs in runs.items():
        preds = {n: ev.predict(ev.torch_forward(from_pretrained(dirs[n] / "student", task=data.task)), rows, data.task)
                 for n in ("general", "PCA")}
        boot = ev.paired_bootstrap(preds["general"], preds["PCA"], names)
        tests[seed] = {"mcnemar_p": ev.mcnemar(preds["general"].correct, preds["PCA"].correct)["p_value"],
                       "diff": boot["diff"], "ci95": boot["ci95"], "bootstrap_p": boot["p_value"]}
    return tests


def corpus_report(corpus: str, general: Path, seeds: list[int], args: list[str]) -> dict:
    runs = {seed: task_runs(corpus, general, seed, args) for seed in seeds}
    cfg = compose_checked([*ARMS[corpus][1], *args])
    data = hydra.utils.instantiate(cfg.data.source)
    key = ev.main_metric(data.task)
    score = {s: {n: json.loads((d / "metrics.json").read_text()) for n, d in r.items() if n != "teacher"}
             for s, r in runs.items()}
    teacher = score[seeds[0]]["PCA"]["teacher"][key]
    print(f"\n{corpus}: {key} on the test split (teacher {teacher:.4f}; steps per arm: "
          f"{score[seeds[0]]['general']['steps']} / {score[seeds[0]]['PCA']['steps']})")
    print(f"{'seed':>4} {'general':>8} {'PCA':>8}")
    for s in seeds:
        print(f"{s:>4} {score[s]['general']['student'][key]:8.4f} {score[s]['PCA']['student'][key]:8.4f}")
    median = {n: statistics.median(score[s][n]["student"][key] for s in seeds) for n in ("general", "PCA")}
    print(f"{'med':>4} {median['general']:8.4f} {median['PCA']:8.4f}")
    tests = paired(data, int(cfg.data.max_length), runs)
    for s, t in tests.items():
        print(f"seed {s}: general vs PCA {t['diff']:+.4f} (95% CI {t['ci95'][0]:+.4f} .. {t['ci95'][1]:+.4f}), "
              f"McNemar p = {t['mcnemar_p']:.3g}, paired bootstrap p = {t['bootstrap_p']:.3g}")
    retention = {n: round(v / teacher, 4) if teacher else None for n, v in median.items()}
    per_seed = {s: {n: score[s][n]["student"][key] for n in ("general", "PCA")} for s in seeds}
    return {"metric": key, "teacher": teacher, "median": median, "retention": retention, "per_seed": per_seed,
            "general_vs_pca": tests, "teacher_dir": str(runs[seeds[0]]["teacher"])}


def main(argv: list[str]) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("distill").setLevel(logging.INFO)
    seeds, corpora, general, general_args, args = [0, 1, 2], list(ARMS), None, [], []
    for arg in argv:
        key, _, value = arg.partition("=")
        if key == "seeds":
            seeds = [int(s) for s in value.split(",")]
        elif key == "corpora":
            corpora = value.split(",")
        elif key == "general":
            general = Path(value).resolve()
        elif key.startswith("general."):
            general_args.append(arg.removeprefix("general."))
        else:
            args.append(arg)
    if unknown := set(corpora) - set(ARMS):
        raise SystemExit(f"corpora: {','.join(sorted(unknown))} unknown; choose from {','.join(ARMS)}")
    root = Path(hydra.utils.to_absolute_path(compose_checked(GENERAL).stage_root))
    if general is None:
        general, general_metrics = general_student(general_args, root)
    else:  # a general run's own figures sit beside its student dir (distill train's layout)
        found = general.parent / "metrics.json"
        general_metrics = json.loads(found.read_text()) if found.is_file() else {}
    figures = {k: general_metrics.get(k) for k in ("student", "teacher", "steps")}
    print("general stage (held-out masked LM):", json.dumps(figures))
    reports = {corpus: corpus_report(corpus, general, seeds, args) for corpus in corpora}
    print(json.dumps({"general_student": str(general), "seeds": seeds, "corpora": reports,
                      "general_stage": figures}))


if __name__ == "__main__":
    main(sys.argv[1:])
