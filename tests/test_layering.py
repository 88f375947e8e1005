"""The rooms of ft-harness and who may import whom (README "Architecture").

The judges must share no code with the judged: an oracle that imported the reference's notion of
"best" or of "where the LoRA is" would be fooled by the same bug as the reference. Every import
statement — module level, inside functions, relative or absolute, and ``import`` strings inside
code templates such as ms-swift's plugin file — is parsed with :mod:`ast` and checked against
:data:`RULES`.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: the ground floor: neutral knowledge everyone may use; imports nothing but itself
GROUND = ("harness.adapter", "harness.errors", "harness.layout", "harness.task", "harness.runtime", "harness.kit", "harness.hf",
          "harness.probes", "harness.models", "harness.diffusion", "harness.strategies")
JUDGED = ("harness.reference", "harness.adapters", "harness.mutants")
UPPER = ("harness.plugin", "harness.report", "harness.cli", "harness.sweep", "harness.sweep_pins", "harness.html_report")

#: room (module prefix) -> module prefixes it must never import
RULES: dict[str, tuple[str, ...]] = {
    "harness.oracles": JUDGED + UPPER,
    "scenarios": JUDGED + UPPER,
    "harness.faults": JUDGED + ("harness.oracles",) + UPPER,
    "harness.reference": ("harness.adapters", "harness.mutants", "harness.oracles") + UPPER,
    "harness.adapters": ("harness.reference", "harness.mutants", "harness.oracles") + UPPER,
    "harness.mutants": ("harness.adapters", "harness.oracles") + UPPER,
    "harness.plugin": JUDGED + ("harness.oracles", "harness.cli"),
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
    assert not homeless, f"modules in no room of RULES (add them to the README's Architecture table): {homeless}"


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
