"""Direct unit tests for the oracles that had none (seed 000's weight, log and args judges, the restart judge, the
runs-agree and merge judges, the embeddings judge) and for the face's public helpers: each fed hand-made tensors,
JSON files and log histories (a tiny model built once per module where an oracle must reload one), so that every
failure branch is reached deliberately and its message is checked for what was expected and what was found. Last,
the face: ``harness.oracles.__all__`` is exactly the public names its modules define."""

from __future__ import annotations

import ast
import importlib
import json
import os
import pkgutil
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file, save_file

import harness.oracles
from harness.models import NEW_TOKENS, build_assets, build_model
from harness.oracles import (Evaluator, OracleFailure, assert_embeddings_saved, assert_first_step_size,
                             assert_log_matches_cli, assert_lora_trained_as_asked, assert_merged_is_trained_model,
                             assert_resumed_not_restarted, assert_runs_agree, assert_saved_args_match, batches_loss,
                             best_logged_step, checkpoint_weights, checkpoints_fingerprint, dir_fingerprint,
                             final_weights, logged_metrics, losses_by_step, start_weights, stat_fingerprint,
                             trained_weights, training_sample_of, weights_on_disk)


def fails(seed: str, *parts: str):
    """``pytest.raises`` for an OracleFailure of ``seed`` whose message holds every literal part, in order."""
    return pytest.raises(OracleFailure, match=rf"(?s)^\[seed {re.escape(seed)}: .*" + ".*".join(map(re.escape, parts)))


def _state(directory: Path, history: list[dict], **extra) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "trainer_state.json").write_text(json.dumps({"log_history": history, **extra}))
    return directory


def _lora(r: int = 4, modules=("q_proj", "v_proj"), layers: int = 2, seed: int = 0, b: float | None = None):
    """PEFT-named LoRA tensors of the tiny model (hidden size 64): lora_A random, lora_B random or all ``b``."""
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for layer in range(layers):
        for module in modules:
            key = f"base_model.model.model.layers.{layer}.self_attn.{module}"
            out[f"{key}.lora_A.weight"] = torch.randn(r, 64, generator=generator)
            out[f"{key}.lora_B.weight"] = (torch.randn(64, r, generator=generator) if b is None
                                           else torch.full((64, r), b))
    return out


def _adapter(directory: Path, tensors: dict, **config) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(directory / "adapter_model.safetensors"))
    if config:
        (directory / "adapter_config.json").write_text(json.dumps(config))
    return directory


# --------------------------------------------------------------------------- assert_lora_trained_as_asked
ASKED = dict(r=4, alpha=16.0, target_modules=("q_proj", "v_proj"))
CONFIG = {"r": 4, "lora_alpha": 16, "target_modules": ["v_proj", "q_proj"]}


def test_lora_trained_as_asked_passes(tmp_path):
    assert_lora_trained_as_asked(_adapter(tmp_path / "checkpoint-1", _lora(), **CONFIG), **ASKED)  # 16 is 16.0
    one = _adapter(tmp_path / "one", _lora(modules=("q_proj",)), **{**CONFIG, "target_modules": "q_proj"})
    assert_lora_trained_as_asked(one, r=4, alpha=16.0, target_modules=["q_proj"])  # a module list saved as a string


def test_lora_trained_as_asked_catches_no_adapter(tmp_path):
    full = tmp_path / "full"
    full.mkdir()
    save_file({"model.embed_tokens.weight": torch.zeros(2, 2)}, str(full / "model.safetensors"))
    with fails("000", "full: expected a LoRA adapter (adapter_config.json and its tensors), "
                      "found ['model.safetensors']"):
        assert_lora_trained_as_asked(full, **ASKED)
    no_config = _adapter(tmp_path / "no-config", _lora())
    with fails("000", "no-config: expected a LoRA adapter", "found ['adapter_model.safetensors']"):
        assert_lora_trained_as_asked(no_config, **ASKED)


def test_lora_trained_as_asked_catches_another_rank(tmp_path):
    directory = _adapter(tmp_path / "checkpoint-3", _lora(r=8), **{**CONFIG, "r": 8})
    with fails("000", "checkpoint-3: the command line said lora_rank=4, but the saved LoRA matrices have rank 8 "
                      "(base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight and 3 more): the run trained "
                      "another rank"):
        assert_lora_trained_as_asked(directory, **ASKED)


def test_lora_trained_as_asked_catches_other_modules(tmp_path):
    directory = _adapter(tmp_path / "checkpoint-3", _lora(modules=("q_proj", "k_proj")), **CONFIG)
    with fails("000", "the command line said target_modules=['q_proj', 'v_proj'], but LoRA matrices were saved for "
                      "['k_proj', 'q_proj']"):
        assert_lora_trained_as_asked(directory, **ASKED)


@pytest.mark.parametrize("config, found", [
    ({**CONFIG, "r": 8}, "r is 8, the run trained with 4"),
    ({**CONFIG, "lora_alpha": 32}, "lora_alpha is 32, the run trained with 16.0"),
    ({**CONFIG, "target_modules": ["q_proj"]},
     "target_modules is ['q_proj'], the run trained with ['q_proj', 'v_proj']"),
    ({"r": 4}, "lora_alpha is None, the run trained with 16.0; target_modules is [], the run trained with"),
])
def test_lora_trained_as_asked_catches_a_config_that_reloads_another_model(tmp_path, config, found):
    directory = _adapter(tmp_path / "final", _lora(), **config)
    with fails("000", "final/adapter_config.json: ", found, ": a reload of this adapter is not the trained model"):
        assert_lora_trained_as_asked(directory, **ASKED)


# --------------------------------------------------------------------------- assert_first_step_size
def _first_step(directory: Path, lr: float) -> Path:
    """checkpoint-1 after Adam's first step: every lora_B entry moved by +-lr from zero (a few left at zero)."""
    tensors = _lora(b=0.0)
    for i, key in enumerate(k for k in sorted(tensors) if ".lora_B." in k):
        signs = torch.where(torch.arange(64 * 4).reshape(64, 4) % (3 + i) == 0, -1.0, 1.0)
        tensors[key] = signs * lr
        tensors[key][0, 0] = 0.0  # a zero gradient: not moved, not counted
    return _adapter(directory, tensors)


