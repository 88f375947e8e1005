"""Gradient accumulation — k micro-batches train exactly like one batch k times larger.

The story: transformers PR #34191 (4.46.0) and its follow-ups (#34263, PR #35207, PR #35438; regressed
again in 4.47/4.48), ms-swift #2361 / #2925, LLaMA-Factory #6211 / #7443, axolotl #2039 / #2262, trl
#2175: with samples of different lengths, averaging each micro-batch's token-mean loss (and the mean of
those means over the window) reweights tokens — a token in a short micro-batch counts more than one in
a long one — so ``per_device_train_batch_size=B/k, gradient_accumulation_steps=k`` trains a different
model than ``B x 1``, silently: the loss still falls. transformers 4.46.0 also logged the loss times k.

Arrange: 16 training samples of 2 to 11 words (padded per batch), full-parameter SFT, AdamW at a
constant LR, the same seed and so the same sample order. Act: B=4 x GA 1 (the large batch), B=2 x GA 2
and B=1 x GA 4, three optimizer steps, a checkpoint every step. Assert: the per-step logged loss (same
scale: no factor k) and grad norm, and the weights after the first and after every step, equal the
large batch's within tolerances measured on the reference (beside the constants).
"""

from __future__ import annotations

import pytest

from harness.errors import ArrangementError
from harness.models import VARIED_LENGTHS as LENGTHS, write_varied_datasets
from harness.oracles import assert_runs_agree

from ._support import spec

pytestmark = [pytest.mark.ft_seed("ga"), pytest.mark.ft_requires("sft", "full")]

LARGE_BATCH = 4
STEPS = 3
LR = 1e-3
#: measured on the reference (CPU, float32, transformers 5.23): loss differs by <= 7.2e-7 absolute (1.8e-7
#: relative), grad norm by <= 2.4e-7 (1e-7 relative) between 4x1, 2x2 and 1x4; the mean-of-means bug
#: moves the loss by 1.8e-2 (4.7e-3 relative) and the grad norm by 0.54. Bound: 1e-5 relative.
LOG_RTOL = 1e-5
#: measured: weights differ by <= 7.4e-6 (1x4 vs 4x1, three AdamW steps at lr 1e-3: only summation order
#: differs); the mean-of-means bug moves them by 5.5e-3. Bound: 5e-4 (half an AdamW step).
WEIGHT_ATOL = 5e-4

SPLITS = [pytest.param((2, 2), id="2x2"), pytest.param((1, 4), id="1x4")]


@pytest.fixture(scope="module")
def ga_runs(ft_adapter, tiny_assets, tmp_path_factory, ft_device):
    root = tmp_path_factory.mktemp("grad-accumulation")
    data = write_varied_datasets(root / "data", LENGTHS)
    runs = {}

    def get(batch: int, accumulation: int):
        if (batch, accumulation) not in runs:
            run = ft_adapter.train(spec(tiny_assets, root / f"b{batch}x{accumulation}", train_type="full",
                                        max_steps=STEPS, save_steps=1, learning_rate=LR, seed=42,
                                        per_device_train_batch_size=batch, gradient_accumulation_steps=accumulation,
                                        device=ft_device).replace(dataset_dir=data))
            runs[batch, accumulation] = run.output_dir
        return runs[batch, accumulation]

    return get


@pytest.mark.ft_smoke("2x2")
@pytest.mark.parametrize("split", SPLITS)
def test_accumulation_equals_large_batch(ga_runs, split):
    batch, accumulation = split
    if batch * accumulation != LARGE_BATCH or max(LENGTHS) < 4 * min(LENGTHS):
        raise ArrangementError(f"{batch} x {accumulation} was to be the large batch {LARGE_BATCH}, over samples whose "
                               f"lengths differ at least 4x (lengths {sorted(set(LENGTHS))})")
    assert_runs_agree(ga_runs(LARGE_BATCH, 1), ga_runs(batch, accumulation), keys=("loss", "grad_norm"),
                      rtol=LOG_RTOL, weight_atol=WEIGHT_ATOL, seed="ga",
                      what=f"batch {batch} x accumulation {accumulation} vs batch {LARGE_BATCH} x 1")
