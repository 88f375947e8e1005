"""The report model: what one pytest run of the scenarios against one adapter found, and the
scenario x column matrix that every format renders.

* :class:`TestOutcome` (one test) and :class:`AdapterRun` (one run: target, adapter name, options,
  exit code, versions, tests) — what the collector records and what a JSON report holds;
* :func:`aggregate` (per scenario: the worst outcome over its parametrisations) and
  :func:`matrix` (column keys, scenarios, cells, seeds);
* :func:`column_keys` (one key per run, unique where merged reports share a target) and
  :func:`framework` (the framework a run tested, read from its versions; :data:`LIBRARIES` are the
  versions that are not a framework);
* :func:`document` / :func:`runs_of`: the ``ft-harness-report/1`` JSON document of runs, and back;
* :class:`Report` (:class:`Column` + :class:`Row`): a document as the HTML page and the sweep's
  tables read it, made from runs or from any ``ft-harness-report/1`` dict (a merge, a sweep).

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
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["FORMAT", "OUTCOMES", "SEVERITY", "RED_OUTCOMES", "LIBRARIES", "split_versions", "TestOutcome", "AdapterRun", "head_line", "aggregate",
           "framework", "column_keys", "Matrix", "matrix", "document", "runs_of", "Column", "Row", "Report",
           "columns"]

FORMAT = "ft-harness-report/1"
#: outcome -> how bad it is: a scenario's cell shows its worst test
SEVERITY = {"error": 5, "failed": 4, "xpassed": 3, "passed": 1, "xfailed": 2, "skipped": 0}
OUTCOMES = tuple(SEVERITY)
#: the outcomes that make a run red (a known failure that passed included: its fix must drop the entry)
RED_OUTCOMES = ("failed", "error", "xpassed")
#: the libraries an adapter's ``versions`` may list besides its framework (the framework is the first other entry)
LIBRARIES = ("transformers", "peft", "trl", "torch", "bitsandbytes", "optimum-quanto", "diffusers", "torchao")


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
        return any(t.outcome in RED_OUTCOMES for t in self.tests) or self.exit_code != 0

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


def aggregate(run: AdapterRun) -> dict[str, dict[str, Any]]:
    """Per scenario (test function): worst outcome over its parametrisations, with its reason."""
    out: dict[str, dict[str, Any]] = {}
    for t in run.tests:
        cell = out.setdefault(t.scenario, {"outcome": "skipped", "reason": "", "duration_s": 0.0, "tests": 0,
                                           "seed": t.seed, "_sev": -1})
        cell["tests"] += 1
        cell["duration_s"] += t.duration_s
        sev = SEVERITY[t.outcome]
        if sev > cell["_sev"]:
            cell.update(outcome=t.outcome, reason=t.reason, _sev=sev)
    for cell in out.values():
        cell.pop("_sev")
        cell["duration_s"] = round(cell["duration_s"], 3)
    return out


# ------------------------------------------------------------------------------------------- columns
def framework(target: str, versions: Mapping[str, str], *, plain_transformers: bool = True) -> tuple[str, str] | None:
    """(name, version) of the framework a run of ``target`` tested: the first entry of its ``versions``
    that is not one of :data:`LIBRARIES` (the entry named as the target itself first: a report's versions are
    stored sorted); for the plain transformers adapter (if ``plain_transformers``), transformers itself."""
    own = target.split("[")[0]
    if own in versions and own not in LIBRARIES:
        return own, versions[own]
    for name, version in versions.items():
        if name not in LIBRARIES:
            return name, version
    if plain_transformers and target.startswith("transformers") and "transformers" in versions:
        return "transformers", versions["transformers"]
    return None


def split_versions(target: str, versions: Mapping[str, str]) -> tuple[tuple[str, str] | None, dict[str, str]]:
    """(the framework a run of ``target`` tested, see :func:`framework`; every other version, :data:`LIBRARIES`
    first in that order, then by name): how a column's header, a status page and ``ft-harness check`` name a run."""
    fw = framework(target, versions)
    order = {name: i for i, name in enumerate(LIBRARIES)}
    libs = dict(sorted(((k, v) for k, v in versions.items() if fw is None or k != fw[0]),
                       key=lambda kv: (order.get(kv[0], len(order)), kv[0])))
    return fw, libs


def _keys(targets: Sequence[str], versions: Sequence[Mapping[str, str]]) -> list[str]:
    bases = []
    for target, vers in zip(targets, versions):
        fw = framework(target, vers, plain_transformers=False)
        bases.append(f"{target}@{fw[1]}" if targets.count(target) > 1 and fw else target)
    keys = []
    for i, (target, base) in enumerate(zip(targets, bases)):
        same = [j for j, t in enumerate(targets) if t == target]
        unique = sum(bases[j] == base for j in same) == 1
        keys.append(base if unique else f"{base}#{same.index(i) + 1}")
    return keys


def column_keys(runs: Sequence[AdapterRun]) -> list[str]:
    """One key per run: its target; where merged reports share a target (``swift`` from the 4.x and
    the 3.x environments), ``target@<framework version>``, numbered if that is still not unique."""
    return _keys([r.target for r in runs], [r.versions for r in runs])


@dataclass
class Matrix:
    keys: list[str]  # one per run, in run order
    scenarios: list[str]  # sorted
    cells: dict[str, dict[str, dict[str, Any]]]  # key -> scenario -> cell (see aggregate)
    seeds: dict[str, Any]  # scenario -> seed


