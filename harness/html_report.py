"""One self-contained HTML page for an ``ft-harness-report/1`` JSON report (``report --format html``).

:func:`render_html` takes the parsed JSON dict that ``render(runs, "json")`` writes: a report of one
run, a ``report --merge`` of several environments' reports and an ``ft-harness sweep`` matrix all
have that shape (a sweep adds a ``"sweep"`` key with its timings, shown under the table).

The page is a colour matrix, rows = scenarios, columns = adapter runs (framework and library
versions in the header): pass / FAIL / xfail (known failure) / XPASS / skipped / error / env error
(a sweep environment that could not be built: outcome ``error``, reason ``env: ...``). A cell's
first failure message is its ``title`` (hover) and the body of a ``<details>`` (click), with the
whole failure report where the JSON records one (a test's ``message``). Each row
shows its seed and the upstream issues named in the scenario's docstring (read from the source with
``ast``, nothing imported; optional: missing sources just leave the column empty). Inline CSS, no
script, no network: the only ``http`` URLs are links to the upstream issues.
"""

from __future__ import annotations

import ast
import html
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["render_html", "columns", "upstream_refs", "OUTCOME_CLASS", "cell_class", "UPSTREAM_REPOS"]

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

#: project names as scenario docstrings write them -> GitHub repository, for ``<project> #NNN`` links
UPSTREAM_REPOS = {
    "ms-swift": "modelscope/ms-swift", "swift": "modelscope/ms-swift",
    "transformers": "huggingface/transformers", "diffusers": "huggingface/diffusers",
    "peft": "huggingface/peft", "trl": "huggingface/trl", "accelerate": "huggingface/accelerate",
    "optimum-quanto": "huggingface/optimum-quanto", "llama-factory": "hiyouga/LLaMA-Factory",
    "llamafactory": "hiyouga/LLaMA-Factory", "simpletuner": "bghira/SimpleTuner", "llava": "haotian-liu/LLaVA",
    "lmflow": "OptimalScale/LMFlow", "qlora": "artidoro/qlora", "bitsandbytes": "bitsandbytes-foundation/bitsandbytes",
}

_LIBRARIES = ("transformers", "peft", "trl", "torch", "bitsandbytes", "optimum-quanto", "diffusers")


def cell_class(cell: Mapping[str, Any] | None) -> tuple[str, str]:
    """(CSS class, word) of a matrix cell; an ``error`` whose reason starts ``env:`` is an env error."""
    if cell is None:
        return OUTCOME_CLASS["missing"]
    outcome = cell.get("outcome", "error")
    if outcome == "error" and str(cell.get("reason", "")).startswith("env:"):
        outcome = "env"
    return OUTCOME_CLASS.get(outcome, OUTCOME_CLASS["error"])


# ------------------------------------------------------------------------------------------- columns
def _framework(ad: Mapping[str, Any], plain_transformers: bool = True) -> tuple[str, str] | None:
    versions = ad.get("versions") or {}
    for name, version in versions.items():
        if name not in _LIBRARIES:
            return name, version
    if plain_transformers and str(ad.get("target", "")).startswith("transformers") and "transformers" in versions:
        return "transformers", versions["transformers"]
    return None


def _keys_fallback(adapters: Sequence[Mapping[str, Any]]) -> list[str]:
    """The column keys of ``harness.report._column_keys``, on the JSON dicts."""
    targets = [a.get("target", "?") for a in adapters]
    bases = []
    for a, t in zip(adapters, targets):
        fw = _framework(a, plain_transformers=False)
        bases.append(f"{t}@{fw[1]}" if targets.count(t) > 1 and fw else t)
    keys = []
    for i, (t, base) in enumerate(zip(targets, bases)):
        same = [j for j, x in enumerate(targets) if x == t]
        unique = sum(bases[j] == base for j in same) == 1
        keys.append(base if unique else f"{base}#{same.index(i) + 1}")
    return keys


