"""Packing — packed samples must not see each other.

The story: trl #3067 / PR #3526, transformers PR #46634 ("loss still decreases, so it is silent"),
ms-swift #4439, LLaMA-Factory PR #4224: with packing or padding-free batching on, several samples share
one row; unless attention stops at the sample boundaries and positions restart, each sample attends to
the ones before it and trains on a context it will never see at inference.

Arrange: 16 samples of 2 to 11 words, full-parameter SFT, one batch of all 16 samples per step, so the
packed and the padded step hold the same samples however a framework packs (LLaMA-Factory packs the whole
dataset into ``cutoff_len`` blocks, not each batch). Act:
one run packed (``packing=True``: the framework's own packing / padding-free switch), one run padded
(right padding: a sample's loss is exactly its loss run alone). Assert: the per-step loss of the packed
run (the token-weighted loss of its samples) and its grad norm equal the padded run's, and so do the
weights after the first and the second optimizer step (two epochs), within tolerances measured on the reference.
Capability ``packing``: frameworks that cannot pack skip.
"""

from __future__ import annotations

import pytest

from harness.models import VARIED_LENGTHS as LENGTHS, write_varied_datasets
from harness.oracles import assert_runs_agree

from ._support import spec

pytestmark = [pytest.mark.ft_seed("packing"), pytest.mark.ft_requires("sft", "full", "packing")]

#: measured on the reference (CPU float32, transformers 5.23), one 16-sample batch per step, three steps under a
#: linear warm-up of 2: packed vs padded loss differs by 1.2e-7 relative, grad norm by 7.5e-8, the learning rate not
#: at all, weights by 2.1e-6; packing without boundaries moves the loss by 7.8e-3 relative, the grad norm by 4.2e-2
#: and the weights by 3.0e-3. Bounds:
LOG_RTOL = 1e-5
WEIGHT_ATOL = 5e-4


@pytest.mark.ft_smoke
def test_packed_training_equals_padded(ft_adapter, tiny_assets, tmp_path, ft_device):
    data = write_varied_datasets(tmp_path / "data", LENGTHS)
    runs = {}
    for packing in (False, True):
        runs[packing] = ft_adapter.train(spec(tiny_assets, tmp_path / f"packing-{packing}", train_type="full",
                                              max_steps=3, save_steps=1, learning_rate=1e-3, seed=42,
                                              lr_scheduler_type="linear", warmup_steps=2,
                                              per_device_train_batch_size=len(LENGTHS), packing=packing or None,
                                              device=ft_device).replace(dataset_dir=data)).output_dir
    assert_runs_agree(runs[False], runs[True], keys=("loss", "grad_norm", "learning_rate"), rtol=LOG_RTOL, weight_atol=WEIGHT_ATOL,
                      what="packed vs padded", seed="packing")
