"""Known-bad adapters: each is the reference with exactly one documented bug put back.

They exist to prove the scenarios bite: every scenario must fail on the mutant that reproduces its
seed (``tests/test_detection.py`` asserts the whole matrix). Select one like any adapter::

    pytest --pyargs scenarios --ft-adapter harness.mutants:ArgsJsonBeatsCli
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .adapter import ResolvedArgs, Source
from .reference import ReferenceAdapter
from .reference.adapter import RunContext
from .reference import args as argres
from .reference.policy import CheckpointPolicy

log = logging.getLogger("harness.mutants")

__all__ = [
    "ArgsJsonBeatsCli",
    "QuantizedResumeReinitLora",
    "ResumeDropsOptimizerState",
    "WeightsOnlyIntermediateCheckpoints",
    "PlainTrainerBestCheckpoint",
    "RotationDeletesBest",
    "NonAtomicSave",
    "UnpicklesCheckpoint",
    "RankZeroShardSave",
    "ShardedSave",
    "IndexWithFirstShardOnly",
    "ScheduleRestartsOnResume",
    "RngNotRestoredOnResume",
    "DataOrderRestartsOnResume",
    "LaterEpochReplaysEpochZero",
    "MissingTrainingStateIgnored",
    "ResumeFromIgnored",
    "MeanOfMicroBatchMeans",
    "MergeWithoutLoraScale",
    "PackingWithoutBoundaries",
    "BestCheckpointMislabelled",
    "RotationSortsByName",
    "EvaluatesOnTrainSplit",
    "ResumeForgetsBest",
    "FullSaveInBf16",
    "PadIsEosInCollator",
    "SavedTokenizerWithoutTemplate",
    "LmHeadRetiedOnSave",
    "ResizedRowsNotSaved",
    "TrainsWithSavedArgs",
    "AdapterNamesAnotherBase",
    "SavedAlphaDiffersFromTrained",
    "RotatesBeforeSaving",
    "MUTANTS",
]


def _saved_differences(model_dir, resume_dir, keys, resolved: ResolvedArgs) -> tuple[Source | None, dict[str, Any]]:
    """The highest saved args.json that applies (its source), and its values for ``keys`` that differ from the
    resolution: what a framework that force-loads that file would change."""
    layers = argres.discover_layers(Path(model_dir), Path(resume_dir) if resume_dir else None)
    if not layers:
        return None, {}
    source, path = layers[0]
    saved = argres.read_args_file(path)
    return source, {k: saved[k] for k in keys
                    if saved.get(k) is not None and not argres.same_value(saved[k], resolved.values.get(k))}


class ArgsJsonBeatsCli(ReferenceAdapter):
    """Seeds 000/001 — ms-swift ``load_args``: the first saved args.json found (checkpoint, adapter or
    model dir) force-loads its tuner keys over the command line, silently (ms-swift #3168)."""

    name = "mutant:args-json-beats-cli"
    FORCE_LOAD = ("train_type", "quantization", "lora_rank", "lora_alpha", "target_modules")

    def resolve_args(self, cli: Mapping[str, Any], model_dir: Path, resume_dir: Path | None = None) -> ResolvedArgs:
        resolved = super().resolve_args(cli, model_dir, resume_dir)
        if not resolved.values.get("load_args", True):
            return resolved
        source, beaten = _saved_differences(model_dir, resume_dir, self.FORCE_LOAD, resolved)
        if not beaten:  # the saved file agrees with the resolution: nothing is beaten, the answer is the same
            return resolved
        values, sources = dict(resolved.values), dict(resolved.sources)
        for key, value in beaten.items():
            values[key], sources[key] = value, Source(source.kind, source.path)
        return ResolvedArgs(values=values, sources=sources, warnings=())  # silently


class QuantizedResumeReinitLora(ReferenceAdapter):
    """Seed 002 — loading the LoRA state into a quantised base fails upstream; the run carries on
    with freshly initialised LoRA weights (what ``--init_lora`` does), silently."""

    name = "mutant:quantized-resume-reinit-lora"

    def load_checkpoint_weights(self, ctx: RunContext, trainer, checkpoint: Path, model) -> None:
        if ctx.values["quantization"] is not None:
            log.warning("could not load %s into the quantised base; continuing with fresh LoRA weights", checkpoint)
            return
        super().load_checkpoint_weights(ctx, trainer, checkpoint, model)

    def load_diffusion_lora(self, ctx: RunContext, checkpoint: Path, unet) -> None:
        if ctx.values["quantization"] is not None:
            log.warning("could not load %s into the quantised UNet; continuing with fresh LoRA weights", checkpoint)
            return
        super().load_diffusion_lora(ctx, checkpoint, unet)


class ResumeDropsOptimizerState(ReferenceAdapter):
    """Issue 6 — resume restores the adapter weights but not optimizer/scheduler state."""

    name = "mutant:resume-drops-optimizer-state"

    def prepare_resume(self, ctx: RunContext, checkpoint: Path) -> Path:
        copy = Path(tempfile.mkdtemp(prefix="ft-mutant-")) / Path(checkpoint).name
        shutil.copytree(checkpoint, copy)
        for name in ("optimizer.pt", "scheduler.pt"):
            (copy / name).unlink(missing_ok=True)
        return super().prepare_resume(ctx, copy)


class WeightsOnlyIntermediateCheckpoints(ReferenceAdapter):
    """Seed 003 — intermediate checkpoints hold the weights but no config/tokenizer files, so they
    cannot be used as ``model_name_or_path`` (PEFT #523, LMFlow #104)."""

    name = "mutant:weights-only-intermediate-checkpoints"
    STRIPPED = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                "chat_template.jinja", "special_tokens_map.json")

    def finalize_checkpoint(self, ctx: RunContext, directory: Path, final: bool) -> None:
        super().finalize_checkpoint(ctx, directory, final)
        if not final:
            for name in self.STRIPPED:
                (Path(directory) / name).unlink(missing_ok=True)


