"""Scenario results: collected by the plugin (``pytest --ft-report FILE``), rendered and merged here.

:class:`ResultCollector` is what ``--ft-report`` registers: it records every test's outcome, head line,
full failure message, seed and duration (on the xdist controller too) and writes the JSON below.
``ft-harness run`` / ``report --adapter`` run pytest once per adapter in a subprocess with that option
(:func:`run_adapter`); ``report --merge`` renders JSON files made anywhere.

JSON format (stable; ``"format": "ft-harness-report/1"``)::

    {"format": "ft-harness-report/1",
     "adapters": [{"target": "harness.mutants:X", "name": "...", "options": {...}, "exit_code": 1,
                   "duration_s": 12.3, "versions": {"ms-swift": "4.6.0", ...},
                   "tests": [{"nodeid": ..., "scenario": ..., "outcome": ..., "reason": ...,
                              "duration_s": ..., "seed": ..., "message": "full failure report"}]}],
     "scenarios": [{"id": "test_best_checkpoint.py::test_rotation_keeps_best", "seed": "004",
                    "results": {"<target>": {"outcome": "passed|failed|skipped|error|xfailed|xpassed",
                                             "reason": "one line", "duration_s": 0.7, "tests": 2}}}]}
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO
from xml.sax.saxutils import escape

import pytest

__all__ = ["TestOutcome", "AdapterRun", "ResultCollector", "run_adapter", "load_runs", "render", "FORMATS", "aggregate",
           "head_line"]

FORMATS = ("text", "md", "json", "junit", "html")
_SEVERITY = {"error": 5, "failed": 4, "xpassed": 3, "passed": 1, "xfailed": 2, "skipped": 0}


@dataclass
class TestOutcome:
    __test__ = False  # not a pytest test class

    nodeid: str
    scenario: str  # module.py::function (parameters dropped)
    outcome: str
    reason: str  # the head of the failure: the line that says what was expected and what was found, untruncated
    duration_s: float
    seed: str | None
    message: str = ""  # the whole failure report (assertion message and traceback)


@dataclass
class AdapterRun:
    target: str
    name: str
    options: Mapping[str, str]
    exit_code: int
    duration_s: float
    tests: list[TestOutcome] = field(default_factory=list)
    versions: Mapping[str, str] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        return any(t.outcome in ("failed", "error", "xpassed") for t in self.tests) or self.exit_code != 0

    @property
    def broken(self) -> bool:
        """The run itself broke (internal error, usage error, interrupted): not a scenario verdict."""
        return self.exit_code not in (0, 1, 5)


def head_line(text: str) -> str:
    """The line of a failure report that says what went wrong: the first ``E`` line (pytest's assertion
    message), else the last line naming an Error/Failure, else the last line. Never truncated."""
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    pick = next((ln for ln in lines if ln.startswith("E ")), None)
    if pick is None:
        pick = next((ln for ln in reversed(lines) if "Error" in ln or "Failure" in ln), lines[-1] if lines else "")
    return re.sub(r"^E\s+", "", pick)


def _scenario_of(nodeid: str) -> str:
    path, _, name = nodeid.partition("::")
    return f"{Path(path).name}::{name.split('[')[0]}"


_MARKS = {"passed": "ok", "failed": "FAIL", "error": "ERROR", "skipped": "skip", "xfailed": "xfail", "xpassed": "XPASS"}


class ResultCollector:
    """pytest plugin object (registered by ``--ft-report`` / ``--ft-progress``): records every test's outcome,
    head line, full message, seed and duration, and writes the JSON at the end of the session. Under
    pytest-xdist it runs on the controller, which receives every worker's reports."""

    def __init__(self, config: pytest.Config, label: str, path: str | None, progress: TextIO | None):
        self.config = config
        self.label = label
        self.path = Path(path) if path else None
        self.progress = progress
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
            message = ""
            if hasattr(report, "wasxfail"):
                outcome = "xfailed" if report.skipped else "xpassed"
                reason = report.wasxfail
            elif report.skipped:
                outcome = "skipped"
                reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
                reason = reason.removeprefix("Skipped: ")
            elif report.failed:
                outcome = "failed" if report.when == "call" else "error"
                message = report.longreprtext
                reason = head_line(message)
            else:
                outcome, reason = "passed", ""
            if prev is not None and _SEVERITY[prev.outcome] >= _SEVERITY[outcome]:
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
        from .adapter import split_adapter_spec
        from .plugin import get_adapter, parse_options

        target, own = split_adapter_spec(self.label)
        options = {**parse_options(self.config.getoption("ft_adapter_option")), **own}
        name, versions = self.label, {}
        try:
            adapter = get_adapter(self.config)
            name, versions = adapter.name, dict(adapter.versions())
        except Exception:  # noqa: BLE001 - the report still says what ran; the usage error is already shown
            pass
        return AdapterRun(target=self.label, name=name, options=options, exit_code=int(exit_code),
                          duration_s=time.perf_counter() - self.start, tests=list(self.tests.values()),
                          versions=versions)

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session, exitstatus):
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text(render([self.run(int(exitstatus))], "json"), encoding="utf-8")
        os.replace(tmp, self.path)


