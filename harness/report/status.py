"""Status pages: one dated markdown page per framework, release x scenario, from ``ft-harness-report/1`` runs.

``ft-harness status --merge 'reports/*.json' -o docs/status`` groups the runs of every report given (single
columns from ``--ft-report`` / ``ft-harness report``, and sweeps' ``<framework>-sweep.json``) by the framework
they tested (:func:`harness.report.model.framework`), and writes ``<framework>.md`` for each plus ``README.md``
linking them. A page holds:

* the matrix: one column per release (and adapter option set, e.g. ``load_args=true``), ordered by version; one
  row per scenario test function, its worst outcome over its parametrisations (``pass``, ``FAIL``, ``error``,
  ``skipped``; ``-`` where that release did not run it);
* where a verdict flips between two consecutive measured releases of the same options, on the tests both ran: the
  first bad (a pass that turns red) or first fixed release, with the last release on the other side;
* every red cell's one-line cause (the oracle's head line; consecutive releases with the same cause share a line)
  and the upstream threads the scenario's docstrings cite;
* the library versions behind each column.

Nothing here runs anything: pages are a pure function of the reports (tested on hand-made runs).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .model import RED_OUTCOMES, AdapterRun, aggregate, framework, split_versions

__all__ = ["StatusColumn", "status_columns", "status_page", "status_pages", "write_status_pages"]

_WORD = {"passed": "pass", "failed": "FAIL", "error": "error", "skipped": "skipped", "xfailed": "xfail (known)",
         "xpassed": "XPASS"}


@dataclass
class StatusColumn:
    framework: str
    version: str
    options: Mapping[str, str]
    run: AdapterRun

    @property
    def label(self) -> str:
        opts = ",".join(f"{k}={v}" for k, v in sorted(self.options.items()))
        return self.version + (f" [{opts}]" if opts else "")

    @property
    def libraries(self) -> str:
        _, libs = split_versions(self.run.target, self.run.versions)
        return ", ".join(f"{k} {v}" for k, v in sorted(libs.items())) or "-"


def _version_key(version: str):
    from packaging.version import InvalidVersion, Version

    try:
        return (0, Version(version), "")
    except InvalidVersion:  # a source tree or a commit: after the releases, by name
        return (1, Version("0"), version)


def status_columns(runs: Sequence[AdapterRun]) -> dict[str, list[StatusColumn]]:
    """framework -> its columns in release order. Runs of the same release and options are one column: their tests
    are merged, a later report's test replacing an earlier one's of the same node id (a full column, then a sweep of
    a few scenarios over releases that include it)."""
    import dataclasses

    by_fw: dict[str, dict[tuple, StatusColumn]] = {}
    for run in runs:
        found = framework(run.target, run.versions)
        if found is None:
            continue
        name, version = found
        key = (version, tuple(sorted(dict(run.options).items())))
        earlier = by_fw.setdefault(name, {}).get(key)
        if earlier is not None:
            tests = {t.nodeid: t for t in earlier.run.tests}
            tests.update({t.nodeid: t for t in run.tests})
            run = dataclasses.replace(run, tests=list(tests.values()),
                                      exit_code=max(earlier.run.exit_code, run.exit_code))
        by_fw[name][key] = StatusColumn(name, version, dict(run.options), run)
    return {fw: sorted(cols.values(), key=lambda c: (_version_key(c.version), c.label))
            for fw, cols in sorted(by_fw.items())}


def _cell(cell: Mapping | None) -> str:
    return "-" if cell is None else _WORD.get(cell["outcome"], cell["outcome"])


def _one_line(text: str, limit: int = 240) -> str:
    line = re.sub(r"\s+", " ", str(text)).strip().replace("|", "\\|")
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _flips(scenario: str, columns: list[StatusColumn]) -> list[str]:
    """Consecutive measured releases (same options) whose verdict changes between pass and red, judged on the tests
    of ``scenario`` both ran (a smoke run's one parametrisation is not compared with a full column's others)."""
    out = []
    groups: dict[tuple, list[int]] = {}
    for i, col in enumerate(columns):
        groups.setdefault(tuple(sorted(col.options.items())), []).append(i)
    tests = [{t.nodeid: t.outcome for t in c.run.tests if t.scenario == scenario
              and t.outcome in ("passed",) + RED_OUTCOMES} for c in columns]
    for idxs in groups.values():
        measured = [i for i in idxs if tests[i]]
        for a, b in zip(measured, measured[1:]):
            common = tests[a].keys() & tests[b].keys()
            if not common:
                continue
            before = all(tests[a][n] == "passed" for n in common)
            after = all(tests[b][n] == "passed" for n in common)
            if before and not after:
                out.append(f"first bad: {columns[b].label} (last good {columns[a].label})")
            elif after and not before:
                out.append(f"first fixed: {columns[b].label} (last bad {columns[a].label})")
    return out


def status_page(name: str, columns: list[StatusColumn], date: str,
                refs: Mapping[str, list] | None = None) -> str:
    """The markdown page of one framework; ``refs``: scenario id -> [(label, url)] (None: read from the installed
    scenarios' docstrings)."""
    from .upstream import row_refs

    aggs = [aggregate(c.run) for c in columns]
    scenarios = sorted({s for agg in aggs for s in agg})
    refs = row_refs(scenarios, None) if refs is None else refs
    lines = [f"# {name}: status per release", "",
             f"Generated {date} by `ft-harness status` from {len(columns)} report column(s); each cell is a scenario "
             "test function's worst outcome over its parametrisations (`-`: not run in that release). Regenerate: "
             "`ft-harness status --merge <reports> -o docs/status`.", "",
             "| scenario | " + " | ".join(c.label for c in columns) + " |",
             "|---|" + "---|" * len(columns)]
    for s in scenarios:
        lines.append(f"| {s} | " + " | ".join(_cell(agg.get(s)) for agg in aggs) + " |")
    flips = {s: _flips(s, columns) for s in scenarios}
    flipped = {s: f for s, f in flips.items() if f}
    lines += ["", "## Where a verdict flips", ""]
    if flipped:
        lines += [f"- `{s}`: " + "; ".join(f) for s, f in flipped.items()]
    else:
        lines.append("No scenario changes between pass and red across the measured releases"
                     + (" (one release measured)." if len({c.version for c in columns}) < 2 else "."))
    lines += ["", "## Red cells, one line each", ""]
    red_any = False
    for s in scenarios:
        cells = [agg.get(s) for agg in aggs]
        spans: list[tuple[list[str], str]] = []
        for col, cell in zip(columns, cells):
            if cell is None or cell["outcome"] not in RED_OUTCOMES:
                continue
            cause = _one_line(cell["reason"] or cell["outcome"])
            if spans and spans[-1][1] == cause:
                spans[-1][0].append(col.label)
            else:
                spans.append(([col.label], cause))
        if not spans:
            continue
        red_any = True
        threads = ", ".join(f"[{label}]({url})" if url else label for label, url in (refs.get(s) or [])[:4])
        lines.append(f"- `{s}`" + (f" (upstream: {threads})" if threads else ""))
        for labels, cause in spans:
            where = labels[0] if len(labels) == 1 else f"{labels[0]} .. {labels[-1]}"
            lines.append(f"  - {where}: {cause}")
    if not red_any:
        lines.append("None.")
    lines += ["", "## Versions behind each column", "", "| column | libraries | tests | exit |", "|---|---|---|---|"]
    for c in columns:
        lines.append(f"| {c.label} | {c.libraries} | {len(c.run.tests)} | {c.run.exit_code} |")
    return "\n".join(lines) + "\n"


def status_pages(runs: Sequence[AdapterRun], date: str, refs: Mapping[str, list] | None = None) -> dict[str, str]:
    """file name -> page: ``<framework>.md`` per framework and a ``README.md`` index."""
    pages = {}
    index = ["# Status per framework and release", "",
             f"Generated {date} by `ft-harness status`. One page per framework: release x scenario, the releases "
             "where a verdict flips, every red cell's cause.", "", "| framework | releases | red scenarios |",
             "|---|---|---|"]
    for name, columns in status_columns(runs).items():
        file = re.sub(r"[^\w.-]+", "-", name) + ".md"
        pages[file] = status_page(name, columns, date, refs)
        red = {s for c in columns for s, cell in aggregate(c.run).items() if cell["outcome"] in RED_OUTCOMES}
        index.append(f"| [{name}]({file}) | {', '.join(c.label for c in columns)} | {len(red)} |")
    pages["README.md"] = "\n".join(index) + "\n"
    return pages


def write_status_pages(runs: Sequence[AdapterRun], out: Path, date: str) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for file, text in status_pages(runs, date).items():
        path = out / file
        tmp = path.with_suffix(".md.tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
        written.append(path)
    return written
