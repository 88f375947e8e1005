"""The detection matrix: every scenario passes on the reference and fails on the mutant(s) that
reproduce its bug — and on nothing else. Each mutant class names the scenario modules it must fail in its own
``fails`` attribute, next to its bug; ``harness.mutants.MUTANTS`` (the table used here) is read off those classes.

Each adapter runs the scenario suite in-process through pytester (heavy libraries are imported once by
the outer session, so only training time is paid per adapter).

*Hook coverage* keeps the matrix exact and fast as it grows. A mutant is the reference with a few
members overridden (its *hooks*: the names it defines that the reference also defines, ``name`` aside,
which only labels reports). The reference runs every scenario once with each member use recorded (a
method when called, not when looked up; a data member when read; in forked children too: the trace is a
file) against the *test* running and every fixture being set up at that moment. Pure hooks (``PURE_HOOKS``)
are recorded as *divergences* instead, and members that matter only to an interrupted save (``INTERRUPTION_ONLY``)
only inside fault-injection children: see there. A test depends on the members it touched and those its
fixtures touched; tests that
share a non-function-scoped fixture of their module (a run made once, or an object that caches runs
for the module's tests) are one *group*, since whichever of them runs first pays for the others. A test
whose group never touches a mutant's hooks runs identical code on that mutant, so it passes there as it
passes on the reference: only the groups that touch a hook run for the mutant, and its expected
failures must lie among them. A member touched outside any test (collection, the plugin) selects
everything; reads inside ``validate_adapter`` are not uses (it checks a value and acts on none: a mutant valid there
behaves the same). ``slow``-marked modules (the 2-process distributed save, whose workers are not traced) run
whole, for the reference and for the mutants that must fail them.
"""

from __future__ import annotations

import fcntl
import functools
import importlib
import json
import os
import sys
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
#: the trace's unit for accesses outside any test or fixture
ANYWHERE = "*"
#: reference hooks that are pure functions of their arguments (and the files they read): where one is called,
#: every mutant overriding it is asked the same question on the spot; a mutant whose answer is the reference's
#: everywhere in a test's group cannot make that test differ, so only a differing answer (a *divergence*) selects
DIVERGES = "diverges:"
PURE_HOOKS = frozenset({"resolve_args", "effective_args", "checkpoint_policy", "restore_best", "best_checkpoint_path",
                        "removed_before_save", "resolve_latest", "check_resume_state"})
#: reference members whose value changes only what an *interrupted* save leaves on disk: a save written in place and
#: one staged and renamed into place (or copied into place, or with the old checkpoint deleted just before the rename)
#: end in the same tree when nothing stops them. Used outside a fault-injection child whose kill can land inside a
#: save (``harness.faults.KILLS_INSIDE_SAVES`` false: no child, or one killed between training steps, after its saves
#: finished) such a member cannot change a test's outcome, so only its uses inside one are recorded (NonAtomicSave:
#: 75 selected tests -> the ones that kill a run inside a save)
INTERRUPTION_ONLY = frozenset({"atomic_saves", "publish_checkpoint"})


def outcome(method, args, kwargs) -> tuple:
    try:
        return ("return", method(*args, **kwargs))
    except Exception as exc:  # noqa: BLE001 - an exception is an answer too
        return ("raise", exc)


def same_outcome(a: tuple, b: tuple) -> bool:
    if a[0] != b[0]:
        return False
    if a[0] == "raise":
        return type(a[1]) is type(b[1]) and str(a[1]) == str(b[1])
    return a[1] == b[1]


#: libraries whose modules a scenario run imports lazily (transformers' model classes, peft's tuners, ...): pytester
#: drops every module an in-process run imported, so each mutant's run would import them again (seconds each);
#: the ones the reference run imported are imported once in this process instead (``warm_imports``)
WARM_PACKAGES = frozenset({"accelerate", "bitsandbytes", "datasets", "diffusers", "huggingface_hub", "optimum", "peft",
                           "safetensors", "tokenizers", "torch", "transformers", "trl"})


def warm_imports(names: list[str]) -> None:
    """Imports, in this process, the library modules the reference run imported (so pytester's snapshot keeps them
    between the mutants' in-process runs). A module that does not import on its own is left to the runs."""
    for name in names:
        if name not in sys.modules:
            try:
                importlib.import_module(name)
            except Exception:  # noqa: BLE001 - e.g. a module made at run time; the run imports what it needs
                pass


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
    from trl import DPOConfig, DPOTrainer, GRPOTrainer, KTOConfig, KTOTrainer  # noqa: F401

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


