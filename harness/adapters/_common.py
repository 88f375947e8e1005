"""Pieces every real-framework adapter needs: option parsing, the command line without saved files,
dataset conversion into the formats frameworks read, and collecting what a run left on disk.

Nothing here imports a framework; the mapping logic is tested in the default suite without them.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from ..adapter import ResolvedArgs, RunResult, RunSpec, Source

__all__ = ["FrameworkError", "run_in_fork", "library_versions", "parse_bool", "check_options", "plain_resolve",
           "PlainArguments", "cpu_threads", "convert_datasets", "collect_result", "checkpoints_in"]


class FrameworkError(RuntimeError):
    """The framework raised inside its run; the message carries its exception type, message and traceback tail."""


def run_in_fork(fn: Callable[[], Any]) -> None:
    """Run one training in a forked child, as the framework's CLI runs one training per process.

    Frameworks' CLIs run one training per process and may keep module-level state (seeds, registries,
    logging handlers) that an earlier in-process run would leave behind; a fork starts every run from
    the same clean state while keeping the already-imported modules, so no import cost is paid again.
    An exception in the child becomes :class:`FrameworkError` here, naming its type and message.
    Where ``os.fork`` is missing, ``fn`` runs in this process.
    """
    import signal
    import sys
    import traceback

    if not hasattr(os, "fork"):
        fn()
        return
    sys.stdout.flush()
    sys.stderr.flush()
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never return into the caller
        os.close(read_fd)
        code, payload = 0, ""
        try:
            fn()
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            code = 1
            payload = f"{type(exc).__name__}: {exc}\n--- framework traceback (tail) ---\n{traceback.format_exc()[-3000:]}"
        finally:
            with os.fdopen(write_fd, "w", encoding="utf-8") as fh:
                fh.write(payload)
            os._exit(code)
    os.close(write_fd)
    with os.fdopen(read_fd, encoding="utf-8") as fh:
        message = fh.read()
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        faults = sys.modules.get("harness.faults")
        if sig == signal.SIGKILL and faults is not None and faults.INJECTING:
            os.kill(os.getpid(), signal.SIGKILL)  # a fault-injection kill point: die the same way
        raise FrameworkError(f"the training process died with signal {sig}")
    if os.WEXITSTATUS(status) != 0:
        raise FrameworkError(message or f"the training process exited with {os.WEXITSTATUS(status)}")


def library_versions(*names: str) -> dict[str, str]:
    """Installed versions of ``names`` (distribution names), for report headers."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


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


def plain_resolve(cli: Mapping[str, Any], defaults: Mapping[str, Any] | None = None) -> ResolvedArgs:
    """Resolution for a framework that reads no saved argument files: the CLI over the defaults
    (the reference's, unless given)."""
    if defaults is None:
        from ..reference.args import DEFAULTS as defaults
    values, sources = dict(defaults), {k: Source("default") for k in defaults}
    for key, value in cli.items():
        if value is not None:
            values[key], sources[key] = value, Source("cli")
    return ResolvedArgs(values=values, sources=sources)


class PlainArguments:
    """``resolve_args`` for frameworks without saved-argument layering (no ``args`` capability)."""

    def resolve_args(self, cli: Mapping[str, Any], model_dir: Path, resume_dir: Path | None = None) -> ResolvedArgs:
        return plain_resolve(cli)


@contextlib.contextmanager
def cpu_threads(device: str) -> Iterator[None]:
    """One intra-op thread for tiny CPU runs: as fast, identical on every machine, and ``pytest -n N``
    runs N trainings on N cores without oversubscription. A machine setting, not a training fix."""
    import torch

    threads = torch.get_num_threads()
    if device == "cpu":
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


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
    from ..reference.io import list_checkpoints

    return list_checkpoints(Path(output_dir)) if Path(output_dir).is_dir() else []


def collect_result(spec: RunSpec, final_dir: Path, resolved: ResolvedArgs | None) -> RunResult:
    """A RunResult from the files on disk (log history from the newest trainer_state.json)."""
    from ..oracles import read_log_history

    output_dir = Path(spec.output_dir)
    try:
        history = tuple(read_log_history(output_dir))
    except FileNotFoundError:
        history = ()
    return RunResult(output_dir=output_dir, checkpoints=tuple(checkpoints_in(output_dir)), final_dir=Path(final_dir),
                     log_history=history, resolved=resolved)
