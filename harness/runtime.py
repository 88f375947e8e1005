"""How a framework's training runs inside the harness's process: threads, versions, the fork runner.

Ground floor: the reference and every adapter may import it; it imports no other harness room.

The process-model rules an adapter follows (:mod:`harness.kit` and docs/adapters.md, "The process-model rules", have
the long form):

* train in this process, or in a fork of it (:func:`run_in_fork`): both keep the already-imported libraries, and
  fault injection can kill the run at a file write or a training step. A framework run in a *subprocess* cannot be
  killed there: its adapter sets ``launches_subprocess = True`` and the scenarios needing ``in-process`` skip.
* limit torch to one thread for tiny CPU runs (:func:`cpu_threads`): a forked child with a full
  OpenMP pool can deadlock, and one thread is faster at this size and identical on every machine.
* a child killed by SIGKILL while fault injection is on must kill the parent the same way
  (:func:`run_in_fork` does it), so the crash scenario sees the kill it asked for; any other death or exception in
  the child is a :class:`FrameworkError`.
* import the framework once, in the parent, before forking: every forked run then starts with it imported.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

__all__ = ["FrameworkError", "run_in_fork", "cpu_threads", "library_versions"]


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
    faults = sys.modules.get("harness.faults")
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig == signal.SIGKILL and faults is not None and faults.INJECTING:
            os.kill(os.getpid(), signal.SIGKILL)  # a fault-injection kill point: die the same way
        raise FrameworkError(f"the training process died with signal {sig}")
    if faults is not None and faults.INJECTING and os.WEXITSTATUS(status) == faults.FINISHED and not message:
        # the crash-state recorder ended training once the save it records was over (``os._exit(FINISHED)`` in the
        # training process): end the same way, so its forked parent reads the recording, not a framework error
        os._exit(faults.FINISHED)
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


def quanto_extension_pending() -> str | None:
    """A note when optimum-quanto's C++ extension (``quanto_cpp``, used by the quanto-int4 kinds) is not yet built
    for the installed torch: its first use compiles it with no output (35 s alone on 2 cores, measured 2026-12-02; about
    2 minutes beside other work, issue 31's framework envs). ``None`` when
    quanto is not installed or the build is there. Looks on disk only (neither quanto nor torch is imported)."""
    from importlib.metadata import PackageNotFoundError, version
    from importlib.util import find_spec

    try:
        spec = find_spec("optimum.quanto")
        torch_version = version("torch")
    except (ImportError, PackageNotFoundError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    build = Path(list(spec.submodule_search_locations)[0]) / "library" / "extensions" / "cpp" / "build"
    stamp = build / "pytorch_version.txt"
    if stamp.is_file() and stamp.read_text(encoding="utf-8").strip() == torch_version:
        return None
    return (f"optimum-quanto's C++ extension is not built for torch {torch_version} ({build}): the first quanto "
            "scenario compiles it with no output, 35 s to 2 minutes on 2 cores, once per environment")
