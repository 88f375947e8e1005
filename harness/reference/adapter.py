"""The reference adapter: the correct behaviour for every scenario, on transformers + PEFT + TRL.

It sits behind the same :class:`~harness.adapter.FrameworkAdapter` interface as any framework. The
known-bad adapters in :mod:`harness.mutants` subclass it and override exactly one hook each, so
each mutant differs from correct code by the one documented bug.

Hooks (the seams the mutants use): :meth:`resolve_args`, :meth:`load_checkpoint_weights`,
:meth:`load_diffusion_lora`,
:meth:`prepare_resume`, :meth:`finalize_checkpoint`, :meth:`rotate_checkpoints`,
:meth:`checkpoint_policy`, :attr:`atomic_saves`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..adapter import CAPABILITIES, Adapter, ResolvedArgs, RunResult, RunSpec
from ..errors import ConfigError, MissingFileError, QuantizationMismatchError
from . import args as argres
from ..layout import latest_checkpoint, list_checkpoints, read_json, step_of
from .io import atomic_write_text, check_pickled_state
from .policy import CheckpointPolicy

log = logging.getLogger("harness.reference")

__all__ = ["ReferenceAdapter", "ArgsOverrideWarning"]


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
    def checkpoint_policy(self, values: Mapping[str, Any]) -> CheckpointPolicy:
        return CheckpointPolicy(max_steps=values["max_steps"], eval_steps=values["eval_steps"],
                                save_steps=values["save_steps"], save_total_limit=values["save_total_limit"],
                                save_on_best=values["save_on_best"],
                                greater_is_better=_greater_is_better(values))

    def rotate_checkpoints(self, output_dir: Path, policy: CheckpointPolicy, best_step: int | None) -> None:
        ckpts = {step_of(c): c for c in list_checkpoints(output_dir)}
        for step in policy.to_delete(sorted(ckpts), best_step):
            shutil.rmtree(ckpts[step])
            log.info("rotated out %s (save_total_limit=%d, best=%s)", ckpts[step].name, policy.save_total_limit,
                     best_step)

    def finalize_checkpoint(self, directory: Path, final: bool) -> None:
        """Complete a saved directory before it is renamed into place: args.json records the run."""
        argres.write_args_file(directory, self._resolved, {"model_dir": str(self._spec.model_dir)})

    def prepare_resume(self, checkpoint: Path) -> Path:
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
        check_pickled_state(checkpoint)
        return checkpoint

    def load_checkpoint_weights(self, trainer, checkpoint: Path, model) -> None:
        """Resume: LoRA tensors by name (works on every quantised base), full weights as Trainer does."""
        from .trainer import load_lora_weights_by_name

        if _is_peft(model):
            n = load_lora_weights_by_name(model, checkpoint)
            log.info("resumed %d LoRA tensors from %s", n, checkpoint)
        else:
            trainer._load_from_checkpoint_default(str(checkpoint), model)

    def load_diffusion_lora(self, checkpoint: Path, unet) -> None:
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
        from ..task import collate, counting_reward, lora_config, sft_datasets
        from .trainer import PolicyCallback, load_model, load_tokenizer, trainer_class

        output_dir = Path(spec.output_dir)
        from .distributed import is_main_process

        for stale in output_dir.glob(".staging-*") if output_dir.is_dir() and is_main_process() else ():
            shutil.rmtree(stale, ignore_errors=True)  # left by a killed save; never a checkpoint
        if spec.resume_from == "latest":
            latest = latest_checkpoint(output_dir)
            if latest is None:
                raise MissingFileError(output_dir, "checkpoint-*", "resume_from='latest' but no checkpoint exists")
            spec = spec.replace(resume_from=latest)
        resolved = self.resolve_args(spec.cli_args(), spec.model_dir, spec.resume_from)
        values = dict(resolved.values)
        self._resolved, self._spec = resolved, spec
        for line in resolved.describe():
            log.info("argument %s", line)
        for message in resolved.warnings:
            log.warning(message)
            warnings.warn(message, ArgsOverrideWarning, stacklevel=2)

        resume = None
        if spec.resume_from is not None:
            resume = self.prepare_resume(Path(spec.resume_from))
            self._check_resume_quantization(resume, values)

        if values["method"] == "diffusion":
            from . import diffusion

            return diffusion.train(self, spec, values, resume)

        import torch
        from transformers import set_seed

        model_dir = Path(spec.model_dir)
        adapter_dir = model_dir if argres.is_adapter_dir(model_dir) else None
        base_dir = argres.adapter_base(adapter_dir) if adapter_dir else model_dir
        quant = values["quantization"]
        if quant is not None and values["train_type"] == "full":
            raise ConfigError(None, "train_type", "'lora' on a quantised base (full training needs an unquantised base)",
                              "full")
        if spec.device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("RunSpec.device='cuda' but CUDA is not available")

        set_seed(values["seed"])
        tok = load_tokenizer(model_dir if (model_dir / "tokenizer.json").is_file() else base_dir)
        model = load_model(base_dir, quant, spec.device)
        if adapter_dir is not None:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=values["train_type"] == "lora")
            if values["train_type"] == "full":
                model = model.merge_and_unload()
        if values["train_type"] == "lora" and not _is_peft(model):
            from peft import get_peft_model

            torch.manual_seed(values["seed"])
            model = get_peft_model(model, lora_config(values))
        elif values["train_type"] == "full":
            for p in model.parameters():
                p.requires_grad_(True)

        if _is_peft(model):
            # the README model card PEFT renders on every save (a jinja compile) is not part of a checkpoint
            model.create_or_update_model_card = lambda output_dir: None
        output_dir.mkdir(parents=True, exist_ok=True)
        policy = self.checkpoint_policy(values)
        if values["eval_steps"] and (msg := policy.misalignment_warning()):
            log.warning(msg)
            warnings.warn(msg, UserWarning, stacklevel=2)
        use_bf16 = spec.device == "cuda" and torch.cuda.is_bf16_supported()
        common = dict(
            output_dir=str(output_dir), max_steps=values["max_steps"], learning_rate=values["learning_rate"],
            per_device_train_batch_size=values["per_device_train_batch_size"],
            gradient_accumulation_steps=values["gradient_accumulation_steps"],
            lr_scheduler_type=values["lr_scheduler_type"], logging_steps=1, report_to="none",
            use_cpu=spec.device == "cpu", seed=values["seed"], data_seed=values["seed"], bf16=use_bf16,
            save_strategy="steps" if values["save_steps"] else "no", save_steps=values["save_steps"] or 500,
            save_total_limit=None, disable_tqdm=True, dataloader_num_workers=0,
        )
        from . import distributed

        if distributed.is_worker():
            common.update(distributed.fsdp_arguments())
        callbacks = [PolicyCallback(policy, values["metric"], output_dir, self)]
        if values["method"] == "grpo":
            from datasets import Dataset
            from trl import GRPOConfig, GRPOTrainer

            from ..models import read_jsonl

            prompts = read_jsonl(Path(spec.dataset_dir) / "prompts.jsonl")
            cfg = GRPOConfig(**common, num_generations=values["num_generations"],
                             max_completion_length=values["max_completion_length"], beta=0.0,
                             eval_strategy="no")
            cls = trainer_class(GRPOTrainer)
            trainer = cls(model=model, reward_funcs=counting_reward, args=cfg,
                          train_dataset=Dataset.from_list([{"prompt": r["prompt"]} for r in prompts]),
                          processing_class=tok, callbacks=callbacks)
        else:
            from transformers import Trainer, TrainingArguments

            train_ds, eval_ds = sft_datasets(Path(spec.dataset_dir), tok)
            extra: dict[str, Any] = {}
            if values["metric"] == "eval_accuracy":
                from ..task import accuracy_metrics

                extra["preprocess_logits_for_metrics"], extra["compute_metrics"] = accuracy_metrics()
            targs = TrainingArguments(**common, eval_strategy="steps" if values["eval_steps"] else "no",
                                      eval_steps=values["eval_steps"] or None, per_device_eval_batch_size=8)
            cls = trainer_class(Trainer)
            trainer = cls(model=model, args=targs, train_dataset=train_ds, eval_dataset=eval_ds,
                          data_collator=collate, processing_class=tok, callbacks=callbacks, **extra)
        trainer.ft_adapter = self
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)  # no per-step dict printing; logs stay in log_history
        trainer.train(resume_from_checkpoint=str(resume) if resume else None)
        final = self._save_final(trainer, output_dir)
        return RunResult(output_dir=output_dir, checkpoints=tuple(list_checkpoints(output_dir)), final_dir=final,
                         log_history=tuple(trainer.state.log_history), resolved=resolved)

    # ------------------------------------------------------------------ helpers
    def _save_final(self, trainer, output_dir: Path) -> Path:
        """Final model, tokenizer, args.json and trainer_state.json into ``output_dir``, file by file atomically."""
        from .distributed import barrier, is_main_process

        staging = output_dir / ".staging-final"
        if is_main_process():
            shutil.rmtree(staging, ignore_errors=True)
        barrier()
        try:
            trainer.save_model(str(staging))  # collective under FSDP: every rank takes part
            barrier()
            if is_main_process():
                self.finalize_checkpoint(staging, final=True)
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
            out[f"test_diffusion_lora_resume.py::test_resume_matches_uninterrupted[{device}-quanto-int8"] = (
                QUANTO_9108, KeyError)
    return out


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
