"""The upstream issues a scenario names: ``<project> #NNN`` and URLs in its docstrings, read from the
installed ``scenarios`` sources with :mod:`ast` (nothing imported; missing sources give no references)."""

from __future__ import annotations

import ast
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["UPSTREAM_REPOS", "upstream_refs", "row_refs"]

#: project names as scenario docstrings write them -> GitHub repository, for ``<project> #NNN`` links
UPSTREAM_REPOS = {
    "ms-swift": "modelscope/ms-swift", "swift": "modelscope/ms-swift",
    "transformers": "huggingface/transformers", "diffusers": "huggingface/diffusers",
    "peft": "huggingface/peft", "trl": "huggingface/trl", "accelerate": "huggingface/accelerate",
    "optimum-quanto": "huggingface/optimum-quanto", "llama-factory": "hiyouga/LLaMA-Factory",
    "llamafactory": "hiyouga/LLaMA-Factory", "simpletuner": "bghira/SimpleTuner", "llava": "haotian-liu/LLaVA",
    "lmflow": "OptimalScale/LMFlow", "qlora": "artidoro/qlora", "bitsandbytes": "bitsandbytes-foundation/bitsandbytes",
}

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


def row_refs(scenario_ids: Sequence[str], sources: Mapping[str, Path] | None) -> dict[str, list]:
    """Scenario id -> the upstream references of its function's and its module's docstrings.
    ``sources``: ``module.py`` -> source file (None: the installed ``scenarios`` package)."""
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
