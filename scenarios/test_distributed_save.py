"""Distributed — a sharded full-parameter run must save the whole model (seed 001's symptom, LLaVA #1245).

FSDP / ZeRO-3 shard every parameter across ranks; a save that writes one rank's shard (or only the
trainable part) produces a checkpoint that looks fine and is a fraction of the model. Here a
full-parameter SFT runs on 2 CPU processes (``torchrun``, gloo) with the model sharded, and on 1
process with the same global batch. Every checkpoint of the 2-process run must hold the whole model
(completeness oracle), and its final weights must equal the single-process run's within
``ATOL = 1e-5`` — the runs do the same float32 math except for the order of the gradient
reduction across ranks (measured difference here: ~1e-7).
"""

from __future__ import annotations

import pytest

from harness.oracles import assert_full_model_saved, assert_same_weights, start_weights

from ._support import spec

# slow: two torchrun processes import torch & co. again (~15 s on 2 cores)
pytestmark = [pytest.mark.ft_seed("dist"), pytest.mark.ft_requires("sft", "full", "distributed"), pytest.mark.ft_slow]

ATOL = 1e-5
GLOBAL_BATCH = 8


@pytest.mark.ft_smoke
def test_sharded_full_save_is_whole_and_matches_single_process(ft_adapter, tiny_assets, tmp_path):
    common = dict(train_type="full", max_steps=4, save_steps=2, learning_rate=1e-3)
    single = ft_adapter.train(spec(tiny_assets, tmp_path / "single", per_device_train_batch_size=GLOBAL_BATCH,
                                   **common))
    sharded = ft_adapter.train(spec(tiny_assets, tmp_path / "sharded", world_size=2,
                                    per_device_train_batch_size=GLOBAL_BATCH // 2, **common))
    assert [c.name for c in sharded.checkpoints] == ["checkpoint-2", "checkpoint-4"], sharded.checkpoints
    start = start_weights(tiny_assets.model_dir)
    for directory in (*sharded.checkpoints, sharded.final_dir):
        assert_full_model_saved(directory, tiny_assets.model_dir, start, seed="dist")
    assert_same_weights(sharded.final_dir, single.final_dir, atol=ATOL)
