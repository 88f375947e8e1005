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
"""

from __future__ import annotations

import pytest

from harness.oracles import assert_adapter_only_save, assert_resume_equivalent, dir_fingerprint

from ._support import quant_params, spec

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


@pytest.mark.parametrize("k", [2, 4])
@pytest.mark.parametrize("quant", QUANTS)
def test_resume_matches_uninterrupted(ft_adapter, uninterrupted, tiny_assets, tmp_path, quant, k, ft_device):
    run_a = uninterrupted(quant)
    before = dir_fingerprint(tiny_assets.model_dir)
    run_b = ft_adapter.train(spec(tiny_assets, tmp_path / "resumed", train_type="lora", quantization=quant,
                                  max_steps=N_STEPS, save_steps=SAVE_EVERY, learning_rate=2e-2,
                                  resume_from=run_a.checkpoint(k), device=ft_device))
    tol = dict(rtol=GPU_RTOL, atol=1e-6) if ft_device == "cuda" else {}
    assert_resume_equivalent(run_a.output_dir, run_b.output_dir, k, **tol)
    assert_adapter_only_save(run_b.final_dir, seed="002")
    assert dir_fingerprint(tiny_assets.model_dir) == before, "seed 002: resuming modified the base model on disk"


@pytest.mark.ft_requires("quant-nf4", "quant-int8")
def test_resume_with_other_quantization_is_refused(ft_adapter, uninterrupted, tiny_assets, tmp_path, ft_device):
    run_a = uninterrupted("nf4")
    with pytest.raises(Exception) as excinfo:
        ft_adapter.train(spec(tiny_assets, tmp_path / "resumed", train_type="lora", quantization="int8",
                              max_steps=N_STEPS, save_steps=SAVE_EVERY, learning_rate=2e-2,
                              resume_from=run_a.checkpoint(2), device=ft_device))
    message = str(excinfo.value)
    assert "nf4" in message and "int8" in message, (
        f"seed 002: resuming an nf4 checkpoint with int8 must fail naming both settings, got "
        f"{type(excinfo.value).__name__}: {message[:300]}")