def columns(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One dict per adapter run, in report order: ``key`` (its key in the scenarios' ``results``),
    ``target``, ``framework`` (name, version) or None, ``libraries`` (the other versions), ``options``,
    ``duration_s``, ``exit_code``."""
    adapters = list(report.get("adapters", []))
    keys = None
    try:  # the report module's own keys, when it is importable (it is the source of truth)
        from .report import AdapterRun, _column_keys

        keys = _column_keys([AdapterRun(target=a.get("target", "?"), name=a.get("name", ""),
                                        options=a.get("options", {}), exit_code=a.get("exit_code", 0),
                                        duration_s=a.get("duration_s", 0.0), versions=a.get("versions", {}))
                             for a in adapters])
    except Exception:  # noqa: BLE001 - fall back to the same rule on the dicts
        keys = None
    if keys is None or len(keys) != len(adapters):
        keys = _keys_fallback(adapters)
    used = {k for s in report.get("scenarios", []) for k in s.get("results", {})}
    if used and not used <= set(keys):  # a report from another ft-harness version: show what is there
        keys = list(keys) + sorted(used - set(keys))
        adapters = adapters + [{"target": k} for k in keys[len(adapters):]]
    out = []
    for key, a in zip(keys, adapters):
        fw = _framework(a)
        order = {name: i for i, name in enumerate(_LIBRARIES)}
        libs = dict(sorted(((k, v) for k, v in (a.get("versions") or {}).items() if fw is None or k != fw[0]),
                           key=lambda kv: (order.get(kv[0], len(order)), kv[0])))
        out.append({"key": key, "target": a.get("target", key), "framework": fw, "libraries": libs,
                    "options": a.get("options") or {}, "duration_s": a.get("duration_s"),
                    "exit_code": a.get("exit_code"), "tests": list(a.get("tests") or [])})
    return out


# ------------------------------------------------------------------------------------------- upstream
_REF = re.compile(r"(?<![\w/])([A-Za-z][\w.-]*?)\s+(?:PR\s+|issue\s+|pull\s+)?#(\d+)\b")
_URL = re.compile(r"https?://[^\s<>\"')\]]+")


def upstream_refs(text: str) -> list[tuple[str, str | None]]:
    """``(label, url or None)`` for each URL and ``<project> #NNN`` in ``text``, in order, unique.
    Known projects (:data:`UPSTREAM_REPOS`) link to their GitHub issue; others stay text."""
    refs: dict[str, str | None] = {}
    for m in _URL.finditer(text or ""):
        url = m.group(0).rstrip(".,;:")
        gh = re.match(r"https://github\.com/([^/]+/[^/]+)/(?:issues|pull)/(\d+)", url)
        label = f"{gh.group(1).split('/')[1]} #{gh.group(2)}" if gh else url
        refs.setdefault(label, url)
    for m in _REF.finditer(_URL.sub(" ", text or "")):
        project, num = m.group(1), m.group(2)
        repo = UPSTREAM_REPOS.get(project.lower())
        label = f"{project} #{num}"
        if any(label.lower() == k.lower() for k in refs):
            continue
        refs[label] = f"https://github.com/{repo}/issues/{num}" if repo else None
    return list(refs.items())


def _scenario_sources() -> dict[str, Path]:
    """``module.py`` -> its file, for the installed ``scenarios`` package (empty when not found)."""
    try:
        import importlib.util

        spec = importlib.util.find_spec("scenarios")
        if spec is None or not spec.submodule_search_locations:
            return {}
        return {p.name: p for loc in spec.submodule_search_locations for p in Path(loc).glob("test_*.py")}
    except Exception:  # noqa: BLE001 - optional
        return {}


def _docstrings(path: Path) -> tuple[str, dict[str, str]]:
    """(module docstring, function name -> docstring) of a scenario module, parsed, not imported."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, ValueError):
        return "", {}
    funcs = {n.name: ast.get_docstring(n) or "" for n in ast.walk(tree)
             if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    return ast.get_docstring(tree) or "", funcs


def _row_refs(scenario_ids: Sequence[str], sources: Mapping[str, Path] | None) -> dict[str, list]:
    sources = _scenario_sources() if sources is None else sources
    cache: dict[str, tuple[str, dict[str, str]]] = {}
    out: dict[str, list] = {}
    for sid in scenario_ids:
        module, _, func = sid.partition("::")
        path = sources.get(module)
        if path is None:
            out[sid] = []
            continue
        if module not in cache:
            cache[module] = _docstrings(Path(path))
        mod_doc, funcs = cache[module]
        out[sid] = upstream_refs(funcs.get(func, "") + "\n" + mod_doc)
    return out


# ----------------------------------------------------------------------------------------------- page
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


def _header(col: Mapping[str, Any]) -> str:
    fw = col["framework"]
    target = col["target"]
    if fw is not None:
        title = f"{fw[0]} {fw[1]}" if fw[0] not in target else f"{target.split('[')[0]} {fw[1]}"
    else:
        title = target.split("[")[0]
    libs = ", ".join(f"{k} {v}" for k, v in col["libraries"].items())
    opts = ", ".join(f"{k}={v}" for k, v in (col["options"] or {}).items())
    tip = f"column {col['key']}: adapter {target}" + (f"; {libs}" if libs else "")
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


def _message(col: Mapping[str, Any], scenario: str, cell: Mapping[str, Any] | None) -> str:
    """The full failure report of the column's first test of ``scenario`` with the cell's outcome
    (reports that record ``message`` per test), cut to a readable length."""
    if not cell:
        return ""
    for t in col.get("tests", ()):
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


def render_html(report: Mapping[str, Any], *, title: str | None = None,
                scenario_sources: Mapping[str, Path] | None = None) -> str:
    """The HTML page for a parsed ``ft-harness-report/1`` dict. ``scenario_sources`` maps
    ``module.py`` to its source file for the upstream references (default: the installed
    ``scenarios`` package; ``{}`` for none)."""
    if report.get("format") != "ft-harness-report/1":
        raise ValueError(f"not an ft-harness JSON report (format={report.get('format')!r})")
    cols = columns(report)
    scenarios = list(report.get("scenarios", []))
    refs = _row_refs([s["id"] for s in scenarios], scenario_sources)
    sweep = report.get("sweep") or {}
    title = title or (f"ft-harness sweep: {sweep['framework']}" if sweep.get("framework") else "ft-harness report")
    counts: dict[str, int] = {}
    for s in scenarios:
        for col in cols:
            cls, _ = cell_class(s.get("results", {}).get(col["key"]))
            counts[cls] = counts.get(cls, 0) + 1
    summary = ", ".join(f"{counts[c]} {w}" for c, w in _LEGEND if counts.get(c))
    head = "".join(_header(c) for c in cols)
    body = []
    for s in scenarios:
        sid = s["id"]
        module, _, func = sid.partition("::")
        cells = "".join(_cell(s.get("results", {}).get(c["key"]), _message(c, sid, s.get("results", {}).get(c["key"])))
                        for c in cols)
        body.append(f'<tr><td class="scn" title="{_e(sid)}"><span class="mod">{_e(module)}</span><span class="fn">{_e(func or sid).replace("_", "_<wbr>")}'
                    f'</span></td><td class="seed">{_e(s.get("seed") or "")}</td>'
                    f'<td class="refs">{_refs_html(refs.get(sid, []))}</td>{cells}</tr>')
    foot = "".join("<td></td>" if not isinstance(c["duration_s"], (int, float)) else f"<td>{c['duration_s']:.1f}s</td>"
                   for c in cols)
    legend = "".join(f'<span><i class="{c}" style="background:var(--{c[2:]})"></i>{_e(w)}</span>'
                     for c, w in _LEGEND)
    legend = legend.replace("var(--skip)", "#ececec;border:1px solid #ccc")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(title)}</title><style>{_CSS}</style></head>
<body>
<h1>{_e(title)}</h1>
<p class="sub">{_e(len(scenarios))} scenarios &times; {_e(len(cols))} columns: {_e(summary or "no results")}.
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
