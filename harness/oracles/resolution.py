"""Seed 000's first half: what the framework's argument resolution answers (``adapter.resolve_args``) for a command
line over saved ``args.json`` files — the command line wins, each saved value comes from the highest layer that sets
it, nothing is inherited that must not be, and overriding a value the framework would have inherited warns, naming
the key, both values and the file. (The second half, that the run *trains* with what the resolution reports, is
judged on the saved weights by :mod:`harness.oracles.args`.)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from .failure import OracleFailure

def from_saved_file(source: Any) -> bool:
    """Whether a resolved value's :class:`~harness.spec.Source` is a saved file (checkpoint, adapter or model
    args.json), not the command line or the defaults."""
    return source.kind not in ("cli", "default")


def assert_cli_beats_saved(resolved: Any, key: str, cli_value: Any, saved_value: Any, *, where: Any,
                           warning_owed: bool, seed: str = "000") -> None:
    """``--key cli_value`` over a saved ``saved_value`` (in ``where``) resolved to the command-line value, sourced
    ``cli``, and — when ``warning_owed`` (the framework would otherwise have inherited the saved value) — with a
    warning naming the key, both values and the saved args.json."""
    source = resolved.source_of(key)
    if resolved[key] != cli_value:
        raise OracleFailure(seed, f"--{key} {cli_value!r} resolved to {resolved[key]!r} from {source}; the saved "
                                  f"args.json in {where} beat the command line")
    if source.kind != "cli":
        raise OracleFailure(seed, f"--{key} {cli_value!r} is recorded as coming from {source}, expected the command "
                                  f"line")
    if not warning_owed:
        return
    warning = [w for w in resolved.warnings if key in w]
    if not warning:
        raise OracleFailure(seed, f"no warning that --{key} {cli_value!r} overrides the saved {saved_value!r} "
                                  f"(warnings: {list(resolved.warnings)})")
    if not (str(saved_value) in warning[0] and str(cli_value) in warning[0] and "args.json" in warning[0]):
        raise OracleFailure(seed, f"the override warning must name both values ({saved_value!r}, {cli_value!r}) and "
                                  f"the saved file (args.json), found {warning[0]!r}")


def assert_nothing_from_files(resolved: Any, *, why: str = "load_args=false", seed: str = "000") -> None:
    """Every resolved value came from the command line or the defaults (``why`` says why no file may be read)."""
    from_files = {k: str(s) for k, s in resolved.sources.items() if from_saved_file(s)}
    if from_files:
        raise OracleFailure(seed, f"{why} must ignore every args.json, but these values came from files: "
                                  f"{from_files}")


def assert_not_inherited(resolved: Any, keys: Iterable[str], *, seed: str = "000") -> None:
    """None of ``keys`` (paths and devices of the run that saved the file) was taken from a saved file."""
    inherited = {k: str(resolved.sources[k]) for k in keys
                 if resolved.sources.get(k) is not None and from_saved_file(resolved.sources[k])}
    if inherited:
        raise OracleFailure(seed, f"keys that must never be inherited from a saved args.json were: {inherited} "
                                  f"(expected each from the command line or the defaults)")


def assert_layers_respected(resolved: Any, layers: Mapping[str, Mapping[str, Any]],
                            would_inherit: Callable[[str], bool], *, seed: str = "000") -> None:
    """The priority property over ``layers`` (layer kind -> the values it sets, highest priority first, ``"cli"``
    first): each key resolves to the highest layer's value with that layer as its source — or, for a saved layer, to
    the default when the framework does not inherit that key at all — and a command-line value that overrides a
    different saved one warns whenever ``would_inherit(key)`` (the framework would have taken the saved value without
    it)."""
    cli = layers.get("cli", {})
    for key in sorted(set().union(*layers.values())):
        want, kind = next((layer[key], kind) for kind, layer in layers.items() if key in layer)
        source = resolved.source_of(key)
        if kind != "cli" and source.kind == "default":
            continue  # the framework does not inherit this key from saved files: allowed
        if resolved[key] != want or source.kind != kind:
            raise OracleFailure(seed, f"{key} resolved to {resolved[key]!r} from {source}, expected {want!r} from the "
                                      f"{kind} layer ({dict(layers)})")
        saved = next((layer[key] for kind, layer in layers.items() if kind != "cli" and key in layer), None)
        overridden = key in cli and saved is not None and saved != cli[key] and would_inherit(key)
        if overridden and not any(f"'{key}'" in w for w in resolved.warnings):
            raise OracleFailure(seed, f"--{key} {cli[key]!r} silently overrode a different saved value {saved!r} "
                                      f"(expected a warning naming it; warnings: {list(resolved.warnings)})")
