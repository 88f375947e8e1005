"""Seed 002 on its home ground — LoRA on a quantised *diffusion* denoiser must resume exactly.

The story (SimpleTuner #659, diffusers #9108): SimpleTuner trains LoRA on a UNet quantised with
optimum-quanto (``quantize(unet, weights=qint8)`` + ``freeze``). Resuming goes
``accelerator.load_state`` -> ``_load_lora`` -> ``lora_state_dict`` -> ``set_peft_model_state_dict``
and dies with ``KeyError: '<name>.weight._data'`` inside quanto's ``_load_from_state_dict``
(optimum-quanto 0.2.4); the work-around, ``--init_lora``, silently starts the adapter again.

Quantisations: none and optimum-quanto int8 everywhere; bitsandbytes nf4 / int8 in the ``cuda``
variant only (diffusers' bitsandbytes quantiser needs a GPU).

Correct behaviour: run A trains N steps; run B resumes from A's ``checkpoint-k`` through the same
call chain and continues to N. Loading succeeds, B's losses for k+1..N and its final LoRA tensors
equal A's (exactly on CPU), and the saved LoRA reloads into a fresh quantised UNet through that
chain with every tensor equal to the file and the same denoiser output for A and B.

A resume must be a resume (issue 19): B saves nothing at or before step k, leaves A's checkpoints
untouched, and a run resumed from a *perturbed* copy of checkpoint-k ends elsewhere than B.
"""

from __future__ import annotations

import shutil

import pytest

from harness.faults import perturb_weights
from harness.oracles import (assert_diffusion_lora_reloads, assert_follows_checkpoint, assert_resume_equivalent,
                             assert_resumed_into_new_dir, checkpoints_fingerprint, dir_fingerprint)

from ._support import device_tolerance, quant_params, require_resume_from_elsewhere, spec

pytestmark = [pytest.mark.ft_seed("002"), pytest.mark.ft_requires("diffusion", "lora", "resume")]

N_STEPS = 6
SAVE_EVERY = 2
GPU_RTOL = 1e-3

# bitsandbytes variants run on CUDA only: diffusers' quantiser says "No GPU found. A GPU is needed for quantization."
QUANTS = quant_params(None, "quanto-int8", "nf4", "int8")
BNB = ("nf4", "int8")


@pytest.fixture(scope="module")
def tiny_unet(tmp_path_factory):
    """A whole tiny SD1.x pipeline (UNet, VAE, CLIP text encoder + tokenizer, scheduler), built locally."""
    pytest.importorskip("diffusers")
    from harness.diffusion import build_tiny_sd_pipeline

    return build_tiny_sd_pipeline(tmp_path_factory.mktemp("tiny-sd"))


@pytest.fixture(scope="module")
def uninterrupted(ft_adapter, tiny_assets, tiny_unet, tmp_path_factory, ft_device):
    runs = {}

    def get(quant):
        if quant not in runs:
            out = tmp_path_factory.mktemp(f"diffusion-{quant or 'none'}")
            runs[quant] = ft_adapter.train(diffusion_spec(tiny_assets, tiny_unet, out, quant, ft_device))
        return runs[quant]

    return get


def diffusion_spec(assets, unet_dir, output_dir, quant, device, **fields):
    return spec(assets, output_dir, model_dir=unet_dir, method="diffusion", train_type="lora", quantization=quant,
                max_steps=N_STEPS, save_steps=SAVE_EVERY, learning_rate=1e-2, per_device_train_batch_size=2,
                device=device, **fields)


@pytest.fixture(scope="module")
def resumed(ft_adapter, uninterrupted, tiny_assets, tiny_unet, tmp_path_factory, ft_device):
    """Run B per (quantisation, k), cached: resumed from A's checkpoint-k into a new directory."""
    runs = {}

    def get(quant, k):
        if (quant, k) not in runs:
            require_resume_from_elsewhere(ft_adapter)  # into a new directory, from A's checkpoint
            run_a = uninterrupted(quant)
            before = dir_fingerprint(tiny_unet), checkpoints_fingerprint(run_a.output_dir, k)
            out = tmp_path_factory.mktemp(f"diffusion-resumed-{quant or 'none'}-k{k}") / "out"
            runs[quant, k] = ft_adapter.train(diffusion_spec(tiny_assets, tiny_unet, out, quant, ft_device,
                                                             resume_from=run_a.checkpoint(k)))
            assert dir_fingerprint(tiny_unet) == before[0], "seed 002: resuming modified the base UNet on disk"
            assert checkpoints_fingerprint(run_a.output_dir, k) == before[1], (
                f"seed 002: resuming from {run_a.output_dir.name}/checkpoint-{k} rewrote that run's checkpoints")
        return runs[quant, k]

    return get


def _skip_bnb_on_cpu(quant, device):
    if quant in BNB and device != "cuda":
        pytest.skip("diffusers quantises a UNet with bitsandbytes on CUDA only (the cuda variant runs it)")


@pytest.mark.ft_smoke("quanto-int8-2")
@pytest.mark.parametrize("k", [2, 4])
@pytest.mark.parametrize("quant", QUANTS)
def test_resume_matches_uninterrupted(uninterrupted, resumed, tiny_unet, quant, k, ft_device):
    _skip_bnb_on_cpu(quant, ft_device)
    run_a, run_b = uninterrupted(quant), resumed(quant, k)
    tol = device_tolerance(ft_device, GPU_RTOL)
    assert_resume_equivalent(run_a.output_dir, run_b.output_dir, k, **tol)
    assert_resumed_into_new_dir(run_b.output_dir, k, source=run_a.checkpoint(k))
    assert_diffusion_lora_reloads(tiny_unet, run_a.final_dir, run_b.final_dir, quant, device=ft_device, **tol)


@pytest.mark.parametrize("quant", QUANTS)
def test_resume_reads_the_checkpoint(ft_adapter, uninterrupted, resumed, tiny_assets, tiny_unet, tmp_path, quant,
                                     ft_device):
    """A copy of checkpoint-4 with perturbed LoRA weights must lead elsewhere than checkpoint-4 itself."""
    require_resume_from_elsewhere(ft_adapter)
    _skip_bnb_on_cpu(quant, ft_device)
    k = 4
    copy = tmp_path / "source" / f"checkpoint-{k}"
    shutil.copytree(uninterrupted(quant).checkpoint(k), copy)
    perturb_weights(copy)
    perturbed = ft_adapter.train(diffusion_spec(tiny_assets, tiny_unet, tmp_path / "perturbed", quant, ft_device,
                                                resume_from=copy))
    assert_follows_checkpoint(resumed(quant, k).output_dir, perturbed.output_dir, k, seed="002")
