"""Mutants of what the model is fed and what a merge makes of it: the mean of micro-batch means, a merge without the
LoRA scale, packing without boundaries, pads masked by value, a saved tokenizer without the template, a saved template
without its generation prompt, a collator without the attention mask, the router loss per micro-batch or ignored, the
reasoning unsupervised, a saved thinking template without its switch.
"""

from __future__ import annotations

from pathlib import Path

from ..reference import ReferenceAdapter
from ..reference.adapter import RunContext


class MeanOfMicroBatchMeans(ReferenceAdapter):
    """Gradient accumulation, transformers before PR #34191 (4.46), ms-swift #2361, LLaMA-Factory #6211, axolotl #2039,
    trl #2175: each micro-batch's loss is its own token mean and the window's loss is the mean of those
    means, so with samples of different lengths a token in a short micro-batch weighs more than one in a
    long micro-batch; gradient accumulation no longer equals the large batch."""

    name = "mutant:mean-of-micro-batch-means"
    # the resume scenario accumulates too, but its two runs share the bug, so they still agree; the router-loss
    # scenario's splits are of identical samples (means of means agree), but Trainer's division by k then scales the
    # load-balancing term too, and the reference's own 1/k on it counts it short
    fails = ("test_grad_accumulation", "test_moe_router_loss")

    def accumulation_loss(self, ctx: RunContext, trainer) -> None:
        trainer.model_accepts_loss_kwargs = False  # Trainer then averages each micro-batch and divides by k


class DropsIncompleteAccumulationWindow(ReferenceAdapter):
    """Gradient accumulation — an epoch's last window with fewer than k micro-batches is never trained: the epoch is
    cut to ``len(dataloader) // k`` whole windows (NVIDIA-NeMo/Automodel PR #2257: "silently dropped the trailing
    micro-batches", the scheduler sized by floor division; transformers #14309, torchseq #8, pet #36). The tail's
    samples are skipped once per epoch, silently; with a dataset that divides into windows nothing shows."""

    name = "mutant:drops-incomplete-accumulation-window"
    fails = ("test_grad_accumulation",)

    def incomplete_window(self, ctx: RunContext, trainer) -> None:
        windows, make = ctx.values["gradient_accumulation_steps"], trainer.get_train_dataloader

        def whole_windows():
            loader = make()
            return _WholeWindows(loader, windows) if len(loader) % windows else loader

        trainer.get_train_dataloader = whole_windows


class _WholeWindows:
    """A train dataloader cut to whole accumulation windows (its length and its iteration); the rest delegates."""

    def __init__(self, loader, windows: int):
        self._loader, self._length = loader, len(loader) // windows * windows

    def __len__(self) -> int:
        return self._length

    def __iter__(self):
        import itertools

        return itertools.islice(iter(self._loader), self._length)

    def __getattr__(self, name: str):
        return getattr(self._loader, name)


class SchedulerSteppedPerMicroBatch(ReferenceAdapter):
    """Gradient accumulation — the LR scheduler is stepped on every micro-batch instead of every optimizer step, so
    with k-step accumulation the warm-up and decay run k times too fast (starVLA PR #210: ``lr_scheduler.step()`` on
    every micro-batch inside ``accelerator.accumulate()``; Lightning #1476, accelerate #963, SpecForge #364). With a
    constant LR it changes nothing: only a schedule shows it."""

    name = "mutant:scheduler-stepped-per-micro-batch"
    # the resume module accumulates (2 x 2) under a linear schedule: its batch-split resume and its 11-step run,
    # whose schedule reaches 0 halfway, show it too
    fails = ("test_grad_accumulation", "test_resume_equivalence")

    def accumulation_loss(self, ctx: RunContext, trainer) -> None:
        super().accumulation_loss(ctx, trainer)
        import functools

        windows, create = ctx.values["gradient_accumulation_steps"], trainer.create_scheduler

        def create_scheduler(num_training_steps: int, optimizer=None):
            # k scheduler steps per optimizer step: after n steps the schedule stands at n * k (a partial, not a
            # closure, so the scheduler's state_dict still pickles into each checkpoint)
            scheduler = create(num_training_steps, optimizer)
            scheduler.lr_lambdas = [functools.partial(_ahead, fn, windows) for fn in scheduler.lr_lambdas]
            return scheduler

        trainer.create_scheduler = create_scheduler


def _ahead(fn, factor: int, step: int) -> float:
    return fn(step * factor)


class MergeWithoutLoraScale(ReferenceAdapter):
    """LoRA merge, peft #1043 / #2321 family: the merge adds ``B @ A`` without the ``lora_alpha / r`` scale the
    adapter trained with, so the merged model is not the trained one (with alpha == r it would not show)."""

    name = "mutant:merge-without-lora-scale"
    fails = ("test_lora_merge",)

    def merge_scaling(self, adapter_dir: Path) -> float | None:
        return 1.0


