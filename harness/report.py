"""Run the scenarios against adapters and render a scenario x adapter matrix.

Used by ``ft-harness run`` / ``ft-harness report``. Each adapter's scenarios run in this process
through ``pytest.main`` (the heavy imports happen once), with a small plugin that records every
test's outcome, one-line reason, seed and duration.

JSON format (stable; ``"format": "ft-harness-report/1"``)::

    {"format": "ft-harness-report/1",
     "adapters": [{"target": "harness.mutants:X", "name": "...", "options": {...}, "exit_code": 1,
                   "duration_s": 12.3, "versions": {"ms-swift": "4.6.0", ...},
                   "tests": [{"nodeid": ..., "scenario": ..., "outcome": ..., "reason": ...,
                              "duration_s": ..., "seed": ...}]}],
     "scenarios": [{"id": "test_best_checkpoint.py::test_rotation_keeps_best", "seed": "004",
                    "results": {"<target>": {"outcome": "passed|failed|skipped|error|xfailed|xpassed",
                                             "reason": "one line", "duration_s": 0.7, "tests": 2}}}]}
"""

from __future__ import annotations

import dataclasses
import json
import re
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO
from xml.sax.saxutils import escape

import pytest

__all__ = ["TestOutcome", "AdapterRun", "run_adapter", "load_runs", "render", "FORMATS", "aggregate"]

FORMATS = ("text", "md", "json", "junit")
_SEVERITY = {"error": 5, "failed": 4, "xpassed": 3, "passed": 1, "xfailed": 2, "skipped": 0}


@dataclass
class TestOutcome:
    nodeid: str
    scenario: str  # module.py::function (parameters dropped)
    outcome: str
    reason: str
    duration_s: float
    seed: str | None


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


def _one_line(text: str, limit: int = 160) -> str:
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    pick = next((ln for ln in lines if ln.startswith("E ")), None)
    if pick is None:
        pick = next((ln for ln in reversed(lines) if "Error" in ln or "Failure" in ln), lines[-1] if lines else "")
    pick = re.sub(r"^E\s+", "", pick)
    return pick if len(pick) <= limit else pick[: limit - 3] + "..."


def _scenario_of(nodeid: str) -> str:
    path, _, name = nodeid.partition("::")
    return f"{Path(path).name}::{name.split('[')[0]}"


class _Collector:
    def __init__(self, progress: TextIO | None, label: str):
        self.tests: dict[str, TestOutcome] = {}
        self.durations: dict[str, float] = {}
        self.seeds: dict[str, str | None] = {}
        self.progress = progress
        self.label = label
        self.adapter_name: str | None = None
        self.versions: dict[str, str] = {}

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, config, items):
        for item in items:
            marker = item.get_closest_marker("seed")
            self.seeds[item.nodeid] = marker.args[0] if marker and marker.args else None
        if any("ft_adapter" in getattr(i, "fixturenames", ()) for i in items):
            from .plugin import get_adapter

            adapter = get_adapter(config)
            self.adapter_name = adapter.name
            if callable(getattr(adapter, "versions", None)):
                self.versions = dict(adapter.versions())

    def pytest_collectreport(self, report):
        if report.failed:  # an unimportable scenario module is an error cell, never a silent gap
            nodeid = report.nodeid or "<collection>"
            self.tests[nodeid] = TestOutcome(nodeid, f"{Path(nodeid.split('::')[0]).name}::<collection>", "error",
                                             _one_line(report.longreprtext), 0.0, None)
            if self.progress is not None:
                print(f"[{self.label}] ERROR collecting {nodeid}: {self.tests[nodeid].reason}", file=self.progress,
                      flush=True)

    def pytest_runtest_logreport(self, report):
        nodeid = report.nodeid
        self.durations[nodeid] = self.durations.get(nodeid, 0.0) + report.duration
        prev = self.tests.get(nodeid)
        if report.when == "call" or report.outcome != "passed":
            if hasattr(report, "wasxfail"):
                outcome = "xfailed" if report.skipped else "xpassed"
                reason = report.wasxfail
            elif report.skipped:
                outcome = "skipped"
                reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
                reason = reason.removeprefix("Skipped: ")
            elif report.failed:
                outcome = "failed" if report.when == "call" else "error"
                reason = _one_line(report.longreprtext)
            else:
                outcome, reason = "passed", ""
            if prev is not None and _SEVERITY[prev.outcome] >= _SEVERITY[outcome]:
                return
            self.tests[nodeid] = TestOutcome(nodeid, _scenario_of(nodeid), outcome, reason, 0.0,
                                             self.seeds.get(nodeid))
        if report.when == "teardown" and nodeid in self.tests:
            t = self.tests[nodeid]
            t.duration_s = self.durations[nodeid]  # setup + call + teardown
        if report.when == "teardown" and self.progress is not None and nodeid in self.tests:
            mark = {"passed": "ok", "failed": "FAIL", "error": "ERROR", "skipped": "skip", "xfailed": "xfail",
                    "xpassed": "XPASS"}[t.outcome]
            print(f"[{self.label}] {mark:5} {t.duration_s:6.2f}s {nodeid.split('/')[-1]}", file=self.progress,
                  flush=True)


def run_adapter(target: str | None, options: Mapping[str, str] | None = None, pytest_args: Sequence[str] = (),
                progress: TextIO | None = sys.stderr) -> AdapterRun:
    """Run ``pytest --pyargs scenarios`` against one adapter in this process; collect outcomes.

    ``target`` may carry its own options in brackets (``"swift[load_args=true]"``); they are added to
    ``options``. The run's label is the target as given.
    """
    from .adapter import split_adapter_spec

    label = target or "reference"
    if target:
        target, own = split_adapter_spec(target)
        options = {**dict(options or {}), **own}
    collector = _Collector(progress, label)
    args = ["--pyargs", "scenarios", "-qq", "-p", "no:cacheprovider", "--disable-warnings", "--no-summary"]
    if target:
        args += ["--ft-adapter", target]
    for key, value in (options or {}).items():
        args += ["--ft-adapter-option", f"{key}={value}"]
    args += list(pytest_args)
    start = time.perf_counter()
    code = pytest.main(args, plugins=[collector])
    return AdapterRun(target=label, name=collector.adapter_name or label, options=dict(options or {}),
                      exit_code=int(code), duration_s=time.perf_counter() - start,
                      tests=list(collector.tests.values()), versions=collector.versions)


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
