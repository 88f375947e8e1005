"""Seed 002 — LoRA on a quantised base must resume exactly.

The story (SimpleTuner #659, an upstream PEFT bug; diffusers #9108 for optimum-quanto): resuming
LoRA training from a checkpoint fails when the base model is quantised; the work-around
``--init_lora`` silently starts the adapter again. Advice: keep quantisation identical on resume.

Correct behaviour, for every quantisation (none, bitsandbytes nf4 / int8, quanto int8 / int4):
run A trains N steps uninterrupted; run B resumes from A's ``checkpoint-k`` and continues to N. B's
losses for steps k+1..N and its final LoRA tensors equal A's — exactly on CPU (both runs execute the
same float32 kernels in the same order; any difference means state was lost) and within ``GPU_RTOL``
on CUDA (bitsandbytes CUDA kernels are not bit-deterministic). The base model on disk is untouched.
Resuming with a different quantisation is a clear error naming both settings.

A resume must be a resume (issue 19): a run that ignores ``resume_from`` and retrains from step 0 with
the same seed reproduces A exactly, so B must also save nothing at or before step k, leave A's
checkpoints untouched, and follow a *perturbed* copy of checkpoint-k (its weights read from disk).
"""

from __future__ import annotations

import shutil

import pytest

from harness.faults import perturb_weights
from harness.oracles import (assert_adapter_only_save, assert_follows_checkpoint, assert_resume_equivalent,
                             assert_resumed_into_new_dir, checkpoints_fingerprint, dir_fingerprint)

from ._support import device_tolerance, quant_params, require_resume_from_elsewhere, spec

pytestmark = [pytest.mark.ft_seed("002"), pytest.mark.ft_requires("sft", "lora", "resume")]

N_STEPS = 6
SAVE_EVERY = 2
GPU_RTOL = 1e-3

QUANTS = quant_params(None, "nf4", "int8", "quanto-int8", "quanto-int4")


@pytest.fixture(scope="module")
def uninterrupted(ft_adapter, tiny_assets, tmp_path_factory, ft_device):
    """Run A per quantisation, cached for the module: N steps, a checkpoint every SAVE_EVERY steps."""
    runs = {}

    def get(quant):
        if quant not in runs:
            out = tmp_path_factory.mktemp(f"uninterrupted-{quant or 'none'}")
            before = dir_fingerprint(tiny_assets.model_dir)
            runs[quant] = ft_adapter.train(spec(tiny_assets, out, train_type="lora", quantization=quant,
                                                max_steps=N_STEPS, save_steps=SAVE_EVERY, learning_rate=2e-2,
                                                device=ft_device))
            assert dir_fingerprint(tiny_assets.model_dir) == before, "training modified the base model on disk"
        return runs[quant]

    return get


def resume_spec(assets, output_dir, quant, checkpoint, device):
    return spec(assets, output_dir, train_type="lora", quantization=quant, max_steps=N_STEPS, save_steps=SAVE_EVERY,
                learning_rate=2e-2, resume_from=checkpoint, device=device)


@pytest.fixture(scope="module")
def resumed(ft_adapter, uninterrupted, tiny_assets, tmp_path_factory, ft_device):
    """Run B per (quantisation, k), cached: resumed from A's checkpoint-k into a new directory."""
    runs = {}

    def get(quant, k):
        if (quant, k) not in runs:
            require_resume_from_elsewhere(ft_adapter)  # into a new directory, from A's checkpoint
            run_a = uninterrupted(quant)
            before = dir_fingerprint(tiny_assets.model_dir), checkpoints_fingerprint(run_a.output_dir, k)
            out = tmp_path_factory.mktemp(f"resumed-{quant or 'none'}-k{k}") / "out"
            runs[quant, k] = ft_adapter.train(resume_spec(tiny_assets, out, quant, run_a.checkpoint(k), ft_device))
            assert dir_fingerprint(tiny_assets.model_dir) == before[0], (
                "seed 002: resuming modified the base model on disk")
            assert checkpoints_fingerprint(run_a.output_dir, k) == before[1], (
                f"seed 002: resuming from {run_a.output_dir.name}/checkpoint-{k} rewrote that run's checkpoints")
        return runs[quant, k]

    return get


@pytest.mark.ft_smoke("none-2", "nf4-2")
@pytest.mark.parametrize("k", [2, 4])
@pytest.mark.parametrize("quant", QUANTS)
def test_resume_matches_uninterrupted(uninterrupted, resumed, quant, k, ft_device):
    run_a, run_b = uninterrupted(quant), resumed(quant, k)
    assert_resume_equivalent(run_a.output_dir, run_b.output_dir, k, **device_tolerance(ft_device, GPU_RTOL))
    assert_resumed_into_new_dir(run_b.output_dir, k, source=run_a.checkpoint(k))
    assert_adapter_only_save(run_b.final_dir, seed="002")


@pytest.mark.parametrize("quant", QUANTS)
def test_resume_reads_the_checkpoint(ft_adapter, uninterrupted, resumed, tiny_assets, tmp_path, quant, ft_device):
    """A copy of checkpoint-4 with perturbed LoRA weights must lead elsewhere than checkpoint-4 itself."""
    require_resume_from_elsewhere(ft_adapter)
    k = 4
    copy = tmp_path / "source" / f"checkpoint-{k}"
    shutil.copytree(uninterrupted(quant).checkpoint(k), copy)
    perturb_weights(copy)
    perturbed = ft_adapter.train(resume_spec(tiny_assets, tmp_path / "perturbed", quant, copy, ft_device))
    assert_follows_checkpoint(resumed(quant, k).output_dir, perturbed.output_dir, k, seed="002")


@pytest.mark.ft_requires("quant-nf4", "quant-int8")
def test_resume_with_other_quantization_is_refused(ft_adapter, uninterrupted, tiny_assets, tmp_path, ft_device):
    require_resume_from_elsewhere(ft_adapter)
    run_a = uninterrupted("nf4")
    with pytest.raises(Exception) as excinfo:
        ft_adapter.train(spec(tiny_assets, tmp_path / "resumed", train_type="lora", quantization="int8",
                              max_steps=N_STEPS, save_steps=SAVE_EVERY, learning_rate=2e-2,
                              resume_from=run_a.checkpoint(2), device=ft_device))
    message = str(excinfo.value)
    assert "nf4" in message and "int8" in message, (
        f"seed 002: resuming an nf4 checkpoint with int8 must fail naming both settings, got "
        f"{type(excinfo.value).__name__}: {message[:300]}")
