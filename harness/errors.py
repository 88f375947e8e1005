"""One exception hierarchy for everything the harness reports about bad input.

Every message names the file (or directory) and the key or piece that is wrong, what was expected
and what was found, so a user can fix the input without reading a traceback.
"""

from __future__ import annotations

import os

__all__ = [
    "HarnessError",
    "ConfigError",
    "CheckpointError",
    "MissingFileError",
    "CorruptFileError",
    "UnsafeCheckpointError",
    "QuantizationMismatchError",
    "AdapterLoadError",
    "SaveError",
    "ArrangementError",
    "SpecRefused",
]


class HarnessError(Exception):
    """Base class of every error the harness raises on purpose."""


def _short(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class ConfigError(HarnessError, ValueError):
    """A configuration file (args.json, config.json, trainer_state.json, ...) or value is invalid."""

    def __init__(self, file: str | os.PathLike | None, key: str | None, expected: str, found: object = None,
                 *, detail: str | None = None):
        self.file = str(file) if file is not None else None
        self.key = key
        self.expected = expected
        self.found = found
        where = self.file or "<command line>"
        what = f"key {key!r}: " if key is not None else ""
        msg = f"{where}: {what}expected {expected}"
        if detail is not None:
            msg += f", {detail}"
        else:
            msg += f", found {_short(found)}"
        super().__init__(msg)


class CheckpointError(HarnessError):
    """A model or checkpoint directory is not usable."""

    def __init__(self, directory: str | os.PathLike, message: str, file: str | None = None):
        self.directory = str(directory)
        self.file = file
        super().__init__(f"{directory}: {message}")


class MissingFileError(CheckpointError, FileNotFoundError):
    """A required file is absent from a model/checkpoint directory."""

    def __init__(self, directory: str | os.PathLike, file: str, why: str = ""):
        msg = f"missing required file {file!r}" + (f" ({why})" if why else "")
        super().__init__(directory, msg, file)


class CorruptFileError(CheckpointError):
    """A file exists but cannot be parsed (truncated safetensors, invalid JSON, wrong shapes...)."""

    def __init__(self, directory: str | os.PathLike, file: str, why: str):
        super().__init__(directory, f"file {file!r} is broken: {why}", file)


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint file would need arbitrary-code unpickling to load; it is refused."""

    def __init__(self, directory: str | os.PathLike, file: str, why: str):
        super().__init__(directory, f"refusing to load {file!r}: {why}", file)


class QuantizationMismatchError(HarnessError):
    """Resuming with a quantisation other than the one the checkpoint was trained with."""

    def __init__(self, checkpoint: str | os.PathLike, saved: str | None, requested: str | None):
        self.saved = saved
        self.requested = requested
        super().__init__(
            f"{checkpoint}: checkpoint was trained with quantization={saved!r} but the resumed run asks for "
            f"quantization={requested!r}; keep quantisation identical across resume (seed 002), or pass "
            f"allow_quantization_change=true to convert on purpose"
        )


class AdapterLoadError(HarnessError):
    """``--ft-adapter module:Class`` could not be imported or does not satisfy the contract."""


class SpecRefused(ConfigError):
    """The framework cannot express what the scenario asked for (a schedule, a quantisation kind, a cadence it has no
    key for): the adapter refuses the run up front (:func:`harness.kit.refuse`) instead of running something else.
    The cell is red with ``SpecRefused: ... cannot express <key>=<value>`` as its reason: a gap the framework or its
    adapter has, told apart from a wrong result by its name."""

    def __init__(self, framework: str, key: str, value: object, why: str):
        self.framework, self.why = framework, why
        super().__init__(None, key, f"a value {framework} can express", value)
        self.args = (f"{framework} cannot express {key}={value!r} (the scenario's command line): {why}",)


class SaveError(HarnessError, OSError):
    """Writing a checkpoint failed; the previous checkpoints are intact."""

    def __init__(self, path: str | os.PathLike, why: str):
        self.path = str(path)
        super().__init__(f"{path}: could not save checkpoint ({why}); earlier checkpoints were left intact")


class ArrangementError(HarnessError):
    """A scenario could not arrange the precondition of its bug (the best evaluation between two saves, a run
    killed at its kill point): the run cannot show the bug, so the scenario gives no verdict on it. The message
    starts with what was to be arranged and says what happened instead."""

    def __init__(self, message: str):
        super().__init__(f"arrange: {message}")