def test_first_step_size_passes_within_rtol(tmp_path):
    assert_first_step_size(_first_step(tmp_path / "checkpoint-1", 1e-3), 1e-3)
    assert_first_step_size(_first_step(tmp_path / "near", 1e-3 * (1 + 5e-4)), 1e-3)  # inside FIRST_STEP_RTOL


def test_first_step_size_catches_another_learning_rate(tmp_path):
    checkpoint = _first_step(tmp_path / "checkpoint-1", 2e-4)
    with fails("000", "checkpoint-1: the first optimizer step moved lora_B by 0.0002 (median), so the run trained with "
                      "learning rate ~0.0002; the command line said 0.001 (rtol 0.001)"):
        assert_first_step_size(checkpoint, 1e-3)
    outside = _first_step(tmp_path / "outside", 1e-3 * (1 + 2e-3))
    with fails("000", "moved lora_B by 0.001002 (median)", "the command line said 0.001"):
        assert_first_step_size(outside, 1e-3)


@pytest.mark.parametrize("what", ["zero lora_B", "no LoRA"])
def test_first_step_size_catches_an_untrained_adapter(tmp_path, what):
    checkpoint = tmp_path / "checkpoint-1"
    if what == "zero lora_B":
        _adapter(checkpoint, _lora(b=0.0))
    else:
        checkpoint.mkdir()
        save_file({"model.norm.weight": torch.ones(64)}, str(checkpoint / "model.safetensors"))
    with fails("000", "checkpoint-1: no trained lora_B entries, so the first optimizer step did not reach the adapter"):
        assert_first_step_size(checkpoint, 1e-3)


# --------------------------------------------------------------------------- assert_log_matches_cli
def _cli_run(root: Path, checkpoints=(1, 2, 3), logged=(1, 2, 3), lr: float = 1e-3, rates=None) -> Path:
    for step in checkpoints:
        (root / f"checkpoint-{step}").mkdir(parents=True)
    rates = rates or {}
    return _state(root, [{"step": s, "loss": 4.0 - s, "learning_rate": rates.get(s, lr)} for s in logged]
                  + [{"step": logged[-1] if logged else 0, "train_runtime": 1.0}])


def test_log_matches_cli_passes(tmp_path):
    assert_log_matches_cli(_cli_run(tmp_path / "run"), max_steps=3, learning_rate=1e-3)
    assert_log_matches_cli(_cli_run(tmp_path / "close", lr=1e-3 * (1 + 1e-7)), max_steps=3, learning_rate=1e-3)


@pytest.mark.parametrize("checkpoints, logged, found", [
    ((1, 2), (1, 2, 3), "found checkpoints [1, 2] and training losses logged up to step 3"),  # stopped saving early
    ((1, 2, 3, 4), (1, 2, 3, 4), "found checkpoints [1, 2, 3, 4] and training losses logged up to step 4"),
    ((1, 2, 3), (1, 2, 3, 4), "found checkpoints [1, 2, 3] and training losses logged up to step 4"),  # trained on
    ((), (1, 2, 3), "found checkpoints [] and training losses logged up to step 3"),
])
def test_log_matches_cli_catches_another_max_steps(tmp_path, checkpoints, logged, found):
    run = _cli_run(tmp_path / "run", checkpoints, logged)
    with fails("000", "run: the command line said max_steps=3; ", found):
        assert_log_matches_cli(run, max_steps=3, learning_rate=1e-3)


def test_log_matches_cli_catches_another_learning_rate(tmp_path):
    run = _cli_run(tmp_path / "run", rates={2: 5e-4, 3: 2.5e-4})
    with fails("000", "run: logged learning_rate {2: 0.0005, 3: 0.00025} (step: value), the command line said 0.001 "
                      "with a constant schedule"):
        assert_log_matches_cli(run, max_steps=3, learning_rate=1e-3)


# --------------------------------------------------------------------------- assert_saved_args_match
def test_saved_args_match(tmp_path):
    (tmp_path / "args.json").write_text(json.dumps({"learning_rate": 0.002, "lora_rank": 2, "lora_alpha": 16,
                                                    "max_steps": 3, "output_dir": "/x"}))
    assert_saved_args_match(tmp_path, {"learning_rate": 2e-3, "lora_rank": 2, "lora_alpha": 16.0, "max_steps": 3})
    with fails("000", f"{tmp_path / 'args.json'}: learning_rate recorded as 0.002, the run used 0.0002; "
                      "num_train_epochs recorded as '<missing>', the run used 1: the saved record is not the run"):
        assert_saved_args_match(tmp_path, {"learning_rate": 2e-4, "lora_rank": 2, "num_train_epochs": 1})


# --------------------------------------------------------------------------- assert_resumed_not_restarted
def _resumed(root: Path, k: int = 2, max_steps: int = 4, *, steps=None, logged=None):
    """checkpoint-1..k written before the resume (fingerprinted), then the resumed run's checkpoints and log."""
    for step in range(1, k + 1):
        _adapter(root / f"checkpoint-{step}", _lora(seed=step))
    before = checkpoints_fingerprint(root, k)
    for step in steps if steps is not None else range(k + 1, max_steps + 1):
        _adapter(root / f"checkpoint-{step}", _lora(seed=step))
    logged = logged if logged is not None else list(range(1, max_steps + 1))
    _state(root, [{"step": s, "loss": 1.0 / s} for s in logged] + [{"step": max_steps, "train_loss": 0.5}])
    return root, before


def test_resumed_not_restarted_passes(tmp_path):
    out, before = _resumed(tmp_path / "b")
    assert_resumed_not_restarted(out, 2, 4, before)
    out, before = _resumed(tmp_path / "every-2", steps=[4])  # save_steps=2: only checkpoint-4 is owed after k=2
    assert_resumed_not_restarted(out, 2, 4, before, save_steps=2)


