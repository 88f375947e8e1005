"""``ft-harness check``: does my framework version, with my config, silently break my training?

:func:`harness.check.configs.read_config` reads the user's config (a LLaMA-Factory or axolotl YAML, an ms-swift
argument list, a transformers ``TrainingArguments`` JSON) into the settings the scenarios are sensitive to;
:func:`harness.check.plan.plan` maps them onto the tiny task and picks the scenario tests that judge them;
:func:`run_check` runs those tests on the installed framework's adapter (one ``pytest --pyargs scenarios`` run,
everything in a temporary directory) and :func:`render` answers per setting: PASS, FAIL with what the oracle
found, or not run and why.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..report.model import AdapterRun, TestOutcome, split_versions
from .configs import FRAMEWORKS, UserConfig, read_config
from .plan import Plan, Question, plan

__all__ = ["FRAMEWORKS", "Answer", "read_config", "plan", "run_check", "answers", "render"]

#: a test outcome that means the user's setting breaks training: the oracle failed, or the adapter lists it as a known
#: failure that still fails (a known failure that passes, ``xpassed``, is a pass for the user: the bug is gone)
_BROKEN = ("failed", "xfailed")


@dataclass(frozen=True)
class Answer:
    question: Question
    verdict: str  # PASS | FAIL | ERROR | NOT RUN
    tests: tuple[TestOutcome, ...]

    @property
    def first_bad(self) -> TestOutcome | None:
        """The test behind a FAIL or ERROR: the first broken one, else the first that errored."""
        return next((t for t in self.tests if t.outcome in _BROKEN),
                    next((t for t in self.tests if t.outcome == "error"), None))


def run_check(the_plan: Plan, adapter: str, options: Mapping[str, str] | None = None,
              pytest_args: Sequence[str] = (), progress: bool = True) -> AdapterRun:
    """One scenario run of the plan's tests on ``adapter`` (its user config in a temporary directory). The plan's
    adapter options are the framework's own (ms-swift's ``load_args``): they go only to that framework's adapter."""
    from ..report.runner import run_adapter

    with tempfile.TemporaryDirectory(prefix="ft-harness-check-") as tmp:
        path = Path(tmp) / "user-config.json"
        path.write_text(json.dumps(the_plan.user_config, indent=1), encoding="utf-8")
        args = ["--ft-user-config", str(path), "-k", the_plan.keyword, "-m", "not ft_gpu",
                "--basetemp", str(Path(tmp) / "pytest")]
        own = the_plan.options if (adapter or "reference").split("[")[0] == the_plan.framework else {}
        return run_adapter(adapter, {**own, **dict(options or {})}, args + list(pytest_args), progress=progress)


def answers(the_plan: Plan, run: AdapterRun) -> list[Answer]:
    """Each question's verdict from the run's tests: FAIL when one failed (or is a known failure that still fails),
    ERROR when one errored (an arrangement or the framework broke), PASS when all that ran passed, NOT RUN when none
    ran (skipped: their reasons say why)."""
    out = []
    for q in the_plan.questions:
        tests = tuple(t for t in run.tests if q.owns(t.nodeid))
        outcomes = {t.outcome for t in tests}
        if outcomes & set(_BROKEN):
            verdict = "FAIL"
        elif "error" in outcomes:
            verdict = "ERROR"
        elif outcomes & {"passed", "xpassed"}:
            verdict = "PASS"
        else:
            verdict = "NOT RUN"
        out.append(Answer(q, verdict, tests))
    return out


def _tested(run: AdapterRun) -> str:
    """'llamafactory 0.9.5 (peft 0.18.1, torch 2.14.1, transformers 5.6.0)': the framework and what is under it."""
    found, libs = split_versions(run.target, run.versions)
    name, version = found if found else (run.name, "")
    rest = ", ".join(f"{k} {v}" for k, v in sorted(libs.items()))
    return f"{name} {version}".strip() + (f" ({rest})" if rest else "")


def render(config: UserConfig, the_plan: Plan, adapter: str, run: AdapterRun | None,
           results: list[Answer] | None) -> str:
    """The answer a user reads: per question, their settings, the tiny arrangement, the verdict and what to do;
    then what was not checked. ``run`` None: the plan only (``--dry-run``)."""
    tested = _tested(run) if run is not None else adapter
    lines = [f"ft-harness check: {config.framework} config {config.source}"
             + (f" on {tested}" if run is not None else f" (dry run: nothing trained; adapter {adapter})"), ""]
    if not the_plan.questions:
        lines.append("No setting of this config reaches a scenario: nothing to run.")
    by_question = {id(a.question): a for a in results or []}
    for q in the_plan.questions:
        answer = by_question.get(id(q))
        verdict = answer.verdict if answer else "PLAN"
        lines.append(f"{verdict:7} {q.cited or '(defaults)'}: {q.topic}")
        lines.append(f"        tiny task: {q.mapped}")
        if answer is None:
            lines.append(f"        tests: -k '{q.keyword}'")
        elif verdict in ("FAIL", "ERROR"):
            bad = answer.first_bad
            assert bad is not None
            meaning, fix = q.advice(bad.reason)
            lines.append(f"        {meaning}, on {tested}:")
            lines.append(f"        {bad.reason}")
            lines.append(f"        ({bad.nodeid}; {sum(t.outcome in (*_BROKEN, 'error') for t in answer.tests)} of "
                         f"{len(answer.tests)} test(s) red)")
            lines.append(f"        to fix: {fix}")
        elif verdict == "NOT RUN":
            reasons = sorted({t.reason for t in answer.tests if t.reason}) or ["no test of it was collected"]
            lines.append(f"        not run: {'; '.join(reasons)}")
        else:
            lines.append(f"        {len(answer.tests)} test(s) passed"
                         + (f" ({', '.join(t.nodeid.rsplit('/', 1)[-1] for t in answer.tests)})"
                            if len(answer.tests) <= 3 else "")
                         + ("; a known failure the adapter lists passed: the bug is gone in this version"
                            if any(t.outcome == "xpassed" for t in answer.tests) else ""))
        lines.append("")
    for why in the_plan.not_checked:
        lines.append(f"not checked: {why}")
    if the_plan.unchecked_keys:
        lines.append(f"not checked (no scenario is sensitive to these keys): {', '.join(the_plan.unchecked_keys)}")
    return "\n".join(lines).rstrip() + "\n"
