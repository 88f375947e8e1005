"""Fault injection: kill a training run with SIGKILL at a chosen point, or perturb what it saved.

Kill points: :class:`KillPoint` (inside a checkpoint save, or inside the save after it: the crash scenario) and
:class:`KillInTraining` (the first training forward after ``checkpoint-k`` exists: an interrupted run
for the resume scenarios, observed through :mod:`harness.probes`). :func:`perturb_weights` changes a
checkpoint's weights on disk, so a scenario can prove a resumed run *read* that checkpoint.

The run happens in a forked child of the test process (so torch & co. are not imported again). Before training starts, every checkpoint writer the ecosystem uses —
``torch.save`` and safetensors' ``save_file`` / ``save_model`` — is wrapped *wherever it is bound*
(every module attribute that is the original function is replaced), so the kill point is
deterministic and adapter-agnostic: the N-th file write that starts after ``checkpoint-{after}``
exists, either before any byte is written or after half of the file is on disk.
"""

from __future__ import annotations

import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["KillPoint", "KillInTraining", "run_killed", "require_killed", "perturb_weights", "KILLED", "FINISHED",
           "RAISED"]

#: :func:`run_killed`'s status when the child died at the kill point (SIGKILL, as ``subprocess`` reports it)
KILLED = -signal.SIGKILL
#: :func:`run_killed`'s status when training finished without reaching the kill point
FINISHED = 3
#: :func:`run_killed`'s status when training raised in the child (its traceback is on stderr)
RAISED = 4

#: True inside a fault-injection child: an adapter that runs training in a process of its own must
#: then die by SIGKILL when that process is killed (see harness.runtime.run_in_fork)
INJECTING = False


@dataclass(frozen=True)
class KillPoint:
    after_checkpoint: int  # arm once output_dir/checkpoint-{after_checkpoint} exists
    nth_write: int  # kill at the n-th checkpoint file write after arming (1-based)
    partial: bool  # True: write half the file first; False: kill before writing it
    #: arm only at the first training step after checkpoint-{after_checkpoint} exists: its save is over, so the kill
    #: lands inside the *next* save (also for a framework that writes checkpoint-N in place, whose directory exists
    #: from its first write on)
    in_next_save: bool = False

    def __str__(self) -> str:
        where = "next-save-" if self.in_next_save else ""
        return f"{where}write#{self.nth_write}-{'half-written' if self.partial else 'before-write'}"


@dataclass(frozen=True)
class KillInTraining:
    """SIGKILL at the first training forward that starts after ``checkpoint-{after_checkpoint}`` exists:
    the run dies between steps, as a preempted job does, with checkpoint-k complete and nothing after it."""

    after_checkpoint: int

    def __str__(self) -> str:
        return f"killed-after-checkpoint-{self.after_checkpoint}"


def run_killed(adapter: Any, spec: Any, point: KillPoint | KillInTraining) -> int:
    """Run ``adapter.train(spec)`` in a forked child that SIGKILLs itself at ``point``.

    Returns the child's status as ``subprocess`` reports it: :data:`KILLED` (-9) when the kill point was
    reached, :data:`FINISHED` when training finished without reaching it, :data:`RAISED` when training raised.
    """
    import traceback

    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # child: never return into the caller (pytest) — always _exit
        code = RAISED
        try:
            import torch

            torch.set_num_threads(1)  # OpenMP pools do not survive fork well; one thread is deterministic
            global INJECTING
            INJECTING = True
            if isinstance(point, KillInTraining):
                _install_training_kill(Path(spec.output_dir), point)
            else:
                _install(Path(spec.output_dir), point)
            adapter.train(spec)
            code = FINISHED
        except BaseException:  # noqa: BLE001 - reported through the exit status
            traceback.print_exc()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def require_killed(status: int, point: KillPoint | KillInTraining | str) -> None:
    """Arrange step: ``status`` (from :func:`run_killed`) must be :data:`KILLED`; otherwise the scenario cannot show its
    bug and :class:`~harness.errors.ArrangementError` says what happened instead."""
    if status == KILLED:
        return
    from .errors import ArrangementError

    what = {FINISHED: "finished without reaching it", RAISED: "raised (traceback in the captured stderr)"}.get(
        status, f"exited with status {status}")
    raise ArrangementError(f"the run was to be killed at {point}, but it {what}")


