"""Reading a user's training config into the settings the scenarios are sensitive to.

One reader per framework format, each returning a :class:`UserConfig`: the recognised settings under their
canonical names (the transformers ``TrainingArguments`` names where one exists), each with the key and line it
came from, and every other key listed as not checked.

* ``llamafactory`` — a LLaMA-Factory YAML (``llamafactory-cli train FILE``);
* ``axolotl`` — an axolotl YAML (``axolotl train FILE``);
* ``swift`` — an ms-swift argument list (``swift sft --key value ...``), as a file holding the command line;
* ``transformers`` — a ``TrainingArguments`` JSON (``args.to_json_string()`` or the same keys by hand).

A file that cannot be parsed, or a recognised key whose value has the wrong type, is a :class:`ConfigError`
naming the file, the line and the key.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError

__all__ = ["Setting", "UserConfig", "READERS", "FRAMEWORKS", "read_config"]


@dataclass(frozen=True)
class Setting:
    """One recognised setting: its canonical name, its value as the harness reads it, and where it came from."""

    name: str
    value: Any
    key: str  # the key as the user wrote it ('micro_batch_size', '--quant_bits')
    line: int | None = None

    def __str__(self) -> str:
        return f"{self.key} {_show(self.value)}"


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return str(value)


@dataclass
class UserConfig:
    framework: str
    source: str
    settings: dict[str, Setting] = field(default_factory=dict)
    unchecked: list[str] = field(default_factory=list)  # keys as written, in file order

    def get(self, name: str, default: Any = None) -> Any:
        return self.settings[name].value if name in self.settings else default

    def has(self, name: str) -> bool:
        return name in self.settings

    def cite(self, *names: str) -> str:
        """'eval_steps 50 / save_steps 200': the user's own words for these settings (those present)."""
        return " / ".join(str(self.settings[n]) for n in names if n in self.settings)


# ---------------------------------------------------------------- value types


def _int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("an integer")
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and re.fullmatch(r"[+-]?\d+", value.strip()):
        return int(value)
    if isinstance(value, int):
        return value
    raise ValueError("an integer")


def _steps(value: Any) -> int | float:
    """eval_steps / save_steps: an integer number of steps, or a float ratio of the total (transformers < 1)."""
    try:
        return _int(value)
    except ValueError:
        pass
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError("a number of steps") from None
    if not 0 < number < 1:
        raise ValueError("a number of steps (an integer, or a ratio of the total below 1)")
    return number


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0", "yes", "no"):
        return value.strip().lower() in ("true", "1", "yes")
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise ValueError("true or false")


def _str(value: Any) -> str:
    if isinstance(value, (dict, list)):
        raise ValueError("a string")
    return str(value)


