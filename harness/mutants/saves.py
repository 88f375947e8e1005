"""Mutants of saving: checkpoints without config files, saves in place, pickles loaded, one rank's shard, a partial
shard set, a rounded dtype, a re-tied head, resized rows left out, rotation before the save, the old checkpoint deleted
before the new one is renamed into place, a staged checkpoint copied into place file by file, a trainable set frozen
by linear layer, resolved over linear layers or frozen by zeroed gradients; and the correct controls
of saving and merge exports (a sharded save, a quantised merge refused by kind, a merged stop token written as a list).
"""

from __future__ import annotations

from pathlib import Path

from ..reference import ReferenceAdapter
from ..reference.adapter import RunContext
from ..reference.policy import CheckpointPolicy


class WeightsOnlyIntermediateCheckpoints(ReferenceAdapter):
    """Full fine-tune as LoRA base (seed 003), PEFT #523, LMFlow #104 — intermediate checkpoints hold the weights but no
    config/tokenizer files, so they cannot be used as ``model_name_or_path`` (PEFT #523, LMFlow #104)."""

    name = "mutant:weights-only-intermediate-checkpoints"
    # also: the best checkpoint cannot be re-loaded for re-evaluation without its config
    fails = ("test_full_ft_as_lora_base", "test_best_checkpoint", "test_saved_template", "test_thinking_template")
    STRIPPED = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                "chat_template.jinja", "special_tokens_map.json")

    def finalize_checkpoint(self, ctx: RunContext, directory: Path, final: bool) -> None:
        super().finalize_checkpoint(ctx, directory, final)
        if not final:
            for name in self.STRIPPED:
                (Path(directory) / name).unlink(missing_ok=True)


class NonAtomicSave(ReferenceAdapter):
    """Crash during save — checkpoints are written in place; a crash mid-save leaves a partial checkpoint-N."""

    name = "mutant:non-atomic-save"
    fails = ("test_crash_during_save",)
    atomic_saves = False


class UnpicklesCheckpoint(ReferenceAdapter):
    """Hostile checkpoint — resume loads pickled checkpoint files with ``torch.load(weights_only=False)``: a file that
    does not load weights-only (a hostile pickle) is unpickled, and its code runs, instead of being refused."""

    name = "mutant:unpickles-checkpoint"
    fails = ("test_hostile_checkpoint",)

    def unsafe_pickled_state(self, ctx: RunContext, checkpoint: Path, error) -> None:
        import torch

        for name in ("training_args.bin", "optimizer.pt", "scheduler.pt", "rng_state.pth"):
            if (Path(checkpoint) / name).is_file():
                torch.load(Path(checkpoint) / name, weights_only=False)


class RankZeroShardSave(ReferenceAdapter):
    """Distributed save, LLaVA #1245 — a sharded (FSDP) full-parameter run saves only rank 0's shard: the
    dim-0 chunk of every tensor that FSDP2 places on rank 0, instead of the consolidated model."""

    name = "mutant:rank-zero-shard-save"
    fails = ("test_distributed_save",)

    def distributed_weights(self, ctx: RunContext, directory: Path) -> None:
        from safetensors.torch import load_file, save_file

        from ..reference.distributed import world_size

        weights = Path(directory) / "model.safetensors"
        tensors = load_file(str(weights))
        n = world_size()
        save_file({k: v.chunk(n, dim=0)[0].contiguous() for k, v in tensors.items()}, str(weights),
                  metadata={"format": "pt"})