def test_resumed_not_restarted_catches_rewritten_checkpoints(tmp_path):
    out, before = _resumed(tmp_path / "b")
    target = out / "checkpoint-1" / "adapter_model.safetensors"
    st = target.stat()
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # rewritten with the same bytes (a restart)
    with fails("resume", "resuming from checkpoint-2 rewrote or removed ['checkpoint-1']: the run trained steps <= 2 "
                         "again instead of continuing"):
        assert_resumed_not_restarted(out, 2, 4, before)
    shutil.rmtree(out / "checkpoint-2")
    with fails("resume", "rewrote or removed ['checkpoint-1', 'checkpoint-2']"):
        assert_resumed_not_restarted(out, 2, 4, before)


def test_resumed_not_restarted_catches_missing_checkpoints(tmp_path):
    out, before = _resumed(tmp_path / "b", max_steps=5, steps=[3], logged=[1, 2, 3])
    with fails("resume", "resumed from checkpoint-2, the run left no checkpoint for steps [4, 5] (on disk: [1, 2, 3]): "
                         "it did not reach max_steps=5"):
        assert_resumed_not_restarted(out, 2, 5, before)


def test_resumed_not_restarted_catches_steps_logged_twice(tmp_path):
    out, before = _resumed(tmp_path / "b", logged=[1, 2, 1, 2, 3, 4])
    with fails("resume", "steps [1, 2] are logged more than once after resuming from checkpoint-2: they were trained "
                         "again"):
        assert_resumed_not_restarted(out, 2, 4, before)


def test_resumed_not_restarted_catches_a_run_that_did_not_train(tmp_path):
    out, before = _resumed(tmp_path / "b")
    shutil.copy(out / "checkpoint-2" / "adapter_model.safetensors", out / "checkpoint-4" / "adapter_model.safetensors")
    with fails("resume", "checkpoint-4's weights equal checkpoint-2's: the resumed run did not train"):
        assert_resumed_not_restarted(out, 2, 4, before)


# --------------------------------------------------------------------------- assert_runs_agree
HISTORY = {1: (4.0, 1.5), 2: (3.5, 1.25), 3: (3.25, 1.0), 4: (3.0, 0.75)}


def _agreeing_run(root: Path, history=HISTORY, *, keys=("loss", "grad_norm"), checkpoints=(2, 4), final_seed=9,
                  scale: float = 1.0) -> Path:
    _state(root, [{"step": s, **dict(zip(keys, values))} for s, values in history.items()])
    for step in checkpoints:
        _adapter(root / f"checkpoint-{step}", {k: v * scale for k, v in _lora(seed=step).items()})
    _adapter(root, {k: v * scale for k, v in _lora(seed=final_seed).items()})
    return root


AGREE = dict(keys=("loss", "grad_norm"), rtol=1e-6, weight_atol=1e-5, what="accumulation 2x4 vs 1x8", seed="ga")


def test_runs_agree_passes_within_tolerances(tmp_path):
    expected = _agreeing_run(tmp_path / "a")
    close = {s: (loss * (1 + 1e-7), norm) for s, (loss, norm) in HISTORY.items()}
    actual = _agreeing_run(tmp_path / "b", close, checkpoints=(1, 2, 4), scale=1 + 1e-7)  # checkpoint-1: not shared
    assert_runs_agree(expected, actual, **AGREE)


def test_runs_agree_catches_a_reference_without_the_key(tmp_path):
    expected = _agreeing_run(tmp_path / "a", keys=("loss",))
    actual = _agreeing_run(tmp_path / "b")
    with fails("ga", "a logged no grad_norm: nothing to compare"):
        assert_runs_agree(expected, actual, **AGREE)


def test_runs_agree_catches_missing_steps(tmp_path):
    expected = _agreeing_run(tmp_path / "a")
    actual = _agreeing_run(tmp_path / "b", {s: v for s, v in HISTORY.items() if s in (1, 2)})
    with fails("ga", "accumulation 2x4 vs 1x8: logged no loss for steps [3, 4] (logged: [1, 2])"):
        assert_runs_agree(expected, actual, **AGREE)


def test_runs_agree_catches_a_diverging_value(tmp_path):
    expected = _agreeing_run(tmp_path / "a")
    actual = _agreeing_run(tmp_path / "b", {**HISTORY, 3: (3.25, 1.1)})
    with fails("ga", "accumulation 2x4 vs 1x8: grad_norm at step 3 is 1.1, expected 1.0 (relative difference 0.1 > "
                     "1e-06)"):
        assert_runs_agree(expected, actual, **AGREE)


def test_runs_agree_catches_different_tensors(tmp_path):
    expected = _agreeing_run(tmp_path / "a")
    actual = _agreeing_run(tmp_path / "b")
    _adapter(actual / "checkpoint-4", _lora(seed=4, modules=("q_proj",)))
    with fails("ga", "accumulation 2x4 vs 1x8: checkpoint-4 hold different tensors: "
                     "['base_model.model.model.layers.0.self_attn.v_proj.lora_A.weight', "):
        assert_runs_agree(expected, actual, **AGREE)


@pytest.mark.parametrize("where, label", [("checkpoint-2", "checkpoint-2"), (".", "final weights")])
def test_runs_agree_catches_different_weights(tmp_path, where, label):
    expected = _agreeing_run(tmp_path / "a")
    actual = _agreeing_run(tmp_path / "b")
    tensors = load_file(str(actual / where / "adapter_model.safetensors"))
    key = "base_model.model.model.layers.1.self_attn.q_proj.lora_B.weight"
    tensors[key][3, 1] += 1e-3
    save_file(tensors, str(actual / where / "adapter_model.safetensors"))
    with fails("ga", f"accumulation 2x4 vs 1x8: {label}: {key} differs by 0.001 (> 1e-05)"):
        assert_runs_agree(expected, actual, **AGREE)


