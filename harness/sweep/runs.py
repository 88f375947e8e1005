"""Running the selected scenarios inside one release's environment: the ``-k`` expression, the one command,
the subprocess in its own process group, and the per-version result (a report, or the ``env:``/``run:`` reason
why there is none, written as a one-cell report)."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .envs import EnvBuilder, EnvResult, Pins
from .failures import run_failure_line

__all__ = ["k_expression", "scenario_command", "VersionResult", "run_version"]


def k_expression(patterns: Sequence[str]) -> str | None:
    """``--scenario`` patterns -> one pytest ``-k`` expression (each pattern is itself a -k expression)."""
    pats = [p.strip() for p in patterns if p and p.strip()]
    if not pats:
        return None
    return pats[0] if len(pats) == 1 else " or ".join(f"({p})" for p in pats)


def scenario_command(env: Path, adapter_spec: str, out_json: Path, k_expr: str | None = None,
                     pytest_args: Sequence[str] = ()) -> list[str]:
    """The one command that runs the scenarios inside a version's environment (kept in one place: a
    ``pytest --ft-report FILE`` form may replace it)."""
    cmd = [str(Path(env) / "bin" / "ft-harness"), "report", "--adapter", adapter_spec, "--format", "json",
           "-o", str(out_json)]
    extra = list(pytest_args)
    if k_expr:
        extra = ["-k", k_expr, *extra]
    if extra:
        cmd += ["--", *extra]
    return cmd


@dataclass
class VersionResult:
    version: str
    pins: Pins
    adapter_spec: str
    report: Path | None = None  # the per-version ft-harness-report/1 JSON
    error: str | None = None  # "env: ..." / "run: ..." when there is no report
    env: EnvResult | None = None
    run_s: float = 0.0
    exit_code: int | None = None

    def timings(self) -> dict[str, Any]:
        return {"env_s": round(self.env.build_s, 2) if self.env else None,
                "env_cached": self.env.cached if self.env else None,
                "harness_install_s": round(self.env.harness_s, 2) if self.env else None,
                "run_s": round(self.run_s, 2), "exit_code": self.exit_code, "error": self.error}


def _run_env(env_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME",
                                                             "FT_HARNESS_ADAPTER", "PYTEST_ADDOPTS")}
    env["PATH"] = f"{env_dir / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(env_dir)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def run_version(builder: EnvBuilder, pins: Pins, out: Path, *, options: Mapping[str, str] | None = None,
                k_expr: str | None = None, pytest_args: Sequence[str] = (), timeout: float = 7200,
                log: Callable[[str], None] = print) -> VersionResult:
    """Build/reuse the env for ``pins`` and run the scenarios in it; never raises for env or run failures."""
    spec = pins.adapter_spec(options)
    res = VersionResult(pins.version, pins, spec)
    tag = f"[{pins.framework} {pins.cell}]"
    res.env = env = builder.ensure(pins)
    if not env.ok:
        res.error = f"env: {env.reason}"
        log(f"{tag} environment failed after {env.build_s:.1f}s: {env.reason}")
        out.mkdir(parents=True, exist_ok=True)
        _write_error_report(out / f"{pins.framework}-{pins.cell}.json", res)
        return res
    log(f"{tag} environment {'reused' if env.cached else 'built'} in {env.build_s:.1f}s: {env.path}")
    out_json = out / f"{pins.framework}-{pins.cell}.json"
    out_json.unlink(missing_ok=True)
    run_log = _run_scenarios(res, out, out_json, k_expr, pytest_args, timeout)
    if out_json.is_file() and (res.exit_code in (0, 1) or _has_tests(out_json)):
        res.report = out_json
        _label_cell(out_json, pins)
        log(f"{tag} scenarios ran in {res.run_s:.1f}s (exit {res.exit_code}) -> {out_json}")
    else:  # no report, or pytest stopped before any test (an import error in the framework, INTERNALERROR)
        # `ft-harness report` keeps pytest's own output in the report's <session> row, not in the run log: both are read
        # (the last exception line wins, the run log's coming last)
        tail = session_output(out_json) + "\n" + run_log.read_text(encoding="utf-8", errors="replace")[-20000:]
        why = (f"timed out after {timeout:.0f}s" if res.exit_code == -1
               else f"exit {res.exit_code}: {run_failure_line(tail)}")
        res.error = f"run: {why}"
        log(f"{tag} scenario run failed ({why}); log: {run_log}")
        _write_error_report(out_json, res)
        res.report = None
    return res


def _run_scenarios(res: VersionResult, out: Path, out_json: Path, k_expr: str | None, pytest_args: Sequence[str],
                   timeout: float) -> Path:
    """Run the scenario command in ``res``'s environment (exit code and run time into ``res``); its log's path."""
    pins = res.pins
    work = out / ".work" / f"{pins.framework}-{pins.cell}"
    work.mkdir(parents=True, exist_ok=True)  # neutral cwd: no repo conftest/pyproject, no ./scenarios shadowing
    cmd = scenario_command(res.env.path, res.adapter_spec, out_json.resolve(), k_expr, pytest_args)
    run_log = out / "logs" / f"{pins.framework}-{pins.cell}.run.log"
    run_log.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(run_log, "w", encoding="utf-8") as fh:
        fh.write(f"$ {shlex.join(cmd)}\n")
        fh.flush()
        res.exit_code = _run_group(cmd, fh, work, _run_env(res.env.path), timeout)
    res.run_s = time.perf_counter() - start
    return run_log
def _run_group(cmd: list[str], out, cwd: Path, env: Mapping[str, str], timeout: float) -> int:
    """Run ``cmd`` in its own process group; on timeout or interruption the whole group (the forked
    training children included) is killed. -1 on timeout."""
    import signal

    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=cwd, env=dict(env),
                            start_new_session=True)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return -1
    finally:
        if proc.poll() is None:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, sig)
                try:
                    proc.wait(timeout=10)
                    break
                except subprocess.TimeoutExpired:
                    continue


_PSEUDO_TESTS = ("<session>", "<environment>")


def _label_cell(path: Path, pins: Pins) -> None:
    """A cell that is not the plain release (``--source``, ``--with``) names itself in its report: the framework's
    version becomes the cell's name (``5.23.0-src``), so a merged matrix or a status page keeps it beside the release
    of the same version instead of folding them together."""
    if pins.cell == pins.version:
        return
    data = json.loads(path.read_text(encoding="utf-8"))
    for adapter in data.get("adapters", []):
        adapter.setdefault("versions", {})[pins.distribution] = pins.cell
    path.write_text(json.dumps(data, indent=2), encoding="utf-8")


def _report_rows(path: Path) -> list[Mapping]:
    """Every test row of a JSON report, each adapter's in turn; none when it is absent or unreadable."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        rows = [t for a in data.get("adapters", []) for t in a.get("tests") or []]
    except (OSError, ValueError, AttributeError):
        return []
    return rows if all(isinstance(t, Mapping) for t in rows) else []  # a malformed row: the report is unreadable


