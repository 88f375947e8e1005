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

import json
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["KillPoint", "KillInTraining", "run_killed", "require_killed", "kill_after_checkpoint", "perturb_weights",
           "KILLED", "FINISHED",
           "RAISED", "Mutation", "CrashState", "SaveCrashStates", "crash_states", "run_killed_at_step", "restore_tree",
           "MUTATION_OPS"]

#: :func:`run_killed`'s status when the child died at the kill point (SIGKILL, as ``subprocess`` reports it)
KILLED = -signal.SIGKILL
#: :func:`run_killed`'s status when training finished without reaching the kill point
FINISHED = 3
#: :func:`run_killed`'s status when training raised in the child (its traceback is on stderr)
RAISED = 4

#: True inside a fault-injection child: an adapter that runs training in a process of its own must
#: then die by SIGKILL when that process is killed (see harness.runtime.run_in_fork)
INJECTING = False
#: True inside a fault-injection child whose kill can land inside a save (a :class:`KillPoint`, :func:`crash_states`,
#: :func:`run_killed_at_step`); False where it lands between training steps only (:class:`KillInTraining`), after
#: every save of the child has finished
KILLS_INSIDE_SAVES = False


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
    output_dir = Path(spec.output_dir)
    if isinstance(point, KillInTraining):
        return _run_forked(adapter, spec, lambda: _install_training_kill(output_dir, point), inside_saves=False)
    return _run_forked(adapter, spec, lambda: _install(output_dir, point), inside_saves=True)


def _run_forked(adapter: Any, spec: Any, install: Any, *, inside_saves: bool) -> int:
    """``adapter.train(spec)`` in a forked child, after ``install()`` armed its fault there; the child's status.
    ``inside_saves``: whether the fault can land inside a save (:data:`KILLS_INSIDE_SAVES` in the child)."""
    import traceback

    from .errors import SpecRefused

    sys.stdout.flush()
    sys.stderr.flush()
    refusal_r, refusal_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never return into the caller (pytest) — always _exit
        os.close(refusal_r)
        code = RAISED
        try:
            import torch

            torch.set_num_threads(1)  # OpenMP pools do not survive fork well; one thread is deterministic
            global INJECTING, KILLS_INSIDE_SAVES
            INJECTING, KILLS_INSIDE_SAVES = True, inside_saves
            install()
            adapter.train(spec)
            code = FINISHED
        except SpecRefused as exc:  # the adapter refused the run: the parent raises the same refusal
            os.write(refusal_w, json.dumps([exc.framework, exc.key, repr(exc.found), exc.why]).encode())
        except BaseException:  # noqa: BLE001 - reported through the exit status
            traceback.print_exc()
        finally:
            os._exit(code)
    os.close(refusal_w)
    with os.fdopen(refusal_r, "rb") as pipe:
        refusal = pipe.read()
    _, status = os.waitpid(pid, 0)
    if refusal:  # a refusal is the cell's verdict (a gap), not an arrangement that went wrong
        framework, key, value, why = json.loads(refusal)
        raise SpecRefused(framework, key, _Literal(value), why)
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


class _Literal(str):
    """A value already in its ``repr`` form (a refusal's value, carried out of a forked child as text)."""

    def __repr__(self) -> str:
        return str(self)


def require_killed(status: int, point: KillPoint | KillInTraining | str) -> None:
    """Arrange step: ``status`` (from :func:`run_killed`) must be :data:`KILLED`; otherwise the scenario cannot show its
    bug and :class:`~harness.errors.ArrangementError` says what happened instead."""
    if status == KILLED:
        return
    from .errors import ArrangementError

    what = {FINISHED: "finished without reaching it", RAISED: "raised (traceback in the captured stderr)"}.get(
        status, f"exited with status {status}")
    raise ArrangementError(f"the run was to be killed at {point}, but it {what}")


def kill_after_checkpoint(adapter: Any, spec: Any, k: int) -> Path:
    """Arrange step shared by the resume scenarios: train ``spec`` and SIGKILL it at its first training step after
    checkpoint-``k``; its output dir, whose newest checkpoint is ``k`` (an
    :class:`~harness.errors.ArrangementError` otherwise: a run killed anywhere else cannot show a resume bug)."""
    from .errors import ArrangementError
    from .layout import run_checkpoint_map

    point = KillInTraining(k)
    require_killed(run_killed(adapter, spec, point), point)
    newest = sorted(run_checkpoint_map(spec.output_dir))
    if not newest or newest[-1] != k:
        raise ArrangementError(f"the run was to be killed right after checkpoint-{k}, but the newest checkpoints on "
                               f"disk are {newest}")
    return Path(spec.output_dir)