def _opt_str(value: Any) -> str | None:
    """A value whose absence is meaningful: null / None / 'none' / '' are unset."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "null")):
        return None
    return _str(value)


def _names(value: Any) -> list[str]:
    if isinstance(value, str):
        return [v for v in re.split(r"[,\s]+", value.strip()) if v]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise ValueError("a module name or a list of them")


# canonical name -> value type; every reader maps its own keys onto these
TYPES: dict[str, Callable[[Any], Any]] = {
    "eval_strategy": _str, "eval_steps": _steps, "evals_per_epoch": _int,
    "save_strategy": _str, "save_steps": _steps, "saves_per_epoch": _int, "save_total_limit": _int,
    "load_best_model_at_end": _bool, "metric_for_best_model": _str, "greater_is_better": _bool,
    "per_device_train_batch_size": _int, "gradient_accumulation_steps": _int,
    "packing": _bool, "resume_from_checkpoint": _opt_str, "auto_resume": _bool,
    "train_type": _str, "quantization": _opt_str, "lora_target": _names, "load_args": _bool,
}

# framework -> {the key as written: canonical name}
_HF_KEYS = {k: k for k in ("eval_strategy", "eval_steps", "save_strategy", "save_steps", "save_total_limit",
                           "load_best_model_at_end", "metric_for_best_model", "greater_is_better",
                           "per_device_train_batch_size", "gradient_accumulation_steps", "resume_from_checkpoint")}
_HF_KEYS["evaluation_strategy"] = "eval_strategy"  # the name before transformers 4.46
KEYS: dict[str, dict[str, str]] = {
    "transformers": dict(_HF_KEYS),
    "llamafactory": {**_HF_KEYS, "packing": "packing", "neat_packing": "packing", "finetuning_type": "train_type",
                     "quantization_bit": "quantization", "lora_target": "lora_target"},
    "axolotl": {**_HF_KEYS, "micro_batch_size": "per_device_train_batch_size", "evals_per_epoch": "evals_per_epoch",
                "saves_per_epoch": "saves_per_epoch", "sample_packing": "packing", "adapter": "train_type",
                "load_in_4bit": "quantization", "load_in_8bit": "quantization",
                "lora_target_modules": "lora_target", "lora_target_linear": "lora_target",
                "auto_resume_from_checkpoints": "auto_resume"},
    "swift": {**_HF_KEYS, "packing": "packing", "train_type": "train_type", "quant_bits": "quantization",
              "target_modules": "lora_target", "load_args": "load_args"},
}
FRAMEWORKS = tuple(KEYS)


def _normalise(framework: str, key: str, raw: Any) -> tuple[str, Any] | None:
    """(canonical name, value) of one recognised key, or None when the key says nothing (load_in_8bit: false)."""
    name = KEYS[framework][key]
    if framework == "axolotl" and key in ("load_in_4bit", "load_in_8bit"):
        return (name, "nf4" if key == "load_in_4bit" else "int8") if _bool(raw) else None
    if framework == "axolotl" and key == "lora_target_linear":
        return (name, ["all-linear"]) if _bool(raw) else None
    if framework == "axolotl" and key == "adapter":
        kind = _opt_str(raw)
        return name, ("full" if kind is None else kind)
    if name == "quantization" and framework in ("llamafactory", "swift"):
        bits = _opt_str(raw)
        if bits is None:
            return None
        return name, {"4": "nf4", "8": "int8"}.get(str(_int(bits)), f"{bits}-bit")
    if name == "lora_target":
        names = _names(raw)
        return name, ["all-linear" if n in ("all", "all-linear") else n for n in names]
    return name, TYPES[name](raw)


def _where(source: str | Path, line: int | None) -> str:
    """'file:line', the way compilers and pytest name a place in a file."""
    return f"{source}:{line}" if line else str(source)


def _build(framework: str, source: str, pairs: list[tuple[str, Any, int | None]]) -> UserConfig:
    config = UserConfig(framework, source)
    for key, raw, line in pairs:
        bare = key[2:] if key.startswith("--") else key
        if bare not in KEYS[framework]:
            config.unchecked.append(key)
            continue
        try:
            normalised = _normalise(framework, bare, raw)
        except ValueError as exc:
            raise ConfigError(_where(source, line), key, str(exc), raw) from None
        if normalised is not None:
            name, value = normalised
            config.settings[name] = Setting(name, value, key, line)
    if framework == "axolotl" and "train_type" not in config.settings:
        config.settings["train_type"] = Setting("train_type", "full", "adapter (absent)", None)
    if config.get("train_type") == "qlora" and "quantization" not in config.settings:
        config.settings["quantization"] = Setting("quantization", "nf4", config.settings["train_type"].key, None)
    return config


# ---------------------------------------------------------------- the formats


def _read_yaml(path: Path) -> list[tuple[str, Any, int | None]]:
    import yaml

    text = path.read_text(encoding="utf-8")
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise ConfigError(_where(path, mark.line + 1 if mark is not None else None), None, "valid YAML",
                          detail=str(getattr(exc, "problem", None) or exc)) from None
    if data is None:
        return []
    if not isinstance(data, dict):
        raise ConfigError(_where(path, 1), None, "a mapping of settings", detail=f"found a {type(data).__name__}")
    lines = {k.value: k.start_mark.line + 1 for k, _ in node.value} if isinstance(node, yaml.MappingNode) else {}
    return [(str(k), v, lines.get(str(k))) for k, v in data.items()]


def _read_json(path: Path) -> list[tuple[str, Any, int | None]]:
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(_where(path, exc.lineno), None, "valid JSON", detail=exc.msg) from None
    if not isinstance(data, dict):
        raise ConfigError(_where(path, 1), None, "a JSON object of TrainingArguments",
                          detail=f"found a {type(data).__name__}")

    def line_of(key: str) -> int | None:
        found = re.search(r'"%s"\s*:' % re.escape(key), text)
        return text.count("\n", 0, found.start()) + 1 if found else None

    return [(k, v, line_of(k)) for k, v in data.items()]


def _read_argv(path: Path) -> list[tuple[str, Any, int | None]]:
    """``swift sft --key value [value ...] --flag`` in a file (backslash-newlines and ``#`` comments allowed)."""
    text = path.read_text(encoding="utf-8").replace("\\\n", " \n")  # line continuations, the line count kept
    lexer = shlex.shlex(text, posix=True, punctuation_chars=False)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    tokens: list[tuple[str, int]] = []
    try:
        while (token := lexer.get_token()) is not None:
            tokens.append((token, lexer.lineno))
    except ValueError as exc:
        line, after = (tokens[-1][1], f" after {tokens[-1][0]!r}") if tokens else (1, "")
        raise ConfigError(_where(path, line), None, "a shell argument list", detail=f"{exc}{after}") from None
    pairs: list[tuple[str, Any, int | None]] = []
    i = 0
    while i < len(tokens):
        token, line = tokens[i]
        if not token.startswith("--"):
            i += 1  # the program and subcommand ('swift sft'), environment assignments
            continue
        if "=" in token:
            key, value = token.split("=", 1)
            pairs.append((key, value, line))
            i += 1
            continue
        values = []
        i += 1
        while i < len(tokens) and not tokens[i][0].startswith("--"):
            values.append(tokens[i][0])
            i += 1
        pairs.append((token, "true" if not values else values[0] if len(values) == 1 else values, line))
    return pairs


READERS: Mapping[str, Callable[[Path], list[tuple[str, Any, int | None]]]] = {
    "transformers": _read_json, "llamafactory": _read_yaml, "axolotl": _read_yaml, "swift": _read_argv,
}


def read_config(framework: str, path: str | Path) -> UserConfig:
    """Read ``path`` as ``framework``'s config format; a clear :class:`ConfigError` for anything unreadable."""
    if framework not in READERS:
        raise ConfigError(None, "--framework", f"one of {', '.join(FRAMEWORKS)}", framework)
    path = Path(path)
    if not path.is_file():
        raise ConfigError(path, None, "a config file", detail="no such file")
    return _build(framework, str(path), READERS[framework](path))
