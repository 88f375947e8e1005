"""The tiny task on transformers ``Trainer`` / TRL ``GRPOTrainer`` / ``DPOTrainer``, wired once: the quantisation and
LoRA configs, model loading, training arguments, trainers, merging and re-evaluation of saved directories.

Ground floor: the reference, the plain transformers adapter and LLaMA-Factory's config building take
the same training arguments, model loading and trainer construction from here, so "reference minus
plain transformers" reads as exactly the reference's fixes (validated model directories, its own
checkpoint policy and atomic saves, LoRA resume by name) and nothing else. Heavy imports happen inside
the functions.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .spec import QUANTIZATIONS, kl_beta

__all__ = ["quantization_config", "lora_config", "dtype_kwargs", "training_arguments", "load_causal_lm", "build_trainer",
           "dpo_dataset", "dpo_config_arguments", "kto_config_arguments",
           "merge_lora", "packing_collator", "load_saved", "eval_logits", "evaluate_saved", "chat_collator", "epoch_batches"]


def quantization_config(quantization: str | None, device: str):
    """The transformers quantisation config for one of :data:`harness.spec.QUANTIZATIONS`."""
    if quantization is None:
        return None
    if quantization not in QUANTIZATIONS:
        raise ConfigError(None, "quantization", f"one of {sorted(QUANTIZATIONS)}", quantization)
    import torch

    if quantization == "nf4":
        from transformers import BitsAndBytesConfig

        compute = torch.bfloat16 if device == "cuda" else torch.float32
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute)
    if quantization == "int8":
        from transformers import BitsAndBytesConfig

        return BitsAndBytesConfig(load_in_8bit=True)
    from transformers import QuantoConfig

    return QuantoConfig(weights=QUANTIZATIONS[quantization].weights)


def lora_config(values: dict[str, Any]):
    """PEFT ``LoraConfig`` from resolved values (``lora_rank``, ``lora_alpha``, ``lora_dropout``, ``target_modules``)."""
    from peft import LoraConfig

    tm = values["target_modules"]
    return LoraConfig(r=values["lora_rank"], lora_alpha=values["lora_alpha"], lora_dropout=values["lora_dropout"],
                      target_modules=tm if isinstance(tm, str) else list(tm), task_type="CAUSAL_LM")


def dtype_kwargs(dtype: Any = None) -> dict[str, Any]:
    """``{"dtype": torch.float32}`` for ``from_pretrained``; transformers < 4.56 calls it ``torch_dtype``
    (ms-swift 3.x pins transformers 4.49)."""
    import torch
    import transformers

    major, minor = (int(p) for p in transformers.__version__.split(".")[:2])
    return {"dtype" if (major, minor) >= (4, 56) else "torch_dtype": dtype or torch.float32}


def gradient_checkpointing_arguments(kind: Any) -> dict[str, Any]:
    """``TrainingArguments``' gradient checkpointing keys for ``TASK_DEFAULTS["gradient_checkpointing"]``: none for
    False (off, as by default), else on with ``use_reentrant`` for "reentrant" and not for "non-reentrant"."""
    if not kind:
        return {}
    return {"gradient_checkpointing": True, "gradient_checkpointing_kwargs": {"use_reentrant": kind == "reentrant"}}


def training_arguments(values: Mapping[str, Any], output_dir: Path, device: str) -> dict[str, Any]:
    """``TrainingArguments`` keywords every Trainer-based run of the task shares: the resolved
    hyper-parameters, the save cadence, a loss logged at every step, seeds for the model and the data
    order, CPU or bf16-on-CUDA, no reporting integrations and no progress bars; gradient checkpointing (reentrant
    or not) only when the run asks for it."""
    save_steps = values.get("save_steps") or 0
    bf16 = False
    if device == "cuda":
        import torch

        bf16 = torch.cuda.is_bf16_supported()
    return dict(
        **gradient_checkpointing_arguments(values.get("gradient_checkpointing")), output_dir=str(output_dir), max_steps=values["max_steps"], learning_rate=values["learning_rate"],
        per_device_train_batch_size=values["per_device_train_batch_size"],
        gradient_accumulation_steps=values["gradient_accumulation_steps"],
        lr_scheduler_type=values["lr_scheduler_type"], warmup_steps=values.get("warmup_steps") or 0,
        logging_steps=1, report_to="none",
        use_cpu=device == "cpu", seed=values["seed"], data_seed=values["seed"], bf16=bf16,
        save_strategy="steps" if save_steps else "no", save_steps=save_steps or 500,
        disable_tqdm=True, dataloader_num_workers=0,
    )


def load_causal_lm(model_dir: Path, quantization: str | None, device: str):
    """``AutoModelForCausalLM.from_pretrained`` in float32, quantised as asked (on GPU 0 for CUDA)."""
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {**dtype_kwargs(), "local_files_only": True}
    qcfg = quantization_config(quantization, device)
    if qcfg is not None:
        kwargs["quantization_config"] = qcfg
        if device == "cuda":
            kwargs["device_map"] = {"": 0}
    return AutoModelForCausalLM.from_pretrained(str(model_dir), **kwargs)


def packing_collator(*, position_ids: bool = True):
    """transformers' padding-free packing (``DataCollatorWithFlattening``): a batch becomes one row, each sample's
    first label -100 and, with ``position_ids``, positions restarting per sample — from which transformers'
    masking builds the block-diagonal causal mask (when the forward has no cache; see the reference)."""
    from transformers import DataCollatorWithFlattening

    return DataCollatorWithFlattening(return_position_ids=position_ids)


def dpo_dataset(dataset_dir: Path):
    """``preferences.jsonl`` as TRL's conversational preference rows: the prompt a user turn, each completion an
    assistant turn, so the tokenizer's chat template renders them (as every framework's DPO does)."""
    from datasets import Dataset

    from .task import preferences

    return Dataset.from_list([{"prompt": [{"role": "user", "content": r["prompt"]}],
                               "chosen": [{"role": "assistant", "content": r["chosen"]}],
                               "rejected": [{"role": "assistant", "content": r["rejected"]}]}
                              for r in preferences(Path(dataset_dir))])


def dpo_config_arguments(values: Mapping[str, Any], targs: Mapping[str, Any]) -> dict[str, Any]:
    """TRL ``DPOConfig`` keywords: the Trainer arguments plus ``beta`` and ``loss_type`` as resolved, reference
    log-probs computed at each step (not precomputed), no evaluation, tokenisation in this process."""
    return dict(targs, beta=kl_beta(values), loss_type=values["loss_type"], max_length=64, eval_strategy="no",
                precompute_ref_log_probs=False, dataset_num_proc=None)


def kto_config_arguments(values: Mapping[str, Any], targs: Mapping[str, Any]) -> dict[str, Any]:
    """TRL ``KTOConfig`` keywords: the Trainer arguments plus ``beta`` as resolved and KTO's own loss (``"kto"``, TRL's
    default), the paired rows unpaired by TRL itself (each chosen completion desirable, each rejected one not),
    reference log-probs computed at each step, no evaluation, tokenisation in this process."""
    return dict(targs, beta=kl_beta(values), max_length=64, eval_strategy="no", precompute_ref_log_probs=False,
                dataset_num_proc=None)


def _grpo_reference(trainer, cfg, ref_model):
    """``ref_model`` made ready the way ``GRPOTrainer.__init__`` readies the reference it builds itself: its fused LM
    head (TRL >= 1.x computes log-probs through it; older releases have none), then ``accelerator.prepare_model``."""
    try:
        from trl.trainer.utils import add_fused_lm_head
    except ImportError:  # pragma: no cover - a TRL without the fused head reads the logits
        add_fused_lm_head = None
    if add_fused_lm_head is not None:
        add_fused_lm_head(ref_model, temperature=trainer.temperature,
                          cast_lm_head_to_fp32=getattr(cfg, "cast_lm_head_to_fp32", False))
    return trainer.accelerator.prepare_model(ref_model, evaluation_mode=True)


def build_trainer(values: Mapping[str, Any], model, tok, targs: Mapping[str, Any], dataset_dir: Path, *,
                  callbacks: Sequence[Any] = (), wrap: Callable[[type], type] | None = None, collator: Any = None,
                  ref_model: Any = None):
    """A ``Trainer`` (SFT on train/eval.jsonl, next-token accuracy when the metric asks for it), a TRL
    ``GRPOTrainer`` (prompts.jsonl, :func:`harness.task.counting_reward`; a KL term when ``beta`` > 0) or a TRL
    ``DPOTrainer`` (preferences.jsonl) over ``targs``; ``ref_model``: the reference model of either (None: TRL's own
    choice; GRPOTrainer takes none, so it replaces the one TRL built); ``wrap`` may
    subclass the trainer class (the reference's atomic saves). The per-step printer is removed: the logs
    stay in ``trainer.state.log_history``."""
    from transformers.trainer_callback import PrinterCallback

    from .task import accuracy_metrics, collate, counting_reward, sft_datasets

    wrap = wrap or (lambda cls: cls)
    eval_steps = values.get("eval_steps") or 0
    if values["method"] == "grpo":
        from datasets import Dataset
        from trl import GRPOConfig, GRPOTrainer

        from .models import read_jsonl

        prompts = read_jsonl(Path(dataset_dir) / "prompts.jsonl")
        cfg = GRPOConfig(**targs, num_generations=values["num_generations"],
                         max_completion_length=values["max_completion_length"], beta=kl_beta(values),
                         eval_strategy="no")
        trainer = wrap(GRPOTrainer)(model=model, reward_funcs=counting_reward, args=cfg, processing_class=tok,
                                    train_dataset=Dataset.from_list([{"prompt": r["prompt"]} for r in prompts]),
                                    callbacks=list(callbacks))
        if ref_model is not None and cfg.beta != 0.0:
            trainer.ref_model = _grpo_reference(trainer, cfg, ref_model)
            if "ref" in getattr(model, "peft_config", {}):  # TRL's own copy of a pre-trained adapter, now unused: it
                model.delete_adapter("ref")  # would be saved beside the policy's and expected again at a resume
    elif values["method"] == "dpo":
        from trl import DPOConfig, DPOTrainer

        cfg = DPOConfig(**dpo_config_arguments(values, targs))
        trainer = wrap(DPOTrainer)(model=model, ref_model=ref_model, args=cfg, processing_class=tok, train_dataset=dpo_dataset(Path(dataset_dir)),
                                   callbacks=list(callbacks))
    elif values["method"] == "kto":
        from trl import KTOConfig, KTOTrainer

        cfg = KTOConfig(**kto_config_arguments(values, targs))
        trainer = wrap(KTOTrainer)(model=model, ref_model=ref_model, args=cfg, processing_class=tok,
                                   train_dataset=dpo_dataset(Path(dataset_dir)), callbacks=list(callbacks))
    else:
        from transformers import Trainer, TrainingArguments

        train_ds, eval_ds = sft_datasets(Path(dataset_dir), tok)
        extra: dict[str, Any] = {}
        if values["metric"] == "eval_accuracy":
            extra["preprocess_logits_for_metrics"], extra["compute_metrics"] = accuracy_metrics()
        args = TrainingArguments(**{"eval_strategy": "steps" if eval_steps else "no",
                                    "eval_steps": eval_steps or None, "per_device_eval_batch_size": 8, **targs})
        trainer = wrap(Trainer)(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                                data_collator=collator or collate, processing_class=tok, callbacks=list(callbacks), **extra)
    trainer.remove_callback(PrinterCallback)
    return trainer


def merge_lora(adapter_dir: Path, output_dir: Path, *, scaling: float | None = None) -> Path:
    """PEFT's merge: the base ``adapter_config.json`` names, in float32, plus the adapter, ``merge_and_unload``,
    ``save_pretrained`` with the tokenizer (the adapter dir's, else the base's). ``scaling`` overrides the
    LoRA scale (only a mutant does: the correct one is ``lora_alpha / r``)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .layout import adapter_base

    adapter_dir, output_dir = Path(adapter_dir), Path(output_dir)
    base = adapter_base(adapter_dir)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(base), **dtype_kwargs(),
                                                                           local_files_only=True), str(adapter_dir))
    if scaling is not None:
        for module in model.modules():
            if isinstance(getattr(module, "scaling", None), dict):
                module.scaling = {name: scaling for name in module.scaling}
    merged = model.merge_and_unload()
    merged.save_pretrained(str(output_dir))
    tok_dir = adapter_dir if (adapter_dir / "tokenizer.json").is_file() else base
    AutoTokenizer.from_pretrained(str(tok_dir), local_files_only=True).save_pretrained(str(output_dir))
    return output_dir