def unit_key(item) -> str:
    """``module::name[params]``: a scenario test, the same in every run whatever the rootdir."""
    return f"{item.module.__name__.rsplit('.', 1)[-1]}::{item.name}"


def fixture_key(fixturedef) -> str:
    return f"{fixturedef.baseid}::{fixturedef.argname}"


class HookTrace:
    """Records which ReferenceAdapter members are accessed (this process and forks), each against the test running
    and every fixture being set up at that moment, and which fixtures each test uses. It is also the inner session's
    plugin that says what is running."""

    def __init__(self, path: Path):
        self.path = path
        self.seen: set[tuple[str, str]] = set()
        self.units: list[str] = []
        self.imported: list[str] = []
        self.validating = False

    def pytest_sessionfinish(self, session):
        self.imported = sorted(name for name in sys.modules if name.split(".")[0] in WARM_PACKAGES)

    def _write(self, *record: str) -> None:  # (appends: forked children write to the same file)
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_protocol(self, item, nextitem):
        key = unit_key(item)
        info = getattr(item, "_fixtureinfo", None)
        for defs in (info.name2fixturedefs.values() if info else ()):
            if defs:
                self._write("uses", key, fixture_key(defs[-1]), defs[-1].scope)
        self._write("test", key)
        self.units = [key]
        try:
            return (yield)
        finally:
            self.units = []

    @pytest.hookimpl(wrapper=True)
    def pytest_fixture_setup(self, fixturedef, request):
        self.units.append(fixture_key(fixturedef))
        try:
            return (yield)
        finally:
            self.units.pop()

    def _touch(self, unit_name: str) -> None:
        if self.validating:  # validate_adapter checks a value, it does not act on it: a mutant valid there is equal
            return
        for unit in self.units or [ANYWHERE]:
            if (unit, unit_name) not in self.seen:
                self.seen.add((unit, unit_name))
                self._write("touch", unit, unit_name)

    def __enter__(self):
        import harness.faults as faults
        import harness.mutants as mutants
        from harness.reference import ReferenceAdapter

        names, original, trace = reference_members(), object.__getattribute__, self
        #: pure hook -> the mutants overriding it, each instantiated once to be asked the same question
        askers = {hook: [(m, getattr(mutants, m)()) for m in MUTANTS if hook in hooks_of(m)] for hook in PURE_HOOKS}

        def pure_call(name, method, args, kwargs):
            """The reference's answer, and a divergence recorded for each mutant whose answer differs."""
            want = outcome(method, args, kwargs)
            for mutant, instance in askers[name]:
                if not same_outcome(want, outcome(getattr(instance, name), args, kwargs)):
                    trace._touch(f"{DIVERGES}{mutant}")
            if want[0] == "raise":
                raise want[1]
            return want[1]

        def traced(obj, name):
            value = original(obj, name)
            if name not in names or type(obj) is not ReferenceAdapter:
                return value  # (a mutant asked a pure question runs untraced)
            if not (callable(value) and getattr(value, "__self__", None) is obj):
                if name not in INTERRUPTION_ONLY or faults.KILLS_INSIDE_SAVES:
                    trace._touch(name)  # a data member: read is use
                return value

            @functools.wraps(value)
            def called(*args, **kwargs):  # a method: recorded when called, not when looked up (validation)
                if name in PURE_HOOKS:
                    return pure_call(name, value, args, kwargs)
                if name not in INTERRUPTION_ONLY or faults.KILLS_INSIDE_SAVES:
                    trace._touch(name)
                return value(*args, **kwargs)

            return called

        ReferenceAdapter.__getattribute__ = traced
        import harness.adapter as contract

        self._validate = contract.validate_adapter

        def validate(*args, **kwargs):
            self.validating = True
            try:
                return self._validate(*args, **kwargs)
            finally:
                self.validating = False

        contract.validate_adapter = validate
        return self

    def __exit__(self, *exc):
        from harness.reference import ReferenceAdapter

        del ReferenceAdapter.__getattribute__
        import harness.adapter as contract

        contract.validate_adapter = self._validate

    def dependencies(self) -> dict[str, list[str]]:
        """test key -> the members its group touched (``ANYWHERE``: members touched outside any test)."""
        touched: dict[str, set[str]] = {}
        uses: dict[str, set[str]] = {}
        shared: dict[str, set[str]] = {}  # a module's non-function-scoped fixture -> the tests that use it
        for line in self.path.read_text(encoding="utf-8").splitlines():
            kind, *rest = json.loads(line)
            if kind == "touch":
                touched.setdefault(rest[0], set()).add(rest[1])
            elif kind == "test":
                uses.setdefault(rest[0], set())
            else:
                test, fixture, scope = rest
                uses.setdefault(test, set()).add(fixture)
                if scope != "function" and not fixture.startswith("::"):  # "::name": a plugin's or conftest's
                    shared.setdefault(fixture, set()).add(test)
        group = {t: {t} for t in uses}
        for members in shared.values():  # union the groups of the tests sharing one fixture
            merged = set().union(*(group[t] for t in members))
            for t in merged:
                group[t] = merged
        own = {t: touched.get(t, set()).union(*(touched.get(f, set()) for f in uses[t])) for t in uses}
        deps = {t: sorted(set().union(*(own[u] for u in group[t]))) for t in uses}
        deps[ANYWHERE] = sorted(touched.get(ANYWHERE, ()))
        return deps


