"""Unit tests for the oracles the detection matrix used to be the only judge of: resume equivalence,
best checkpoint (with its edge cases), same weights, diffusion LoRA reload. Each is fed hand-made
directories, so every failure branch is reached deliberately and its message is checked."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from harness.models import build_assets
from harness.hf import evaluate_saved
from harness.oracles import (Evaluator, OracleFailure, assert_best_checkpoint_kept, assert_diffusion_lora_reloads,
                             assert_evaluated_at, assert_resume_equivalent, assert_same_weights,
                             assert_saves_reproduce_log)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return build_assets(tmp_path_factory.mktemp("edges"))


def _state(directory: Path, history: list[dict], **extra) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "trainer_state.json").write_text(json.dumps({"log_history": history, **extra}))


def _lora(directory: Path, scale: float = 1.0) -> None:
    torch.manual_seed(0)
    save_file({"base_model.model.q_proj.lora_A.weight": torch.randn(4, 64) * scale,
               "base_model.model.q_proj.lora_B.weight": torch.randn(64, 4) * scale},
              str(directory / "adapter_model.safetensors"))


# --------------------------------------------------------------------------- resume equivalence
def _run(root: Path, losses: dict[int, float], scale: float = 1.0, in_checkpoint: bool = False) -> Path:
    _state(root, [{"step": s, "loss": v} for s, v in losses.items()])
    target = root / "checkpoint-6" if in_checkpoint else root
    target.mkdir(parents=True, exist_ok=True)
    _lora(target, scale)
    return root


LOSSES = {1: 4.0, 2: 3.5, 3: 3.25, 4: 3.0, 5: 2.75, 6: 2.5}


def test_resume_equivalent_passes_on_identical_tail(tmp_path):
    a = _run(tmp_path / "a", LOSSES)
    b = _run(tmp_path / "b", {3: 9.9, **{s: v for s, v in LOSSES.items() if s > 3}}, in_checkpoint=True)
    assert_resume_equivalent(a, b, resumed_from_step=3)  # steps <= k are not compared; LoRA found in checkpoint-6


def test_resume_equivalent_names_the_first_diverging_step(tmp_path):
    a = _run(tmp_path / "a", LOSSES)
    b = _run(tmp_path / "b", {**LOSSES, 5: 2.7500001})
    with pytest.raises(OracleFailure, match=r"resumed from checkpoint-3: loss at step 5 is 2\.7500001, the "
                                            r"uninterrupted run had 2\.75 \(rtol=0\.0, atol=0\.0\)"):
        assert_resume_equivalent(a, b, resumed_from_step=3)
    assert_resume_equivalent(a, b, resumed_from_step=3, rtol=1e-6)  # within a stated tolerance


def test_resume_equivalent_catches_missing_steps_and_nothing_to_compare(tmp_path):
    a = _run(tmp_path / "a", LOSSES)
    b = _run(tmp_path / "b", {s: v for s, v in LOSSES.items() if s != 5})
    with pytest.raises(OracleFailure, match=r"logged no loss for steps \[5\].*did not continue from step 3"):
        assert_resume_equivalent(a, b, resumed_from_step=3)
    with pytest.raises(OracleFailure, match="logged no loss after step 6; nothing to compare"):
        assert_resume_equivalent(a, b, resumed_from_step=6)


def test_resume_equivalent_catches_different_final_lora(tmp_path):
    a = _run(tmp_path / "a", LOSSES)
    b = _run(tmp_path / "b", LOSSES, scale=1.001)
    with pytest.raises(OracleFailure, match=r"final tensor base_model\.model\.q_proj\.lora_[AB]\.weight differs "
                                            r"from the uninterrupted run by"):
        assert_resume_equivalent(a, b, resumed_from_step=3)
    (b / "adapter_model.safetensors").unlink()
    with pytest.raises(OracleFailure, match=r"no weights on disk \(neither .*adapter_model\.safetensors.* nor a full model\)"):
        assert_resume_equivalent(a, b, resumed_from_step=3)


# --------------------------------------------------------------------------- a resume is a resume (issue 19)
def test_consumed_samples_reads_templated_padded_rows(assets, tmp_path):
    from tokenizers import Tokenizer

    from harness.probes import ConsumedSamples

    texts = ["w1 w2 w3 w4", "w5 w6 w7 w8", "w2 w3 w4 w5"]
    probe = ConsumedSamples(texts, assets.model_dir, tmp_path / "p.jsonl")
    tok = Tokenizer.from_file(str(assets.model_dir / "tokenizer.json"))
    ids = {w: tok.token_to_id(w) for w in ("<pad>", "<|user|>", "<|assistant|>", "</s>", "w1", "w2", "w3", "w4")}
    templated = [ids["<pad>"], ids["<|user|>"], ids["w1"], ids["<|assistant|>"], ids["w2"], ids["w3"], ids["w4"],
                 ids["</s>"]]
    assert probe.sample_of(templated) == 0  # turns and specials around it, padding before it
    assert probe.sample_of(templated[:-2]) == 0  # a word glued to a template marker: still that sample
    assert probe.sample_of([ids["w2"], ids["w3"], ids["w4"]]) == -1  # inside samples 0 and 2 alike: ambiguous
    assert probe.sample_of(templated + [ids["w2"]]) == -1  # two samples packed in one row: not one sample
    with pytest.raises(ValueError, match="same words"):
        ConsumedSamples(["w1 w2", "w2 w1"], assets.model_dir, tmp_path / "q.jsonl")


def test_consumed_in_order_names_replay_and_first_difference():
    from harness.oracles import assert_consumed_in_order

    a = [3, 1, 2, 0, 1, 0, 3, 2]
    assert_consumed_in_order(a, a[4:], 2, 2)
    with pytest.raises(OracleFailure, match=r"consumed 8 samples, the uninterrupted run 4 after step 2 \(2 per "
                                            r"step\): it trained the first steps again"):
        assert_consumed_in_order(a, a, 2, 2)
    with pytest.raises(OracleFailure, match=r"sample #5 consumed is 1 but the uninterrupted run consumed 0 there"):
        assert_consumed_in_order(a, [1, 1, 3, 2], 2, 2)


def test_missing_state_must_be_named(tmp_path):
    from harness.oracles import assert_missing_state_reported

    missing = tmp_path / "checkpoint-5" / "optimizer.pt"
    assert_missing_state_reported(missing, FileNotFoundError(f"no {missing}"), "")
    assert_missing_state_reported(missing, None, "WARNING optimizer.pt not found: fresh optimizer")
    with pytest.raises(OracleFailure, match=r"checkpoint-5 has no optimizer.pt; .* but it trained to the end without "
                                            r"an error or a warning naming it: a silent fresh optimizer"):
        assert_missing_state_reported(missing, None, "all good")
    with pytest.raises(OracleFailure, match=r"but it raised KeyError: 'state'"):
        assert_missing_state_reported(missing, KeyError("state"), "")


def test_perturb_weights_changes_every_shard_and_refuses_an_empty_dir(assets, tmp_path):
    from harness.errors import MissingFileError
    from harness.faults import PERTURBATION, perturb_weights
    from harness.mutants.saves import _reshard

    ckpt = tmp_path / "checkpoint-1"
    shutil.copytree(assets.model_dir, ckpt)
    _reshard(ckpt, shards=3)
    before = {f.name: load_file(str(f)) for f in ckpt.glob("model-*.safetensors")}
    assert len(perturb_weights(ckpt)) == 3
    for name, tensors in before.items():
        after = load_file(str(ckpt / name))
        assert all(torch.allclose(after[k], v + PERTURBATION) for k, v in tensors.items())
    (tmp_path / "empty").mkdir()
    with pytest.raises(MissingFileError, match="no weights to perturb"):
        perturb_weights(tmp_path / "empty")


def test_resumed_into_new_dir_and_follows_checkpoint(tmp_path):
    from harness.oracles import assert_follows_checkpoint, assert_resumed_into_new_dir

    out = _run(tmp_path / "b", {s: v for s, v in LOSSES.items() if s > 3})
    (out / "checkpoint-4").mkdir()
    assert_resumed_into_new_dir(out, 3)
    with pytest.raises(OracleFailure, match=r"the run saved \['checkpoint-4'\]: it trained steps <= 4 again"):
        assert_resumed_into_new_dir(out, 4)
    (out / "checkpoint-4").rmdir()
    same = _run(tmp_path / "same", {s: v for s, v in LOSSES.items() if s > 3})
    with pytest.raises(OracleFailure, match="left the loss at step 4 unchanged"):
        assert_follows_checkpoint(out, same, 3)
    moved = _run(tmp_path / "moved", {**LOSSES, 4: 3.1}, scale=1.5)
    assert_follows_checkpoint(out, moved, 3)


# --------------------------------------------------------------------------- best checkpoint, reload
def _full_checkpoint(assets, out: Path, step: int, delta: float) -> Path:
    ckpt = out / f"checkpoint-{step}"
    shutil.copytree(assets.model_dir, ckpt)
    tensors = load_file(str(ckpt / "model.safetensors"))
    save_file({k: v + delta for k, v in tensors.items()}, str(ckpt / "model.safetensors"))
    return ckpt


def _judge(assets, own_formula: bool = False, shift: float = 0.0) -> Evaluator:
    """The harness formula (as Adapter.evaluate's default), optionally offset: a framework whose own formula differs."""
    return Evaluator(lambda d: {k: v + shift for k, v in evaluate_saved(d, assets.dataset_dir).items()},
                     own_formula=own_formula, name="test-adapter")


@pytest.fixture(scope="module")
def evaluated(assets, tmp_path_factory):
    """Three full checkpoints with real eval losses (re-evaluated by the harness's own formula)."""
    out = tmp_path_factory.mktemp("best-src")
    losses = {}
    for step, delta in ((2, 0.0), (4, 0.02), (6, 0.05)):
        losses[step] = evaluate_saved(_full_checkpoint(assets, out, step, delta), assets.dataset_dir)["eval_loss"]
    return out, losses


def _output(evaluated, tmp_path, logged: dict[int, float], keep=(2, 4, 6), **state) -> Path:
    src, _ = evaluated
    out = tmp_path / "out"
    out.mkdir()
    for step in keep:
        shutil.copytree(src / f"checkpoint-{step}", out / f"checkpoint-{step}")
    _state(out, [{"step": s, "eval_loss": v} for s, v in logged.items()], **state)
    return out


def test_best_checkpoint_passes_and_returns_the_best_step(evaluated, assets, tmp_path):
    _, losses = evaluated
    best = min(losses, key=losses.get)
    out = _output(evaluated, tmp_path, losses, best_model_checkpoint=str(tmp_path / "out" / f"checkpoint-{best}"))
    assert assert_best_checkpoint_kept(out, _judge(assets), newest_step=6) == best
    assert set(assert_saves_reproduce_log(out, _judge(assets))) == {"checkpoint-2", "checkpoint-4", "checkpoint-6"}


def test_best_checkpoint_not_on_disk(evaluated, assets, tmp_path):
    _, losses = evaluated
    logged = {**losses, 5: min(losses.values()) - 1.0}  # the best evaluation was on a step never saved
    out = _output(evaluated, tmp_path, logged)
    with pytest.raises(OracleFailure, match=r"was logged at step 5, but there is no checkpoint-5 on disk "
                                            r"\(checkpoints: \[2, 4, 6\]\)"):
        assert_best_checkpoint_kept(out, _judge(assets))


def test_best_checkpoint_first_of_equal_values_is_the_best(evaluated, assets, tmp_path):
    _, losses = evaluated
    best = min(losses, key=losses.get)
    logged = {**losses, 7: losses[best]}  # a later tie is no improvement
    out = _output(evaluated, tmp_path, logged)
    assert assert_best_checkpoint_kept(out, _judge(assets)) == best


def test_best_checkpoint_recorded_path_must_exist(evaluated, assets, tmp_path):
    _, losses = evaluated
    out = _output(evaluated, tmp_path, losses, best_model_checkpoint="/nowhere/checkpoint-2")
    with pytest.raises(OracleFailure, match=r"names best_model_checkpoint='/nowhere/checkpoint-2', which does not "
                                            r"exist on disk"):
        assert_best_checkpoint_kept(out, _judge(assets))


def test_best_checkpoint_recorded_must_name_the_best(evaluated, assets, tmp_path):
    """best_model_checkpoint names a checkpoint that exists but is not the best one."""
    _, losses = evaluated
    best, worst = min(losses, key=losses.get), max(losses, key=losses.get)
    out = _output(evaluated, tmp_path, losses, best_model_checkpoint=str(tmp_path / "out" / f"checkpoint-{worst}"))
    with pytest.raises(OracleFailure, match=rf"names best_model_checkpoint=.*checkpoint-{worst}', which exists, but "
                                            rf"is not the best: the best logged eval_loss is .* at step {best}"):
        assert_best_checkpoint_kept(out, _judge(assets))


def test_best_checkpoint_newest_save_must_survive(evaluated, assets, tmp_path):
    _, losses = evaluated
    out = _output(evaluated, tmp_path, losses, keep=(2, 4))
    with pytest.raises(OracleFailure, match=r"the newest save, checkpoint-6 \(the one a resume needs\), is not on "
                                            r"disk \(checkpoints: \[2, 4\]\): rotation removed it"):
        assert_best_checkpoint_kept(out, _judge(assets), newest_step=6)


def test_best_checkpoint_rotation_limit(evaluated, assets, tmp_path):
    _, losses = evaluated
    out = _output(evaluated, tmp_path, losses)
    with pytest.raises(OracleFailure, match=r"3 checkpoints on disk \(\[2, 4, 6\]\) with save_total_limit=1"):
        assert_best_checkpoint_kept(out, _judge(assets), save_total_limit=1)


def test_best_checkpoint_with_other_weights_is_caught(evaluated, assets, tmp_path):
    """The best step's directory exists but holds another model (its own trainer_state would say otherwise: not
    read)."""
    _, losses = evaluated
    best = min(losses, key=losses.get)
    worst = max(losses, key=losses.get)
    out = _output(evaluated, tmp_path, losses)
    shutil.copy(out / f"checkpoint-{worst}" / "model.safetensors", out / f"checkpoint-{best}" / "model.safetensors")
    _state(out / f"checkpoint-{best}", [{"step": best, "eval_loss": losses[best]}], global_step=best)
    with pytest.raises(OracleFailure, match=rf"re-evaluating checkpoint-{best} gives eval_loss=.*but .* was logged at "
                                            rf"step {best}: the checkpoint does not hold the best model"):
        assert_best_checkpoint_kept(out, _judge(assets))
    with pytest.raises(OracleFailure, match=rf"checkpoint-{best} reloaded gives eval_loss=.*, but the run logged .* "
                                            rf"\(step {best}\) for it \(rtol 2e-06; 2 other save\(s\) reproduce "
                                            rf"theirs\): the saved model is not the model the run evaluated"):
        assert_saves_reproduce_log(out, _judge(assets))


def test_other_formula_without_evaluate_hook_fails_saying_how_to_fix(evaluated, assets, tmp_path):
    """A framework whose logged metric the default formula cannot reproduce fails, whatever its own record says:
    no fallback to the checkpoint's trainer_state (the old _same_formula); the message says how to fix the adapter."""
    _, losses = evaluated
    out = _output(evaluated, tmp_path, {s: v + 0.3 for s, v in losses.items()})  # the framework's own formula
    with pytest.raises(OracleFailure, match=r"checkpoint-\d does not reproduce its logged value either: either the "
                                            r"run evaluated something other than eval.jsonl, or test-adapter computes "
                                            r"the metric differently .* give the adapter an evaluate\(directory, spec\)"):
        assert_best_checkpoint_kept(out, _judge(assets))
    with pytest.raises(OracleFailure, match=r"no save reproduces the eval_loss the run logged for it \(3 of 3 "
                                            r"reloaded and re-evaluated by test-adapter: .*give the adapter an "
                                            r"evaluate"):
        assert_saves_reproduce_log(out, _judge(assets))
    # with the framework's formula behind Adapter.evaluate, the same directory is judged correct
    assert assert_best_checkpoint_kept(out, _judge(assets, own_formula=True, shift=0.3)) == min(losses,
                                                                                               key=losses.get)
    assert_saves_reproduce_log(out, _judge(assets, own_formula=True, shift=0.3))


def test_final_output_reproduces_last_or_best(evaluated, assets, tmp_path):
    """The final output reproduces the metric logged at the last step, or at the best (load_best_model_at_end)."""
    src, losses = evaluated
    best = min(losses, key=losses.get)
    out = _output(evaluated, tmp_path, losses)
    shutil.copy(src / f"checkpoint-{best}" / "model.safetensors", out / "model.safetensors")
    shutil.copy(src / f"checkpoint-{best}" / "config.json", out / "config.json")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(src / f"checkpoint-{best}" / name, out / name)
    assert "the final output" in assert_saves_reproduce_log(out, _judge(assets))
    save_file({k: v * 1.5 for k, v in load_file(str(out / "model.safetensors")).items()},
              str(out / "model.safetensors"))
    with pytest.raises(OracleFailure, match=rf"the final output reloaded gives eval_loss=.* but the run logged .* "
                                            rf"\(step 6\) or .* \(step {best}\) or any other evaluated step's value for it"):
        assert_saves_reproduce_log(out, _judge(assets))


def test_evaluated_at_cadence(evaluated, assets, tmp_path):
    _, losses = evaluated
    out = _output(evaluated, tmp_path, losses)
    assert_evaluated_at(out, [2, 4], last_step=6)
    with pytest.raises(OracleFailure, match=r"eval_loss was to be logged at steps \[2, 3\] .* but was logged at "
                                            r"\[2, 4, 6\]"):
        assert_evaluated_at(out, [2, 3], last_step=6)


def test_best_checkpoint_without_evaluations(evaluated, assets, tmp_path):
    out = _output(evaluated, tmp_path, {})
    with pytest.raises(OracleFailure, match=r"no 'eval_loss' in the logged history; nothing was evaluated"):
        assert_best_checkpoint_kept(out, _judge(assets))


# --------------------------------------------------------------------------- same weights
def test_same_weights(assets, tmp_path):
    a = shutil.copytree(assets.model_dir, tmp_path / "a")
    b = shutil.copytree(assets.model_dir, tmp_path / "b")
    tensors = load_file(str(b / "model.safetensors"))
    key = sorted(tensors)[0]
    save_file({**tensors, key: tensors[key] + 1e-6}, str(b / "model.safetensors"))
    assert_same_weights(b, a, atol=1e-5)
    with pytest.raises(OracleFailure, match=rf"{key} differs from the single-process run by .* \(> atol 1e-07\)"):
        assert_same_weights(b, a, atol=1e-7)
    save_file({**tensors, key: tensors[key][:1].clone()}, str(b / "model.safetensors"))
    with pytest.raises(OracleFailure, match=rf"{key} has shape"):
        assert_same_weights(b, a, atol=1.0)
    save_file({k: v for k, v in tensors.items() if k != key}, str(b / "model.safetensors"))
    with pytest.raises(OracleFailure, match="holds different tensors"):
        assert_same_weights(b, a, atol=1.0)


# --------------------------------------------------------------------------- diffusion LoRA reload
@pytest.fixture(scope="module")
def unet_root(tmp_path_factory):
    pytest.importorskip("diffusers")
    from harness.diffusion import build_tiny_unet

    return build_tiny_unet(tmp_path_factory.mktemp("tiny-unet"))


def _diffusion_lora(root: Path, out: Path, seed: int) -> Path:
    from harness.diffusion import add_lora, load_unet, save_lora

    unet = load_unet(root)
    add_lora(unet, 4, 8.0, seed=seed)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # a trained LoRA: B is no longer zero, so the LoRA changes the output
        for name, p in unet.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.1)
    out.mkdir(parents=True)
    save_lora(unet, out)
    return out


