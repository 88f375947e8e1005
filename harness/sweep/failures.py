"""The one line that says why something failed: a tool's error output (uv, pip) or a scenario run's log."""

from __future__ import annotations

import re

__all__ = ["first_meaningful_line", "run_failure_line"]

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_NOISE = re.compile(r"^(Using |Resolved |Prepared |Installed |Uninstalled |Audited |Downloading|Downloaded |Building |"
                    r"Built |Creating virtual|Activate with|warning:|WARNING:|[+-~] |Checked |Bytecode|hint:|help:|"
                    r"Looking in|Collecting |Requirement already)")


#: uv's cause line: a tree on a terminal, "cause:" in a pipe
_CAUSES = ("╰─▶", "Caused by:", "caused by:", "cause:")


def first_meaningful_line(text: str, limit: int = 200) -> str:
    """The line of a tool's error output that says what went wrong (uv's ``× ...`` headline joined
    with its first ``╰─▶`` cause; else the first line naming an error; else the last line)."""
    lines = [_ANSI.sub("", ln).strip() for ln in str(text).splitlines()]
    lines = [ln for ln in lines if ln and not _NOISE.match(ln)]
    if not lines:
        return "no error output"
    pick = None
    for i, ln in enumerate(lines):
        if ln.startswith(("×", "error:", "ERROR:")) or re.search(r"\b(error|failed|not found|no solution|"
                                                                  r"no matching|could not|cannot)\b", ln, re.I):
            pick = ln.lstrip("×").strip()
            cause = next((c for c in lines[i + 1:i + 4] if c.startswith(_CAUSES)), None)
            if cause:
                for prefix in _CAUSES:
                    cause = cause.removeprefix(prefix)
                pick = f"{pick.rstrip(':')}: {cause.strip()}"
            break
    if pick is None:
        pick = lines[-1]
    pick = re.sub(r"\s+", " ", pick)
    return pick if len(pick) <= limit else pick[: limit - 3] + "..."


_EXC_LINE = re.compile(r"^([A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)|AssertionError)\b.*")


def run_failure_line(text: str, limit: int = 200) -> str:
    """Why a scenario run stopped: the last ``SomethingError: ...`` line of its output (pytest's
    ``INTERNALERROR>`` and ``E`` prefixes removed), else :func:`first_meaningful_line`."""
    lines = [re.sub(r"^(INTERNALERROR>|E)\s+", "", _ANSI.sub("", ln).strip()) for ln in str(text).splitlines()]
    hits = [ln for ln in lines if _EXC_LINE.match(ln)]
    if hits:
        pick = re.sub(r"\s+", " ", hits[-1])
        return pick if len(pick) <= limit else pick[: limit - 3] + "..."
    return first_meaningful_line(text, limit)
