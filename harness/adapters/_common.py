"""Pieces every real-framework adapter needs: option parsing, the command line without saved files,
dataset conversion into the formats frameworks read, and collecting what a run left on disk.

Nothing here imports a framework; the mapping logic is tested in the default suite without them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..adapter import ResolvedArgs, RunResult, RunSpec
from ..layout import list_checkpoints, read_log_history

__all__ = ["parse_bool", "check_options", "convert_datasets", "collect_result", "checkpoints_in", "chat_as_messages",
           "convert_chat_datasets"]


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def parse_bool(adapter: str, key: str, value: str | bool) -> bool:
    """An adapter option's boolean value (``true/false/1/0/yes/no/on/off``), or a clear error."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise TypeError(f"{adapter} adapter option {key}={value!r}: expected true or false")


def check_options(adapter: str, options: Mapping[str, Any], known: Mapping[str, str]) -> None:
    """Refuse unknown options, listing the known ones with their meaning."""
    unknown = sorted(set(options) - set(known))
    if unknown:
        listing = "; ".join(f"{k}: {v}" for k, v in sorted(known.items())) or "none"
        raise TypeError(f"unknown {adapter} adapter options {unknown} (known: {listing})")


def _turns(text: str) -> dict[str, Any]:
    first, _, rest = text.partition(" ")
    return {"messages": [{"role": "user", "content": first}, {"role": "assistant", "content": rest}]}


def _alpaca(text: str) -> dict[str, Any]:
    first, _, rest = text.partition(" ")
    return {"instruction": first, "output": rest}


def convert_datasets(dataset_dir: Path, out_dir: Path, fmt: str) -> dict[str, Path]:
    """The tiny datasets in a framework's format; returns ``{"train", "eval", "prompts"} -> file``.

    ``fmt``: ``"messages"`` (ms-swift: a user turn holding the first word, the assistant turn the
    rest; prompts as a user turn),
    ``"alpaca"`` (LLaMA-Factory: ``instruction`` the first word, ``output`` the rest; a
    ``dataset_info.json`` naming them ``ft_train`` / ``ft_eval`` is written beside).
    """
    from ..models import read_jsonl, read_texts, write_jsonl

    out_dir = Path(out_dir)
    train, evals = read_texts(Path(dataset_dir) / "train.jsonl"), read_texts(Path(dataset_dir) / "eval.jsonl")
    prompts = [r["prompt"] for r in read_jsonl(Path(dataset_dir) / "prompts.jsonl")]
    if fmt == "messages":
        files = {
            "train": write_jsonl(out_dir / "train.jsonl", [_turns(t) for t in train]),
            "eval": write_jsonl(out_dir / "eval.jsonl", [_turns(t) for t in evals]),
            "prompts": write_jsonl(out_dir / "prompts.jsonl", [{"messages": [{"role": "user", "content": p}]}
                                                               for p in prompts]),
        }
    elif fmt == "alpaca":
        files = {
            "train": write_jsonl(out_dir / "train.jsonl", [_alpaca(t) for t in train]),
            "eval": write_jsonl(out_dir / "eval.jsonl", [_alpaca(t) for t in evals]),
            "prompts": write_jsonl(out_dir / "prompts.jsonl", [{"instruction": p, "output": ""} for p in prompts]),
        }
        info = {f"ft_{name}": {"file_name": path.name, "columns": {"prompt": "instruction", "response": "output"}}
                for name, path in files.items() if name != "prompts"}
        (out_dir / "dataset_info.json").write_text(json.dumps(info, indent=2), encoding="utf-8")
    else:
        raise ValueError(f"unknown dataset format {fmt!r} (messages, alpaca)")
    return files


def checkpoints_in(output_dir: Path) -> list[Path]:
    return list_checkpoints(Path(output_dir)) if Path(output_dir).is_dir() else []


def collect_result(spec: RunSpec, final_dir: Path, resolved: ResolvedArgs | None) -> RunResult:
    """A RunResult from the files on disk (log history from the newest trainer_state.json)."""
    output_dir = Path(spec.output_dir)
    try:
        history = tuple(read_log_history(output_dir))
    except FileNotFoundError:
        history = ()
    return RunResult(output_dir=output_dir, checkpoints=tuple(checkpoints_in(output_dir)), final_dir=Path(final_dir),
                     log_history=history, resolved=resolved)


def chat_as_messages(path: Path) -> list[dict[str, Any]]:
    """A chat dataset (``messages`` or ``prompt``/``completion`` rows) as ``{"messages": [...]}`` rows only: one format
    for the whole file (TRL, ms-swift), a prompt/completion row becoming one user/assistant exchange."""
    from ..models import read_jsonl
    from ..task import chat_messages

    return [{"messages": chat_messages(row, path, i)} for i, row in enumerate(read_jsonl(path))]


def convert_chat_datasets(dataset_dir: Path, out_dir: Path, fmt: str) -> dict[str, Path]:
    """A chat dataset in a framework's format; returns ``{"train", "eval"} -> file``. ``fmt``: ``"messages"`` (ms-swift,
    TRL: ``{"messages": [{"role", "content"}, ...]}``), ``"sharegpt"`` (LLaMA-Factory: the same rows with a
    ``dataset_info.json`` naming them ``ft_train`` / ``ft_eval``, ``formatting: sharegpt`` and OpenAI-style tags)."""
    from ..models import write_jsonl

    out_dir = Path(out_dir)
    files = {name: write_jsonl(out_dir / f"{name}.jsonl", chat_as_messages(Path(dataset_dir) / f"{name}.jsonl"))
             for name in ("train", "eval")}
    if fmt == "sharegpt":
        tags = {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant",
                "system_tag": "system"}
        info = {f"ft_{name}": {"file_name": path.name, "formatting": "sharegpt", "columns": {"messages": "messages"},
                               "tags": tags} for name, path in files.items()}
        (out_dir / "dataset_info.json").write_text(json.dumps(info, indent=2), encoding="utf-8")
    elif fmt != "messages":
        raise ValueError(f"unknown chat dataset format {fmt!r} (messages, sharegpt)")
    return files
