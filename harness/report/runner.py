"""Running the scenarios against one adapter in a subprocess (``ft-harness run`` / ``report --adapter``)."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from .formats.json import load_runs
from .model import AdapterRun, TestOutcome, head_line

__all__ = ["run_adapter"]


def _command(label: str, out: Path, options: Mapping[str, str], pytest_args: Sequence[str],
             progress: bool) -> list[str]:
    cmd = [sys.executable, "-m", "pytest", "--pyargs", "scenarios", "-q", "-p", "no:cacheprovider",
           "--ft-adapter", label, "--ft-report", str(out)] + (["--ft-progress"] if progress else [])
    for key, value in options.items():
        cmd += ["--ft-adapter-option", f"{key}={value}"]
    return cmd + list(pytest_args)


def run_adapter(target: str | None, options: Mapping[str, str] | None = None, pytest_args: Sequence[str] = (),
                progress: bool = True) -> AdapterRun:
    """Run ``pytest --pyargs scenarios`` against one adapter in a subprocess (as a user's CI would) and
    read back the JSON it writes with ``--ft-report``. pytest's own output goes to a log file, shown
    when the run breaks; the progress lines go to stderr.

    ``target`` may carry its own options in brackets (``"swift[load_args=true]"``); the run's label is
    the target as given.
    """
    label = target or "reference"
    with tempfile.TemporaryDirectory(prefix="ft-harness-report-") as tmp:
        out, log = Path(tmp) / "report.json", Path(tmp) / "pytest.log"
        cmd = _command(label, out, options or {}, pytest_args, progress)
        start = time.perf_counter()
        with open(log, "w", encoding="utf-8") as fh:
            code = subprocess.run(cmd, stdout=fh, stderr=None if progress else subprocess.DEVNULL).returncode
        if out.is_file():
            run = load_runs(out)[0]
            run.exit_code = code
        else:
            run = AdapterRun(target=label, name=label, options=dict(options or {}), exit_code=code,
                             duration_s=time.perf_counter() - start)
        if run.broken:  # what pytest said is the only account of what happened
            text = log.read_text(encoding="utf-8", errors="replace")
            run.tests.append(TestOutcome("<session>", "<session>", "error",
                                         f"pytest exited with {code}: {head_line(text[-4000:])}", 0.0, None,
                                         text[-20000:]))
        return run
