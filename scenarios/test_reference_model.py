"""Reference model — preference and RL training measure against the policy the run starts from (DPO, KTO, GRPO).

The story: a DPO run whose reference model is not the policy it starts from trains without an error, its margins
grow, and its KL anchor is the wrong model. Upstream: hiyouga/LlamaFactory #8459 (DPO on ``adapter_name_or_path``
without ``ref_model`` calls ``disable_adapter()``: the reference is the base, not the SFT model); huggingface/trl PR
#4723 (GRPO/RLOO: "the reference model was obtained by just disabling the adapter, which is only correct when the
adapter is newly initialized"); huggingface/trl #5222 / PR #6043 (LoRA ``target_parameters``: the ``ref`` adapter is
skipped, reference log-probs come from the base); modelscope/ms-swift PR #9934 (Megatron LoRA RLHF: "DPO/KTO/GRPO used
the freshly initialized adapter instead of the requested checkpoint without raising an error"); huggingface/trl PR
#6043 (merged 2026-06-13: with ``target_parameters`` the "ref" adapter is skipped, the reference is the bare base, with a
warning) and PR #6591 (merged 2026-07-30: the copy again on PEFT >= 0.20).

Arrange: the tiny model's LoRA SFT output and full SFT output (2 steps each, LR 1e-2, so they differ visibly from the
base); ``preferences.jsonl``'s 8 rows in one batch per step (the logged means do not depend on the data order),
dropout 0, float32. Act: DPO for 4 steps (LR 1e-2, a checkpoint every 2) from each start — a fresh LoRA on the base,
LoRA continued on the LoRA SFT output (a pre-trained adapter), full training on the full SFT output, full training on
the LoRA SFT output (merged), LoRA continued on a LoRA SFT output of the tiny ``qwen3_moe`` (its fused experts adapted
as ``target_parameters``) — and the LoRA-on-LoRA run killed after checkpoint-2 and resumed.
Assert:

* before any update the reference is the starting policy: the first step's ``rewards/chosen`` and ``rewards/rejected``
  are 0 (:data:`~harness.oracles.DPO_REWARD_ATOL`), and the logged policy log-prob is the start's, recomputed (a
  pre-trained adapter re-initialised at load logs rewards of 0 from the bare base); the message recomputes which model
  the reference was;
* after the resume it still is: every step trains on the same batch, so the reference log-probs each step used
  (``logps/* - rewards/* / beta``) are one constant, the first step's (a lost optimizer state moves the policy, not
  the reference; a framework logging no ``logps/*`` is judged by its rewards against the uninterrupted run's);
* a full DPO run's saves are the whole, trained model (seed 001's oracle);
* a GRPO run (LoRA on the LoRA SFT output, beta 0.04, 4 steps) killed after checkpoint-2 and resumed does not log a
  KL of 0 at step 3 where the uninterrupted run logs one (measured: 0.006666 uninterrupted and resumed, identical; a
  reference re-taken from the resumed weights logs 0.0) — the KL's vanishing is what says the reference was re-taken,
  while its value also moves with the policy and the completions, which other scenarios judge;
* KTO (the rows unpaired, 16 in one batch, 2 steps) from a fresh LoRA, LoRA on the LoRA SFT output and full on the
  full SFT output: the same first-step rewards, and its ``kl`` estimate 0;
* GRPO with a KL term (beta 0.04, 2 steps) from a fresh LoRA, LoRA on the LoRA SFT output and full on the LoRA SFT
  output logs ``kl`` 0 at its first step.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import pytest

from harness.faults import KillInTraining, require_killed, run_killed
from harness.oracles import (assert_full_model_saved, assert_kl_starts_at_zero, assert_kl_survives_resume,
                             assert_reference_is_start, assert_reference_survives_resume, start_weights)
from harness.models import build_model
from harness.spec import DEFAULT_BETA

from ._support import spec

pytestmark = [pytest.mark.ft_seed("ref")]

class Start(NamedTuple):
    """Where a preference or RL run starts."""

    train_type: str  #: the run's own: "lora" or "full"
    sft: str | None  #: the train_type of the SFT output it continues; None = the base itself
    arch: str = "llama"  #: the base's :data:`harness.models.ARCHITECTURES` entry

    def capabilities(self) -> set[str]:
        return {self.train_type} | ({self.sft} if self.sft else set()) | ({"moe"} if self.arch == "qwen3_moe" else set())


STARTS = {
    "fresh-lora": Start("lora", None),
    "lora-on-lora-sft": Start("lora", "lora"),
    "full-on-full-sft": Start("full", "full"),
    "full-on-lora-sft": Start("full", "lora"),
    # the tiny qwen3_moe: LoRA ``all-linear`` reaches its fused experts as ``target_parameters`` (PEFT >= 0.17), the
    # case huggingface/trl #5222 / PR #6043 is about (TRL skipped the "ref" adapter and used the bare base)
    "moe-lora-on-lora-sft": Start("lora", "lora", arch="qwen3_moe"),
}
STEPS, SAVE_EVERY, RESUME_AT = 4, 2, 2


def start_params(*names: str) -> list:
    """``pytest.param`` per start, marked with the capabilities it needs (its SFT output's training type and its own,
    ``moe`` on the MoE base), so an adapter without one skips that start as any missing capability skips."""
    return [pytest.param(name, id=name, marks=[pytest.mark.ft_requires(*sorted(STARTS[name].capabilities()))])
            for name in names]

#: GRPO's KL weight in the GRPO runs (DeepSeekMath's 0.04; TRL's default 0.0 builds no reference at all)
GRPO_BETA = 0.04


class PreferenceRuns:
    """The module's runs, each made once and shared by every assertion that reads it."""

    def __init__(self, adapter, assets, tmp_path_factory, device):
        self.adapter, self.assets, self.tmp, self.device = adapter, assets, tmp_path_factory, device
        self._bases: dict[str, Path] = {"llama": assets.model_dir}
        self._sft: dict[tuple[str, str], object] = {}
        self._runs: dict[str, object] = {}

    def base(self, arch: str) -> Path:
        """The bare base of ``arch``: the tiny task's model, or one built like it (same tokenizer, seed 0)."""
        if arch not in self._bases:
            self._bases[arch] = build_model(self.tmp.mktemp(f"base-{arch}") / "model", arch=arch, seed=0)
        return self._bases[arch]

    def sft(self, train_type: str, arch: str = "llama"):
        """The SFT output a start continues (its final directory)."""
        if (train_type, arch) not in self._sft:
            out = self.tmp.mktemp(f"sft-{train_type}-{arch}")
            self._sft[train_type, arch] = self.adapter.train(spec(
                self.assets, out, model_dir=self.base(arch), method="sft", train_type=train_type, max_steps=2,
                learning_rate=1e-2, device=self.device))
        return self._sft[train_type, arch].final_dir

    def start_dir(self, start: str):
        source = STARTS[start]
        return self.base(source.arch) if source.sft is None else self.sft(source.sft, source.arch)

    def dpo_spec(self, start: str, out, method: str = "dpo", **fields):
        """DPO (or KTO, its rows unpaired into 16: all in one batch) from ``start``: 4 steps, a checkpoint every 2."""
        return spec(self.assets, out, model_dir=self.start_dir(start), method=method,
                    train_type=STARTS[start].train_type, max_steps=STEPS, save_steps=SAVE_EVERY, learning_rate=1e-2,
                    per_device_train_batch_size=16 if method == "kto" else 8, device=self.device, **fields)

    def kto(self, start: str):
        """KTO from ``start``: the 8 preference rows unpaired into 16 (chosen desirable, rejected not), all in one batch,
        2 steps (only the first is judged), saved once at the end (a framework that writes ``trainer_state.json`` only
        into checkpoints, axolotl, keeps its log there)."""
        key = f"kto-{start}"
        if key not in self._runs:
            out = self.tmp.mktemp(key)
            self._runs[key] = self.adapter.train(spec(self.assets, out, model_dir=self.start_dir(start), method="kto",
                                                      train_type=STARTS[start].train_type, max_steps=2,
                                                      learning_rate=1e-2, per_device_train_batch_size=16,
                                                      save_steps=2, device=self.device))
        return self._runs[key]

    def grpo_spec(self, start: str, out, *, max_steps: int = 2, **fields):
        return spec(self.assets, out, model_dir=self.start_dir(start), method="grpo",
                    train_type=STARTS[start].train_type, max_steps=max_steps, learning_rate=1e-2, device=self.device,
                    cli={"beta": GRPO_BETA}, **fields)

    def grpo(self, start: str, steps: int = 2):
        """GRPO with a KL term (``beta`` = :data:`GRPO_BETA`) from ``start``: 2 steps, or ``steps`` with a checkpoint
        every :data:`SAVE_EVERY` (the resume test's uninterrupted run)."""
        key = f"grpo-{start}-{steps}"
        if key not in self._runs:
            saves = {} if steps == 2 else {"save_steps": SAVE_EVERY}
            self._runs[key] = self.adapter.train(self.grpo_spec(start, self.tmp.mktemp(key), max_steps=steps, **saves))
        return self._runs[key]

    def dpo(self, start: str, method: str = "dpo"):
        """The uninterrupted DPO (or 4-step KTO) run from ``start``."""
        key = f"{method}-{start}" if method == "dpo" else f"{method}-{start}-{STEPS}"
        if key not in self._runs:
            self._runs[key] = self.adapter.train(self.dpo_spec(start, self.tmp.mktemp(key), method))
        return self._runs[key]

    def candidates(self, start: str) -> dict:
        """What the reference could be, for the message: the starting policy and the bare base."""
        found = {"the starting policy": self.start_dir(start)}
        if STARTS[start].sft is not None:
            found["the bare base"] = self.base(STARTS[start].arch)
        return found