# --------------------------------------------------------------------------- the face's reading helpers
def test_losses_and_logged_metrics_read_the_history(tmp_path):
    history = [{"step": 1, "loss": 2.0}, {"loss": 9.0}, {"step": 2, "eval_loss": 1.5, "loss": 1.75},
               {"step": 3, "eval_loss": 1.25}]
    assert losses_by_step(history) == {1: 2.0, 2: 1.75}  # an entry without a step is not a step's loss
    assert losses_by_step(history, "eval_loss") == {2: 1.5, 3: 1.25}
    assert logged_metrics(tmp_path / "not-read", "eval_loss", history) == {2: 1.5, 3: 1.25}
    assert logged_metrics(_state(tmp_path / "run", history), "eval_loss") == {2: 1.5, 3: 1.25}


@pytest.mark.parametrize("metrics, greater, best", [
    ({2: 1.0, 4: 0.5, 6: 0.5}, False, 4),  # a later equal value is no improvement
    ({2: 0.9, 4: 0.1, 6: 0.9}, True, 2),
    ({6: 0.3, 2: 0.3}, False, 2),  # the first step, whatever the mapping's order
])
def test_best_logged_step(metrics, greater, best):
    assert best_logged_step(metrics, greater) == best


def test_final_trained_and_checkpoint_weights(tmp_path):
    out = tmp_path / "run"
    _adapter(out / "checkpoint-2", _lora(seed=2))
    _adapter(out / "checkpoint-10", _lora(seed=10))  # by step, not by name
    newest = load_file(str(out / "checkpoint-10" / "adapter_model.safetensors"))
    assert torch.equal(final_weights(out)[sorted(newest)[0]], newest[sorted(newest)[0]])  # no final save: the newest
    _adapter(out, _lora(seed=1))
    final = load_file(str(out / "adapter_model.safetensors"))
    assert all(torch.equal(final_weights(out)[k], v) for k, v in final.items())
    assert all(torch.equal(trained_weights(out)[k], v) for k, v in newest.items())  # the newest checkpoint wins
    full = tmp_path / "full"
    full.mkdir()
    save_file({"model.norm.weight": torch.ones(3)}, str(full / "model.safetensors"))
    assert list(final_weights(full)) == list(checkpoint_weights(full)) == list(weights_on_disk(full)) == [
        "model.norm.weight"]
    (tmp_path / "empty").mkdir()
    with fails("dist", "empty: no weights on disk (neither ('adapter_model.safetensors', "
                       "'pytorch_lora_weights.safetensors') nor a full model)"):
        final_weights(tmp_path / "empty", seed="dist")
    with fails("resume", "no weights on disk"):
        trained_weights(tmp_path / "empty")


def test_fingerprints_see_rewrites(tmp_path):
    out = tmp_path / "run"
    for step in (1, 2, 3):
        _state(out / f"checkpoint-{step}", [{"step": step, "loss": 1.0}])
    assert sorted(checkpoints_fingerprint(out, 2)) == ["checkpoint-1", "checkpoint-2"]
    contents, stats = dir_fingerprint(out), stat_fingerprint(out)
    target = out / "checkpoint-1" / "trainer_state.json"
    st = target.stat()
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert dir_fingerprint(out) == contents  # the same bytes ...
    assert stat_fingerprint(out) != stats  # ... rewritten
    target.write_text("{}")
    assert dir_fingerprint(out) != contents


# --------------------------------------------------------------------------- a tiny model, built once
@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return build_assets(tmp_path_factory.mktemp("units"))


