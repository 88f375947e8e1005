"""The detection matrix: every scenario passes on the reference and fails on the mutant(s) that
reproduce its bug — and on nothing else. Adding a mutant or a scenario is one line in
``harness.mutants.MUTANTS`` (mutant -> scenario modules it must fail).

Each adapter runs the whole scenario suite in-process through pytester (heavy libraries are imported
once by the outer session, so only training time is paid per adapter). ``slow``-marked scenarios
(the 2-process distributed save) run for the reference and for the mutants that must fail them;
for the other mutants they are deselected to keep the suite fast.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import scenarios
from harness.mutants import MUTANTS

SCENARIO_MODULES = sorted(p.stem for p in Path(scenarios.__file__).parent.glob("test_*.py"))
SLOW_MODULES = [p for p in Path(scenarios.__file__).parent.glob("test_*.py") if "pytest.mark.ft_slow" in p.read_text()]
EXPECTED = {"reference": ()} | {f"harness.mutants:{name}": failing for name, failing in MUTANTS.items()}


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


def test_matrix_names_real_scenarios():
    unknown = {m for failing in MUTANTS.values() for m in failing} - set(SCENARIO_MODULES)
    assert not unknown, f"MUTANTS names scenario modules that do not exist: {sorted(unknown)}"
    uncovered = {m for m in SCENARIO_MODULES if m != "test_checkpoint_layout"} - {
        m for failing in MUTANTS.values() for m in failing}
    assert not uncovered, f"scenarios no mutant proves they bite: {sorted(uncovered)}"


@pytest.mark.parametrize("target", sorted(EXPECTED))
def test_detection(pytester, target):
    slow = [m.stem for m in SLOW_MODULES]
    marks = "not ft_gpu" if target == "reference" or set(slow) & set(EXPECTED[target]) else "not ft_gpu and not ft_slow"
    result = pytester.runpytest_inprocess("--pyargs", "scenarios", "--ft-adapter", target, "-m", marks,
                                          "-p", "no:cacheprovider", "-q")
    reports = [r for r in result.reprec.getreports("pytest_runtest_logreport") if r.failed]
    failing = {r.nodeid.split("::")[0].rsplit("/", 1)[-1].removesuffix(".py") for r in reports}
    outcomes = result.parseoutcomes()
    assert outcomes.get("passed", 0) > 0, f"{target}: nothing passed ({outcomes})"
    expected = set(EXPECTED[target])
    assert failing == expected, (
        f"{target}: scenarios failing {sorted(failing)}, expected exactly {sorted(expected)}\n"
        + "\n".join(f"  {r.nodeid}: {r.longreprtext.strip().splitlines()[-1][:200]}" for r in reports))
