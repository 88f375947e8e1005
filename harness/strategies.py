"""Hypothesis strategies and profiles, composed from small pieces.

* ``arg_values`` — JSON-like values a command line or args.json may hold (incl. ``None`` = unset,
  nested lists, and the look-alikes ``1`` / ``1.0`` / ``True`` that must not be confused);
* ``layer`` — one source's mapping of keys to values, over a small shared key pool so layers overlap;
* ``layered_args`` — (cli, checkpoint, adapter, model, defaults) as
  ``[(Source, mapping), ...]`` in priority order, ready for :func:`harness.reference.args.resolve_layers`;
* ``cadences`` — eval/save cadences, ``save_total_limit``, ``max_steps`` and metric direction, with
  a metrics sequence, for the checkpoint policy.

Profiles: ``ft-default`` (500 examples, random), ``ft-ci`` (200, derandomized: reproducible in CI; the self-tests'
default), ``ft-thorough`` (5000). Select with ``pytest --hypothesis-profile ft-ci``.
"""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from .spec import Source

__all__ = ["arg_values", "layer", "layered_args", "cadences", "register_profiles", "KEY_POOL"]

KEY_POOL = ("train_type", "learning_rate", "max_steps", "lora_rank", "target_modules", "seed", "x_custom",
            "ünïcode_key")

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.sampled_from([0.0, 1.0, 1e-4, 2e-4, -0.5]),
    st.sampled_from(["full", "lora", "", "all-linear", "ü"]),
)
arg_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3), max_leaves=6)


def layer(keys: tuple[str, ...] = KEY_POOL) -> st.SearchStrategy[dict]:
    return st.dictionaries(st.sampled_from(keys), arg_values, max_size=len(keys))


@st.composite
def layered_args(draw) -> list[tuple[Source, dict]]:
    paths = {kind: Path(f"/runs/{kind}/args.json") for kind in ("checkpoint", "adapter", "model")}
    layers = [(Source("cli"), draw(layer()))]
    for kind in ("checkpoint", "adapter", "model"):
        if draw(st.booleans()):
            layers.append((Source(kind, paths[kind]), draw(layer())))  # type: ignore[arg-type]
    layers.append((Source("default"), draw(layer())))
    return layers


@st.composite
def cadences(draw) -> dict:
    max_steps = draw(st.integers(1, 60))
    eval_steps = draw(st.integers(0, 12))
    out = dict(
        max_steps=max_steps,
        eval_steps=eval_steps,
        save_steps=draw(st.integers(0, 15)),
        save_total_limit=draw(st.integers(0, 4)),
        greater_is_better=draw(st.booleans()),
    )
    steps = [s for s in range(1, max_steps + 1) if eval_steps and s % eval_steps == 0]
    values = draw(st.lists(st.sampled_from([0.5, 1.0, 1.5, 2.0, 2.5, 3.0]), min_size=len(steps), max_size=len(steps)))
    out["metrics"] = dict(zip(steps, values))
    return out


def register_profiles() -> None:
    """Register the ft-* profiles (load one with ``--hypothesis-profile`` or ``settings.load_profile``)."""
    common = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow])
    settings.register_profile("ft-default", max_examples=500, **common)
    settings.register_profile("ft-ci", max_examples=200, derandomize=True, print_blob=True, **common)
    settings.register_profile("ft-thorough", max_examples=5000, **common)
