"""A Hydra callback that ends a multirun sweep with a leaderboard (markdown + CSV)."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from distill.tables import render

log = logging.getLogger(__name__)


def leaderboard_rows(sweep_dir: Path) -> list[dict]:
    """One row per finished job: its overrides, its best validation score (the ranking: choosing
    settings on the test split would select them on test data) in ``trainer.metric_for_best``, and its
    student's test metrics beside."""
    rows = []
    for job in sorted(p for p in sweep_dir.iterdir() if p.is_dir()):
        metrics_file = job / "metrics.json"
        if not metrics_file.is_file():
            continue
        metrics = json.loads(metrics_file.read_text())
        overrides_file = job / ".hydra" / "overrides.yaml"
        overrides = OmegaConf.load(overrides_file) if overrides_file.is_file() else []
        row = {"run": job.name, "overrides": " ".join(overrides),
               "validation": metrics.get("best_validation"), "ranked_by": metrics.get("best_metric")}
        row.update({f"test_{k}": round(v, 4) for k, v in metrics.get("student", {}).items()})
        rows.append(row)
    unranked = float("-inf")  # a job without a validation split goes last, not first
    return sorted(rows, key=lambda r: -(r["validation"] if r["validation"] is not None else unranked))


class Leaderboard(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep = Path(config.hydra.sweep.dir)
        rows = leaderboard_rows(sweep) if sweep.is_dir() else []
        if not rows:
            return
        columns = list(dict.fromkeys(k for r in rows for k in r))
        with open(sweep / "leaderboard.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, columns)
            writer.writeheader()
            writer.writerows(rows)
        metrics = sorted({str(r.get("ranked_by")) for r in rows})
        if len(metrics) > 1:  # e.g. a sweep over trainer.metric_for_best or data=: the ranks do not compare
            log.warning("the jobs were ranked by different validation metrics (%s); compare rows of one metric only",
                        ", ".join(metrics))
        text = render(columns, [[r.get(c, "") for c in columns] for r in rows])
        (sweep / "leaderboard.md").write_text(text)
        print(text, end="")
        log.info("leaderboard written to %s", sweep / "leaderboard.md")
