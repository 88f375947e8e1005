"""Multi-process training for the reference: ``torchrun`` + FSDP2 (``fully_shard``) through Trainer.

``RunSpec.world_size > 1`` makes the adapter launch itself the standard way::

    python -m torch.distributed.run --nproc_per_node W -m harness.reference.distributed '<payload>'

Each rank re-creates the same adapter class (mutants included) and runs its ``_train`` with
``TrainingArguments(fsdp="full_shard", fsdp_config={"version": 2, ...})`` on the gloo backend, so
the model's parameters are sharded across ranks (each holds its dim-0 chunk) and a checkpoint is
the *consolidated* full state dict (``FULL_STATE_DICT``) written by rank 0. Works on CPU.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from ..adapter import LoraSpec, RunResult, RunSpec

__all__ = ["launch", "is_worker", "world_size", "is_main_process", "barrier"]


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_worker() -> bool:
    return world_size() > 1 and "LOCAL_RANK" in os.environ


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def fsdp_arguments() -> dict[str, Any]:
    return dict(ddp_backend="gloo", fsdp="full_shard",
                fsdp_config={"version": 2, "reshard_after_forward": True, "state_dict_type": "FULL_STATE_DICT"})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spec_to_json(spec: RunSpec) -> dict[str, Any]:
    out = {}
    for f in dataclasses.fields(spec):
        value = getattr(spec, f.name)
        if isinstance(value, Path):
            value = str(value)
        elif isinstance(value, LoraSpec):
            value = dataclasses.asdict(value)
        elif f.name in ("cli", "options"):
            value = dict(value)
        out[f.name] = value
    return out


def _spec_from_json(data: dict[str, Any]) -> RunSpec:
    if data.get("lora") is not None:
        lora = dict(data["lora"])
        if isinstance(lora.get("target_modules"), list):
            lora["target_modules"] = tuple(lora["target_modules"])
        data = {**data, "lora": LoraSpec(**lora)}
    return RunSpec(**data)


def launch(adapter: Any, spec: RunSpec, timeout: float = 900) -> RunResult:
    """Run ``adapter``'s training on ``spec.world_size`` processes; read the result from disk."""
    from ..layout import list_checkpoints, read_log_history

    target = f"{type(adapter).__module__}:{type(adapter).__qualname__}"
    payload = json.dumps({"adapter": target, "spec": _spec_to_json(spec)})
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(spec.world_size),
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
           "-m", "harness.reference.distributed", payload]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-25:])
        raise RuntimeError(f"torchrun with {spec.world_size} processes failed (exit {proc.returncode}):\n{tail}")
    output_dir = Path(spec.output_dir)
    return RunResult(output_dir=output_dir, checkpoints=tuple(list_checkpoints(output_dir)), final_dir=output_dir,
                     log_history=tuple(read_log_history(output_dir)), resolved=None)


def _main(payload: str) -> int:
    from ..adapter import load_adapter

    data = json.loads(payload)
    adapter = load_adapter(data["adapter"])
    adapter.train(_spec_from_json(data["spec"]))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1]))
