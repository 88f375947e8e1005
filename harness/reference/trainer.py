"""Model building, data and the Trainer glue of the reference implementation.

Kept apart from :mod:`harness.reference.adapter` (the orchestration) so that the heavy imports
(torch, transformers, peft, trl) happen only when a run actually starts.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transformers import TrainerCallback

from ..errors import CheckpointError, ConfigError
from .io import atomic_replace_dir, validate_model_dir
from .policy import CheckpointPolicy

if TYPE_CHECKING:  # pragma: no cover
    from .adapter import ReferenceAdapter

log = logging.getLogger("harness.reference")

QUANT_LIBRARIES = {"nf4": "bitsandbytes", "int8": "bitsandbytes", "quanto-int8": "optimum.quanto",
                   "quanto-int4": "optimum.quanto"}


def quantization_config(quantization: str | None, device: str):
    """A transformers quantisation config for the reference's quantisation names."""
    if quantization is None:
        return None
    import torch

    if quantization == "nf4":
        from transformers import BitsAndBytesConfig

        compute = torch.bfloat16 if device == "cuda" else torch.float32
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute)
    if quantization == "int8":
        from transformers import BitsAndBytesConfig

        return BitsAndBytesConfig(load_in_8bit=True)
    if quantization in ("quanto-int8", "quanto-int4"):
        from transformers import QuantoConfig

        return QuantoConfig(weights=quantization.split("-")[1])
    raise ConfigError(None, "quantization", "nf4, int8, quanto-int8 or quanto-int4", quantization)


def load_model(model_dir: Path, quantization: str | None, device: str):
    """Validate ``model_dir`` then load it (optionally quantised). Errors name the directory/file."""
    import torch
    from transformers import AutoModelForCausalLM

    validate_model_dir(model_dir, need_tokenizer=False)
    kwargs: dict[str, Any] = {"dtype": torch.float32, "local_files_only": True}
    qcfg = quantization_config(quantization, device)
    if qcfg is not None:
        kwargs["quantization_config"] = qcfg
        if device == "cuda":
            kwargs["device_map"] = {"": 0}
    return AutoModelForCausalLM.from_pretrained(str(model_dir), **kwargs)


def load_tokenizer(model_dir: Path):
    from transformers import AutoTokenizer

    from ..errors import MissingFileError
    from .io import TOKENIZER_FILES

    for name in TOKENIZER_FILES:
        if not (Path(model_dir) / name).is_file():
            raise MissingFileError(model_dir, name, "the tokenizer is not saved with the model")
    return AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)


def lora_config(values: dict[str, Any]):
    from peft import LoraConfig

    tm = values["target_modules"]
    return LoraConfig(r=values["lora_rank"], lora_alpha=values["lora_alpha"], lora_dropout=values["lora_dropout"],
                      target_modules=tm if isinstance(tm, str) else list(tm), task_type="CAUSAL_LM")


def sft_datasets(dataset_dir: Path, tok) -> tuple[list[dict], list[dict]]:
    """Tokenised train/eval examples (all the same length: no padding, exact per-token eval loss)."""
    from ..models import read_texts

    out = []
    for name in ("train", "eval"):
        path = Path(dataset_dir) / f"{name}.jsonl"
        if not path.is_file():
            from ..errors import MissingFileError

            raise MissingFileError(dataset_dir, path.name, "SFT needs train.jsonl and eval.jsonl")
        rows = []
        for text in read_texts(path):
            ids = tok(text)["input_ids"]
            rows.append({"input_ids": ids, "labels": list(ids)})
        out.append(rows)
    return out[0], out[1]


def collate(batch: list[dict]) -> dict:
    import torch

    lengths = {len(x["input_ids"]) for x in batch}
    if len(lengths) != 1:
        raise ConfigError(None, "input_ids", "equal-length examples in the tiny datasets", sorted(lengths))
    return {k: torch.tensor([x[k] for x in batch]) for k in batch[0]}


def counting_reward(prompts, completions, **_: Any) -> list[float]:
    """Rule-based GRPO reward in [0, 1]: half for completion words from the data vocabulary
    (``w0..w23``), half for continuing the prompt's count. The first half varies even for an untrained
    model, so every group has non-zero advantages and full-parameter GRPO changes every weight."""
    from ..models import DATA_WORDS

    data_words = {f"w{i}" for i in range(DATA_WORDS)}
    rewards = []
    for prompt, completion in zip(prompts, completions):
        text = completion if isinstance(completion, str) else " ".join(m.get("content", "") for m in completion)
        words = text.split()
        last = prompt.split()[-1] if isinstance(prompt, str) and prompt.split() else "w0"
        expect = int(last[1:]) + 1 if last[1:].isdigit() else 0
        counted = 0
        for word in words:
            if word != f"w{expect % DATA_WORDS}":
                break
            counted += 1
            expect += 1
        in_vocab = sum(w in data_words for w in words)
        rewards.append(0.5 * in_vocab / max(len(words), 1) + 0.5 * counted / max(len(words), 1))
    return rewards


def accuracy_metrics():
    """(preprocess_logits_for_metrics, compute_metrics) for ``eval_accuracy`` (next-token accuracy)."""
    import numpy as np

    def preprocess(logits, labels):
        return logits.argmax(-1)

    def compute(pred):
        preds, labels = pred.predictions[:, :-1], pred.label_ids[:, 1:]
        return {"accuracy": float(np.mean(preds == labels))}

    return preprocess, compute


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

    from .io import read_safetensors_header

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

    def __init__(self, policy: CheckpointPolicy, metric: str, output_dir: Path, adapter: "ReferenceAdapter"):
        self.policy = policy
        self.metric = metric
        self.output_dir = Path(output_dir)
        self.adapter = adapter
        self.best: tuple[int, float] | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        # resumed runs: restore the best from the loaded trainer state
        if state.best_global_step and state.best_metric is not None:
            self.best = (state.best_global_step, state.best_metric)

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
                state.best_model_checkpoint = str(self.output_dir / f"checkpoint-{state.global_step}")

    def on_save(self, args, state, control, **kwargs):
        self.adapter.rotate_checkpoints(self.output_dir, self.policy, None if self.best is None else self.best[0])


def trainer_class(base):
    """``base`` (Trainer or GRPOTrainer) with atomic checkpoint saves and the adapter's resume hooks."""

    class HarnessTrainer(base):
        ft_adapter: "ReferenceAdapter"
        _ft_staging_root: Path | None = None

        def _get_output_dir(self, trial):
            if self._ft_staging_root is not None:
                return str(self._ft_staging_root)
            return super()._get_output_dir(trial)

        def _save_checkpoint(self, model, trial):
            final_root = Path(self.args.output_dir)
            name = f"checkpoint-{self.state.global_step}"
            from .distributed import barrier, is_main_process

            if not self.ft_adapter.atomic_saves:
                super()._save_checkpoint(model, trial)
                barrier()
                if is_main_process():
                    self.ft_adapter.finalize_checkpoint(final_root / name, final=False)
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
                    self.ft_adapter.finalize_checkpoint(staging_root / name, final=False)
                    atomic_replace_dir(staging_root / name, final_root / name)
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
            try:
                return super()._inner_training_loop(*args, **kwargs)
            finally:
                del acc.free_memory

        def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
            self.ft_adapter.load_checkpoint_weights(self, Path(resume_from_checkpoint), model or self.model)

        def _load_from_checkpoint_default(self, resume_from_checkpoint, model=None):
            return super()._load_from_checkpoint(resume_from_checkpoint, model)

    return HarnessTrainer
