"""Print the detection matrix and the one-line mutant list of ``docs/detection.md`` as Markdown.

    python -m harness.mutants > /tmp/matrix.md

The matrix is :data:`harness.mutants.MUTANTS` (each class's ``fails``) against the scenario modules; each list
line is a mutant's ``fails`` and the first paragraph of its docstring. ``tests/test_detection.py`` checks that the
docs hold exactly this text, so a new mutant or a changed ``fails`` updates the docs by one command.
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

from . import _ALL, MUTANTS


def scenario_modules() -> list[str]:
    import scenarios

    return sorted(p.stem for p in Path(scenarios.__file__).parent.glob("test_*.py"))


def matrix() -> str:
    modules = scenario_modules()
    head = ["scenario module", "reference", *MUTANTS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for module in modules:
        cells = ["**FAIL**" if module in fails else "pass" for fails in MUTANTS.values()]
        lines.append("| " + " | ".join([f"`{module}`", "pass", *cells]) + " |")
    return "\n".join(lines)


def mutant_lines() -> str:
    out = []
    for cls in _ALL:
        fails = ", ".join(f"`{m}`" for m in cls.fails) or "nothing: a correct control"
        first = " ".join(inspect.getdoc(cls).split("\n\n")[0].split())
        out.append(f"- `{cls.__name__}` (fails: {fails}): {first}")
    return "\n".join(out)


def main() -> int:
    sys.stdout.write(f"## The matrix\n\n{matrix()}\n\n## The mutants, one line each\n\n{mutant_lines()}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
