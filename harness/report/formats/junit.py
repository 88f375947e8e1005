"""``--format junit``: one ``<testsuite>`` per adapter run, one ``<testcase>`` per test, for CI systems."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from xml.sax.saxutils import escape

from ..model import AdapterRun, TestOutcome

_QUOTE = {'"': "&quot;"}
_BODY = {"failed": "failure", "xpassed": "failure", "error": "error", "skipped": "skipped", "xfailed": "skipped"}


def _testcase(t: TestOutcome) -> str:
    cls, _, name = t.nodeid.rpartition("::")
    attrs = f'classname="{escape(Path(cls).name, _QUOTE)}" name="{escape(name, _QUOTE)}" time="{t.duration_s:.3f}"'
    tag = _BODY.get(t.outcome)
    body = f'<{tag} message="{escape(t.reason, _QUOTE)}"/>' if tag else ""
    return f"<testcase {attrs}>{body}</testcase>"


def render_junit(runs: Sequence[AdapterRun]) -> str:
    parts = ['<?xml version="1.0" encoding="utf-8"?>', "<testsuites>"]
    for r in runs:
        n_fail = sum(t.outcome in ("failed", "xpassed") for t in r.tests)
        n_err = sum(t.outcome == "error" for t in r.tests)
        n_skip = sum(t.outcome in ("skipped", "xfailed") for t in r.tests)
        parts.append(f'<testsuite name="{escape(r.target)}" tests="{len(r.tests)}" failures="{n_fail}" '
                     f'errors="{n_err}" skipped="{n_skip}" time="{r.duration_s:.3f}">')
        parts += [_testcase(t) for t in r.tests]
        parts.append("</testsuite>")
    parts.append("</testsuites>")
    return "\n".join(parts) + "\n"
