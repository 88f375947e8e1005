"""Seed 000 — a saved args.json must never beat the command line.

The story (ms-swift ``load_args``, ms-swift #3168): ``swift sft --model DIR --train_type lora`` where
DIR is the output of a full fine-tune holding ``args.json`` with ``"train_type": "full"``. The saved
file beat the command line, and a full fine-tune ran instead of LoRA. The reverse (a LoRA output,
``--train_type full``) is seed 001's story.

Correct behaviour: CLI > resumed checkpoint's args.json > adapter dir's args.json > base model's
args.json > defaults, per key, each value with its source, and a warning naming key, both values
and both sources whenever the CLI overrides a different saved value. And the run *trains* with what
the resolution reports: the weights (the first optimizer step's size, the saved LoRA matrices), the
adapter config a reload uses, the steps on disk and the framework's own saved args.json all carry the
command-line values (pytorch/examples #816: a resume's saved learning rate beat the command line).

Saved files are written in the framework's own key names (``adapter.arg_name``: ms-swift 4 reads
``tuner_type`` where 3.x read ``train_type``); a file with a key the framework does not read tests nothing.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from harness.adapter import LoraSpec
from harness.errors import ArrangementError
from harness.layout import run_checkpoint
from harness.oracles import (assert_adapter_only_save, assert_cli_beats_saved, assert_first_step_size,
                             assert_full_model_saved, assert_layers_respected, assert_log_matches_cli,
                             assert_lora_trained_as_asked, assert_not_inherited, assert_nothing_from_files,
                             assert_saved_args_match, assert_saves_reproduce_log, from_saved_file, start_weights)

from ._support import eval_rtol, evaluator, spec

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


def _plant(adapter, directory: Path, values: dict) -> None:
    """Write ``values`` (harness key names) into ``directory``'s args.json, in the framework's own key names, keeping
    whatever else the framework saved there."""
    path = directory / "args.json"
    saved = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    saved.update({adapter.arg_name(k): v for k, v in values.items()})
    path.write_text(json.dumps(saved), encoding="utf-8")


def _assert_cli_beats_saved(adapter, model_dir: Path, key: str, cli_value, saved_value) -> None:
    """resolve_args: ``--key cli_value`` over a saved ``saved_value`` resolves to the CLI value, sourced cli, with a
    warning naming the key, both values and the file whenever the framework would otherwise have inherited it (ms-swift
    4 with load_args false never inherits: the CLI value then overrides nothing, so no warning is owed)."""
    resolved = adapter.resolve_args({key: cli_value}, model_dir)
    inherits = from_saved_file(adapter.resolve_args({}, model_dir).source_of(key))
    assert_cli_beats_saved(resolved, key, cli_value, saved_value, where=model_dir, warning_owed=inherits)


@pytest.mark.ft_smoke
@REQUIRES_ARGS
def test_cli_train_type_beats_saved_full(ft_adapter, full_ft_output):
    """resolve_args: --train_type lora on a full-FT output resolves to lora, sourced cli, with a warning naming both
    values and the file whenever the framework would otherwise have inherited the saved 'full'."""
    model_dir = full_ft_output.final_dir
    saved = _saved_train_type(ft_adapter, model_dir)
    if saved != "full":
        raise ArrangementError(f"the full fine-tune was to record train_type=full in its saved arguments, found "
                               f"{saved!r}")
    _assert_cli_beats_saved(ft_adapter, model_dir, "train_type", "lora", "full")


@REQUIRES_ARGS
@pytest.mark.parametrize("key, cli_value, saved_value", [("lora_rank", 2, 8), ("learning_rate", 0.002, 0.0002)],
                         ids=["lora_rank", "learning_rate"])
def test_cli_value_beats_saved_value(ft_adapter, full_ft_output, tmp_path, key, cli_value, saved_value):
    """The same for keys other than the training type: a saved LoRA rank or learning rate never beats the CLI's."""
    model_dir = tmp_path / "model"
    shutil.copytree(full_ft_output.final_dir, model_dir, ignore=shutil.ignore_patterns("checkpoint-*"))
    _plant(ft_adapter, model_dir, {key: saved_value})
    _assert_cli_beats_saved(ft_adapter, model_dir, key, cli_value, saved_value)


#: what the user types, and (planted in the base's args.json) what a saved file would say instead
TYPED = dict(learning_rate=2e-3, lora=LoraSpec(r=2, alpha=16.0, target_modules=("q_proj", "v_proj")), max_steps=3)
SAVED_INSTEAD = {"learning_rate": 2e-4, "lora_rank": 8, "lora_alpha": 4.0, "max_steps": 7}


