"""The pytest plugin, tested with pytester: options, fixture, capability skips, gpu skips, known failures."""

from __future__ import annotations

import pytest
import torch  # imported here so pytester's in-process runs never unload/reload it

DUMMY = '''
from harness.adapter import ResolvedArgs

class Dummy:
    name = "dummy"
    capabilities = frozenset({"sft", "lora"})
    known_failures = {"test_scen.py::test_known_bug": "upstream issue #1",
                      "test_scen.py::test_fixed_bug": "upstream issue #2"}
    def __init__(self, **options):
        self.options = options
    def resolve_args(self, cli, model_dir, resume_dir=None):
        return ResolvedArgs(values=dict(cli), sources={})
    def train(self, spec):
        raise NotImplementedError

class NotAnAdapter:
    pass
'''

SCENARIOS = '''
import pytest

def test_fixture(ft_adapter):
    assert ft_adapter.name == "dummy"

def test_options(ft_adapter):
    assert ft_adapter.options == {"load_args": "true", "mode": "a=b"}

@pytest.mark.ft_requires("sft", "lora")
def test_has_caps(ft_adapter):
    pass

@pytest.mark.ft_requires("sft", "quant-nf4")
def test_needs_nf4(ft_adapter):
    raise AssertionError("must be skipped")

@pytest.mark.ft_seed("004")
@pytest.mark.ft_gpu
def test_gpu(ft_adapter):
    import torch
    assert torch.cuda.is_available(), "must be skipped without CUDA"

def test_known_bug(ft_adapter):
    raise AssertionError("the documented bug")

def test_fixed_bug(ft_adapter):
    pass

def test_device(ft_adapter, ft_device):
    import torch
    assert ft_device == "cpu" or torch.cuda.is_available()
'''


@pytest.fixture
def suite(pytester):
    pytester.makepyfile(dummy_adapter=DUMMY, test_scen=SCENARIOS)
    pytester.syspathinsert()
    return pytester


def test_option_fixture_capabilities_known_failures(suite):
    result = suite.runpytest("--ft-adapter", "dummy_adapter:Dummy", "--ft-adapter-option", "load_args=true",
                             "--ft-adapter-option", "mode=a=b", "-rsxX", "-p", "no:cacheprovider", "-m", "not ft_gpu")
    for line in ("*SKIPPED*adapter 'dummy' lacks capability 'quant-nf4'*",
                 "*XFAIL*test_known_bug*known failure of dummy: upstream issue #1*",
                 "*XPASS(strict)*known failure of dummy: upstream issue #2*"):
        result.stdout.fnmatch_lines([line])
    outcomes = result.parseoutcomes()
    # test_fixed_bug is a strict xfail that passed: CI turns red the day the bug is fixed
    assert outcomes["failed"] == 1 and outcomes["xfailed"] == 1
    assert outcomes["passed"] == 4  # fixture, options, has_caps, device[cpu]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only behaviour")
@pytest.mark.parametrize("expr", ["ft_gpu", "gpu"])  # the unprefixed name still selects, for one release
def test_gpu_tests_skip_with_reason_and_exit_zero(suite, expr):
    result = suite.runpytest("--ft-adapter", "dummy_adapter:Dummy", "-m", expr, "-rs", "-p", "no:cacheprovider")
    result.stdout.fnmatch_lines(["*gpu: needs a CUDA device*"])
    assert result.ret == 0, f"pytest -m {expr} on a CPU machine must exit 0 with skips, not 5"
    assert result.parseoutcomes()["skipped"] == 2  # test_gpu and test_device[cuda]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_tests_run_with_cuda(suite):
    result = suite.runpytest("--ft-adapter", "dummy_adapter:Dummy", "-m", "ft_gpu", "-p", "no:cacheprovider")
    assert result.ret == 0 and result.parseoutcomes()["passed"] == 2


def test_env_var_selects_adapter(suite, monkeypatch):
    monkeypatch.setenv("FT_HARNESS_ADAPTER", "dummy_adapter:Dummy")
    result = suite.runpytest("-k", "test_fixture", "-p", "no:cacheprovider")
    assert result.ret == 0
    result.stdout.fnmatch_lines(["*ft-harness adapter: dummy*"])


