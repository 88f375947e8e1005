"""One renderer per format: text, md, json, junit (from the runs) and html (from the :class:`Report` of the runs)."""

from __future__ import annotations

from collections.abc import Sequence

from ..model import AdapterRun, Report
from .html import render_html
from .json import render_json
from .junit import render_junit
from .md import render_md
from .text import render_text

__all__ = ["FORMATS", "render", "render_text", "render_md", "render_json", "render_junit", "render_html"]

FORMATS = ("text", "md", "json", "junit", "html")


def render(runs: Sequence[AdapterRun], fmt: str, reasons: bool = True) -> str:
    """``runs`` in format ``fmt``; ``reasons=False``: text and md cells hold the outcome word only."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose from {FORMATS}")
    if fmt == "html":
        return render_html(Report.from_runs(runs))
    if fmt == "json":
        return render_json(runs)
    if fmt == "junit":
        return render_junit(runs)
    return render_md(runs, reasons) if fmt == "md" else render_text(runs, reasons)
