"""Headline quality: a recipe's KD student vs the same student without KD, over several seeds.

    python benchmarks/quality.py                                  # row 1: recipe=mr_transfer (MR, 2-layer), 3 seeds
    python benchmarks/quality.py recipe=mr_transfer seeds=0,1,2   # any recipe, any Hydra overrides
    python benchmarks/quality.py recipe=mr_compact trim_vocab=true # students compared with trimmed vocabularies

The teacher is fine-tuned once (the pipeline's stage reuse: the same config gives the same stage
dir) and shared by every seed; each seed trains the KD student and the no-KD baseline for the
same steps. Prints the per-seed test metrics, the median, a compare report (bootstrap 95% CIs,
McNemar KD vs no-KD, CPU latency at batch 1, one thread, same runtime) for the median seed, and as
its last line JSON (``param_ratio`` from that report):
{"retention", "teacher_metric", "student_metric", "baseline_metric", "param_ratio", "speedup", ...}.

With ``trim_vocab=true`` every seed's two students are also exported as ``distill export`` ships them
(vocabulary trimmed to the training split's tokens plus those each trained on in augmented rows, up to the
recipe's ``export.vocab_size``) and scored on the test split: the table gets "shipped" columns, the median
seed is the median of the shipped KD students, the report compares the shipped models, and the JSON adds
``shipped_metric`` / ``shipped_retention`` (medians over seeds, the figures a size target is judged by).
"""

from __future__ import annotations

import json
import logging
import statistics
import sys
from pathlib import Path

import hydra

