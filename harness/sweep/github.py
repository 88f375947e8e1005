"""The GitHub Actions ``strategy.matrix`` for a sweep: one job per release (``examples/github-sweep.yml``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .envs import select_pins

__all__ = ["github_matrix"]


def github_matrix(framework: str, versions: Sequence[str], *, python: str | None = None,
                  options: Mapping[str, str] | None = None, table: Mapping[str, Any] | None = None) -> dict:
    """GitHub Actions ``strategy.matrix`` for one job per version (``fromJSON`` of the printed line)."""
    include = []
    for v in versions:
        pins = select_pins(framework, v, python=python, table=table)
        include.append({"framework": pins.framework, "version": v, "python": pins.python,
                        "adapter": pins.adapter_spec(options)})
    return {"include": include}
