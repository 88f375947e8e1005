"""Layered argument resolution: the command line always wins (seed 000).

Priority, highest first::

    cli  >  resumed checkpoint's args.json  >  adapter dir's args.json  >  base-model dir's args.json  >  defaults

* A value of ``None`` in any layer means "not set there"; the highest layer that sets a key wins.
* Every resolved key records its :class:`~harness.adapter.Source`.
* A CLI value that differs from the value the saved files would have given produces a warning that
  names the key, both values and both sources.
* ``load_args=False`` on the command line ignores every saved file.
* Keys a saved file may never set (output_dir, resume paths, device, ...) are dropped from file layers.

:func:`resolve_layers` is the pure, schema-free core that hypothesis fuzzes; :func:`resolve` adds
file discovery, ``load_args`` and validation for the reference's own keys.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..spec import QUANTIZATIONS, TASK_DEFAULTS, ResolvedArgs, Source
from ..errors import ConfigError
from ..layout import adapter_base, is_adapter_dir

__all__ = [
    "ARGS_FILE",
    "DEFAULTS",
    "NEVER_INHERITED",
    "resolve_layers",
    "read_args_file",
    "discover_layers",
    "resolve",
    "validate",
    "same_value",
]

ARGS_FILE = "args.json"

#: The reference's defaults are the task's (one table, in harness.task).
DEFAULTS = TASK_DEFAULTS

#: Keys a saved args.json may never set: where to write, what to resume, which device.
NEVER_INHERITED = frozenset(
    {"output_dir", "resume_from", "resume_from_checkpoint", "device", "load_args", "model_dir",
     "dataset_dir", "world_size", "allow_quantization_change"}
)

_CHOICES: dict[str, tuple[Any, ...]] = {
    "method": ("sft", "grpo", "dpo", "kto", "diffusion"),
    "loss_type": ("sigmoid", "ipo", "hinge"),
    "train_type": ("full", "lora"),
    "quantization": (None, *QUANTIZATIONS),
    "lr_scheduler_type": ("constant", "linear", "cosine"),
    "gradient_checkpointing": (False, "reentrant", "non-reentrant"),
}
_NON_NEGATIVE_INT = ("max_steps", "eval_steps", "save_steps", "save_total_limit", "seed", "warmup_steps")
_POSITIVE_INT = ("per_device_train_batch_size", "gradient_accumulation_steps", "lora_rank",
                 "num_generations", "max_completion_length")
_FLOAT = ("learning_rate", "lora_alpha", "lora_dropout", "router_aux_loss_coef")
_BOOL = ("save_on_best", "load_best_model_at_end", "load_args", "allow_quantization_change", "packing")
_OPTIONAL_BOOL = ("greater_is_better",)


_SIMPLE = (str, int, bool, type(None))


def same_value(a: Any, b: Any) -> bool:
    """Equality that distinguishes ``1``, ``1.0`` and ``True`` (they are different on a command line)."""
    if type(a) is type(b) and type(a) in _SIMPLE:
        return a == b
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)


def resolve_layers(layers: Sequence[tuple[Source, Mapping[str, Any]]]) -> ResolvedArgs:
    """Resolve ``layers`` given highest priority first. Pure: inputs are never mutated.

    The first layer must be the CLI layer (it may be empty); the others are saved files or defaults.
    """
    values: dict[str, Any] = {}
    sources: dict[str, Source] = {}
    saved: dict[str, tuple[Any, Source]] = {}  # what the saved layers alone would give
    for source, layer in layers:
        is_saved = source.kind != "cli" and source.kind != "default"
        for key, value in layer.items():
            if value is None:
                continue
            if key not in values:
                values[key] = value
                sources[key] = source
            if is_saved and key not in saved:
                saved[key] = (value, source)
    warnings = []
    overridden = [k for k in saved if sources[k].kind == "cli"]
    for key in sorted(overridden) if len(overridden) > 1 else overridden:
        if not same_value(values[key], saved[key][0]):
            old, old_src = saved[key]
            warnings.append(
                f"argument {key!r}: command line value {values[key]!r} [cli] overrides saved value "
                f"{old!r} [{old_src}]"
            )
    return ResolvedArgs(values=values, sources=sources, warnings=tuple(warnings))


def read_args_file(path: Path) -> dict[str, Any]:
    """Read one args.json; a malformed file is a :class:`ConfigError` naming the file (and line)."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(path, None, "UTF-8 JSON text", detail=f"found undecodable bytes at offset {exc.start}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(path, None, "valid JSON", detail=f"{exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise ConfigError(path, None, "valid JSON", detail="nesting too deep") from None
    if not isinstance(data, dict):
        raise ConfigError(path, None, "a JSON object at the top level", detail=f"found {type(data).__name__}")
    return {k: v for k, v in data.items() if k not in NEVER_INHERITED}


def discover_layers(model_dir: Path, resume_dir: Path | None = None) -> list[tuple[Source, Path]]:
    """The saved args.json files that apply, highest priority first."""
    found: list[tuple[Source, Path]] = []
    if resume_dir is not None and (resume_dir / ARGS_FILE).is_file():
        found.append((Source("checkpoint", resume_dir / ARGS_FILE), resume_dir / ARGS_FILE))
    model_dir = Path(model_dir)
    if is_adapter_dir(model_dir):
        if (model_dir / ARGS_FILE).is_file():
            found.append((Source("adapter", model_dir / ARGS_FILE), model_dir / ARGS_FILE))
        base = adapter_base(model_dir)
        if (base / ARGS_FILE).is_file():
            found.append((Source("model", base / ARGS_FILE), base / ARGS_FILE))
    elif (model_dir / ARGS_FILE).is_file():
        found.append((Source("model", model_dir / ARGS_FILE), model_dir / ARGS_FILE))
    return found


def _check(key: str, value: Any, file: Path | None) -> None:
    def bad(expected: str) -> ConfigError:
        return ConfigError(file, key, expected, value)

    if key in _CHOICES and value not in _CHOICES[key]:
        raise bad("one of " + ", ".join(repr(c) for c in _CHOICES[key]))
    if key in _NON_NEGATIVE_INT and (type(value) is not int or value < 0):
        raise bad("a non-negative integer")
    if key in _POSITIVE_INT and (type(value) is not int or value <= 0):
        raise bad("a positive integer")
    if key in _FLOAT and (type(value) not in (int, float) or not math.isfinite(value) or value < 0):
        raise bad("a finite non-negative number")
    if key in _BOOL and type(value) is not bool:
        raise bad("true or false")
    if key in _OPTIONAL_BOOL and value is not None and type(value) is not bool:
        raise bad("true, false or null")
    if key == "beta" and value is not None and (type(value) not in (int, float) or not math.isfinite(value) or value < 0):
        raise bad("a finite non-negative number (the KL weight; DPO needs > 0)")
    if key == "metric" and not (isinstance(value, str) and value):
        raise bad("a metric name such as 'eval_loss'")
    if key == "target_modules" and not (
        value == "all-linear" or (isinstance(value, list) and value and all(isinstance(v, str) for v in value))
    ):
        raise bad("'all-linear' or a non-empty list of module names")
    if key == "trainable_parameters":
        if not (isinstance(value, (list, tuple)) and all(isinstance(v, str) and v for v in value)):
            raise bad("a list of regular expressions over parameter names (empty: every parameter trains)")
        for pattern in value:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ConfigError(file, key, "valid regular expressions", pattern,
                                  detail=f"{pattern!r} does not compile: {exc}") from None


def validate(resolved: ResolvedArgs) -> None:
    """Type-check every known key against its source file (CLI values name ``<command line>``); DPO's and KTO's beta
    must be positive (at 0 the reference drops out of the loss and nothing is learned)."""
    for key, value in resolved.values.items():
        src = resolved.sources[key]
        _check(key, value, src.path)
    beta = resolved.values.get("beta")
    method = resolved.values.get("method")
    if method in ("dpo", "kto") and beta is not None and beta == 0:
        raise ConfigError(resolved.sources["beta"].path, "beta", f"a finite positive number for {method.upper()}", beta)


def resolve(cli: Mapping[str, Any], model_dir: Path, resume_dir: Path | None = None,
            *, defaults: Mapping[str, Any] = DEFAULTS) -> ResolvedArgs:
    """The reference's full resolution: discover files, honour ``load_args``, validate, resolve."""
    unknown = set(cli) - set(defaults) - NEVER_INHERITED
    if unknown:
        raise ConfigError(None, sorted(unknown)[0], "a known argument (" + ", ".join(sorted(defaults)) + ")",
                          cli[sorted(unknown)[0]])
    load_args = cli.get("load_args", defaults.get("load_args", True))
    _check("load_args", load_args, None)
    layers: list[tuple[Source, Mapping[str, Any]]] = [(Source("cli"), dict(cli))]
    if load_args:
        for source, path in discover_layers(Path(model_dir), resume_dir):
            layers.append((source, read_args_file(path)))
    layers.append((Source("default"), dict(defaults)))
    resolved = resolve_layers(layers)
    # keys with a None default that nothing set are still part of the result, sourced as default
    values, sources = dict(resolved.values), dict(resolved.sources)
    for key, value in defaults.items():
        if key not in values:
            values[key] = value
            sources[key] = Source("default")
    resolved = ResolvedArgs(values=values, sources=sources, warnings=resolved.warnings)
    validate(resolved)
    return resolved


def write_args_file(directory: Path, resolved: ResolvedArgs, extra: Mapping[str, Any] | None = None) -> Path:
    """Record the resolved arguments in ``directory/args.json`` (as frameworks do), atomically."""
    from .io import atomic_write_text

    data = {k: resolved.values[k] for k in sorted(resolved.values)}
    data.update(extra or {})
    return atomic_write_text(directory / ARGS_FILE, json.dumps(data, indent=2, default=str))