@pytest.fixture(scope="module")
def runs(ft_adapter, tiny_assets, tmp_path_factory, ft_device):
    return PreferenceRuns(ft_adapter, tiny_assets, tmp_path_factory, ft_device)


# The runs are fixtures (parametrised indirectly by start), not only cached objects: a test reading a run another test
# made still depends on what made it, as pytest (and the detection matrix's hook trace) sees it.
@pytest.fixture(scope="module")
def dpo_run(runs, request):
    """(start, the uninterrupted DPO run from it)."""
    return request.param, runs.dpo(request.param)


@pytest.fixture(scope="module")
def kto_run(runs, request):
    """(start, the KTO run from it)."""
    return request.param, runs.kto(request.param)


@pytest.fixture(scope="module")
def grpo_run(runs, request):
    """(start, the GRPO run with a KL term from it)."""
    return request.param, runs.grpo(request.param)


@pytest.mark.ft_smoke("lora-on-lora-sft")
@pytest.mark.ft_requires("dpo", "sft")
@pytest.mark.parametrize("dpo_run", start_params(*STARTS), indirect=True)
def test_reference_matches_the_policy_before_training(runs, dpo_run):
    """Before the first update, DPO's rewards are 0: the reference is the policy the run trains, and both are the model
    the run was given (the message says which side is off when one is)."""
    start, result = dpo_run
    assert_reference_is_start(result.output_dir, start="the starting policy", candidates=runs.candidates(start),
                              dataset_dir=runs.assets.dataset_dir, beta=DEFAULT_BETA["dpo"])


