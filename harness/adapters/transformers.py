"""Plain transformers + PEFT + TRL, wired the way most fine-tuning frameworks wire them, with none of
the reference's fixes: what the libraries do by themselves is what the scenarios judge.

* the model (or, for a LoRA output directory, base + adapter through transformers' PEFT integration)
  is loaded with ``AutoModelForCausalLM.from_pretrained``; LoRA is ``peft.get_peft_model``;
* DPO is ``trl.DPOTrainer`` on the model loaded as above with ``ref_model=None``: TRL chooses the reference (a copy
  of a PEFT model's pre-trained adapter as ``ref``, else a model reloaded from the path its config names);
* ``Trainer`` / ``trl.GRPOTrainer`` / ``trl.DPOTrainer`` with ``save_steps``, ``eval_steps``, ``save_total_limit``
  as given, and
  ``metric_for_best_model`` / ``greater_is_better`` only when the run names them (as a user's config would);
  ``load_best_model_at_end`` is an option;
* resume is ``trainer.train(resume_from_checkpoint=...)``; the final model is ``trainer.save_model``
  plus ``trainer.save_state()``;
* chat data (``messages`` / ``prompt``+``completion`` rows) goes through TRL ``SFTTrainer`` with
  ``assistant_only_loss=True`` (its dataset preparation, template and collator); ``training_batches`` reads one epoch
  of its train dataloader.

There are no saved argument files in plain transformers, so the ``args`` capability is not declared
(seed 000 is about frameworks that layer them). Options (``--ft-adapter-option KEY=VALUE``):

``load_best_model_at_end``  true/false (default false): transformers' own best-model tracking, switched on for the
                            best-checkpoint story's runs (seed 004) only; a run that types
                            ``load_best_model_at_end`` gets it either way.
``prepare_kbit``            true/false (default false): call ``peft.prepare_model_for_kbit_training``
                            on quantised bases, as QLoRA recipes do.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from ..adapter import Adapter, RunResult, RunSpec
from ..spec import BEST_CHECKPOINT_STORY
from .. import hf
from ..runtime import cpu_threads, library_versions
from ..kit import check_options, collect_result, parse_bool
from ..task import is_chat_dataset

__all__ = ["TransformersAdapter", "OPTIONS", "training_arguments", "sft_config_arguments", "sft_trainer"]

OPTIONS = {
    "load_best_model_at_end": "true/false, default false: Trainer reloads the best checkpoint at the end (best-checkpoint "
                              "story runs only)",
    "prepare_kbit": "true/false, default false: peft.prepare_model_for_kbit_training on quantised bases",
}


def training_arguments(values: Mapping[str, Any], output_dir: Path, device: str, *, load_best_model_at_end: bool,
                       given: Collection[str] = ()) -> dict[str, Any]:
    """RunSpec values -> transformers TrainingArguments keywords, the way a user passes them: the task's shared
    arguments plus Trainer's own rotation (``save_total_limit``) and best tracking. ``metric_for_best_model`` and
    ``greater_is_better`` only when the run names them (``given``: the keys on the command line); Trainer's own
    default (``"loss"``) applies when ``load_best_model_at_end`` is on, and no best tracking otherwise."""
    kwargs = hf.training_arguments(values, output_dir, device)
    kwargs["save_total_limit"] = values.get("save_total_limit") or None
    if values.get("eval_steps"):
        kwargs.update(eval_strategy="steps", eval_steps=values["eval_steps"], per_device_eval_batch_size=8,
                      load_best_model_at_end=load_best_model_at_end)
        if "metric" in given:
            kwargs["metric_for_best_model"] = str(values["metric"]).removeprefix("eval_")
        if "greater_is_better" in given:
            kwargs["greater_is_better"] = values["greater_is_better"]
    return kwargs


def sft_config_arguments(values: Mapping[str, Any], targs: Mapping[str, Any]) -> dict[str, Any]:
    """TRL ``SFTConfig`` keywords for chat data: the Trainer arguments plus the documented switches for training on
    the assistant turns only (``assistant_only_loss``: the template's ``{% generation %}`` spans), no packing, the
    task's length bound, tokenisation in this process."""
    kwargs = dict(targs)
    kwargs.update(assistant_only_loss=True, packing=False, max_length=64, dataset_num_proc=None)
    if values.get("eval_steps") and "eval_strategy" not in kwargs:
        kwargs.update(eval_strategy="steps", eval_steps=values["eval_steps"], per_device_eval_batch_size=8)
    return kwargs


def sft_trainer(values: Mapping[str, Any], model, tok, targs: Mapping[str, Any], dataset_dir: Path):
    """TRL ``SFTTrainer`` on a chat dataset (rows as ``messages``), as its docs configure chat SFT."""
    from datasets import Dataset
    from transformers.trainer_callback import PrinterCallback
    from trl import SFTConfig, SFTTrainer

    from ..kit import chat_as_messages

    data = {name: Dataset.from_list(chat_as_messages(Path(dataset_dir) / f"{name}.jsonl")) for name in ("train", "eval")}
    trainer = SFTTrainer(model=model, args=SFTConfig(**sft_config_arguments(values, targs)), train_dataset=data["train"],
                         eval_dataset=data["eval"], processing_class=tok)
    trainer.remove_callback(PrinterCallback)
    return trainer


class TransformersAdapter(Adapter):
    """transformers Trainer + PEFT + TRL used plainly (no harness fixes)."""

    name = "transformers"
    capabilities = frozenset({"sft", "grpo", "dpo", "kto", "full", "lora", "resume", "quant-nf4", "quant-int8", "quanto-int8",
                              "quanto-int4", "best-checkpoint", "packing", "merge", "data", "gradient-checkpointing", "moe", "gpu"})

    def __init__(self, **options: str):
        check_options("transformers", options, OPTIONS)
        self.load_best_model_at_end = parse_bool("transformers", "load_best_model_at_end",
                                                 options.get("load_best_model_at_end", "false"))
        self.prepare_kbit = parse_bool("transformers", "prepare_kbit", options.get("prepare_kbit", "false"))
        if self.load_best_model_at_end:
            self.name = "transformers[load_best_model_at_end]"

    def versions(self) -> dict[str, str]:
        return library_versions("transformers", "peft", "trl", "torch")

    def loads_best(self, spec: RunSpec, values: Mapping[str, Any]) -> bool:
        """``load_best_model_at_end`` for this run: as typed, or on for every best-checkpoint story run when the
        option is (a habit of that story's users; other stories' runs keep transformers' default)."""
        return bool(values.get("load_best_model_at_end")) or (
            self.load_best_model_at_end and spec.story == BEST_CHECKPOINT_STORY)

    def merge(self, adapter_dir: Path, output_dir: Path) -> Path:
        """PEFT's ``merge_and_unload`` on the base the adapter names, then ``save_pretrained`` (as users do)."""
        return hf.merge_lora(adapter_dir, output_dir)

    def train(self, spec: RunSpec) -> RunResult:
        with cpu_threads(spec.device):
            return self._train(spec)

    def training_batches(self, spec: RunSpec) -> list[Mapping[str, Any]]:
        """One epoch of the train dataloader of the trainer :meth:`train` builds (TRL ``SFTTrainer`` with
        ``assistant_only_loss`` for chat data, ``Trainer`` for text); nothing is trained."""
        with cpu_threads(spec.device):
            return hf.epoch_batches(self._train(spec, build_only=True).get_train_dataloader())

    def load_model(self, spec: RunSpec, values: Mapping[str, Any]) -> tuple[Any, Any]:
        """The model to train and its tokenizer: ``AutoModelForCausalLM.from_pretrained`` in float32, quantised as the
        run asks, and ``AutoTokenizer``. A framework that loads its own way (unsloth's ``FastLanguageModel``)
        overrides this and :meth:`add_lora`; the trainer, resume and saves stay this class's."""
        from transformers import AutoTokenizer

        from ..layout import adapter_base, is_adapter_dir

        if values["train_type"] == "lora" and is_adapter_dir(spec.model_dir):
            # LoRA continued from a LoRA output: the adapter loaded trainable on its base, as PEFT documents
            # (``PeftModel.from_pretrained(..., is_trainable=True)``). Not ``from_pretrained(adapter_dir)`` and then
            # ``get_peft_model``: PEFT 0.21.2 re-initialises the loaded "default" adapter there (B = 0, the policy is the
            # bare base; it only warns "modify a model with PEFT for a second time"), and on fused MoE experts it
            # raises "target the same nn.Parameter twice".
            from peft import PeftModel

            base = hf.load_causal_lm(adapter_base(spec.model_dir), values["quantization"], spec.device)
            model = PeftModel.from_pretrained(base, str(spec.model_dir), is_trainable=True)
        else:
            model = hf.load_causal_lm(spec.model_dir, values["quantization"], spec.device)
        if values.get("router_aux_loss_coef"):  # what from_pretrained(..., output_router_logits=True,
            coef = float(values["router_aux_loss_coef"])  # router_aux_loss_coef=c) gives: the config and the attribute
            model.config.output_router_logits, model.config.router_aux_loss_coef = True, coef
            model.router_aux_loss_coef = coef
        return model, AutoTokenizer.from_pretrained(str(spec.model_dir))

    def add_lora(self, model: Any, values: Mapping[str, Any]) -> Any:
        """``peft.get_peft_model`` with the run's LoRA settings (after ``prepare_model_for_kbit_training`` on a
        quantised base when the option asks for it); torch's seed is the run's when this is called."""
        from peft import get_peft_model, prepare_model_for_kbit_training

        if values["quantization"] is not None and self.prepare_kbit:
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        return get_peft_model(model, hf.lora_config(dict(values)))

    def chat_trainer(self, values: Mapping[str, Any], model: Any, tok: Any, targs: Mapping[str, Any],
                     dataset_dir: Path) -> Any:
        """The trainer for chat data: TRL ``SFTTrainer`` with ``assistant_only_loss`` (:func:`sft_trainer`)."""
        return sft_trainer(values, model, tok, targs, dataset_dir)

    def _train(self, spec: RunSpec, build_only: bool = False) -> Any:
        import torch
        from transformers import set_seed

        resolved = self.resolve_args(spec.cli_args(), spec.model_dir)
        values = dict(resolved.values)
        set_seed(values["seed"])
        model, tok = self.load_model(spec, values)
        if values["train_type"] == "lora":
            if not _is_peft_model(model):  # (a PeftModel here is a pre-trained adapter, continued)
                torch.manual_seed(values["seed"])
                model = self.add_lora(model, values)
        else:
            for p in model.parameters():
                p.requires_grad_(True)
        targs = training_arguments(values, spec.output_dir, spec.device,
                                   load_best_model_at_end=self.loads_best(spec, values), given=spec.cli_args())
        if is_chat_dataset(Path(spec.dataset_dir) / "train.jsonl"):
            trainer = self.chat_trainer(values, model, tok, targs, Path(spec.dataset_dir))
        else:
            collator = hf.packing_collator() if values.get("packing") else None  # the padding-free recipe, as documented
            trainer = hf.build_trainer(values, model, tok, targs, spec.dataset_dir, collator=collator)
        if build_only:
            return trainer
        resume = spec.resume_from
        trainer.train(resume_from_checkpoint=True if resume == "latest" else (str(resume) if resume else None))
        trainer.save_model(str(spec.output_dir))
        trainer.save_state()
        return collect_result(spec, Path(spec.output_dir), resolved)


def _is_peft_model(model: Any) -> bool:
    """Whether ``model`` is a ``peft.PeftModel`` (its adapter already in place)."""
    from peft import PeftModel

    return isinstance(model, PeftModel)
