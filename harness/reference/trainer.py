"""Model building, data and the Trainer glue of the reference implementation.

Kept apart from :mod:`harness.reference.adapter` (the orchestration) so that the heavy imports
(torch, transformers, peft, trl) happen only when a run actually starts.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from transformers import TrainerCallback

from ..errors import CheckpointError, ConfigError
from .io import validate_model_dir
from .policy import CheckpointPolicy

if TYPE_CHECKING:  # pragma: no cover
    from .adapter import ReferenceAdapter, RunContext

log = logging.getLogger("harness.reference")

def load_model(model_dir: Path, quantization: str | None, device: str):
    """Validate ``model_dir`` then load it (optionally quantised). Errors name the directory/file."""
    from ..hf import load_causal_lm

    validate_model_dir(model_dir, need_tokenizer=False)
    return load_causal_lm(model_dir, quantization, device)


def load_tokenizer(model_dir: Path):
    from transformers import AutoTokenizer

    from ..errors import MissingFileError
    from ..layout import TOKENIZER_FILES

    for name in TOKENIZER_FILES:
        if not (Path(model_dir) / name).is_file():
            raise MissingFileError(model_dir, name, "the tokenizer is not saved with the model")
    return AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)


def lora_parameter_name(saved_key: str, adapter_name: str = "default") -> str:
    """``...q_proj.lora_A.weight`` (as saved) -> ``...q_proj.lora_A.default.weight`` (in the model)."""
    for part in ("lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B", "lora_magnitude_vector"):
        marker = f".{part}."
        if marker in saved_key:
            head, tail = saved_key.split(marker, 1)
            return f"{head}.{part}.{adapter_name}.{tail}"
    return saved_key


def load_lora_weights_by_name(model, checkpoint: Path) -> int:
    """Copy a checkpoint's LoRA tensors into ``model`` by parameter name; strict both ways.

    This is how the reference resumes LoRA on *any* base, including quanto-quantised ones where
    PEFT's state-dict path breaks (diffusers #9108): only LoRA parameters are touched, the quantised
    base layers never see a state-dict load.
    """
    import torch
    from safetensors.torch import load_file

    from ..layout import read_safetensors_header

    path = Path(checkpoint) / "adapter_model.safetensors"
    read_safetensors_header(path)  # names the file if it is missing or corrupt
    saved = load_file(str(path))
    params = dict(model.named_parameters())
    lora_params = {n for n, p in params.items() if "lora_" in n}
    seen = set()
    with torch.no_grad():
        for key, tensor in saved.items():
            name = lora_parameter_name(key)
            if name not in params:
                raise CheckpointError(checkpoint, f"adapter_model.safetensors holds {key!r}, which matches no LoRA "
                                                  f"parameter of the model (expected e.g. {sorted(lora_params)[:1]})",
                                      "adapter_model.safetensors")
            if tuple(params[name].shape) != tuple(tensor.shape):
                raise CheckpointError(checkpoint, f"{key!r} has shape {tuple(tensor.shape)} but the model's LoRA "
                                                  f"parameter has {tuple(params[name].shape)} (different lora_rank?)",
                                      "adapter_model.safetensors")
            params[name].copy_(tensor.to(params[name].dtype))
            seen.add(name)
    missing = sorted(lora_params - seen)
    if missing:
        raise CheckpointError(checkpoint, f"adapter_model.safetensors lacks {len(missing)} LoRA tensors, "
                                          f"e.g. {missing[0]!r}", "adapter_model.safetensors")
    return len(seen)


class PolicyCallback(TrainerCallback):
    """Applies a :class:`CheckpointPolicy` inside transformers' Trainer (save on best, safe rotation)."""

    def __init__(self, policy: CheckpointPolicy, metric: str, adapter: "ReferenceAdapter", ctx: "RunContext"):
        self.policy = policy
        self.metric = metric
        self.output_dir = ctx.output_dir
        self.adapter = adapter
        self.ctx = ctx
        self.best: tuple[int, float] | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        # resumed runs: restore the best from the loaded trainer state
        self.best = self.adapter.restore_best(self.ctx, state)

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        metrics = metrics or {}
        if self.metric not in metrics:
            raise ConfigError(None, "metric", f"a metric the evaluation produces ({sorted(metrics)})", self.metric)
        value = float(metrics[self.metric])
        if self.policy.is_improvement(value, None if self.best is None else self.best[1]):
            self.best = (state.global_step, value)
            state.best_metric = value
            state.best_global_step = state.global_step
            if self.policy.should_save(state.global_step, new_best=True):
                control.should_save = True
                state.best_model_checkpoint = str(self.adapter.best_checkpoint_path(self.ctx, state.global_step))

    def before_save(self, step: int) -> None:
        """Before checkpoint-<step>'s first write: what the adapter removes now (the reference: nothing; rotation
        waits until the new checkpoint is complete, in :meth:`on_save`)."""
        if not self.policy.save_total_limit:
            return
        best = None if self.best is None else self.best[0]
        for doomed in self.adapter.removed_before_save(self.ctx, self.policy, best, step):
            shutil.rmtree(self.output_dir / f"checkpoint-{doomed}", ignore_errors=True)

    def on_save(self, args, state, control, **kwargs):
        if self.best is not None and (self.output_dir / f"checkpoint-{self.best[0]}").is_dir():
            # Trainer re-derives the pointer from best_global_step at each save; the adapter's record is the one kept
            state.best_model_checkpoint = str(self.adapter.best_checkpoint_path(self.ctx, self.best[0]))
        if self.policy.save_total_limit:  # without a limit nothing is ever rotated
            self.adapter.rotate_checkpoints(self.ctx, self.policy, None if self.best is None else self.best[0])