@pytest.mark.parametrize("target, message", [
    ("no_such_module:X", "cannot import adapter module 'no_such_module'"),
    ("dummy_adapter:Missing", "has no attribute 'Missing'"),
    ("dummy_adapter:NotAnAdapter", "does not satisfy FrameworkAdapter"),
    ("not-an-entry-point", "neither 'module:Class' nor a registered entry point"),
])
def test_bad_adapter_is_a_usage_error(suite, target, message):
    result = suite.runpytest("--ft-adapter", target, "-k", "test_fixture", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*ft-harness: *{message}*"])


def test_bad_adapter_option_is_a_usage_error(suite):
    result = suite.runpytest("--ft-adapter", "dummy_adapter:Dummy", "--ft-adapter-option", "novalue",
                             "-k", "test_fixture", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--ft-adapter-option expects KEY=VALUE*"])


def test_default_adapter_is_reference_and_help(pytester):
    pytester.makepyfile(test_x="def test_a(ft_adapter):\n    assert ft_adapter.name == 'reference'\n")
    assert pytester.runpytest("-p", "no:cacheprovider").ret == 0
    help_text = pytester.runpytest("--help").stdout.str()
    assert "--ft-adapter=MODULE:CLASS" in help_text and "--ft-adapter-option=KEY=VALUE" in help_text
    for option in ("--ft-strict", "--ft-require=CAP,...", "--ft-marker-alias=FT_MARKER=HOST_MARKER",
                   "ft_marker_alias (linelist)"):
        assert option in help_text


def test_markers_registered(pytester):
    result = pytester.runpytest("--markers")
    for line in ("*ft_requires(*capabilities)*", "*ft_gpu: needs a CUDA device*", "*ft_slow:*", "*ft_seed(id)*",
                 "*requires: deprecated alias of ft_requires*"):
        result.stdout.fnmatch_lines([line])


def test_old_marker_names_work_and_warn(pytester):
    pytester.makepyfile(dummy_adapter=DUMMY, test_old="""
import pytest

@pytest.mark.requires("quant-nf4")
def test_needs_nf4(ft_adapter):
    raise AssertionError("must be skipped")
""")
    pytester.syspathinsert()
    result = pytester.runpytest("--ft-adapter", "dummy_adapter:Dummy", "-rs", "-p", "no:cacheprovider")
    result.stdout.fnmatch_lines(["*marker 'requires' is deprecated, use 'ft_requires'*",
                                 "*lacks capability 'quant-nf4'*"])


def test_plugin_leaves_other_tests_alone(pytester, monkeypatch):
    """A suite where ft-harness is merely installed: its own `gpu` marker and environment are untouched."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    pytester.makepyfile(test_plain="""
import os
import pytest

@pytest.mark.gpu
def test_own_gpu_marker():
    assert "HF_HUB_OFFLINE" not in os.environ
""")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    assert result.parseoutcomes() == {"passed": 1}


def test_known_failures_file_and_stale_entries(suite, tmp_path):
    xfails = tmp_path / "xfails.txt"
    xfails.write_text("# known failures of dummy\n"
                      "test_scen.py::test_has_caps   # upstream #7\n"
                      "test_scen.py::test_renamed_long_ago   # stale\n"
                      "test_elsewhere.py::test_not_collected\n")
    result = suite.runpytest("--ft-adapter", "dummy_adapter:Dummy", "--ft-known-failures", str(xfails), "-rX",
                             "-p", "no:cacheprovider", "-k", "test_has_caps")
    result.stdout.fnmatch_lines(["*XPASS(strict)*known failure of dummy: upstream #7*"])
    result.stdout.fnmatch_lines(["*known failure 'test_scen.py::test_renamed_long_ago' of adapter 'dummy' matches no "
                                 "test of test_scen.py*"])
    assert "test_not_collected" not in result.stdout.str(), "entries for modules not collected are not stale"
    xfails.write_text("not an id\n")
    bad = suite.runpytest("--ft-adapter", "dummy_adapter:Dummy", "--ft-known-failures", str(xfails),
                          "-p", "no:cacheprovider")
    assert bad.ret == pytest.ExitCode.USAGE_ERROR
    bad.stderr.fnmatch_lines([f"*{xfails}:1: expected 'test_module.py::test_name*"])


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["serial", "xdist"])
def test_ft_report_writes_json_from_any_run(suite, tmp_path, workers):
    import json

    out = tmp_path / "sub" / "r.json"
    result = suite.runpytest_subprocess("--ft-adapter", "dummy_adapter:Dummy", "--ft-adapter-option", "mode=a=b",
                                        "--ft-report", str(out), "--ft-progress", "-p", "no:cacheprovider",
                                        "-m", "not ft_gpu", *workers)
    assert result.ret == 1  # the strict xfail that passed
    data = json.loads(out.read_text())
    (run,) = data["adapters"]
    assert run["target"] == "dummy_adapter:Dummy" and run["name"] == "dummy" and run["exit_code"] == 1
    tests = {t["nodeid"].split("::")[-1]: t for t in run["tests"]}
    assert tests["test_known_bug"]["outcome"] == "xfailed" and tests["test_needs_nf4"]["outcome"] == "skipped"
    assert tests["test_options"]["outcome"] == "failed"  # options differ from test_options' expectation
    assert "AssertionError" in tests["test_options"]["message"]
    assert "assert {'mode': 'a=b'} ==" in tests["test_options"]["reason"]
    result.stderr.fnmatch_lines(["*[[]dummy_adapter:Dummy] ok*test_fixture*"])


def test_adapter_members_are_validated(suite):
    suite.makepyfile(bad_adapter=DUMMY.replace('"upstream issue #2"}', '"upstream issue #2", "no-colons": "x"}'))
    result = suite.runpytest("--ft-adapter", "bad_adapter:Dummy", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*known_failures[[]'no-colons'[]]*expected 'test_module.py::test_name*"])


# --- --ft-strict / --ft-require ----------------------------------------------------------------------------------

STRICT_ADAPTERS = DUMMY + '''

class Full(Dummy):
    capabilities = frozenset({"sft", "lora", "resume", "gpu"})
    unavailable_metrics = {"eval_accuracy": "it logs no token accuracy"}

class Dropped(Full):  # the regression --ft-strict is for: a capability the adapter silently stopped declaring
    capabilities = Full.capabilities - {"resume"}
'''

STRICT_SCENARIOS = '''
import pytest

@pytest.mark.ft_requires("sft", "resume")
def test_resume(ft_adapter):
    pass

@pytest.mark.ft_metric("eval_accuracy")
def test_accuracy(ft_adapter):
    pass

def test_optional_dependency(ft_adapter):
    pytest.importorskip("no_such_module_for_ft_strict")

def test_other_skip(ft_adapter):
    pytest.skip("not applicable on this platform")  # any other skip stays a skip

@pytest.mark.ft_gpu
def test_cuda_only(ft_adapter):
    pass

def test_plain(ft_adapter):
    pass
'''

STRICT_LISTED = ["*= ft-harness strict: 3 scenario tests skipped =*",
                 "SKIPPED test_strict.py::test_accuracy - unavailable metric: adapter 'dummy' cannot log metric "
                 "'eval_accuracy': it logs no token accuracy",
                 "SKIPPED test_strict.py::test_optional_dependency - unimportable dependency: could not import "
                 "'no_such_module_for_ft_strict'*",
                 "SKIPPED test_strict.py::test_resume - missing capability: adapter 'dummy' lacks capability 'resume'",
                 "--ft-strict: these skips fail the run (exit status 1)"]


@pytest.fixture
def strict_suite(pytester):
    pytester.makepyfile(strict_adapters=STRICT_ADAPTERS, test_strict=STRICT_SCENARIOS)
    pytester.syspathinsert()
    return pytester


def _strict_section(result) -> str:
    return result.stdout.str().partition("ft-harness strict")[2]


def test_strict_turns_a_removed_capability_into_a_failure(strict_suite, tmp_path):
    import json

    plain = strict_suite.runpytest("--ft-adapter", "strict_adapters:Dropped", "-p", "no:cacheprovider",
                                   "-m", "not ft_gpu")
    assert plain.ret == 0 and plain.parseoutcomes() == {"passed": 1, "skipped": 4, "deselected": 1}  # green
    assert "ft-harness strict" not in plain.stdout.str()

    report = tmp_path / "strict.json"
    strict = strict_suite.runpytest("--ft-adapter", "strict_adapters:Dropped", "--ft-strict", "--ft-report",
                                    str(report), "-p", "no:cacheprovider", "-m", "not ft_gpu")
    assert strict.ret == pytest.ExitCode.TESTS_FAILED
    strict.stdout.fnmatch_lines(STRICT_LISTED, consecutive=True)
    assert "test_other_skip" not in _strict_section(strict)  # a skip for another reason stays a skip
    assert strict.parseoutcomes() == {"passed": 1, "skipped": 4, "deselected": 1}  # the tests' own outcomes
    (run,) = json.loads(report.read_text())["adapters"]
    assert run["exit_code"] == 1  # the JSON report records the strict verdict
    assert {t["nodeid"].split("::")[-1]: t["outcome"] for t in run["tests"]}["test_resume"] == "skipped"

    # the same scenario against the adapter that still declares the capability: strict and green
    kept = strict_suite.runpytest("--ft-adapter", "strict_adapters:Full", "--ft-strict", "-k", "resume",
                                  "-p", "no:cacheprovider")
    assert kept.ret == 0 and kept.parseoutcomes() == {"passed": 1, "deselected": 5}


def test_strict_under_xdist_still_fails(strict_suite):
    # named tests (no ft_gpu item: no torch import) and no hypothesis plugin keep the three processes quick
    tests = [f"test_strict.py::test_{name}" for name in ("resume", "accuracy", "optional_dependency", "other_skip",
                                                          "plain")]
    result = strict_suite.runpytest_subprocess("--ft-adapter", "strict_adapters:Dropped", "--ft-strict", "-n", "2",
                                               "-p", "no:cacheprovider", "-p", "no:hypothesispytest", *tests)
    assert result.ret == pytest.ExitCode.TESTS_FAILED  # the workers' skips are judged on the controller
    result.stdout.fnmatch_lines(STRICT_LISTED, consecutive=True)


def test_require_names_the_missing_capability(strict_suite):
    missing = strict_suite.runpytest("--ft-adapter", "strict_adapters:Dropped", "--ft-require", "sft,resume",
                                     "--ft-require", "lora", "-p", "no:cacheprovider")
    assert missing.ret == pytest.ExitCode.USAGE_ERROR
    missing.stderr.fnmatch_lines(["*ft-harness: --ft-require: adapter 'dummy' does not declare 'resume' "
                                  "(it declares:*"])
    assert "passed" not in missing.stdout.str()  # at session start, before any test

    # every required capability declared: the other skips (metric, import) stay skips without --ft-strict
    kept = strict_suite.runpytest("--ft-adapter", "strict_adapters:Full", "--ft-require", "sft,resume,lora",
                                  "-p", "no:cacheprovider", "-m", "not ft_gpu")
    assert kept.ret == 0 and kept.parseoutcomes() == {"passed": 2, "skipped": 3, "deselected": 1}

    unknown = strict_suite.runpytest("--ft-adapter", "strict_adapters:Full", "--ft-require", "lora,quant-nf5",
                                     "-p", "no:cacheprovider")
    assert unknown.ret == pytest.ExitCode.USAGE_ERROR
    unknown.stderr.fnmatch_lines(["*--ft-require: unknown capability 'quant-nf5' (known: *"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only behaviour")
def test_gpu_skips_stay_skips_unless_gpu_is_required(strict_suite):
    args = ("--ft-adapter", "strict_adapters:Full", "-k", "cuda_only", "-rs", "-p", "no:cacheprovider")
    strict = strict_suite.runpytest(*args, "--ft-strict")
    assert strict.ret == 0 and strict.parseoutcomes() == {"skipped": 1, "deselected": 5}
    strict.stdout.fnmatch_lines(["*SKIPPED*gpu: needs a CUDA device*"])
    assert "ft-harness strict" not in strict.stdout.str()

    required = strict_suite.runpytest(*args, "--ft-require", "gpu")
    assert required.ret == pytest.ExitCode.TESTS_FAILED
    required.stdout.fnmatch_lines(["*= ft-harness strict: 1 scenario test skipped =*",
                                   "SKIPPED test_strict.py::test_cuda_only - no CUDA device: gpu: needs a CUDA device*",
                                   "--ft-require gpu: these skips fail the run (exit status 1)"])

    no_gpu = strict_suite.runpytest("--ft-adapter", "strict_adapters:Dummy", "--ft-require", "gpu",
                                    "-p", "no:cacheprovider")
    assert no_gpu.ret == pytest.ExitCode.USAGE_ERROR  # the adapter itself does not declare gpu
    no_gpu.stderr.fnmatch_lines(["*adapter 'dummy' does not declare 'gpu'*"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_required_with_cuda_runs_the_cuda_variants(strict_suite):
    result = strict_suite.runpytest("--ft-adapter", "strict_adapters:Full", "-k", "cuda_only", "--ft-require", "gpu",
                                    "--ft-strict", "-p", "no:cacheprovider")
    assert result.ret == 0 and result.parseoutcomes() == {"passed": 1, "deselected": 5}


# --- --ft-marker-alias / ft_marker_alias -------------------------------------------------------------------------

ALIASED = '''
import pytest

@pytest.mark.ft_slow
def test_long(ft_adapter):
    pass

@pytest.mark.ft_gpu
def test_on_cuda(ft_adapter):
    pass

@pytest.mark.slow  # the deprecated unprefixed name of ft_slow
def test_long_old_name(ft_adapter):
    pass

def test_quick(ft_adapter):
    pass
'''


@pytest.fixture
def aliased(pytester):
    pytester.makepyfile(dummy_adapter=DUMMY, test_aliased=ALIASED)
    pytester.syspathinsert()
    return pytester


def _selected(result) -> set[str]:
    return {line.split("::")[1].split()[0] for line in result.stdout.lines if line.startswith("test_aliased.py::")}


def test_marker_alias_applies_before_deselection(aliased):
    base = ("--ft-adapter", "dummy_adapter:Dummy", "-v", "-p", "no:cacheprovider",
            "-W", "ignore::pytest.PytestDeprecationWarning", "--strict-markers")
    unknown = aliased.runpytest(*base, "-m", "not long_running")  # pytest 9: -m names must be registered too
    unknown.stderr.fnmatch_lines(["*Unknown marker(s) in '-m' expression: long_running*"])
    without = aliased.runpytest(*base[:-1], "-m", "not long_running")  # the host's name alone deselects nothing
    assert _selected(without) == {"test_long", "test_on_cuda", "test_long_old_name", "test_quick"}

    result = aliased.runpytest(*base, "--ft-marker-alias", "ft_slow=long_running", "-m", "not long_running")
    assert _selected(result) == {"test_on_cuda", "test_quick"}  # ft_slow and its deprecated name `slow`
    assert result.parseoutcomes()["deselected"] == 2

    routed = aliased.runpytest(*base, "--ft-marker-alias", "ft_gpu=gpu_tests", "--ft-marker-alias",
                               "ft_slow=long_running", "-m", "gpu_tests or long_running")
    assert _selected(routed) == {"test_on_cuda", "test_long", "test_long_old_name"}


def test_not_slow_deselects_ft_slow_only_with_the_alias(aliased):
    base = ("--ft-adapter", "dummy_adapter:Dummy", "-v", "-p", "no:cacheprovider", "-m", "not slow and not ft_gpu",
            "-W", "ignore::pytest.PytestDeprecationWarning")
    assert _selected(aliased.runpytest(*base)) == {"test_long", "test_quick"}  # `slow` is not ft_slow by itself
    assert _selected(aliased.runpytest(*base, "--ft-marker-alias", "ft_slow=slow")) == {"test_quick"}


def test_marker_alias_ini_option(aliased):
    aliased.makeini("[pytest]\nft_marker_alias = ft_slow=slow_tests ft_gpu=gpu_tests\n")
    result = aliased.runpytest("--ft-adapter", "dummy_adapter:Dummy", "-v", "-p", "no:cacheprovider",
                               "--strict-markers", "-m", "not slow_tests and not gpu_tests",
                               "-W", "ignore::pytest.PytestDeprecationWarning")
    assert result.ret == 0 and _selected(result) == {"test_quick"}
    markers = aliased.runpytest("--markers").stdout.str()
    assert "@pytest.mark.slow_tests: the host's marker for ft-harness ft_slow" in markers
    assert "@pytest.mark.gpu_tests: the host's marker for ft-harness ft_gpu" in markers


@pytest.mark.parametrize("pair", ["slow=long", "ft_slow", "ft_slow=ft_other", "ft_slow=not-a-name"])
def test_bad_marker_alias_is_a_usage_error(aliased, pair):
    result = aliased.runpytest("--ft-marker-alias", pair, "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*--ft-marker-alias / ft_marker_alias expects FT_MARKER=HOST_MARKER*{pair!r}*"])


SMOKE_SCENARIOS = '''
import pytest

@pytest.mark.ft_smoke
def test_whole(ft_adapter):
    pass

@pytest.mark.ft_smoke("nf4-2", "2x2")
@pytest.mark.parametrize("k", [2, 4])
@pytest.mark.parametrize("quant", ["none", "nf4"])
def test_variants(ft_adapter, ft_device, quant, k):
    pass

@pytest.mark.ft_smoke("write#1")
@pytest.mark.parametrize("point", ["write#1", "next-save-write#1"])
def test_exact(ft_adapter, point):
    pass

def test_not_smoke(ft_adapter):
    pass
'''


def test_smoke_selects_the_named_variants_only(suite):
    """``-m ft_smoke`` selects a bare-marked test whole, and of a marked parametrised test only the variants named
    (the device part of the id aside; no suffix matching: ``write#1`` is not ``next-save-write#1``)."""
    suite.makepyfile(test_smoke=SMOKE_SCENARIOS)
    result = suite.runpytest("test_smoke.py", "--ft-adapter", "dummy_adapter:Dummy", "-m", "ft_smoke",
                             "--collect-only", "-q")
    selected = sorted(line.split("::", 1)[1] for line in result.outlines if "::" in line)
    assert selected == ["test_exact[write#1]", "test_variants[cpu-nf4-2]", "test_variants[cuda-nf4-2]",
                        "test_whole"], result.outlines
    rest = suite.runpytest("test_smoke.py", "--ft-adapter", "dummy_adapter:Dummy", "-m", "not ft_smoke",
                           "--collect-only", "-q")
    assert sum("::" in line for line in rest.outlines) == 6 + 1 + 1, rest.outlines  # 6 variants, exact, not_smoke


def test_every_scenario_module_is_in_the_smoke_tier():
    """The smoke tier holds at least one test of every scenario module, so a PR job that runs only it still
    touches every failure class."""
    import ast
    from pathlib import Path

    import scenarios

    bare = []
    for path in sorted(Path(scenarios.__file__).parent.glob("test_*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        marked = [n.name for n in tree.body if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")
                  and any("ft_smoke" in ast.unparse(d) for d in n.decorator_list)]
        if not marked:
            bare.append(path.stem)
    assert not bare, f"scenario modules with no ft_smoke test: {bare}"


def test_quanto_build_note_only_when_the_extension_is_not_built(tmp_path, monkeypatch):
    """The header warns before optimum-quanto's silent two-minute compile, and only when it will happen."""
    import importlib.machinery
    import importlib.metadata
    import importlib.util

    from harness.runtime import quanto_extension_pending

    package = tmp_path / "optimum" / "quanto"
    build = package / "library" / "extensions" / "cpp" / "build"
    build.mkdir(parents=True)
    spec = importlib.machinery.ModuleSpec("optimum.quanto", None, is_package=True)
    spec.submodule_search_locations = [str(package)]
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: spec if name == "optimum.quanto" else None)
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "2.13.0+cpu")
    note = quanto_extension_pending()
    assert note and "not built for torch 2.13.0+cpu" in note and str(build) in note, note
    (build / "pytorch_version.txt").write_text("2.12.0+cpu\n")
    assert quanto_extension_pending(), "a build for another torch is rebuilt: still a note"
    (build / "pytorch_version.txt").write_text("2.13.0+cpu\n")
    assert quanto_extension_pending() is None
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert quanto_extension_pending() is None, "no quanto installed: nothing to say"
