"""Seed 001 — a full-parameter run must save the whole model.

The story (ms-swift): GRPO full-parameter training of Qwen2.5-VL-7B, started from the output of a
LoRA SFT run, saved ~100 MB checkpoints instead of ~14 GB — the inherited args.json said
``train_type: lora``, so LoRA was trained and only the adapter was saved. The same truncation hits
plain SFT, and sharded (FSDP/ZeRO-3) saves that keep one rank's part (LLaVA #1245).

Correct behaviour: every checkpoint and the final output of a full-parameter run holds every tensor
of the model with its shape and bytes, no adapter files, and trained (changed) weights.
"""

from __future__ import annotations

import pytest

from harness.oracles import assert_full_model_saved, start_weights

from ._support import spec

pytestmark = [pytest.mark.ft_seed("001")]


@pytest.fixture(scope="module")
def lora_sft_output(ft_adapter, tiny_assets, tmp_path_factory, ft_device):
    """Arrange: a LoRA SFT run; its output's args.json says train_type=lora."""
    if not {"sft", "lora"} <= set(ft_adapter.capabilities):
        pytest.skip(f"adapter {ft_adapter.name!r} lacks capability 'sft'/'lora'")
    out = tmp_path_factory.mktemp("lora-sft")
    return ft_adapter.train(spec(tiny_assets, out, method="sft", train_type="lora", max_steps=2,
                                 learning_rate=1e-2, device=ft_device))


@pytest.mark.ft_smoke
@pytest.mark.ft_requires("grpo", "full", "lora")
def test_seed_grpo_full_from_lora_output_saves_whole_model(ft_adapter, lora_sft_output, tiny_assets, tmp_path,
                                                           ft_device):
    """Act: ``grpo --train_type full`` on the LoRA output. Assert: every save is the whole, trained model."""
    result = ft_adapter.train(spec(tiny_assets, tmp_path / "grpo", model_dir=lora_sft_output.final_dir,
                                   method="grpo", train_type="full", max_steps=2, save_steps=1,
                                   learning_rate=1e-2, device=ft_device))
    start = start_weights(lora_sft_output.final_dir)
    assert result.checkpoints, "save_steps=1 must leave checkpoints on disk"
    for directory in (*result.checkpoints, result.final_dir):
        assert_full_model_saved(directory, tiny_assets.model_dir, start)


@pytest.mark.ft_requires("sft", "full")
def test_sft_full_saves_whole_model(ft_adapter, tiny_assets, tmp_path, ft_device):
    """The same truncation in plain SFT: a full-parameter run's saves are complete."""
    result = ft_adapter.train(spec(tiny_assets, tmp_path / "sft", train_type="full", max_steps=2, save_steps=1,
                                   device=ft_device))
    start = start_weights(tiny_assets.model_dir)
    for directory in (*result.checkpoints, result.final_dir):
        assert_full_model_saved(directory, tiny_assets.model_dir, start)
