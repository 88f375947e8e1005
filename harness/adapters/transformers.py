"""Plain transformers + PEFT + TRL, wired the way most fine-tuning frameworks wire them, with none of
the reference's fixes: what the libraries do by themselves is what the scenarios judge.

* the model (or, for a LoRA output directory, base + adapter through transformers' PEFT integration)
  is loaded with ``AutoModelForCausalLM.from_pretrained``; LoRA is ``peft.get_peft_model``;
* ``Trainer`` / ``trl.GRPOTrainer`` with ``save_steps``, ``eval_steps``, ``save_total_limit``,
  ``metric_for_best_model`` as given; ``load_best_model_at_end`` is an option;
* resume is ``trainer.train(resume_from_checkpoint=...)``; the final model is ``trainer.save_model``
  plus ``trainer.save_state()``.

There are no saved argument files in plain transformers, so the ``args`` capability is not declared
(seed 000 is about frameworks that layer them). Options (``--ft-adapter-option KEY=VALUE``):

``load_best_model_at_end``  true/false (default false): transformers' own best-model tracking.
``prepare_kbit``            true/false (default false): call ``peft.prepare_model_for_kbit_training``
                            on quantised bases, as QLoRA recipes do.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..adapter import Adapter, RunResult, RunSpec
from ..runtime import cpu_threads, library_versions
from ._common import check_options, collect_result, parse_bool

__all__ = ["TransformersAdapter", "OPTIONS", "training_arguments"]

OPTIONS = {
    "load_best_model_at_end": "true/false, default false: Trainer reloads the best checkpoint at the end",
    "prepare_kbit": "true/false, default false: peft.prepare_model_for_kbit_training on quantised bases",
}


def training_arguments(values: Mapping[str, Any], output_dir: Path, device: str, *,
                       load_best_model_at_end: bool) -> dict[str, Any]:
    """RunSpec values -> transformers TrainingArguments keywords, the way a framework passes them through."""
    eval_steps = values.get("eval_steps") or 0
    save_steps = values.get("save_steps") or 0
    metric = str(values["metric"])
    kwargs: dict[str, Any] = dict(
        output_dir=str(output_dir), max_steps=values["max_steps"], learning_rate=values["learning_rate"],
        per_device_train_batch_size=values["per_device_train_batch_size"],
        gradient_accumulation_steps=values["gradient_accumulation_steps"],
        lr_scheduler_type=values["lr_scheduler_type"], logging_steps=1, report_to="none",
        use_cpu=device == "cpu", seed=values["seed"], data_seed=values["seed"],
        save_strategy="steps" if save_steps else "no", save_steps=save_steps or 500,
        save_total_limit=values.get("save_total_limit") or None, disable_tqdm=True, dataloader_num_workers=0,
    )
    if eval_steps:
        kwargs.update(eval_strategy="steps", eval_steps=eval_steps, per_device_eval_batch_size=8,
                      metric_for_best_model=metric.removeprefix("eval_"),
                      greater_is_better=values.get("greater_is_better"),
                      load_best_model_at_end=load_best_model_at_end)
    return kwargs


class TransformersAdapter(Adapter):
    """transformers Trainer + PEFT + TRL used plainly (no harness fixes)."""

    name = "transformers"
    capabilities = frozenset({"sft", "grpo", "full", "lora", "resume", "quant-nf4", "quant-int8", "quanto-int8",
                              "quanto-int4", "best-checkpoint", "gpu"})

    def __init__(self, **options: str):
        check_options("transformers", options, OPTIONS)
        self.load_best_model_at_end = parse_bool("transformers", "load_best_model_at_end",
                                                 options.get("load_best_model_at_end", "false"))
        self.prepare_kbit = parse_bool("transformers", "prepare_kbit", options.get("prepare_kbit", "false"))
        if self.load_best_model_at_end:
            self.name = "transformers[load_best_model_at_end]"

    def versions(self) -> dict[str, str]:
        return library_versions("transformers", "peft", "trl", "torch")

    def train(self, spec: RunSpec) -> RunResult:
        with cpu_threads(spec.device):
            return self._train(spec)

    def _train(self, spec: RunSpec) -> RunResult:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed

        from ..task import lora_config, quantization_config

        resolved = self.resolve_args(spec.cli_args(), spec.model_dir)
        values = dict(resolved.values)
        set_seed(values["seed"])
        kwargs: dict[str, Any] = {"dtype": torch.float32}
        qcfg = quantization_config(values["quantization"], spec.device)
        if qcfg is not None:
            kwargs["quantization_config"] = qcfg
            if spec.device == "cuda":
                kwargs["device_map"] = {"": 0}
        model = AutoModelForCausalLM.from_pretrained(str(spec.model_dir), **kwargs)
        tok = AutoTokenizer.from_pretrained(str(spec.model_dir))
        if values["train_type"] == "lora":
            from peft import get_peft_model, prepare_model_for_kbit_training

            if qcfg is not None and self.prepare_kbit:
                model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
            torch.manual_seed(values["seed"])
            model = get_peft_model(model, lora_config(values))
        else:
            for p in model.parameters():
                p.requires_grad_(True)
        targs = training_arguments(values, spec.output_dir, spec.device,
                                   load_best_model_at_end=self.load_best_model_at_end)
        targs["bf16"] = spec.device == "cuda" and torch.cuda.is_bf16_supported()
        if values["method"] == "grpo":
            from datasets import Dataset
            from trl import GRPOConfig, GRPOTrainer

            from ..models import read_jsonl
            from ..task import counting_reward

            prompts = read_jsonl(Path(spec.dataset_dir) / "prompts.jsonl")
            cfg = GRPOConfig(**targs, num_generations=values["num_generations"],
                             max_completion_length=values["max_completion_length"], beta=0.0)
            trainer = GRPOTrainer(model=model, reward_funcs=counting_reward, args=cfg, processing_class=tok,
                                  train_dataset=Dataset.from_list([{"prompt": r["prompt"]} for r in prompts]))
        else:
            from transformers import Trainer, TrainingArguments

            from ..task import accuracy_metrics, collate, sft_datasets

            train_ds, eval_ds = sft_datasets(Path(spec.dataset_dir), tok)
            extra: dict[str, Any] = {}
            if values["metric"] == "eval_accuracy":
                extra["preprocess_logits_for_metrics"], extra["compute_metrics"] = accuracy_metrics()
            trainer = Trainer(model=model, args=TrainingArguments(**targs), train_dataset=train_ds,
                              eval_dataset=eval_ds, data_collator=collate, processing_class=tok, **extra)
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)
        resume = spec.resume_from
        trainer.train(resume_from_checkpoint=True if resume == "latest" else (str(resume) if resume else None))
        trainer.save_model(str(spec.output_dir))
        trainer.save_state()
        return collect_result(spec, Path(spec.output_dir), resolved)
