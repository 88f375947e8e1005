"""New tokens on disk: the embedding rows a run added and trained are in what it saved, and the saved model scores
the data as the trained one did.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ..hf import dtype_kwargs
from ..layout import run_checkpoints, run_log_history
from .failure import OracleFailure
from .reading import _lora_tensors, _present_weight_files, weights_on_disk


def _embedding_key(tensors: Mapping[str, Any]) -> str | None:
    return next((k for k in sorted(tensors) if k.endswith("embed_tokens.weight")), None)


def _saved_embeddings(directory: Path, seed: str) -> Any:
    """The input-embedding matrix a directory holds: a full model's, or a LoRA adapter's whole-module copy
    (PEFT ``modules_to_save`` / ``save_embedding_layers``); None when it holds none."""
    directory = Path(directory)
    tensors = _lora_tensors(directory) if (directory / "adapter_config.json").is_file() else weights_on_disk(
        directory, seed=seed)
    key = _embedding_key(tensors or {})
    return None if key is None else tensors[key]


def batches_loss(model, batches: Iterable[Mapping[str, Any]]) -> float:
    """The token-mean cross-entropy of ``model`` on collated batches (``Adapter.training_batches``: input ids,
    attention mask, labels aligned with the inputs, -100 where nothing is scored), every scored token weighing the
    same: Trainer's eval loss when the eval set is one batch."""
    import torch

    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for batch in batches:
            ids = torch.tensor(batch["input_ids"])
            logits = model(input_ids=ids, attention_mask=torch.tensor(batch["attention_mask"])).logits.float()
            labels = torch.tensor(batch["labels"])[:, 1:]
            scored = labels != -100
            losses = torch.nn.functional.cross_entropy(logits[:, :-1][scored], labels[scored], reduction="sum")
            total, count = total + losses.item(), count + int(scored.sum())
    return total / max(count, 1)


def assert_embeddings_saved(output_dir: Path, base_dir: Path, eval_batches: list[Mapping[str, Any]], *,
                            new_tokens: tuple[str, ...] = (), rel_tol: float, seed: str = "embeddings") -> None:
    """Tied and resized embeddings survive save and reload. For the final directory of ``output_dir``: the saved
    tokenizer holds ``new_tokens``; a full save's ``config.json`` tie flag agrees with its tensors (tied: no
    ``lm_head.weight`` or one equal to the embeddings; untied: an ``lm_head.weight`` of its own) and its embeddings
    hold a row per token; an adapter of a resized run holds the full-size embeddings; the added tokens' rows differ
    between the first checkpoint and the final save (they were trained); and reloading the final directory — the full
    directory, or the base resized to the saved tokenizer plus the adapter — reproduces the last logged ``eval_loss``
    within ``rel_tol``, scored on ``eval_batches``: the eval set as the framework itself encodes and collates it (its
    template and labels: the loss it logged is over those)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..layout import is_adapter_dir

    output_dir = Path(output_dir)
    evals = {int(h["step"]): float(h["eval_loss"]) for h in run_log_history(output_dir) if "eval_loss" in h}
    if not evals:
        raise OracleFailure(seed, f"{output_dir.name}: no eval_loss logged; nothing to reproduce")
    step = max(evals)
    own = all((output_dir / n).is_file() for n in ("tokenizer.json", "tokenizer_config.json"))
    if not own and is_adapter_dir(output_dir):
        from ..layout import adapter_base

        tok_dir, whose = adapter_base(output_dir), "its base's tokenizer (the adapter holds none)"
    else:
        tok_dir, whose = output_dir, "the saved tokenizer"
    tok = AutoTokenizer.from_pretrained(str(tok_dir), local_files_only=True)
    absent = [t for t in new_tokens if t not in tok.get_vocab()]
    if absent:
        raise OracleFailure(seed, f"{output_dir.name}: {whose} lacks the added tokens {absent} ({len(tok)} tokens): "
                                  f"the model cannot be served with the vocabulary it trained on")
    new_ids = [tok.convert_tokens_to_ids(t) for t in new_tokens]
    adapter = is_adapter_dir(output_dir)
    if not adapter:
        config = json.loads((output_dir / "config.json").read_text(encoding="utf-8"))
        tied = bool(config.get("tie_word_embeddings", config.get("text_config", {}).get("tie_word_embeddings")))
        tensors = weights_on_disk(output_dir, seed=seed)
        head, embed = tensors.get("lm_head.weight"), tensors.get(_embedding_key(tensors) or "")
        if tied and head is not None and embed is not None and not torch.equal(head, embed):
            raise OracleFailure(seed, f"{output_dir.name}: config.json says tie_word_embeddings=true but lm_head.weight "
                                      f"on disk differs from the embeddings by {(head - embed).abs().max().item():.3g}: "
                                      f"a loader ties them and silently drops one (DeepSpeed #1896, peft #2777)")
        if not tied and head is None:
            raise OracleFailure(seed, f"{output_dir.name}: config.json says tie_word_embeddings=false but no "
                                      f"lm_head.weight is on disk: a loader initialises the output head at random "
                                      f"(NeMo Automodel #2571)")
    embed = _saved_embeddings(output_dir, seed)
    if new_tokens and embed is None:
        raise OracleFailure(seed, f"{output_dir.name}: the adapter holds no embedding matrix although the vocabulary "
                                  f"grew by {len(new_tokens)} tokens: the added tokens' trained rows were not saved: "
                                  f"a reload gives them fresh rows (unsloth #9326; PEFT modules_to_save / save_embedding_layers, peft PR #1147)")
    if embed is not None and embed.shape[0] < len(tok):
        raise OracleFailure(seed, f"{output_dir.name}: the saved embeddings have {embed.shape[0]} rows, the saved "
                                  f"tokenizer {len(tok)} tokens: the resized rows were not saved")
    checkpoints = run_checkpoints(output_dir)
    if new_tokens and checkpoints:
        first = _saved_embeddings(checkpoints[0], seed)
        if first is not None and torch.equal(first[new_ids], embed[new_ids]):
            raise OracleFailure(seed, f"{output_dir.name}: the rows of {list(new_tokens)} are identical in "
                                      f"{checkpoints[0].name} and the final save: the added tokens were not trained")
    if adapter:
        from peft import PeftModel

        from ..layout import adapter_base

        base = AutoModelForCausalLM.from_pretrained(str(adapter_base(output_dir)), **dtype_kwargs(),
                                                    local_files_only=True)
        rows = embed.shape[0] if embed is not None else len(tok)  # a framework may pad the vocabulary (LLaMA-Factory: 64)
        if base.get_input_embeddings().weight.shape[0] != rows:
            base.resize_token_embeddings(rows)
        model = PeftModel.from_pretrained(base, str(output_dir))
        how = "base + resize + adapter" if new_tokens else "base + adapter"
    else:
        _present_weight_files(output_dir, seed)
        model = AutoModelForCausalLM.from_pretrained(str(output_dir), **dtype_kwargs(), local_files_only=True)
        how = f"the full directory (config.json tie_word_embeddings={tied})"
    got = batches_loss(model, eval_batches)
    if not math.isclose(got, evals[step], rel_tol=rel_tol):
        raise OracleFailure(seed, f"{output_dir.name}: reloading {how} gives eval_loss {got:.6g}, the run logged "
                                  f"{evals[step]:.6g} at step {step} (relative difference "
                                  f"{abs(got - evals[step]) / abs(evals[step]):.3g} > {rel_tol:g}): what was saved is "
                                  f"not the model that was evaluated")