@pytest.mark.ft_requires("sft", "lora", "full")
@pytest.mark.ft_metric("eval_loss")  # every save must reload to the eval loss the run logged
def test_cli_values_are_the_trained_values(ft_adapter, full_ft_output, tiny_assets, tmp_path, ft_device):
    """LoRA on a full-FT output whose args.json says another learning rate, rank, alpha and max_steps: the run trains
    with every command-line value. Judged on what it saved: the first Adam step moved lora_B by the typed learning
    rate, the matrices have the typed rank on the typed modules, adapter_config.json (what a reload uses) says the
    typed rank/alpha/modules, exactly max_steps steps are on disk and logged at the typed rate, the framework's own
    args.json records them, and every save reloads to the metric the run logged."""
    base = tmp_path / "base"
    shutil.copytree(full_ft_output.final_dir, base, ignore=shutil.ignore_patterns("checkpoint-*"))
    if (base / "args.json").is_file():  # a framework that saves its arguments: the seed's arrange
        _plant(ft_adapter, base, SAVED_INSTEAD)
    run = spec(tiny_assets, tmp_path / "lora", model_dir=base, train_type="lora", save_steps=1, eval_steps=1,
               lr_scheduler_type="constant", device=ft_device, **TYPED)
    result = ft_adapter.train(run)
    lora = TYPED["lora"]
    assert_first_step_size(run_checkpoint(result.output_dir, 1), TYPED["learning_rate"])
    for directory in (*result.checkpoints, result.final_dir):
        assert_lora_trained_as_asked(directory, r=lora.r, alpha=lora.alpha, target_modules=lora.target_modules)
    assert_log_matches_cli(result.output_dir, TYPED["max_steps"], TYPED["learning_rate"])
    if (result.final_dir / "args.json").is_file():
        assert_saved_args_match(result.final_dir, {ft_adapter.arg_name(k): v for k, v in {
            "learning_rate": TYPED["learning_rate"], "lora_rank": lora.r, "lora_alpha": lora.alpha,
            "max_steps": TYPED["max_steps"]}.items()})
    assert_saves_reproduce_log(result.output_dir, evaluator(ft_adapter, run), rtol=eval_rtol(ft_device), seed="000")


@REQUIRES_ARGS
def test_load_args_false_ignores_saved_files(ft_adapter, full_ft_output):
    assert_nothing_from_files(ft_adapter.resolve_args({"load_args": False}, full_ft_output.final_dir))


@REQUIRES_ARGS
def test_never_inherited_keys(ft_adapter, full_ft_output, tmp_path):
    """output_dir / resume paths / device saved in args.json are never inherited."""
    model_dir = tmp_path / "model"
    import shutil

    shutil.copytree(full_ft_output.final_dir, model_dir, ignore=shutil.ignore_patterns("checkpoint-*"))
    saved = json.loads((model_dir / "args.json").read_text())
    saved.update(output_dir="/elsewhere", resume_from="/elsewhere/checkpoint-9", device="cuda")
    (model_dir / "args.json").write_text(json.dumps(saved))
    assert_not_inherited(ft_adapter.resolve_args({}, model_dir), ("output_dir", "resume_from", "device"))


@pytest.mark.ft_smoke
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
        saved = _saved_train_type(ft_adapter, lora_output.final_dir)
        if saved != "lora":
            raise ArrangementError(f"the LoRA run was to record train_type=lora in its saved arguments, found "
                                   f"{saved!r}")
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
LAYERS = ("cli", "checkpoint", "adapter", "model")


def _write_layer(adapter, directory: Path, layer: dict) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "args.json").write_text(json.dumps({adapter.arg_name(k): v for k, v in layer.items()}))


@REQUIRES_ARGS
@settings(max_examples=40, deadline=None, derandomize=True, database=None, phases=REAL_RUN_PHASES,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cli=LAYER, checkpoint=LAYER, adapter=LAYER, model=LAYER)
# every conflict shape, explicitly (derandomized generation need not reach them): each pair of layers disagreeing
@example(cli={"train_type": "lora"}, checkpoint={"train_type": "full"}, adapter={}, model={})
@example(cli={"train_type": "full"}, checkpoint={}, adapter={"train_type": "lora"}, model={})
@example(cli={"train_type": "lora"}, checkpoint={}, adapter={}, model={"train_type": "full"})
@example(cli={}, checkpoint={"train_type": "lora"}, adapter={"train_type": "full"}, model={"train_type": "full"})
@example(cli={}, checkpoint={}, adapter={"lora_rank": 2}, model={"lora_rank": 8})
@example(cli={}, checkpoint={"lora_rank": 4}, adapter={}, model={"lora_rank": 8})
@example(cli={"learning_rate": 1e-3}, checkpoint={"learning_rate": 1e-4}, adapter={"learning_rate": 2e-4},
         model={"learning_rate": 2e-4})
@example(cli={"lora_rank": 2, "max_steps": 3}, checkpoint={"lora_rank": 8, "max_steps": 7}, adapter={}, model={})
def test_priority_property(ft_adapter, cli, checkpoint, adapter, model):
    """For any saved/CLI combination over four layers (the command line; the resumed checkpoint's, the LoRA adapter
    dir's and its base model's args.json, written in the framework's own key names): a CLI value always wins; a value
    taken from a saved file comes from the highest layer that sets it (a framework may choose not to inherit a key at
    all: then it is the default), and overriding a value the framework would have inherited warns."""
    layers = dict(zip(LAYERS, (cli, checkpoint, adapter, model)))
    with tempfile.TemporaryDirectory() as tmp:
        model_dir, adapter_dir, ckpt_dir = Path(tmp) / "model", Path(tmp) / "adapter", Path(tmp) / "checkpoint-3"
        for directory, layer in ((model_dir, model), (adapter_dir, adapter), (ckpt_dir, checkpoint)):
            _write_layer(ft_adapter, directory, layer)
        (adapter_dir / "adapter_config.json").write_text(json.dumps(
            {"peft_type": "LORA", "base_model_name_or_path": str(model_dir), "r": 4, "lora_alpha": 8}))
        resolved = ft_adapter.resolve_args(dict(cli), adapter_dir, ckpt_dir)

        def would_inherit(key: str) -> bool:
            """Whether the framework takes ``key`` from a saved file when the command line does not give it."""
            without = ft_adapter.resolve_args({k: v for k, v in cli.items() if k != key}, adapter_dir, ckpt_dir)
            return from_saved_file(without.source_of(key))

        assert_layers_respected(resolved, layers, would_inherit)