def test_diffusion_lora_reloads(unet_root, tmp_path):
    a = _diffusion_lora(unet_root, tmp_path / "a", seed=1)
    b = _diffusion_lora(unet_root, tmp_path / "b", seed=1)
    assert_diffusion_lora_reloads(unet_root, a, b, None)
    c = _diffusion_lora(unet_root, tmp_path / "c", seed=2)
    with pytest.raises(OracleFailure, match=r"gives a different denoiser output than the uninterrupted run's"):
        assert_diffusion_lora_reloads(unet_root, a, c, None)


def test_diffusion_lora_with_foreign_keys_is_caught(unet_root, tmp_path):
    from harness.diffusion import LORA_WEIGHTS

    a = _diffusion_lora(unet_root, tmp_path / "a", seed=1)
    b = _diffusion_lora(unet_root, tmp_path / "b", seed=1)
    tensors = load_file(str(b / LORA_WEIGHTS))
    key = sorted(tensors)[0]
    save_file({k: v for k, v in tensors.items() if k != key}, str(b / LORA_WEIGHTS))  # one tensor lost in the save
    with pytest.raises(OracleFailure, match=r"b: .*(LoRA keys differ from the file|LoRA tensors differ from the file"
                                            r"|failed)"):
        assert_diffusion_lora_reloads(unet_root, a, b, None)