class RotationDeletesBest(ReferenceAdapter):
    """Seed 004 / transformers #39476, ms-swift #9780 — rotation by ``save_total_limit`` deletes the
    oldest checkpoints even when one of them is the best."""

    name = "mutant:rotation-deletes-best"

    def rotate_checkpoints(self, ctx: RunContext, policy: CheckpointPolicy, best_step: int | None) -> None:
        super().rotate_checkpoints(ctx, policy, None)


class PlainTrainerBestCheckpoint(RotationDeletesBest):
    """Seed 004 — plain Trainer behaviour: only save-cadence steps are saved, so a best evaluation
    between two saves is lost (ms-swift #3314: eval_steps=50, save_steps=200, best at 1050)."""

    name = "mutant:plain-trainer-best-checkpoint"

    def checkpoint_policy(self, ctx: RunContext) -> CheckpointPolicy:
        import dataclasses

        policy = super().checkpoint_policy(ctx)
        if not policy.eval_steps:  # no evaluation, no best: plain Trainer saves exactly as the reference does
            return policy
        return dataclasses.replace(policy, save_on_best=False)


class NonAtomicSave(ReferenceAdapter):
    """Issue 10 — checkpoints are written in place; a crash mid-save leaves a partial checkpoint-N."""

    name = "mutant:non-atomic-save"
    atomic_saves = False


class UnpicklesCheckpoint(ReferenceAdapter):
    """Issue 10 — resume loads pickled checkpoint files with ``torch.load(weights_only=False)``."""

    name = "mutant:unpickles-checkpoint"

    def prepare_resume(self, ctx: RunContext, checkpoint: Path) -> Path:
        import torch

        for name in ("training_args.bin", "optimizer.pt", "scheduler.pt", "rng_state.pth"):
            if (Path(checkpoint) / name).is_file():
                torch.load(Path(checkpoint) / name, weights_only=False)
        return checkpoint


