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

@pytest.mark.requires("sft", "lora")
def test_has_caps(ft_adapter):
    pass

@pytest.mark.requires("sft", "quant-nf4")
def test_needs_nf4(ft_adapter):
    raise AssertionError("must be skipped")

@pytest.mark.gpu
def test_gpu(ft_adapter):
    raise AssertionError("must be skipped without CUDA")

def test_known_bug(ft_adapter):
    raise AssertionError("the documented bug")

def test_fixed_bug(ft_adapter):
    pass

def test_device(ft_adapter, ft_device):
    assert ft_device == "cpu"
'''


@pytest.fixture
def suite(pytester):
    pytester.makepyfile(dummy_adapter=DUMMY, test_scen=SCENARIOS)
    pytester.syspathinsert()
    return pytester


def test_option_fixture_capabilities_known_failures(suite):
    result = suite.runpytest("--ft-adapter", "dummy_adapter:Dummy", "--ft-adapter-option", "load_args=true",
                             "--ft-adapter-option", "mode=a=b", "-rsxX", "-p", "no:cacheprovider")
    for line in ("*SKIPPED*adapter 'dummy' lacks capability 'quant-nf4'*",
                 "*XFAIL*test_known_bug*known failure of dummy: upstream issue #1*",
                 "*XPASS(strict)*known failure of dummy: upstream issue #2*"):
        result.stdout.fnmatch_lines([line])
    outcomes = result.parseoutcomes()
    # test_fixed_bug is a strict xfail that passed: CI turns red the day the bug is fixed
    assert outcomes["failed"] == 1 and outcomes["xfailed"] == 1
    assert outcomes["passed"] == 4  # fixture, options, has_caps, device[cpu]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only behaviour")
def test_gpu_tests_skip_with_reason_and_exit_zero(suite):
    result = suite.runpytest("--ft-adapter", "dummy_adapter:Dummy", "-m", "gpu", "-rs", "-p", "no:cacheprovider")
    result.stdout.fnmatch_lines(["*gpu: needs a CUDA device*"])
    assert result.ret == 0, "pytest -m gpu on a CPU machine must exit 0 with skips, not 5"
    assert result.parseoutcomes()["skipped"] == 2  # test_gpu and test_device[cuda]


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
    for line in ("*requires(*capabilities)*", "*gpu: needs a CUDA device*", "*slow:*", "*seed(id)*"):
        result.stdout.fnmatch_lines([line])