def matrix(runs: Sequence[AdapterRun]) -> Matrix:
    keys = column_keys(runs)
    cells = {key: aggregate(run) for key, run in zip(keys, runs)}
    scenarios = sorted({s for c in cells.values() for s in c})
    seeds = {s: next((c[s]["seed"] for c in cells.values() if s in c), None) for s in scenarios}
    return Matrix(keys, scenarios, cells, seeds)


# ------------------------------------------------------------------------------------------ document
def document(runs: Sequence[AdapterRun]) -> dict[str, Any]:
    """The ``ft-harness-report/1`` document of ``runs`` (what ``--format json`` writes, keys sorted)."""
    m = matrix(runs)
    return {
        "format": FORMAT,
        "adapters": [{"target": r.target, "name": r.name, "options": dict(r.options), "exit_code": r.exit_code,
                      "duration_s": round(r.duration_s, 3), "versions": dict(r.versions),
                      "tests": [dataclasses.asdict(t) for t in r.tests]} for r in runs],
        "scenarios": [{"id": s, "seed": m.seeds[s], "results": {k: m.cells[k][s] for k in m.keys if s in m.cells[k]}}
                      for s in m.scenarios],
    }


def runs_of(data: Mapping[str, Any]) -> list[AdapterRun]:
    """The adapter runs of a parsed ``ft-harness-report/1`` document (its tests; the matrix is derived)."""
    runs = []
    for a in data["adapters"]:
        tests = [TestOutcome(**t) for t in a.get("tests", [])]
        runs.append(AdapterRun(target=a["target"], name=a["name"], options=a.get("options", {}),
                               exit_code=a["exit_code"], duration_s=a["duration_s"], tests=tests,
                               versions=a.get("versions", {})))
    return runs


def _as_written(value: Any) -> Any:
    """``value`` as ``json.loads`` gives back what ``json.dumps(..., sort_keys=True)`` wrote: mappings
    with sorted keys, sequences as lists."""
    if isinstance(value, Mapping):
        return {k: _as_written(value[k]) for k in sorted(value)}
    if isinstance(value, (list, tuple)):
        return [_as_written(v) for v in value]
    return value


# -------------------------------------------------------------------------------------------- report
@dataclass
class Column:
    """One matrix column: an adapter run as a report's header shows it."""

    key: str  # its key in the rows' results
    target: str
    framework: tuple[str, str] | None  # (name, version), see framework()
    libraries: dict[str, str]  # the other versions, LIBRARIES first (in that order), then by name
    options: Mapping[str, Any]
    duration_s: float | None
    exit_code: int | None
    tests: list[Mapping[str, Any]]  # the run's tests as the document holds them (with their messages)

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


@dataclass
class Row:
    """One matrix row: a scenario, the seed it reproduces, its cell per column key."""

    id: str  # module.py::function
    seed: str | None
    results: Mapping[str, Mapping[str, Any]]

    def cell(self, key: str) -> Mapping[str, Any] | None:
        return self.results.get(key)


@dataclass
class Report:
    """A report as its readers see it: columns, rows, and a sweep's extras (``{}`` otherwise).

    :meth:`from_runs` reads the runs through their document exactly as a JSON file of them reads back,
    so a report rendered from runs and one rendered from their ``--format json`` file are the same."""

    columns: list[Column]
    rows: list[Row]
    sweep: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_runs(cls, runs: Sequence[AdapterRun]) -> Report:
        return cls.from_document(_as_written(document(runs)))

    @classmethod
    def from_document(cls, data: Mapping[str, Any]) -> Report:
        """Any ``ft-harness-report/1`` dict: a run's, a merge's, a sweep's (a ``"sweep"`` key), or one from
        another ft-harness version (results under keys no adapter has get a column of their own)."""
        rows = [Row(s["id"], s.get("seed"), s.get("results", {})) for s in data.get("scenarios", [])]
        return cls(_columns(data), rows, data.get("sweep") or {})


def _columns(report: Mapping[str, Any]) -> list[Column]:
    adapters = list(report.get("adapters", []))
    keys = _keys([a.get("target", "?") for a in adapters], [a.get("versions") or {} for a in adapters])
    used = {k for s in report.get("scenarios", []) for k in s.get("results", {})}
    if used and not used <= set(keys):  # a report from another ft-harness version: show what is there
        keys = keys + sorted(used - set(keys))
        adapters = adapters + [{"target": k} for k in keys[len(adapters):]]
    out = []
    for key, a in zip(keys, adapters):
        fw, libs = split_versions(str(a.get("target", "")), a.get("versions") or {})
        out.append(Column(key=key, target=a.get("target", key), framework=fw, libraries=libs,
                          options=a.get("options") or {}, duration_s=a.get("duration_s"),
                          exit_code=a.get("exit_code"), tests=list(a.get("tests") or [])))
    return out


def columns(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One dict per column of a parsed ``ft-harness-report/1`` dict, in report order: ``key`` (its key
    in the scenarios' ``results``), ``target``, ``framework`` (name, version) or None, ``libraries`` (the
    other versions), ``options``, ``duration_s``, ``exit_code``, ``tests`` (see :class:`Column`)."""
    return [c.as_dict() for c in _columns(report)]