class RankZeroShardSave(ReferenceAdapter):
    """Issue 11 / LLaVA #1245 — a sharded (FSDP) full-parameter run saves only rank 0's shard: the
    dim-0 chunk of every tensor that FSDP2 places on rank 0, instead of the consolidated model."""

    name = "mutant:rank-zero-shard-save"

    def distributed_weights(self, ctx: RunContext, directory: Path) -> None:
        from safetensors.torch import load_file, save_file

        from .reference.distributed import world_size

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

    def finalize_weights(self, ctx: RunContext, directory: Path, final: bool) -> None:
        super().finalize_weights(ctx, directory, final)
        _reshard(directory, shards=3)


class IndexWithFirstShardOnly(ReferenceAdapter):
    """Issue 18 — a sharded save that writes the index and only its first shard (a save interrupted
    between shards, or rank 0 writing its shard alone): loaders fail or silently miss weights."""

    name = "mutant:index-with-first-shard-only"

    def finalize_weights(self, ctx: RunContext, directory: Path, final: bool) -> None:
        super().finalize_weights(ctx, directory, final)
        _reshard(directory, shards=3, keep=1)


class ScheduleRestartsOnResume(ReferenceAdapter):
    """Issue 19 — transformers #27710/#24656, SimpleTuner PR #3027/#3045: resume restores the optimizer but
    not the LR scheduler; warm-up and decay start again from step 0."""

    name = "mutant:schedule-restarts-on-resume"

    def load_optimizer_state(self, ctx: RunContext, trainer, checkpoint: Path) -> None:
        from .layout import safe_torch_load

        trainer.optimizer.load_state_dict(safe_torch_load(Path(checkpoint) / "optimizer.pt"))


class RngNotRestoredOnResume(ReferenceAdapter):
    """Issue 19 — the checkpoint's RNG states are not restored: dropout masks (and sampling) after the
    resume differ from the uninterrupted run's."""

    name = "mutant:rng-not-restored-on-resume"

    def load_rng_state(self, ctx: RunContext, trainer, checkpoint: Path) -> None:
        log.warning("not restoring the RNG state of %s", checkpoint)


class DataOrderRestartsOnResume(ReferenceAdapter):
    """Issue 19 — ms-swift #10050, LLaMA-Factory #7085, transformers ``ignore_data_skip``: the resumed
    epoch is read from its first batch again; samples already trained on are re-trained, others never."""

    name = "mutant:data-order-restarts-on-resume"

    def resume_data(self, ctx: RunContext, trainer) -> None:
        trainer.args.ignore_data_skip = True


class LaterEpochReplaysEpochZero(ReferenceAdapter):
    """Issue 19 — transformers PR #40691, accelerate #2016/#3242: resuming inside epoch >= 1 shuffles the
    resumed epoch with epoch 0's seed, so it replays epoch 0's order (skipping into the wrong samples)."""

    name = "mutant:later-epoch-replays-epoch-zero"

    def resume_data(self, ctx: RunContext, trainer) -> None:
        original = trainer.get_train_dataloader

        def get_train_dataloader():
            dataloader = original()
            seen: set[int] = set()
            for obj in _samplers(dataloader):
                if hasattr(obj, "set_epoch") and id(obj) not in seen:
                    seen.add(id(obj))
                    obj.set_epoch = _first_epoch_as_zero(obj.set_epoch)
            return dataloader

        trainer.get_train_dataloader = get_train_dataloader


def _samplers(dataloader) -> list[Any]:
    """The dataloader and every (batch) sampler under it."""
    out, todo = [], [dataloader]
    while todo:
        obj = todo.pop()
        if obj is None or any(obj is o for o in out):
            continue
        out.append(obj)
        todo += [getattr(obj, name, None) for name in ("batch_sampler", "sampler")]
    return out


def _first_epoch_as_zero(set_epoch):
    calls = {"n": 0}

    def wrapped(epoch):
        calls["n"] += 1
        return set_epoch(0 if calls["n"] == 1 else epoch)

    return wrapped


class MissingTrainingStateIgnored(ReferenceAdapter):
    """Issue 19 — transformers' ``_load_optimizer_and_scheduler``: a checkpoint without ``optimizer.pt`` /
    ``scheduler.pt`` (``save_only_model``) resumes silently with a fresh optimizer and schedule."""

    name = "mutant:missing-training-state-ignored"

    def check_resume_state(self, ctx: RunContext, checkpoint: Path) -> None:
        return None


