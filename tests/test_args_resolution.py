"""Argument resolution (seed 000): hypothesis properties of the layering + bad-input errors."""

from __future__ import annotations

import copy
import json

import pytest
from hypothesis import given

from harness.adapter import Source
from harness.errors import ConfigError
from harness.reference.args import DEFAULTS, resolve, resolve_layers, same_value
from harness.strategies import layered_args


def _expected(layers, key):
    for source, layer in layers:
        if layer.get(key) is not None:
            return layer[key], source
    return None, None


@given(layered_args())
def test_highest_layer_wins_with_its_source(layers):
    resolved = resolve_layers(layers)
    keys = {k for _, layer in layers for k in layer}
    for key in keys:
        value, source = _expected(layers, key)
        if source is None:
            assert key not in resolved.values
        else:
            assert same_value(resolved[key], value) and resolved.source_of(key) == source


@given(layered_args())
def test_warning_iff_cli_overrides_a_different_saved_value(layers):
    resolved = resolve_layers(layers)
    cli = layers[0][1]
    saved_layers = [(s, layer) for s, layer in layers[1:] if s.kind != "default"]
    for key in {k for _, layer in layers for k in layer}:
        saved_value, saved_source = _expected(saved_layers, key)
        overrides = cli.get(key) is not None and saved_source is not None and not same_value(cli[key], saved_value)
        hits = [w for w in resolved.warnings if w.startswith(f"argument {key!r}:")]
        assert bool(hits) == overrides, (key, cli.get(key), saved_value, resolved.warnings)
        if hits:
            assert str(saved_source) in hits[0] and repr(cli[key]) in hits[0] and repr(saved_value) in hits[0]


@given(layered_args())
def test_idempotent_and_pure(layers):
    before = copy.deepcopy(layers)
    first = resolve_layers(layers)
    assert layers == before, "resolution mutated its inputs"
    again = resolve_layers([(Source("cli"), dict(first.values))])
    assert dict(again.values) == dict(first.values)
    assert resolve_layers(layers) == first


def test_seed_000_story(tmp_path):
    (tmp_path / "args.json").write_text(json.dumps({"train_type": "full", "learning_rate": 1e-5}))
    resolved = resolve({"train_type": "lora"}, tmp_path)
    assert resolved["train_type"] == "lora" and resolved.source_of("train_type") == Source("cli")
    assert resolved["learning_rate"] == 1e-5 and resolved.source_of("learning_rate").kind == "model"
    assert resolved.warnings == (
        f"argument 'train_type': command line value 'lora' [cli] overrides saved value 'full' "
        f"[model:{tmp_path / 'args.json'}]",)
    lines = resolved.describe()
    assert "train_type = 'lora'  [cli]" in lines and any("learning_rate" in ln and "model:" in ln for ln in lines)


def test_priority_checkpoint_over_adapter_over_model(tmp_path):
    base, adapter, ckpt = tmp_path / "base", tmp_path / "adapter", tmp_path / "adapter" / "checkpoint-2"
    for d in (base, adapter, ckpt):
        d.mkdir(parents=True)
    (base / "args.json").write_text(json.dumps({"lora_rank": 2, "max_steps": 3, "seed": 1}))
    (adapter / "args.json").write_text(json.dumps({"lora_rank": 4, "max_steps": 5}))
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(base)}))
    (ckpt / "args.json").write_text(json.dumps({"lora_rank": 8}))
    r = resolve({}, adapter, ckpt)
    assert (r["lora_rank"], r.source_of("lora_rank").kind) == (8, "checkpoint")
    assert (r["max_steps"], r.source_of("max_steps").kind) == (5, "adapter")
    assert (r["seed"], r.source_of("seed").kind) == (1, "model")
    assert r.source_of("learning_rate").kind == "default"


