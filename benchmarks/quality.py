"""Headline quality: a recipe's KD student vs the same student without KD, over several seeds.

    python benchmarks/quality.py                                  # row 1: recipe=mr_transfer (MR, 2-layer), 3 seeds
    python benchmarks/quality.py recipe=mr_transfer seeds=0,1,2   # any recipe, any Hydra overrides
    python benchmarks/quality.py recipe=mr_compact trim_vocab=true # students compared with trimmed vocabularies

The teacher is fine-tuned once (the pipeline's stage reuse: the same config gives the same stage
dir) and shared by every seed; each seed trains the KD student and the no-KD baseline for the
same steps. Prints the per-seed test metrics, the median, a compare report (bootstrap 95% CIs,
McNemar KD vs no-KD, CPU latency at batch 1, one thread, same runtime) for the median seed, and as
its last line JSON (``param_ratio`` from that report: with ``trim_vocab=true`` both students are
compared after vocabulary trimming to the training split's tokens, plus the tokens each one trained on
(augmented rows) up to the recipe's ``export.vocab_size``, as ``distill export`` ships them):
{"retention", "teacher_metric", "student_metric", "baseline_metric", "param_ratio", "speedup", ...}.
"""

from __future__ import annotations

import json
import logging
import statistics
import sys
from pathlib import Path

import hydra

from distill.compare import Measure, compare
from distill.config_check import compose_checked
from distill.data.corpus import train_texts
from distill.evaluate import main_metric
from distill.export import export, summary_line
from distill.pipeline import CONTROL, kd_steps, train_stages


def main(argv: list[str]) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("distill").setLevel(logging.INFO)  # what each stage builds (data, augmentation, cache)
    seeds, trim = [0, 1, 2], False
    args = []
    for arg in argv:
        if arg.startswith("seeds="):
            seeds = [int(s) for s in arg.split("=", 1)[1].split(",")]
        elif arg.startswith("trim_vocab="):
            trim = arg.split("=", 1)[1].lower() in ("1", "true", "yes")
        else:
            args.append(arg)
    if not any(a.startswith("recipe=") for a in args):
        args.insert(0, "recipe=mr_transfer")  # headline row 1
    rows = []
    for seed in seeds:
        cfg = compose_checked(args + [f"trainer.seed={seed}"])
        dirs = train_stages(cfg)
        kd = json.loads((dirs["distill"] / "metrics.json").read_text())
        base = json.loads((dirs["baseline"] / "metrics.json").read_text())
        row = {"seed": seed, "dirs": dirs, "teacher": kd["teacher"], "kd": kd["student"], "baseline": base["student"],
               "steps": kd_steps(dirs), "baseline_steps": base["steps"]}
        if "control" in dirs:
            row["control"] = json.loads((dirs["control"] / "metrics.json").read_text())["student"]
        rows.append(row)
    data = hydra.utils.instantiate(cfg.data.source)
    key = main_metric(data.task)
    n_test = len(data.splits["test"])
    control = all("control" in r for r in rows)
    extra = f" {'control':>8}" if control else ""
    print(f"{'seed':>4} {'teacher':>8} {'KD':>8} {'no KD':>8}{extra}   ({key} on the test split, {n_test} rows;"
          f" control: augmented rows with gold labels, no teacher; steps KD / no KD: {rows[0]['steps']} /"
          f" {rows[0]['baseline_steps']})")
    for r in rows:
        extra = f" {r['control'][key]:8.4f}" if control else ""
        print(f"{r['seed']:>4} {r['teacher'][key]:8.4f} {r['kd'][key]:8.4f} {r['baseline'][key]:8.4f}{extra}")
    med = lambda name: statistics.median(r[name][key] for r in rows)  # noqa: E731
    teacher_m, kd_m, base_m = med("teacher"), med("kd"), med("baseline")
    control_m = med("control") if control else None
    print(f"{'med':>4} {teacher_m:8.4f} {kd_m:8.4f} {base_m:8.4f}" + (f" {control_m:8.4f}" if control else ""))
    median_row = sorted(rows, key=lambda r: r["kd"][key])[len(rows) // 2]
    recipe = next(a.split("=", 1)[1] for a in args if a.startswith("recipe="))
    out = Path(hydra.utils.to_absolute_path(cfg.stage_root)).parent / "quality" / recipe / f"seed{median_row['seed']}"
    models = {"teacher": str(median_row["dirs"]["teacher"]),
              "student (KD)": str(median_row["dirs"]["distill"] / "student"),
              "student (no KD)": str(median_row["dirs"]["baseline"] / "student")}
    if control:
        models[CONTROL] = str(median_row["dirs"]["control"] / "student")
    if trim:
        for name, stage in (("student (KD)", "distill"), ("student (no KD)", "baseline")):
            target = out / f"{stage}-trimmed"
            for line in export(models[name], target, formats=["hf"], trim_vocab=True, texts=train_texts(data),
                               eval_data=data, max_length=cfg.data.max_length,
                               vocab_size=cfg.export.get("vocab_size")):
                print(summary_line(line))
            models[name] = str(target / "hf")
    report = compare(models, None, data, out_dir=out, teacher="teacher", baseline="student (no KD)",
                     measure=Measure(threads=1, max_length=cfg.data.max_length))
    from distill.report import table

    print(table(report))
    print(f"report: {report['paths']['markdown']} (plot: {report['plots'][0]})")
    kd_report = report["models"]["student (KD)"]
    mcnemar = kd_report["mcnemar"].get("student (no KD)", {})
    print(json.dumps({"retention": round(kd_m / teacher_m, 4), "teacher_metric": round(teacher_m, 4),
                      "student_metric": round(kd_m, 4), "baseline_metric": round(base_m, 4),
                      "param_ratio": round(kd_report["params_ratio"], 4), "trim_vocab": trim,
                      "median_seed_shipped_metric": round(kd_report["metrics"][key]["value"], 4),
                      "speedup": round(kd_report["speedup_p50"], 3), "kd_vs_baseline_p": mcnemar.get("p_value"),
                      "kd_vs_baseline_bootstrap_p": kd_report["paired_bootstrap"].get("student (no KD)", {})
                      .get("p_value"),
                      "control_metric": None if control_m is None else round(control_m, 4),
                      "control_vs_baseline_p": report["models"].get(CONTROL, {}).get("mcnemar", {})
                      .get("student (no KD)", {}).get("p_value"),
                      "per_seed": [{"seed": r["seed"], "kd": r["kd"][key], "baseline": r["baseline"][key],
                                    "control": r.get("control", {}).get(key)} for r in rows],
                      "seeds": seeds, "metric": key}))


if __name__ == "__main__":
    main(sys.argv[1:])