@pytest.mark.ft_requires("sft", "lora", "resume", "in-process")
@pytest.mark.parametrize("method", [pytest.param("dpo", marks=pytest.mark.ft_requires("dpo")),
                                    pytest.param("kto", marks=pytest.mark.ft_requires("kto"))])
def test_resume_keeps_the_reference(runs, tmp_path, method):
    """DPO or KTO, killed after checkpoint-2 and resumed: the reference is the one the run started with (on a correct
    framework the pre-trained adapter's policy), not re-taken from the resumed weights: the reference log-probs each
    resumed step used are the first step's (KTO logs the same ``rewards/*`` and ``logps/*``, means over its chosen and
    its rejected rows)."""
    start = "lora-on-lora-sft"
    uninterrupted = runs.dpo(start, method)
    out = tmp_path / "killed"
    point = KillInTraining(RESUME_AT)
    require_killed(run_killed(runs.adapter, runs.dpo_spec(start, out, method), point), point)
    resumed = runs.adapter.train(runs.dpo_spec(start, out, method, resume_from="latest"))
    assert_reference_survives_resume(resumed.output_dir, uninterrupted.output_dir, resumed_from=RESUME_AT,
                                     beta=DEFAULT_BETA[method])


@pytest.mark.ft_requires("dpo", "sft", "full")
@pytest.mark.parametrize("dpo_run", start_params("full-on-full-sft", "full-on-lora-sft"), indirect=True)
def test_full_dpo_saves_whole_model(runs, dpo_run):
    """A full-parameter DPO run's checkpoints and final output are the whole, trained model."""
    start, result = dpo_run
    before = start_weights(runs.start_dir(start))
    assert result.checkpoints, f"save_steps={SAVE_EVERY} must leave checkpoints on disk"
    for directory in (*result.checkpoints, result.final_dir):
        assert_full_model_saved(directory, runs.assets.model_dir, before)