def _install(output_dir: Path, point: KillPoint) -> None:
    import safetensors.torch as st
    import torch

    state = {"writes": 0, "armed": False}
    if point.in_next_save:
        from .probes import training_forwards

        def arm(_input_ids: Any) -> None:
            if (output_dir / f"checkpoint-{point.after_checkpoint}").is_dir():
                state["armed"] = True

        hook = training_forwards(arm)
        hook.__enter__()  # never left: the child ends with os._exit
        _ARMED.append(hook)

    def should_kill() -> bool:
        # in the next save: armed once, the checkpoint may since be gone (a rotation that makes room first)
        armed = state["armed"] if point.in_next_save else (output_dir / f"checkpoint-{point.after_checkpoint}").is_dir()
        if not armed:
            return False
        state["writes"] += 1
        return state["writes"] == point.nth_write

    def die_after_half(path: Any, write) -> None:
        tmp = Path(str(path) + ".fault-full")
        write(tmp)
        data = tmp.read_bytes()
        tmp.unlink()
        with open(path, "wb") as fh:
            fh.write(data[: len(data) // 2])
            fh.flush()
            os.fsync(fh.fileno())
        os.kill(os.getpid(), signal.SIGKILL)

    def wrap(original):
        """``original(obj, path, ...)`` that dies at the kill point (every writer takes (obj, path))."""

        def writer(obj, path, *args, **kwargs):
            if isinstance(path, (str, os.PathLike)) and should_kill():
                if point.partial:
                    die_after_half(path, lambda p: original(obj, str(p), *args, **kwargs))
                os.kill(os.getpid(), signal.SIGKILL)
            return original(obj, path, *args, **kwargs)

        return writer

    originals = (torch.save, st.save_file, st.save_model)
    replacements = {id(f): wrap(f) for f in originals}
    for module in list(sys.modules.values()):
        namespace = getattr(module, "__dict__", None)
        if not isinstance(namespace, dict):
            continue
        for name, value in list(namespace.items()):
            if id(value) in replacements and any(value is f for f in originals):
                namespace[name] = replacements[id(value)]


#: the armed training-kill hooks of this (child) process, kept referenced for its lifetime
_ARMED: list[Any] = []


def _install_training_kill(output_dir: Path, point: KillInTraining) -> None:
    from .probes import training_forwards

    def maybe_kill(_input_ids: Any) -> None:
        if (output_dir / f"checkpoint-{point.after_checkpoint}").is_dir():
            os.kill(os.getpid(), signal.SIGKILL)

    hook = training_forwards(maybe_kill)
    hook.__enter__()  # never left: the child ends with os._exit
    _ARMED.append(hook)  # a dropped generator would be closed, removing the hook


#: what :func:`perturb_weights` adds to every floating-point weight
PERTURBATION = 0.05


def perturb_weights(checkpoint: Path, delta: float = PERTURBATION) -> list[Path]:
    """Add ``delta`` to every floating-point tensor of a checkpoint's weights (LoRA files, or the full
    model's files and shards), rewriting them in place; returns the files changed. A run that really
    resumes from this checkpoint must then end elsewhere than one resumed from the original."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from .errors import MissingFileError
    from .layout import LORA_FILES, weight_files

    checkpoint = Path(checkpoint)
    files = [checkpoint / n for n in LORA_FILES if (checkpoint / n).is_file()] or [
        f for f in weight_files(checkpoint) if f.is_file()]
    if not files:
        raise MissingFileError(checkpoint, "*.safetensors", "no weights to perturb")
    for path in files:
        with safe_open(str(path), framework="pt") as fh:
            metadata = fh.metadata()
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
        tensors = {k: (v + delta if v.is_floating_point() else v).contiguous() for k, v in tensors.items()}
        save_file(tensors, str(path), metadata=metadata)
    return files