def run_adapter(target: str | None, options: Mapping[str, str] | None = None, pytest_args: Sequence[str] = (),
                progress: bool = True) -> AdapterRun:
    """Run ``pytest --pyargs scenarios`` against one adapter in a subprocess (as a user's CI would) and
    read back the JSON it writes with ``--ft-report``. pytest's own output goes to a log file, shown
    when the run breaks; the progress lines go to stderr.

    ``target`` may carry its own options in brackets (``"swift[load_args=true]"``); the run's label is
    the target as given.
    """
    label = target or "reference"
    with tempfile.TemporaryDirectory(prefix="ft-harness-report-") as tmp:
        out, log = Path(tmp) / "report.json", Path(tmp) / "pytest.log"
        cmd = [sys.executable, "-m", "pytest", "--pyargs", "scenarios", "-q", "-p", "no:cacheprovider",
               "--ft-adapter", label, "--ft-report", str(out)] + (["--ft-progress"] if progress else [])
        for key, value in (options or {}).items():
            cmd += ["--ft-adapter-option", f"{key}={value}"]
        cmd += list(pytest_args)
        start = time.perf_counter()
        with open(log, "w", encoding="utf-8") as fh:
            code = subprocess.run(cmd, stdout=fh, stderr=None if progress else subprocess.DEVNULL).returncode
        if out.is_file():
            run = load_runs(out)[0]
            run.exit_code = code
        else:
            run = AdapterRun(target=label, name=label, options=dict(options or {}), exit_code=code,
                             duration_s=time.perf_counter() - start)
        if run.broken:  # what pytest said is the only account of what happened
            text = log.read_text(encoding="utf-8", errors="replace")
            run.tests.append(TestOutcome("<session>", "<session>", "error",
                                         f"pytest exited with {code}: {head_line(text[-4000:])}", 0.0, None,
                                         text[-20000:]))
        return run