def test_start_weights_of_an_adapter_without_its_base_names_file_and_key(tmp_path):
    """issue 37: an adapter_config.json without base_model_name_or_path (torchtune writes it only when `tune download`
    left original_repo_id.json) is a failure naming the file and the key, not a raw KeyError."""
    from harness.oracles import OracleFailure, start_weights

    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4}))
    with pytest.raises(OracleFailure) as info:
        start_weights(tmp_path)
    message = str(info.value)
    assert "adapter_config.json" in message and "base_model_name_or_path" in message, message


def test_resumed_into_new_dir_accepts_a_copy_of_the_source_only(tmp_path):
    """issue 32 (SimpleTuner 4.10.1): a framework that resumes only from inside its output dir has checkpoint-k copied
    there; a byte-identical copy of the checkpoint resumed from is not re-training, any other checkpoint <= k is."""
    from harness.oracles import OracleFailure, assert_resumed_into_new_dir

    source = tmp_path / "a" / "checkpoint-2"
    source.mkdir(parents=True)
    (source / "adapter_model.safetensors").write_bytes(b"trained")
    out = tmp_path / "b"
    shutil.copytree(source, out / "checkpoint-2")
    (out / "checkpoint-4").mkdir()
    assert_resumed_into_new_dir(out, 2, source=source)
    with pytest.raises(OracleFailure, match=r"saved \['checkpoint-2'\]"):
        assert_resumed_into_new_dir(out, 2)  # no source given: a checkpoint <= k is a retrain
    (out / "checkpoint-2" / "adapter_model.safetensors").write_bytes(b"retrained")
    with pytest.raises(OracleFailure, match="trained steps <= 2 again"):
        assert_resumed_into_new_dir(out, 2, source=source)