from distill.compare import Measure, compare, own_tokenizer
from distill.config_check import compose_checked
from distill.data.corpus import train_texts
from distill.evaluate import main_metric, metrics, predict
from distill.export import export, summary_line
from distill.pipeline import CONTROL, kd_steps, train_stages
from distill.preflight import eval_split, load


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
    recipe = next(a.split("=", 1)[1] for a in args if a.startswith("recipe="))
    rows = []
    for seed in seeds:
        cfg = compose_checked(args + [f"trainer.seed={seed}"])
        rows.append(train_seed(cfg, seed))
    data = hydra.utils.instantiate(cfg.data.source)
    key = main_metric(data.task)
    out_root = Path(hydra.utils.to_absolute_path(cfg.stage_root)).parent / "quality" / recipe
    if trim:
        for row in rows:
            ship(row, data, cfg, out_root / f"seed{row['seed']}")
    print_table(rows, key, len(data.splits["test"]), trim)
    rank = "kd_shipped" if trim else "kd"
    median_row = sorted(rows, key=lambda r: r[rank][key])[len(rows) // 2]
    shipped = median_row.get("shipped", {})  # the trimmed exports where trim_vocab, else the trained students
    models = {"teacher": str(median_row["dirs"]["teacher"]),
              "student (KD)": shipped.get("distill", str(median_row["dirs"]["distill"] / "student")),
              "student (no KD)": shipped.get("baseline", str(median_row["dirs"]["baseline"] / "student"))}
    if "control" in median_row:
        models[CONTROL] = shipped.get("control", str(median_row["dirs"]["control"] / "student"))
    report = compare(models, None, data, out_dir=out_root / f"seed{median_row['seed']}", teacher="teacher",
                     baseline="student (no KD)", measure=Measure(threads=1, max_length=cfg.data.max_length),
                     pairs=[("student (KD)", CONTROL)] if CONTROL in models else [])
    from distill.report import table

    print(table(report))
    print(f"report: {report['paths']['markdown']} (plot: {report['plots'][0]})")
    print(json.dumps(summary(rows, report, key, seeds, trim)))


def train_seed(cfg, seed: int) -> dict:
    """One seed's stages (reused when done) and their test metrics."""
    dirs = train_stages(cfg)
    kd = json.loads((dirs["distill"] / "metrics.json").read_text())
    base = json.loads((dirs["baseline"] / "metrics.json").read_text())
    row = {"seed": seed, "dirs": dirs, "teacher": kd["teacher"], "kd": kd["student"], "baseline": base["student"],
           "steps": kd_steps(dirs), "baseline_steps": base["steps"]}
    if "control" in dirs:
        row["control"] = json.loads((dirs["control"] / "metrics.json").read_text())["student"]
    return row


def ship(row: dict, data, cfg, out: Path) -> None:
    """Export a seed's KD, no-KD (and control) students as ``distill export`` ships them (trimmed vocabulary) and score
    what was shipped on the test split, each with its own tokenizer: ``row["kd_shipped"]`` etc."""
    row["shipped"] = {}
    stages = [("distill", "kd"), ("baseline", "baseline")]
    if "control" in row["dirs"]:
        stages.append(("control", "control"))
    for stage, name in stages:
        target = out / f"{stage}-trimmed"
        for line in export(str(row["dirs"][stage] / "student"), target, formats=["hf"], trim_vocab=True,
                           texts=train_texts(data), eval_data=data, max_length=cfg.data.max_length,
                           vocab_size=cfg.export.get("vocab_size")):
            print(summary_line(line))
        row["shipped"][stage] = str(target / "hf")
        forward, _, model = load(row["shipped"][stage], data.task)
        split = eval_split(data, own_tokenizer(row["shipped"][stage]), "test", cfg.data.max_length)[0]
        row[f"{name}_shipped"] = metrics(predict(forward, split, data.task), data.label_names)
        row[f"{name}_shipped_vocab"] = model.config.vocab_size


def print_table(rows: list[dict], key: str, n_test: int, trim: bool) -> None:
    cols = [("teacher", "teacher"), ("kd", "KD"), ("baseline", "no KD")]
    if all("control" in r for r in rows):
        cols.append(("control", "control"))
    if trim:
        cols += [("kd_shipped", "KD ship"), ("baseline_shipped", "noKD ship")]
    print(f"{'seed':>4} " + " ".join(f"{title:>9}" for _, title in cols) + f"   ({key} on the test split, {n_test}"
          f" rows; control: augmented rows with gold labels, no teacher; ship: as exported, trimmed vocabulary;"
          f" steps KD / no KD: {rows[0]['steps']} / {rows[0]['baseline_steps']})")
    for r in rows:
        print(f"{r['seed']:>4} " + " ".join(f"{r[name][key]:9.4f}" for name, _ in cols))
    med = {name: statistics.median(r[name][key] for r in rows) for name, _ in cols}
    print(f"{'med':>4} " + " ".join(f"{med[name]:9.4f}" for name, _ in cols))


def summary(rows: list[dict], report: dict, key: str, seeds: list[int], trim: bool) -> dict:
    """The JSON last line: medians over seeds, the median seed's report figures, per-seed metrics."""
    med = lambda name: statistics.median(r[name][key] for r in rows) if all(name in r for r in rows) else None  # noqa: E731
    kd_report = report["models"]["student (KD)"]
    teacher_m, kd_m, control_m, shipped_m = med("teacher"), med("kd"), med("control"), med("kd_shipped")
    return {"retention": round(kd_m / teacher_m, 4), "teacher_metric": round(teacher_m, 4),
            "student_metric": round(kd_m, 4), "baseline_metric": round(med("baseline"), 4),
            "param_ratio": round(kd_report["params_ratio"], 4), "trim_vocab": trim,
            "shipped_metric": None if shipped_m is None else round(shipped_m, 4),
            "shipped_retention": None if shipped_m is None else round(shipped_m / teacher_m, 4),
            "median_seed_shipped_metric": round(kd_report["metrics"][key]["value"], 4),
            "speedup": round(kd_report["speedup_p50"], 3),
            "kd_vs_baseline_p": kd_report["mcnemar"].get("student (no KD)", {}).get("p_value"),
            "kd_vs_baseline_bootstrap_p": kd_report["paired_bootstrap"].get("student (no KD)", {}).get("p_value"),
            "control_metric": None if control_m is None else round(control_m, 4),
            "control_vs_baseline_p": report["models"].get(CONTROL, {}).get("mcnemar", {})
            .get("student (no KD)", {}).get("p_value"),
            "kd_vs_control_p": kd_report["mcnemar"].get(CONTROL, {}).get("p_value"),
            "kd_vs_control_bootstrap_p": kd_report["paired_bootstrap"].get(CONTROL, {}).get("p_value"),
            "per_seed": [{"seed": r["seed"], "kd": r["kd"][key], "baseline": r["baseline"][key],
                          "control": r.get("control", {}).get(key),
                          "kd_shipped": r.get("kd_shipped", {}).get(key),
                          "baseline_shipped": r.get("baseline_shipped", {}).get(key),
                          "control_shipped": r.get("control_shipped", {}).get(key),
                          "kd_shipped_vocab": r.get("kd_shipped_vocab")} for r in rows],
            "seeds": seeds, "metric": key}


if __name__ == "__main__":
    main(sys.argv[1:])
