"""Mutants of preference training's reference model (DPO): the bare base under a pre-trained adapter, the bare base only
under an adapter on parameters (fused MoE experts), the resumed policy, a freshly initialised reference adapter, a
bfloat16 reference, a pre-trained adapter re-initialised at load (policy and reference both the bare base); and a
correct control that reloads the reference from disk instead of copying the policy.
"""

from __future__ import annotations

import logging
from ..reference import ReferenceAdapter
from ..reference.adapter import RunContext

log = logging.getLogger("harness.mutants")


def _lora_layers(model):
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [m for m in model.modules() if isinstance(m, BaseTunerLayer)]


class ReferenceIsBaseUnderAdapter(ReferenceAdapter):
    """hiyouga/LlamaFactory #8459, huggingface/trl PR #4723: the reference is the policy with its adapter disabled,
    which is the starting policy only for a freshly initialised adapter; under a pre-trained one it is the bare base."""

    name = "mutant:reference-is-base-under-adapter"
    fails = ("test_reference_model",)

    def reference_model(self, ctx: RunContext, model):
        ref = super().reference_model(ctx, model)
        for layer in _lora_layers(ref):  # what PeftModel.disable_adapter() does for the reference forward
            layer.enable_adapters(False)
        return ref


class ReferenceSkipsParameterAdapters(ReferenceAdapter):
    """huggingface/trl #5222 (fixed by PR #6043): when the LoRA config adapts parameters (``target_parameters``: a
    mixture of experts' fused expert tensors), TRL skipped the "ref" adapter copy and computed the reference with the
    adapters disabled, the bare base, even under a pre-trained adapter. Module-level adapters (every dense start) keep
    the right reference, so only the MoE start can see it."""

    name = "mutant:reference-skips-parameter-adapters"
    fails = ("test_reference_model",)

    def reference_model(self, ctx: RunContext, model):
        ref = super().reference_model(ctx, model)
        configs = getattr(model, "peft_config", {}).values()
        if any(getattr(config, "target_parameters", None) for config in configs):
            for layer in _lora_layers(ref):
                layer.enable_adapters(False)
        return ref


class PretrainedAdapterReinitialised(ReferenceAdapter):
    """The pre-trained adapter a LoRA run continues is loaded and then initialised afresh (B = 0): what
    ``AutoModelForCausalLM.from_pretrained(<LoRA output>)`` followed by ``get_peft_model`` does with PEFT 0.21.2 (behind
    one warning).
    The reference is taken from that policy, so the first step's rewards are 0: only the recomputation of which model
    the run trains from sees that it is the bare base, not the SFT output it was given."""

    name = "mutant:pretrained-adapter-reinitialised"
    fails = ("test_reference_model",)

    def continue_adapter(self, ctx: RunContext, model) -> None:
        import torch

        torch.manual_seed(ctx.values["seed"])
        for layer in _lora_layers(model):
            for name in list(getattr(layer, "lora_A", {})):
                layer.reset_lora_parameters(name, init_lora_weights=True)


class FreshReferenceAdapter(ReferenceAdapter):
    """modelscope/ms-swift PR #9934: the reference's adapter is freshly initialised instead of loaded from the requested
    checkpoint ("DPO/KTO/GRPO used the freshly initialized adapter instead of the requested checkpoint")."""

    name = "mutant:fresh-reference-adapter"
    fails = ("test_reference_model",)

    def reference_model(self, ctx: RunContext, model):
        import torch

        ref = super().reference_model(ctx, model)
        torch.manual_seed(ctx.values["seed"])
        for layer in _lora_layers(ref):
            for name in list(getattr(layer, "lora_A", {})):
                layer.reset_lora_parameters(name, init_lora_weights=True)
        return ref


class ReferenceIsResumedPolicy(ReferenceAdapter):
    """The reference is re-taken from the policy after a resume loaded the checkpoint: the resumed weights, not the
    policy the run started from (a framework that builds its reference from the model it just restored)."""

    name = "mutant:reference-is-resumed-policy"
    fails = ("test_reference_model",)

    def resumed_reference(self, ctx: RunContext, trainer, model) -> None:
        policy = model.get_base_model() if hasattr(model, "get_base_model") else model
        trainer.ref_model.load_state_dict(policy.state_dict())


class ReferenceInBfloat16(ReferenceAdapter):
    """The reference is loaded in another dtype than the policy (bfloat16 beside a float32 policy, as a reference
    loaded with the framework's default ``torch_dtype`` is): its log-probs are not the starting policy's."""

    name = "mutant:reference-in-bfloat16"
    fails = ("test_reference_model",)

    def reference_model(self, ctx: RunContext, model):
        import torch

        return super().reference_model(ctx, model).to(torch.bfloat16)


class ReferenceReloadedFromDisk(ReferenceAdapter):
    """Correct control: the reference is loaded from the start's files (the base plus the pre-trained adapter, the
    full checkpoint, or, under a fresh adapter, the bare base, which equals it while its B matrices are zero) instead
    of copied from the policy in memory. The same model, so the same rewards."""

    name = "mutant:reference-reloaded-from-disk"
    fails = ()

    def reference_model(self, ctx: RunContext, model):
        from ..reference.trainer import load_model

        ref = load_model(ctx.base_dir, None, ctx.spec.device)
        if ctx.adapter_dir is not None:
            from peft import PeftModel

            ref = PeftModel.from_pretrained(ref, str(ctx.adapter_dir))
            ref = ref.merge_and_unload() if ctx.values["train_type"] == "full" else ref.get_base_model()
        return ref.eval().requires_grad_(False)