def test_an_evaluate_that_ignores_its_directory_is_named(tmp_path):
    """issue 32 (ms-swift 3.1.1 adapter): three checkpoints with different logged losses re-evaluate to the same value:
    the adapter's evaluate is not evaluating the directory it is given, and the message says so."""
    from harness.oracles import Evaluator, OracleFailure, assert_saves_reproduce_log

    history = [{"step": s, "eval_loss": 4.0 - s / 10} for s in (1, 2, 3)]
    for s in (1, 2, 3):
        (tmp_path / f"checkpoint-{s}").mkdir()
    (tmp_path / "trainer_state.json").write_text(json.dumps({"global_step": 3, "log_history": history}))
    same = Evaluator(lambda directory: {"eval_loss": 3.93353}, own_formula=True, name="stuck")
    with pytest.raises(OracleFailure, match=r"stuck's evaluate gives eval_loss=3.93353 for each of 3 saves whose "
                                            r"logged values differ .*does not evaluate the directory it is given"):
        assert_saves_reproduce_log(tmp_path, same)


def test_attention_mask_must_be_zero_on_leading_padding_and_nowhere_in_the_sample():
    """issue 32: a collator that drops the attention mask passes every label check; what it changes is what a
    left-padded sample attends to. Trailing pads attended by a causal model change nothing and pass."""
    from harness.oracles import OracleFailure
    from harness.oracles.chat import _assert_mask_is_the_padding

    def check(ids, mask):
        _assert_mask_is_the_padding(ids, mask, 0, "sample", lambda t: str(list(t)), "labels")

    check([0, 0, 5, 6, 7], [0, 0, 1, 1, 1])  # left padding, masked
    check([5, 6, 7, 0, 0], [1, 1, 1, 0, 0])  # right padding, masked
    check([5, 6, 7, 0, 0], [1, 1, 1, 1, 1])  # right padding attended: harmless for a causal model
    with pytest.raises(OracleFailure, match="the 2 pad tokens before the sample carry attention mask 1"):
        check([0, 0, 5, 6, 7], [1, 1, 1, 1, 1])
    with pytest.raises(OracleFailure, match=r"attention mask 0 on 1 tokens of the sample, first at position 3"):
        check([0, 0, 5, 6, 7], [0, 0, 1, 0, 1])


