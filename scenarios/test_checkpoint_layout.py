"""Baseline — a short run leaves the Hugging Face checkpoint layout the other scenarios read.

``checkpoint-N/`` directories at the save cadence, each with ``trainer_state.json`` (log history,
global step) and safetensors weights; the final output holds the model and ``trainer_state.json``.
"""

from __future__ import annotations

import pytest

from harness.oracles import assert_checkpoint_layout

from ._support import spec

pytestmark = [pytest.mark.ft_requires("sft"), pytest.mark.ft_seed("layout")]


@pytest.mark.ft_smoke("lora")
@pytest.mark.parametrize("train_type", [pytest.param("full", marks=pytest.mark.ft_requires("full")),
                                        pytest.param("lora", marks=pytest.mark.ft_requires("lora"))])
def test_checkpoint_layout(ft_adapter, tiny_assets, tmp_path, train_type, ft_device):
    result = ft_adapter.train(spec(tiny_assets, tmp_path / "run", train_type=train_type, max_steps=4, save_steps=2,
                                   device=ft_device))
    assert_checkpoint_layout(result.output_dir, result.final_dir, steps=(2, 4), train_type=train_type)