def test_load_args_false_and_never_inherited(tmp_path):
    (tmp_path / "args.json").write_text(json.dumps({"train_type": "full", "output_dir": "/x", "device": "cuda"}))
    assert resolve({"load_args": False}, tmp_path)["train_type"] == DEFAULTS["train_type"]
    r = resolve({}, tmp_path)
    assert "output_dir" not in r.values and "device" not in r.values


@pytest.mark.parametrize("content, key, expected", [
    ("{not json", None, "valid JSON"),
    ("[1, 2]", None, "JSON object at the top level"),
    ('{"train_type": "qlora"}', "train_type", "one of 'full', 'lora'"),
    ('{"max_steps": "ten"}', "max_steps", "non-negative integer"),
    ('{"max_steps": true}', "max_steps", "non-negative integer"),
    ('{"learning_rate": "fast"}', "learning_rate", "finite non-negative number"),
    ('{"save_on_best": "yes"}', "save_on_best", "true or false"),
    ('{"target_modules": []}', "target_modules", "'all-linear' or a non-empty list"),
    ('{"quantization": "int3"}', "quantization", "one of None"),
    ('{"trainable_parameters": "model.layers.1"}', "trainable_parameters", "a list of regular expressions"),
    ('{"trainable_parameters": ["model\\\\.layers\\\\.(1"]}', "trainable_parameters", "does not compile"),
])
def test_bad_args_file_names_file_key_and_expectation(tmp_path, content, key, expected):
    (tmp_path / "args.json").write_text(content)
    with pytest.raises(ConfigError) as excinfo:
        resolve({}, tmp_path)
    msg = str(excinfo.value)
    assert str(tmp_path / "args.json") in msg and expected in msg
    if key:
        assert f"key {key!r}" in msg
    assert "Traceback" not in msg


def test_unknown_cli_key_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="<command line>: key 'trian_type'"):
        resolve({"trian_type": "lora"}, tmp_path)


def test_invalid_cli_value_names_command_line(tmp_path):
    with pytest.raises(ConfigError, match="<command line>: key 'train_type'"):
        resolve({"train_type": "partial"}, tmp_path)


@pytest.mark.parametrize("beta", [0, -0.1, float("nan"), "0.1"])
def test_dpo_beta_must_be_positive(tmp_path, beta):
    """DPO's beta <= 0 (or not a number) is refused naming the key, never passed on to a trainer; GRPO's may be 0 (no
    reference model, TRL's default) and an unset beta is the method's default."""
    with pytest.raises(ConfigError, match="'beta': expected a finite (non-negative|positive) number"):
        resolve({"method": "dpo", "beta": beta}, tmp_path)
    from harness.spec import kl_beta

    assert kl_beta(resolve({"method": "grpo", "beta": 0}, tmp_path).values) == 0.0
    assert kl_beta(resolve({"method": "dpo"}, tmp_path).values) == 0.1
    assert kl_beta(resolve({"method": "grpo"}, tmp_path).values) == 0.0


def test_trainable_set_needs_a_full_run_and_patterns_that_name_parameters(tiny_assets, tmp_path):
    """The reference refuses trainable_parameters on a LoRA run and a pattern that matches no whole parameter name
    (a typo would freeze everything but what it meant), naming the key, before anything trains."""
    from harness.adapter import RunSpec
    from harness.reference import ReferenceAdapter

    def run(**fields):
        return ReferenceAdapter().train(RunSpec(model_dir=tiny_assets.model_dir, output_dir=tmp_path / "out",
                                                dataset_dir=tiny_assets.dataset_dir, max_steps=1, **fields))

    with pytest.raises(ConfigError, match="'trainable_parameters': expected train_type 'full'"):
        run(cli={"trainable_parameters": [r"model\.layers\.1\..*"]})
    with pytest.raises(ConfigError, match=r"'trainable_parameters': expected patterns that each match a whole "
                                          r"parameter name \(e\.g\. 'model\.embed_tokens\.weight'\), found \["):
        run(train_type="full", cli={"trainable_parameters": [r"model\.layers\.1"]})  # a prefix, not a whole name
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").glob("checkpoint-*"))
