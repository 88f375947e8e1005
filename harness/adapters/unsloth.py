"""unsloth (``pip install ft-harness[unsloth]``: unsloth 2026.10.9 with unsloth_zoo 2026.10.9), driven as its notebooks
drive it, on its CPU backend ("no GPU found, training on CPU ... supported: text LoRA / full finetuning with
SFTTrainer"):

* ``import unsloth`` first (it installs its training defaults and patches into what is imported after it; the adapter
  imports it when it is constructed, which the plugin does before any scenario runs);
* ``FastLanguageModel.from_pretrained(model_dir, max_seq_length=64, dtype=..., load_in_4bit=..., load_in_8bit=...,
  full_finetuning=...)`` returns the model and its tokenizer; LoRA is ``FastLanguageModel.get_peft_model(model, r,
  lora_alpha, lora_dropout, target_modules, random_state=seed)``; new special tokens go through unsloth's own
  ``add_new_tokens(model, tokenizer, new_tokens=...)`` before the LoRA, as its docs order it;
* chat data goes the way unsloth's notebooks take it: each conversation rendered by the saved tokenizer's own
  template (``tokenizer.apply_chat_template(messages, tokenize=False)``) into a ``text`` column, TRL ``SFTTrainer`` on
  that column, then unsloth's ``train_on_responses_only(trainer, instruction_part=..., response_part=...)`` with the
  template's turn markers (``"<|user|> "``, ``"<|assistant|> "``); text data is ``Trainer`` on the task's tokenised
  text, with unsloth's training defaults in place; resume is ``trainer.train(resume_from_checkpoint=...)``; the layout
  is HF Trainer's;
* merging is unsloth's ``model.save_pretrained_merged(dir, tokenizer, save_method="merged_16bit")`` on the adapter
  directory loaded back with ``FastLanguageModel.from_pretrained`` the way the run loaded its base (4-bit for an nf4
  run, which is how an unsloth user reloads a QLoRA adapter; the CPU backend then refuses to merge, naming the 4-bit
  base). ``merged_16bit`` writes 16-bit weights by name, also from a float32 model (bfloat16 where the CPU has it).

Without a GPU, ``import unsloth`` switches to its CPU backend (``unsloth/_cpu_init.py``: "stock transformers + PEFT +
TRL, with unsloth_zoo.cpu choosing dtype, 4-bit, chunked cross entropy and trainer defaults"): ``FastLanguageModel`` is
``unsloth_zoo.cpu.FastCPUModel``, whose ``get_peft_model`` and ``save_pretrained_merged`` are not the GPU path's. The
column judges that backend, the one this machine runs.

Not declared, with the reason: ``grpo`` (unsloth's GRPO path is ``fast_inference`` generation on vLLM, CUDA only; the
CPU backend supports SFT only), ``quant-int8`` (the CPU backend loads ``load_in_8bit=True`` as 16-bit weights: "8-bit
loading is not supported on CPU, loading 16-bit weights instead"), ``quanto-int8`` / ``quanto-int4`` (unsloth loads
quantised bases through bitsandbytes only), ``packing`` (unsloth's padding-free packing is SFTTrainer's
``packing=True`` on text rows, which the task's pre-tokenised text does not go through), ``gpu`` (not measured: no
CUDA machine here). ``get_peft_model`` is called with ``use_gradient_checkpointing=False`` (its CPU default is
``"unsloth"``: activation checkpointing, which the 64-token rows of the task do not need).

``dtype`` is float32 unless the option says otherwise: the scenarios' tolerances are measured in float32, and unsloth's
CPU default is bfloat16 where the CPU has it (measured here: ``dtype = torch.bfloat16``), which no oracle's bound
allows for. Options (``--ft-adapter-option KEY=VALUE``): ``dtype`` (float32 | bfloat16 | auto: unsloth's own
choice) and the transformers adapter's ``load_best_model_at_end``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..adapter import RunResult, RunSpec
from ..errors import AdapterLoadError
from ..kit import check_options, parse_bool
from ..runtime import library_versions
from .transformers import TransformersAdapter, sft_config_arguments

__all__ = ["UnslothAdapter", "OPTIONS", "load_kwargs", "peft_kwargs"]

OPTIONS = {
    "dtype": "float32 (default) | bfloat16 | auto: the dtype unsloth loads the model in (auto: its own CPU choice)",
    "load_best_model_at_end": "true/false, default false: Trainer reloads the best checkpoint at the end (best-checkpoint "
                              "story runs only)",
}
DTYPES = ("float32", "bfloat16", "auto")
MAX_SEQ_LENGTH = 64  # the task's length bound (harness.task encodes every row within it)
#: the tiny chat template's turn markers (harness.models.CHAT_TEMPLATE), what its user passes train_on_responses_only
TURN_MARKERS = ("<|user|> ", "<|assistant|> ")


def load_kwargs(values: Mapping[str, Any], dtype: str) -> dict[str, Any]:
    """``FastLanguageModel.from_pretrained`` keywords for one run: the task's length bound, the dtype, the quantised
    base the run asks for (bitsandbytes nf4 / int8 only), full fine-tuning for a full run."""
    import torch

    quant = values.get("quantization")
    return {"max_seq_length": MAX_SEQ_LENGTH, "dtype": None if dtype == "auto" else getattr(torch, dtype),
            "load_in_4bit": quant == "nf4", "load_in_8bit": quant == "int8",
            "full_finetuning": values.get("train_type") == "full", "local_files_only": True}


def peft_kwargs(values: Mapping[str, Any]) -> dict[str, Any]:
    """``FastLanguageModel.get_peft_model`` keywords from the run's LoRA settings (unsloth's names: ``r``,
    ``random_state``); no gradient checkpointing (the task's sequences are 64 tokens)."""
    tm = values["target_modules"]
    return {"r": values["lora_rank"], "lora_alpha": values["lora_alpha"], "lora_dropout": values["lora_dropout"],
            "target_modules": tm if isinstance(tm, str) else list(tm), "random_state": values["seed"],
            "use_gradient_checkpointing": False}


class UnslothAdapter(TransformersAdapter):
    """unsloth's FastLanguageModel + TRL on its CPU backend; everything else is the transformers adapter's."""

    name = "unsloth"
    capabilities = frozenset({"sft", "full", "lora", "resume", "quant-nf4", "best-checkpoint", "merge", "data",
                              "new-tokens"})

    def __init__(self, **options: str):
        check_options("unsloth", options, OPTIONS)
        self.dtype = options.get("dtype", "float32")
        if self.dtype not in DTYPES:
            raise TypeError(f"unsloth adapter option dtype={self.dtype!r}: expected one of {', '.join(DTYPES)}")
        self.load_best_model_at_end = parse_bool("unsloth", "load_best_model_at_end",
                                                 options.get("load_best_model_at_end", "false"))
        self.prepare_kbit = False  # unsloth's get_peft_model prepares the model itself (FastCPUModel._prepare)
        self.quantization_of: dict[str, str | None] = {}  # output dir -> the run's base quantisation (for merge)
        if self.dtype != "float32" or self.load_best_model_at_end:
            self.name = "unsloth[" + ",".join(
                ([f"dtype={self.dtype}"] if self.dtype != "float32" else [])
                + (["load_best_model_at_end"] if self.load_best_model_at_end else [])) + "]"
        try:
            import unsloth  # noqa: F401 - first, as its docs ask: its training defaults and patches apply from here on
        except ImportError as exc:
            raise AdapterLoadError(f"the unsloth adapter needs unsloth and unsloth_zoo (pip install "
                                   f"'ft-harness[unsloth]', or tox -e unsloth): import unsloth failed: {exc}") from exc
        except NotImplementedError as exc:  # before its CPU backend (2026.10.9): "... You need a GPU."
            raise AdapterLoadError(f"the unsloth adapter cannot start: import unsloth raised "
                                   f"NotImplementedError: {exc}") from exc

    def versions(self) -> dict[str, str]:
        return library_versions("unsloth", "unsloth_zoo", "transformers", "peft", "trl", "torch")

    def load_model(self, spec: RunSpec, values: Mapping[str, Any]) -> tuple[Any, Any]:
        from unsloth import FastLanguageModel
        from unsloth.tokenizer_utils import add_new_tokens  # (unsloth_zoo's; `from unsloth import add_new_tokens` before)

        model, tok = FastLanguageModel.from_pretrained(str(spec.model_dir), **load_kwargs(values, self.dtype))
        if values.get("new_special_tokens"):
            add_new_tokens(model, tok, new_tokens=list(values["new_special_tokens"]))
        return model, tok

    def add_lora(self, model: Any, values: Mapping[str, Any]) -> Any:
        from unsloth import FastLanguageModel

        return FastLanguageModel.get_peft_model(model, **peft_kwargs(values))

    def chat_trainer(self, values: Mapping[str, Any], model: Any, tok: Any, targs: Mapping[str, Any],
                     dataset_dir: Path) -> Any:
        """Chat SFT as unsloth's notebooks write it (see the module docstring)."""
        from datasets import Dataset
        from transformers.trainer_callback import PrinterCallback
        from trl import SFTConfig, SFTTrainer
        from unsloth.chat_templates import train_on_responses_only

        from ..kit import chat_as_messages

        data = {name: Dataset.from_list([{"text": tok.apply_chat_template(row["messages"], tokenize=False)}
                                         for row in chat_as_messages(Path(dataset_dir) / f"{name}.jsonl")])
                for name in ("train", "eval")}
        config = {**sft_config_arguments(values, targs), "assistant_only_loss": False, "dataset_text_field": "text"}
        trainer = SFTTrainer(model=model, args=SFTConfig(**config), train_dataset=data["train"],
                             eval_dataset=data["eval"], processing_class=tok)
        trainer.remove_callback(PrinterCallback)
        return train_on_responses_only(trainer, instruction_part=TURN_MARKERS[0], response_part=TURN_MARKERS[1])

    def train(self, spec: RunSpec) -> RunResult:
        self.quantization_of[str(Path(spec.output_dir).resolve())] = spec.quantization
        return super().train(spec)

    def merge(self, adapter_dir: Path, output_dir: Path) -> Path:
        """unsloth's ``save_pretrained_merged(..., save_method="merged_16bit")`` on the adapter dir loaded back with
        ``FastLanguageModel.from_pretrained`` (its base quantised as the run's was, when this adapter trained it)."""
        from unsloth import FastLanguageModel

        quant = self.quantization_of.get(str(Path(adapter_dir).resolve()))
        model, tok = FastLanguageModel.from_pretrained(
            str(adapter_dir), **load_kwargs({"quantization": quant, "train_type": "lora"}, self.dtype))
        model.save_pretrained_merged(str(output_dir), tok, save_method="merged_16bit")
        return Path(output_dir)
