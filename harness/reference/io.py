"""Safe, atomic file handling for the reference implementation.

* Writes go to a temporary sibling and are renamed into place (``os.replace``) only when complete.
* Pickled torch files are only ever read with ``torch.load(weights_only=True)``; anything that needs
  arbitrary unpickling is refused with :class:`~harness.errors.UnsafeCheckpointError`.
* Model directories are validated up front, so a missing or broken piece is reported by name
  instead of surfacing as a deep ``KeyError`` or a silently random-initialised weight.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ..errors import ConfigError, CorruptFileError, MissingFileError, SaveError, UnsafeCheckpointError

__all__ = [
    "atomic_write_text",
    "atomic_replace_dir",
    "safe_torch_load",
    "validate_model_dir",
    "list_checkpoints",
    "latest_checkpoint",
    "read_json",
    "TOKENIZER_FILES",
]

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
PICKLED_STATE_FILES = ("optimizer.pt", "scheduler.pt", "rng_state.pth", "scaler.pt", "training_args.bin")


def atomic_write_text(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` via a temp file in the same directory and ``os.replace``."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        try:
            os.unlink(tmp)  # type: ignore[possibly-undefined]
        except (OSError, UnboundLocalError):
            pass
        raise SaveError(path, exc.strerror or str(exc)) from exc
    return path


def atomic_replace_dir(staging: Path, final: Path) -> Path:
    """Move a completely written ``staging`` directory to ``final``.

    If ``final`` exists it is first moved aside, so at every instant either the old or the new
    complete directory is in place under ``final``'s name, never a half-written one.
    """
    staging, final = Path(staging), Path(final)
    try:
        if final.exists():
            aside = final.with_name(f".{final.name}.old-{os.getpid()}")
            os.replace(final, aside)
            os.replace(staging, final)
            shutil.rmtree(aside, ignore_errors=True)
        else:
            os.replace(staging, final)
    except OSError as exc:
        raise SaveError(final, exc.strerror or str(exc)) from exc
    return final


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


def safe_torch_load(path: Path) -> Any:
    """``torch.load(weights_only=True)`` (numpy arrays allowed, as Trainer's RNG state needs);
    a file that needs any other unpickling is refused, never run."""
    import pickle

    import torch

    from transformers.trainer_pt_utils import safe_globals  # numpy RNG state types only

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


def check_pickled_state(checkpoint: Path) -> None:
    """Vet every pickled state file in a checkpoint before Trainer touches it."""
    for name in PICKLED_STATE_FILES:
        if name == "training_args.bin":
            continue  # never loaded on resume; only vetted by the hostile-checkpoint scenario
        if (checkpoint / name).is_file():
            safe_torch_load(checkpoint / name)


def _safetensors_files(model_dir: Path) -> list[str]:
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        data = read_json(index)
        weight_map = data.get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ConfigError(index, "weight_map", "a non-empty mapping of tensor name to shard file", weight_map)
        return sorted(set(weight_map.values()))
    if (model_dir / "model.safetensors").is_file():
        return ["model.safetensors"]
    raise MissingFileError(model_dir, "model.safetensors",
                           "no model weights: a full model directory needs model.safetensors or an index")


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


def validate_model_dir(model_dir: Path, *, need_tokenizer: bool = True) -> dict[str, Any]:
    """Fail fast, naming the directory and file, if ``model_dir`` cannot be loaded on its own.

    Checks config.json (present, JSON, has model_type), weights (present, readable headers, shapes
    fitting the config), and the tokenizer files. Returns the parsed config.
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise MissingFileError(model_dir.parent, model_dir.name, "model directory does not exist")
    config = read_json(model_dir / "config.json")
    if not isinstance(config.get("model_type"), str):
        raise ConfigError(model_dir / "config.json", "model_type", "a model type string", config.get("model_type"))
    shapes: dict[str, tuple[int, ...]] = {}
    for name in _safetensors_files(model_dir):
        for key, meta in read_safetensors_header(model_dir / name).items():
            shapes[key] = meta["shape"]
    _check_shapes_fit_config(model_dir, config, shapes)
    if need_tokenizer:
        for name in TOKENIZER_FILES:
            if not (model_dir / name).is_file():
                raise MissingFileError(model_dir, name, "the tokenizer is not saved with the model")
    return config


def _check_shapes_fit_config(model_dir: Path, config: dict[str, Any], shapes: dict[str, tuple[int, ...]]) -> None:
    vocab, hidden = config.get("vocab_size"), config.get("hidden_size")
    for key, shape in shapes.items():
        if key.endswith("embed_tokens.weight") and isinstance(vocab, int) and isinstance(hidden, int):
            if tuple(shape) != (vocab, hidden):
                raise CorruptFileError(model_dir, "model.safetensors",
                                       f"{key} has shape {tuple(shape)} but config.json says vocab_size={vocab}, "
                                       f"hidden_size={hidden}")
    n_layers = config.get("num_hidden_layers")
    if isinstance(n_layers, int):
        present = {int(m.group(1)) for k in shapes if (m := re.search(r"layers\.(\d+)\.", k))}
        if present and present != set(range(n_layers)):
            raise CorruptFileError(model_dir, "model.safetensors",
                                   f"weights hold layers {sorted(present)} but config.json says "
                                   f"num_hidden_layers={n_layers}")


def list_checkpoints(output_dir: Path) -> list[Path]:
    """``checkpoint-N`` directories (complete ones only: staging dirs are never named so), by step."""
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