def trainer_class(base):
    """``base`` (Trainer or GRPOTrainer) with atomic checkpoint saves and the adapter's resume hooks."""

    class HarnessTrainer(base):
        ft_adapter: "ReferenceAdapter"
        ft_context: "RunContext"
        _ft_staging_root: Path | None = None

        def _get_output_dir(self, trial):
            if self._ft_staging_root is not None:
                return str(self._ft_staging_root)
            return super()._get_output_dir(trial)

        def _save_checkpoint(self, model, trial):
            final_root = Path(self.args.output_dir)
            name = f"checkpoint-{self.state.global_step}"
            from .distributed import barrier, is_main_process

            if is_main_process():
                for callback in self.callback_handler.callbacks:
                    if isinstance(callback, PolicyCallback):
                        callback.before_save(self.state.global_step)
            if not self.ft_adapter.atomic_saves:
                super()._save_checkpoint(model, trial)
                barrier()
                if is_main_process():
                    self.ft_adapter.finalize_checkpoint(self.ft_context, final_root / name, final=False)
                return

            # one staging root per step, shared by all ranks (each writes its rng_state_<rank>.pth there)
            staging_root = final_root / f".staging-{name}"
            self._ft_staging_root = staging_root
            try:
                super()._save_checkpoint(model, trial)
                barrier()
                if is_main_process():
                    best = self.state.best_model_checkpoint
                    if best and Path(best).is_relative_to(staging_root):
                        # Trainer resolved the best checkpoint inside the staging root: record its final path
                        self.state.best_model_checkpoint = str(final_root / Path(best).relative_to(staging_root))
                        self.state.save_to_json(str(staging_root / name / "trainer_state.json"))
                    self.ft_adapter.finalize_checkpoint(self.ft_context, staging_root / name, final=False)
                    self.ft_adapter.publish_checkpoint(self.ft_context, staging_root / name, final_root / name)
            finally:
                self._ft_staging_root = None
                if is_main_process():
                    shutil.rmtree(staging_root, ignore_errors=True)
            barrier()

        def _inner_training_loop(self, *args, **kwargs):
            # Trainer starts every loop with accelerator.free_memory(), a full gc.collect() that costs
            # ~0.3 s per tiny run inside a big test process; nothing is prepared yet, so a reset suffices.
            acc = self.accelerator

            def reset(*objects):
                acc._schedulers, acc._optimizers, acc._models, acc._dataloaders = [], [], [], []
                acc.step = 0
                return objects

            acc.free_memory = reset
            if kwargs.get("resume_from_checkpoint") is not None:
                self.ft_adapter.resume_data(self.ft_context, self)
            try:
                return super()._inner_training_loop(*args, **kwargs)
            finally:
                del acc.free_memory

        def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
            self.ft_adapter.load_checkpoint_weights(self.ft_context, self, Path(resume_from_checkpoint),
                                                    model or self.model)

        def _load_from_checkpoint_default(self, resume_from_checkpoint, model=None):
            return super()._load_from_checkpoint(resume_from_checkpoint, model)

        def _load_optimizer_and_scheduler(self, checkpoint):
            if checkpoint is not None:
                self.ft_adapter.load_optimizer_state(self.ft_context, self, Path(checkpoint))

        def _load_optimizer_and_scheduler_default(self, checkpoint):
            return super()._load_optimizer_and_scheduler(checkpoint)

        def _load_rng_state(self, checkpoint):
            if checkpoint is not None:
                self.ft_adapter.load_rng_state(self.ft_context, self, Path(checkpoint))

        def _load_rng_state_default(self, checkpoint):
            return super()._load_rng_state(checkpoint)

    return HarnessTrainer
