"""The HTML report's old address: its names now live in :mod:`harness.report` (the page in
:mod:`harness.report.formats.html`, the columns in :mod:`harness.report.model`, the upstream references in
:mod:`harness.report.upstream`). ``render_html`` takes a :class:`~harness.report.model.Report` or a parsed
``ft-harness-report/1`` dict (a run's, a merge's, a sweep's)."""

from __future__ import annotations

from .report.formats.html import OUTCOME_CLASS, cell_class, render_html
from .report.model import columns
from .report.upstream import UPSTREAM_REPOS, upstream_refs

__all__ = ["render_html", "columns", "upstream_refs", "OUTCOME_CLASS", "cell_class", "UPSTREAM_REPOS"]
