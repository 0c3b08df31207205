"""A compare report as text: the per-model markdown table, the plain-language notes, report.md.

Works on the ``report.json`` dict alone, so a saved report can be re-rendered (or put into a
model card) without re-running anything.
"""

from __future__ import annotations

from pathlib import Path

from distill.tables import render


def notes(report: dict) -> list[str]:
    """Plain-language lines: pre-flight warnings, what counts as noise, each model's significance."""
    key, teacher, models = report["metric"], report["teacher"], report["models"]
    s = report["settings"]
    lines = [f"WARNING: {w}" for w in report["preflight"]["warnings"]]
    width, widest = max((r["metrics"][key]["ci95"][1] - r["metrics"][key]["ci95"][0], n) for n, r in models.items())
    units = f" ({s['n_units']} {s['unit']}s)" if s["unit"] != "row" else ""
    lines.append(f"Evaluated on {s['n_rows']} rows{units}: 95% intervals of {key} are up to {100 * width:.1f} points "
                 f"wide ({widest}), so differences of about {50 * width:.1f} points or less are noise unless "
                 "McNemar's test says otherwise.")
    for name, r in models.items():
        for other, test in r["mcnemar"].items() if name != teacher else ():
            diff = 100 * (r["metrics"][key]["value"] - models[other]["metrics"][key]["value"])
            verdict = "significant" if test["p_value"] < 0.05 else "not significant: treat it as noise"
            lines.append(f"{name} vs {other}: {diff:+.1f} points of {key}, McNemar p = {test['p_value']:.3g} "
                         f"({test['method']}; {test['b']} {s['unit']}s only {name} got right, {test['c']} only "
                         f"{other}) — {verdict}.")
            boot = r.get("paired_bootstrap", {}).get(other)
            if boot is not None:  # the test that resamples what the metric is made of (sentences for entity F1)
                lo, hi = (100 * x for x in boot["ci95"])
                lines.append(f"{name} vs {other}: paired bootstrap over {boot['unit']}s ({boot['n_boot']} "
                             f"resamples): {100 * boot['diff']:+.1f} points of {key} (95% CI {lo:+.1f} to {hi:+.1f}), "
                             f"p = {boot['p_value']:.3g}.")
    lines += [_novelty(name, r["mentions"]) for name, r in models.items() if r.get("mentions")]
    runtimes = " and ".join(sorted({r["runtime"] for r in models.values()}))
    lines.append(f"Latency: CPU, {runtimes}, {s['threads']} thread(s), same process and setting for every model; "
                 f"batch 1 p50/p90 over {s['repeats']} calls after {s['warmup']} warm-up calls; rows/s at batch 32.")
    if report.get("teacher_onnx"):
        lines.append(f"Speed-up, same runtime: the teacher's p50 in the model's runtime over the model's — PyTorch, or "
                     f"{report['teacher_onnx'][0]} (exported and optimized as `distill export` writes it) for every "
                     "ONNX row, fp32 and int8 alike.")
    return lines


def _novelty(name: str, mentions: dict) -> str:
    """One model's recall and precision on the mentions training had and on those it never had."""
    def part(side: str) -> str:
        c = mentions[side]
        rate = lambda x: "–" if x is None else f"{x:.2f}"  # noqa: E731
        return (f"{side} {rate(c['recall'])} recall ({c['found']} of {c['gold']}), {rate(c['precision'])} precision "
                f"({c['predicted']} predicted)")
    return (f"{name}, mentions by whether their text is a training-split mention: {part('seen')}; "
            f"{part('unseen')}.")


def _runtime(r: dict) -> str:
    """"pytorch", "onnxruntime fp32" or "onnxruntime int8" ("–" in a report saved without it)."""
    return " ".join(str(r[k]) for k in ("runtime", "precision") if k in r) or "–"


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def table(report: dict) -> str:
    """The per-model markdown table (also used by the export model card)."""
    metric_keys = list(next(iter(report["models"].values()))["metrics"])
    key, teacher, baseline = report["metric"], report["teacher"], report["baseline"]
    same = bool(report.get("teacher_onnx"))
    head = ["model", *[f"{k} (95% CI)" for k in metric_keys], f"retention ({key})", "agree w/ teacher",
            "params (non-emb)", "size MB", "runtime", "p50 / p90 ms", "rows/s @32", "speed-up",
            *(["speed-up, same runtime"] if same else []), "size ratio",
            "McNemar p vs teacher"] + ([f"vs {baseline}"] if baseline else [])
    rows = []
    for name, r in report["models"].items():
        non_emb = r["params"]["non_embedding"]
        tests = [r["mcnemar"].get(o) for o in (teacher, baseline) if o]
        cells = [
            f"**{name}**" if name == teacher else name,
            *[f"{_pct(m['value'])} ({_pct(m['ci95'][0])}–{_pct(m['ci95'][1])})" for m in r["metrics"].values()],
            f"{_pct(r['retention'][key])}%", f"{_pct(r['agreement_with_teacher'])}%",
            f"{r['params']['total'] / 1e6:.2f}M ({'–' if non_emb is None else f'{non_emb / 1e6:.2f}M'})",
            f"{r['size_bytes'] / 2**20:.2f}", _runtime(r),
            f"{r['latency']['p50_ms']:.2f} / {r['latency']['p90_ms']:.2f}",
            f"{r['latency']['throughput_per_s']:.0f}", f"{r['speedup_p50']:.2f}×",
            *([f"{r['speedup_same_runtime']:.2f}×"] if same else []), f"{r['size_ratio']:.2f}×",
            *["–" if t is None else f"{t['p_value']:.3g}" for t in tests],
        ]
        rows.append(cells)
    return render(head, rows)


def render_markdown(report: dict) -> str:
    """report.json → report.md: the table, the notes (noise, significance, warnings), the plots."""
    s = report["settings"]
    out = [f"# Distillation report: {report['task']} task, {report['metric']}", "",
           f"{s['n_rows']} evaluation rows · CPU ({s['cpu']}), torch {s['torch']}, {s['threads']} thread(s) "
           f"for every model · 95% bootstrap intervals over {s['n_boot']} resamples", "", table(report), "## Notes", ""]
    out += [f"- {line}" for line in report["notes"]]
    out += ["", *[f"![{Path(p).stem}]({Path(p).name})" for p in report.get("plots", [])]]
    return "\n".join(out) + "\n"