class Select:
    """The inner session's plugin that runs only the given tests (and whole modules where named).

    The verdict is per module (the set of modules with a failing test), so in a module the mutant must fail, the
    tests after its first failure cannot change it: they are not run (``settled``). Every test of a module it must
    pass still runs."""

    def __init__(self, tests: set[str], whole_modules: set[str], must_fail: set[str] = frozenset()):
        self.tests, self.whole_modules, self.must_fail = tests, whole_modules, set(must_fail)
        self.failed: set[str] = set()
        self.settled: list[str] = []

    def pytest_collection_modifyitems(self, config, items):
        keep = [i for i in items if unit_key(i) in self.tests or unit_key(i).split("::")[0] in self.whole_modules]
        config.hook.pytest_deselected(items=[i for i in items if i not in keep])
        items[:] = keep

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_protocol(self, item, nextitem):
        module = unit_key(item).split("::")[0]
        if module in self.must_fail and module in self.failed:
            self.settled.append(unit_key(item))
            # not run, no reports; what the previous test left set up and the next one does not need is torn down,
            # as pytest's own teardown step does (else the next module's setup finds this one's fixtures still up)
            item.session._setupstate.teardown_exact(nextitem)
            return True
        return None

    def pytest_runtest_logreport(self, report):
        if report.failed:
            self.failed.add(Path(report.location[0]).stem)


def run_scenarios(pytester, target: str, modules: list[str], marks: str, plugins=()):
    result = pytester.runpytest_inprocess("--pyargs", *(f"scenarios.{m}" for m in modules), "--ft-adapter", target,
                                          "-m", marks, "-p", "no:cacheprovider", "-q", plugins=list(plugins))
    reports = [r for r in result.reprec.getreports("pytest_runtest_logreport") if r.failed]
    failing = {Path(r.location[0]).stem for r in reports}  # (--pyargs nodeids outside the rootdir carry no path)
    details = "\n".join(f"  {r.nodeid}: {r.longreprtext.strip().splitlines()[-1][:200]}" for r in reports)
    return failing, result.parseoutcomes(), details


#: the reference's scenario run is split into this many shards (whole modules), so that under ``pytest -n 2`` both
#: workers trace one at the start instead of one tracing everything while the other waits on it (measured: the
#: waiting worker idled 41 s of a 369 s self-test)
SHARDS = 2
#: seconds per module of an untraced serial reference run (``--durations=0``, 2-core machine, 2026-12-05): only the
#: shards' balance depends on them; a module not listed counts 1 s
REFERENCE_SECONDS = {"test_resume_equivalence": 11.0, "test_distributed_save": 10.7, "test_args_precedence": 8.1,
                     "test_best_checkpoint": 6.7, "test_diffusion_lora_resume": 5.6, "test_quantized_lora_resume": 3.8,
                     "test_crash_during_save": 3.6, "test_reference_model": 3.2, "test_grad_accumulation": 2.1,
                     "test_trainable_set": 7.0, "test_moe_lora": 5.0, "test_moe_router_loss": 3.5,
                     "test_thinking_template": 4.0}


