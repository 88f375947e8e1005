"""The rooms of ft-harness and who may import whom (docs/architecture.md), and no import cycle anywhere.

The judges must share no code with the judged: an oracle that imported the reference's notion of
"best" or of "where the LoRA is" would be fooled by the same bug as the reference. Every import
statement — module level, inside functions, relative or absolute, and ``import`` strings inside
code templates such as ms-swift's plugin file — is parsed with :mod:`ast` and checked against
:data:`RULES`. A second rule parses the same way for the *runtime* import graph (module level and inside functions;
``if TYPE_CHECKING:`` blocks and code templates excluded) and requires it to have no cycle: a cycle is an import-order
accident waiting to happen, and a sign that two modules know each other's business.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: the ground floor: neutral knowledge everyone may use; imports nothing but itself
GROUND = ("harness.spec", "harness.adapter", "harness.errors", "harness.layout", "harness.task", "harness.runtime", "harness.kit", "harness.hf",
          "harness.probes", "harness.models", "harness.diffusion", "harness.strategies")
JUDGED = ("harness.reference", "harness.adapters", "harness.mutants")
UPPER = ("harness.plugin", "harness.report", "harness.cli", "harness.sweep", "harness.check", "harness.html_report")

#: room (module prefix) -> module prefixes it must never import
RULES: dict[str, tuple[str, ...]] = {
    "harness.oracles": JUDGED + UPPER,
    "scenarios": JUDGED + UPPER,
    "harness.faults": JUDGED + ("harness.oracles",) + UPPER,
    "harness.reference": ("harness.adapters", "harness.mutants", "harness.oracles") + UPPER,
    "harness.adapters": ("harness.reference", "harness.mutants", "harness.oracles") + UPPER,
    "harness.mutants": ("harness.adapters", "harness.oracles") + UPPER,
    "harness.plugin": JUDGED + ("harness.oracles", "harness.cli", "harness.check"),
    # `ft-harness check` reads configs and runs the scenarios in a subprocess: it judges nothing itself
    "harness.check": JUDGED + ("harness.oracles", "harness.faults", "scenarios", "harness.cli"),
    **{room: JUDGED + ("harness.oracles", "harness.faults", "scenarios") + UPPER for room in GROUND},
}


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(source: str, module: str, is_package: bool = False) -> set[str]:
    """Every module ``source`` imports (absolute names), including imports inside functions and
    ``import``/``from`` lines inside string literals (code written for another process)."""
    found: set[str] = set()
    package = module if is_package else module.rpartition(".")[0]

    def absolute(level: int, name: str | None) -> str:
        if level == 0:
            return name or ""
        base = package.split(".")
        base = base[: len(base) - (level - 1)] if level > 1 else base
        return ".".join(base + ([name] if name else []))

    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            target = absolute(node.level, node.module)
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)  # `from harness import reference`
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and "import" in node.value:
            for m in re.finditer(r"^\s*(?:from\s+([\w.]+)\s+import|import\s+([\w.]+))", node.value, re.M):
                found.add(m.group(1) or m.group(2))
    return found


def violations(module: str, imported: set[str]) -> list[str]:
    out = []
    for room, forbidden in RULES.items():
        if module != room and not module.startswith(room + "."):
            continue
        for name in sorted(imported):
            for bad in forbidden:
                if (name == bad or name.startswith(bad + ".")) and not (module == bad or module.startswith(bad + ".")):
                    out.append(f"{module} imports {name} (room {room!r} may not import {bad!r})")
    return out


def project_modules() -> list[Path]:
    return sorted(p for d in ("harness", "scenarios") for p in (ROOT / d).rglob("*.py"))


@pytest.mark.parametrize("path", project_modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_module_respects_its_room(path):
    module = module_name(path)
    found = violations(module, imports_of(path.read_text(encoding="utf-8"), module, path.name == "__init__.py"))
    assert not found, "layering violated:\n  " + "\n  ".join(found)


def test_every_module_is_in_a_room():
    rooms = tuple(RULES) + UPPER + ("harness",)
    homeless = [module_name(p) for p in project_modules()
                if not any(module_name(p) == r or module_name(p).startswith(r + ".") for r in rooms)]
    assert not homeless, f"modules in no room of RULES (add them to docs/architecture.md): {homeless}"


# ---------------------------------------------------------------------- the checker itself can fail
@pytest.mark.parametrize("module, source, is_package", [
    ("harness.oracles", "from .reference.policy import best_step\n", False),
    ("harness.oracles", "def f():\n    import harness.adapters.swift\n", False),
    ("scenarios.test_x", "from harness.reference import io\n", False),
    ("scenarios.test_x", "from harness import mutants\n", False),
    ("harness.adapters.swift", "from ..reference.args import DEFAULTS\n", False),
    ("harness.adapters.swift", "PLUGIN = '''\nfrom harness.reference.trainer import counting_reward\n'''\n", False),
    ("harness.reference.adapter", "from ..adapters._common import cpu_threads\n", False),
    ("harness.reference.distributed", "from ..oracles import read_log_history\n", False),
    ("harness.layout", "from .oracles import SEEDS\n", False),
    ("harness.task", "from .reference.trainer import collate\n", False),
    ("harness.reference", "from ..adapters import swift\n", True),
])
def test_checker_flags_a_wrong_import(module, source, is_package):
    assert violations(module, imports_of(source, module, is_package)), f"{module}: {source!r} was not flagged"


@pytest.mark.parametrize("module, source", [
    ("harness.oracles", "from .layout import list_checkpoints\nfrom .task import TASK_DEFAULTS\n"),
    ("harness.mutants", "from .reference import ReferenceAdapter\n"),
    ("harness.reference.adapter", "from . import args\nfrom ..runtime import cpu_threads\n"),
    ("scenarios.test_x", "from harness.oracles import OracleFailure\nfrom harness.faults import run_killed\n"),
])
def test_checker_allows_a_right_import(module, source):
    assert not violations(module, imports_of(source, module))


# ---------------------------------------------------------------------- no runtime import cycle
def runtime_imports(source: str, module: str, is_package: bool, known: set[str]) -> dict[str, int]:
    """The project modules ``module`` imports when it runs, each with the line of its first import: module level and
    inside functions, not inside ``if TYPE_CHECKING:`` and not in code templates. ``from pkg import name`` counts as
    an import of ``pkg.name`` when that is a module, else of ``pkg``; a module's own parent packages are already
    imported when it runs and are not edges."""
    package = module if is_package else module.rpartition(".")[0]
    tree = ast.parse(source)
    skipped = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
               for stmt in block.body for n in ast.walk(stmt)}
    ancestors = {".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 1)}
    if is_package:
        ancestors.add(module)

    def owner(name: str) -> str | None:
        while name and name not in known:
            name = name.rpartition(".")[0]
        return name or None

    found: dict[str, int] = {}
    for node in ast.walk(tree):
        if id(node) in skipped or not isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            parts = package.split(".")
            base = parts[: len(parts) - (node.level - 1)] if node.level > 1 else parts
            target = ".".join(base + ([node.module] if node.module else [])) if node.level else node.module
            targets = [f"{target}.{a.name}" if f"{target}.{a.name}" in known else target for a in node.names]
        for target in targets:
            mod = owner(target)
            if mod and mod != module and mod not in ancestors:
                found.setdefault(mod, node.lineno)
    return found


def import_cycles(graph: Mapping[str, Mapping[str, int]]) -> list[list[str]]:
    """One cycle through each strongly connected group of two or more modules (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(_one_cycle(graph, group) for group in groups)


def _one_cycle(graph: Mapping[str, Mapping[str, int]], group: list[str]) -> list[str]:
    """A shortest path from the group's first module back to itself, inside the group (breadth first)."""
    start, members = group[0], set(group)
    paths = {start: [start]}
    queue = [start]
    while queue:
        v = queue.pop(0)
        for w in sorted(graph.get(v, {})):
            if w == start:
                return paths[v] + [start]
            if w in members and w not in paths:
                paths[w] = paths[v] + [w]
                queue.append(w)
    return group


def format_cycle(graph: Mapping[str, Mapping[str, int]], cycle: list[str]) -> str:
    """``a (line 3) -> b (line 9) -> a``: each arrow with the line of the importing statement."""
    return " -> ".join(f"{a} (line {graph[a][b]})" for a, b in zip(cycle, cycle[1:])) + f" -> {cycle[-1]}"


def project_graph() -> dict[str, dict[str, int]]:
    paths = {module_name(p): p for p in project_modules()}
    known = set(paths)
    return {m: runtime_imports(p.read_text(encoding="utf-8"), m, p.name == "__init__.py", known)
            for m, p in paths.items()}


def test_no_runtime_import_cycle():
    graph = project_graph()
    cycles = import_cycles(graph)
    assert not cycles, "runtime import cycles:\n  " + "\n  ".join(format_cycle(graph, c) for c in cycles)


def _graph_of(sources: Mapping[str, str]) -> dict[str, dict[str, int]]:
    known = {m.removesuffix(".__init__") for m in sources}
    return {m.removesuffix(".__init__"): runtime_imports(src, m.removesuffix(".__init__"), m.endswith(".__init__"),
                                                          known) for m, src in sources.items()}


@pytest.mark.parametrize("sources, expected", [
    # the cycle issue 30 found: the contract's default evaluate() -> hf -> task -> the contract
    ({"h.adapter": "def evaluate():\n    from .hf import evaluate_saved\n",
      "h.hf": "from .task import quantization_config\n", "h.task": "from .adapter import QUANTIZATIONS\n"},
     ["h.adapter", "h.hf", "h.task", "h.adapter"]),
    # a cycle through a package face, closed by an import inside a function
    ({"h.plugin": "from .report import ResultCollector\n", "h.report.__init__": "from .collect import ResultCollector\n",
      "h.report.collect": "def f():\n    from ..plugin import get_adapter\n"},
     ["h.plugin", "h.report", "h.report.collect", "h.plugin"]),
], ids=["through-a-function", "through-a-package-face"])
def test_cycle_checker_flags_a_cycle(sources, expected):
    graph = _graph_of(sources)
    assert import_cycles(graph) == [expected]
    assert "(line " in format_cycle(graph, expected)


@pytest.mark.parametrize("sources", [
    {"h.a": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .b import B\n", "h.b": "from .a import A\n"},
    {"h.p.__init__": "from .x import X\nfrom .y import Y\n", "h.p.x": "from . import y\n", "h.p.y": "Y = 1\n"},
    {"h.a": "T = '''\nfrom h.b import x\n'''\n", "h.b": "from h.a import T\n"},
], ids=["type-checking-only", "package-face-and-siblings", "code-template"])
def test_cycle_checker_allows_no_cycle(sources):
    assert import_cycles(_graph_of(sources)) == []
