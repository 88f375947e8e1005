"""Scenario results: collected by the plugin (``pytest --ft-report FILE``), rendered and merged here.

The rooms of this package, each knowing only what is below it:

* :mod:`~harness.report.model` — outcomes, runs, the matrix, column keys, the library list, the
  ``ft-harness-report/1`` document (its format is described there) and the :class:`Report` readers see;
* :mod:`~harness.report.collect` — :class:`ResultCollector`, the pytest plugin object ``--ft-report``
  registers (the plugin tells it the adapter's name and versions; it never imports the plugin);
* :mod:`~harness.report.formats` — one renderer per format (text, md, json, junit, html) and :func:`render`;
* :mod:`~harness.report.upstream` — the upstream issues scenario docstrings name (for the HTML page);
* :mod:`~harness.report.runner` — :func:`run_adapter`: ``ft-harness run`` / ``report --adapter`` run pytest
  once per adapter in a subprocess with ``--ft-report``; ``report --merge`` renders JSON files made anywhere.
"""

from __future__ import annotations

from .collect import ResultCollector
from .formats import FORMATS, render, render_html, render_json, render_junit, render_md, render_text
from .formats.html import OUTCOME_CLASS, cell_class
from .formats.json import load_runs
from .model import (FORMAT, LIBRARIES, AdapterRun, Column, Matrix, Report, Row, TestOutcome, aggregate, column_keys,
                    columns, document, framework, head_line, matrix, runs_of)
from .runner import run_adapter
from .upstream import UPSTREAM_REPOS, upstream_refs

__all__ = ["TestOutcome", "AdapterRun", "ResultCollector", "run_adapter", "load_runs", "render", "FORMATS", "aggregate",
           "head_line", "FORMAT", "LIBRARIES", "framework", "column_keys", "Matrix", "matrix", "document", "runs_of",
           "Column", "Row", "Report", "columns", "render_text", "render_md", "render_json", "render_junit",
           "render_html", "OUTCOME_CLASS", "cell_class", "UPSTREAM_REPOS", "upstream_refs"]
