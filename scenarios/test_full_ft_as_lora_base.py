"""Seed 003 — every full fine-tune checkpoint must be a self-contained model.

The story (LLaMA-Factory): a full fine-tuning checkpoint used as ``model_name_or_path`` for LoRA
fails to load — the directory lacks config / structure files ("does not appear to have a file named
config.json": PEFT #523, LMFlow #104, qlora #175). The usual cause is an intermediate save that
holds weights only.

Correct behaviour: each ``checkpoint-N`` and the final output load on their own (config, weights,
tokenizer, generation config); LoRA on them starts from *their* weights; a broken base directory
fails fast with an error naming the missing or broken file.
"""

from __future__ import annotations

import json
import shutil

import pytest

from harness.layout import weight_files
from harness.oracles import assert_adapter_only_save, assert_lora_base_is, assert_self_contained

from ._support import spec

pytestmark = [pytest.mark.ft_seed("003"), pytest.mark.ft_requires("sft", "full")]


@pytest.fixture(scope="module")
def full_run(ft_adapter, tiny_assets, tmp_path_factory, ft_device):
    """Arrange: full SFT with an intermediate checkpoint (step 2) and a final output (step 4)."""
    out = tmp_path_factory.mktemp("full-sft")
    return ft_adapter.train(spec(tiny_assets, out, train_type="full", max_steps=4, save_steps=2,
                                 learning_rate=3e-3, device=ft_device))


def _pick(run, which):
    return run.checkpoints[0] if which == "intermediate" else run.final_dir


@pytest.mark.ft_smoke("intermediate")
@pytest.mark.parametrize("which", ["intermediate", "final"])
def test_checkpoint_is_self_contained(full_run, tiny_assets, which):
    assert_self_contained(_pick(full_run, which), tiny_assets.model_dir)


@pytest.mark.ft_smoke("intermediate")
@pytest.mark.ft_requires("lora")
@pytest.mark.parametrize("which", ["intermediate", "final"])
def test_lora_trains_on_full_checkpoint(ft_adapter, full_run, tiny_assets, tmp_path, which, ft_device):
    """The seed end to end: LoRA with the full-FT checkpoint as base starts from that checkpoint's weights."""
    base = _pick(full_run, which)
    result = ft_adapter.train(spec(tiny_assets, tmp_path / "lora", model_dir=base, train_type="lora", max_steps=2,
                                   device=ft_device))
    assert_adapter_only_save(result.final_dir, seed="003")
    assert_lora_base_is(result.final_dir, base)


def _break(directory, how):
    if how in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (directory / how).unlink()
        return how
    weights = weight_files(directory)  # model.safetensors, or (a sharded save) the shards its index lists
    if how == "weights":
        weights[-1].unlink()
        return weights[-1].name
    if how == "truncated-safetensors":
        data = weights[0].read_bytes()
        weights[0].write_bytes(data[: len(data) // 2])
        return weights[0].name
    if how == "config-does-not-fit-weights":
        cfg = json.loads((directory / "config.json").read_text())
        cfg["num_hidden_layers"] = cfg["num_hidden_layers"] + 1
        (directory / "config.json").write_text(json.dumps(cfg))
        return "num_hidden_layers"
    raise ValueError(how)


BROKEN = ["config.json", "tokenizer.json", "tokenizer_config.json", "weights", "truncated-safetensors",
          "config-does-not-fit-weights"]


@pytest.mark.ft_requires("lora")
@pytest.mark.parametrize("how", BROKEN)
def test_broken_base_fails_naming_the_file(ft_adapter, full_run, tiny_assets, tmp_path, how, ft_device):
    """A base dir with a missing or broken piece fails fast, naming the directory and the piece."""
    base = tmp_path / "broken-base"
    shutil.copytree(full_run.final_dir, base, ignore=shutil.ignore_patterns("checkpoint-*"))
    named = _break(base, how)
    with pytest.raises(Exception) as excinfo:
        ft_adapter.train(spec(tiny_assets, tmp_path / "lora", model_dir=base, train_type="lora", max_steps=1,
                              device=ft_device))
    message = str(excinfo.value)
    assert named in message and "broken-base" in message, (
        f"seed 003: a base with {how} should fail naming {named!r} and the directory; got "
        f"{type(excinfo.value).__name__}: {message[:300]}")