class ResumeFromIgnored(ReferenceAdapter):
    """Issue 19 — ms-swift #3396, verl #7401: ``resume_from`` is not applied; the run silently trains from
    step 0 with the same seed. A deterministic restart reproduces the uninterrupted run, so only a proof
    that the resumed run *read* checkpoint-k catches it."""

    name = "mutant:resume-from-ignored"

    def prepare_resume(self, ctx: RunContext, checkpoint: Path) -> Path | None:
        log.warning("ignoring resume_from=%s", checkpoint)
        return None


class MeanOfMicroBatchMeans(ReferenceAdapter):
    """Issue 20 — transformers before PR #34191 (4.46), ms-swift #2361, LLaMA-Factory #6211, axolotl #2039,
    trl #2175: each micro-batch's loss is its own token mean and the window's loss is the mean of those
    means, so with samples of different lengths a token in a short micro-batch weighs more than one in a
    long micro-batch; gradient accumulation no longer equals the large batch."""

    name = "mutant:mean-of-micro-batch-means"

    def accumulation_loss(self, ctx: RunContext, trainer) -> None:
        trainer.model_accepts_loss_kwargs = False  # Trainer then averages each micro-batch and divides by k


class MergeWithoutLoraScale(ReferenceAdapter):
    """Issue 20 — peft #1043 / #2321 family: the merge adds ``B @ A`` without the ``lora_alpha / r`` scale the
    adapter trained with, so the merged model is not the trained one (with alpha == r it would not show)."""

    name = "mutant:merge-without-lora-scale"

    def merge_scaling(self, adapter_dir: Path) -> float | None:
        return 1.0


class PackingWithoutBoundaries(ReferenceAdapter):
    """Issue 20 — trl #3067 / PR #3526, ms-swift #4439, LLaMA-Factory PR #4224: packed samples are concatenated
    with positions running on across them, so nothing marks the boundaries and each sample attends to the
    ones packed before it; the loss still falls, so it is silent."""

    name = "mutant:packing-without-boundaries"

    def packing_collator(self, ctx: RunContext, model):
        from .hf import packing_collator

        model.config.use_cache = False
        return packing_collator(position_ids=False)


#: mutant class name -> the scenario modules it must fail (and it must pass all the others)
class BestCheckpointMislabelled(ReferenceAdapter):
    """#18 — ``best_model_checkpoint`` names a checkpoint that exists but is not the best: the newest one already on
    disk when the new best is saved (the pointer is taken before the save that it should point at)."""

    name = "mutant:best-checkpoint-mislabelled"

    def best_checkpoint_path(self, ctx: RunContext, step: int) -> Path:
        from .layout import list_checkpoints

        earlier = [c for c in list_checkpoints(ctx.output_dir) if int(c.name.split("-")[1]) < step]
        return earlier[-1] if earlier else super().best_checkpoint_path(ctx, step)


class RotationSortsByName(ReferenceAdapter):
    """#18 / transformers' early rotation — checkpoints sorted by *name*, so ``checkpoint-10`` is "older" than
    ``checkpoint-9``: rotation keeps the best but removes the newest save, the one a resume needs."""

    name = "mutant:rotation-sorts-by-name"

    def rotate_checkpoints(self, ctx: RunContext, policy: CheckpointPolicy, best_step: int | None) -> None:
        from .layout import list_checkpoints

        ckpts = sorted(list_checkpoints(ctx.output_dir), key=lambda c: c.name)
        by_name = {i: c for i, c in enumerate(ckpts)}  # position in name order stands for the step
        best = next((i for i, c in by_name.items() if best_step is not None and c.name == f"checkpoint-{best_step}"),
                    None)
        for i in policy.to_delete(sorted(by_name), best):
            shutil.rmtree(by_name[i])


