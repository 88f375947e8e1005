"""Small helpers shared by the scenario modules (arrange steps only; asserts live in the oracles)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from harness.adapter import QUANTIZATIONS, RunSpec
from harness.models import TinyAssets


def spec(assets: TinyAssets, output_dir: Path, *, model_dir: Path | None = None, **fields: Any) -> RunSpec:
    """A RunSpec on the tiny assets; ``fields`` are what the user types on the command line."""
    return RunSpec(model_dir=Path(model_dir or assets.model_dir), output_dir=Path(output_dir),
                   dataset_dir=assets.dataset_dir, **fields)


def quant_params(*names: str | None) -> list:
    """``pytest.param`` per quantisation (``None`` = unquantised), each marked with its capability."""
    return [pytest.param(q, id=q or "none",
                         marks=[pytest.mark.ft_requires(QUANTIZATIONS[q].capability)] if q else []) for q in names]