def test_a_lora_save_with_a_merged_copy_is_not_full_training(tmp_path):
    """issue 37 (torchtune saves the merged model beside the adapter): full weights beside a LoRA adapter are full
    training only where the tensors the adapter does not target differ from the base."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from harness.oracles import OracleFailure, assert_adapter_only_save

    assets = build_assets(tmp_path / "assets", arch="llama", seed=0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(str(assets.model_dir)),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p)  # a trained adapter: merging changes the targeted weights
    out = tmp_path / "save"
    model.save_pretrained(str(out))
    model.merge_and_unload().save_pretrained(str(out))  # the merged copy beside it
    assert_adapter_only_save(out, base_dir=assets.model_dir)
    weights = load_file(str(out / "model.safetensors"))
    weights["model.embed_tokens.weight"] = weights["model.embed_tokens.weight"] + 1e-3
    save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(OracleFailure, match=r"tensors outside the adapter's target modules differ from the base"):
        assert_adapter_only_save(out, base_dir=assets.model_dir)


# --------------------------------------------------------------------------- crash states
def _ckpt(tree: Path, name: str, files: dict[str, bytes]) -> None:
    (tree / name).mkdir(parents=True, exist_ok=True)
    for file, data in files.items():
        (tree / name / file).write_bytes(data)


OLD = {"model.safetensors": b"old weights", "trainer_state.json": b"{2}"}
NEW = {"model.safetensors": b"new weights", "trainer_state.json": b"{4}"}


@pytest.fixture
def completed(tmp_path):
    """checkpoint-2 complete before the save; after it, checkpoint-4 complete and checkpoint-2 rotated away."""
    from harness.oracles import completed_checkpoints

    _ckpt(tmp_path / "before", "checkpoint-2", OLD)
    _ckpt(tmp_path / "after", "checkpoint-4", NEW)
    return completed_checkpoints(tmp_path / "before", tmp_path / "after")


@pytest.mark.parametrize("on_disk", [
    {"checkpoint-2": OLD},  # the new one not yet in place
    {"checkpoint-2": OLD, "checkpoint-4": NEW},  # in place, the old not yet rotated
    {"checkpoint-2": {"trainer_state.json": b"{2}"}, "checkpoint-4": NEW},  # half-deleted old beside a whole new
    {"checkpoint-4": NEW},
], ids=["old-only", "both", "old-half-deleted", "new-only"])
def test_crash_state_sound(tmp_path, completed, on_disk):
    from harness.oracles import assert_crash_state_sound

    for name, files in on_disk.items():
        _ckpt(tmp_path / "state", name, files)
    assert assert_crash_state_sound(tmp_path / "state", completed, point="#1", after_checkpoint=2) == sorted(
        int(n.split("-")[1]) for n, f in on_disk.items() if f in (OLD, NEW))


@pytest.mark.parametrize("on_disk, message", [
    ({"checkpoint-2": OLD, "checkpoint-4": {"model.safetensors": b"new"}},
     r"checkpoint-4 is on disk but incomplete \(missing trainer_state.json; differs: model.safetensors \(3 of 11 "
     r"bytes\)\) and it is the newest"),
    ({}, r"no complete checkpoint-2 or newer is left \(on disk: no checkpoint\)"),
    ({"checkpoint-2": {"model.safetensors": b"old weights"}}, r"checkpoint-2 is on disk but incomplete \(missing "
                                                             r"trainer_state.json\) and it is the newest"),
    ({"checkpoint-2": {"model.safetensors": b"old weights"}, "checkpoint-3": NEW, "checkpoint-4": NEW},
     r"checkpoint-3 is on disk but incomplete \(no completed save of this run left a checkpoint of this name\)"),
], ids=["new-partial", "nothing", "old-partial-alone", "unknown-name"])
def test_crash_state_unsound_names_the_checkpoint(tmp_path, completed, on_disk, message):
    from harness.oracles import assert_crash_state_sound

    (tmp_path / "state").mkdir()
    for name, files in on_disk.items():
        _ckpt(tmp_path / "state", name, files)
    with pytest.raises(OracleFailure, match=r"killed just before file-system step #7 rename a -> b: " + message):
        assert_crash_state_sound(tmp_path / "state", completed, point="#7 rename a -> b", after_checkpoint=2)
