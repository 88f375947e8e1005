"""Unit tests for the oracles that judge an argument resolution (harness.oracles.resolution) and the checkpoint
layout (harness.oracles.assert_checkpoint_layout), fed hand-made resolutions and directories: every failure branch
reached, its message naming what was expected and what was found."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from harness.adapter import ResolvedArgs, Source
from harness.oracles import (OracleFailure, assert_checkpoint_layout, assert_cli_beats_saved, assert_layers_respected,
                             assert_not_inherited, assert_nothing_from_files)

SAVED = Source("model", Path("/m/args.json"))


def resolution(warnings=(), **values_and_sources) -> ResolvedArgs:
    return ResolvedArgs(values={k: v for k, (v, _) in values_and_sources.items()},
                        sources={k: s for k, (_, s) in values_and_sources.items()}, warnings=tuple(warnings))


WARNED = ("train_type = 'lora' [cli] overrides 'full' saved in /m/args.json",)


def test_cli_beats_saved_passes_with_the_warning_owed():
    assert_cli_beats_saved(resolution(WARNED, train_type=("lora", Source("cli"))), "train_type", "lora", "full",
                           where="/m", warning_owed=True)
    assert_cli_beats_saved(resolution(train_type=("lora", Source("cli"))), "train_type", "lora", "full", where="/m",
                           warning_owed=False)


@pytest.mark.parametrize("resolved, owed, match", [
    (resolution(train_type=("full", SAVED)), False, r"--train_type 'lora' resolved to 'full' from model:/m/args.json; "
                                                    r"the saved args.json in /m beat the command line"),
    (resolution(train_type=("lora", SAVED)), False, r"recorded as coming from model:/m/args.json, expected the "
                                                    r"command line"),
    (resolution(train_type=("lora", Source("cli"))), True, r"no warning that --train_type 'lora' overrides the saved "
                                                           r"'full' \(warnings: \[\]\)"),
    (resolution(("train_type overridden",), train_type=("lora", Source("cli"))), True,
     r"must name both values \('full', 'lora'\) and the saved file \(args.json\), found 'train_type overridden'"),
], ids=["saved-value-won", "source-not-cli", "no-warning", "warning-without-values"])
def test_cli_beats_saved_failures(resolved, owed, match):
    with pytest.raises(OracleFailure, match=match) as err:
        assert_cli_beats_saved(resolved, "train_type", "lora", "full", where="/m", warning_owed=owed)
    assert "[seed 000:" in str(err.value)


def test_nothing_from_files():
    assert_nothing_from_files(resolution(lr=(1e-3, Source("default")), train_type=("lora", Source("cli"))))
    with pytest.raises(OracleFailure, match=r"load_args=false must ignore every args.json, but these values came from "
                                            r"files: \{'lr': 'model:/m/args.json'\}"):
        assert_nothing_from_files(resolution(lr=(1e-4, SAVED)))


def test_not_inherited():
    assert_not_inherited(resolution(device=("cpu", Source("default"))), ("device", "output_dir"))
    with pytest.raises(OracleFailure, match=r"must never be inherited .* \{'device': 'model:/m/args.json'\} "
                                            r"\(expected each from the command line or the defaults\)"):
        assert_not_inherited(resolution(device=("cuda", SAVED)), ("device", "output_dir"))


LAYERS = {"cli": {"lora_rank": 2}, "checkpoint": {"lora_rank": 8, "max_steps": 7}, "adapter": {}, "model": {}}
CKPT = Source("checkpoint", Path("/c/args.json"))


def test_layers_respected_passes():
    ok = resolution(("'lora_rank' 2 overrides 8 saved in /c/args.json",), lora_rank=(2, Source("cli")),
                    max_steps=(7, CKPT))
    assert_layers_respected(ok, LAYERS, would_inherit=lambda key: True)
    # a framework that never inherits a key resolves it to its default; overriding it then owes no warning
    not_inherited = resolution(lora_rank=(2, Source("cli")), max_steps=(8, Source("default")))
    assert_layers_respected(not_inherited, LAYERS, would_inherit=lambda key: False)


@pytest.mark.parametrize("resolved, match", [
    (resolution(lora_rank=(8, CKPT), max_steps=(7, CKPT)),
     r"lora_rank resolved to 8 from checkpoint:/c/args.json, expected 2 from the cli layer"),
    (resolution(("'lora_rank' 2 overrides 8",), lora_rank=(2, Source("cli")), max_steps=(7, SAVED)),
     r"max_steps resolved to 7 from model:/m/args.json, expected 7 from the checkpoint layer"),
    (resolution(lora_rank=(2, Source("cli")), max_steps=(7, CKPT)),
     r"--lora_rank 2 silently overrode a different saved value 8 \(expected a warning naming it; warnings: \[\]\)"),
], ids=["cli-lost", "wrong-layer", "silent-override"])
def test_layers_respected_failures(resolved, match):
    with pytest.raises(OracleFailure, match=match):
        assert_layers_respected(resolved, LAYERS, would_inherit=lambda key: True)


# ---------------------------------------------------------------------- the checkpoint layout
def _checkpoint(root: Path, step: int, *, state=True, losses=True, weights="adapter_model.safetensors") -> Path:
    ckpt = root / f"checkpoint-{step}"
    ckpt.mkdir(parents=True)
    if state:
        history = [{"step": step, "loss": 1.0}] if losses else [{"step": step, "learning_rate": 1e-3}]
        (ckpt / "trainer_state.json").write_text(json.dumps({"global_step": step, "log_history": history}))
    if weights:
        save_file({"w": torch.zeros(2)}, str(ckpt / weights))
    return ckpt


@pytest.fixture
def layout(tmp_path):
    out = tmp_path / "run"
    for step in (2, 4):
        _checkpoint(out, step)
    final = out
    save_file({"w": torch.zeros(2)}, str(out / "adapter_model.safetensors"))
    return out, final


def test_checkpoint_layout_passes(layout):
    assert_checkpoint_layout(*layout, steps=(2, 4), train_type="lora")


def test_checkpoint_layout_full_weights(tmp_path):
    out = tmp_path / "run"
    for step in (2, 4):
        _checkpoint(out, step, weights="model.safetensors")
    save_file({"w": torch.zeros(2)}, str(out / "model.safetensors"))
    assert_checkpoint_layout(out, out, steps=(2, 4), train_type="full")
    with pytest.raises(OracleFailure, match=r"checkpoint-2 holds no lora weights \(found \['model.safetensors', "
                                            r"'trainer_state.json'\]\)"):
        assert_checkpoint_layout(out, out, steps=(2, 4), train_type="lora")


def test_checkpoint_layout_wrong_cadence(layout):
    out, final = layout
    _checkpoint(out, 10)
    with pytest.raises(OracleFailure, match=r"expected checkpoints \['checkpoint-2', 'checkpoint-4'\] in .*, found "
                                            r"\['checkpoint-2', 'checkpoint-4', 'checkpoint-10'\]"):
        assert_checkpoint_layout(out, final, steps=(2, 4), train_type="lora")


@pytest.mark.parametrize("broken, match", [
    ({"state": False}, r"checkpoint-4 has no trainer_state.json \(found \['adapter_model.safetensors'\]\)"),
    ({"losses": False}, r"checkpoint-4/trainer_state.json logs no loss"),
    ({"weights": None}, r"checkpoint-4 holds no lora weights \(found \['trainer_state.json'\]\)"),
], ids=["no-state", "no-losses", "no-weights"])
def test_checkpoint_layout_broken_checkpoint(tmp_path, broken, match):
    out = tmp_path / "run"
    _checkpoint(out, 2)
    _checkpoint(out, 4, **broken)
    with pytest.raises(OracleFailure, match=match) as err:
        assert_checkpoint_layout(out, out, steps=(2, 4), train_type="lora")
    assert "[seed layout: checkpoint-layout:" in str(err.value)


def test_checkpoint_layout_wrong_global_step(layout):
    out, final = layout
    state = out / "checkpoint-4" / "trainer_state.json"
    state.write_text(json.dumps({"global_step": 3, "log_history": [{"step": 3, "loss": 1.0}]}))
    with pytest.raises(OracleFailure, match=r"checkpoint-4/trainer_state.json records global_step 3, expected 4"):
        assert_checkpoint_layout(out, final, steps=(2, 4), train_type="lora")


def test_checkpoint_layout_empty_weights_and_no_final(layout, tmp_path):
    out, _ = layout
    save_file({}, str(out / "checkpoint-2" / "adapter_model.safetensors"))
    with pytest.raises(OracleFailure, match=r"checkpoint-2/adapter_model.safetensors is missing or holds no tensors"):
        assert_checkpoint_layout(out, out, steps=(2, 4), train_type="lora")
    _checkpoint(tmp_path / "ok", 2)
    final = tmp_path / "final"
    final.mkdir()
    with pytest.raises(OracleFailure, match=r"the final output .*final holds no lora weights \(found \[\]\)"):
        assert_checkpoint_layout(tmp_path / "ok", final, steps=(2,), train_type="lora")
