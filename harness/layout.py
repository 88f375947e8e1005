"""What a Hugging Face training run looks like on disk: read-only knowledge, no judgement.

Ground floor: everyone may import this module (oracles, the reference, real-framework adapters,
scenarios) and it imports no other harness room except :mod:`harness.errors`. It knows file names
and formats — ``checkpoint-N`` directories, safetensors headers and sharded indexes, PEFT and
diffusers LoRA files, ``adapter_config.json``'s base, ``trainer_state.json`` — and reads them
safely (safetensors, ``torch.load(weights_only=True)``). Whether what it reads is *right* is for
:mod:`harness.oracles` to decide; how to *write* it is each implementation's business.

A framework that lays its runs out otherwise declares where its checkpoints and its log are (the contract's
``checkpoints`` / ``log_history`` / ``log_keys``); the ``run_*`` readers at the end of this module follow the layout in
use (:func:`use_layout`), and the oracles read every run through them.
"""

from __future__ import annotations

import contextlib
import json
import numbers
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

from .errors import ConfigError, CorruptFileError, MissingFileError, UnsafeCheckpointError

__all__ = [
    "CHECKPOINT_RE",
    "TOKENIZER_FILES",
    "LORA_FILES",
    "PICKLED_STATE_FILES",
    "ADAPTER_CONFIG",
    "list_checkpoints",
    "latest_checkpoint",
    "step_of",
    "read_json",
    "read_safetensors_header",
    "weight_files",
    "safe_torch_load",
    "is_adapter_dir",
    "adapter_base",
    "lora_dir",
    "read_log_history",
    "LOG_SCHEMA",
    "RunLayout",
    "TrainerLayout",
    "TRAINER_LAYOUT",
    "use_layout",
    "run_layout",
    "trainer_default",
    "uses_trainer_checkpoints",
    "run_checkpoint_map",
    "run_checkpoints",
    "run_checkpoint",
    "run_step_of",
    "run_log_history",
]

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
#: where a LoRA lives: PEFT's file, or diffusers' (SimpleTuner)
LORA_FILES = ("adapter_model.safetensors", "pytorch_lora_weights.safetensors")
ADAPTER_CONFIG = "adapter_config.json"
#: pickled files Trainer writes into a checkpoint (read only with weights_only=True)
PICKLED_STATE_FILES = ("optimizer.pt", "scheduler.pt", "rng_state.pth", "scaler.pt", "training_args.bin")


# --------------------------------------------------------------------------- checkpoints
def list_checkpoints(output_dir: Path) -> list[Path]:
    """``checkpoint-N`` directories of ``output_dir``, by step (none if the directory is absent)."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in output_dir.iterdir() if p.is_dir() and (m := CHECKPOINT_RE.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(output_dir: Path) -> Path | None:
    ckpts = list_checkpoints(output_dir)
    return ckpts[-1] if ckpts else None


def step_of(checkpoint: Path) -> int:
    m = CHECKPOINT_RE.match(Path(checkpoint).name)
    if not m:
        raise ValueError(f"{checkpoint} is not a checkpoint-N directory")
    return int(m.group(1))


# --------------------------------------------------------------------------- files
def read_json(path: Path, what: str = "a JSON object") -> dict[str, Any]:
    """Read a JSON object file; errors name the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MissingFileError(path.parent, path.name) from None
    except UnicodeDecodeError:
        raise CorruptFileError(path.parent, path.name, "not UTF-8 text") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CorruptFileError(path.parent, path.name, f"invalid JSON ({exc.msg} at line {exc.lineno})") from None
    except RecursionError:
        raise CorruptFileError(path.parent, path.name, "JSON nested too deeply") from None
    if not isinstance(data, dict):
        raise ConfigError(path, None, what, detail=f"found a JSON {type(data).__name__}")
    return data


