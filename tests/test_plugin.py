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
    result.stdout.fnmatch_lines(["*marker 'requires' is deprecated, use 'ft_requires'*", "*lacks capability 'quant-nf4'*"])


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
    assert "AssertionError" in tests["test_options"]["message"] and "assert {'mode': 'a=b'} ==" in tests["test_options"]["reason"]
    result.stderr.fnmatch_lines(["*[[]dummy_adapter:Dummy] ok*test_fixture*"])


def test_adapter_members_are_validated(suite):
    suite.makepyfile(bad_adapter=DUMMY.replace('"upstream issue #2"}', '"upstream issue #2", "no-colons": "x"}'))
    result = suite.runpytest("--ft-adapter", "bad_adapter:Dummy", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*known_failures[[]'no-colons'[]]*expected 'test_module.py::test_name*"])