def reference_shards() -> list[list[str]]:
    """SCENARIO_MODULES in SHARDS parts of about equal reference time (longest first, each to the lightest part).
    A module is never split: the tests sharing its module fixtures are one group of the trace."""
    parts: list[list[str]] = [[] for _ in range(SHARDS)]
    load = [0.0] * SHARDS
    for module in sorted(SCENARIO_MODULES, key=lambda m: (-REFERENCE_SECONDS.get(m, 1.0), m)):
        lightest = load.index(min(load))
        parts[lightest].append(module)
        load[lightest] += REFERENCE_SECONDS.get(module, 1.0)
    return [sorted(part) for part in parts]


def reference_shard(pytester, tmp_path_factory, index: int) -> dict:
    """One shard of the reference over the scenario modules with the hook trace; computed once per test session (the
    xdist workers share it through a locked file)."""
    run_id = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    shared = tmp_path_factory.getbasetemp().parent if run_id else tmp_path_factory.getbasetemp()
    stem = shared / f"ft-reference-trace-{run_id or 'serial'}-{index}"
    result_file = Path(f"{stem}.json")
    with open(f"{stem}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not result_file.is_file():
            trace_file = Path(f"{stem}.jsonl")
            trace_file.write_text("", encoding="utf-8")
            with HookTrace(trace_file) as trace:
                failing, outcomes, details = run_scenarios(pytester, "reference", reference_shards()[index],
                                                           "not ft_gpu", plugins=[trace])
            result_file.write_text(json.dumps({"failing": sorted(failing), "outcomes": outcomes, "details": details,
                                               "deps": trace.dependencies(), "imported": trace.imported}),
                                   encoding="utf-8")
    result = json.loads(result_file.read_text(encoding="utf-8"))
    warm_imports(result["imported"])
    return result


@pytest.fixture
def reference_run(pytester, tmp_path_factory):
    """The reference over every module with the hook trace (every shard, merged), read by every mutant's test."""
    shards = [reference_shard(pytester, tmp_path_factory, i) for i in range(SHARDS)]
    deps: dict[str, list[str]] = {}
    for shard in shards:
        deps.update({t: names for t, names in shard["deps"].items() if t != ANYWHERE})
    deps[ANYWHERE] = sorted(set().union(*(shard["deps"].get(ANYWHERE, ()) for shard in shards)))
    outcomes: dict[str, int] = {}
    for shard in shards:
        for key, count in shard["outcomes"].items():
            outcomes[key] = outcomes.get(key, 0) + count
    return {"failing": sorted(set().union(*(shard["failing"] for shard in shards))), "outcomes": outcomes,
            "details": "\n".join(shard["details"] for shard in shards if shard["details"]), "deps": deps,
            "imported": sorted(set().union(*(shard["imported"] for shard in shards)))}


def test_matrix_names_real_scenarios():
    unknown = {m for failing in MUTANTS.values() for m in failing} - set(SCENARIO_MODULES)
    assert not unknown, f"MUTANTS names scenario modules that do not exist: {sorted(unknown)}"
    uncovered = {m for m in SCENARIO_MODULES if m != "test_checkpoint_layout"} - {
        m for failing in MUTANTS.values() for m in failing}
    assert not uncovered, f"scenarios no mutant proves they bite: {sorted(uncovered)}"
    assert PURE_HOOKS <= reference_members(), f"PURE_HOOKS names no reference member: {PURE_HOOKS - reference_members()}"
    assert INTERRUPTION_ONLY <= reference_members(), f"INTERRUPTION_ONLY names no reference member: {INTERRUPTION_ONLY}"
    idle = [m for m in MUTANTS if not hooks_of(m)]
    assert not idle, f"mutants that override no reference member (they cannot differ): {idle}"


def test_every_mutant_class_is_in_the_matrix():
    """A mutant class in any module of harness.mutants is registered, and says itself what it fails (``fails`` in its
    own body, not inherited from the mutant it refines)."""
    import importlib
    import inspect
    import pkgutil

    import harness.mutants as mutants
    from harness.reference import ReferenceAdapter

    modules = [importlib.import_module(f"harness.mutants.{info.name}") for info in pkgutil.iter_modules(mutants.__path__)
               if not info.name.startswith("_")]
    classes = {name: cls for module in modules
               for name, cls in vars(module).items()
               if inspect.isclass(cls) and issubclass(cls, ReferenceAdapter) and cls.__module__ == module.__name__}
    assert sorted(classes) == sorted(MUTANTS), f"not registered in harness.mutants: {sorted(set(classes) - set(MUTANTS))}"
    inherited = [name for name, cls in classes.items() if "fails" not in vars(cls)]
    assert not inherited, f"mutants without their own 'fails': {inherited}"


def test_reference_shards_cover_every_module_once():
    shards = reference_shards()
    assert sorted(m for shard in shards for m in shard) == SCENARIO_MODULES and all(shards), shards


@pytest.mark.parametrize("shard", range(SHARDS))
def test_detection_reference(pytester, tmp_path_factory, shard):
    """The reference passes every scenario of its shard (and the trace it left names a test of every non-slow module
    there). Under xdist the shards are the first tests, one per worker (see conftest.py)."""
    run = reference_shard(pytester, tmp_path_factory, shard)
    assert run["outcomes"].get("passed", 0) > 0, f"reference: nothing passed ({run['outcomes']})"
    assert not run["failing"], f"reference fails {run['failing']}\n{run['details']}"
    traced = {t.split("::")[0] for t, names in run["deps"].items() if names and t != ANYWHERE}
    untraced = set(reference_shards()[shard]) - set(SLOW_MODULES) - traced
    assert not untraced, f"the hook trace saw no adapter access in {sorted(untraced)}"


def selection(deps: dict[str, list[str]], mutant: str) -> list[str]:
    """The scenario tests whose group calls one of the mutant's impure hooks or gets a different answer from one of
    its pure hooks (every traced test if that happens outside tests)."""
    marks = (hooks_of(mutant) - PURE_HOOKS) | {f"{DIVERGES}{mutant}"}
    everywhere = bool(set(deps.get(ANYWHERE, ())) & marks)
    return sorted(t for t, names in deps.items() if t != ANYWHERE and (everywhere or set(names) & marks))


@pytest.mark.parametrize("target", sorted(EXPECTED))
def test_detection(pytester, reference_run, target):
    mutant = target.split(":")[1]
    hooks = hooks_of(mutant)
    expected = set(EXPECTED[target])
    tests = [t for t in selection(reference_run["deps"], mutant) if t.split("::")[0] in SCENARIO_MODULES]
    touched = {t.split("::")[0] for t in tests}
    unreachable = expected - touched - set(SLOW_MODULES)
    assert not unreachable, (f"{target} must fail {sorted(unreachable)}, but there the reference never calls its hooks "
                             f"{sorted(hooks)} (or they answer as the reference's): the matrix or the mutant is wrong")
    slow = {m for m in SLOW_MODULES if m in expected}
    modules = sorted(touched - set(SLOW_MODULES) | slow)
    marks = "not ft_gpu" if slow else "not ft_gpu and not ft_slow"
    select = Select(set(tests), slow, must_fail=expected)
    failing, outcomes, details = run_scenarios(pytester, target, modules, marks, plugins=[select])
    assert outcomes.get("passed", 0) > 0 or expected, f"{target}: nothing passed ({outcomes})"
    assert failing == expected, (
        f"{target} (hooks {sorted(hooks)}; selected {len(tests)} tests of {modules}, the others never touch them; "
        f"{len(select.settled)} not run after their module failed): "
        f"scenarios failing {sorted(failing)}, expected exactly {sorted(expected)}\n{details}")


def test_docs_hold_the_matrix_and_the_mutant_lines():
    """docs/detection.md's matrix and mutant list are what ``python -m harness.mutants`` prints (regenerate with it)."""
    from harness.mutants.__main__ import matrix, mutant_lines

    doc = (Path(__file__).resolve().parents[1] / "docs" / "detection.md").read_text(encoding="utf-8")
    assert f"## The matrix\n\n{matrix()}\n\n" in doc, "docs/detection.md's matrix is stale: python -m harness.mutants"
    assert f"\n{mutant_lines()}\n" in doc, "docs/detection.md's mutant lines are stale: python -m harness.mutants"
