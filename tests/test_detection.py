"""The detection matrix: every scenario passes on the reference and fails on the mutant(s) that
reproduce its bug — and on nothing else. Adding a mutant or a scenario is one line in
``harness.mutants.MUTANTS`` (mutant -> scenario modules it must fail).

Each adapter runs the scenario suite in-process through pytester (heavy libraries are imported once by
the outer session, so only training time is paid per adapter).

*Hook coverage* keeps the matrix exact and fast as it grows. A mutant is the reference with a few
members overridden (its *hooks*: the names it defines that the reference also defines, ``name`` aside,
which only labels reports). The reference runs every scenario module once with each member access
recorded per module (in forked children too: the trace is a file). A module in which the reference
never touches any of a mutant's hooks runs identical code on that mutant, so it passes there as it
passes on the reference; only the modules that touch a hook are run for the mutant, and its expected
failures must lie among them. ``slow``-marked modules (the 2-process distributed save, whose workers
are not traced) run for the reference and for the mutants that must fail them.
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

import pytest

import scenarios
from harness.mutants import MUTANTS

SCENARIO_MODULES = sorted(p.stem for p in Path(scenarios.__file__).parent.glob("test_*.py"))
SLOW_MODULES = sorted(p.stem for p in Path(scenarios.__file__).parent.glob("test_*.py")
                      if "pytest.mark.ft_slow" in p.read_text())
EXPECTED = {f"harness.mutants:{name}": failing for name, failing in MUTANTS.items()}
#: members that do not change behaviour (report labels)
NOT_HOOKS = frozenset({"name"})


@pytest.fixture(scope="module", autouse=True)
def _heavy_imports_once():
    # imported here so pytester's sys.modules snapshot keeps them between in-process runs
    import bitsandbytes  # noqa: F401
    import datasets  # noqa: F401  (pyarrow extension types cannot be registered twice)
    from diffusers import AutoencoderKL, UNet2DConditionModel  # noqa: F401
    from diffusers.loaders import StableDiffusionLoraLoaderMixin  # noqa: F401
    import optimum.quanto  # noqa: F401
    import peft  # noqa: F401
    import torch  # noqa: F401
    import trl  # noqa: F401
    from trl import GRPOTrainer  # noqa: F401

    import harness.reference.trainer  # noqa: F401


def reference_members() -> frozenset[str]:
    from harness.reference import ReferenceAdapter

    return frozenset(n for cls in ReferenceAdapter.__mro__[:-1] for n in vars(cls) if not n.startswith("__"))


def hooks_of(mutant: str) -> frozenset[str]:
    """The reference members a mutant class overrides (the only places it can behave differently)."""
    import harness.mutants as mutants
    from harness.reference import ReferenceAdapter

    cls = getattr(mutants, mutant)
    own = {n for c in cls.__mro__[:cls.__mro__.index(ReferenceAdapter)] for n in vars(c) if not n.startswith("__")}
    return frozenset(own & reference_members()) - NOT_HOOKS


class HookTrace:
    """Records, per scenario module, which ReferenceAdapter members are accessed (this process and forks).
    It is also the inner session's plugin that says which module is running."""

    def __init__(self, path: Path):
        self.path = path
        self.seen: set[tuple[str, str]] = set()
        self.module = ""

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_protocol(self, item, nextitem):
        self.module = item.module.__name__.rsplit(".", 1)[-1] if getattr(item, "module", None) else ""
        try:
            return (yield)
        finally:
            self.module = ""

    def __enter__(self):
        from harness.reference import ReferenceAdapter

        names, original, seen, path, trace = reference_members(), object.__getattribute__, self.seen, self.path, self

        def traced(obj, name):
            if name in names and trace.module and (trace.module, name) not in seen:
                seen.add((trace.module, name))
                with open(path, "a", encoding="utf-8") as fh:
                    fh.write(json.dumps([trace.module, name]) + "\n")
            return original(obj, name)

        ReferenceAdapter.__getattribute__ = traced
        return self

    def __exit__(self, *exc):
        from harness.reference import ReferenceAdapter

        del ReferenceAdapter.__getattribute__

    def modules(self) -> dict[str, list[str]]:
        out: dict[str, set[str]] = {}
        for line in self.path.read_text(encoding="utf-8").splitlines():
            module, name = json.loads(line)
            out.setdefault(module, set()).add(name)
        return {m: sorted(n) for m, n in out.items()}