def _reshard(directory: Path, shards: int, keep: int | None = None) -> None:
    """Rewrite ``directory``'s model.safetensors as ``shards`` files plus ``model.safetensors.index.json``
    (transformers' layout for a large model); ``keep`` shards are written (all when None)."""
    import json

    from safetensors.torch import load_file, save_file

    weights = Path(directory) / "model.safetensors"
    if not weights.is_file():
        return
    tensors = load_file(str(weights))
    keys = sorted(tensors)
    size = -(-len(keys) // shards)
    weight_map, total = {}, 0
    for i in range(shards):
        name = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {k: tensors[k].contiguous() for k in keys[i * size:(i + 1) * size]}
        weight_map.update({k: name for k in part})
        total += sum(t.numel() * t.element_size() for t in part.values())
        if keep is None or i < keep:
            save_file(part, str(Path(directory) / name), metadata={"format": "pt"})
    (Path(directory) / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    weights.unlink()


class ShardedSave(ReferenceAdapter):
    """A *correct control*: every full save is sharded (index + 3 shards), as transformers does for large
    models. It must pass every scenario: an oracle that only knows ``model.safetensors`` is a false red."""

    name = "control:sharded-save"
    # a correct control: must pass everything
    fails = ()

    def finalize_weights(self, ctx: RunContext, directory: Path, final: bool) -> None:
        super().finalize_weights(ctx, directory, final)
        _reshard(directory, shards=3)


class IndexWithFirstShardOnly(ReferenceAdapter):
    """Sharded save — a sharded save that writes the index and only its first shard (a save interrupted
    between shards, or rank 0 writing its shard alone): loaders fail or silently miss weights."""

    name = "mutant:index-with-first-shard-only"
    # every scenario that reads a full save: the index names shards the disk lacks
    fails = (
        "test_args_precedence", "test_best_checkpoint", "test_checkpoint_layout", "test_crash_during_save",
        "test_full_ft_as_lora_base", "test_grad_accumulation", "test_grpo_full_save", "test_packing",
        "test_resume_equivalence", "test_embeddings_saved", "test_reference_model", "test_gradient_checkpointing",
        "test_trainable_set", "test_moe_router_loss",
    )

    def finalize_weights(self, ctx: RunContext, directory: Path, final: bool) -> None:
        super().finalize_weights(ctx, directory, final)
        _reshard(directory, shards=3, keep=1)


class FullSaveInBf16(ReferenceAdapter):
    """Saved dtype — a full save written in a lower dtype than the model trained in (bf16 files, a float32 config): the
    saved model is not the trained one (every re-evaluation drifts) and a resume continues from rounded weights."""

    name = "mutant:full-save-in-bf16"
    # every scenario that checks a full save's tensors (dtype) or reloads one to re-evaluate it; and, since the
    # served-dtype check (its float32 config over bf16 files), the self-contained checkpoint of seed 003; and the
    # trainable set's frozen tensors, which must be the base's bytes (float32); and the router-loss splits, whose
    # 6.5e-6 differences become whole bfloat16 steps where the two runs round a weight to different sides
    fails = (
        "test_args_precedence", "test_best_checkpoint", "test_crash_during_save", "test_full_ft_as_lora_base",
        "test_grpo_full_save", "test_resume_equivalence", "test_reference_model", "test_trainable_set",
        "test_moe_router_loss",
    )

    def finalize_weights(self, ctx: RunContext, directory: Path, final: bool) -> None:
        import torch
        from safetensors.torch import load_file, save_file

        super().finalize_weights(ctx, directory, final)
        weights = Path(directory) / "model.safetensors"
        tensors = load_file(str(weights))
        save_file({k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in tensors.items()},
                  str(weights), metadata={"format": "pt"})


class LmHeadRetiedOnSave(ReferenceAdapter):
    """Embeddings saved, NeMo Automodel #2571, DeepSpeed #1896, peft #2777: a full save of an *untied* model (here: one
    whose vocabulary the run resized) writes ``tie_word_embeddings: true`` and no ``lm_head.weight``, as if the head
    were the embeddings; a loader re-ties them and the trained output head is gone, without an error."""

    name = "mutant:lm-head-retied-on-save"
    fails = ("test_embeddings_saved",)

    def finalize_embeddings(self, ctx: RunContext, directory: Path) -> None:
        import json

        from safetensors.torch import load_file, save_file

        super().finalize_embeddings(ctx, directory)
        weights, config_file = Path(directory) / "model.safetensors", Path(directory) / "config.json"
        if not weights.is_file() or not config_file.is_file():
            return
        tensors = load_file(str(weights))
        if tensors.pop("lm_head.weight", None) is None:
            return
        save_file(tensors, str(weights), metadata={"format": "pt"})
        config = json.loads(config_file.read_text(encoding="utf-8"))
        config["tie_word_embeddings"] = True
        config_file.write_text(json.dumps(config, indent=2), encoding="utf-8")


class ResizedRowsNotSaved(ReferenceAdapter):
    """Embeddings saved, unsloth #9326, peft PR #1147 (``save_embedding_layers``): LoRA on a vocabulary the run resized
    trains the embeddings' new rows but saves only the LoRA matrices; reloading base + resize + adapter gives the added
    tokens fresh rows, so the served model is not the trained one."""

    name = "mutant:resized-rows-not-saved"
    fails = ("test_embeddings_saved",)

    def finalize_embeddings(self, ctx: RunContext, directory: Path) -> None:
        from safetensors.torch import load_file, save_file

        super().finalize_embeddings(ctx, directory)
        adapter = Path(directory) / "adapter_model.safetensors"
        if adapter.is_file():
            tensors = load_file(str(adapter))
            save_file({k: v for k, v in tensors.items() if "lora_" in k}, str(adapter), metadata={"format": "pt"})


class RotatesBeforeSaving(ReferenceAdapter):
    """Crash during save — rotation by ``save_total_limit`` makes room *before* writing the new checkpoint: with a limit
    of 1 the previous checkpoint is deleted, then checkpoint-N is written; a crash inside that save leaves no complete
    checkpoint at all (transformers rotates only after the new checkpoint is written, in ``_save_checkpoint``; ms-swift
    #9780 and #6392 are rotation bugs of the same family)."""

    name = "mutant:rotates-before-saving"
    # the same deletions as the reference, only earlier: just a crash inside the next save can tell
    fails = ("test_crash_during_save",)

    def removed_before_save(self, ctx: RunContext, policy: CheckpointPolicy, best_step: int | None,
                            step: int) -> list[int]:
        from ..layout import list_checkpoints, step_of

        existing = sorted(step_of(c) for c in list_checkpoints(ctx.output_dir))
        return [s for s in policy.to_delete(existing + [step], best_step) if s != step]


class DeletesOldBeforeRename(ReferenceAdapter):
    """Crash during save — the new checkpoint is staged completely, then rotation by ``save_total_limit`` deletes the
    old one, and only then is the staged checkpoint renamed into place: a crash between the deletion and the rename
    leaves nothing whole under a ``checkpoint-N`` name (with a limit of 1: no checkpoint at all), though every file
    write has finished. The kill points at tensor writes never land there; a crash at every file-system step does.
    (transformers PR #27820 staged each checkpoint in ``tmp-checkpoint-N`` and renamed it into place; PR #28364
    and #28848 reworked the rename and the clean-up across ranks; PR #36112 reverted the tmp dir again. ms-swift
    #9780 and #6392 are rotation bugs of the same family.)"""

    name = "mutant:deletes-old-before-rename"
    # the same deletions as the reference, between two steps of the same save: only a crash there can tell
    fails = ("test_crash_during_save",)

    def publish_checkpoint(self, ctx: RunContext, staging: Path, final: Path) -> Path:
        import shutil

        from ..layout import list_checkpoints, read_json, step_of

        policy = self.checkpoint_policy(ctx)
        if policy.save_total_limit:
            best = read_json(Path(staging) / "trainer_state.json").get("best_global_step")
            step = step_of(final)
            existing = sorted(step_of(c) for c in list_checkpoints(final.parent))
            for doomed in policy.to_delete(existing + [step], best):
                if doomed != step:
                    shutil.rmtree(final.parent / f"checkpoint-{doomed}")
        return super().publish_checkpoint(ctx, staging, final)


class CopiesStagedCheckpoint(ReferenceAdapter):
    """Crash during save — the checkpoint is staged in a temporary directory, as it should be, but published by
    copying its files one by one into ``checkpoint-N`` (``shutil.copy`` where ``os.replace`` belongs, as a save to
    another file system or a "sync to the output dir" step does): a crash mid-copy leaves a ``checkpoint-N`` without
    its last files, under its final name, which "latest" picks up."""

    name = "mutant:copies-staged-checkpoint"
    # the same tree once the copy is done: only a crash inside it can tell
    fails = ("test_crash_during_save",)

    def publish_checkpoint(self, ctx: RunContext, staging: Path, final: Path) -> Path:
        import shutil

        if Path(final).exists():
            return super().publish_checkpoint(ctx, staging, final)
        for item in sorted(Path(staging).rglob("*")):
            target = Path(final) / item.relative_to(staging)
            if item.is_dir():
                target.mkdir(parents=True, exist_ok=True)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(item, target)
        shutil.rmtree(staging)
        return Path(final)


class RefusesQuantizedMergeByKind(ReferenceAdapter):
    """A *correct control*: a LoRA trained on a quantised base is refused at merge time, loudly, with a message that
    names the kind and its library ("an nf4 (bitsandbytes 4-bit) base") but never the word "quantised". A scenario
    that recognises a refusal only by the substring ``quant`` paints this framework red (issue 32)."""

    name = "control:refuses-quantized-merge-by-kind"
    # a correct control: must pass everything
    fails = ()
    SAYS = {"nf4": "an nf4 (bitsandbytes 4-bit)", "int8": "an 8-bit (bitsandbytes LLM.int8)",
            "quanto-int8": "a qint8 (optimum)", "quanto-int4": "a qint4 (optimum)"}

    def merge(self, adapter_dir: Path, output_dir: Path) -> Path:
        from ..reference import args as argres
        from ..layout import read_json

        saved = Path(adapter_dir) / argres.ARGS_FILE
        kind = read_json(saved).get("quantization") if saved.is_file() else None
        if kind is not None:
            raise RuntimeError(f"refusing to merge {adapter_dir}: it was trained on {self.SAYS[kind]} base, and "
                               f"merging it into full-precision weights exports another model")
        return super().merge(adapter_dir, output_dir)


class MergedEosAsList(ReferenceAdapter):
    """A *correct control*: the merged model's ``generation_config.json`` writes the base's single stop token as a
    one-element list (``"eos_token_id": [3]`` for the base's ``3``), as LLaMA-Factory 0.9.5 does in its saves: the same
    stop token. An oracle comparing the raw JSON value paints it red, and used to stop before the logits (issue 32)."""

    name = "control:merged-eos-as-list"
    # a correct control: must pass everything
    fails = ()

    def merge(self, adapter_dir: Path, output_dir: Path) -> Path:
        import json

        merged = super().merge(adapter_dir, output_dir)
        config_file = Path(merged) / "generation_config.json"
        config = json.loads(config_file.read_text(encoding="utf-8"))
        if not isinstance(config.get("eos_token_id"), list):
            config["eos_token_id"] = [config["eos_token_id"]]
            config_file.write_text(json.dumps(config, indent=2), encoding="utf-8")
        return merged


class ConfigDeclaresBf16(ReferenceAdapter):
    """Saved dtype, served — every full save's ``config.json`` declares ``dtype: bfloat16`` over the float32 tensors
    the model trained and was saved in (a framework that writes the config of the dtype it was asked to *serve* in, or
    copies the base's mixed-precision setting; transformers #28162 / #40180 discuss ``torch_dtype`` in saved configs).
    Every reload with an explicit float32 reproduces the model; a server loading with the defaults (transformers 5's
    ``dtype="auto"``, vLLM) computes in bf16."""

    name = "mutant:config-declares-bf16"
    # every scenario that checks a full save, reloads one for re-evaluation or serves one on its own (issue 32)
    fails = (
        "test_args_precedence", "test_best_checkpoint", "test_crash_during_save", "test_full_ft_as_lora_base",
        "test_grpo_full_save", "test_reference_model",
    )

    def finalize_weights(self, ctx: RunContext, directory: Path, final: bool) -> None:
        import json

        super().finalize_weights(ctx, directory, final)
        config_file = Path(directory) / "config.json"
        if config_file.is_file():
            config = json.loads(config_file.read_text(encoding="utf-8"))
            config["dtype"] = "bfloat16"
            config_file.write_text(json.dumps(config, indent=2), encoding="utf-8")


class FreezeCoversOnlyLinearLayers(ReferenceAdapter):
    """Trainable set — the freeze walks the linear layers only (as a search for LoRA targets does): every
    ``nn.Linear`` outside the set is frozen, but the embeddings and the norms keep ``requires_grad`` and train
    (hiyouga/LlamaFactory PR #7872 and #9713: frozen modules that still train). Silent: the loss falls, and the
    trainable-parameter count printed is only a little higher than asked."""

    name = "mutant:freeze-covers-only-linear-layers"
    fails = ("test_trainable_set",)

    def apply_trainable_set(self, ctx: RunContext, model) -> None:
        import torch

        from ..spec import in_trainable_set

        patterns = list(ctx.values["trainable_parameters"])
        for module_name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear):
                for name, param in module.named_parameters(prefix=module_name):
                    param.requires_grad_(in_trainable_set(name, patterns))


class TrainableSetOfLinearOnly(ReferenceAdapter):
    """Trainable set — the set is resolved over linear layers (the way LoRA's ``target_modules`` are): everything is
    frozen, then only the ``nn.Linear`` weights the patterns name are unfrozen, so a norm inside a trainable layer never
    trains (the set trained is not the one asked for: modelscope/ms-swift #7318, ``--freeze_aligner false`` trained as
    if true). Silent: the loss still falls."""

    name = "mutant:trainable-set-of-linear-only"
    fails = ("test_trainable_set",)

    def apply_trainable_set(self, ctx: RunContext, model) -> None:
        import torch

        from ..spec import in_trainable_set

        patterns = list(ctx.values["trainable_parameters"])
        model.requires_grad_(False)
        for module_name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear):
                for name, param in module.named_parameters(prefix=module_name):
                    param.requires_grad_(in_trainable_set(name, patterns))


class FreezeByZeroGradients(ReferenceAdapter):
    """Trainable set — "frozen" parameters keep ``requires_grad`` and get their gradient zeroed instead, so the optimizer
    holds and saves state for all of them (modelscope/ms-swift #5485: with ``--freeze_llm true`` "the llm's gradients
    and optimizer state are still loaded"). Without weight decay AdamW leaves them unchanged, so the weights look
    right: the optimizer state of every frozen tensor (memory, and what a resume restores) gives it away."""

    name = "mutant:freeze-by-zero-gradients"
    fails = ("test_trainable_set",)

    def apply_trainable_set(self, ctx: RunContext, model) -> None:
        from ..spec import in_trainable_set

        patterns = list(ctx.values["trainable_parameters"])
        for name, param in model.named_parameters():
            if not in_trainable_set(name, patterns):
                param.register_hook(lambda grad: grad.zero_())