class EvaluatesOnTrainSplit(ReferenceAdapter):
    """#18 — the run logs its evaluations on the training split instead of eval.jsonl (a dataset-mapping slip):
    every logged eval metric, and so the best checkpoint, is computed on the wrong data."""

    name = "mutant:evaluates-on-train-split"

    def build_trainer(self, ctx: RunContext, model, tok):
        trainer = super().build_trainer(ctx, model, tok)
        if getattr(trainer, "eval_dataset", None) is not None:
            trainer.eval_dataset = trainer.train_dataset
        return trainer


class ResumeForgetsBest(ReferenceAdapter):
    """#18 — a resumed run starts best tracking afresh: the first evaluation after the resume is "the best", and
    rotation removes the real best, saved before the interruption."""

    name = "mutant:resume-forgets-best"

    def restore_best(self, ctx: RunContext, state) -> tuple[int, float] | None:
        return None


class FullSaveInBf16(ReferenceAdapter):
    """#18 — a full save written in a lower dtype than the model trained in (bf16 files, a float32 config): the
    saved model is not the trained one (every re-evaluation drifts) and a resume continues from rounded weights."""

    name = "mutant:full-save-in-bf16"

    def finalize_weights(self, ctx: RunContext, directory: Path, final: bool) -> None:
        import torch
        from safetensors.torch import load_file, save_file

        super().finalize_weights(ctx, directory, final)
        weights = Path(directory) / "model.safetensors"
        tensors = load_file(str(weights))
        save_file({k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in tensors.items()},
                  str(weights), metadata={"format": "pt"})


MUTANTS: dict[str, tuple[str, ...]] = {
    # also: a forced saved lora becomes the base of LoRA-on-checkpoint runs, and a forced saved
    # quantisation hides the requested one on resume (no mismatch error)
    "ArgsJsonBeatsCli": ("test_args_precedence", "test_grpo_full_save", "test_full_ft_as_lora_base",
                         "test_quantized_lora_resume"),
    "QuantizedResumeReinitLora": ("test_quantized_lora_resume", "test_diffusion_lora_resume"),
    "ResumeDropsOptimizerState": ("test_quantized_lora_resume", "test_diffusion_lora_resume",
                                  "test_resume_equivalence"),
    # also: the best checkpoint cannot be re-loaded for re-evaluation without its config
    "WeightsOnlyIntermediateCheckpoints": ("test_full_ft_as_lora_base", "test_best_checkpoint",
                                           "test_saved_template"),
    "PlainTrainerBestCheckpoint": ("test_best_checkpoint",),
    "RotationDeletesBest": ("test_best_checkpoint",),
    "NonAtomicSave": ("test_crash_during_save",),
    "UnpicklesCheckpoint": ("test_hostile_checkpoint",),
    "RankZeroShardSave": ("test_distributed_save",),
    "ShardedSave": (),  # a correct control: must pass everything
    # every scenario that reads a full save: the index names shards the disk lacks
    "IndexWithFirstShardOnly": ("test_args_precedence", "test_best_checkpoint", "test_checkpoint_layout",
                                "test_crash_during_save", "test_full_ft_as_lora_base", "test_grad_accumulation",
                                "test_grpo_full_save", "test_packing", "test_resume_equivalence",
                                "test_embeddings_saved"),
    "ScheduleRestartsOnResume": ("test_resume_equivalence",),  # seed 002 trains at a constant LR
    "RngNotRestoredOnResume": ("test_resume_equivalence",),  # only dropout and sampling draw on the RNG
    # also seed 002: its k=2/4 resumes are mid-epoch (12 steps per epoch)
    "DataOrderRestartsOnResume": ("test_resume_equivalence", "test_quantized_lora_resume"),
    "LaterEpochReplaysEpochZero": ("test_resume_equivalence",),  # seed 002 never leaves epoch 0
    "MissingTrainingStateIgnored": ("test_resume_equivalence",),
    # also: a run that ignores the checkpoint cannot refuse its quantisation or its poisoned pickles
    "ResumeFromIgnored": ("test_resume_equivalence", "test_quantized_lora_resume", "test_diffusion_lora_resume"),
    # the resume scenario accumulates too, but its two runs share the bug, so they still agree
    "MeanOfMicroBatchMeans": ("test_grad_accumulation",),
    "MergeWithoutLoraScale": ("test_lora_merge",),
    "PackingWithoutBoundaries": ("test_packing",),
    "BestCheckpointMislabelled": ("test_best_checkpoint",),
    "RotationSortsByName": ("test_best_checkpoint",),
    # every scenario whose reload must reproduce the logged eval loss (embeddings, the trained-values run)
    "EvaluatesOnTrainSplit": ("test_args_precedence", "test_best_checkpoint", "test_embeddings_saved"),
    "ResumeForgetsBest": ("test_best_checkpoint",),
    # every scenario that checks a full save's tensors (dtype) or reloads one to re-evaluate it
    "FullSaveInBf16": ("test_args_precedence", "test_best_checkpoint", "test_crash_during_save", "test_grpo_full_save",
                       "test_resume_equivalence"),
    "PadIsEosInCollator": ("test_label_masking",),
    "SavedTokenizerWithoutTemplate": ("test_saved_template",),
    "LmHeadRetiedOnSave": ("test_embeddings_saved",),
    "ResizedRowsNotSaved": ("test_embeddings_saved",),
    "TrainsWithSavedArgs": ("test_args_precedence",),
    # the LoRA-on-a-full-output runs: the named base's weights (seed 003) and the re-evaluation through it (seed 000)
    "AdapterNamesAnotherBase": ("test_args_precedence", "test_full_ft_as_lora_base"),
    # the saved config (seed 000) and every LoRA reload that re-evaluates (embeddings); merge parity compares the
    # merged model with the same mis-scaled reload, so it cannot see it
    "SavedAlphaDiffersFromTrained": ("test_args_precedence", "test_embeddings_saved"),
    # the same deletions as the reference, only earlier: just a crash inside the next save can tell
    "RotatesBeforeSaving": ("test_crash_during_save",),
}


