"""Safe, atomic file handling for the reference implementation.

* Writes go to a temporary sibling and are renamed into place (``os.replace``) only when complete.
* Pickled torch files are only ever read with ``torch.load(weights_only=True)``; anything that needs
  arbitrary unpickling is refused with :class:`~harness.errors.UnsafeCheckpointError`.
* Model directories are validated up front, so a missing or broken piece is reported by name
  instead of surfacing as a deep ``KeyError`` or a silently random-initialised weight.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ..errors import ConfigError, CorruptFileError, MissingFileError, SaveError
from ..layout import PICKLED_STATE_FILES, TOKENIZER_FILES, read_json, read_safetensors_header, safe_torch_load, weight_files

__all__ = ["atomic_write_text", "atomic_replace_dir", "check_pickled_state", "validate_model_dir"]



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




def check_pickled_state(checkpoint: Path) -> None:
    """Vet every pickled state file in a checkpoint before Trainer touches it."""
    for name in PICKLED_STATE_FILES:
        if name == "training_args.bin":
            continue  # never loaded on resume; only vetted by the hostile-checkpoint scenario
        if (checkpoint / name).is_file():
            safe_torch_load(checkpoint / name)



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
    files = weight_files(model_dir)
    if not files:
        raise MissingFileError(model_dir, "model.safetensors",
                               "no model weights: a full model directory needs model.safetensors or an index")
    for path in files:
        for key, meta in read_safetensors_header(path).items():
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