def load_runs(path: str | Path) -> list[AdapterRun]:
    """The adapter runs of a JSON report (written with ``--format json``), to merge reports made in
    different environments (each real framework has its own)."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if data.get("format") != "ft-harness-report/1":
        raise ValueError(f"{path}: not an ft-harness JSON report (format={data.get('format')!r})")
    runs = []
    for a in data["adapters"]:
        tests = [TestOutcome(**t) for t in a.get("tests", [])]
        runs.append(AdapterRun(target=a["target"], name=a["name"], options=a.get("options", {}),
                               exit_code=a["exit_code"], duration_s=a["duration_s"], tests=tests,
                               versions=a.get("versions", {})))
    return runs


def aggregate(run: AdapterRun) -> dict[str, dict[str, Any]]:
    """Per scenario (test function): worst outcome over its parametrisations, with its reason."""
    out: dict[str, dict[str, Any]] = {}
    for t in run.tests:
        cell = out.setdefault(t.scenario, {"outcome": "skipped", "reason": "", "duration_s": 0.0, "tests": 0,
                                           "seed": t.seed, "_sev": -1})
        cell["tests"] += 1
        cell["duration_s"] += t.duration_s
        sev = _SEVERITY[t.outcome]
        if sev > cell["_sev"]:
            cell.update(outcome=t.outcome, reason=t.reason, _sev=sev)
    for cell in out.values():
        cell.pop("_sev")
        cell["duration_s"] = round(cell["duration_s"], 3)
    return out


def _matrix(runs: Sequence[AdapterRun]) -> tuple[list[str], list[str], dict[str, dict[str, dict[str, Any]]],
                                                  dict[str, Any]]:
    """(column keys, scenarios, key -> scenario -> cell, scenario -> seed)."""
    keys = _column_keys(runs)
    cells = {key: aggregate(run) for key, run in zip(keys, runs)}
    scenarios = sorted({s for c in cells.values() for s in c})
    seeds = {s: next((c[s]["seed"] for c in cells.values() if s in c), None) for s in scenarios}
    return keys, scenarios, cells, seeds


def _cell_text(cell: Mapping[str, Any] | None, with_reason: bool = True) -> str:
    if cell is None:
        return "—"
    word = {"passed": "pass", "failed": "FAIL", "error": "ERROR", "skipped": "skipped", "xfailed": "xfail (known)",
            "xpassed": "XPASS (known failure fixed?)"}[cell["outcome"]]
    if with_reason and cell["reason"] and cell["outcome"] != "passed":
        return f"{word}: {cell['reason']}"
    return word


_LIBRARIES = ("transformers", "peft", "trl", "torch", "bitsandbytes", "optimum-quanto", "diffusers")


def _framework(run: AdapterRun, *, plain_transformers: bool = True) -> tuple[str, str] | None:
    """(name, version) of the framework a run tested: its first non-library entry in ``versions``; for
    the plain transformers adapter (if ``plain_transformers``), transformers itself."""
    for name, version in run.versions.items():
        if name not in _LIBRARIES:
            return name, version
    if plain_transformers and run.target.startswith("transformers") and "transformers" in run.versions:
        return "transformers", run.versions["transformers"]
    return None


def _column_keys(runs: Sequence[AdapterRun]) -> list[str]:
    """One key per run: its target; where merged reports share a target (``swift`` from the 4.x and
    the 3.x environments), ``target@<framework version>``, numbered if that is still not unique."""
    bases = []
    for run in runs:
        fw = _framework(run, plain_transformers=False)
        shared = sum(r.target == run.target for r in runs) > 1
        bases.append(f"{run.target}@{fw[1]}" if shared and fw else run.target)
    keys = []
    for i, (run, base) in enumerate(zip(runs, bases)):
        same = [j for j, r in enumerate(runs) if r.target == run.target]
        unique = sum(bases[j] == base for j in same) == 1
        keys.append(base if unique else f"{base}#{same.index(i) + 1}")
    return keys


def _label(run: AdapterRun) -> str:
    """Column title: the target, plus the framework version when the adapter reports one."""
    fw = _framework(run)
    if fw is None:
        return run.target
    name, version = fw
    return f"{run.target} ({version})" if name in run.target else f"{run.target} ({name} {version})"


def render(runs: Sequence[AdapterRun], fmt: str, reasons: bool = True) -> str:
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose from {FORMATS}")
    keys, scenarios, cells, seeds = _matrix(runs)
    if fmt == "html":
        from .html_report import render_html

        return render_html(json.loads(render(runs, "json")))
    if fmt == "json":
        return json.dumps({
            "format": "ft-harness-report/1",
            "adapters": [{"target": r.target, "name": r.name, "options": dict(r.options), "exit_code": r.exit_code,
                          "duration_s": round(r.duration_s, 3), "versions": dict(r.versions),
                          "tests": [dataclasses.asdict(t) for t in r.tests]} for r in runs],
            "scenarios": [{"id": s, "seed": seeds[s],
                           "results": {k: cells[k][s] for k in keys if s in cells[k]}}
                          for s in scenarios],
        }, indent=2, sort_keys=True)
    if fmt == "junit":
        parts = ['<?xml version="1.0" encoding="utf-8"?>', "<testsuites>"]
        for r in runs:
            n_fail = sum(t.outcome in ("failed", "xpassed") for t in r.tests)
            n_err = sum(t.outcome == "error" for t in r.tests)
            n_skip = sum(t.outcome in ("skipped", "xfailed") for t in r.tests)
            parts.append(f'<testsuite name="{escape(r.target)}" tests="{len(r.tests)}" failures="{n_fail}" '
                         f'errors="{n_err}" skipped="{n_skip}" time="{r.duration_s:.3f}">')
            for t in r.tests:
                cls, _, name = t.nodeid.rpartition("::")
                attrs = f'classname="{escape(Path(cls).name, {chr(34): "&quot;"})}" ' \
                        f'name="{escape(name, {chr(34): "&quot;"})}" time="{t.duration_s:.3f}"'
                body = ""
                msg = escape(t.reason, {chr(34): "&quot;"})
                if t.outcome in ("failed", "xpassed"):
                    body = f'<failure message="{msg}"/>'
                elif t.outcome == "error":
                    body = f'<error message="{msg}"/>'
                elif t.outcome in ("skipped", "xfailed"):
                    body = f'<skipped message="{msg}"/>'
                parts.append(f"<testcase {attrs}>{body}</testcase>")
            parts.append("</testsuite>")
        parts.append("</testsuites>")
        return "\n".join(parts) + "\n"
    header = ["scenario", "seed"] + [_label(r) for r in runs]
    rows = [[s, seeds[s] or ""] + [_cell_text(cells[k].get(s), with_reason=reasons) for k in keys]
            for s in scenarios]
    totals = ["**total time**" if fmt == "md" else "total time", ""] + [f"{r.duration_s:.1f}s" for r in runs]
    if fmt == "md":
        esc = [[c.replace("|", "\\|") for c in row] for row in rows]
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in esc + [totals]]
        return "\n".join(lines) + "\n"
    widths = [max(len(str(row[i])) for row in [header] + rows + [totals]) for i in range(len(header))]
    widths = [min(w, 90) for w in widths]
    fmt_row = lambda row: "  ".join(str(c)[:90].ljust(w) for c, w in zip(row, widths))  # noqa: E731
    return "\n".join([fmt_row(header), fmt_row(["-" * w for w in widths])] + [fmt_row(r) for r in rows + [totals]]) + "\n"
