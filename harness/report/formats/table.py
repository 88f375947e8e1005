"""The table the text and md formats share: a header of column titles, one row per scenario, a totals row."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..model import AdapterRun, framework, matrix

_WORDS = {"passed": "pass", "failed": "FAIL", "error": "ERROR", "skipped": "skipped", "xfailed": "xfail (known)",
          "xpassed": "XPASS (known failure fixed?)"}


def cell_text(cell: Mapping[str, Any] | None, with_reason: bool = True) -> str:
    if cell is None:
        return "—"
    word = _WORDS[cell["outcome"]]
    if with_reason and cell["reason"] and cell["outcome"] != "passed":
        return f"{word}: {cell['reason']}"
    return word


def column_title(run: AdapterRun) -> str:
    """The target, plus the framework version when the adapter reports one."""
    fw = framework(run.target, run.versions)
    if fw is None:
        return run.target
    name, version = fw
    return f"{run.target} ({version})" if name in run.target else f"{run.target} ({name} {version})"


def table(runs: Sequence[AdapterRun], reasons: bool, total: str) -> tuple[list[str], list[list[str]], list[str]]:
    """(header, rows, totals); ``total`` names the totals row."""
    m = matrix(runs)
    header = ["scenario", "seed"] + [column_title(r) for r in runs]
    rows = [[s, m.seeds[s] or ""] + [cell_text(m.cells[k].get(s), with_reason=reasons) for k in m.keys]
            for s in m.scenarios]
    totals = [total, ""] + [f"{r.duration_s:.1f}s" for r in runs]
    return header, rows, totals