@pytest.mark.ft_requires("kto", "sft")
@pytest.mark.parametrize("kto_run", start_params("fresh-lora", "lora-on-lora-sft", "full-on-full-sft"), indirect=True)
def test_kto_reference_matches_the_policy_before_training(runs, kto_run):
    """KTO (unpaired: each chosen completion desirable, each rejected one not): before the first update its rewards
    and its KL estimate are 0, measured against the policy the run was given (modelscope/ms-swift PR #9934 names KTO
    among the methods that trained against a freshly initialised reference adapter)."""
    start, result = kto_run
    assert_reference_is_start(result.output_dir, start="the starting policy", candidates=runs.candidates(start),
                              dataset_dir=runs.assets.dataset_dir, beta=DEFAULT_BETA["kto"], method="KTO")
    assert_kl_starts_at_zero(result.output_dir, start=f"the starting policy: {runs.start_dir(start)}", method="KTO")


@pytest.mark.ft_requires("grpo", "sft")
@pytest.mark.parametrize("grpo_run", start_params("fresh-lora", "lora-on-lora-sft", "full-on-lora-sft"), indirect=True)
def test_grpo_kl_starts_at_zero(runs, grpo_run):
    """GRPO with a KL term (beta 0.04): before the first update its logged KL to the reference is 0 (huggingface/trl PR
    #4723: a disabled adapter is the starting policy only when the adapter is fresh)."""
    start, result = grpo_run
    assert_kl_starts_at_zero(result.output_dir, start=f"the starting policy: {runs.start_dir(start)}", method="GRPO")


@pytest.mark.ft_requires("grpo", "sft", "lora", "resume", "in-process")
def test_grpo_resume_keeps_the_reference(runs, tmp_path):
    """GRPO with a KL term, LoRA on the LoRA SFT output, killed after checkpoint-2 and resumed: the reference is not
    re-taken from the resumed weights, which would make the policy its own reference again (a KL of 0 right after the
    resume)."""
    start = "lora-on-lora-sft"
    uninterrupted = runs.grpo(start, STEPS)
    out = tmp_path / "killed"
    point = KillInTraining(RESUME_AT)
    require_killed(run_killed(runs.adapter, runs.grpo_spec(start, out, max_steps=STEPS, save_steps=SAVE_EVERY), point),
                   point)
    resumed = runs.adapter.train(runs.grpo_spec(start, out, max_steps=STEPS, save_steps=SAVE_EVERY,
                                                resume_from="latest"))
    assert_kl_survives_resume(resumed.output_dir, uninterrupted.output_dir, resumed_from=RESUME_AT)
