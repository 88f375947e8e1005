"""Seed 004 — the best evaluated step must be on disk.

The story (ms-swift #3314, RLHF): ``eval_steps=50, save_steps=200``; the best evaluation was at step
1050, never a save step, so the best model was never saved. Its upstream cousins: rotation by
``save_total_limit`` deletes the best checkpoint (transformers #39476 with save_steps=3,
eval_steps=2; ms-swift #9780), and ``best_model_checkpoint`` naming a deleted directory (#35609).

Correct behaviour: after training, a checkpoint of the best evaluated step exists, survives
rotation, and re-evaluating it reproduces the logged metric; for any cadence and limit.

The tiny data makes the eval loss U-shaped (train counts up, eval counts down): the best lands
mid-run, between two saves — the seed's situation scaled down.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from harness.oracles import assert_best_checkpoint_kept, read_log_history

from ._support import spec

REAL_RUN_PHASES = (Phase.explicit, Phase.generate)  # derandomized, no shrinking: each example is a real run

pytestmark = [pytest.mark.ft_seed("004"), pytest.mark.ft_requires("sft", "full", "best-checkpoint")]

LR = 1.5e-3


def test_seed_best_between_saves_is_kept(ft_adapter, tiny_assets, tmp_path, ft_device):
    """eval every 5, save every 20 (the seed's 50/200 scaled down): the best, at a non-save step, is kept."""
    result = ft_adapter.train(spec(tiny_assets, tmp_path / "run", train_type="full", max_steps=40, eval_steps=5,
                                   save_steps=20, learning_rate=LR, device=ft_device))
    evals = {int(h["step"]): h["eval_loss"] for h in read_log_history(result.output_dir) if "eval_loss" in h}
    best = min(evals, key=lambda s: (evals[s], s))
    if best % 20 == 0 or best == 40:
        # the framework's own eval formula (chat template, EOS) moved the best onto the save cadence:
        # this run cannot reproduce the seed; the other tests here still judge the cadence
        pytest.skip(f"arrange: this framework's eval loss is lowest at step {best}, a save step ({evals}); "
                    f"the seed needs the best between two saves")
    assert_best_checkpoint_kept(result.output_dir, tiny_assets.dataset_dir)


def test_rotation_keeps_best(ft_adapter, tiny_assets, tmp_path, ft_device):
    """transformers #39476: save_steps=3, eval_steps=2, save_total_limit=1 must not rotate the best away."""
    result = ft_adapter.train(spec(tiny_assets, tmp_path / "run", train_type="full", max_steps=30, eval_steps=2,
                                   save_steps=3, save_total_limit=1, learning_rate=LR, device=ft_device))
    assert_best_checkpoint_kept(result.output_dir, tiny_assets.dataset_dir, save_total_limit=1)


@pytest.mark.ft_metric("eval_accuracy")
def test_maximised_metric(ft_adapter, tiny_assets, tmp_path, ft_device):
    """The same guarantee for a metric to maximise (next-token accuracy on the eval set)."""
    result = ft_adapter.train(spec(tiny_assets, tmp_path / "run", train_type="full", max_steps=30, eval_steps=3,
                                   save_steps=10, save_total_limit=1, metric="eval_accuracy",
                                   greater_is_better=True, learning_rate=LR, device=ft_device))
    logged_as = ft_adapter.metric_name("eval_accuracy")  # e.g. ms-swift logs it as eval_token_acc
    assert_best_checkpoint_kept(result.output_dir, tiny_assets.dataset_dir, metric=logged_as,
                                greater_is_better=True, save_total_limit=1)


@settings(max_examples=8, deadline=None, derandomize=True, database=None, phases=REAL_RUN_PHASES,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(eval_steps=st.integers(1, 5), save_steps=st.integers(1, 12), limit=st.integers(0, 2),
       max_steps=st.integers(6, 16))
def test_any_cadence_keeps_best(ft_adapter, tiny_assets, ft_device, eval_steps, save_steps, limit, max_steps):
    with tempfile.TemporaryDirectory() as tmp:
        result = ft_adapter.train(spec(tiny_assets, Path(tmp) / "run", train_type="full", max_steps=max_steps,
                                       eval_steps=eval_steps, save_steps=save_steps, save_total_limit=limit,
                                       learning_rate=LR, device=ft_device))
        assert_best_checkpoint_kept(result.output_dir, tiny_assets.dataset_dir, save_total_limit=limit)
