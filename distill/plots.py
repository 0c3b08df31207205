"""PNG plots: the metric–latency–size trade-off of compared models, and training curves of runs.

Figures are built on ``matplotlib.figure.Figure`` with the Agg canvas, never pyplot: no global
backend state, no display needed, safe inside tests and on headless servers.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from distill.errors import DistillError

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _figure(**kwargs) -> Figure:
    """A Figure on its own Agg canvas (matplotlib is imported here, on the first plot: ~1 s on 2 cores)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | os.PathLike, **savefig) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, **savefig)
    return path


def tradeoff_plot(points: Mapping[str, Mapping[str, float]], metric: str, path: str | os.PathLike) -> Path:
    """Bubble chart: x = batch-1 p50 latency (ms), y = ``metric``, bubble area ∝ parameters.

    ``points``: name → {"latency_ms", "metric", "params", optional "ci" (lo, hi)}.
    """
    if not points:
        raise DistillError("nothing to plot: compare at least one model")
    fig = _figure(figsize=(6.4, 4.4))
    ax = fig.add_subplot()
    largest = max(p["params"] for p in points.values()) or 1
    for name, p in points.items():
        area = 60 + 1400 * p["params"] / largest
        ax.scatter(p["latency_ms"], p["metric"], s=area, alpha=0.45, edgecolors="black")
        if p.get("ci"):
            lo, hi = p["ci"]
            ax.errorbar(p["latency_ms"], p["metric"], yerr=[[p["metric"] - lo], [hi - p["metric"]]],
                        fmt="none", ecolor="gray", capsize=3)
        ax.annotate(f"{name}\n{p['params'] / 1e6:.3g}M params", (p["latency_ms"], p["metric"]),
                    textcoords="offset points", xytext=(8, 6), fontsize=8)
    ax.set_xlabel("CPU latency, batch 1, p50 (ms)")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} vs latency (bubble area ∝ parameters; bars: 95% CI)")
    ax.grid(alpha=0.3)
    ax.margins(0.25)
    return _save(fig, path, bbox_inches="tight")  # the labels may reach past the axes


PANEL = (4.2, 3.0)  # inches per training-curve panel
MARGINS = {"left": 0.75, "right": 0.15, "bottom": 0.55, "top": 0.35}  # inches around each panel's axes


def _fixed_layout(fig: Figure, cols: int, rows: int) -> None:
    """Every panel gets the same margins in inches: room for tick labels up to ~7 characters, the x label and the
    title. tight_layout measured every label's extent for the same result and took ~40% of a 9-panel plot."""
    width, height = PANEL[0] - MARGINS["left"] - MARGINS["right"], PANEL[1] - MARGINS["bottom"] - MARGINS["top"]
    fig.subplots_adjust(left=MARGINS["left"] / (PANEL[0] * cols), right=1 - MARGINS["right"] / (PANEL[0] * cols),
                        bottom=MARGINS["bottom"] / (PANEL[1] * rows), top=1 - MARGINS["top"] / (PANEL[1] * rows),
                        wspace=(MARGINS["left"] + MARGINS["right"]) / width,
                        hspace=(MARGINS["bottom"] + MARGINS["top"]) / height)


def read_metrics(source: str | os.PathLike | Sequence[Mapping]) -> list[dict]:
    """A ``metrics.jsonl`` path (one JSON dict per line), a run dir holding one, or a list of dicts."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_dir():
            path = path / "metrics.jsonl"
        if not path.is_file():
            raise DistillError(f"{path} does not exist; pass a run dir with metrics.jsonl or a list of dicts")
        rows = []
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    raise DistillError(f"{path} line {n} is not JSON; the file is corrupt") from None
        return rows
    return [dict(r) for r in source]


def training_curves(runs: Mapping[str, str | os.PathLike | Sequence[Mapping]], path: str | os.PathLike,
                    keys: Sequence[str] | None = None) -> Path:
    """One panel per metric key (e.g. ``loss``, ``eval/accuracy``), one line per run, x = ``step``.

    Rows may carry different keys (train and eval rows interleave); each key is drawn where present.
    """
    histories = {name: read_metrics(src) for name, src in runs.items()}
    if keys is None:
        seen = {}
        for rows in histories.values():
            for row in rows:
                for k, v in row.items():
                    if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                        seen[k] = None
        keys = list(seen)
    if not keys:
        raise DistillError("the training logs hold no numeric metrics to plot")
    cols = min(3, len(keys))
    rows_n = math.ceil(len(keys) / cols)
    fig = _figure(figsize=(PANEL[0] * cols, PANEL[1] * rows_n))
    _fixed_layout(fig, cols, rows_n)
    for i, key in enumerate(keys):
        ax = fig.add_subplot(rows_n, cols, i + 1)
        for name, rows in histories.items():
            xy = [(r.get("step", j), r[key]) for j, r in enumerate(rows)
                  if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
            if xy:
                xs, ys = zip(*xy)
                ax.plot(xs, ys, marker="." if len(xs) < 30 else None, label=name)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.grid(alpha=0.3)
        if len(histories) > 1:
            ax.legend(fontsize=7)
    return _save(fig, path)