class PackingWithoutBoundaries(ReferenceAdapter):
    """Packing, trl #3067 / PR #3526, ms-swift #4439, LLaMA-Factory PR #4224: packed samples are concatenated
    with positions running on across them, so nothing marks the boundaries and each sample attends to the
    ones packed before it; the loss still falls, so it is silent."""

    name = "mutant:packing-without-boundaries"
    fails = ("test_packing",)

    def packing_collator(self, ctx: RunContext, model):
        from ..hf import packing_collator

        model.config.use_cache = False
        return packing_collator(position_ids=False)


class PadIsEosInCollator(ReferenceAdapter):
    """Label masking, trl #1623 (back again per PR #3091): the collator pads with the EOS (``pad_token = eos_token``, as
    Llama recipes set it) and masks the labels *by value* (``labels[input_ids == pad_token_id] = -100``, as
    ``DataCollatorForLanguageModeling`` does), so the EOS that ends every assistant turn is masked with the padding:
    the model never learns to stop."""

    name = "mutant:pad-is-eos-in-collator"
    fails = ("test_label_masking", "test_thinking_template")

    def chat_collator(self, ctx: RunContext, tok):
        base = super().chat_collator(ctx, tok)
        eos = tok.eos_token_id

        def collate(features):
            pad, tok.pad_token = tok.pad_token, tok.eos_token  # the recipe's pad = eos, for this batch's padding
            try:
                batch = base(features)
            finally:
                tok.pad_token = pad
            batch["labels"][batch["input_ids"] == eos] = -100
            return batch

        return collate


class SavedTokenizerWithoutTemplate(ReferenceAdapter):
    """Saved template, LLaMA-Factory #5836 / #5904, ms-swift #2831: the tokenizer saved with each checkpoint and the
    final model lacks the chat template the run trained with (no ``chat_template.jinja``, no ``chat_template`` key), so
    a server renders its own default format."""

    name = "mutant:saved-tokenizer-without-template"
    fails = ("test_saved_template", "test_thinking_template")

    def finalize_chat_format(self, ctx: RunContext, directory: Path) -> None:
        import json

        super().finalize_chat_format(ctx, directory)
        (Path(directory) / "chat_template.jinja").unlink(missing_ok=True)
        config = Path(directory) / "tokenizer_config.json"
        saved = json.loads(config.read_text(encoding="utf-8"))
        saved.pop("chat_template", None)
        config.write_text(json.dumps(saved, indent=2), encoding="utf-8")


class TemplateWithoutGenerationPrompt(ReferenceAdapter):
    """Saved template, served (issue 32; LLaMA-Factory #5476's rewritten templates, the thinking-template family of
    ``../shared/CATALOGUE.md``): the chat template saved with each checkpoint lost its ``add_generation_prompt``
    branch. The training conversation renders exactly as trained, so only a server's prompt (the conversation so far
    plus the generation prompt) shows it: the reply is asked for without the assistant header the model learnt."""

    name = "mutant:template-without-generation-prompt"
    fails = ("test_saved_template", "test_thinking_template")

    def finalize_chat_format(self, ctx: RunContext, directory: Path) -> None:
        import json
        import re

        super().finalize_chat_format(ctx, directory)
        branch = re.compile(r"\{%-?\s*if add_generation_prompt\s*-?%\}.*?\{%-?\s*endif\s*-?%\}", flags=re.S)

        def cut(template: str) -> str:
            return branch.sub("", template)

        jinja = Path(directory) / "chat_template.jinja"
        if jinja.is_file():
            jinja.write_text(cut(jinja.read_text(encoding="utf-8")), encoding="utf-8")
        config = Path(directory) / "tokenizer_config.json"
        saved = json.loads(config.read_text(encoding="utf-8"))
        if isinstance(saved.get("chat_template"), str):
            saved["chat_template"] = cut(saved["chat_template"])
            config.write_text(json.dumps(saved, indent=2), encoding="utf-8")


class CollatorDropsAttentionMask(ReferenceAdapter):
    """Label masking (issue 32): the chat collator returns an all-ones attention mask (a hand-rolled collator that
    pads ``input_ids`` and ``labels`` but builds the mask as ``torch.ones_like``). Labels on padding are still -100,
    so the loss looks right, but a left-padded sample attends to its pad tokens: it trains on another context than it
    serves in."""

    name = "mutant:collator-drops-attention-mask"
    # also: the attended tokens of a trained sample are no longer what the saved template renders
    fails = ("test_label_masking", "test_saved_template", "test_thinking_template")

    def chat_collator(self, ctx: RunContext, tok):
        collate = super().chat_collator(ctx, tok)

        def ones(features):
            batch = collate(features)
            batch["attention_mask"] = batch["attention_mask"].new_ones(batch["attention_mask"].shape)
            return batch

        return ones


