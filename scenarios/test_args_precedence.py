"""Seed 000 — a saved args.json must never beat the command line.

The story (ms-swift ``load_args``, ms-swift #3168): ``swift sft --model DIR --train_type lora`` where
DIR is the output of a full fine-tune holding ``args.json`` with ``"train_type": "full"``. The saved
file beat the command line, and a full fine-tune ran instead of LoRA. The reverse (a LoRA output,
``--train_type full``) is seed 001's story.

Correct behaviour: CLI > resumed checkpoint's args.json > adapter dir's args.json > base model's
args.json > defaults, per key, each value with its source, and a warning naming key, both values
and both sources whenever the CLI overrides a different saved value.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from harness.oracles import OracleFailure, assert_adapter_only_save, assert_full_model_saved, start_weights

from ._support import spec

REAL_RUN_PHASES = (Phase.explicit, Phase.generate)  # derandomized, no shrinking: each example is a real run

pytestmark = [pytest.mark.ft_seed("000")]
#: the resolve_args tests need layered saved-args resolution; the end-to-end stories only a framework that trains
REQUIRES_ARGS = pytest.mark.ft_requires("args")


@pytest.fixture(scope="module")
def full_ft_output(ft_adapter, tiny_assets, tmp_path_factory, ft_device):
    """Arrange: a full fine-tune whose output directory holds args.json with train_type=full."""
    pytest.importorskip("torch")
    if not {"sft", "full"} <= set(ft_adapter.capabilities):
        pytest.skip(f"adapter {ft_adapter.name!r} lacks capability 'sft'/'full' to produce a full fine-tune")
    out = tmp_path_factory.mktemp("full-ft")
    return ft_adapter.train(spec(tiny_assets, out, train_type="full", max_steps=2, device=ft_device))


@pytest.fixture(scope="module")
def lora_output(ft_adapter, tiny_assets, tmp_path_factory, ft_device):
    """Arrange: a LoRA fine-tune whose output directory holds args.json with train_type=lora."""
    if not {"sft", "lora"} <= set(ft_adapter.capabilities):
        pytest.skip(f"adapter {ft_adapter.name!r} lacks capability 'sft'/'lora' to produce a LoRA output")
    out = tmp_path_factory.mktemp("lora-ft")
    return ft_adapter.train(spec(tiny_assets, out, train_type="lora", max_steps=2, device=ft_device))


def _saved_train_type(adapter, directory: Path) -> str:
    """The training type the framework recorded in its saved args.json (under the framework's own key)."""
    return json.loads((directory / "args.json").read_text())[adapter.arg_name("train_type")]


@REQUIRES_ARGS
def test_cli_train_type_beats_saved_full(ft_adapter, full_ft_output):
    """resolve_args: --train_type lora on a full-FT output resolves to lora, sourced cli, with a warning naming both
    values and the file whenever the framework would otherwise have inherited the saved 'full'."""
    model_dir = full_ft_output.final_dir
    assert _saved_train_type(ft_adapter, model_dir) == "full", "arrange: the full fine-tune must record train_type=full"
    resolved = ft_adapter.resolve_args({"train_type": "lora"}, model_dir)
    assert resolved["train_type"] == "lora", (
        f"seed 000: --train_type lora resolved to {resolved['train_type']!r} from {resolved.source_of('train_type')}; "
        f"the saved args.json in {model_dir} beat the command line")
    assert resolved.source_of("train_type").kind == "cli"
    unset = ft_adapter.resolve_args({}, model_dir)
    if unset.source_of("train_type").kind in ("cli", "default"):
        return  # the framework never inherits train_type from saved files (e.g. ms-swift 4 with load_args false):
        # the CLI value overrides nothing, so no warning is owed (the priority property applies the same rule)
    warning = [w for w in resolved.warnings if "train_type" in w]
    assert warning, f"seed 000: no warning that --train_type lora overrides the saved 'full' (got {resolved.warnings})"
    assert "full" in warning[0] and "lora" in warning[0] and "args.json" in warning[0], (
        f"the override warning must name both values and the saved file, got {warning[0]!r}")


@REQUIRES_ARGS
def test_load_args_false_ignores_saved_files(ft_adapter, full_ft_output):
    resolved = ft_adapter.resolve_args({"load_args": False}, full_ft_output.final_dir)
    from_files = {k: str(s) for k, s in resolved.sources.items() if s.kind not in ("cli", "default")}
    assert not from_files, f"load_args=false must ignore every args.json, but these came from files: {from_files}"


@REQUIRES_ARGS
def test_never_inherited_keys(ft_adapter, full_ft_output, tmp_path):
    """output_dir / resume paths / device saved in args.json are never inherited."""
    model_dir = tmp_path / "model"
    import shutil

    shutil.copytree(full_ft_output.final_dir, model_dir, ignore=shutil.ignore_patterns("checkpoint-*"))
    saved = json.loads((model_dir / "args.json").read_text())
    saved.update(output_dir="/elsewhere", resume_from="/elsewhere/checkpoint-9", device="cuda")
    (model_dir / "args.json").write_text(json.dumps(saved))
    resolved = ft_adapter.resolve_args({}, model_dir)
    for key in ("output_dir", "resume_from", "device"):
        src = resolved.sources.get(key)
        assert src is None or src.kind in ("cli", "default"), f"{key} was inherited from {src}"


@pytest.mark.ft_requires("sft", "lora", "full")
def test_seed_lora_on_full_output_trains_lora(ft_adapter, full_ft_output, tiny_assets, tmp_path, ft_device):
    """The seed end to end: LoRA with --train_type lora on a full-FT output must train (and save) LoRA only."""
    result = ft_adapter.train(spec(tiny_assets, tmp_path / "lora", model_dir=full_ft_output.final_dir,
                                   train_type="lora", max_steps=2, save_steps=1, device=ft_device))
    for directory in (*result.checkpoints, result.final_dir):
        assert_adapter_only_save(directory, seed="000")


@pytest.mark.ft_requires("sft", "lora", "full")
def test_reverse_full_on_lora_output_trains_full(ft_adapter, lora_output, tiny_assets, tmp_path, ft_device):
    """Seed 001's direction: --train_type full on a LoRA output (args.json says lora) must train everything."""
    if (lora_output.final_dir / "args.json").is_file():  # a framework with saved args: the story's arrange
        assert _saved_train_type(ft_adapter, lora_output.final_dir) == "lora"
    result = ft_adapter.train(spec(tiny_assets, tmp_path / "full", model_dir=lora_output.final_dir,
                                   train_type="full", max_steps=2, device=ft_device))
    assert_full_model_saved(result.final_dir, tiny_assets.model_dir, start_weights(lora_output.final_dir),
                            seed="000")


# ----------------------------------------------------------------------------- hypothesis
TRAIN_TYPES = st.sampled_from(["full", "lora"])
LAYER = st.fixed_dictionaries({}, optional={
    "train_type": TRAIN_TYPES,
    "learning_rate": st.sampled_from([1e-4, 2e-4, 1e-3]),
    "max_steps": st.integers(1, 50),
    "lora_rank": st.sampled_from([2, 4, 8]),
})


@REQUIRES_ARGS
@settings(max_examples=40, deadline=None, derandomize=True, database=None, phases=REAL_RUN_PHASES,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cli=LAYER, checkpoint=LAYER, model=LAYER)
def test_priority_property(ft_adapter, cli, checkpoint, model):
    """For any saved/CLI combination: a CLI value always wins; a value taken from a saved file comes from the
    highest layer that sets it (a framework may choose not to inherit a key at all: then it is the default)."""
    with tempfile.TemporaryDirectory() as tmp:
        model_dir, ckpt_dir = Path(tmp) / "model", Path(tmp) / "checkpoint-3"
        model_dir.mkdir()
        ckpt_dir.mkdir()
        (model_dir / "args.json").write_text(json.dumps(model))
        (ckpt_dir / "args.json").write_text(json.dumps(checkpoint))
        resolved = ft_adapter.resolve_args(dict(cli), model_dir, ckpt_dir)
        for key in set(cli) | set(checkpoint) | set(model):
            want, kind = next((layer[key], kind) for kind, layer in
                              (("cli", cli), ("checkpoint", checkpoint), ("model", model)) if key in layer)
            if kind != "cli" and resolved.source_of(key).kind == "default":
                continue  # the framework does not inherit this key from saved files: allowed
            assert resolved[key] == want and resolved.source_of(key).kind == kind, (
                f"seed 000: {key} resolved to {resolved[key]!r} from {resolved.source_of(key)}, expected {want!r} "
                f"from the {kind} layer (cli={cli}, checkpoint={checkpoint}, model={model})")
            saved = next((layer[key] for layer in (checkpoint, model) if key in layer), None)
            overridden = key in cli and saved is not None and saved != cli[key]
            if overridden:  # only a value the framework would have inherited needs a warning when overridden
                without = ft_adapter.resolve_args({k: v for k, v in cli.items() if k != key}, model_dir, ckpt_dir)
                overridden = without.source_of(key).kind not in ("cli", "default")
            warned = any(f"'{key}'" in w for w in resolved.warnings)
            if overridden and not warned:
                raise OracleFailure("000", f"--{key} {cli[key]!r} silently overrode a different saved value")
