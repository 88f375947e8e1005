"""Small helpers shared by the scenario modules (arrange steps only; asserts live in the oracles)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from harness.adapter import QUANTIZATIONS, Adapter, RunSpec
from harness.models import TinyAssets
from harness.oracles import EVAL_RTOL, EVAL_RTOL_CUDA, Evaluator


def spec(assets: TinyAssets, output_dir: Path, *, model_dir: Path | None = None, **fields: Any) -> RunSpec:
    """A RunSpec on the tiny assets; ``fields`` are what the user types on the command line."""
    return RunSpec(model_dir=Path(model_dir or assets.model_dir), output_dir=Path(output_dir),
                   dataset_dir=assets.dataset_dir, **fields)


def device_tolerance(device: str, gpu_rtol: float) -> dict[str, float]:
    """Oracle tolerances: exact on CPU (the same float32 kernels in the same order), ``gpu_rtol`` (atol 1e-6)
    on CUDA, whose kernels are not bit-deterministic."""
    return dict(rtol=gpu_rtol, atol=1e-6) if device == "cuda" else {}


def evaluator(adapter: Any, run: RunSpec) -> Evaluator:
    """How the oracles re-evaluate what ``run`` saved: the adapter's ``evaluate`` bound to the run, marked as the
    framework's own formula when the adapter overrides the contract's default."""
    own = getattr(type(adapter), "evaluate", Adapter.evaluate) is not Adapter.evaluate
    return Evaluator(lambda directory: adapter.evaluate(directory, run), own_formula=own, name=adapter.name)


def eval_rtol(device: str) -> float:
    """The oracles' measured re-evaluation tolerance for ``device`` (see :data:`harness.oracles.EVAL_RTOL`)."""
    return EVAL_RTOL_CUDA if device == "cuda" else EVAL_RTOL


def captured_output(capfd, caplog, recwarn) -> str:
    """Everything a call printed (this process and its forks), logged and warned since the fixtures were last
    read, as one text: where a scenario accepts "warns, naming X"."""
    captured = capfd.readouterr()
    return "\n".join([captured.out, captured.err, caplog.text, *(f"warning: {w.message}" for w in recwarn)])


def quant_params(*names: str | None) -> list:
    """``pytest.param`` per quantisation (``None`` = unquantised), each marked with its capability."""
    return [pytest.param(q, id=q or "none",
                         marks=[pytest.mark.ft_requires(QUANTIZATIONS[q].capability)] if q else []) for q in names]


def require_resume_from_elsewhere(adapter: Adapter) -> None:
    """Skip, saying why, when the adapter's framework resumes only its own output dir's newest checkpoint
    (``resume_points = "newest"``): a resume from a copied or another run's checkpoint cannot be expressed there."""
    if adapter.resume_points == "newest":
        pytest.skip(f"{adapter.name} resumes only the newest checkpoint of its own output dir (resume_points='newest'): "
                    f"this test resumes from a copied or another run's checkpoint")
