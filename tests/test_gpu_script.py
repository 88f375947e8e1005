"""benchmarks/gpu.sh, the parts that need no GPU: --help, the syntax, and failing fast without a CUDA device.

Nothing is installed: every run either stops at the GPU check or only prints its help. PATH holds only
fake ``python3``, ``python``, ``pip`` and ``uv`` commands that leave a marker if anything calls them (so
"creates no venv" is checked directly, not inferred), a fake ``nvidia-smi`` where a test wants one, and
links to the few tools the script needs up to its check (so a real nvidia-smi is never found).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu.sh"
BASH = shutil.which("bash") or "/bin/bash"
ENV_VARS = ("OUT", "FT_GPU_VENV", "PYTHON", "TORCH_SPEC", "FT_GPU_SYSTEM_TORCH", "FT_GPU_INSTALLER",
            "FT_GPU_WHEELS", "FT_GPU_PYTEST_ARGS", "FT_GPU_SELFTESTS", "FT_GPU_ALSO_CPU", "FT_GPU_CHECK_ONLY")
PRE_CHECK_TOOLS = ("dirname", "grep", "timeout", "cat")  # what gpu.sh runs before and in its GPU check

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def _write_exe(path: Path, body: str) -> None:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)


@pytest.fixture
def sandbox(tmp_path):
    """A bin dir of tripwires (python3, python, pip, uv) and the paths the script must not create."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    marker = tmp_path / "called"
    for name in ("python3", "python", "pip", "pip3", "uv"):
        _write_exe(bin_dir / name, f'echo "{name} $*" >> "{marker}"\nexit 1\n')
    # only the tools the script needs up to its GPU check, linked one by one: a GPU machine running this
    # test keeps its real nvidia-smi in /usr/bin beside them, so no system dir goes on PATH
    tools = tmp_path / "tools"
    tools.mkdir()
    for tool in PRE_CHECK_TOOLS:
        if found := shutil.which(tool):
            (tools / tool).symlink_to(found)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FT_GPU_") and k not in ENV_VARS}
    env.update(PATH=os.pathsep.join([str(bin_dir), str(tools)]), OUT=str(tmp_path / "out"),
               FT_GPU_VENV=str(tmp_path / "venv"))

    class Sandbox:
        def __init__(self):
            self.tmp, self.bin, self.marker, self.env = tmp_path, bin_dir, marker, env

        def run(self, *args: str, **extra_env: str) -> subprocess.CompletedProcess:
            return subprocess.run([BASH, str(SCRIPT), *args], env={**self.env, **extra_env}, cwd=tmp_path,
                                  capture_output=True, text=True, timeout=60)

        def assert_created_nothing(self):
            assert not self.marker.exists(), f"the script ran Python/pip/uv: {self.marker.read_text()!r}"
            assert not (tmp_path / "venv").exists(), "the script created a venv"
            assert not (tmp_path / "out").exists(), "the script created $OUT"

    return Sandbox()


def test_bash_syntax():
    result = subprocess.run([BASH, "-n", str(SCRIPT)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr


def test_uses_strict_mode():
    assert "set -euo pipefail" in SCRIPT.read_text()


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_lists_every_env_var(sandbox, flag):
    result = sandbox.run(flag)
    assert result.returncode == 0, result.stderr
    for name in ENV_VARS:
        assert name in result.stdout, f"--help does not explain {name}"
    for words in ("nvidia-smi", "-m gpu", "timings.txt", "versions.txt", "scenarios.log", "exit"):
        assert words in result.stdout
    sandbox.assert_created_nothing()


def test_unknown_argument_is_a_usage_error(sandbox):
    result = sandbox.run("--frobnicate")
    assert result.returncode == 2
    assert "unknown argument" in result.stderr and "--help" in result.stderr
    sandbox.assert_created_nothing()


def test_no_nvidia_smi_exits_3(sandbox):
    result = sandbox.run()
    assert result.returncode == 3, (result.stdout, result.stderr)
    assert "no CUDA device" in result.stderr and "nvidia-smi is not on PATH" in result.stderr
    sandbox.assert_created_nothing()


@pytest.mark.parametrize("body, message", [
    ("exit 1\n", "'nvidia-smi -L' failed (exit 1)"),  # driver present, no usable device: prints nothing
    ('echo "No devices were found"\nexit 6\n', "No devices were found"),
    ("exit 0\n", "lists no GPU"),  # exits 0 but lists nothing
], ids=["silent-exit-1", "no-devices-exit-6", "empty-exit-0"])
def test_nvidia_smi_without_gpu_exits_3(sandbox, body, message):
    _write_exe(sandbox.bin / "nvidia-smi", body)
    result = sandbox.run()
    assert result.returncode == 3, (result.stdout, result.stderr)
    assert "no CUDA device" in result.stderr and message in result.stderr
    sandbox.assert_created_nothing()


def test_check_only_with_a_gpu_listed_exits_0_and_creates_nothing(sandbox):
    _write_exe(sandbox.bin / "nvidia-smi",
               'echo "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-00000000-0000-0000-0000-000000000000)"\n')
    result = sandbox.run(FT_GPU_CHECK_ONLY="1")
    assert result.returncode == 0, result.stderr
    assert "GPU 0: NVIDIA H100" in result.stdout and "1 GPU(s)" in result.stdout
    sandbox.assert_created_nothing()