@pytest.fixture(scope="module")
def merge(assets, tmp_path_factory):
    """A trained-looking LoRA (random lora_B, r=4, alpha=16: scale 4) on the tiny model, its faithful PEFT merge and
    a merge that forgot the scale."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from harness.hf import merge_lora

    root = tmp_path_factory.mktemp("merge")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(str(assets.model_dir), local_files_only=True)
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                                            init_lora_weights=False))
    peft.save_pretrained(str(root / "lora"))
    return SimpleNamespace(adapter=root / "lora", merged=merge_lora(root / "lora", root / "merged"),
                           unscaled=merge_lora(root / "lora", root / "unscaled", scaling=1.0),
                           data=assets.dataset_dir, base=assets.model_dir)


def _merged_copy(merge, tmp_path, which: str = "merged") -> Path:
    return Path(shutil.copytree(getattr(merge, which), tmp_path / "merged"))


def test_start_weights_merges_an_adapter_into_its_base(merge):
    merged, on_disk = start_weights(merge.adapter), weights_on_disk(merge.merged)
    assert set(merged) == set(on_disk) and all(torch.allclose(merged[k], on_disk[k], atol=1e-6) for k in on_disk)
    assert all(torch.equal(a, b) for a, b in zip(start_weights(merge.base).values(),
                                                 weights_on_disk(merge.base).values()))


# --------------------------------------------------------------------------- assert_merged_is_trained_model
def test_merged_is_trained_model_passes(merge):
    assert_merged_is_trained_model(merge.merged, merge.adapter, merge.data, quantization=None, atol=1e-4)


def test_merged_catches_adapter_files_left_behind(merge, tmp_path):
    merged = _merged_copy(merge, tmp_path)
    shutil.copy(merge.adapter / "adapter_config.json", merged / "adapter_config.json")
    with fails("merge", "merged still holds ['adapter_config.json']: a loader takes it for an adapter, not a merged "
                        "model"):
        assert_merged_is_trained_model(merged, merge.adapter, merge.data, quantization=None, atol=1e-4)


def test_merged_catches_no_full_weights(merge, tmp_path):
    merged = _merged_copy(merge, tmp_path)
    (merged / "model.safetensors").unlink()
    with fails("merge", "merged holds no full-model weights (model.safetensors or an index)"):
        assert_merged_is_trained_model(merged, merge.adapter, merge.data, quantization=None, atol=1e-4)


def test_merged_catches_unmerged_lora_keys(merge, tmp_path):
    merged = _merged_copy(merge, tmp_path)
    tensors = load_file(str(merged / "model.safetensors"))
    lora = load_file(str(merge.adapter / "adapter_model.safetensors"))
    save_file({**tensors, **lora}, str(merged / "model.safetensors"))
    with fails("merge", f"merged holds adapter tensors after merging, e.g. {sorted(lora)[0]} ({len(lora)} in all): "
                        "the LoRA was not merged into the base weights"):
        assert_merged_is_trained_model(merged, merge.adapter, merge.data, quantization=None, atol=1e-4)


def test_merged_must_be_self_contained_and_trained(merge, tmp_path):
    """The seed 003 judge, under this seed: a "merge" that is the base itself."""
    merged = Path(shutil.copytree(merge.base, tmp_path / "merged"))
    with fails("merge", f"merged: weights are identical to the original base {merge.base}"):
        assert_merged_is_trained_model(merged, merge.adapter, merge.data, quantization=None, atol=1e-4)


def test_merged_catches_a_merge_without_the_lora_scale(merge):
    with pytest.raises(OracleFailure, match=r"^\[seed merge: .*\] unscaled: logits on eval\.jsonl differ from the base "
                                            r"\+ the adapter it trained by [0-9.e+-]+ \(> atol 0\.0001\): the merge "
                                            r"changed the model \(wrong LoRA scale, wrong base, or a lossy merge of a "
                                            r"quantised base\)$"):
        assert_merged_is_trained_model(merge.unscaled, merge.adapter, merge.data, quantization=None, atol=1e-4)


@pytest.mark.parametrize("output", ["", "loading weights\nwarning: merged in float32", "quantised base detected"])
def test_merged_onto_a_quantised_base_must_warn(merge, output):
    """A LoRA trained on a quanto-int8 base, merged into the float32 base: not faithful to the bit; accepted only with
    a warning line about the quantisation (a line with a warning and no quantisation, or the reverse, is none)."""
    pytest.importorskip("optimum.quanto")
    with fails("merge", "merged: logits on eval.jsonl differ from the quanto-int8 base + the adapter it trained by ",
               "lossy merge of a quantised base, with no warning about the quantisation)"):
        assert_merged_is_trained_model(merge.merged, merge.adapter, merge.data, quantization="quanto-int8", atol=1e-4,
                                       output=output)
    assert_merged_is_trained_model(merge.merged, merge.adapter, merge.data, quantization="quanto-int8", atol=1e-4,
                                   output=output + "\nUserWarning: merging into a QUANTISED base is lossy")


# --------------------------------------------------------------------------- assert_embeddings_saved
NEW = [54, 55]  # the ids NEW_TOKENS get in the tiny vocabulary (54 tokens)


def _batches(new: bool = False):
    """The eval set as a framework collated it: two rows, one right-padded; labels aligned with the inputs."""
    a, b = (NEW if new else [8, 12])
    ids = [[2, 6, 7, a, 9, 10, 3], [2, 11, b, 13, 3, 0, 0]]
    return [{"input_ids": ids, "attention_mask": [[1] * 7, [1] * 5 + [0] * 2],
             "labels": [[-100, 6, 7, a, 9, 10, 3], [-100, 11, b, 13, 3, -100, -100]]}]


def _logged(directory: Path, eval_loss: float) -> Path:
    return _state(directory, [{"step": 2, "loss": 3.0}, {"step": 4, "loss": 2.5}, {"step": 4, "eval_loss": eval_loss}])


@pytest.fixture(scope="module")
def emb(assets, tmp_path_factory):
    """Final saves of a tied model (no new tokens) and of a run that added NEW_TOKENS: a resized full model (with a
    checkpoint-2 whose new rows differ) and a LoRA adapter holding the resized embeddings; each logs the eval loss its
    in-memory model had."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = tmp_path_factory.mktemp("emb")
    tok = AutoTokenizer.from_pretrained(str(assets.model_dir), local_files_only=True)
    tok.add_special_tokens({"additional_special_tokens": list(NEW_TOKENS)})
    assert [tok.convert_tokens_to_ids(t) for t in NEW_TOKENS] == NEW

    tied = build_model(root / "tied", tie_word_embeddings=True)
    _logged(tied, batches_loss(AutoModelForCausalLM.from_pretrained(str(tied), local_files_only=True), _batches()))

    def resized():
        torch.manual_seed(1)
        model = AutoModelForCausalLM.from_pretrained(str(assets.model_dir), local_files_only=True)
        model.resize_token_embeddings(len(tok), mean_resizing=False)
        return model

    full = resized()
    full.save_pretrained(str(root / "full" / "checkpoint-2"))
    tok.save_pretrained(str(root / "full" / "checkpoint-2"))
    with torch.no_grad():
        full.get_input_embeddings().weight[NEW] += 0.5  # trained after checkpoint-2
    full.save_pretrained(str(root / "full"))
    tok.save_pretrained(str(root / "full"))
    _logged(root / "full", batches_loss(full, _batches(new=True)))

    torch.manual_seed(2)
    peft = get_peft_model(resized(), LoraConfig(r=4, target_modules=["q_proj"], init_lora_weights=False))
    peft.save_pretrained(str(root / "adapter"), save_embedding_layers=True)
    tok.save_pretrained(str(root / "adapter"))
    _logged(root / "adapter", batches_loss(peft, _batches(new=True)))
    peft.save_pretrained(str(root / "no-embeddings"), save_embedding_layers=False)
    tok.save_pretrained(str(root / "no-embeddings"))
    _logged(root / "no-embeddings", 1.0)
    return SimpleNamespace(base=assets.model_dir, tied=tied, full=root / "full", adapter=root / "adapter",
                           no_embeddings=root / "no-embeddings", tok=tok)


def _out(source: Path, tmp_path: Path, name: str = "final") -> Path:
    return Path(shutil.copytree(source, tmp_path / name))


def test_embeddings_saved_passes(emb):
    assert_embeddings_saved(emb.tied, emb.tied, _batches(), rel_tol=1e-5)
    assert_embeddings_saved(emb.full, emb.base, _batches(new=True), new_tokens=NEW_TOKENS, rel_tol=1e-5)
    assert_embeddings_saved(emb.adapter, emb.base, _batches(new=True), new_tokens=NEW_TOKENS, rel_tol=1e-5)


