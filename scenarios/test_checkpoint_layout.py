"""Baseline — a short run leaves the Hugging Face checkpoint layout the other scenarios read.

``checkpoint-N/`` directories at the save cadence, each with ``trainer_state.json`` (log history,
global step) and safetensors weights; the final output holds the model and ``trainer_state.json``.
"""

from __future__ import annotations

import json

import pytest

from harness.layout import read_safetensors_header, weight_files

from ._support import spec

pytestmark = [pytest.mark.ft_requires("sft")]


@pytest.mark.parametrize("train_type", [pytest.param("full", marks=pytest.mark.ft_requires("full")),
                                        pytest.param("lora", marks=pytest.mark.ft_requires("lora"))])
def test_checkpoint_layout(ft_adapter, tiny_assets, tmp_path, train_type, ft_device):
    result = ft_adapter.train(spec(tiny_assets, tmp_path / "run", train_type=train_type, max_steps=4, save_steps=2,
                                   device=ft_device))
    names = sorted(p.name for p in result.output_dir.iterdir() if p.name.startswith("checkpoint-"))
    assert names == ["checkpoint-2", "checkpoint-4"], f"expected checkpoints at steps 2 and 4, found {names}"
    def weights(directory):
        """The weight files: a full model's (model.safetensors, or an index and its shards) or the adapter's."""
        if train_type == "full":
            return weight_files(directory)
        return [directory / "adapter_model.safetensors"] if (directory / "adapter_model.safetensors").is_file() else []

    for name in names:
        ckpt = result.output_dir / name
        state = json.loads((ckpt / "trainer_state.json").read_text())
        assert state["global_step"] == int(name.split("-")[1]), f"{name}/trainer_state.json has the wrong global_step"
        assert [h["step"] for h in state["log_history"] if "loss" in h], f"{name}: no losses logged"
        assert weights(ckpt), f"{name} holds no {train_type} weights"
        for path in weights(ckpt):
            assert path.is_file() and read_safetensors_header(path), f"{name}/{path.name} is missing or holds no tensors"
    assert weights(result.final_dir), f"final output lacks {train_type} weights"
