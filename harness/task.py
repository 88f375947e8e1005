"""The tiny task every scenario trains, free of any framework: its data pipeline (reading, collating, chat
encoding), the GRPO reward and the eval metrics.

Ground floor: the reference, real-framework adapters and oracles may import it; it imports only
:mod:`harness.spec` (whose :data:`~harness.spec.TASK_DEFAULTS` it re-exports), :mod:`harness.models` and
:mod:`harness.errors`. The transformers / PEFT objects built for the task (quantisation and LoRA configs)
are in :mod:`harness.hf`. Heavy libraries are imported inside the functions that need them.

An adapter for a framework that cannot take these objects (a CLI, a YAML config) uses the same
*values*: :data:`TASK_DEFAULTS` says what every scenario assumes when it leaves a field unset, and
:func:`counting_reward` is the GRPO reward to register with the framework.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import ConfigError, MissingFileError
from .spec import TASK_DEFAULTS

__all__ = [
    "TASK_DEFAULTS",
    "sft_datasets",
    "collate",
    "counting_reward",
    "preferences",
    "accuracy_metrics",
    "is_chat_dataset",
    "chat_messages",
    "encode_chat",
    "template_turn_end",
]

def sft_datasets(dataset_dir: Path, tok) -> tuple[list[dict], list[dict]]:
    """Tokenised train/eval examples (the shipped data has equal lengths: no padding, an exact per-token eval
    loss; the gradient-accumulation scenario's train data varies in length and is padded by :func:`collate`)."""
    from .models import read_texts

    out = []
    for name in ("train", "eval"):
        path = Path(dataset_dir) / f"{name}.jsonl"
        if not path.is_file():
            raise MissingFileError(dataset_dir, path.name, "SFT needs train.jsonl and eval.jsonl")
        if is_chat_dataset(path):  # prompt/completion or messages rows: the chat template, assistant turns supervised
            from .models import read_jsonl

            out.append([encode_chat(tok, chat_messages(row, path, i)) for i, row in enumerate(read_jsonl(path))])
            continue
        rows = []
        for text in read_texts(path):
            ids = tok(text)["input_ids"]
            rows.append({"input_ids": ids, "labels": list(ids)})
        out.append(rows)
    return out[0], out[1]


def collate(batch: list[dict]) -> dict:
    """Stack equal-length examples as they are; pad examples of different lengths on the *right* (the
    tiny tokenizer's ``<pad>``, label -100, attention mask 0), so every real token keeps its position
    and, the model being causal, never sees a pad: a sample's loss does not depend on its batch."""
    import torch

    from .models import SPECIAL_TOKENS

    lengths = {len(x["input_ids"]) for x in batch}
    if len(lengths) == 1:
        return {k: torch.tensor([x[k] for x in batch]) for k in batch[0]}
    width, pad = max(lengths), SPECIAL_TOKENS.index("<pad>")
    out = {"input_ids": [], "labels": [], "attention_mask": []}
    for x in batch:
        n = len(x["input_ids"])
        out["input_ids"].append(list(x["input_ids"]) + [pad] * (width - n))
        out["labels"].append(list(x["labels"]) + [-100] * (width - n))
        out["attention_mask"].append([1] * n + [0] * (width - n))
    return {k: torch.tensor(v) for k, v in out.items()}


def counting_reward(prompts, completions, **_: Any) -> list[float]:
    """Rule-based GRPO reward in [0, 1]: half for completion words from the data vocabulary
    (``w0..w23``), half for continuing the prompt's count. The first half varies even for an untrained
    model, so every group has non-zero advantages and full-parameter GRPO changes every weight.

    Adapters register this function with their framework (TRL's ``reward_funcs``, ms-swift's ``orms``
    plugin registry, ...): it takes TRL's ``(prompts, completions, **kwargs)`` signature."""
    from .models import DATA_WORDS

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


def preferences(dataset_dir: Path) -> list[dict[str, str]]:
    """``preferences.jsonl``'s DPO rows, each a non-empty string ``prompt``, ``chosen`` and ``rejected``; a missing file
    or a row without one of them is a :class:`~harness.errors.ConfigError` naming the file, the line and the key."""
    from .models import read_jsonl

    path = Path(dataset_dir) / "preferences.jsonl"
    if not path.is_file():
        raise MissingFileError(dataset_dir, path.name, "DPO needs prompt / chosen / rejected rows")
    rows = read_jsonl(path)
    for i, row in enumerate(rows):
        for key in ("prompt", "chosen", "rejected"):
            if not isinstance(row, dict) or not isinstance(row.get(key), str) or not row[key].strip():
                raise ConfigError(path, f"line {i + 1}.{key}", "a non-empty string",
                                  row.get(key) if isinstance(row, dict) else row)
    if not rows:
        raise ConfigError(path, None, "at least one prompt / chosen / rejected row", "an empty file")
    return rows


def accuracy_metrics():
    """(preprocess_logits_for_metrics, compute_metrics) for ``eval_accuracy`` (next-token accuracy)."""
    import numpy as np

    def preprocess(logits, labels):
        return logits.argmax(-1)

    def compute(pred):
        preds, labels = pred.predictions[:, :-1], pred.label_ids[:, 1:]
        return {"accuracy": float(np.mean(preds == labels))}

    return preprocess, compute


def is_chat_dataset(path: Path) -> bool:
    """Whether a JSON-lines dataset holds chat rows (``messages``, or ``prompt`` + ``completion``) rather than ``text``."""
    from .models import read_jsonl

    rows = read_jsonl(path) if Path(path).is_file() else []
    return bool(rows) and isinstance(rows[0], dict) and ("messages" in rows[0] or "completion" in rows[0])


def chat_messages(row: Any, path: Path | None = None, index: int = 0) -> list[dict[str, str]]:
    """A chat row as user/assistant messages: ``messages`` as they are, ``prompt``/``completion`` as one exchange."""
    if isinstance(row, dict) and isinstance(row.get("messages"), list):
        messages = row["messages"]
    elif isinstance(row, dict) and isinstance(row.get("prompt"), str) and isinstance(row.get("completion"), str):
        messages = [{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": row["completion"]}]
    else:
        raise ConfigError(path, f"line {index + 1}", "'messages' or 'prompt' + 'completion'", row)
    for m in messages:
        if not isinstance(m, dict) or m.get("role") not in ("user", "assistant", "system") or not isinstance(
                m.get("content"), str):
            raise ConfigError(path, f"line {index + 1}.messages", "{'role': user/assistant/system, 'content': str}", m)
    return messages


def encode_chat(tok, messages: list[dict[str, str]]) -> dict[str, list[int]]:
    """One chat as the model should train on it: the tokenizer's chat template rendered and tokenised once (special
    tokens added only when the template does not already start with the BOS: never two BOS), and every assistant
    turn supervised from its first content token through the template's turn end (``</s>``) inclusive; the prompt,
    the user turns and the assistant headers carry label -100. Each turn's span is found by rendering the chat up to
    that turn (with the generation prompt) and up to its end: the token counts of the two renderings. A template that
    renders a turn otherwise as history than as the last turn (a thinking template strips the reasoning of history
    turns: :data:`harness.models.THINKING_TEMPLATE`, Qwen3's) has no such prefixes; its ``{% generation %}`` markers
    (transformers' ``return_assistant_tokens_mask``) give the assistant tokens of the whole chat instead."""
    def render(part, generation_prompt=False):
        return tok.apply_chat_template(part, tokenize=False, add_generation_prompt=generation_prompt)

    text = render(messages)
    add_special = not (tok.bos_token and text.startswith(tok.bos_token))

    def encode(part: str) -> list[int]:
        return tok(part, add_special_tokens=add_special)["input_ids"]

    ids = encode(text)
    labels = [-100] * len(ids)
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        start, upto = len(encode(render(messages[:i], True))), encode(render(messages[:i + 1]))
        if ids[:len(upto)] != upto or start > len(upto):
            return _encode_by_generation_marks(tok, messages, ids, add_special)
        labels[start:len(upto)] = ids[start:len(upto)]
    return {"input_ids": ids, "labels": labels}


def _encode_by_generation_marks(tok, messages: list[dict[str, str]], ids: list[int], add_special: bool
                                ) -> dict[str, list[int]]:
    """A chat whose template is not prefix-stable: the tokens its ``{% generation %}`` blocks render are the labels."""
    if "{% generation %}" not in (tok.chat_template or "") and "{%- generation %}" not in (tok.chat_template or ""):
        raise ConfigError(None, "chat_template", "a template whose rendering of a chat's first turns is a prefix of the "
                                                 "whole chat's, or one that marks assistant turns with "
                                                 "{% generation %}", tok.chat_template)
    out = tok.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True,
                                  add_special_tokens=add_special)
    if list(out["input_ids"]) != ids:
        raise ConfigError(None, "chat_template", "a template whose tokenised rendering is the text's tokenisation",
                          tok.chat_template)
    return {"input_ids": ids, "labels": [t if m else -100 for t, m in zip(ids, out["assistant_masks"])]}


def template_turn_end(tok) -> int | None:
    """The token id a tokenizer's chat template writes right after an assistant turn's content (its turn end: the EOS
    for the tiny template, ``<|im_end|>`` for ChatML), or None when the template writes nothing after it."""
    content = tok("w2", add_special_tokens=False)["input_ids"]
    text = tok.apply_chat_template([{"role": "user", "content": "w1"}, {"role": "assistant", "content": "w2"}],
                                   tokenize=False)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    for i in range(len(ids) - len(content), -1, -1):
        if ids[i:i + len(content)] == content:
            return ids[i + len(content)] if i + len(content) < len(ids) else None
    return None