def run_scenarios(pytester, target: str, modules: list[str], marks: str, plugins=()):
    result = pytester.runpytest_inprocess("--pyargs", *(f"scenarios.{m}" for m in modules), "--ft-adapter", target,
                                          "-m", marks, "-p", "no:cacheprovider", "-q", plugins=list(plugins))
    reports = [r for r in result.reprec.getreports("pytest_runtest_logreport") if r.failed]
    failing = {Path(r.location[0]).stem for r in reports}  # (--pyargs nodeids outside the rootdir carry no path)
    details = "\n".join(f"  {r.nodeid}: {r.longreprtext.strip().splitlines()[-1][:200]}" for r in reports)
    return failing, result.parseoutcomes(), details


@pytest.fixture
def reference_run(pytester, tmp_path_factory):
    """The reference over every module with the hook trace; run once per test session (the xdist workers
    share it through a locked file) and read by every mutant's test."""
    run_id = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    shared = tmp_path_factory.getbasetemp().parent if run_id else tmp_path_factory.getbasetemp()
    result_file = shared / f"ft-reference-trace-{run_id or 'serial'}.json"
    with open(shared / f"ft-reference-trace-{run_id or 'serial'}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not result_file.is_file():
            trace_file = shared / f"ft-reference-trace-{run_id or 'serial'}.jsonl"
            trace_file.write_text("", encoding="utf-8")
            with HookTrace(trace_file) as trace:
                failing, outcomes, details = run_scenarios(pytester, "reference", SCENARIO_MODULES, "not ft_gpu",
                                                           plugins=[trace])
            result_file.write_text(json.dumps({"failing": sorted(failing), "outcomes": outcomes, "details": details,
                                               "trace": trace.modules()}), encoding="utf-8")
    return json.loads(result_file.read_text(encoding="utf-8"))


def test_matrix_names_real_scenarios():
    unknown = {m for failing in MUTANTS.values() for m in failing} - set(SCENARIO_MODULES)
    assert not unknown, f"MUTANTS names scenario modules that do not exist: {sorted(unknown)}"
    uncovered = {m for m in SCENARIO_MODULES if m != "test_checkpoint_layout"} - {
        m for failing in MUTANTS.values() for m in failing}
    assert not uncovered, f"scenarios no mutant proves they bite: {sorted(uncovered)}"
    idle = [m for m in MUTANTS if not hooks_of(m)]
    assert not idle, f"mutants that override no reference member (they cannot differ): {idle}"


def test_detection_reference(reference_run):
    """The reference passes every scenario (and the trace it left names every non-slow module)."""
    assert reference_run["outcomes"].get("passed", 0) > 0, f"reference: nothing passed ({reference_run['outcomes']})"
    assert not reference_run["failing"], f"reference fails {reference_run['failing']}\n{reference_run['details']}"
    untraced = set(SCENARIO_MODULES) - set(SLOW_MODULES) - set(reference_run["trace"])
    assert not untraced, f"the hook trace saw no adapter access in {sorted(untraced)}"


@pytest.mark.parametrize("target", sorted(EXPECTED))
def test_detection(pytester, reference_run, target):
    mutant = target.split(":")[1]
    hooks = hooks_of(mutant)
    expected = set(EXPECTED[target])
    touched = sorted(m for m, names in reference_run["trace"].items() if set(names) & hooks and m in SCENARIO_MODULES)
    unreachable = expected - set(touched) - set(SLOW_MODULES)
    assert not unreachable, (f"{target} must fail {sorted(unreachable)}, but the reference never touches its hooks "
                             f"{sorted(hooks)} there: the matrix or the mutant is wrong")
    slow = [m for m in SLOW_MODULES if m in expected]
    modules = sorted(set(touched) - set(SLOW_MODULES) | set(slow))
    marks = "not ft_gpu" if slow else "not ft_gpu and not ft_slow"
    failing, outcomes, details = run_scenarios(pytester, target, modules, marks)
    assert outcomes.get("passed", 0) > 0 or expected, f"{target}: nothing passed ({outcomes})"
    assert failing == expected, (
        f"{target} (hooks {sorted(hooks)}; ran {modules}, the other modules never touch them): scenarios failing "
        f"{sorted(failing)}, expected exactly {sorted(expected)}\n{details}")
