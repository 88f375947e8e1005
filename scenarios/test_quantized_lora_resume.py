"""Seed 002 — LoRA on a quantised base must resume exactly.

The story (SimpleTuner #659, an upstream PEFT bug; diffusers #9108 for optimum-quanto): resuming
LoRA training from a checkpoint fails when the base model is quantised; the work-around
``--init_lora`` silently starts the adapter again. Advice: keep quantisation identical on resume.

Correct behaviour, for every quantisation (none, bitsandbytes nf4 / int8, quanto int8 / int4, and the
framework's own kinds, ``Adapter.quantizations``, e.g. torchtune's torchao NF4):
run A trains N steps uninterrupted; run B resumes from A's ``checkpoint-k`` and continues to N. B's
losses for steps k+1..N and its final LoRA tensors equal A's — exactly on CPU (both runs execute the
same float32 kernels in the same order; any difference means state was lost) and within ``GPU_RTOL``
on CUDA (bitsandbytes CUDA kernels are not bit-deterministic). The base model on disk is untouched.
Resuming with a different quantisation is a clear error naming both settings.

A resume must be a resume (issue 19): a run that ignores ``resume_from`` and retrains from step 0 with
the same seed reproduces A exactly, so B must also save nothing at or before step k, leave A's
checkpoints untouched, and follow a *perturbed* copy of checkpoint-k (its weights read from disk).

A framework that resumes only its own output dir's newest checkpoint (``resume_points = "newest"``: torchtune's one
recipe state per run) cannot resume from A's checkpoint into another directory; run B is then the same N-step run
killed (SIGKILL, between steps) right after its checkpoint-k and resumed from ``latest`` in place, which is how its
users resume, and it must not rewrite checkpoints <= k; the perturbed and refused resumes use copies of that
killed output dir.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from harness.adapter import effective_capabilities
from harness.faults import kill_after_checkpoint, perturb_weights
from harness.layout import run_checkpoint
from harness.oracles import (assert_adapter_only_save, assert_follows_checkpoint, assert_resume_equivalent,
                             assert_resumed_into_new_dir, assert_resumed_not_restarted, checkpoints_fingerprint,
                             dir_fingerprint)

from ._support import device_tolerance, spec

pytestmark = [pytest.mark.ft_seed("002"), pytest.mark.ft_requires("sft", "lora", "resume")]

N_STEPS = 6
SAVE_EVERY = 2
GPU_RTOL = 1e-3

#: the harness's kinds; the plugin adds the adapter's own (``Adapter.quantizations``)
QUANTS = pytest.mark.ft_quantizations(None, "nf4", "int8", "quanto-int8", "quanto-int4")


def resumes_in_place(adapter) -> bool:
    """Run B is a kill and an in-place resume (``resume_points = "newest"``), which needs the run in reach of a kill."""
    if adapter.resume_points != "newest":
        return False
    if "in-process" not in effective_capabilities(adapter):
        pytest.skip(f"{adapter.name} resumes only the newest checkpoint of its own output dir (resume_points='newest') "
                    f"and launches a subprocess: run B cannot be killed after checkpoint-k to be resumed in place")
    return True


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
def killed(ft_adapter, tiny_assets, tmp_path_factory, ft_device):
    """Per (quantisation, k), cached: run A's spec killed at its first training step after checkpoint-k (only for a
    framework resuming in place; never resumed itself: copies are)."""
    runs = {}

    def get(quant, k) -> Path:
        if (quant, k) not in runs:
            out = tmp_path_factory.mktemp(f"killed-{quant or 'none'}-k{k}") / "out"
            runs[quant, k] = kill_after_checkpoint(ft_adapter, resume_spec(tiny_assets, out, quant, None, ft_device), k)
        return runs[quant, k]

    return get


def copy_of(killed_dir: Path, name: str) -> Path:
    out = killed_dir.parent.parent / name / "out"
    shutil.copytree(killed_dir, out, symlinks=True)
    return out


@pytest.fixture(scope="module")
def resumed(ft_adapter, uninterrupted, killed, tiny_assets, tmp_path_factory, ft_device):
    """Run B per (quantisation, k), cached: resumed from A's checkpoint-k into a new directory; or, for a framework
    resuming in place, the killed run resumed from ``latest``. Returns (result, fingerprint of checkpoints <= k
    before the in-place resume, or None)."""
    runs = {}

    def get(quant, k):
        if (quant, k) not in runs:
            run_a = uninterrupted(quant)
            if resumes_in_place(ft_adapter):
                out = copy_of(killed(quant, k), f"resumed-{quant or 'none'}-k{k}")
                before_k = checkpoints_fingerprint(out, k)
                runs[quant, k] = ft_adapter.train(resume_spec(tiny_assets, out, quant, "latest", ft_device)), before_k
                return runs[quant, k]
            before = dir_fingerprint(tiny_assets.model_dir), checkpoints_fingerprint(run_a.output_dir, k)
            out = tmp_path_factory.mktemp(f"resumed-{quant or 'none'}-k{k}") / "out"
            runs[quant, k] = ft_adapter.train(resume_spec(tiny_assets, out, quant, run_a.checkpoint(k), ft_device)), None
            assert dir_fingerprint(tiny_assets.model_dir) == before[0], (
                "seed 002: resuming modified the base model on disk")
            assert checkpoints_fingerprint(run_a.output_dir, k) == before[1], (
                f"seed 002: resuming from {run_a.output_dir.name}/checkpoint-{k} rewrote that run's checkpoints")
        return runs[quant, k]

    return get


@pytest.mark.ft_smoke("none-2", "nf4-2")
@pytest.mark.parametrize("k", [2, 4])
@QUANTS
def test_resume_matches_uninterrupted(uninterrupted, resumed, quant, k, ft_device):
    run_a, (run_b, before_k) = uninterrupted(quant), resumed(quant, k)
    assert_resume_equivalent(run_a.output_dir, run_b.output_dir, k, **device_tolerance(ft_device, GPU_RTOL))
    if before_k is None:
        assert_resumed_into_new_dir(run_b.output_dir, k, source=run_a.checkpoint(k))
    else:
        assert_resumed_not_restarted(run_b.output_dir, k, N_STEPS, before_k, save_steps=SAVE_EVERY, seed="002")
    assert_adapter_only_save(run_b.final_dir, seed="002")


@QUANTS
def test_resume_reads_the_checkpoint(ft_adapter, uninterrupted, resumed, killed, tiny_assets, tmp_path, quant,
                                     ft_device):
    """A copy of checkpoint-4 with perturbed LoRA weights must lead elsewhere than checkpoint-4 itself."""
    k = 4
    run_b, _ = resumed(quant, k)
    if resumes_in_place(ft_adapter):
        out = copy_of(killed(quant, k), f"perturbed-{quant or 'none'}-k{k}")
        perturb_weights(run_checkpoint(out, k))
        perturbed = ft_adapter.train(resume_spec(tiny_assets, out, quant, "latest", ft_device))
    else:
        copy = tmp_path / "source" / f"checkpoint-{k}"
        shutil.copytree(uninterrupted(quant).checkpoint(k), copy)
        perturb_weights(copy)
        perturbed = ft_adapter.train(resume_spec(tiny_assets, tmp_path / "perturbed", quant, copy, ft_device))
    assert_follows_checkpoint(run_b.output_dir, perturbed.output_dir, k, seed="002")


@pytest.mark.ft_requires("quant-nf4", "quant-int8")
def test_resume_with_other_quantization_is_refused(ft_adapter, uninterrupted, killed, tiny_assets, tmp_path,
                                                   ft_device):
    if resumes_in_place(ft_adapter):
        out, source = copy_of(killed("nf4", 2), "other-quantization"), "latest"
    else:
        out, source = tmp_path / "resumed", uninterrupted("nf4").checkpoint(2)
    with pytest.raises(Exception) as excinfo:
        ft_adapter.train(spec(tiny_assets, out, train_type="lora", quantization="int8",
                              max_steps=N_STEPS, save_steps=SAVE_EVERY, learning_rate=2e-2,
                              resume_from=source, device=ft_device))
    message = str(excinfo.value)
    assert "nf4" in message and "int8" in message, (
        f"seed 002: resuming an nf4 checkpoint with int8 must fail naming both settings, got "
        f"{type(excinfo.value).__name__}: {message[:300]}")
