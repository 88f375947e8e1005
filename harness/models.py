"""Tiny models, tokenizers and datasets, built locally and deterministically.

Nothing here touches a hub: the tokenizer is a ``tokenizers`` WordLevel model wrapped in
``PreTrainedTokenizerFast``; the models are randomly initialised from a fixed seed; the datasets are
generated from simple counting rules so that a few optimizer steps visibly change the loss.

The datasets are designed for the scenarios:

* ``train.jsonl`` holds *counting-up* sequences (``w3 w4 w5 ...``); ``eval.jsonl`` holds
  *counting-down* sequences. Early training learns the shared unigram distribution (eval loss falls),
  later training learns the "+1" bigram that the eval set contradicts (eval loss rises): the best
  evaluation lands in the middle of a run, not at its end, which is what the best-checkpoint
  scenario (seed 004) needs.
* ``prompts.jsonl`` holds short prompts for GRPO (seed 001).
* ``preferences.jsonl`` holds DPO rows: a counting-up ``prompt``, the ``chosen`` completion continuing the count (what
  ``train.jsonl`` teaches) and the ``rejected`` one counting down (what ``eval.jsonl`` holds): a real preference.

Every file is plain JSON lines so that a real framework's adapter can convert it to its own format.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "ARCHITECTURES",
    "TinyAssets",
    "build_tokenizer",
    "build_model",
    "write_datasets",
    "write_varied_datasets",
    "write_chat_datasets",
    "write_token_datasets",
    "NEW_TOKENS",
    "CHAT_TRAIN",
    "THINKING_TEMPLATE",
    "THINK_TOKENS",
    "THINKING_CHATS",
    "write_thinking_datasets",
    "VARIED_LENGTHS",
    "write_jsonl",
    "read_jsonl",
    "preference_rows",
    "PREFERENCE_ROWS",
    "read_texts",
    "build_assets",
    "VOCAB_WORDS",
]

#: number of content words ``w0 .. w{N-1}`` in the tiny vocabulary
VOCAB_WORDS = 48
SPECIAL_TOKENS = ["<pad>", "<unk>", "<s>", "</s>", "<|user|>", "<|assistant|>"]
#: sequence length (in words) of every SFT example; equal lengths mean no padding, so the eval loss
#: is an exact per-token mean that an oracle can recompute.
SEQ_WORDS = 11

#: the tiny chat template; it starts with the BOS token, as real templates for a BOS-adding tokenizer do (Llama 2/3),
#: so a chat rendered by the template is tokenised *without* adding special tokens (else: two BOS, open-r1 PR #462);
#: ``{% generation %}`` marks each assistant turn through its turn end (TRL's ``assistant_only_loss`` needs the markers)
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for m in messages %}"
    "{% if m['role'] == 'user' %}<|user|> {{ m['content'] }} "
    "{% else %}<|assistant|> {% generation %}{{ m['content'] }} </s>{% endgeneration %} {% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> {% endif %}"
)

#: ``llama-wide``: the llama one with every linear weight a multiple of 16384 elements (hidden 128, intermediate 256,
#: 4 key/value heads), the smallest shape torchao's NF4 quantises (64-element blocks whose scales are quantised in
#: groups of 256 blocks: torchtune's QLoRA asserts "Number of scalers must be divisible by scaler block size" on the
#: 64 x 64 weights of the default one);
#: the reasoning markers of the thinking template (added to the vocabulary as special tokens by ``thinking=True``)
THINK_TOKENS = ("<think>", "</think>")
#: a Qwen3-style thinking template on the tiny format: an assistant turn's reasoning is the ``<think> ... </think>``
#: part of its content; it is rendered only for the turns after the last user turn (the answer being trained or
#: generated), and stripped from the history turns before it, as Qwen3's official template does; the generation
#: prompt with ``enable_thinking=False`` writes an empty think block (the model then answers without reasoning). Not
#: prefix-stable (a turn rendered last keeps its reasoning, rendered as history it loses it), so a chat's assistant
#: tokens come from the ``{% generation %}`` markers, not from rendering its prefixes
THINKING_TEMPLATE = (
    "{{ bos_token }}"
    "{% set ns = namespace(last_query=-1) %}"
    "{% for m in messages %}{% if m['role'] == 'user' %}{% set ns.last_query = loop.index0 %}{% endif %}{% endfor %}"
    "{% for m in messages %}"
    "{% if m['role'] == 'user' %}<|user|> {{ m['content'] }} "
    "{% else %}"
    "{% set content = m['content'] %}{% set reasoning = '' %}"
    "{% if '</think>' in content %}{% set reasoning = content.split('</think>')[0].split('<think>')[-1].strip() %}"
    "{% set content = content.split('</think>')[-1].strip() %}{% endif %}"
    "<|assistant|> {% generation %}{% if loop.index0 > ns.last_query %}<think> {{ reasoning }} </think> {% endif %}"
    "{{ content }} </s>{% endgeneration %} "
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> "
    "{% if enable_thinking is defined and not enable_thinking %}<think> </think> {% endif %}{% endif %}"
)

#: ``qwen3_moe``: a mixture of experts as transformers 5 stores it (``Qwen3MoeForCausalLM``: every layer's experts are
#: one 3-D parameter per projection, ``mlp.experts.gate_up_proj`` / ``down_proj``, routed by ``mlp.gate``), 4 experts, 2
#: per token; saved as Qwen3-MoE checkpoints ship (``output_router_logits: false``, ``router_aux_loss_coef`` 0.001): the
#: router's load-balancing loss is in the loss only where a run turns it on
ARCHITECTURES = ("llama", "qwen2", "llama-wide", "qwen3_moe")


@dataclass(frozen=True)
class TinyAssets:
    """Where the tiny model and its data live on disk."""

    model_dir: Path
    dataset_dir: Path
    arch: str
    seed: int


def build_tokenizer(thinking: bool = False):
    """A WordLevel tokenizer over ``w0..w47`` plus specials, with a chat template; ``thinking``: with
    :data:`THINK_TOKENS` as two more special tokens and :data:`THINKING_TEMPLATE` as the chat template."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for i in range(VOCAB_WORDS):
        vocab[f"w{i}"] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", vocab["<s>"])]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        padding_side="left",
    )
    fast.chat_template = CHAT_TEMPLATE
    if thinking:
        fast.add_tokens(list(THINK_TOKENS), special_tokens=True)
        fast.chat_template = THINKING_TEMPLATE
    return fast


