"""Oracles judge files on disk: each must fail, with a message that says expected vs found."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from harness.models import build_assets
from harness.oracles import (OracleFailure, assert_adapter_only_save, assert_checkpoints_complete,
                             assert_full_model_saved, assert_lora_base_is, assert_self_contained)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return build_assets(tmp_path_factory.mktemp("o"))


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def _perturb(directory):
    tensors = load_file(str(directory / "model.safetensors"))
    save_file({k: v + 0.01 for k, v in tensors.items()}, str(directory / "model.safetensors"))


def test_full_save_passes_on_complete_trained_model(assets, tmp_path):
    trained = _copy(assets.model_dir, tmp_path / "checkpoint-4")
    _perturb(trained)
    assert_full_model_saved(trained, assets.model_dir, load_file(str(assets.model_dir / "model.safetensors")))


def test_full_save_catches_adapter_only(assets, tmp_path):
    ckpt = tmp_path / "checkpoint-4"
    ckpt.mkdir()
    (ckpt / "adapter_config.json").write_text("{}")
    save_file({"base_model.model.q_proj.lora_A.weight": torch.zeros(4, 64)}, str(ckpt / "adapter_model.safetensors"))
    with pytest.raises(OracleFailure, match=r"checkpoint-4 holds 0 of \d+ model tensors .*adapter-only save"):
        assert_full_model_saved(ckpt, assets.model_dir)


def test_full_save_catches_missing_tensors_with_counts(assets, tmp_path):
    ckpt = _copy(assets.model_dir, tmp_path / "checkpoint-4")
    tensors = load_file(str(ckpt / "model.safetensors"))
    kept = {k: v for k, v in tensors.items() if "layers.1." not in k}
    save_file(kept, str(ckpt / "model.safetensors"))
    with pytest.raises(OracleFailure, match=rf"holds {len(kept)} of {len(tensors)} tensors \(.* of .*\)"):
        assert_full_model_saved(ckpt, assets.model_dir)


def test_full_save_catches_shard_shapes_and_untrained(assets, tmp_path):
    ckpt = _copy(assets.model_dir, tmp_path / "checkpoint-4")
    tensors = load_file(str(ckpt / "model.safetensors"))
    key = "model.layers.0.mlp.up_proj.weight"
    save_file({**tensors, key: tensors[key][: tensors[key].shape[0] // 2].clone()}, str(ckpt / "model.safetensors"))
    with pytest.raises(OracleFailure, match="wrong shape.*rank-local shard"):
        assert_full_model_saved(ckpt, assets.model_dir)
    untrained = _copy(assets.model_dir, tmp_path / "checkpoint-5")
    with pytest.raises(OracleFailure, match="identical to the starting weights"):
        assert_full_model_saved(untrained, assets.model_dir, load_file(str(assets.model_dir / "model.safetensors")))


def test_sharded_index_is_read(assets, tmp_path):
    ckpt = _copy(assets.model_dir, tmp_path / "checkpoint-4")
    tensors = load_file(str(ckpt / "model.safetensors"))
    (ckpt / "model.safetensors").unlink()
    keys = sorted(tensors)
    half = len(keys) // 2
    parts = {"model-00001-of-00002.safetensors": keys[:half], "model-00002-of-00002.safetensors": keys[half:]}
    for name, part in parts.items():
        save_file({k: tensors[k] for k in part}, str(ckpt / name))
    (ckpt / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {k: name for name, part in parts.items() for k in part}}))
    assert_full_model_saved(ckpt, assets.model_dir)
    (ckpt / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(Exception, match="model-00002-of-00002.safetensors"):
        assert_full_model_saved(ckpt, assets.model_dir)


def test_adapter_only_save_catches_full_run(assets):
    with pytest.raises(OracleFailure, match="expected a LoRA adapter .* train_type=lora"):
        assert_adapter_only_save(assets.model_dir)


@pytest.mark.parametrize("missing", ["config.json", "tokenizer.json", "generation_config.json"])
def test_self_contained_names_missing_file(assets, tmp_path, missing):
    ckpt = _copy(assets.model_dir, tmp_path / "checkpoint-2")
    _perturb(ckpt)
    assert_self_contained(ckpt, assets.model_dir)
    (ckpt / missing).unlink()
    with pytest.raises(OracleFailure, match=rf"missing \[.*'{missing}'.*\]"):
        assert_self_contained(ckpt, assets.model_dir)


def test_self_contained_catches_untrained_copy(assets, tmp_path):
    ckpt = _copy(assets.model_dir, tmp_path / "checkpoint-2")
    with pytest.raises(OracleFailure, match="identical to the original base"):
        assert_self_contained(ckpt, assets.model_dir)


def test_lora_base_is_catches_wrong_base(assets, tmp_path):
    other = _copy(assets.model_dir, tmp_path / "finetuned")
    _perturb(other)
    adapter = tmp_path / "lora"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(assets.model_dir)}))
    with pytest.raises(OracleFailure, match="did not start from the fine-tuned checkpoint"):
        assert_lora_base_is(adapter, other)
    assert_lora_base_is(adapter, assets.model_dir)


def test_checkpoints_complete_catches_partial(assets, tmp_path):
    out = tmp_path / "run"
    ckpt = _copy(assets.model_dir, out / "checkpoint-2")
    (ckpt / "trainer_state.json").write_text(json.dumps({"global_step": 2}))
    assert assert_checkpoints_complete(out, assets.model_dir) == [2]
    partial = _copy(assets.model_dir, out / "checkpoint-4")
    data = (partial / "model.safetensors").read_bytes()
    (partial / "model.safetensors").write_bytes(data[: len(data) // 2])
    (partial / "trainer_state.json").write_text(json.dumps({"global_step": 4}))
    with pytest.raises(OracleFailure, match="checkpoint-4 is incomplete"):
        assert_checkpoints_complete(out, assets.model_dir)
