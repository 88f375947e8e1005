"""``--format json``: the ``ft-harness-report/1`` document (:func:`~harness.report.model.document`), and
reading it back."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from ..model import FORMAT, AdapterRun, document, runs_of


def render_json(runs: Sequence[AdapterRun]) -> str:
    return json.dumps(document(runs), indent=2, sort_keys=True)


def load_runs(path: str | Path) -> list[AdapterRun]:
    """The adapter runs of a JSON report (written with ``--format json``), to merge reports made in
    different environments (each real framework has its own)."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if data.get("format") != FORMAT:
        raise ValueError(f"{path}: not an ft-harness JSON report (format={data.get('format')!r})")
    return runs_of(data)
