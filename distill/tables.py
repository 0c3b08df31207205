"""Tables as text, drawn by rich: markdown for report.md / leaderboard.md (and the terminal), plain for the
loss dry-run. Cells are shown as given: no rich markup, highlighting or emoji codes."""

from __future__ import annotations

import io
from collections.abc import Sequence

from rich import box
from rich.console import Console
from rich.table import Table


def render(header: Sequence[str], rows: Sequence[Sequence[object]], markdown: bool = True) -> str:
    """``header`` and ``rows`` → a markdown table (``| a | b |`` with a ``|---|`` rule), or a plain one
    (columns two spaces apart, a rule under the header); cells are ``str()``-ed, never wrapped."""
    style = dict(box=box.MARKDOWN) if markdown else dict(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    table = Table(*header, **style)
    for row in rows:
        table.add_row(*map(str, row))
    console = Console(file=io.StringIO(), width=100_000, color_system=None, markup=False, highlight=False,
                      emoji=False)
    console.print(table)
    lines = [line.rstrip() for line in console.file.getvalue().splitlines()]
    return "\n".join(line for line in lines if line) + "\n"


def fused_ops_text(counts: dict[str, int]) -> str:
    """{"Attention": 6, ...} → "6 Attention, ..." (an export's fused-op counts, in logs and model cards)."""
    return ", ".join(f"{n} {op}" for op, n in counts.items())