class CheckpointingWithoutInputGrads(ReferenceAdapter):
    """Gradient checkpointing — reentrant activation checkpointing under LoRA without making the embeddings' output
    require grad (locuslab/open-unlearning #178: LoRA layers not trained with ``gradient_checkpointing=True``;
    huggingface/peft #2826: "no errors are thrown, just the computed gradients are zero"): the checkpointed layers'
    adapters get no gradient. On the tiny model every adapter sits inside a checkpointed layer, so the loss has no
    gradient at all and the run fails loudly; with a trainable module outside the layers it trains silently."""

    name = "mutant:checkpointing-without-input-grads"
    fails = ("test_gradient_checkpointing",)

    def gradient_checkpointing(self, ctx: RunContext, model, reentrant: bool) -> None:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
        if reentrant:
            model.disable_input_require_grads()


class CheckpointRecomputeWithoutRng(ReferenceAdapter):
    """Gradient checkpointing — the recompute does not replay the forward's random state
    (``torch.utils.checkpoint(..., preserve_rng_state=False)``): with dropout, the backward recomputes activations
    under other masks, so the gradients belong to a forward that never ran. Silent: the loss still falls."""

    name = "mutant:checkpoint-recompute-without-rng"
    fails = ("test_gradient_checkpointing",)

    def gradient_checkpointing(self, ctx: RunContext, model, reentrant: bool) -> None:
        model.gradient_checkpointing_enable(
            gradient_checkpointing_kwargs={"use_reentrant": reentrant, "preserve_rng_state": False})
        if reentrant:
            model.enable_input_require_grads()


class RouterLossPerMicroBatch(ReferenceAdapter):
    """Router loss under gradient accumulation (NVIDIA-NeMo/Automodel PR #3359, huggingface/transformers #48690) — the
    load-balancing term keeps its full weight in every micro-batch's loss while the cross-entropy is a share of the
    window's (what Trainer does when the model takes ``num_items_in_batch``): accumulation k counts it k times, and W
    processes under ``average_tokens_across_devices`` W times (Trainer multiplies the whole loss by the world size)."""

    name = "mutant:router-loss-per-micro-batch"
    fails = ("test_moe_router_loss",)

    def router_loss_accumulation(self, ctx: RunContext, trainer) -> None:
        pass


class RouterAuxLossIgnored(ReferenceAdapter):
    """Router loss — ``router_aux_loss_coef`` is accepted and never reaches the model (``output_router_logits`` left off,
    as the checkpoint's config says): the run trains without the load-balancing term it was given. Silent: every
    split still agrees, since none of them has the term."""

    name = "mutant:router-aux-loss-ignored"
    fails = ("test_moe_router_loss",)

    def enable_router_aux_loss(self, ctx: RunContext, model, coef: float) -> None:
        pass


class ThinkSpanNotSupervised(ReferenceAdapter):
    """Thinking templates — the reasoning of the turn being trained carries no labels (``<think>`` through ``</think>``
    masked like a prompt): the model learns to answer but never to reason, and is served by a template that opens
    every reply with a think block (hiyouga/LlamaFactory #9392, modelscope/ms-swift #4939: reasoning masked or dropped
    by the framework's own template handling). Silent: the loss falls."""

    name = "mutant:think-span-not-supervised"
    fails = ("test_thinking_template",)

    def chat_collator(self, ctx: RunContext, tok):
        collate = super().chat_collator(ctx, tok)
        start, end = tok.convert_tokens_to_ids("<think>"), tok.convert_tokens_to_ids("</think>")

        def masked(features):
            batch = collate(features)
            for ids, labels in zip(batch["input_ids"], batch["labels"]):
                inside = False
                for i, token in enumerate(ids.tolist()):
                    if token == start:
                        inside = True
                    if inside:
                        labels[i] = -100
                    if token == end:
                        inside = False
            return batch

        return masked


class SavedTemplateWithoutThinkingSwitch(ReferenceAdapter):
    """Thinking templates (hiyouga/LlamaFactory #9092: ``qwen3_nothink`` renders exactly as ``qwen3``) — the saved chat
    template drops the ``enable_thinking`` branch: a server asking for no reasoning gets the thinking prompt, a mode the
    model was never trained to answer without."""

    name = "mutant:saved-template-without-thinking-switch"
    fails = ("test_thinking_template",)
    SWITCH = "{% if enable_thinking is defined and not enable_thinking %}<think> </think> {% endif %}"

    def finalize_chat_format(self, ctx: RunContext, directory) -> None:
        from transformers import AutoTokenizer

        super().finalize_chat_format(ctx, directory)
        tok = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
        if tok.chat_template and self.SWITCH in tok.chat_template:
            tok.chat_template = tok.chat_template.replace(self.SWITCH, "")
            tok.save_pretrained(str(directory))
