"""The merged scenario x version matrix: per-version runs merged (a version without results gets its
``env:``/``run:`` cell in every row) and written as ``<framework>-sweep.{json,md,html}``."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .runs import VersionResult, _error_run

__all__ = ["merge_runs", "write_matrix", "matrix_md"]


def merge_runs(runs: Sequence[Any]) -> list[Any]:
    """Per-version runs -> the runs of the merged matrix: a version without results (its one test is
    ``<environment>``, outcome ``error``, reason ``env: ...``/``run: ...``) gets that cell in every
    scenario row the other versions have (keeping the row's seed)."""
    from ..report import TestOutcome

    seeds: dict[str, str | None] = {}
    for run in runs:
        for t in run.tests:
            if t.scenario != "<environment>":
                seeds.setdefault(t.scenario, t.seed)
    out = []
    for run in runs:
        if seeds and len(run.tests) == 1 and run.tests[0].scenario == "<environment>":
            t = run.tests[0]
            run = dataclasses.replace(run, tests=[TestOutcome(s, s, "error", t.reason, 0.0, seed)
                                                  for s, seed in seeds.items()])
        out.append(run)
    return out


def _result_runs(results: Sequence[VersionResult]) -> list[Any]:
    from ..report import load_runs

    runs = []
    for res in results:
        if res.report is not None:
            try:
                runs += load_runs(res.report)
                continue
            except (OSError, ValueError, KeyError, TypeError) as exc:
                res.error = f"run: unreadable report {res.report}: {exc}"
        runs.append(_error_run(res))
    return merge_runs(runs)


def write_matrix(results: Sequence[VersionResult], out: Path, framework: str, *, extra: Mapping[str, Any]) -> dict:
    """``<out>/<framework>-sweep.{json,md,html}``; returns the merged JSON dict."""
    from ..report import render

    runs = _result_runs(results)
    data = json.loads(render(runs, "json"))
    data["sweep"] = dict(extra)
    (out / f"{framework}-sweep.json").write_text(json.dumps(data, indent=2, sort_keys=True), encoding="utf-8")
    md = matrix_md(data) + "\n" + _timings_md(results, extra) + "\n"
    (out / f"{framework}-sweep.md").write_text(md, encoding="utf-8")
    try:
        from ..html_report import render_html

        (out / f"{framework}-sweep.html").write_text(render_html(data), encoding="utf-8")
    except ImportError:  # pragma: no cover - html_report is part of the package
        pass
    return data


def _timings_md(results: Sequence[VersionResult], extra: Mapping[str, Any]) -> str:
    lines = ["| version | environment | env time | scenario run | note |", "|---|---|---|---|---|"]
    for r in results:
        env = r.env
        if env is None:
            lines.append(f"| {r.pins.cell} | — | — | — | {r.error or ''} |")
            continue
        how = ("reused" if env.cached else "built") if env.ok else "FAILED"
        note = (r.error or "").replace("|", "/")
        lines.append(f"| {r.pins.cell} | {how} | {env.build_s:.1f}s | {r.run_s:.1f}s | {note} |")
    if "wall_s" in extra:
        lines.append(f"\nwhole sweep: {extra['wall_s']:.1f}s wall ({extra.get('jobs', 1)} job(s))")
    return "\n".join(lines)


def matrix_md(data: Mapping[str, Any]) -> str:
    """The merged matrix as markdown: rows scenarios, one column per version (the swept distribution's version in the
    header: the framework's, or a library's such as TRL under the transformers adapter), outcome words; env/run
    failures keep their reason."""
    from ..html_report import cell_class, columns

    cols = columns(data)
    swept = str((data.get("sweep") or {}).get("distribution") or "")
    heads = []
    for c in cols:
        fw = c["framework"]
        opts = ",".join(f"{k}={v}" for k, v in (c["options"] or {}).items())
        libraries = c["libraries"] or {}
        # the swept distribution's version: the framework's, or a library's under another adapter (TRL under the plain
        # transformers adapter)
        version = libraries[swept] if swept in libraries and not (fw and fw[0] == swept) else (fw[1] if fw else None)
        heads.append((version or c["target"]) + (f" [{opts}]" if opts else ""))
    lines = ["| scenario | seed | " + " | ".join(heads) + " |", "|---|---|" + "---|" * len(cols)]
    for s in data.get("scenarios", []):
        cells = []
        for c in cols:
            cell = s.get("results", {}).get(c["key"])
            _, word = cell_class(cell)
            reason = str((cell or {}).get("reason", ""))
            cells.append(reason if reason.startswith(("env:", "run:")) else word)
        row = [s["id"], s.get("seed") or ""] + cells
        lines.append("| " + " | ".join(x.replace("|", "\\|") for x in row) + " |")
    return "\n".join(lines) + "\n"
