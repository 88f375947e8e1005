"""``--format text``: the scenario table in aligned columns (what ``ft-harness run`` prints); cells cut at 90."""

from __future__ import annotations

from collections.abc import Sequence

from ..model import AdapterRun
from .table import table

_WIDTH = 90


def render_text(runs: Sequence[AdapterRun], reasons: bool = True) -> str:
    header, rows, totals = table(runs, reasons, "total time")
    widths = [max(len(str(row[i])) for row in [header] + rows + [totals]) for i in range(len(header))]
    widths = [min(w, _WIDTH) for w in widths]

    def line(row: Sequence[str]) -> str:
        return "  ".join(str(c)[:_WIDTH].ljust(w) for c, w in zip(row, widths))

    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows + [totals]]) + "\n"