def read_safetensors_header(path: Path) -> dict[str, dict[str, Any]]:
    """Tensor name -> {dtype, shape} from a safetensors header; corruption is a CorruptFileError."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise MissingFileError(path.parent, path.name)
    size = path.stat().st_size
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
        if len(head) < 8:
            raise CorruptFileError(path.parent, path.name, f"only {size} bytes, shorter than a safetensors header")
        n = int.from_bytes(head, "little")
        if n > size - 8:
            raise CorruptFileError(path.parent, path.name,
                                   f"header claims {n} bytes but the file has only {size - 8} after it (truncated?)")
        with safe_open(str(path), framework="pt") as fh:
            out = {}
            for key in fh.keys():
                sl = fh.get_slice(key)
                out[key] = {"dtype": sl.get_dtype(), "shape": tuple(sl.get_shape())}
        return out
    except CorruptFileError:
        raise
    except Exception as exc:  # safetensors raises its own SafetensorError / OSError variants
        raise CorruptFileError(path.parent, path.name, f"not a valid safetensors file ({exc})") from None


def weight_files(directory: Path) -> list[Path]:
    """The full-model weight files of ``directory``: the shards its ``model.safetensors.index.json``
    lists (whether or not they exist: a missing shard is for the caller to judge), else
    ``model.safetensors``, else none."""
    directory = Path(directory)
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ConfigError(index, "weight_map", "a non-empty mapping of tensor name to shard file", weight_map)
        return [directory / name for name in sorted(set(weight_map.values()))]
    if (directory / "model.safetensors").is_file():
        return [directory / "model.safetensors"]
    return []


def safe_torch_load(path: Path) -> Any:
    """``torch.load(weights_only=True)`` (numpy arrays allowed, as Trainer's RNG state needs);
    a file that needs any other unpickling is refused, never run."""
    import pickle

    import torch

    try:  # numpy RNG state types only; transformers 5 keeps it in trainer_pt_utils, 4.x in trainer
        from transformers.trainer_pt_utils import safe_globals
    except ImportError:
        from transformers.trainer import safe_globals

    path = Path(path)
    try:
        with safe_globals():
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UnsafeCheckpointError(path.parent, path.name,
                                    f"it is not a weights-only file and would need arbitrary unpickling ({first})") from None
    except (RuntimeError, EOFError, ValueError) as exc:
        raise CorruptFileError(path.parent, path.name, f"cannot be read as a torch file ({exc})") from None


# --------------------------------------------------------------------------- adapters
def is_adapter_dir(directory: Path) -> bool:
    """Does ``directory`` hold a PEFT adapter (``adapter_config.json``)?"""
    return (Path(directory) / ADAPTER_CONFIG).is_file()


def adapter_base(adapter_dir: Path) -> Path:
    """The base model an adapter directory names (relative paths resolved against it); a missing or
    unreadable ``adapter_config.json`` or base is a ConfigError naming the file and key."""
    adapter_dir = Path(adapter_dir)
    cfg = adapter_dir / ADAPTER_CONFIG
    try:
        data = json.loads(cfg.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise ConfigError(cfg, None, "a readable adapter_config.json") from None
    base = data.get("base_model_name_or_path") if isinstance(data, dict) else None
    if not isinstance(base, str) or not base:
        raise ConfigError(cfg, "base_model_name_or_path", "the path of the base model", base)
    path = Path(base)
    if not path.is_absolute():
        path = (adapter_dir / path).resolve()
    return path


def lora_dir(output_dir: Path) -> Path:
    """Where a run's final LoRA is: the output dir, or (frameworks that save only checkpoints) the newest checkpoint."""
    output_dir = Path(output_dir)
    if any((output_dir / name).is_file() for name in LORA_FILES):
        return output_dir
    ckpts = run_checkpoints(output_dir)
    return ckpts[-1] if ckpts else output_dir


# --------------------------------------------------------------------------- trainer state
def read_log_history(output_dir: Path) -> list[dict[str, Any]]:
    """The run's log history from trainer_state.json (final output first, else newest checkpoint)."""
    output_dir = Path(output_dir)
    candidates = [output_dir / "trainer_state.json"] + [c / "trainer_state.json" for c in
                                                         reversed(list_checkpoints(output_dir))]
    for path in candidates:
        if path.is_file():
            return list(json.loads(path.read_text(encoding="utf-8")).get("log_history", []))
    raise FileNotFoundError(f"{output_dir}: no trainer_state.json in the output or any checkpoint")


# --------------------------------------------------------------------------- a run's declared layout
#: The log keys the oracles read, each entry of a run's log history a mapping with an integer ``step``: ``loss``
#: (the training loss of that step, a token mean), ``learning_rate`` (after that step's scheduler step), ``grad_norm``
#: (before clipping), ``epoch`` (fractional), ``eval_<metric>`` (an evaluation at that step: ``eval_loss``,
#: ``eval_accuracy``, or the metric's name), and GRPO's ``reward``. Other keys are carried along unread. A framework
#: that logs another name declares ``log_keys`` (harness key -> its key, e.g. ``{"learning_rate": "lr"}``).
LOG_SCHEMA: Mapping[str, str] = {
    "step": "the optimizer step the entry belongs to (an integer >= 0; an entry without one belongs to no step)",
    "loss": "training loss of the step (a number)",
    "learning_rate": "learning rate after the step's scheduler step (a number)",
    "grad_norm": "gradient norm before clipping (a number)",
    "epoch": "fractional epoch (a number)",
    "eval_*": "an evaluation at that step: eval_loss, eval_accuracy, ... (numbers)",
    "reward": "GRPO: mean reward of the step (a number)",
    "rewards/chosen": "DPO: mean implicit reward beta * (log p_policy - log p_reference) of the chosen completions",
    "rewards/rejected": "DPO: the same for the rejected completions",
    "logps/chosen": "DPO: mean summed log-probability of the chosen completions under the policy (TRL's key)",
    "kl": "GRPO with beta > 0: mean per-token KL of the policy to the reference model on the step's completions",
}
_NUMERIC = ("loss", "learning_rate", "grad_norm", "epoch", "reward", "rewards/chosen", "rewards/rejected",
            "logps/chosen", "kl")


class RunLayout(Protocol):
    """Where a run keeps its checkpoints and its log: what the oracles read a run's files through. An adapter is
    one (:class:`harness.adapter.Adapter` has HF Trainer's as defaults); :data:`TRAINER_LAYOUT` is HF Trainer's."""

    log_keys: Mapping[str, str]

    def checkpoints(self, output_dir: Path) -> Mapping[int, Path]: ...

    def log_history(self, output_dir: Path) -> list[Mapping[str, Any]]: ...


class TrainerLayout:
    """HF Trainer's layout: ``output_dir/checkpoint-N`` directories (a dangling link is not one), the log history in
    ``trainer_state.json`` (the final output's, else the newest checkpoint's), the keys as :data:`LOG_SCHEMA` names."""

    log_keys: Mapping[str, str] = {}

    def checkpoints(self, output_dir: Path) -> dict[int, Path]:
        return {step_of(c): c for c in list_checkpoints(output_dir)}

    def log_history(self, output_dir: Path) -> list[dict[str, Any]]:
        return read_log_history(output_dir)


TRAINER_LAYOUT = TrainerLayout()
_ACTIVE: list[Any] = []
#: checkpoint directory -> its step, as the layout in use last declared it (:func:`run_step_of` reads it back)
_STEPS: dict[Path, int] = {}


@contextlib.contextmanager
def use_layout(layout: RunLayout) -> Iterator[RunLayout]:
    """Within the block, the ``run_*`` readers (what the oracles read a run through) follow ``layout``: the pytest
    plugin enters it with the adapter under test, so a framework keeps its own layout instead of faking Trainer's."""
    _ACTIVE.append(layout)
    _STEPS.clear()
    try:
        yield layout
    finally:
        _ACTIVE.remove(layout)
        _STEPS.clear()


def trainer_default(method):
    """Marks a contract default that reads HF Trainer's layout (so :func:`uses_trainer_checkpoints` can tell)."""
    method.trainer_default = True
    return method


def uses_trainer_checkpoints() -> bool:
    """Whether the layout in use keeps HF Trainer's ``checkpoint-N`` directories (its ``checkpoints`` is Trainer's,
    not one a framework declared): only then do Trainer's own files (``trainer_state.json`` per checkpoint) belong
    to the layout."""
    layout = run_layout()
    method = getattr(layout, "checkpoints", None)
    return isinstance(layout, TrainerLayout) or getattr(getattr(method, "__func__", method), "trainer_default", False)


def run_layout() -> RunLayout:
    """The layout in use (the adapter under test's; HF Trainer's outside a scenario run)."""
    return _ACTIVE[-1] if _ACTIVE else TRAINER_LAYOUT


def _declared_checkpoints(output_dir: Path) -> dict[int, Path]:
    layout = run_layout()
    found = layout.checkpoints(Path(output_dir))
    if not isinstance(found, Mapping) or not all(isinstance(k, int) and not isinstance(k, bool) and k >= 0
                                                 for k in found):
        raise ConfigError(Path(output_dir), "checkpoints()", "a mapping of step (int >= 0) -> checkpoint directory",
                          found)
    found = {k: Path(v) for k, v in found.items() if Path(v).is_dir()}
    _STEPS.update({v: k for k, v in found.items()})
    return found


def run_checkpoint_map(output_dir: Path) -> dict[int, Path]:
    """The run's checkpoints, step -> directory in step order, as its layout declares them (absent or dangling ones
    left out): what an oracle reads when it needs both the step and the directory."""
    found = _declared_checkpoints(output_dir)
    return {k: found[k] for k in sorted(found)}


def run_checkpoints(output_dir: Path) -> list[Path]:
    """The run's checkpoint directories by step, as its layout declares them (absent or dangling ones left out)."""
    return list(run_checkpoint_map(output_dir).values())


def run_checkpoint(output_dir: Path, step: int) -> Path:
    """The run's checkpoint of ``step`` (its layout's directory; ``output_dir/checkpoint-<step>`` if none is on disk,
    so a message can still name where it was expected)."""
    return _declared_checkpoints(output_dir).get(step, Path(output_dir) / f"checkpoint-{step}")


def run_step_of(checkpoint: Path) -> int:
    """The step of a checkpoint directory: its layout's, else the ``checkpoint-N`` name's."""
    checkpoint = Path(checkpoint)
    if checkpoint in _STEPS:
        return _STEPS[checkpoint]
    if checkpoint.parent.is_dir():
        _declared_checkpoints(checkpoint.parent)
    return _STEPS[checkpoint] if checkpoint in _STEPS else step_of(checkpoint)


def run_log_history(output_dir: Path) -> list[dict[str, Any]]:
    """The run's log history as its layout gives it, keys renamed to :data:`LOG_SCHEMA`'s by the layout's
    ``log_keys`` and checked: every entry a mapping, its ``step`` (where it has one) an integer, the schema's values
    numbers. A bad entry is a :class:`~harness.errors.ConfigError` naming the entry and the key."""
    layout = run_layout()
    rename = {theirs: ours for ours, theirs in dict(getattr(layout, "log_keys", {}) or {}).items()}
    where = Path(output_dir) / "log_history"
    history: list[dict[str, Any]] = []
    for i, entry in enumerate(layout.log_history(Path(output_dir))):
        if not isinstance(entry, Mapping):
            raise ConfigError(where, f"[{i}]", "a mapping of log keys", entry)
        entry = {rename.get(k, k): v for k, v in entry.items()}
        step = entry.get("step", 0)
        if not isinstance(step, int) or isinstance(step, bool) or step < 0:
            raise ConfigError(where, f"[{i}].step", "an integer step >= 0 (LOG_SCHEMA)", step)
        for key, value in entry.items():
            if (key in _NUMERIC or key.startswith("eval_")) and value is not None and not (
                    isinstance(value, numbers.Number) and not isinstance(value, bool)):
                raise ConfigError(where, f"[{i}].{key}", "a number (LOG_SCHEMA)", value)
        history.append(entry)
    return history