def test_embeddings_saved_catches_no_eval(emb, tmp_path):
    out = _state(_out(emb.tied, tmp_path), [{"step": 4, "loss": 2.5}])
    with fails("embeddings", "final: no eval_loss logged; nothing to reproduce"):
        assert_embeddings_saved(out, emb.tied, _batches(), rel_tol=1e-5)


def test_embeddings_saved_catches_a_tokenizer_without_the_new_tokens(emb, tmp_path):
    out = _logged(_out(emb.base, tmp_path), 1.0)
    with fails("embeddings", "final: the saved tokenizer lacks the added tokens ['<|tool|>', '<|/tool|>'] (54 tokens): "
                             "the model cannot be served with the vocabulary it trained on"):
        assert_embeddings_saved(out, emb.base, _batches(), new_tokens=NEW_TOKENS, rel_tol=1e-5)
    adapter = _out(emb.no_embeddings, tmp_path, "adapter")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (adapter / name).unlink()
    with fails("embeddings", "adapter: its base's tokenizer (the adapter holds none) lacks the added tokens "
                             "['<|tool|>', '<|/tool|>'] (54 tokens)"):
        assert_embeddings_saved(adapter, emb.base, _batches(), new_tokens=NEW_TOKENS, rel_tol=1e-5)


def test_embeddings_saved_catches_a_tied_config_with_another_head(emb, tmp_path):
    out = _out(emb.tied, tmp_path)
    tensors = load_file(str(out / "model.safetensors"))
    head = tensors["model.embed_tokens.weight"] + 0.25
    save_file({**tensors, "lm_head.weight": head}, str(out / "model.safetensors"), metadata={"format": "pt"})
    with fails("embeddings", "final: config.json says tie_word_embeddings=true but lm_head.weight on disk differs from "
                             "the embeddings by 0.25: a loader ties them and silently drops one"):
        assert_embeddings_saved(out, emb.tied, _batches(), rel_tol=1e-5)


def test_embeddings_saved_catches_an_untied_config_without_a_head(emb, tmp_path):
    out = _logged(_out(emb.base, tmp_path), 1.0)
    tensors = load_file(str(out / "model.safetensors"))
    save_file({k: v for k, v in tensors.items() if k != "lm_head.weight"}, str(out / "model.safetensors"),
              metadata={"format": "pt"})
    with fails("embeddings", "final: config.json says tie_word_embeddings=false but no lm_head.weight is on disk: a "
                             "loader initialises the output head at random"):
        assert_embeddings_saved(out, emb.base, _batches(), rel_tol=1e-5)


def test_embeddings_saved_catches_an_adapter_without_the_embeddings(emb):
    with fails("embeddings", "no-embeddings: the adapter holds no embedding matrix although the vocabulary grew by 2 "
                             "tokens: the added tokens' trained rows were not saved"):
        assert_embeddings_saved(emb.no_embeddings, emb.base, _batches(new=True), new_tokens=NEW_TOKENS, rel_tol=1e-5)


def test_embeddings_saved_catches_embeddings_not_resized(emb, tmp_path):
    out = _logged(_out(emb.base, tmp_path), 1.0)
    emb.tok.save_pretrained(str(out))  # the tokenizer grew, the saved model did not
    with fails("embeddings", "final: the saved embeddings have 54 rows, the saved tokenizer 56 tokens: the resized "
                             "rows were not saved"):
        assert_embeddings_saved(out, emb.base, _batches(new=True), new_tokens=NEW_TOKENS, rel_tol=1e-5)


def test_embeddings_saved_catches_untrained_new_rows(emb, tmp_path):
    out = _out(emb.full, tmp_path)
    shutil.copy(out / "checkpoint-2" / "model.safetensors", out / "model.safetensors")
    with fails("embeddings", "final: the rows of ['<|tool|>', '<|/tool|>'] are identical in checkpoint-2 and the final "
                             "save: the added tokens were not trained"):
        assert_embeddings_saved(out, emb.base, _batches(new=True), new_tokens=NEW_TOKENS, rel_tol=1e-5)


@pytest.mark.parametrize("which, how", [
    ("tied", "the full directory (config.json tie_word_embeddings=True)"),
    ("adapter", "base + resize + adapter"),
])
def test_embeddings_saved_catches_a_reload_that_is_not_the_evaluated_model(emb, tmp_path, which, how):
    source = getattr(emb, which)
    logged = logged_metrics(source, "eval_loss")[4]
    out = _logged(_out(source, tmp_path), logged * 1.01)
    new = which == "adapter"
    with fails("embeddings", f"final: reloading {how} gives eval_loss {logged:.6g}, the run logged "
                             f"{logged * 1.01:.6g} at step 4 (relative difference 0.0099", "> 1e-05): what was saved "
                             "is not the model that was evaluated"):
        assert_embeddings_saved(out, emb.base, _batches(new=new), new_tokens=NEW_TOKENS if new else (), rel_tol=1e-5)


def test_batches_loss_is_the_token_mean_over_labels(emb):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(emb.tied), local_files_only=True)
    batch = _batches()[0]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor(batch["input_ids"]),
                       attention_mask=torch.tensor(batch["attention_mask"])).logits
    labels = torch.tensor(batch["labels"])
    want = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                                             ignore_index=-100).item()
    assert batches_loss(model, [batch]) == pytest.approx(want, rel=1e-6)
    half = [{k: [v[0]] for k, v in batch.items()}, {k: [v[1]] for k, v in batch.items()}]  # 6 + 4 scored tokens
    assert batches_loss(model, half) == pytest.approx(want, rel=1e-6)  # every token weighs the same, not every batch


