"""Bisection over releases: a probe's verdict of one scenario, the binary search for the release where it
flips (untestable releases skipped like ``git bisect skip``), and the printed result."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from packaging.version import Version

from .errors import SweepError

__all__ = ["Probe", "BisectResult", "verdict_of", "bisect_releases", "format_bisect"]


@dataclass(frozen=True)
class Probe:
    """One probed release: ``verdict`` is ``pass`` / ``fail`` / ``skip`` (env error, scenario not run)."""

    version: str
    verdict: str
    detail: str = ""


@dataclass
class BisectResult:
    scenario: str
    releases: list[str]  # the ordered candidates from the older to the newer endpoint
    good: str
    bad: str
    probes: list[Probe]
    first: str  # first release with the newer endpoint's verdict
    last_before: str  # newest release known to have the older endpoint's verdict
    candidates: list[str]  # releases the flip may be at: [first] unless skipped ones sit before it
    kind: str  # "regression" (good is older) or "fix" (good is newer)

    @property
    def ambiguous(self) -> bool:
        return len(self.candidates) > 1

    def neighbours(self) -> tuple[str | None, str | None]:
        """(release before the first flipped one, release after it) in the ordered list."""
        i = self.releases.index(self.first)
        return (self.releases[i - 1] if i > 0 else None,
                self.releases[i + 1] if i + 1 < len(self.releases) else None)


def verdict_of(report: Mapping[str, Any] | None, scenario: str) -> tuple[str, str]:
    """(verdict, detail) of ``scenario`` in an ``ft-harness-report/1`` dict: ``pass`` (passed, or a
    known failure that now passes), ``fail`` (failed or strict xfail: the bug is there), ``skip``
    (skipped, not collected, no report, or ``error``: the test could not be set up, e.g. the release
    does not import beside its pins — untestable, like ``git bisect skip``). ``scenario`` matches a row
    id exactly or as a substring; several matching rows give the worst."""
    if report is None:
        return "skip", "no report"
    rows = [s for s in report.get("scenarios", []) if s["id"] == scenario] or \
           [s for s in report.get("scenarios", []) if scenario in s["id"]]
    cells = [(c["outcome"], c.get("reason", "")) for s in rows for c in s.get("results", {}).values()]
    if not cells:
        return "skip", f"scenario {scenario!r} not in the report"
    for outcome, reason in cells:
        if outcome == "error" and str(reason).startswith(("env:", "run:")):
            return "skip", reason
    order = {"error": 5, "failed": 4, "xfailed": 3, "xpassed": 1, "passed": 1, "skipped": 0}
    outcome, reason = max(cells, key=lambda c: order.get(c[0], 0))
    verdict = {"failed": "fail", "xfailed": "fail", "xpassed": "pass", "passed": "pass"}.get(outcome, "skip")
    return verdict, f"{outcome}" + (f": {reason}" if reason else "")


def _next_probe(lo: int, hi: int, skipped: set[int]) -> int:
    """The index to probe strictly between ``lo`` and ``hi``: the midpoint, or, when it was skipped,
    the first untested of mid+1, mid-1, mid+2, mid-2, mid+4, mid-4, ... (a block of k untestable
    releases costs O(log k) probes, not k), else the untested index nearest the midpoint."""
    mid = (lo + hi) // 2
    ok = lambda j: lo < j < hi and j not in skipped  # noqa: E731
    if ok(mid):
        return mid
    step = 1
    while step < hi - lo:
        for j in (mid + step, mid - step):
            if ok(j):
                return j
        step *= 2
    return min((j for j in range(lo + 1, hi) if j not in skipped), key=lambda j: (abs(j - mid), j))


def bisect_releases(releases: Sequence[str], good: str, bad: str, probe: Callable[[str], Probe | tuple]
                    ) -> BisectResult:
    """Binary search over ``releases`` (any order; sorted here) between ``good`` and ``bad`` for the
    first release where ``probe``'s verdict flips. ``good`` must ``pass`` and ``bad`` must ``fail``
    (else :class:`SweepError`). A ``skip`` verdict is skipped like ``git bisect skip``: releases at
    growing distances from the midpoint are probed instead (:func:`_next_probe`). ``probe`` is called
    O(log n) times (plus O(log k) for a block of k untestable releases)."""
    ordered = _between(releases, good, bad)
    probes: list[Probe] = []

    def ask(version: str) -> Probe:
        p = probe(version)
        p = p if isinstance(p, Probe) else Probe(version, *p)
        probes.append(p)
        return p

    pg = ask(good)
    pb = ask(bad)
    _check_flip(pg, pb, good, bad)
    kind = "regression" if Version(good) < Version(bad) else "fix"
    old_verdict = pg.verdict if kind == "regression" else pb.verdict
    lo, hi = 0, len(ordered) - 1  # lo has old_verdict, hi the other
    skipped: set[int] = set()
    while True:
        between = [i for i in range(lo + 1, hi) if i not in skipped]
        if not between:
            break
        i = _next_probe(lo, hi, skipped)
        p = ask(ordered[i])
        if p.verdict == "skip":
            skipped.add(i)
        elif p.verdict == old_verdict:
            lo = i
        else:
            hi = i
    candidates = [ordered[i] for i in range(lo + 1, hi + 1)]
    return BisectResult(scenario="", releases=list(ordered), good=good, bad=bad, probes=probes, first=ordered[hi],
                        last_before=ordered[lo], candidates=candidates, kind=kind)


def _between(releases: Sequence[str], good: str, bad: str) -> list[str]:
    """``releases`` sorted, from the older to the newer endpoint (both must be among them, and differ)."""
    ordered = sorted(dict.fromkeys(releases), key=Version)
    for name, v in (("--good", good), ("--bad", bad)):
        if v not in ordered:
            raise SweepError(f"{name} {v} is not among the releases considered "
                             f"({ordered[0] if ordered else '?'} .. {ordered[-1] if ordered else '?'})")
    if Version(good) == Version(bad):
        raise SweepError(f"--good and --bad are the same release ({good}): nothing to bisect")
    i_good, i_bad = ordered.index(good), ordered.index(bad)
    lo_i, hi_i = sorted((i_good, i_bad))
    return ordered[lo_i:hi_i + 1]


def _check_flip(pg: Probe, pb: Probe, good: str, bad: str) -> None:
    """Both endpoints tested, ``good`` passing and ``bad`` failing; else :class:`SweepError` says what is wrong."""
    if pg.verdict == "skip" or pb.verdict == "skip":
        which = pg if pg.verdict == "skip" else pb
        raise SweepError(f"cannot bisect: {which.version} could not be tested ({which.detail})")
    if pg.verdict == pb.verdict:
        raise SweepError(f"--good {good} and --bad {bad} both {pg.verdict} ({pg.detail}): the verdict does not "
                         "flip between them")
    if pg.verdict != "pass":
        raise SweepError(f"--good {good} fails ({pg.detail}) and --bad {bad} passes: the labels are reversed "
                         f"(swap them: --good {bad} --bad {good})")


def format_bisect(res: BisectResult, framework: str = "") -> str:
    fw = f"{framework} " if framework else ""
    new = "fail" if res.kind == "regression" else "pass"
    lines = [f"bisect {res.scenario or 'scenario'}: {fw}{res.releases[0]}..{res.releases[-1]} "
             f"({len(res.releases)} releases, --good {res.good}, --bad {res.bad}, {res.kind}); "
             f"{len(res.probes)} probed"]
    for p in res.probes:
        lines.append(f"  {p.version:>14}  {p.verdict:4}  {p.detail}")
    before, after = res.neighbours()
    what = "first bad release (regression)" if res.kind == "regression" else "first fixed release"
    verdicts = {p.version: p.verdict for p in res.probes}
    show = lambda v: "—" if v is None else f"{v} ({verdicts.get(v, 'not probed')})"  # noqa: E731
    if res.ambiguous:
        lines.append(f"{what}: one of {', '.join(res.candidates)} (the releases before {res.first} could not be "
                     f"tested); last {('good' if res.kind == 'regression' else 'bad')}: {res.last_before}")
    else:
        lines.append(f"{what}: {fw}{res.first} ({new})")
    lines.append(f"  before: {show(before)}   first: {show(res.first)}   after: {show(after)}")
    return "\n".join(lines)