def _saved(output_dir: Path, step: int) -> bool:
    """Whether the run's checkpoint of ``step`` is on disk, in the layout in use (inherited by the forked child)."""
    from .layout import run_checkpoint_map

    return step in run_checkpoint_map(output_dir)


def _install(output_dir: Path, point: KillPoint) -> None:
    import safetensors.torch as st
    import torch

    state = {"writes": 0, "armed": False}
    if point.in_next_save:
        from .probes import training_forwards

        def arm(_input_ids: Any) -> None:
            if _saved(output_dir, point.after_checkpoint):
                state["armed"] = True

        hook = training_forwards(arm)
        hook.__enter__()  # never left: the child ends with os._exit
        _ARMED.append(hook)

    def should_kill() -> bool:
        # in the next save: armed once, the checkpoint may since be gone (a rotation that makes room first)
        armed = state["armed"] if point.in_next_save else _saved(output_dir, point.after_checkpoint)
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

    _replace_everywhere((torch.save, st.save_file, st.save_model), wrap)


#: the armed training-kill hooks of this (child) process, kept referenced for its lifetime
_ARMED: list[Any] = []


def _install_training_kill(output_dir: Path, point: KillInTraining) -> None:
    from .probes import training_forwards

    def maybe_kill(_input_ids: Any) -> None:
        if _saved(output_dir, point.after_checkpoint):
            os.kill(os.getpid(), signal.SIGKILL)

    hook = training_forwards(maybe_kill)
    hook.__enter__()  # never left: the child ends with os._exit
    _ARMED.append(hook)  # a dropped generator would be closed, removing the hook


# --------------------------------------------------------------------------- every file-system step of a save
#: the file-system mutations :func:`crash_states` records (and so the points a crash is tried at)
MUTATION_OPS = ("mkdir", "open-write", "write-tensors", "rename", "unlink", "rmdir", "link")


@dataclass(frozen=True)
class Mutation:
    """One file-system mutation of a save: ``op`` (one of :data:`MUTATION_OPS`) on ``path`` (relative to the run's
    output dir; ``src -> dst`` for a rename or link), the ``index``-th of the save (1-based)."""

    index: int
    op: str
    path: str

    def __str__(self) -> str:
        return f"#{self.index} {self.op} {self.path}"


@dataclass(frozen=True)
class CrashState:
    """The output dir exactly as a SIGKILL just before ``mutation`` leaves it (a copy, in ``tree``)."""

    mutation: Mutation
    tree: Path


@dataclass(frozen=True)
class SaveCrashStates:
    """What :func:`crash_states` found: the output dir when the save began (``before``) and once it was over
    (``after``), and one :class:`CrashState` per mutation in between, in order."""

    before: Path
    after: Path
    states: tuple[CrashState, ...]