def _row_name(row: Mapping) -> str:
    return row.get("scenario", row.get("nodeid"))


def session_output(path: Path) -> str:
    """What pytest printed in a run that broke, as ``ft-harness report`` keeps it: the ``<session>`` rows' messages
    (empty when the report is absent or has none)."""
    return "\n".join(t.get("message") or "" for t in _report_rows(path) if _row_name(t) == "<session>")


def _has_tests(path: Path) -> bool:
    """Whether the report holds a scenario outcome (a ``<session>`` row alone, pytest's INTERNALERROR at
    collection, is a run that stopped before any test: it gets the version's own ``run:`` cell)."""
    return any(_row_name(t) not in _PSEUDO_TESTS for t in _report_rows(path))


def _error_run(res: VersionResult):
    from ..report import AdapterRun, TestOutcome

    return AdapterRun(target=res.adapter_spec, name=f"{res.pins.adapter} {res.pins.cell}",
                      options=dict(res.pins.adapter_options), exit_code=3, duration_s=0.0,
                      tests=[TestOutcome("<environment>", "<environment>", "error", res.error or "", 0.0, None)],
                      versions={res.pins.distribution: res.pins.cell})


def _write_error_report(path: Path, res: VersionResult) -> None:
    """A per-version report for a version without one (env or run failure), so that CI's
    ``report --merge`` of the per-job files still shows the cell."""
    from ..report import render

    path.write_text(render([_error_run(res)], "json"), encoding="utf-8")