class PadIsEosInCollator(ReferenceAdapter):
    """Issue 21 — trl #1623 (back again per PR #3091): the collator pads with the EOS (``pad_token = eos_token``, as
    Llama recipes set it) and masks the labels *by value* (``labels[input_ids == pad_token_id] = -100``, as
    ``DataCollatorForLanguageModeling`` does), so the EOS that ends every assistant turn is masked with the padding:
    the model never learns to stop."""

    name = "mutant:pad-is-eos-in-collator"

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
    """Issue 21 — LLaMA-Factory #5836 / #5904, ms-swift #2831: the tokenizer saved with each checkpoint and the final
    model lacks the chat template the run trained with (no ``chat_template.jinja``, no ``chat_template`` key), so a
    server renders its own default format."""

    name = "mutant:saved-tokenizer-without-template"

    def finalize_chat_format(self, ctx: RunContext, directory: Path) -> None:
        import json

        super().finalize_chat_format(ctx, directory)
        (Path(directory) / "chat_template.jinja").unlink(missing_ok=True)
        config = Path(directory) / "tokenizer_config.json"
        saved = json.loads(config.read_text(encoding="utf-8"))
        saved.pop("chat_template", None)
        config.write_text(json.dumps(saved, indent=2), encoding="utf-8")


class LmHeadRetiedOnSave(ReferenceAdapter):
    """Issue 21 — NeMo Automodel #2571, DeepSpeed #1896, peft #2777: a full save of an *untied* model (here: one whose
    vocabulary the run resized) writes ``tie_word_embeddings: true`` and no ``lm_head.weight``, as if the head were the
    embeddings; a loader re-ties them and the trained output head is gone, without an error."""

    name = "mutant:lm-head-retied-on-save"

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
    """Issue 21 — unsloth #9326, peft PR #1147 (``save_embedding_layers``): LoRA on a vocabulary the run resized trains
    the embeddings' new rows but saves only the LoRA matrices; reloading base + resize + adapter gives the added tokens
    fresh rows, so the served model is not the trained one."""

    name = "mutant:resized-rows-not-saved"

    def finalize_embeddings(self, ctx: RunContext, directory: Path) -> None:
        from safetensors.torch import load_file, save_file

        super().finalize_embeddings(ctx, directory)
        adapter = Path(directory) / "adapter_model.safetensors"
        if adapter.is_file():
            tensors = load_file(str(adapter))
            save_file({k: v for k, v in tensors.items() if "lora_" in k}, str(adapter), metadata={"format": "pt"})