def crash_states(adapter: Any, spec: Any, *, after_checkpoint: int, root: Path) -> SaveCrashStates:
    """Every state a crash inside one save can leave on disk: the save after ``checkpoint-{after_checkpoint}``.

    The idea of ALICE and CrashMonkey (record a program's file-system mutations, then crash at each one), made
    cheap: ``adapter.train(spec)`` runs once, in a forked child, with every file-system mutation under the output dir
    recorded — ``os.mkdir``, ``open`` / ``os.open`` for writing, ``torch.save`` and safetensors' writers (one step
    each: their inner writes are theirs), ``os.rename`` / ``os.replace``, ``os.unlink`` / ``os.remove``,
    ``os.rmdir`` (``shutil.rmtree``, ``copy``, ``move`` and pathlib go through these), ``os.link`` /
    ``os.symlink``. Just before each one the output dir is copied to ``root/NNN``: exactly what a SIGKILL at that
    instant leaves (a killed process loses what it had not yet handed to the kernel, and so does the copy; the page
    cache survives a process kill, so ``fsync`` is not modelled — a power cut is another story). The window opens
    at the first training forward after the checkpoint exists and closes at the first training forward after a
    newer ``checkpoint-N`` exists; the child then copies the finished tree to ``root/after`` and exits, without
    training on. Not seen: writes made by native code with its own ``open`` (tokenizers' ``tokenizer.json``): the
    states around them are.

    Raises :class:`~harness.errors.ArrangementError` when the run raised, finished before such a save was over, or
    made no mutation in it.
    """
    import json
    import shutil

    from .errors import ArrangementError

    root = Path(root)
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    output_dir = Path(spec.output_dir)
    status = _run_forked(adapter, spec, lambda: _install_recorder(output_dir, after_checkpoint, root, kill_at=None),
                         inside_saves=True)
    log = root / "mutations.json"
    if status != FINISHED or not log.is_file():
        what = {FINISHED: "finished before a save after it was over",
                RAISED: "raised (traceback in the captured stderr)"}.get(status, f"exited with status {status}")
        raise ArrangementError(f"every file-system step of the save after checkpoint-{after_checkpoint} was to be "
                               f"recorded, but the run {what}")
    entries = json.loads(log.read_text(encoding="utf-8"))
    if not entries:
        raise ArrangementError(f"the save after checkpoint-{after_checkpoint} made no file-system mutation under "
                               f"{output_dir} that {__name__} sees ({', '.join(MUTATION_OPS)})")
    return SaveCrashStates(before=root / "before", after=root / "after",
                           states=tuple(CrashState(Mutation(**e), root / f"{e['index']:03d}") for e in entries))


def run_killed_at_step(adapter: Any, spec: Any, *, after_checkpoint: int, index: int) -> int:
    """Run ``adapter.train(spec)`` in a forked child SIGKILLed just before the ``index``-th file-system mutation of
    the save after ``checkpoint-{after_checkpoint}`` (counted as :func:`crash_states` counts): a real kill, to show
    that a crash state's copy is what the kill leaves. Returns the child's status, as :func:`run_killed` does."""
    output_dir = Path(spec.output_dir)
    return _run_forked(adapter, spec, lambda: _install_recorder(output_dir, after_checkpoint, None, kill_at=index),
                       inside_saves=True)


def restore_tree(tree: Path, output_dir: Path) -> None:
    """Put ``tree`` (a :class:`CrashState`'s copy) back in place as ``output_dir``, as the crash left it."""
    import shutil

    shutil.rmtree(output_dir, ignore_errors=True)
    shutil.copytree(tree, output_dir, symlinks=True)