def _config(arch: str, vocab_size: int, tok, tie_word_embeddings: bool = False):
    common = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=tie_word_embeddings,
    )
    if arch == "llama-wide":
        common.update(hidden_size=128, intermediate_size=256, num_key_value_heads=4)
    if arch in ("llama", "llama-wide"):
        from transformers import LlamaConfig

        return LlamaConfig(**common)
    if arch == "qwen2":
        from transformers import Qwen2Config

        return Qwen2Config(**common)
    if arch == "qwen3_moe":
        from transformers import Qwen3MoeConfig

        return Qwen3MoeConfig(**common, head_dim=16, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                              decoder_sparse_step=1, mlp_only_layers=[], output_router_logits=False,
                              router_aux_loss_coef=0.001)
    raise ValueError(f"unknown tiny architecture {arch!r}; expected one of {ARCHITECTURES}")


def build_model(model_dir: str | os.PathLike, arch: str = "llama", seed: int = 0, *,
                tie_word_embeddings: bool = False, thinking: bool = False) -> Path:
    """Create and save a tiny causal LM (+ tokenizer + generation config) in ``model_dir``; ``tie_word_embeddings``:
    one matrix for the input embeddings and the output head (Qwen2-0.5B style; saved without ``lm_head.weight``)."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    model_dir = Path(model_dir)
    tok = build_tokenizer(thinking)
    config = _config(arch, len(tok), tok, tie_word_embeddings)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        do_sample=True,
        max_new_tokens=8,
    )
    model.save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    return model_dir


#: the datasets use only the first DATA_WORDS words, so learning the unigram distribution lowers the
#: eval loss quickly before the train-only bigram starts to raise it again.
DATA_WORDS = 24


def _words(start: int, step: int, n: int = SEQ_WORDS) -> str:
    return " ".join(f"w{(start + step * i) % DATA_WORDS}" for i in range(n))


def write_datasets(dataset_dir: str | os.PathLike, n_train: int = 48, n_eval: int = 16, stride: int = 1,
                   eval_direction: int = -1) -> Path:
    """Write ``train.jsonl`` (counting up, sample *i* from word ``i * stride``), ``eval.jsonl`` (counting down; with
    ``eval_direction=+1`` counting up like the training set), ``prompts.jsonl`` and ``preferences.jsonl``."""
    dataset_dir = Path(dataset_dir)
    dataset_dir.mkdir(parents=True, exist_ok=True)
    train = [{"text": _words(i * stride, +1)} for i in range(n_train)]
    evals = [{"text": _words(7 * i + 3, eval_direction)} for i in range(n_eval)]
    prompts = [{"prompt": _words(i * 5, +1, 4)} for i in range(8)]
    for name, rows in (("train", train), ("eval", evals), ("prompts", prompts), ("preferences", preference_rows())):
        write_jsonl(dataset_dir / f"{name}.jsonl", rows)
    return dataset_dir


#: rows of ``preferences.jsonl``: one batch of the DPO scenarios holds them all, so a step's logged means do not depend
#: on the data order
PREFERENCE_ROWS = 8


def preference_rows(n: int = PREFERENCE_ROWS) -> list[dict[str, str]]:
    """DPO rows: ``prompt`` counts up 4 words from ``3 * i``; ``chosen`` continues the count for 3 words, ``rejected``
    counts down from the prompt's last word (plain strings; an adapter renders them in its framework's format)."""
    rows = []
    for i in range(n):
        start = 3 * i
        rows.append({"prompt": _words(start, +1, 4), "chosen": _words(start + 4, +1, 3),
                     "rejected": _words(start + 2, -1, 3)})
    return rows


#: training-sample lengths (words) of clearly different sizes: batches of 4 mix short and long samples
VARIED_LENGTHS = (2, 11, 3, 10, 4, 11, 2, 9, 3, 11, 5, 8, 2, 10, 3, 11)


def write_varied_datasets(dataset_dir: str | os.PathLike, lengths: tuple[int, ...] = VARIED_LENGTHS,
                          n_eval: int = 4) -> Path:
    """Like :func:`write_datasets`, with ``train.jsonl`` sample *i* counting up for ``lengths[i]`` words: samples
    of clearly different lengths, for scenarios where padding and token weighting matter."""
    dataset_dir = write_datasets(dataset_dir, n_train=len(lengths), n_eval=n_eval)
    write_jsonl(Path(dataset_dir) / "train.jsonl", [{"text": _words(i, +1, n)} for i, n in enumerate(lengths)])
    return Path(dataset_dir)


def build_assets(root: str | os.PathLike, arch: str = "llama", seed: int = 0) -> TinyAssets:
    """Model + tokenizer + datasets under ``root`` (``root/model``, ``root/data``)."""
    root = Path(root)
    model_dir = build_model(root / "model", arch=arch, seed=seed)
    dataset_dir = write_datasets(root / "data")
    return TinyAssets(model_dir=model_dir, dataset_dir=dataset_dir, arch=arch, seed=seed)


def write_jsonl(path: str | os.PathLike, rows: list[dict]) -> Path:
    """Write ``rows`` as JSON lines (creating the parent directory)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def read_texts(path: str | os.PathLike) -> list[str]:
    """The ``text`` of every row of a JSON-lines dataset; a row without a string ``text`` names file and line."""
    from .errors import ConfigError

    texts = []
    for i, row in enumerate(read_jsonl(path)):
        if not isinstance(row, dict) or not isinstance(row.get("text"), str):
            raise ConfigError(path, f"line {i + 1}.text", "a string", row)
        texts.append(row["text"])
    return texts


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Read a JSON-lines file; errors name the file and line."""
    from .errors import ConfigError

    rows = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ConfigError(path, f"line {lineno}", "a JSON object", line.strip()[:60]) from exc
    return rows


#: chat training data for the train/serve format scenarios (issue 21): prompt/completion rows and multi-turn chats of
#: different lengths (so every batch of 4 pads), every row's assistant turns unique (a supervised span names its row)
CHAT_TRAIN: tuple[dict, ...] = (
    {"prompt": "w1 w2", "completion": "w3 w4 w5"},
    {"messages": [{"role": "user", "content": "w6"}, {"role": "assistant", "content": "w7 w8"},
                  {"role": "user", "content": "w9 w10 w11"}, {"role": "assistant", "content": "w12 w13 w14 w15"}]},
    {"prompt": "w16 w17 w18 w19 w20", "completion": "w21"},
    {"messages": [{"role": "user", "content": "w22 w23"}, {"role": "assistant", "content": "w24 w25 w26"}]},
    {"messages": [{"role": "user", "content": "w27"}, {"role": "assistant", "content": "w28"},
                  {"role": "user", "content": "w29"}, {"role": "assistant", "content": "w30 w31"},
                  {"role": "user", "content": "w32 w33"}, {"role": "assistant", "content": "w34"}]},
    {"prompt": "w35", "completion": "w36 w37 w38 w39 w40 w41"},
    {"messages": [{"role": "user", "content": "w42 w43 w44"}, {"role": "assistant", "content": "w45 w46"}]},
    {"prompt": "w47 w0 w1", "completion": "w2 w3"},
)


def write_chat_datasets(dataset_dir: str | os.PathLike) -> Path:
    """Like :func:`write_datasets`, with ``train.jsonl`` and ``eval.jsonl`` holding :data:`CHAT_TRAIN`: rows with
    ``prompt``/``completion`` or ``messages`` (user/assistant turns) instead of ``text``."""
    dataset_dir = write_datasets(dataset_dir, n_train=8, n_eval=4)
    for name in ("train", "eval"):
        write_jsonl(Path(dataset_dir) / f"{name}.jsonl", [dict(r) for r in CHAT_TRAIN])
    return Path(dataset_dir)


#: multi-turn reasoning chats (for :data:`THINKING_TEMPLATE`): every assistant turn reasons in ``<think> ... </think>``
#: before it answers; in the rows of two exchanges the first turn is history (its reasoning stripped), and one answer
#: reasons about nothing (an empty think block)
THINKING_CHATS: tuple[dict, ...] = (
    {"messages": [{"role": "user", "content": "w1 w2"}, {"role": "assistant", "content": "<think> w3 w4 </think> w5 w6"},
                  {"role": "user", "content": "w7"}, {"role": "assistant", "content": "<think> w8 </think> w9 w10"}]},
    {"messages": [{"role": "user", "content": "w11 w12 w13"},
                  {"role": "assistant", "content": "<think> w14 w15 w16 </think> w17"}]},
    {"messages": [{"role": "user", "content": "w18"}, {"role": "assistant", "content": "<think> w19 </think> w20 w21"},
                  {"role": "user", "content": "w22 w23"}, {"role": "assistant", "content": "<think> </think> w24"}]},
    {"messages": [{"role": "user", "content": "w25 w26"},
                  {"role": "assistant", "content": "<think> w27 w28 </think> w29 w30 w31"},
                  {"role": "user", "content": "w32"}, {"role": "assistant", "content": "<think> w33 w34 </think> w35"}]},
)


def write_thinking_datasets(dataset_dir: str | os.PathLike) -> Path:
    """Like :func:`write_chat_datasets`, with :data:`THINKING_CHATS` as ``train.jsonl`` and ``eval.jsonl``."""
    dataset_dir = write_datasets(dataset_dir, n_train=8, n_eval=4)
    for name in ("train", "eval"):
        write_jsonl(Path(dataset_dir) / f"{name}.jsonl", [dict(r) for r in THINKING_CHATS])
    return Path(dataset_dir)


#: special tokens a run adds to the tiny vocabulary (``new_special_tokens``): the embeddings are resized by two rows
NEW_TOKENS = ("<|tool|>", "<|/tool|>")


def write_token_datasets(dataset_dir: str | os.PathLike, tokens: tuple[str, ...] = NEW_TOKENS) -> Path:
    """Like :func:`write_datasets` (equal lengths: an exact per-token eval loss), with ``tokens`` written into every
    train and eval text (words 3 and 8 of 11), so that a run that adds them as special tokens trains their rows and
    its eval loss depends on them."""
    dataset_dir = write_datasets(dataset_dir, n_train=16, n_eval=4)
    for name in ("train", "eval"):
        path = Path(dataset_dir) / f"{name}.jsonl"
        rows = []
        for text in read_texts(path):
            words = text.split()
            words[3], words[8] = tokens[0], tokens[-1]
            rows.append({"text": " ".join(words)})
        write_jsonl(path, rows)
    return Path(dataset_dir)