def load_saved(directory: Path, quantization: str | None = None, device: str = "cpu"):
    """A saved directory loaded the way a user loads it: ``AutoModelForCausalLM.from_pretrained`` on a full model;
    for an adapter, ``PeftModel.from_pretrained`` on the base its ``adapter_config.json`` names (quantised as the run
    was). Returns ``(model, tokenizer_dir)``: the directory's own tokenizer, else the base's."""
    from .layout import adapter_base, is_adapter_dir

    directory = Path(directory)
    if is_adapter_dir(directory):
        from peft import PeftModel

        base = adapter_base(directory)
        model = PeftModel.from_pretrained(load_causal_lm(base, quantization, device), str(directory))
        return model, directory if (directory / "tokenizer.json").is_file() else base
    return load_causal_lm(directory, None, device), directory


def eval_logits(model, dataset_dir: Path, tokenizer_dir: Path, *, with_ids: bool = False):
    """The model's float32 logits on every ``eval.jsonl`` text, tokenised by ``tokenizer_dir``'s tokenizer (one batch:
    the texts have equal lengths); with ``with_ids``, ``(logits, input_ids)``."""
    import torch
    from transformers import AutoTokenizer

    from .models import read_texts

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
    ids = torch.tensor([tok(t)["input_ids"] for t in read_texts(Path(dataset_dir) / "eval.jsonl")],
                       device=model.device)
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=ids).logits.float()
    return (logits, ids) if with_ids else logits


