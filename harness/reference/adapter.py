"""The reference adapter: the correct behaviour for every scenario, on transformers + PEFT + TRL.

It sits behind the same :class:`~harness.adapter.FrameworkAdapter` interface as any framework. The
known-bad adapters in :mod:`harness.mutants` subclass it and override exactly one hook each, so
each mutant differs from correct code by the one documented bug.

A run goes through named steps — :meth:`start` (resolve ``latest``, the arguments and the resume
checkpoint into a :class:`RunContext`), :meth:`load` (tokenizer and model: validated directory,
quantisation, LoRA or full), :meth:`build_trainer` (the shared HF wiring of :mod:`harness.hf` plus the
reference's policy callback and atomic saves), training, :meth:`save_final`. Every hook receives the
run's :class:`RunContext`; the hooks are the seams the mutants use: :meth:`resolve_args`,
:meth:`prepare_resume`, :meth:`check_resume_state`, :meth:`load_checkpoint_weights`, :meth:`load_optimizer_state`,
:meth:`load_rng_state`, :meth:`resume_data`, :meth:`accumulation_loss`, :meth:`packing_collator`, :meth:`chat_collator`, :meth:`finalize_chat_format`, :meth:`finalize_embeddings`, :meth:`resized_vocab_modules`,
:meth:`merge_scaling`, :meth:`load_diffusion_lora`, :meth:`apply_trainable_set`, :meth:`expert_lora`,
:meth:`enable_router_aux_loss`, :meth:`router_loss_accumulation`,
:meth:`finalize_checkpoint`, :meth:`finalize_weights`, :meth:`distributed_weights`, :meth:`checkpoint_policy`,
:meth:`rotate_checkpoints` (runs with a ``save_total_limit`` only), :attr:`atomic_saves`, :meth:`effective_args`,
:meth:`finalize_adapter`, :meth:`restore_best`, :meth:`best_checkpoint_path`, :meth:`removed_before_save`,
:meth:`publish_checkpoint`, :meth:`load_best_at_end`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from ..adapter import CAPABILITIES, Adapter, ResolvedArgs, RunResult, RunSpec
from ..spec import in_trainable_set, kl_beta
from ..errors import ConfigError, MissingFileError, QuantizationMismatchError, UnsafeCheckpointError
from ..task import is_chat_dataset, template_turn_end
from . import args as argres
from ..layout import adapter_base, is_adapter_dir, latest_checkpoint, list_checkpoints, read_json, step_of
from .io import atomic_replace_dir, atomic_write_text, check_pickled_state
from .policy import CheckpointPolicy

log = logging.getLogger("harness.reference")

__all__ = ["ReferenceAdapter", "ArgsOverrideWarning", "RunContext"]


@dataclass(frozen=True)
class RunContext:
    """One run of the reference, as every hook sees it."""

    spec: RunSpec  # with resume_from="latest" already replaced by the checkpoint it names
    resolved: ResolvedArgs
    resume: Path | None  # the vetted checkpoint to resume from

    @property
    def values(self) -> Mapping[str, Any]:
        return self.resolved.values

    @property
    def output_dir(self) -> Path:
        return Path(self.spec.output_dir)

    @cached_property  # reads adapter_config.json once per run, not on every access
    def adapter_dir(self) -> Path | None:
        """``model_dir`` when it is a LoRA output (trained on top of its base), else None."""
        return Path(self.spec.model_dir) if is_adapter_dir(Path(self.spec.model_dir)) else None

    @cached_property
    def base_dir(self) -> Path:
        return adapter_base(self.adapter_dir) if self.adapter_dir else Path(self.spec.model_dir)


class ArgsOverrideWarning(UserWarning):
    """A command-line value overrode a different value saved in an args.json."""


class ReferenceAdapter(Adapter):
    """Correct fine-tuning on transformers Trainer + PEFT + TRL + bitsandbytes / optimum-quanto."""

    name = "reference"
    capabilities = CAPABILITIES
    #: checkpoints are staged in a temporary sibling and renamed into place when complete
    atomic_saves = True

    def __init__(self, **options: str):
        unknown = set(options) - {"log_level"}
        if unknown:
            raise TypeError(f"unknown reference adapter options {sorted(unknown)} (known: log_level)")
        if "log_level" in options:
            log.setLevel(options["log_level"].upper())

    def versions(self) -> dict[str, str]:
        from ..runtime import library_versions

        return library_versions("transformers", "peft", "trl", "torch", "bitsandbytes", "optimum-quanto", "diffusers")

    @property
    def known_failures(self) -> Mapping[str, Any]:
        """Upstream bugs of the installed libraries that the reference cannot work around."""
        return known_upstream_failures()

    # ------------------------------------------------------------------ arguments
    def resolve_args(self, cli: Mapping[str, Any], model_dir: Path, resume_dir: Path | None = None) -> ResolvedArgs:
        return argres.resolve(cli, Path(model_dir), Path(resume_dir) if resume_dir else None)

    # ------------------------------------------------------------------ hooks
    def effective_args(self, spec: RunSpec, resolved: ResolvedArgs) -> ResolvedArgs:
        """The values the run trains with: exactly the resolution :meth:`resolve_args` reported (a framework that
        re-reads saved files after resolving trains with something else than it reports)."""
        return resolved

    def checkpoint_policy(self, ctx: RunContext) -> CheckpointPolicy:
        values = ctx.values
        return CheckpointPolicy(max_steps=values["max_steps"], eval_steps=values["eval_steps"],
                                save_steps=values["save_steps"], save_total_limit=values["save_total_limit"],
                                save_on_best=values["save_on_best"],
                                greater_is_better=_greater_is_better(values))

    def rotate_checkpoints(self, ctx: RunContext, policy: CheckpointPolicy, best_step: int | None) -> None:
        ckpts = {step_of(c): c for c in list_checkpoints(ctx.output_dir)}
        for step in policy.to_delete(sorted(ckpts), best_step):
            shutil.rmtree(ckpts[step])
            log.info("rotated out %s (save_total_limit=%d, best=%s)", ckpts[step].name, policy.save_total_limit,
                     best_step)

    def removed_before_save(self, ctx: RunContext, policy: CheckpointPolicy, best_step: int | None,
                            step: int) -> list[int]:
        """The checkpoints deleted *before* checkpoint-<step> is written (runs with a ``save_total_limit``): none.
        Rotation happens only once the new checkpoint is complete (:meth:`rotate_checkpoints`), so a crash inside
        the save always leaves the previous checkpoint."""
        return []

    def restore_best(self, ctx: RunContext, state) -> tuple[int, float] | None:
        """A resumed run's best evaluation so far (step, value), from the trainer state the checkpoint restored: a
        resume continues the whole run's best tracking, so rotation after it still keeps the best of the whole log."""
        if state.best_global_step and state.best_metric is not None:
            return state.best_global_step, state.best_metric
        return None

    def best_checkpoint_path(self, ctx: RunContext, step: int) -> Path:
        """What ``best_model_checkpoint`` records for a new best evaluated (and saved) at ``step``."""
        return ctx.output_dir / f"checkpoint-{step}"

    def load_best_at_end(self, ctx: RunContext, trainer) -> None:
        """``load_best_model_at_end``: before the final save, the model takes the best evaluation's weights. With
        ``save_on_best`` (the default) the best is always on disk: the checkpoint ``best_model_checkpoint`` names,
        read as a resume reads weights. Without an evaluation there is no best, and the last step's model stays."""
        best = trainer.state.best_model_checkpoint
        if best and Path(best).is_dir():
            self.load_checkpoint_weights(ctx, trainer, Path(best), trainer.model)
            log.info("load_best_model_at_end: the final model is %s's (best %s=%s)", Path(best).name,
                     ctx.values["metric"], trainer.state.best_metric)

    def publish_checkpoint(self, ctx: RunContext, staging: Path, final: Path) -> Path:
        """Put a completely written checkpoint (``staging``) in place as ``final`` (atomic saves only): one
        ``os.replace``, so ``final`` is absent or whole at every instant; rotation waits until it is in place."""
        return atomic_replace_dir(staging, final)

    def finalize_checkpoint(self, ctx: RunContext, directory: Path, final: bool) -> None:
        """Complete a saved directory before it is renamed into place: args.json records the run; a full
        model's weights go through :meth:`finalize_weights`."""
        argres.write_args_file(directory, ctx.resolved, {"model_dir": str(ctx.spec.model_dir)})
        if (Path(directory) / "model.safetensors").is_file():
            self.finalize_weights(ctx, Path(directory), final)
        if (Path(directory) / "adapter_config.json").is_file():
            self.finalize_adapter(ctx, Path(directory))
            if (Path(ctx.base_dir) / argres.ARGS_FILE).is_file():
                self.name_finetuned_base(ctx, Path(directory))
        if is_chat_dataset(Path(ctx.spec.dataset_dir) / "train.jsonl"):
            self.finalize_chat_format(ctx, Path(directory))
        config = read_json(Path(directory) / "config.json") if (Path(directory) / "config.json").is_file() else {}
        if ctx.values.get("new_special_tokens") or config.get("tie_word_embeddings"):
            self.finalize_embeddings(ctx, Path(directory))

    def finalize_adapter(self, ctx: RunContext, directory: Path) -> None:
        """Complete a LoRA save: PEFT wrote adapter_config.json from the trained model's own LoRA config (rank,
        ``lora_alpha``, target modules) and the base it was put on; the reference keeps it as written."""

    def name_finetuned_base(self, ctx: RunContext, directory: Path) -> None:
        """LoRA on a fine-tuned output (its directory holds args.json: seed 003's arrangement; only such runs reach
        this): adapter_config.json names that directory, as PEFT wrote it, not the model it was fine-tuned from."""

    def finalize_chat_format(self, ctx: RunContext, directory: Path) -> None:
        """Chat runs only (``messages`` / ``prompt``+``completion`` data reach this): every save carries the format the
        run trained in. The tokenizer the run encoded with (chat template included) is what Trainer saved; a full
        save's ``generation_config.json`` must stop at the template's turn end, so the turn-end token is added to its
        ``eos_token_id`` when missing (open-r1 PR #663: a saved model whose generation config does not stop at the turn end)."""
        from transformers import AutoTokenizer, GenerationConfig

        from ..layout import TOKENIZER_FILES

        if not all((directory / name).is_file() for name in TOKENIZER_FILES):
            raise MissingFileError(directory, TOKENIZER_FILES[0], "a chat run saves the tokenizer it trained with")
        config_file = directory / "generation_config.json"
        if not config_file.is_file():
            return  # an adapter save: served with its base's generation config
        tok = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
        end = template_turn_end(tok)
        config = GenerationConfig.from_pretrained(str(directory))
        eos = config.eos_token_id if isinstance(config.eos_token_id, list) else [config.eos_token_id]
        if end is not None and end not in eos:
            config.eos_token_id = [e for e in eos if e is not None] + [end]
            config.save_pretrained(str(directory))

    def resized_vocab_modules(self, ctx: RunContext, model) -> list[str]:
        """LoRA on a resized vocabulary (``new_special_tokens``; only those runs reach this): the input embeddings and
        the output head are trained whole and saved in the adapter (PEFT ``modules_to_save``), so the added tokens'
        rows learn and an adapter reloads onto base + resize (unsloth #9326, peft PR #1147). Returns their module
        names (the head only when it is not tied to the embeddings)."""
        names = [model.get_input_embeddings()]
        if not model.config.get_text_config().tie_word_embeddings:
            names.append(model.get_output_embeddings())
        by_module = {id(m): n.rsplit(".", 1)[-1] for n, m in model.named_modules()}
        return [by_module[id(m)] for m in names]

    def finalize_embeddings(self, ctx: RunContext, directory: Path) -> None:
        """Runs with tied embeddings or a resized vocabulary only: a full save's ``config.json`` tie flag must agree
        with its tensors (tied: no separate ``lm_head.weight``, or one equal to the embeddings; untied: one of its
        own), and its embeddings must hold a row per token of the saved tokenizer. transformers' ``save_pretrained``
        writes it so; a save that disagrees is refused rather than left for a loader to re-tie or re-initialise."""
        from ..errors import CheckpointError
        from ..layout import weight_files
        from safetensors import safe_open

        if not weight_files(directory) or not (directory / "config.json").is_file():
            return  # an adapter save: modules_to_save carries the rows (resized_vocab_modules)
        tensors: dict[str, Any] = {}
        for file in weight_files(directory):
            if not file.is_file():
                continue  # (only a broken save lacks a shard its index lists; the oracles judge that)
            with safe_open(str(file), "pt") as fh:
                tensors.update({k: fh.get_tensor(k) for k in fh.keys() if "embed_tokens" in k or "lm_head" in k})
        config = read_json(directory / "config.json")
        head = tensors.get("lm_head.weight")
        if not config.get("tie_word_embeddings", False) and head is None:
            raise CheckpointError(directory, "config.json says the embeddings are not tied but no lm_head.weight was "
                                             "saved", "config.json")

    def finalize_weights(self, ctx: RunContext, directory: Path, final: bool) -> None:
        """A full model's weights (only saves that hold ``model.safetensors`` reach this) are complete as
        ``save_model`` wrote them; in a multi-process run :meth:`distributed_weights` has the last word."""
        from .distributed import world_size

        if world_size() > 1:
            self.distributed_weights(ctx, directory)

    def distributed_weights(self, ctx: RunContext, directory: Path) -> None:
        """Multi-process runs only: FSDP2's ``save_model`` gathered the full state dict on rank 0, so the
        file already holds the consolidated model. (Separate seams keep each mutant's reach exact: the
        detection matrix runs a mutant only where the reference touches what it overrides.)"""

    def prepare_resume(self, ctx: RunContext, checkpoint: Path) -> Path:
        """Vet a checkpoint before resuming from it: trainer_state.json parses and has a step, and
        pickled state is loadable weights-only (anything else is refused, never executed)."""
        if not Path(checkpoint).is_dir():
            raise MissingFileError(Path(checkpoint).parent, Path(checkpoint).name, "resume checkpoint does not exist")
        state = read_json(Path(checkpoint) / "trainer_state.json")
        if type(state.get("global_step")) is not int or state["global_step"] < 0:
            raise ConfigError(Path(checkpoint) / "trainer_state.json", "global_step", "a non-negative integer",
                              state.get("global_step"))
        if not isinstance(state.get("log_history", []), list):
            raise ConfigError(Path(checkpoint) / "trainer_state.json", "log_history", "a list",
                              state.get("log_history"))
        try:
            check_pickled_state(checkpoint)
        except UnsafeCheckpointError as exc:
            self.unsafe_pickled_state(ctx, checkpoint, exc)
        return checkpoint

    def unsafe_pickled_state(self, ctx: RunContext, checkpoint: Path, error: UnsafeCheckpointError) -> None:
        """A pickled state file of the checkpoint does not load weights-only (only hostile or foreign checkpoints
        reach this): refuse the resume, naming the file. (Its own seam keeps a mutant that unpickles anyway off every
        benign resume in the detection matrix: a benign file loads the same either way.)"""
        raise error

    def check_resume_state(self, ctx: RunContext, checkpoint: Path) -> None:
        """A resume restores the whole training state or refuses: the optimizer, the LR schedule and the
        RNG (dropout, sampling) must be in the checkpoint. transformers' Trainer silently starts a fresh
        optimizer and scheduler when they are absent (a ``save_only_model`` checkpoint); the reference
        names the missing file instead (issue 19, transformers #27710/#24656)."""
        checkpoint = Path(checkpoint)
        if ctx.values["method"] == "diffusion":
            required = ["optimizer.pt"]
        else:
            required = ["optimizer.pt", "scheduler.pt"]
            if not any(checkpoint.glob("rng_state*.pth")):
                required.append("rng_state.pth")
        for name in required:
            if not (checkpoint / name).is_file():
                raise MissingFileError(checkpoint, name, "the checkpoint lacks training state: resuming would "
                                                         "silently restart it (fresh optimizer, LR schedule or RNG); "
                                                         "resume from a checkpoint saved without save_only_model, or "
                                                         "start a new run from its weights")

    def load_optimizer_state(self, ctx: RunContext, trainer, checkpoint: Path) -> None:
        """Resume: optimizer and LR scheduler state, as Trainer loads them (present: check_resume_state)."""
        trainer._load_optimizer_and_scheduler_default(str(checkpoint))

    def load_rng_state(self, ctx: RunContext, trainer, checkpoint: Path) -> None:
        """Resume: the Python/NumPy/torch RNG states saved with the checkpoint (dropout masks, sampling)."""
        trainer._load_rng_state_default(str(checkpoint))

    def resume_data(self, ctx: RunContext, trainer) -> None:
        """Resume: the data position. Trainer replays the resumed epoch's own shuffle (``set_epoch``) and
        skips the batches already consumed (not ``ignore_data_skip``); nothing to change here — the seam
        exists so a mutant can put an upstream data-order bug back."""

    def accumulation_loss(self, ctx: RunContext, trainer) -> None:
        """Gradient accumulation (only runs with ``gradient_accumulation_steps`` > 1 reach this): the loss of an
        accumulation window is the sum over its tokens divided by the window's token count (Trainer passes
        ``num_items_in_batch`` to the model: transformers PR #34191), so k micro-batches equal one batch k
        times larger. Nothing to change; the seam lets a mutant put the pre-4.46 mean of means back."""

    def incomplete_window(self, ctx: RunContext, trainer) -> None:
        """Accumulation over an epoch that ends in an incomplete window (only such runs reach this): Trainer trains
        it as one more optimizer step over the micro-batches left (``num_update_steps_per_epoch`` rounds up) and
        divides its loss by that window's own token count. Nothing to change; the seam lets a mutant drop it."""

    def load_checkpoint_weights(self, ctx: RunContext, trainer, checkpoint: Path, model) -> None:
        """Resume: LoRA tensors by name (works on every quantised base), full weights as Trainer does."""
        from .trainer import load_lora_weights_by_name

        if _is_peft(model):
            if ctx.values["quantization"] is not None:
                n = self.load_lora_on_quantized_base(ctx, model, checkpoint)
            else:
                n = load_lora_weights_by_name(model, checkpoint)
            log.info("resumed %d LoRA tensors from %s", n, checkpoint)
        else:
            trainer._load_from_checkpoint_default(str(checkpoint), model)
        if getattr(trainer, "ref_model", None) is not None:  # DPO, GRPO with beta > 0
            self.resumed_reference(ctx, trainer, model)

    def resumed_reference(self, ctx: RunContext, trainer, model) -> None:
        """A resumed DPO (or GRPO with a KL term) run's reference, after the checkpoint's weights went into the policy:
        left as it is, the copy of the starting policy :meth:`reference_model` made before (a resume never re-takes it). (Its own seam keeps
        a mutant of it off every other resume in the detection matrix.)"""

    def load_lora_on_quantized_base(self, ctx: RunContext, model, checkpoint: Path) -> int:
        """Resume on a quantised base (only quantised LoRA resumes reach this: seed 002's failure point): the LoRA
        tensors by name, as on any base; returns how many. (Its own seam keeps a mutant of it off every other
        resume in the detection matrix.)"""
        from .trainer import load_lora_weights_by_name

        return load_lora_weights_by_name(model, checkpoint)

    def load_diffusion_lora(self, ctx: RunContext, checkpoint: Path, unet) -> None:
        """Diffusion resume: SimpleTuner's call chain (diffusers + PEFT), then every LoRA tensor checked."""
        from ..diffusion import load_lora_like_simpletuner
        from .diffusion import check_lora_loaded

        result = load_lora_like_simpletuner(unet, checkpoint)
        unexpected = getattr(result, "unexpected_keys", None)
        if unexpected:
            from ..errors import CheckpointError

            raise CheckpointError(checkpoint, f"{len(unexpected)} saved LoRA tensors matched no parameter, e.g. "
                                              f"{unexpected[0]}", "pytorch_lora_weights.safetensors")
        n = check_lora_loaded(unet, checkpoint)
        log.info("resumed %d diffusion LoRA tensors from %s", n, checkpoint)

    def packing_collator(self, ctx: RunContext, model):
        """Packing (only ``packing=True`` runs reach this): transformers' ``DataCollatorWithFlattening``, positions
        restarting per sample, and the model's KV cache off: a forward that builds a cache (the config's
        ``use_cache``, true by default) skips transformers' packed-sequence mask, so samples attend across their
        boundaries (tiny Llama, a direct training-mode forward of 3 packed samples: loss 3.94168 against 3.93360
        run alone; Trainer's own step measured unaffected on transformers 5.23, the switch is kept for the rest)."""
        from .. import hf

        model.config.use_cache = False
        return hf.packing_collator()

    def chat_collator(self, ctx: RunContext, tok):
        """Chat data (only runs on ``messages`` / ``prompt``+``completion`` rows reach this): transformers'
        ``DataCollatorForSeq2Seq`` (:func:`harness.hf.chat_collator`): padding on the tokenizer's side with its pad
        token, labels padded with -100 by position. A pad token equal to the EOS (trl #1623) then masks nothing real."""
        from .. import hf

        return hf.chat_collator(tok)

    def training_batches(self, spec: RunSpec) -> list[Mapping[str, Any]]:
        """One epoch of the batches a run of ``spec`` trains on: the run's own start, load and trainer (its dataset,
        collator and sampler), the train dataloader read once; nothing is trained or saved."""
        from .. import hf
        from ..runtime import cpu_threads

        with cpu_threads(spec.device):
            ctx = self.start(spec)
            model, tok = self.load(ctx)
            return hf.epoch_batches(self.build_trainer(ctx, model, tok).get_train_dataloader())

    # ------------------------------------------------------------------ merging
    def merge(self, adapter_dir: Path, output_dir: Path) -> Path:
        """PEFT ``merge_and_unload`` into the float32 base the adapter names (:func:`harness.hf.merge_lora`),
        with the LoRA scale of :meth:`merge_scaling`. A LoRA trained on a quantised base is refused: merging
        into the dequantised or the original weights gives a different model than the one trained."""
        from .. import hf

        saved = Path(adapter_dir) / argres.ARGS_FILE
        quant = read_json(saved).get("quantization") if saved.is_file() else None
        if quant is not None:
            raise ConfigError(saved, "quantization", "an unquantised training base to merge into (merging a LoRA "
                                                     "trained on a quantised base is not faithful)", quant)
        return hf.merge_lora(adapter_dir, output_dir, scaling=self.merge_scaling(Path(adapter_dir)))

    def merge_scaling(self, adapter_dir: Path) -> float | None:
        """The LoRA scale used to merge: None means PEFT's own ``lora_alpha / r`` from adapter_config.json."""
        return None

    # ------------------------------------------------------------------ training
    def train(self, spec: RunSpec) -> RunResult:
        from . import distributed

        if spec.world_size > 1 and not distributed.is_worker():
            if spec.train_type != "full" or spec.quantization or (spec.method or "sft") != "sft":
                raise ConfigError(None, "world_size", "full-parameter SFT without quantisation for world_size > 1",
                                  spec.world_size)
            return distributed.launch(self, spec)
        from ..runtime import cpu_threads

        with cpu_threads(spec.device):
            return self._train(spec)

    def _train(self, spec: RunSpec) -> RunResult:
        ctx = self.start(spec)
        if ctx.values["method"] == "diffusion":
            from . import diffusion

            return diffusion.train(self, ctx)
        model, tok = self.load(ctx)
        trainer = self.build_trainer(ctx, model, tok)
        trainer.train(resume_from_checkpoint=str(ctx.resume) if ctx.resume else None)
        if ctx.values["load_best_model_at_end"]:
            self.load_best_at_end(ctx, trainer)
        final = self.save_final(ctx, trainer)
        return RunResult(output_dir=ctx.output_dir, checkpoints=tuple(list_checkpoints(ctx.output_dir)),
                         final_dir=final, log_history=tuple(trainer.state.log_history), resolved=ctx.resolved)

    # ------------------------------------------------------------------ steps
    def resolve_latest(self, output_dir: Path) -> Path | None:
        """The checkpoint ``resume_from="latest"`` names: the highest step number (checkpoint-10 after checkpoint-9,
        as transformers' ``get_last_checkpoint`` compares them), None when there is none. A function of the files."""
        return latest_checkpoint(output_dir)

    def start(self, spec: RunSpec) -> RunContext:
        """Clear stale staging dirs, resolve ``resume_from="latest"`` and the arguments (logging each
        non-default value with its source and warning on every CLI override), vet the resume checkpoint."""
        from .distributed import is_main_process

        output_dir = Path(spec.output_dir)
        for stale in output_dir.glob(".staging-*") if output_dir.is_dir() and is_main_process() else ():
            shutil.rmtree(stale, ignore_errors=True)  # left by a killed save; never a checkpoint
        if spec.resume_from == "latest":
            latest = self.resolve_latest(output_dir)
            if latest is None:
                raise MissingFileError(output_dir, "checkpoint-*", "resume_from='latest' but no checkpoint exists")
            spec = spec.replace(resume_from=latest)
        resolved = self.resolve_args(spec.cli_args(), spec.model_dir, spec.resume_from)
        for line in resolved.describe():
            log.info("argument %s", line)
        for message in resolved.warnings:
            log.warning(message)
            warnings.warn(message, ArgsOverrideWarning, stacklevel=3)
        resolved = self.effective_args(spec, resolved)
        ctx = RunContext(spec=spec, resolved=resolved, resume=None)
        if spec.resume_from is None:
            return ctx
        resume = self.prepare_resume(ctx, Path(spec.resume_from))
        if resume is None:  # (only a mutant's prepare_resume declines: the run then starts from step 0)
            return ctx
        self.check_resume_state(ctx, Path(spec.resume_from))
        self._check_resume_quantization(resume, resolved.values)
        return RunContext(spec=spec, resolved=resolved, resume=resume)

    def load(self, ctx: RunContext):
        """(model, tokenizer): the base validated and loaded (quantised as asked), a LoRA output's adapter
        put on it (merged for full training), fresh LoRA for a LoRA run, every parameter trainable for a full one."""
        import torch
        from transformers import set_seed

        from ..hf import lora_config
        from .trainer import load_model, load_tokenizer

        values, spec = ctx.values, ctx.spec
        if values["trainable_parameters"] and values["train_type"] != "full":
            raise ConfigError(ctx.resolved.sources["trainable_parameters"].path, "trainable_parameters",
                              "train_type 'full' (a LoRA run trains its adapters; its target_modules choose them)",
                              list(values["trainable_parameters"]))
        if values["quantization"] is not None and values["train_type"] == "full":
            raise ConfigError(None, "train_type", "'lora' on a quantised base (full training needs an unquantised base)",
                              "full")
        if spec.device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("RunSpec.device='cuda' but CUDA is not available")
        set_seed(values["seed"])
        model_dir = Path(spec.model_dir)
        tok = load_tokenizer(model_dir if (model_dir / "tokenizer.json").is_file() else ctx.base_dir)
        model = load_model(ctx.base_dir, values["quantization"], spec.device)
        if values["router_aux_loss_coef"]:
            self.enable_router_aux_loss(ctx, model, float(values["router_aux_loss_coef"]))
        new_tokens = list(values.get("new_special_tokens") or ())
        if new_tokens:  # the vocabulary grows before any adapter: a LoRA output of a resized run needs the rows
            tok.add_tokens(new_tokens, special_tokens=True)
            model.resize_token_embeddings(len(tok))
        if ctx.adapter_dir is not None:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, str(ctx.adapter_dir), is_trainable=values["train_type"] == "lora")
            if values["train_type"] == "full":
                model = model.merge_and_unload()
            else:
                self.continue_adapter(ctx, model)
        if values["train_type"] == "lora" and not _is_peft(model):
            from peft import get_peft_model

            torch.manual_seed(values["seed"])
            config = lora_config(values)
            if new_tokens:
                config.modules_to_save = self.resized_vocab_modules(ctx, model)
            if fused_experts(model):
                config = self.expert_lora(ctx, model, config)
            model = get_peft_model(model, config)
        elif values["train_type"] == "full":
            for p in model.parameters():
                p.requires_grad_(True)
            if values["trainable_parameters"]:
                self.apply_trainable_set(ctx, model)
        if _is_peft(model):
            # the README model card PEFT renders on every save (a jinja compile) is not part of a checkpoint
            model.create_or_update_model_card = lambda output_dir: None
        return model, tok

    def continue_adapter(self, ctx: RunContext, model) -> None:
        """A LoRA run on a LoRA output continues that adapter as loaded (trainable, its weights the output's): nothing
        to do; the seam where a framework re-initialises it."""

    def enable_router_aux_loss(self, ctx: RunContext, model, coef: float) -> None:
        """``router_aux_loss_coef`` > 0 (only such runs reach this): the router's load-balancing loss joins the training
        loss with that weight, as the model's own forward adds it (``output_router_logits`` on; transformers' MoE
        models read the weight from ``router_aux_loss_coef``). A model without a router is refused."""
        if not hasattr(model, "router_aux_loss_coef"):
            raise ConfigError(ctx.resolved.sources["router_aux_loss_coef"].path, "router_aux_loss_coef",
                              "a mixture-of-experts model (one whose forward adds a router loss)", coef)
        model.config.output_router_logits = True
        model.config.router_aux_loss_coef = model.router_aux_loss_coef = coef

    def router_loss_accumulation(self, ctx: RunContext, trainer) -> None:
        """Gradient accumulation or several processes with the router's load-balancing loss (only such runs reach
        this): the optimizer step's loss is its tokens' cross-entropy (:meth:`accumulation_loss`) plus the
        load-balancing term *once*, the mean of its micro-batches' and its ranks' terms, as Megatron scales it. Trainer
        leaves each micro-batch's term at full weight when the model takes ``num_items_in_batch``, so k micro-batches
        count it k times (NVIDIA-NeMo/Automodel PR #3359: "not normalised across GA micro-batches"); and under
        ``average_tokens_across_devices`` it multiplies the whole loss by the world size W (right for the cross-entropy,
        a share of the global token count; wrong for the term: huggingface/transformers #48690, measured here: 2
        processes log 4.159773 at step 1 against 4.139629, the term twice). Each training micro-batch's term is weighted
        1 / k after that multiplication here."""
        k, coef = ctx.values["gradient_accumulation_steps"], float(ctx.values["router_aux_loss_coef"])
        compute = trainer.compute_loss

        def compute_loss(model, inputs, return_outputs=False, num_items_in_batch=None):
            loss, outputs = compute(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
            aux = getattr(outputs, "aux_loss", None)
            if model.training and aux is not None:
                scaled = (trainer.args.average_tokens_across_devices and num_items_in_batch is not None
                          and (trainer.model_accepts_loss_kwargs or trainer.compute_loss_func))
                world = trainer.accelerator.num_processes if scaled else 1  # Trainer's multiplier (no TP here)
                loss = loss - coef * aux.to(loss.device) * (world - 1 / k)
            return (loss, outputs) if return_outputs else loss

        trainer.compute_loss = compute_loss

    def expert_lora(self, ctx: RunContext, model, config):
        """A fresh LoRA on a mixture of experts whose experts are fused 3-D parameters (transformers 5's MoE layout; only
        such runs reach this): the PEFT config as resolved. On this stack PEFT's ``all-linear`` adds the fused experts
        and the router as ``target_parameters`` itself (huggingface/peft #3009 is what happens where it does not: the
        experts, not ``nn.Linear`` modules, get no adapter); an explicit ``target_modules`` list is kept as typed."""
        return config

    def apply_trainable_set(self, ctx: RunContext, model) -> None:
        """Full runs with ``trainable_parameters`` only: every parameter whose name a pattern matches whole
        (:func:`harness.spec.in_trainable_set`) keeps ``requires_grad``, every other one is frozen: it gets no gradient,
        Trainer's optimizer leaves it out (it builds its groups from the parameters that require grad), every save
        writes it as the base had it, and a resume freezes the same set before the optimizer state is loaded into it.
        A pattern that names no parameter is refused: a typo would otherwise freeze the whole model but what it meant."""
        names = [name for name, _ in model.named_parameters()]
        patterns = list(ctx.values["trainable_parameters"])
        unused = [p for p in patterns if not any(in_trainable_set(n, [p]) for n in names)]
        if unused:
            raise ConfigError(ctx.resolved.sources["trainable_parameters"].path, "trainable_parameters",
                              f"patterns that each match a whole parameter name (e.g. {names[0]!r})", unused)
        for name, param in model.named_parameters():
            param.requires_grad_(in_trainable_set(name, patterns))
        log.info("trainable set: %d of %d parameters (%s)", sum(p.requires_grad for p in model.parameters()),
                 len(names), ", ".join(patterns))

    def build_trainer(self, ctx: RunContext, model, tok):
        """The shared HF wiring (:func:`harness.hf.build_trainer`) with the reference's fixes: its checkpoint
        policy (save on best, rotation that keeps the best and the latest) instead of Trainer's
        ``save_total_limit``, a misalignment warning up front, atomic saves and resume hooks."""
        from .. import hf
        from . import distributed
        from .trainer import PolicyCallback, trainer_class

        ctx.output_dir.mkdir(parents=True, exist_ok=True)
        policy = self.checkpoint_policy(ctx)
        if ctx.values["eval_steps"] and (msg := policy.misalignment_warning()):
            log.warning(msg)
            warnings.warn(msg, UserWarning, stacklevel=3)
        targs = hf.training_arguments(ctx.values, ctx.output_dir, ctx.spec.device)
        if targs.pop("gradient_checkpointing", False):  # (enabled here, where the reference says how)
            self.gradient_checkpointing(ctx, model, targs.pop("gradient_checkpointing_kwargs")["use_reentrant"])
        if distributed.is_worker():
            targs.update(distributed.fsdp_arguments())
        collator = self.packing_collator(ctx, model) if ctx.values["packing"] else None
        if collator is None and is_chat_dataset(Path(ctx.spec.dataset_dir) / "train.jsonl"):
            collator = self.chat_collator(ctx, tok)
        kl = ctx.values["method"] in ("dpo", "kto") or (ctx.values["method"] == "grpo" and kl_beta(ctx.values) > 0)
        ref_model = self.reference_model(ctx, model) if kl else None  # before TRL adds its own "ref" adapter
        trainer = hf.build_trainer(ctx.values, model, tok, targs, ctx.spec.dataset_dir,
                                   callbacks=[PolicyCallback(policy, ctx.values["metric"], self, ctx)],
                                   wrap=trainer_class, collator=collator, ref_model=ref_model)
        trainer.ft_adapter, trainer.ft_context = self, ctx
        if ctx.values["eval_steps"] and getattr(trainer, "eval_dataset", None) is not None:
            trainer.eval_dataset = self.evaluation_dataset(ctx, trainer)
        if ctx.values["gradient_accumulation_steps"] > 1:
            self.accumulation_loss(ctx, trainer)
            micro_batches = -(-len(trainer.train_dataset) // ctx.values["per_device_train_batch_size"])
            if micro_batches % ctx.values["gradient_accumulation_steps"]:
                self.incomplete_window(ctx, trainer)
        if ctx.values["router_aux_loss_coef"] and (ctx.values["gradient_accumulation_steps"] > 1
                                                   or distributed.world_size() > 1):
            self.router_loss_accumulation(ctx, trainer)
        return trainer

    def gradient_checkpointing(self, ctx: RunContext, model, reentrant: bool) -> None:
        """Activation checkpointing of every decoder layer (``gradient_checkpointing``: "reentrant" or "non-reentrant",
        torch.utils.checkpoint's ``use_reentrant``). A reentrant checkpoint passes gradients only to inputs that require
        them, so under LoRA (frozen embeddings) the embeddings' output is made to require grad
        (``enable_input_require_grads``, as PEFT's ``prepare_model_for_kbit_training`` does); else no layer's adapter
        would get a gradient."""
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
        if reentrant:
            model.enable_input_require_grads()

    def reference_model(self, ctx: RunContext, model):
        """DPO's and GRPO's (``beta`` > 0) reference: a frozen copy of the policy the run starts from (the base plus the
        pre-trained adapter, the full checkpoint, or the base plus the fresh LoRA), in the policy's dtype, taken before a
        resumed run loads its checkpoint's weights into the policy, so the reference stays the original start. Not TRL's default: a merged
        model's reference would be reloaded from the path its config names (the bare base)."""
        import copy

        ref = copy.deepcopy(model)
        if _is_peft(ref):  # the transformers model inside, its LoRA layers in place: TRL's forward patches need it
            ref = ref.get_base_model()
        return ref.eval().requires_grad_(False)

    def evaluation_dataset(self, ctx: RunContext, trainer):
        """What a run's periodic evaluations score (only runs with ``eval_steps`` reach this): eval.jsonl's rows, as
        :func:`harness.hf.build_trainer` loaded them."""
        return trainer.eval_dataset

    # ------------------------------------------------------------------ saving
    def save_final(self, ctx: RunContext, trainer) -> Path:
        """Final model, tokenizer, args.json and trainer_state.json into ``output_dir``, file by file atomically."""
        from .distributed import barrier, is_main_process

        output_dir = ctx.output_dir
        staging = output_dir / ".staging-final"
        if is_main_process():
            shutil.rmtree(staging, ignore_errors=True)
        barrier()
        try:
            trainer.save_model(str(staging))  # collective under FSDP: every rank takes part
            barrier()
            if is_main_process():
                self.finalize_checkpoint(ctx, staging, final=True)
                for item in staging.iterdir():
                    os.replace(item, output_dir / item.name)
        finally:
            if is_main_process():
                shutil.rmtree(staging, ignore_errors=True)
        if not is_main_process():
            return output_dir
        import dataclasses

        state = json.dumps(dataclasses.asdict(trainer.state), indent=2, sort_keys=True) + "\n"
        atomic_write_text(output_dir / "trainer_state.json", state)
        return output_dir

    def _check_resume_quantization(self, checkpoint: Path, values: Mapping[str, Any]) -> None:
        args_file = checkpoint / argres.ARGS_FILE
        if not args_file.is_file():
            return
        saved = read_json(args_file).get("quantization")
        if saved != values["quantization"] and not values["allow_quantization_change"]:
            raise QuantizationMismatchError(checkpoint, saved, values["quantization"])


QUANTO_9108 = ("diffusers #9108 / SimpleTuner #659: optimum-quanto < 0.2.5 raises KeyError '<name>.weight._data' "
               "when PEFT loads a LoRA state dict into a quanto-quantised model")


def known_upstream_failures() -> dict[str, Any]:
    """Scenario id prefix -> (reason, exception) for bugs in the installed dependency versions."""
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, Any] = {}
    try:
        quanto = tuple(int(p) for p in version("optimum-quanto").split(".")[:3])
    except (PackageNotFoundError, ValueError):
        return out
    if quanto < (0, 2, 5):
        for device in ("cpu", "cuda"):
            for test in ("test_resume_matches_uninterrupted", "test_resume_reads_the_checkpoint"):
                out[f"test_diffusion_lora_resume.py::{test}[{device}-quanto-int8"] = (QUANTO_9108, KeyError)
    return out


def fused_experts(model) -> list[str]:
    """The names of ``model``'s fused expert parameters (3-D tensors under an ``experts`` module: transformers 5's
    mixture-of-experts layout, e.g. ``model.layers.0.mlp.experts.gate_up_proj``); empty for a dense model."""
    return [name for name, param in model.named_parameters() if ".experts." in name and param.dim() == 3]


def _is_peft(model) -> bool:
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover
        return False
    return isinstance(model, PeftModel)


def _greater_is_better(values: Mapping[str, Any]) -> bool:
    if values.get("greater_is_better") is not None:
        return bool(values["greater_is_better"])
    return not str(values["metric"]).endswith("loss")
