"""The collector ``--ft-report`` / ``--ft-progress`` register: every test's outcome, head line, full failure
message, seed and duration (on the xdist controller too), written as ``ft-harness-report/1`` JSON.

It knows pytest's reports, not the adapter: the plugin hands it ``describe``, which says at the end of the
session what ran (the adapter's name, its versions, the options it was given)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TextIO

import pytest

from .formats.json import render_json
from .model import SEVERITY, AdapterRun, TestOutcome, head_line

__all__ = ["ResultCollector", "Describe"]

#: () -> (adapter name, versions, options): asked once, when the session ends
Describe = Callable[[], tuple[str, Mapping[str, str], Mapping[str, str]]]

_MARKS = {"passed": "ok", "failed": "FAIL", "error": "ERROR", "skipped": "skip", "xfailed": "xfail", "xpassed": "XPASS"}


def _scenario_of(nodeid: str) -> str:
    path, _, name = nodeid.partition("::")
    return f"{Path(path).name}::{name.split('[')[0]}"


def _verdict(report: Any) -> tuple[str, str, str]:
    """(outcome, reason, message) of a setup/call/teardown report."""
    if hasattr(report, "wasxfail"):
        return ("xfailed" if report.skipped else "xpassed"), report.wasxfail, ""
    if report.skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        return "skipped", reason.removeprefix("Skipped: "), ""
    if report.failed:
        message = report.longreprtext
        return ("failed" if report.when == "call" else "error"), head_line(message), message
    return "passed", "", ""


class ResultCollector:
    """pytest plugin object: records every test's outcome, head line, full message, seed and duration, and
    writes the JSON to ``path`` (if given) at the end of the session; ``progress``: one line per finished
    test. Under pytest-xdist it runs on the controller, which receives every worker's reports."""

    def __init__(self, label: str, path: str | None, progress: TextIO | None, describe: Describe):
        self.label = label
        self.path = Path(path) if path else None
        self.progress = progress
        self.describe = describe
        self.tests: dict[str, TestOutcome] = {}
        self.durations: dict[str, float] = {}
        self.start = time.perf_counter()

    def pytest_collectreport(self, report):
        if report.failed:  # an unimportable scenario module is an error cell, never a silent gap
            nodeid = report.nodeid or "<collection>"
            self.tests[nodeid] = TestOutcome(nodeid, f"{Path(nodeid.split('::')[0]).name}::<collection>", "error",
                                             head_line(report.longreprtext), 0.0, None, report.longreprtext)
            self._say(f"ERROR collecting {nodeid}: {self.tests[nodeid].reason}")

    def pytest_runtest_logreport(self, report):
        nodeid = report.nodeid
        self.durations[nodeid] = self.durations.get(nodeid, 0.0) + report.duration
        prev = self.tests.get(nodeid)
        if report.when == "call" or report.outcome != "passed":
            outcome, reason, message = _verdict(report)
            if prev is not None and SEVERITY[prev.outcome] >= SEVERITY[outcome]:
                return
            seed = dict(report.user_properties).get("ft_seed")
            self.tests[nodeid] = TestOutcome(nodeid, _scenario_of(nodeid), outcome, reason, 0.0, seed, message)
        if report.when == "teardown" and nodeid in self.tests:
            t = self.tests[nodeid]
            t.duration_s = self.durations[nodeid]  # setup + call + teardown
            self._say(f"{_MARKS[t.outcome]:5} {t.duration_s:6.2f}s {nodeid.split('/')[-1]}")

    def _say(self, line: str) -> None:
        if self.progress is not None:
            print(f"[{self.label}] {line}", file=self.progress, flush=True)

    def run(self, exit_code: int) -> AdapterRun:
        name, versions, options = self.describe()
        return AdapterRun(target=self.label, name=name, options=dict(options), exit_code=int(exit_code),
                          duration_s=time.perf_counter() - self.start, tests=list(self.tests.values()),
                          versions=dict(versions))

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session, exitstatus):
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        # session.exitstatus, not the hook's argument: it includes --ft-strict's verdict (set before this trylast hook)
        tmp.write_text(render_json([self.run(int(session.exitstatus))]), encoding="utf-8")
        os.replace(tmp, self.path)