def evaluate_saved(directory: Path, dataset_dir: Path, quantization: str | None = None,
                   device: str = "cpu") -> dict[str, float]:
    """The harness's evaluation formula, on a saved directory reloaded by :func:`load_saved`: ``eval_loss`` is the
    per-token mean cross-entropy of next-token prediction over every token of ``eval.jsonl``'s texts (no template, no
    EOS; all eval texts have equal length, so it equals Trainer's batch-weighted mean), ``eval_accuracy`` next-token
    accuracy over the same positions: what the reference and plain transformers log (:func:`build_trainer`)."""
    import torch

    model, tok_dir = load_saved(directory, quantization, device)
    logits, ids = eval_logits(model, dataset_dir, tok_dir, with_ids=True)
    pred, target = logits[:, :-1], ids[:, 1:]
    loss = torch.nn.functional.cross_entropy(pred.reshape(-1, pred.shape[-1]), target.reshape(-1)).item()
    return {"eval_loss": loss, "eval_accuracy": (pred.argmax(-1) == target).float().mean().item()}


def chat_collator(tok):
    """transformers' ``DataCollatorForSeq2Seq`` for tokenised chats: pads on the tokenizer's ``padding_side`` with its
    pad token (attention mask 0) and pads the labels with -100 *by position*, so a pad token that is also the EOS
    (Llama recipes set ``pad_token = eos_token``) never unmasks or masks a real token's label."""
    from transformers import DataCollatorForSeq2Seq

    return DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=-100, return_tensors="pt")


def epoch_batches(dataloader) -> list[dict[str, list[list[int]]]]:
    """One epoch of a training dataloader as plain lists: ``input_ids``, ``labels``, ``attention_mask`` per batch (an
    absent attention mask is all ones)."""
    out = []
    for batch in dataloader:
        ids = batch["input_ids"].tolist()
        mask = batch["attention_mask"].tolist() if batch.get("attention_mask") is not None else [[1] * len(r)
                                                                                                  for r in ids]
        out.append({"input_ids": ids, "labels": batch["labels"].tolist(), "attention_mask": mask})
    return out