# --------------------------------------------------------------------------- Evaluator, training_sample_of
def test_evaluator_evaluates_once_and_names_what_it_cannot(tmp_path):
    calls = []

    def evaluate(directory):
        calls.append(directory)
        return {"eval_loss": 1.5}

    judge = Evaluator(evaluate, own_formula=False, name="myfw")
    assert judge(tmp_path / "checkpoint-2", "eval_loss", "004") == 1.5
    assert judge(tmp_path / "checkpoint-2", "eval_loss", "004") == 1.5 and len(calls) == 1
    with fails("004", "myfw.evaluate(checkpoint-2) returned ['eval_loss'], not the metric the run logged "
                      "('eval_accuracy')"):
        judge(tmp_path / "checkpoint-2", "eval_accuracy", "004")

    def broken(directory):
        raise KeyError("model.embed_tokens.weight")

    with fails("000", "checkpoint-4 does not reload for re-evaluation (myfw.evaluate): KeyError: "
                      "'model.embed_tokens.weight'"):
        Evaluator(broken, own_formula=True, name="myfw")(tmp_path / "checkpoint-4", "eval_loss", "000")

    def judged(directory):
        raise OracleFailure("001", "checkpoint-4 holds 0 of 21 model tensors")

    with fails("001", "checkpoint-4 holds 0 of 21 model tensors"):  # a verdict passes through, not re-worded
        Evaluator(judged, own_formula=False, name="myfw")(tmp_path / "checkpoint-4", "eval_loss", "004")
    assert "give the adapter an evaluate(directory, spec)" in judge.hint()
    assert "myfw.evaluate() is the framework's own formula" in Evaluator(evaluate, own_formula=True, name="myfw").hint()


CONVERSATION = [{"role": "user", "content": "w1 w2"}, {"role": "assistant", "content": "w3"}]


def test_training_sample_of(assets):
    row = [0, 2, 4, 7, 8, 5, 9, 3]  # <pad> <s> <|user|> w1 w2 <|assistant|> w3 </s>
    other = [2, 4, 9, 5, 7, 8, 3, 0]  # the same words in another order
    batches = [{"input_ids": [other], "attention_mask": [[1] * 7 + [0]]},
               {"input_ids": [row], "attention_mask": [[0] + [1] * 7]}]
    assert training_sample_of(batches, CONVERSATION, assets.model_dir) == row[1:]
    with fails("template", "no training sample holds the conversation ['w1 w2', 'w3']"):
        training_sample_of(batches[:1], CONVERSATION, assets.model_dir)


# --------------------------------------------------------------------------- the face
def _defined_public_names() -> dict[str, str]:
    """name -> module for every public (no leading underscore) name a module of harness.oracles defines at top level:
    functions, classes and assignments; imported names are not definitions."""
    package = harness.oracles
    defined: dict[str, str] = {}
    modules = [package.__name__] + [m.name for m in pkgutil.walk_packages(package.__path__, package.__name__ + ".")]
    for name in modules:
        tree = ast.parse(Path(importlib.import_module(name).__file__).read_text(encoding="utf-8"))
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names = [node.name]
            elif isinstance(node, ast.Assign):
                names = [n.id for target in node.targets for n in ast.walk(target) if isinstance(n, ast.Name)]
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                names = [node.target.id]
            else:
                continue
            defined.update({n: name for n in names if not n.startswith("_")})
    return defined


def test_face_exports_exactly_the_public_names():
    from harness.layout import run_log_history

    exported = harness.oracles.__all__
    defined = _defined_public_names()
    want = set(defined) | {"read_log_history"}  # the one name from outside the package the face re-exports: the log in
    # the run's declared layout (harness.layout.run_log_history)
    missing = sorted(want - set(exported))
    extra = sorted(set(exported) - want)
    twice = sorted({n for n in exported if exported.count(n) > 1})
    assert not (missing or extra or twice), (
        f"harness.oracles.__all__ lacks {[f'{n} ({defined.get(n)})' for n in missing]}; exports {extra}, which no "
        f"module of the package defines; lists {twice} more than once")
    assert harness.oracles.read_log_history is run_log_history
    for name in exported:  # the face re-exports the modules' objects, it does not redefine them
        module = defined.get(name)
        if module and module != harness.oracles.__name__:
            assert getattr(harness.oracles, name) is getattr(importlib.import_module(module), name), name


# --- generation_config_changes / names_quantization (issue 32: false reds on correct frameworks) -------------------

def _generation_config(directory: Path, **values) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "generation_config.json").write_text(json.dumps({"transformers_version": "5.23.0", **values}))
    return directory


class _TurnEndTokenizer:
    """Stands in for a saved tokenizer whose chat template ends an assistant turn with id 7."""
    chat_template = "{{ messages }}"

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [5] if text == "w2" else [4, 5, 7]}

    def apply_chat_template(self, messages, tokenize=False):
        return "w1 w2 <end>"


@pytest.mark.parametrize(("saved", "tok", "verdict"), [
    ({"eos_token_id": 3, "do_sample": False}, None, None),
    ({"eos_token_id": [3], "do_sample": False}, None, None),  # LLaMA-Factory 0.9.5: the same stop token as a list
    ({"eos_token_id": [3, 7], "do_sample": False}, _TurnEndTokenizer(), None),  # the template's turn end added
    ({"eos_token_id": [3, 1], "do_sample": False}, _TurnEndTokenizer(), "eos_token_id [3, 1]"),  # ms-swift's <unk>
    ({"eos_token_id": [3, 7], "do_sample": False}, None, "eos_token_id [3, 7]"),  # no template: nothing may be added
    ({"eos_token_id": 7, "do_sample": False}, _TurnEndTokenizer(), "eos_token_id 7"),  # the base's stop token lost
    ({"eos_token_id": 3, "do_sample": True}, None, "do_sample: True, base False"),
    ({"eos_token_id": [3], "max_new_tokens": 64, "do_sample": False}, None, "max_new_tokens: 64, base None"),
])
def test_generation_config_changes(tmp_path, saved, tok, verdict):
    from harness.oracles import generation_config_changes

    base = _generation_config(tmp_path / "base", eos_token_id=3, do_sample=False)
    found = generation_config_changes(_generation_config(tmp_path / "saved", **saved), base, tok)
    if verdict is None:
        assert found is None, found
    else:
        assert found and verdict in found and "saved/generation_config.json" in found, found


