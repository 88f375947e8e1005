"""``--format md``: the scenario table as a markdown table (``|`` in cells escaped)."""

from __future__ import annotations

from collections.abc import Sequence

from ..model import AdapterRun
from .table import table


def render_md(runs: Sequence[AdapterRun], reasons: bool = True) -> str:
    header, rows, totals = table(runs, reasons, "**total time**")
    esc = [[c.replace("|", "\\|") for c in row] for row in rows]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in esc + [totals]]
    return "\n".join(lines) + "\n"
