"""``--format html``: one self-contained page for a :class:`~harness.report.model.Report`.

The page is a colour matrix, rows = scenarios, columns = adapter runs (framework and library
versions in the header): pass / FAIL / xfail (known failure) / XPASS / skipped / error / env error
(a sweep environment that could not be built: outcome ``error``, reason ``env: ...``). A cell's
first failure message is its ``title`` (hover) and the body of a ``<details>`` (click), with the
whole failure report where the report records one (a test's ``message``). Each row shows its seed and
the upstream issues named in the scenario's docstring (:mod:`harness.report.upstream`). A sweep's
timings (the report's ``sweep``) are shown under the table. Inline CSS, no script, no network: the
only ``http`` URLs are links to the upstream issues.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..model import FORMAT, Column, Report, Row
from ..upstream import row_refs

__all__ = ["render_html", "OUTCOME_CLASS", "cell_class"]

#: outcome -> (CSS class, word in the cell)
OUTCOME_CLASS = {
    "passed": ("c-pass", "pass"),
    "failed": ("c-fail", "FAIL"),
    "xfailed": ("c-xfail", "xfail"),
    "xpassed": ("c-xpass", "XPASS"),
    "skipped": ("c-skip", "skipped"),
    "error": ("c-error", "ERROR"),
    "env": ("c-env", "env error"),
    "missing": ("c-none", "—"),
}


def cell_class(cell: Mapping[str, Any] | None) -> tuple[str, str]:
    """(CSS class, word) of a matrix cell; an ``error`` whose reason starts ``env:`` is an env error."""
    if cell is None:
        return OUTCOME_CLASS["missing"]
    outcome = cell.get("outcome", "error")
    if outcome == "error" and str(cell.get("reason", "")).startswith("env:"):
        outcome = "env"
    return OUTCOME_CLASS.get(outcome, OUTCOME_CLASS["error"])


_CSS = """
:root { --pass:#2e8b57; --fail:#c62828; --xfail:#ef9a00; --xpass:#8e24aa; --skip:#9e9e9e; --error:#6d1b1b;
        --env:#455a64; --ink:#1d1d1f; --muted:#6b6b70; --line:#d9d9de; }
* { box-sizing: border-box; }
body { font: 13px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; color: var(--ink);
       margin: 16px 20px; background: #fafafa; }
h1 { font-size: 18px; margin: 0 0 4px; }
.sub { color: var(--muted); margin: 0 0 10px; }
.legend { display: flex; flex-wrap: wrap; gap: 6px 14px; margin: 8px 0 12px; }
.legend span { display: inline-flex; align-items: center; gap: 5px; }
.legend i { width: 14px; height: 14px; border-radius: 3px; display: inline-block; }
.wrap { overflow: auto; max-height: calc(100vh - 130px); border: 1px solid var(--line); background: #fff; }
table { border-collapse: separate; border-spacing: 0; }
th, td { border-right: 1px solid var(--line); border-bottom: 1px solid var(--line); padding: 4px 6px;
         vertical-align: top; }
thead th { position: sticky; top: 0; background: #f1f1f4; z-index: 2; text-align: left; font-weight: 600;
           min-width: 92px; max-width: 170px; }
thead th.scn { left: 0; z-index: 3; }
thead th.seed, thead th.refs { min-width: 0; }
td.scn { position: sticky; left: 0; background: #fff; z-index: 1; min-width: 280px; max-width: 400px; }
.mod { color: var(--muted); font-size: 11px; display: block; }
.fn { font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: 12px; overflow-wrap: anywhere; }
.seed { text-align: center; font-family: ui-monospace, monospace; white-space: nowrap; }
.refs { font-size: 11px; max-width: 140px; }
.refs a { color: #1565c0; text-decoration: none; white-space: nowrap; }
.fw { display: block; font-size: 13px; }
.libs, .opts { display: block; font-weight: 400; color: var(--muted); font-size: 10.5px; }
td.c { min-width: 92px; max-width: 170px; font-weight: 600; color: #fff; text-align: center; }
td.c-pass { background: var(--pass); } td.c-fail { background: var(--fail); }
td.c-xfail { background: var(--xfail); } td.c-xpass { background: var(--xpass); }
td.c-skip { background: #ececec; color: var(--muted); font-weight: 400; } td.c-error { background: var(--error); }
td.c-env { background: repeating-linear-gradient(45deg, var(--env), var(--env) 6px, #546e7a 6px, #546e7a 12px); }
td.c-none { background: #fff; color: var(--muted); }
details > summary { cursor: pointer; list-style: none; }
details > summary::-webkit-details-marker { display: none; }
details[open] > summary { text-decoration: underline; }
.why { font-weight: 400; text-align: left; font-size: 11px; margin-top: 4px; word-break: break-word;
       background: rgba(0,0,0,.18); padding: 3px 4px; border-radius: 3px; }
td.c-skip .why { background: #f7f7f7; color: var(--ink); }
pre.msg { font: 10.5px/1.3 ui-monospace, "DejaVu Sans Mono", monospace; font-weight: 400; text-align: left;
          white-space: pre-wrap; word-break: break-word; max-height: 320px; max-width: 560px; overflow: auto;
          background: #fff; color: var(--ink); border: 1px solid var(--line); padding: 4px; margin: 4px 0 0; }
details[open] { min-width: 260px; }
tfoot td { background: #f7f7f9; color: var(--muted); font-size: 11px; text-align: center; }
.timings { margin-top: 14px; border-collapse: collapse; }
.timings td, .timings th { border: 1px solid var(--line); padding: 3px 8px; font-size: 12px; }
"""

_LEGEND = [("c-pass", "pass"), ("c-fail", "FAIL"), ("c-xfail", "known failure (xfail)"),
           ("c-xpass", "XPASS (known failure fixed?)"), ("c-skip", "skipped"), ("c-error", "error"),
           ("c-env", "env error (environment not built)")]


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _header(col: Column) -> str:
    fw = col.framework
    target = col.target
    if fw is not None:
        title = f"{fw[0]} {fw[1]}" if fw[0] not in target else f"{target.split('[')[0]} {fw[1]}"
    else:
        title = target.split("[")[0]
    libs = ", ".join(f"{k} {v}" for k, v in col.libraries.items())
    opts = ", ".join(f"{k}={v}" for k, v in (col.options or {}).items())
    tip = f"column {col.key}: adapter {target}" + (f"; {libs}" if libs else "")
    parts = [f'<th title="{_e(tip)}"><span class="fw">{_e(title)}</span>']
    if target.split("[")[0] not in title:
        parts.append(f'<span class="opts">adapter {_e(target.split("[")[0])}</span>')
    if opts:
        parts.append(f'<span class="opts">{_e(opts)}</span>')
    if libs:
        parts.append(f'<span class="libs">{_e(libs)}</span>')
    parts.append("</th>")
    return "".join(parts)


_MESSAGE_LIMIT = 6000


def _message(col: Column, scenario: str, cell: Mapping[str, Any] | None) -> str:
    """The full failure report of the column's first test of ``scenario`` with the cell's outcome
    (reports that record ``message`` per test), cut to a readable length."""
    if not cell:
        return ""
    for t in col.tests:
        if t.get("scenario") == scenario and t.get("outcome") == cell.get("outcome") and t.get("message"):
            msg = str(t["message"])
            return msg if len(msg) <= _MESSAGE_LIMIT else msg[:_MESSAGE_LIMIT] + "\n[... cut]"
    return ""


def _cell(cell: Mapping[str, Any] | None, message: str = "") -> str:
    cls, word = cell_class(cell)
    reason = str(cell.get("reason", "") or "") if cell else ""
    n = cell.get("tests", 1) if cell else 0
    extra = f" ({n} tests)" if cell and n and n > 1 else ""
    if cell is None:
        return f'<td class="c {cls}" title="not run in this column">{word}</td>'
    if not reason or cell.get("outcome") == "passed":
        return f'<td class="c {cls}" title="{_e(word + extra)}">{_e(word)}</td>'
    tip = f"{word}{extra}: {reason}"
    full = f'<pre class="msg">{_e(message)}</pre>' if message and message.strip() != reason.strip() else ""
    return (f'<td class="c {cls}" title="{_e(tip)}"><details><summary>{_e(word)}</summary>'
            f'<div class="why">{_e(reason)}</div>{full}</details></td>')


def _refs_html(refs: Sequence[tuple[str, str | None]]) -> str:
    out = []
    for label, url in refs:
        if url and url.startswith(("https://", "http://")):
            out.append(f'<a href="{_e(url)}" rel="noreferrer">{_e(label)}</a>')
        else:
            out.append(_e(label))
    return "<br>".join(out)


def _row(row: Row, cols: Sequence[Column], refs: Sequence[tuple[str, str | None]]) -> str:
    module, _, func = row.id.partition("::")
    cells = "".join(_cell(row.cell(c.key), _message(c, row.id, row.cell(c.key))) for c in cols)
    name = _e(func or row.id).replace("_", "_<wbr>")
    return (f'<tr><td class="scn" title="{_e(row.id)}"><span class="mod">{_e(module)}</span>'
            f'<span class="fn">{name}</span></td><td class="seed">{_e(row.seed or "")}</td>'
            f'<td class="refs">{_refs_html(refs)}</td>{cells}</tr>')


def _summary(report: Report) -> str:
    """``"3 pass, 1 FAIL"``: how many cells of each kind, in legend order."""
    counts: dict[str, int] = {}
    for row in report.rows:
        for col in report.columns:
            cls, _ = cell_class(row.cell(col.key))
            counts[cls] = counts.get(cls, 0) + 1
    return ", ".join(f"{counts[c]} {w}" for c, w in _LEGEND if counts.get(c))


def _timings_table(sweep: Mapping[str, Any]) -> str:
    timings = sweep.get("timings") or {}
    if not timings:
        return ""
    rows = ["<table class=\"timings\"><tr><th>version</th><th>environment</th><th>env time</th>"
            "<th>scenario run</th><th>note</th></tr>"]
    for version, t in timings.items():
        how = "failed" if t.get("error", "") and str(t.get("error")).startswith("env:") else (
            "reused" if t.get("env_cached") else "built")
        env_s = t.get("env_s")
        env_txt = "" if env_s is None else f"{env_s:.1f}s"
        run_txt = f"{t.get('run_s') or 0:.1f}s"
        rows.append(f"<tr><td>{_e(version)}</td><td>{_e(how)}</td><td>{_e(env_txt)}</td><td>{_e(run_txt)}</td>"
                    f"<td>{_e(t.get('error') or '')}</td></tr>")
    rows.append("</table>")
    wall = sweep.get("wall_s")
    foot = (f'<p class="sub">whole sweep: {wall:.1f} s wall, {_e(sweep.get("jobs", 1))} job(s)</p>'
            if isinstance(wall, (int, float)) else "")
    return "<h2 style=\"font-size:14px;margin-top:18px\">Sweep timings</h2>" + "".join(rows) + foot


def render_html(report: Report | Mapping[str, Any], *, title: str | None = None,
                scenario_sources: Mapping[str, Path] | None = None) -> str:
    """The HTML page of a :class:`Report`, or of a parsed ``ft-harness-report/1`` dict (a run's, a merge's,
    a sweep's). ``scenario_sources`` maps ``module.py`` to its source file for the upstream references
    (default: the installed ``scenarios`` package; ``{}`` for none)."""
    if not isinstance(report, Report):
        if report.get("format") != FORMAT:
            raise ValueError(f"not an ft-harness JSON report (format={report.get('format')!r})")
        report = Report.from_document(report)
    cols = report.columns
    refs = row_refs([r.id for r in report.rows], scenario_sources)
    sweep = report.sweep
    title = title or (f"ft-harness sweep: {sweep['framework']}" if sweep.get("framework") else "ft-harness report")
    head = "".join(_header(c) for c in cols)
    body = [_row(r, cols, refs.get(r.id, [])) for r in report.rows]
    foot = "".join("<td></td>" if not isinstance(c.duration_s, (int, float)) else f"<td>{c.duration_s:.1f}s</td>"
                   for c in cols)
    legend = "".join(f'<span><i class="{c}" style="background:var(--{c[2:]})"></i>{_e(w)}</span>'
                     for c, w in _LEGEND)
    legend = legend.replace("var(--skip)", "#ececec;border:1px solid #ccc")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(title)}</title><style>{_CSS}</style></head>
<body>
<h1>{_e(title)}</h1>
<p class="sub">{_e(len(report.rows))} scenarios &times; {_e(len(cols))} columns: {_e(_summary(report) or "no results")}.
Hover a cell for its first failure message; click it to expand.</p>
<div class="legend">{legend}</div>
<div class="wrap"><table>
<thead><tr><th class="scn">scenario</th><th class="seed">seed</th><th class="refs">upstream</th>{head}</tr></thead>
<tbody>
{chr(10).join(body)}
</tbody>
<tfoot><tr><td class="scn" style="text-align:left">total time</td><td></td><td></td>{foot}</tr></tfoot>
</table></div>
{_timings_table(sweep)}
</body></html>
"""