@pytest.mark.parametrize(("text", "kind", "names"), [
    ("cannot merge: the base is quantised", "nf4", True),
    ("refusing to merge: trained on an nf4 (bitsandbytes 4-bit) base", "nf4", True),
    ("refusing to merge: trained on an 8-bit (bitsandbytes LLM.int8) base", "int8", True),
    ("refusing to merge: trained on a qint8 (optimum) base", "quanto-int8", True),
    ("merge failed: shape mismatch in q_proj", "nf4", False),
    ("refusing to merge: trained on an nf4 base", "quanto-int8", False),  # names another kind
    ("merge failed", None, False),
])
def test_names_quantization(text, kind, names):
    from harness.oracles import names_quantization

    assert names_quantization(text, kind) is names


@pytest.mark.parametrize(("config", "dtype", "fails"), [
    ({"dtype": "float32"}, torch.float32, False),
    ({"dtype": "bfloat16"}, torch.float32, True),  # served rounded
    ({"torch_dtype": "bfloat16"}, torch.float32, True),  # transformers < 4.56 spelling
    ({"torch_dtype": "bfloat16"}, torch.bfloat16, False),  # a bf16 model saved as bf16 is what it declares
    ({}, torch.float32, False),  # nothing declared
])
def test_served_dtype(tmp_path, config, dtype, fails):
    from harness.oracles import assert_served_dtype

    save_file({"w": torch.zeros(2, 2, dtype=dtype), "ids": torch.zeros(2, dtype=torch.int64)},
              str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(config))
    if fails:
        with pytest.raises(OracleFailure, match=r"config\.json declares dtype 'bfloat16', but its floating tensors are "
                                                r"stored as 1 F32"):
            assert_served_dtype(tmp_path)
    else:
        assert_served_dtype(tmp_path)


def test_served_dtype_ignores_an_adapter_dir(tmp_path):
    from harness.oracles import assert_served_dtype

    save_file({"lora_A": torch.zeros(2, 2)}, str(tmp_path / "adapter_model.safetensors"))
    (tmp_path / "adapter_config.json").write_text("{}")
    assert_served_dtype(tmp_path)


# --- the DPO reference-model oracles (issue 33) -------------------------------------------------------------------

def _dpo_log(step: int, chosen: float, rejected: float, logps: tuple[float, float] | None = None) -> dict:
    entry = {"step": step, "loss": 0.69, "rewards/chosen": chosen, "rewards/rejected": rejected}
    if logps is not None:
        entry.update({"logps/chosen": logps[0], "logps/rejected": logps[1]})
    return entry


def test_reference_oracle_passes_zero_rewards_and_names_what_it_lacks(tmp_path):
    from harness.oracles import assert_reference_is_start

    ok = _state(tmp_path / "ok", [_dpo_log(1, 0.0, 0.0), _dpo_log(2, 0.03, -0.01)])
    assert_reference_is_start(ok, start="the starting policy", candidates={"the starting policy": tmp_path},
                              dataset_dir=tmp_path, beta=0.1)
    with fails("ref", "logged no DPO rewards: expected 'rewards/chosen'"):
        assert_reference_is_start(_state(tmp_path / "none", [{"step": 1, "loss": 0.69}]), start="s",
                                  candidates={"s": tmp_path}, dataset_dir=tmp_path, beta=0.1)
    # a non-zero first step without logps: the verdict, and no diagnosis (nothing to recompute from)
    with fails("ref", "step 1 (before any update) logged rewards/chosen 0.0398 and rewards/rejected 0.0116, expected 0",
               "not the policy the run starts from (s: "):
        assert_reference_is_start(_state(tmp_path / "bad", [_dpo_log(1, 0.0398, 0.0116), _dpo_log(2, 0.0, 0.0)]),
                                  start="s", candidates={"s": tmp_path}, dataset_dir=tmp_path, beta=0.1)


def test_resume_oracle_judges_the_reference_not_the_policy(tmp_path):
    """The reference log-probs (logps - rewards / beta) must stay the first step's: a resumed policy that moved
    elsewhere (another optimizer state) passes, a reference re-taken at the resume fails, named as such."""
    from harness.oracles import assert_reference_survives_resume

    ref = (-15.5, -15.9)
    def run(name, steps):  # steps: step -> policy logps
        return _state(tmp_path / name, [_dpo_log(s, 0.1 * (p[0] - ref[0]), 0.1 * (p[1] - ref[1]), p) if r is None else
                                        _dpo_log(s, r[0], r[1], p) for s, (p, r) in steps.items()])

    uninterrupted = run("a", {1: (ref, None), 2: ((-15.2, -16.0), None), 3: ((-14.9, -16.2), None)})
    moved = run("b", {3: ((-15.0, -16.1), None)})  # the policy differs after the resume; the reference does not
    assert_reference_survives_resume(moved, uninterrupted, resumed_from=2, beta=0.1)
    retaken = run("c", {3: ((-15.2, -16.0), (0.0, 0.0))})
    with fails("ref", "after resuming from checkpoint-2, the reference's mean log-prob of the chosen completions at step 3 "
                      "is -15.2", "expected -15.5", "the reference is the resumed policy"):
        assert_reference_survives_resume(retaken, uninterrupted, resumed_from=2, beta=0.1)
    no_logps = _state(tmp_path / "d", [_dpo_log(3, 0.05, -0.02)])
    with fails("ref", "rewards/chosen at step 3 is 0.05", "the reference, or the resumed policy, is not the "
                      "uninterrupted run's"):
        assert_reference_survives_resume(no_logps, uninterrupted, resumed_from=2, beta=0.1)
    with fails("ref", "logged no DPO rewards for steps [3]"):
        assert_reference_survives_resume(_state(tmp_path / "e", [_dpo_log(2, 0.0, 0.0)]), uninterrupted,
                                         resumed_from=2, beta=0.1)
