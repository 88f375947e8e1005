"""The unsloth 2026.10.9 column's own causes, each isolated (docs/frameworks.md, "unsloth").

Run in the unsloth env from the repository root: ``.tox/unsloth/bin/python docs/evidence/unsloth_2026_10_9.py CASE``
with CASE one of ``tokens`` (``add_new_tokens`` + the CPU backend's ``get_peft_model``: the new rows are never made
trainable), ``chat`` (the notebook chat recipe on the CPU backend's stock TRL ``SFTTrainer``: a second BOS and a second
EOS) or ``merge`` (``save_pretrained_merged(..., "merged_16bit")`` is an exact merge cast to bfloat16). Each prints
the numbers the column's notes quote. CPU, seconds each after unsloth's import (about 35-55 s).
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import unsloth  # noqa: E402,F401 - first, as its users import it
import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from unsloth import FastLanguageModel  # noqa: E402
from unsloth.tokenizer_utils import add_new_tokens  # noqa: E402

from harness import hf  # noqa: E402
from harness.models import NEW_TOKENS, build_assets, write_token_datasets  # noqa: E402

ROOT = Path(tempfile.mkdtemp(prefix="ft-unsloth-evidence-"))
ASSETS = build_assets(ROOT / "assets", arch="llama", seed=0)
VALUES = dict(max_steps=4, learning_rate=1e-3, per_device_train_batch_size=4, gradient_accumulation_steps=1,
              lr_scheduler_type="constant", warmup_steps=0, seed=0, save_steps=2, eval_steps=0, method="sft",
              metric="eval_loss")


def lora(model):
    return FastLanguageModel.get_peft_model(model, r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                                            lora_dropout=0.0, random_state=0, use_gradient_checkpointing=False)


def tokens() -> None:
    """unsloth's GPU get_peft_model (unsloth/models/llama.py) turns on embed_tokens / lm_head in modules_to_save after
    add_new_tokens ("You added new tokens but did not specify ... We must turn it on for you"); the CPU backend's
    (unsloth_zoo/cpu/loader.py FastCPUModel.get_peft_model) has no such branch: nothing trains the rows."""
    data = write_token_datasets(ROOT / "tokdata")
    model, tok = FastLanguageModel.from_pretrained(str(ASSETS.model_dir), max_seq_length=64, dtype=torch.float32,
                                                   load_in_4bit=False)
    add_new_tokens(model, tok, new_tokens=list(NEW_TOKENS))
    ids = [tok.convert_tokens_to_ids(t) for t in NEW_TOKENS]
    model = lora(model)
    print("new token ids", ids, "of", len(tok), "; flag the GPU path reads:",
          getattr(model.get_base_model(), "_need_to_train_embeddings", None))
    print("trainable embedding parameters:", [n for n, p in model.named_parameters()
                                               if p.requires_grad and ("embed" in n or "lm_head" in n)])
    out = ROOT / "tokens"
    trainer = hf.build_trainer(VALUES, model, tok, hf.training_arguments(VALUES, out, "cpu"), data)
    batch = next(iter(trainer.get_train_dataloader()))["input_ids"]
    print("the first batch holds the new ids", sum(int((batch == i).sum()) for i in ids), "times")
    trainer.train()
    for name in ("checkpoint-2", "checkpoint-4"):
        saved = load_file(out / name / "adapter_model.safetensors")
        rows = {k.split(".")[-2]: v[ids].double().sum().item() for k, v in saved.items() if k.endswith("embed_tokens.weight")
                or k.endswith("lm_head.weight")}
        print(name, "sum of the new rows as saved:", rows)


def chat() -> None:
    """The notebook recipe (apply_chat_template(tokenize=False) -> SFTTrainer(dataset_text_field="text") ->
    train_on_responses_only): the CPU backend's SFTTrainer is TRL's (unsloth_zoo/cpu/trainer.py wraps it for legacy
    keywords and the loss only), so TRL tokenises the rendered text with special tokens (a second BOS) and appends an EOS
    to text that ends in the template's trailing space (a second EOS). unsloth's GPU path replaces that dataset
    preparation (unsloth_zoo/dataset_utils.py sft_prepare_dataset: "We found double BOS tokens - we shall remove one
    automatically.")."""
    from harness.adapter import RunSpec, load_adapter
    from harness.models import write_chat_datasets

    data = write_chat_datasets(ROOT / "chat")
    adapter = load_adapter("unsloth")
    batches = adapter.training_batches(RunSpec(model_dir=ASSETS.model_dir, output_dir=ROOT / "chatrun",
                                               dataset_dir=data, train_type="lora", max_steps=1))
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(ASSETS.model_dir))
    ids, labels = batches[0]["input_ids"][0], batches[0]["labels"][0]
    print("SFTTrainer in use:", __import__("trl").SFTTrainer.__mro__[1].__module__)
    print("trained on:", tok.convert_ids_to_tokens(ids))
    print("labels:    ", [tok.convert_ids_to_tokens(t) if t != -100 else "-" for t in labels])


def merge() -> None:
    """The CPU backend merges in float32 (merge_and_unload) and casts to bfloat16 for "merged_16bit"; the whole
    logit gap the merge oracle measured is that cast."""
    model, tok = FastLanguageModel.from_pretrained(str(ASSETS.model_dir), max_seq_length=64, dtype=torch.float32,
                                                   load_in_4bit=False)
    model = lora(model)
    out = ROOT / "merge"
    hf.build_trainer(VALUES, model, tok, hf.training_arguments(VALUES, out, "cpu"), ASSETS.dataset_dir).train()
    model.save_pretrained_merged(str(ROOT / "merged"), tok, save_method="merged_16bit")
    saved = load_file(ROOT / "merged" / "model.safetensors")
    print("merged_16bit dtypes on disk:", sorted({str(v.dtype) for v in saved.values()}))
    trained = hf.eval_logits(model, ASSETS.dataset_dir, ROOT / "merged")
    own = model.merge_and_unload()  # PEFT's merge, float32
    exact = hf.eval_logits(own, ASSETS.dataset_dir, ROOT / "merged")
    served = hf.eval_logits(hf.load_saved(ROOT / "merged")[0], ASSETS.dataset_dir, ROOT / "merged")
    rounded = hf.eval_logits(own.to(torch.bfloat16).to(torch.float32), ASSETS.dataset_dir, ROOT / "merged")
    print(f"float32 merge vs trained: {(exact - trained).abs().max().item():.3g}; merged_16bit dir vs trained: "
          f"{(served - trained).abs().max().item():.3g}; merged_16bit dir vs the float32 merge rounded to bfloat16: "
          f"{(served - rounded).abs().max().item():.3g}")


if __name__ == "__main__":
    {"tokens": tokens, "chat": chat, "merge": merge}[sys.argv[1]]()