def _install_recorder(output_dir: Path, after_checkpoint: int, root: Path | None, *, kill_at: int | None) -> None:
    import builtins
    import io
    import json
    import shutil

    import safetensors.torch as st
    import torch

    from .layout import run_checkpoint_map

    roots = {os.path.abspath(output_dir), os.path.realpath(output_dir)}
    state: dict[str, Any] = {"armed": False, "busy": False, "log": []}
    writes = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

    def relative(path: Any, dir_fd: Any = None) -> str | None:
        """``path`` relative to the output dir, or None when it lies elsewhere (or is a file descriptor)."""
        if isinstance(path, int) or not isinstance(path, (str, bytes, os.PathLike)):
            return None
        text = os.fsdecode(path)
        if dir_fd is not None and not os.path.isabs(text):
            try:
                text = os.path.join(os.readlink(f"/proc/self/fd/{dir_fd}"), text)
            except OSError:
                return None
        text = os.path.abspath(text)
        for top in roots:
            if text.startswith(top + os.sep):
                return os.path.relpath(text, top)
        return None

    def snapshot(name: str) -> None:
        if root is not None:
            shutil.copytree(output_dir, root / name, symlinks=True)

    def step(op: str, path: str | None) -> None:
        """Before a mutation: copy the tree a kill now would leave, then record the mutation."""
        if path is None or state["busy"] or not state["armed"]:
            return
        state["busy"] = True
        try:
            index = len(state["log"]) + 1
            if index == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            if root is not None:
                snapshot(f"{index:03d}")
            state["log"].append({"index": index, "op": op, "path": path})
        finally:
            state["busy"] = False

    def on_forward(_input_ids: Any) -> None:
        if state["busy"]:
            return
        if not state["armed"]:
            if _saved(output_dir, after_checkpoint):
                state["busy"] = True
                snapshot("before")
                state["busy"], state["armed"] = False, True
            return
        if state["log"] and any(k > after_checkpoint for k in run_checkpoint_map(output_dir)):
            state["busy"] = True  # the save is over: keep its end state, and stop here
            snapshot("after")
            if root is not None:
                with real_open(root / "mutations.json", "w", encoding="utf-8") as fh:
                    json.dump(state["log"], fh)
            os._exit(FINISHED)

    real_open = builtins.open

    def recorded_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if any(c in mode for c in "wax+"):
            step("open-write", relative(file))
        return real_open(file, mode, *args, **kwargs)

    builtins.open = io.open = recorded_open  # type: ignore[assignment]

    def recorded(name: str, op: str) -> None:
        real = getattr(os, name)
        two = name in ("rename", "replace", "link", "symlink")

        def call(*args: Any, **kwargs: Any) -> Any:
            if name == "mkdir" and not kwargs.get("dir_fd") and os.path.isdir(args[0]):
                pass  # fails with FileExistsError (os.makedirs(exist_ok=True) asks): nothing changes on disk
            elif name == "open":
                flags = args[1] if len(args) > 1 else kwargs.get("flags", 0)
                if flags & writes:
                    step(op, relative(args[0], kwargs.get("dir_fd")))
            elif two:
                src = relative(args[0], kwargs.get("src_dir_fd"))
                dst = relative(args[1], kwargs.get("dst_dir_fd"))
                if src is not None or dst is not None:
                    step(op, f"{src or os.fsdecode(args[0])} -> {dst or os.fsdecode(args[1])}")
            else:
                step(op, relative(args[0], kwargs.get("dir_fd")))
            return real(*args, **kwargs)

        setattr(os, name, call)

    for name, op in (("mkdir", "mkdir"), ("open", "open-write"), ("rename", "rename"), ("replace", "rename"),
                     ("unlink", "unlink"), ("remove", "unlink"), ("rmdir", "rmdir"), ("link", "link"),
                     ("symlink", "link")):
        recorded(name, op)

    def tensor_writer(original: Any) -> Any:
        def writer(obj: Any, path: Any, *args: Any, **kwargs: Any) -> Any:
            step("write-tensors", relative(path))
            if state["busy"]:
                return original(obj, path, *args, **kwargs)
            state["busy"] = True  # its own open and write are this one step
            try:
                return original(obj, path, *args, **kwargs)
            finally:
                state["busy"] = False

        return writer

    _replace_everywhere((torch.save, st.save_file, st.save_model), tensor_writer)
    from .probes import training_forwards

    hook = training_forwards(on_forward)
    hook.__enter__()  # never left: the child ends with os._exit
    _ARMED.append(hook)


def _replace_everywhere(originals: tuple[Any, ...], wrap: Any) -> None:
    """Replace each of ``originals`` by ``wrap(original)`` wherever a loaded module binds it."""
    replacements = {id(f): wrap(f) for f in originals}
    for module in list(sys.modules.values()):
        namespace = getattr(module, "__dict__", None)
        if not isinstance(namespace, dict):
            continue
        for name, value in list(namespace.items()):
            if id(value) in replacements and any(value is f for f in originals):
                namespace[name] = replacements[id(value)]


#: what :func:`perturb_weights` adds to every floating-point weight
PERTURBATION = 0.05


def perturb_weights(checkpoint: Path, delta: float = PERTURBATION) -> list[Path]:
    """Add ``delta`` to every floating-point tensor of a checkpoint's weights (LoRA files, or the full
    model's files and shards, and the file the adapter under test declares as ``resume_files["weights"]``), rewriting
    them in place; returns the files changed. A run that really
    resumes from this checkpoint must then end elsewhere than one resumed from the original."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    import torch

    from .errors import MissingFileError
    from .layout import LORA_FILES, run_layout, weight_files

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
    # the file the framework's resume reads its weights from, where it is another one (torchtune: adapter_model.pt)
    declared = dict(getattr(run_layout(), "resume_files", {}) or {}).get("weights")
    if declared and (checkpoint / declared).is_file():
        path = checkpoint / declared
        state = torch.load(path, map_location="cpu", weights_only=True)
        torch.save({k: v + delta if torch.is_tensor(v) and v.is_floating_point() else v for k, v in state.items()},
                   path)
        files.append(path)
    return files
