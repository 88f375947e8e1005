"""What the oracles read off disk, shared by every family: the weights of a directory (safetensors headers and tensors,
``.bin`` through ``torch.load(weights_only=True)``), the LoRA tensors of an adapter, the losses a run logged, file
fingerprints, and how far two weight sets differ. Nothing here judges; the family modules do.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..hf import dtype_kwargs
from ..layout import (LORA_FILES, adapter_base, lora_dir, read_safetensors_header, run_checkpoint_map, run_checkpoints,
                      weight_files)
from .failure import OracleFailure


def _present_weight_files(directory: Path, seed: str) -> list[Path]:
    """The weight files of a full-model directory; a shard its index lists but the disk lacks is a verdict
    (a truncated save), not a harness error."""
    files = weight_files(directory)
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise OracleFailure(seed, f"{Path(directory).name}: model.safetensors.index.json lists {len(files)} shards, "
                                  f"{len(files) - len(missing)} on disk (missing {missing[:3]}): a truncated save")
    return files


def _header_and_bytes(directory: Path, seed: str = "001") -> tuple[dict[str, dict[str, Any]], int]:
    headers: dict[str, dict[str, Any]] = {}
    data_bytes = 0
    for f in _present_weight_files(directory, seed):
        headers.update(read_safetensors_header(f))
        with open(f, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
        data_bytes += f.stat().st_size - 8 - n
    return headers, data_bytes


_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
                "F8_E4M3": 1, "F8_E5M2": 1}


def _tensor_bytes(meta: Mapping[str, Any]) -> int:
    return math.prod(meta["shape"]) * _DTYPE_BYTES.get(meta["dtype"], 4)


def weights_on_disk(directory: Path, *, seed: str = "001") -> dict[str, Any]:
    """All tensors of a full-model directory (single file or sharded index) via safetensors."""
    from safetensors.torch import load_file

    out: dict[str, Any] = {}
    for f in _present_weight_files(directory, seed):
        out.update(load_file(str(f)))
    return out


def start_weights(model_dir: Path, *, seed: str = "003") -> dict[str, Any]:
    """The weights a run starting from ``model_dir`` starts with (an adapter dir is merged into its base). A saved
    adapter whose ``adapter_config.json`` names no base is a failure of the run that saved it (a user's reload
    cannot find the base either), reported naming the file and key."""
    model_dir = Path(model_dir)
    if not (model_dir / "adapter_config.json").is_file():
        return weights_on_disk(model_dir)
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    try:
        base_dir = adapter_base(model_dir)
    except ConfigError as exc:
        raise OracleFailure(seed, f"the saved adapter cannot be loaded as a user loads it: {exc} (PeftModel."
                                  f"from_pretrained reads the base from that key)") from None
    base = AutoModelForCausalLM.from_pretrained(str(base_dir), **dtype_kwargs(), local_files_only=True)
    merged = PeftModel.from_pretrained(base, str(model_dir)).merge_and_unload()
    return {k: v.detach().clone() for k, v in merged.state_dict().items()}


def losses_by_step(history: Iterable[Mapping[str, Any]], key: str = "loss") -> dict[int, float]:
    return {int(h["step"]): float(h[key]) for h in history if key in h and "step" in h}


def dir_fingerprint(directory: Path) -> dict[str, str]:
    """sha256 of every file under ``directory`` (to prove a base model was left untouched)."""
    directory = Path(directory)
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def _lora_tensors(directory: Path) -> dict[str, Any] | None:
    """The LoRA tensors a directory holds (PEFT's or diffusers' file), or None."""
    from safetensors.torch import load_file

    for name in LORA_FILES:
        if (Path(directory) / name).is_file():
            return load_file(str(Path(directory) / name))
    return None


def _adapter_tensors(directory: Path) -> dict[str, Any]:
    tensors = _lora_tensors(directory)
    if tensors is None:
        raise OracleFailure("002", f"{Path(directory).name}: none of {LORA_FILES} (LoRA weights not saved)")
    return tensors


def final_weights(output_dir: Path, *, seed: str = "resume") -> dict[str, Any]:
    """What a run ended with: its LoRA tensors (final output, else newest checkpoint), or the full model's."""
    output_dir = Path(output_dir)
    lora = _lora_tensors(lora_dir(output_dir))
    if lora is not None:
        return lora
    if weight_files(output_dir):
        return weights_on_disk(output_dir, seed=seed)
    ckpts = run_checkpoints(output_dir)
    if ckpts and weight_files(ckpts[-1]):
        return weights_on_disk(ckpts[-1], seed=seed)
    raise OracleFailure(seed, f"{output_dir.name}: no weights on disk (neither {LORA_FILES} nor a full model)")


def checkpoint_weights(checkpoint: Path, *, seed: str = "resume") -> dict[str, Any]:
    """The LoRA tensors of a checkpoint, or its full model."""
    lora = _lora_tensors(checkpoint)
    return lora if lora is not None else weights_on_disk(checkpoint, seed=seed)


def trained_weights(output_dir: Path, *, seed: str = "resume") -> dict[str, Any]:
    """The state the run trained to: its newest checkpoint's weights (a final save may be a best checkpoint
    reloaded by ``load_best_model_at_end``, even one before a resume point), else its final weights."""
    ckpts = run_checkpoints(output_dir)
    return checkpoint_weights(ckpts[-1], seed=seed) if ckpts else final_weights(output_dir, seed=seed)


def _max_difference(a: Mapping[str, Any], b: Mapping[str, Any], rtol: float, atol: float
                    ) -> tuple[str | None, float, bool]:
    """(worst key, its max abs difference, all within tolerance) over tensors of equal names and shapes."""
    import torch

    worst, worst_diff, close = None, 0.0, True
    for key in sorted(a):
        x, y = a[key].float(), b[key].float()
        diff = (x - y).abs().max().item() if x.numel() else 0.0
        if diff > worst_diff:
            worst, worst_diff = key, diff
        if not torch.allclose(x, y, rtol=rtol, atol=atol):
            close = False
    return worst, worst_diff, close


def stat_fingerprint(directory: Path) -> dict[str, tuple[int, int, int]]:
    """(inode, size, mtime_ns) of every file under ``directory``: a rewrite changes it even when the
    bytes come out the same (a deterministic restart rewrites identical checkpoints)."""
    directory = Path(directory)
    out = {}
    for path in sorted(directory.rglob("*")):
        if path.is_file():
            st = path.stat()
            out[str(path.relative_to(directory))] = (st.st_ino, st.st_size, st.st_mtime_ns)
    return out


def checkpoints_fingerprint(output_dir: Path, up_to_step: int) -> dict[str, Any]:
    """:func:`stat_fingerprint` of every ``checkpoint-N`` with N <= ``up_to_step``."""
    return {c.name: stat_fingerprint(c) for step, c in run_checkpoint_map(output_dir).items() if step <= up_to_step}