class TrainsWithSavedArgs(ReferenceAdapter):
    """#18 — the resolution reports the command line (``resolve_args``, its log lines, no warning owed), but the run
    trains with the saved args.json's learning rate and LoRA shape: the saved file is re-applied after the resolution
    is logged (pytorch/examples #816 "resume will override learning rate on command line"; ms-swift #3168's
    ``load_args`` applied over the parsed command line)."""

    name = "mutant:trains-with-saved-args"
    REAPPLIED = ("learning_rate", "lora_rank", "lora_alpha")

    def effective_args(self, spec, resolved: ResolvedArgs) -> ResolvedArgs:
        _, changed = _saved_differences(spec.model_dir, spec.resume_from, self.REAPPLIED, resolved)
        if not changed:
            return resolved
        return ResolvedArgs(values={**resolved.values, **changed}, sources=resolved.sources,
                            warnings=resolved.warnings)


class AdapterNamesAnotherBase(ReferenceAdapter):
    """#18 — LoRA trained on a fine-tuned checkpoint, but adapter_config.json names the model *that* checkpoint was
    fine-tuned from (the hub id the framework carried along), so ``PeftModel.from_pretrained`` puts the adapter on
    the wrong weights without an error (UniPixel #9 "checkpoints record base_model_path as Qwen instead of UniPixel
    when finetuning from UniPixel-7B"; llm-foundry PR #1407, adapters saved without the right base name)."""

    name = "mutant:adapter-names-another-base"

    def finalize_adapter(self, ctx: RunContext, directory: Path) -> None:
        import json

        super().finalize_adapter(ctx, directory)
        origin_args = Path(ctx.base_dir) / "args.json"
        origin = json.loads(origin_args.read_text(encoding="utf-8")).get("model_dir") if origin_args.is_file() else None
        if origin:
            config_file = Path(directory) / "adapter_config.json"
            config = json.loads(config_file.read_text(encoding="utf-8"))
            config["base_model_name_or_path"] = origin
            config_file.write_text(json.dumps(config, indent=2), encoding="utf-8")


class SavedAlphaDiffersFromTrained(ReferenceAdapter):
    """#18 — the saved adapter_config.json records ``lora_alpha = r`` (scaling 1) whatever alpha the run trained with,
    so a reload applies the LoRA update at another strength (diffusers #6087 "doesn't save and load the LoraConfig,
    resulting wrong lora_alpha during inference"; mlx-examples #622)."""

    name = "mutant:saved-alpha-differs-from-trained"

    def finalize_adapter(self, ctx: RunContext, directory: Path) -> None:
        import json

        super().finalize_adapter(ctx, directory)
        config_file = Path(directory) / "adapter_config.json"
        config = json.loads(config_file.read_text(encoding="utf-8"))
        if config.get("lora_alpha") != config.get("r"):
            config["lora_alpha"] = config.get("r")
            config_file.write_text(json.dumps(config, indent=2), encoding="utf-8")


class RotatesBeforeSaving(ReferenceAdapter):
    """#18 — rotation by ``save_total_limit`` makes room *before* writing the new checkpoint: with a limit of 1 the
    previous checkpoint is deleted, then checkpoint-N is written; a crash inside that save leaves no complete
    checkpoint at all (transformers rotates only after the new checkpoint is written, in ``_save_checkpoint``;
    ms-swift #9780 and #6392 are rotation bugs of the same family)."""

    name = "mutant:rotates-before-saving"

    def removed_before_save(self, ctx: RunContext, policy: CheckpointPolicy, best_step: int | None,
                            step: int) -> list[int]:
        from .layout import list_checkpoints, step_of

        existing = sorted(step_of(c) for c in list_checkpoints(ctx.output_dir))
        return [s for s in policy.to_delete(existing + [step], best_step) if s != step]
