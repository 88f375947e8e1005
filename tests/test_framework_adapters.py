"""The real-framework adapters' own logic, without the frameworks installed: argument mapping,
config building, dataset conversion, options; plus per-adapter options and report merging.

(The frameworks themselves run in their tox envs: tox -e swift / swift3 / llamafactory / simpletuner.)
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.adapter import RunSpec, load_adapter, split_adapter_spec
from harness import kit
from harness.adapters.llamafactory import build_config
from harness.adapters.swift import QUANT_ARGS, build_argv, swift_cli, type_key
from harness.adapters.transformers import TransformersAdapter, training_arguments
from harness.errors import AdapterLoadError, ConfigError
from harness.task import TASK_DEFAULTS as DEFAULTS

V3_FIELDS = {"train_type", "model", "dataset", "val_dataset", "template", "lora_rank", "lora_alpha", "lora_dropout",
             "target_modules", "learning_rate", "max_steps", "per_device_train_batch_size", "seed", "save_steps",
             "eval_steps", "save_total_limit", "load_args", "quant_method", "quant_bits", "bnb_4bit_quant_type",
             "bnb_4bit_compute_dtype", "output_dir", "add_version", "resume_from_checkpoint", "adapters",
             "eval_strategy", "save_strategy", "lr_scheduler_type", "use_cpu", "metric_for_best_model",
             "greater_is_better", "logging_steps"}
V4_FIELDS = (V3_FIELDS - {"train_type"}) | {"tuner_type", "check_model"}


def _spec(tmp_path, **kw):
    return RunSpec(model_dir=tmp_path / "model", output_dir=tmp_path / "out", dataset_dir=tmp_path / "data", **kw)


def _args(argv):
    out, key = {}, None
    for item in argv:
        if item.startswith("--"):
            key = item[2:]
            out[key] = []
        else:
            out[key].append(item)
    return {k: v[0] if len(v) == 1 else v for k, v in out.items()}


DATA = {"train": Path("/d/train.jsonl"), "eval": Path("/d/eval.jsonl"), "prompts": Path("/d/prompts.jsonl")}


@pytest.mark.parametrize("fields, key", [(V3_FIELDS, "train_type"), (V4_FIELDS, "tuner_type")])
def test_swift_training_type_key_follows_the_version(tmp_path, fields, key):
    assert type_key(fields) == key
    entry, argv = build_argv(_spec(tmp_path, train_type="full", max_steps=3), fields, DATA)
    args = _args(argv)
    assert entry == "sft" and args[key] == "full"
    assert ({"train_type", "tuner_type"} - {key}).isdisjoint(args), "only the installed version's key is passed"
    assert "check_model" not in args or key == "tuner_type"


def test_swift_argv_maps_every_typed_field(tmp_path):
    spec = _spec(tmp_path, train_type="lora", quantization="nf4", max_steps=6, save_steps=2, eval_steps=3,
                 save_total_limit=1, learning_rate=2e-2, seed=7, metric="eval_accuracy", greater_is_better=True)
    args = _args(build_argv(spec, V4_FIELDS, DATA, load_args=True)[1])
    assert args["quant_method"] == "bnb" and args["quant_bits"] == "4" and args["bnb_4bit_quant_type"] == "nf4"
    assert (args["max_steps"], args["save_steps"], args["eval_steps"], args["save_total_limit"]) == ("6", "2", "3", "1")
    assert args["learning_rate"] == "0.02" and args["seed"] == "7" and args["load_args"] == "true"
    assert args["metric_for_best_model"] == "token_acc" and args["greater_is_better"] == "true"
    assert args["eval_strategy"] == "steps" and args["val_dataset"] == "/d/eval.jsonl"
    assert args["add_version"] == "false" and args["output_dir"] == str(tmp_path / "out")
    assert "method" not in args and "quantization" not in args


def test_swift_argv_adapter_dir_becomes_adapters_and_base(tmp_path):
    lora = tmp_path / "model"
    lora.mkdir()
    (lora / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "/base"}))
    args = _args(build_argv(_spec(tmp_path, method="grpo", train_type="full"), V4_FIELDS | {"rlhf_type"}, DATA)[1])
    assert args["model"] == "/base" and args["adapters"] == str(lora)
    assert args["rlhf_type"] == "grpo" and args["dataset"] == "/d/prompts.jsonl"


def test_swift_argv_of_the_tiny_moe(tmp_path):
    """The tiny MoE (config model_type qwen3_moe) runs as swift's qwen3_moe model type, the dense model as qwen2;
    router_aux_loss_coef is swift's own key."""
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text(json.dumps({"model_type": "qwen3_moe"}))
    fields = V4_FIELDS | {"model_type", "router_aux_loss_coef"}
    args = _args(build_argv(_spec(tmp_path, cli={"router_aux_loss_coef": 0.01}), fields, DATA)[1])
    assert args["model_type"] == "qwen3_moe" and args["router_aux_loss_coef"] == "0.01"
    (tmp_path / "model" / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    assert _args(build_argv(_spec(tmp_path), fields, DATA)[1])["model_type"] == "qwen2"


def test_swift_resume_latest_is_the_newest_checkpoint_path(tmp_path):
    for step in (2, 10, 4):
        (tmp_path / "out" / f"checkpoint-{step}").mkdir(parents=True)
    args = _args(build_argv(_spec(tmp_path, resume_from="latest"), V4_FIELDS, DATA)[1])
    assert args["resume_from_checkpoint"] == str(tmp_path / "out" / "checkpoint-10")
    with pytest.raises(ConfigError, match="resume_from"):
        build_argv(_spec(tmp_path / "empty", resume_from="latest"), V4_FIELDS, DATA)


def test_swift_dpo_and_grpo_argv_and_ref_adapters(tmp_path):
    """DPO is ``swift rlhf --rlhf_type dpo`` on the converted rows with the method's beta; GRPO's beta is the run's (0
    unless typed); ``ref_adapters`` adds ``--ref_adapters`` (the pre-trained adapter as the reference) on a LoRA output
    only."""
    from harness.adapters.swift import swift_preferences
    from harness.models import preference_rows, write_jsonl

    adapter = tmp_path / "lora"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(tmp_path / "base")}))
    rows = swift_preferences(write_jsonl(tmp_path / "p.jsonl", preference_rows()), tmp_path / "dpo.jsonl")
    first = json.loads(rows.read_text().splitlines()[0])
    assert [m["role"] for m in first["messages"]] == ["user", "assistant"] and first["rejected_response"]
    fields = V4_FIELDS | {"rlhf_type", "beta", "loss_type", "ref_adapters", "reward_funcs", "num_generations"}
    data = {**DATA, "preferences": rows}
    spec = RunSpec(model_dir=adapter, output_dir=tmp_path / "out", dataset_dir=tmp_path / "data", method="dpo",
                   train_type="lora")
    entry, argv = build_argv(spec, fields, data)
    args = _args(argv)
    assert entry == "rlhf" and args["rlhf_type"] == "dpo" and args["dataset"] == str(rows)
    assert (args["beta"], args["loss_type"], args["adapters"]) == ("0.1", "sigmoid", str(adapter))
    assert "ref_adapters" not in args, "by default ms-swift chooses the reference"
    assert _args(build_argv(spec, fields, data, ref_adapters=True)[1])["ref_adapters"] == str(adapter)
    fresh = spec.replace(model_dir=tmp_path / "base")
    assert "ref_adapters" not in _args(build_argv(fresh, fields, data, ref_adapters=True)[1])
    grpo = spec.replace(method="grpo")
    assert _args(build_argv(grpo, fields, data)[1])["beta"] == "0.0"
    assert _args(build_argv(grpo.replace(cli={"beta": 0.04}), fields, data)[1])["beta"] == "0.04"


def test_swift_kto_argv_and_unpaired_rows(tmp_path):
    """KTO is ``swift rlhf --rlhf_type kto`` on the rows unpaired (``messages`` + a boolean ``label``: every chosen
    answer desirable, then every rejected one not), with KTO's beta, no DPO ``--loss_type``, and
    ``--gradient_accumulation_steps`` always typed (ms-swift 4.6.0's KTO data preparation crashes without it)."""
    from harness.adapters.swift import swift_kto
    from harness.models import preference_rows, write_jsonl

    pairs = preference_rows()
    rows = [json.loads(line) for line in swift_kto(write_jsonl(tmp_path / "p.jsonl", pairs),
                                                    tmp_path / "kto.jsonl").read_text().splitlines()]
    assert [r["label"] for r in rows] == [True] * len(pairs) + [False] * len(pairs)
    assert rows[0]["messages"] == [{"role": "user", "content": pairs[0]["prompt"]},
                                   {"role": "assistant", "content": pairs[0]["chosen"]}]
    assert rows[len(pairs)]["messages"][1]["content"] == pairs[0]["rejected"]
    fields = V4_FIELDS | {"rlhf_type", "beta", "loss_type", "ref_adapters", "gradient_accumulation_steps"}
    spec = RunSpec(model_dir=tmp_path / "base", output_dir=tmp_path / "out", dataset_dir=tmp_path / "data", method="kto",
                   train_type="lora")
    entry, argv = build_argv(spec, fields, {**DATA, "preferences": tmp_path / "kto.jsonl"})
    args = _args(argv)
    assert (entry, args["rlhf_type"], args["beta"], args["gradient_accumulation_steps"]) == ("rlhf", "kto", "0.1", "1")
    assert "loss_type" not in args, "KTO runs its own loss, not DPO's sigmoid"
    with pytest.raises(ConfigError, match="sft, grpo, dpo or kto"):
        build_argv(spec.replace(method="diffusion"), fields, DATA)


def test_swift_trainable_set_is_a_frozen_model_with_one_anchored_regex(tiny_assets):
    """trainable_parameters (whole-name regexes) is not swift's --trainable_parameters (name prefixes): everything is
    frozen (--freeze_parameters_ratio 1) and one anchored --trainable_parameters_regex unfreezes exactly the set."""
    import re

    from harness.adapters.swift import trainable_regex
    from harness.layout import read_safetensors_header
    from harness.spec import in_trainable_set
    from scenarios.test_trainable_set import TRAINABLE_SETS

    fields = V4_FIELDS | {"freeze_parameters_ratio", "trainable_parameters_regex", "trainable_parameters"}
    names = sorted(read_safetensors_header(tiny_assets.model_dir / "model.safetensors"))
    for patterns in TRAINABLE_SETS.values():
        out = swift_cli({"train_type": "full", "trainable_parameters": patterns}, fields)
        assert out["freeze_parameters_ratio"] == 1.0 and "trainable_parameters" not in out
        regex = out["trainable_parameters_regex"]
        assert {n for n in names if re.search(regex, n)} == {n for n in names if in_trainable_set(n, patterns)}
    assert trainable_regex([r"model\.norm\.weight"]) == r"^(?:(?:model\.norm\.weight))$"
    assert "freeze_parameters_ratio" not in swift_cli({"trainable_parameters": []}, fields)


def test_swift_gradient_checkpointing_is_trainingarguments_own_keys():
    import json as _json

    assert swift_cli({"gradient_checkpointing": False}, V4_FIELDS) == {"gradient_checkpointing": False}
    on = swift_cli({"gradient_checkpointing": "non-reentrant"}, V4_FIELDS)
    assert on["gradient_checkpointing"] is True
    assert _json.loads(on["gradient_checkpointing_kwargs"]) == {"use_reentrant": False}
    assert _json.loads(swift_cli({"gradient_checkpointing": "reentrant"}, V4_FIELDS)["gradient_checkpointing_kwargs"]) \
        == {"use_reentrant": True}


def test_swift_unknown_quantization_is_a_clear_error():
    assert set(QUANT_ARGS) == {"nf4", "int8", "quanto-int8", "quanto-int4"}
    with pytest.raises(ConfigError, match="quantization"):
        swift_cli({"quantization": "gptq"}, V4_FIELDS)


def test_llamafactory_config(tmp_path):
    values = {**DEFAULTS, "train_type": "lora", "quantization": "int8", "eval_steps": 5, "save_steps": 20,
              "save_total_limit": 2, "metric": "eval_loss"}
    cfg = build_config(_spec(tmp_path, resume_from=tmp_path / "out" / "checkpoint-2", metric="eval_loss"), values,
                       tmp_path / "d", load_best_model_at_end=True)
    assert cfg["finetuning_type"] == "lora" and cfg["lora_target"] == "all"
    assert cfg["quantization_bit"] == 8 and cfg["quantization_method"] == "bnb"
    assert cfg["eval_dataset"] == "ft_eval" and cfg["metric_for_best_model"] == "loss"
    assert cfg["load_best_model_at_end"] is True and cfg["save_total_limit"] == 2
    assert cfg["resume_from_checkpoint"].endswith("checkpoint-2") and cfg["use_cpu"] is True
    latest = build_config(_spec(tmp_path, resume_from="latest"), values, tmp_path / "d")
    assert "resume_from_checkpoint" not in latest, "LLaMA-Factory resumes from the last checkpoint by itself"
    assert "metric_for_best_model" not in latest, "a user's config names a metric only when the run names one"
    with pytest.raises(ConfigError, match="quanto"):
        build_config(_spec(tmp_path), {**values, "quantization": "quanto-int8"}, tmp_path / "d")


def test_llamafactory_gradient_checkpointing_uses_its_own_switch(tmp_path):
    """LLaMA-Factory checkpoints by default (disable_gradient_checkpointing false, use_reentrant_gc true): a run that
    says off is written disable_gradient_checkpointing true; a kind sets use_reentrant_gc; a run that says nothing
    keeps LLaMA-Factory's default, as its users get it."""
    def cfg(value=None):
        cli = {} if value is None else {"gradient_checkpointing": value}
        return build_config(_spec(tmp_path, cli=cli), {**DEFAULTS, "gradient_checkpointing": value or False},
                            tmp_path / "d")

    assert "disable_gradient_checkpointing" not in cfg() and "gradient_checkpointing" not in cfg()
    assert cfg(False)["disable_gradient_checkpointing"] is True and "use_reentrant_gc" not in cfg(False)
    on = cfg("non-reentrant")
    assert (on["disable_gradient_checkpointing"], on["use_reentrant_gc"]) == (False, False)
    assert "gradient_checkpointing" not in on and "gradient_checkpointing_kwargs" not in on  # one switch, LF's own
    assert cfg("reentrant")["use_reentrant_gc"] is True


def test_llamafactory_dpo_config_and_preference_dataset(tmp_path):
    """DPO is stage dpo on the ranking dataset with the run's beta and loss, and no ref_model key (LLaMA-Factory's
    example configs); the converted preference rows keep prompt / chosen / rejected."""
    from harness.models import preference_rows, write_datasets

    src = write_datasets(tmp_path / "src")
    files = kit.convert_datasets(src, tmp_path / "d", "alpaca")
    info = json.loads((tmp_path / "d" / "dataset_info.json").read_text())
    assert info["ft_preferences"]["ranking"] is True
    assert info["ft_preferences"]["columns"] == {"prompt": "prompt", "chosen": "chosen", "rejected": "rejected"}
    assert [json.loads(line) for line in files["preferences"].read_text().splitlines()] == preference_rows()
    values = {**DEFAULTS, "method": "dpo", "beta": 0.25, "loss_type": "hinge"}
    cfg = build_config(_spec(tmp_path), values, tmp_path / "d")
    assert (cfg["stage"], cfg["dataset"], cfg["pref_beta"], cfg["pref_loss"]) == ("dpo", "ft_preferences", 0.25, "hinge")
    assert "ref_model" not in cfg
    assert build_config(_spec(tmp_path), DEFAULTS, tmp_path / "d")["stage"] == "sft"


def test_llamafactory_kto_config_and_kto_tag_dataset(tmp_path):
    """KTO is stage kto on ``ft_kto``, the preference rows unpaired with a ``kto_tag`` (alpaca columns), with the run's
    beta as ``pref_beta``, no DPO ``pref_loss`` and no ref_model key."""
    from harness.models import preference_rows, write_datasets

    src = write_datasets(tmp_path / "src")
    kit.convert_datasets(src, tmp_path / "d", "alpaca")
    info = json.loads((tmp_path / "d" / "dataset_info.json").read_text())
    assert info["ft_kto"]["columns"] == {"prompt": "instruction", "response": "output", "kto_tag": "kto_tag"}
    rows = [json.loads(line) for line in (tmp_path / "d" / info["ft_kto"]["file_name"]).read_text().splitlines()]
    pairs = preference_rows()
    assert rows[0] == {"instruction": pairs[0]["prompt"], "output": pairs[0]["chosen"], "kto_tag": True}
    assert rows[len(pairs)] == {"instruction": pairs[0]["prompt"], "output": pairs[0]["rejected"], "kto_tag": False}
    cfg = build_config(_spec(tmp_path), {**DEFAULTS, "method": "kto", "beta": 0.2}, tmp_path / "d")
    assert (cfg["stage"], cfg["dataset"], cfg["pref_beta"]) == ("kto", "ft_kto", 0.2)
    assert "pref_loss" not in cfg and "ref_model" not in cfg


def test_transformers_training_arguments():
    values = {**DEFAULTS, "eval_steps": 5, "save_steps": 20, "save_total_limit": 1, "metric": "eval_accuracy",
              "greater_is_better": True}
    kw = training_arguments(values, Path("/o"), "cpu", load_best_model_at_end=False,
                            given={"metric": "eval_accuracy", "greater_is_better": True})
    assert kw["metric_for_best_model"] == "accuracy" and kw["eval_steps"] == 5 and kw["save_steps"] == 20
    assert kw["save_total_limit"] == 1 and kw["use_cpu"] is True and kw["load_best_model_at_end"] is False
    assert kw["greater_is_better"] is True
    unnamed = training_arguments(values, Path("/o"), "cpu", load_best_model_at_end=False)
    assert "metric_for_best_model" not in unnamed and "greater_is_better" not in unnamed, (
        "no best tracking unless the run names a metric: what a user's default config does")
    plain = training_arguments(DEFAULTS, Path("/o"), "cpu", load_best_model_at_end=False)
    assert plain["save_strategy"] == "no" and "eval_strategy" not in plain


def test_convert_datasets_formats(tiny_assets, tmp_path):
    files = kit.convert_datasets(tiny_assets.dataset_dir, tmp_path / "m", "messages")
    row = json.loads(files["train"].read_text().splitlines()[0])
    first = json.loads((tiny_assets.dataset_dir / "train.jsonl").read_text().splitlines()[0])["text"]
    assert [m["role"] for m in row["messages"]] == ["user", "assistant"]
    assert " ".join(m["content"] for m in row["messages"]) == first
    files = kit.convert_datasets(tiny_assets.dataset_dir, tmp_path / "a", "alpaca")
    info = json.loads((tmp_path / "a" / "dataset_info.json").read_text())
    assert set(info) == {"ft_train", "ft_eval", "ft_preferences", "ft_kto"} and info["ft_train"]["file_name"] == "train.jsonl"
    row = json.loads(files["eval"].read_text().splitlines()[0])
    assert set(row) == {"instruction", "output"}
    with pytest.raises(ValueError, match="unknown dataset format"):
        kit.convert_datasets(tiny_assets.dataset_dir, tmp_path / "x", "sharegpt")


def test_adapter_options_are_checked():
    with pytest.raises(TypeError, match="load_best_model_at_end"):
        TransformersAdapter(nope="1")
    with pytest.raises(TypeError, match="expected true or false"):
        TransformersAdapter(load_best_model_at_end="maybe")
    assert TransformersAdapter(load_best_model_at_end="yes").load_best_model_at_end is True
    assert "args" not in TransformersAdapter().capabilities, "plain transformers reads no saved args files"


def test_bracket_options_reach_one_adapter():
    assert split_adapter_spec("swift[load_args=true,template=qwen]") == ("swift", {"load_args": "true",
                                                                                   "template": "qwen"})
    assert split_adapter_spec("harness.mutants:NonAtomicSave") == ("harness.mutants:NonAtomicSave", {})
    adapter = load_adapter("transformers[load_best_model_at_end=true]")
    assert adapter.load_best_model_at_end is True and adapter.name.endswith("[load_best_model_at_end]")
    with pytest.raises(AdapterLoadError, match="KEY=VALUE"):
        split_adapter_spec("swift[load_args]")


def test_framework_entry_points_are_registered():
    from importlib.metadata import entry_points

    names = {ep.name for ep in entry_points(group="ft_harness.adapters")}
    assert {"reference", "transformers", "swift", "llamafactory", "axolotl", "torchtune", "unsloth"} <= names


def test_known_upstream_failure_for_old_quanto(monkeypatch):
    import importlib.metadata as md

    from harness.reference import adapter as ref

    real = md.version
    monkeypatch.setattr(md, "version", lambda name: "0.2.4" if name == "optimum-quanto" else real(name))
    known = ref.known_upstream_failures()
    key = "test_diffusion_lora_resume.py::test_resume_matches_uninterrupted[cpu-quanto-int8"
    assert known[key][1] is KeyError and "diffusers #9108" in known[key][0]
    monkeypatch.setattr(md, "version", lambda name: "0.2.7" if name == "optimum-quanto" else real(name))
    assert ref.known_upstream_failures() == {}


def test_transformers_adapter_trains_plainly(tiny_assets, tmp_path):
    """One real run: checkpoints at the cadence, the final model in output_dir, no args.json (plain)."""
    adapter = load_adapter("transformers")
    result = adapter.train(RunSpec(model_dir=tiny_assets.model_dir, output_dir=tmp_path / "run",
                                   dataset_dir=tiny_assets.dataset_dir, train_type="full", max_steps=2, save_steps=1))
    assert [c.name for c in result.checkpoints] == ["checkpoint-1", "checkpoint-2"]
    assert (result.final_dir / "model.safetensors").is_file() and (result.final_dir / "trainer_state.json").is_file()
    assert not (result.final_dir / "args.json").exists()


def test_simpletuner_config(tmp_path):
    from harness.adapters.simpletuner import LAUNCHER, PRECISION, backend_config, build_config

    values = {**DEFAULTS, "quantization": "quanto-int8", "max_steps": 6, "save_steps": 2, "lora_rank": 4}
    spec = _spec(tmp_path, method="diffusion")
    cfg = build_config(spec, values, tmp_path / "w", "checkpoint-2")
    assert (cfg["model_family"], cfg["model_type"], cfg["base_model_precision"]) == ("sd1x", "lora", "int8-quanto")
    assert cfg["quantize_via"] == "cpu" and cfg["mixed_precision"] == "no"
    assert (cfg["max_train_steps"], cfg["checkpoint_step_interval"]) == (6, 2)
    assert cfg["resume_from_checkpoint"] == "checkpoint-2" and cfg["output_dir"] == str(tmp_path / "out")
    assert PRECISION[None] == "no_change"
    with pytest.raises(ConfigError, match="quantization"):
        build_config(spec, {**values, "quantization": "nf4"}, tmp_path / "w", None)
    backends = backend_config(tmp_path / "w", tmp_path / "images")
    assert backends[0]["instance_data_dir"] == str(tmp_path / "images") and backends[1]["dataset_type"] == "text_embeds"
    # the launcher applies exactly the documented fixes and records accelerator.log
    for needle in ("safety_checker", "feature_extractor", "pin_memory", "accelerate.Accelerator.log",
                   "simpletuner.train"):
        assert needle in LAUNCHER


def test_run_in_fork_reports_the_framework_error():
    from harness.runtime import FrameworkError, run_in_fork

    def boom():
        raise ValueError("missing required file 'tokenizer.json' in /x/broken-base")

    with pytest.raises(FrameworkError, match=r"ValueError: missing required file 'tokenizer.json' in /x/broken-base"):
        run_in_fork(boom)
    seen = []
    run_in_fork(lambda: seen.append(1))
    assert seen == [], "the run happens in the child: the parent's state is untouched"


def test_swift_lora_alpha_is_an_int_where_integral():
    """ms-swift 3.x parses --lora_alpha as int: "8.0" is refused (SystemExit 2); 4.x takes the int too."""
    assert swift_cli({"lora_alpha": 8.0}, V4_FIELDS) == {"lora_alpha": 8}
    assert swift_cli({"lora_alpha": 2.5}, V4_FIELDS) == {"lora_alpha": 2.5}


# --------------------------------------------------------------------------- issue 21: chat data, new tokens
def test_convert_chat_datasets_formats(tmp_path):
    from harness.models import CHAT_TRAIN, write_chat_datasets

    data = write_chat_datasets(tmp_path / "chat")
    files = kit.convert_chat_datasets(data, tmp_path / "m", "messages")
    rows = [json.loads(line) for line in files["train"].read_text().splitlines()]
    assert len(rows) == len(CHAT_TRAIN) and all(set(r) == {"messages"} for r in rows)
    assert rows[0]["messages"] == [{"role": "user", "content": "w1 w2"}, {"role": "assistant", "content": "w3 w4 w5"}]
    assert rows[1]["messages"] == CHAT_TRAIN[1]["messages"], "multi-turn rows pass unchanged"
    kit.convert_chat_datasets(data, tmp_path / "s", "sharegpt")
    info = json.loads((tmp_path / "s" / "dataset_info.json").read_text())
    assert set(info) == {"ft_train", "ft_eval"} and info["ft_train"]["formatting"] == "sharegpt"
    assert info["ft_train"]["tags"]["assistant_tag"] == "assistant" and info["ft_train"]["columns"] == {
        "messages": "messages"}
    with pytest.raises(ValueError, match="unknown chat dataset format"):
        kit.convert_chat_datasets(data, tmp_path / "x", "alpaca")


def test_llamafactory_new_tokens_and_template(tmp_path):
    values = {**DEFAULTS, "new_special_tokens": ["<|tool|>", "<|/tool|>"]}
    cfg = build_config(_spec(tmp_path), values, tmp_path / "d", template=None)
    assert cfg["add_special_tokens"] == "<|tool|>,<|/tool|>" and cfg["resize_vocab"] is True
    assert cfg["template"] is None, "chat data: LLaMA-Factory parses the tokenizer's own template"
    old = build_config(_spec(tmp_path), values, tmp_path / "d", special_tokens_key="new_special_tokens")
    assert old["new_special_tokens"] == "<|tool|>,<|/tool|>" and "add_special_tokens" not in old
    assert "resize_vocab" not in build_config(_spec(tmp_path), DEFAULTS, tmp_path / "d")


def test_llamafactory_trainable_set_becomes_freeze_keys(tiny_assets, tmp_path):
    """trainable_parameters becomes finetuning_type freeze with the keys whose trained set (LLaMA-Factory's substring
    rule, simulated on the base's names) is exactly the asked one; a set no keys give is refused, never approximated."""
    from harness.adapters.llamafactory import freeze_trainable
    from harness.errors import SpecRefused
    from harness.layout import read_safetensors_header
    from harness.spec import in_trainable_set
    from scenarios.test_trainable_set import TRAINABLE_SETS

    spec = RunSpec(model_dir=tiny_assets.model_dir, output_dir=tmp_path / "out", dataset_dir=tmp_path / "data")
    names = sorted(read_safetensors_header(tiny_assets.model_dir / "model.safetensors"))

    def config(patterns, **values):
        return build_config(spec, {**DEFAULTS, "train_type": "full", "trainable_parameters": patterns, **values},
                            tmp_path / "d")

    last, attention = config(TRAINABLE_SETS["last-layer"]), config(TRAINABLE_SETS["attention-and-head"])
    assert (last["finetuning_type"], last["freeze_trainable_layers"], last["freeze_trainable_modules"],
            last["freeze_extra_modules"]) == ("freeze", 1, "all", None)
    assert (attention["freeze_trainable_layers"], attention["freeze_trainable_modules"],
            attention["freeze_extra_modules"]) == (2, "self_attn", "lm_head")
    for patterns in TRAINABLE_SETS.values():
        cfg = config(patterns)
        trained = freeze_trainable(names, 2, cfg["freeze_trainable_layers"], cfg["freeze_trainable_modules"].split(","),
                                   (cfg["freeze_extra_modules"] or "").split(",") if cfg["freeze_extra_modules"] else [])
        assert trained == {n for n in names if in_trainable_set(n, patterns)}
    # "norm" as an extra module is a substring of every layer's norms too: the final norm alone cannot be said
    with pytest.raises(SpecRefused, match="trainable_parameters"):
        config([r"model\.norm\.weight"])
    with pytest.raises(SpecRefused, match="full-parameter"):
        config(TRAINABLE_SETS["last-layer"], train_type="lora")
    assert build_config(spec, {**DEFAULTS, "train_type": "full"}, tmp_path / "d")["finetuning_type"] == "full"
    assert "moe_aux_loss_coef" not in last
    assert build_config(spec, {**DEFAULTS, "router_aux_loss_coef": 0.01}, tmp_path / "d")["moe_aux_loss_coef"] == 0.01


def test_transformers_sft_config_trains_assistant_turns_only():
    from harness.adapters.transformers import sft_config_arguments

    targs = training_arguments({**DEFAULTS, "eval_steps": 4}, Path("/o"), "cpu", load_best_model_at_end=False)
    kw = sft_config_arguments({**DEFAULTS, "eval_steps": 4}, targs)
    assert kw["assistant_only_loss"] is True and kw["packing"] is False and kw["eval_steps"] == 4
    assert kw["output_dir"] == "/o" and kw["max_length"] == 64


def test_swift_tiny_template_matches_the_tiny_chat_format():
    """The ms-swift template registered for chat data renders what the tokenizer's own template renders."""
    from harness.adapters.swift import TINY_TEMPLATE_META
    from harness.models import build_tokenizer

    tok = build_tokenizer()
    meta = TINY_TEMPLATE_META
    chat = [("w6", "w7 w8"), ("w9", "w12 w13")]
    special = {"bos_token_id": tok.bos_token, "eos_token_id": tok.eos_token}

    def text(parts, query=""):
        return "".join(special[p[0]] if isinstance(p, list) else p.replace("{{QUERY}}", query) for p in parts)

    rendered = text(meta["prefix"])
    for i, (q, a) in enumerate(chat):
        rendered += text(meta["prompt"], q) + a + text(meta["chat_sep"] if i < len(chat) - 1 else meta["suffix"])
    messages = [m for q, a in chat for m in ({"role": "user", "content": q}, {"role": "assistant", "content": a})]
    want = tok.apply_chat_template(messages, tokenize=False)
    assert tok(rendered, add_special_tokens=False)["input_ids"] == tok(want, add_special_tokens=False)["input_ids"]


def test_swift_reasoning_model_gets_the_thinking_template(tmp_path, monkeypatch):
    """A model whose chat template renders reasoning is trained with the tiny template declared is_thinking (as
    ms-swift declares qwen3); any other chat model with the plain one; a release whose TemplateMeta has no
    is_thinking (3.1.1) refuses the reasoning model up front."""
    import harness.adapters.swift as swift_adapter
    from harness.adapters.swift import (TINY_TEMPLATE, TINY_THINKING_TEMPLATE, TINY_THINKING_TEMPLATE_META,
                                        SwiftAdapter)

    monkeypatch.setattr(swift_adapter, "_template_meta_has", lambda name: True)
    from harness.models import THINKING_TEMPLATE, write_chat_datasets

    data = write_chat_datasets(tmp_path / "chat")
    plain, thinking = tmp_path / "plain", tmp_path / "thinking"
    plain.mkdir()
    thinking.mkdir()
    (plain / "chat_template.jinja").write_text("{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}")
    (thinking / "chat_template.jinja").write_text(THINKING_TEMPLATE)
    adapter = SwiftAdapter.__new__(SwiftAdapter)
    adapter.template, adapter.template_given = "qwen", False
    spec = RunSpec(model_dir=thinking, output_dir=tmp_path / "o", dataset_dir=data)
    assert adapter._template_for(spec) == TINY_THINKING_TEMPLATE
    assert adapter._template_for(spec.replace(model_dir=plain)) == TINY_TEMPLATE
    assert TINY_THINKING_TEMPLATE_META["is_thinking"] is True
    monkeypatch.setattr(swift_adapter, "_template_meta_has", lambda name: False)
    with pytest.raises(SpecRefused, match="no is_thinking"):
        adapter._template_for(spec)
    assert adapter._template_for(spec.replace(model_dir=plain)) == TINY_TEMPLATE


# ---------------------------------------------------------------------------------------------- torchtune
from harness.adapters import torchtune as tt  # noqa: E402
from harness.errors import SpecRefused  # noqa: E402


def _tt_values(**kw):
    return {**DEFAULTS, "seed": 42, "logging_steps": 1, **kw}


def test_torchtune_config_maps_the_run(tiny_assets, tmp_path):
    spec = _spec(tmp_path, max_steps=8, save_steps=4)
    cfg = tt.build_config(spec, _tt_values(max_steps=8, save_steps=4), {"train": tmp_path / "t.jsonl"},
                          tiny_assets.model_dir)
    assert (cfg["epochs"], cfg["max_steps_per_epoch"]) == (2, 4), "a save every 4 steps is an epoch of 4 steps"
    assert cfg["model"]["_component_"] == "torchtune.models.llama3.lora_llama3"
    assert cfg["model"]["apply_lora_to_mlp"] and not cfg["model"]["apply_lora_to_output"], "all-linear, no lm_head"
    assert (cfg["model"]["embed_dim"], cfg["model"]["num_kv_heads"], cfg["model"]["rope_base"]) == (64, 2, 10000.0)
    assert cfg["checkpointer"]["model_type"] == "LLAMA3" and cfg["checkpointer"]["output_dir"] == str(spec.output_dir)
    assert cfg["lr_scheduler"]["num_cycles"] == 0.0, "constant: the cosine schedule with no cycle (factor 1)"
    assert cfg["clip_grad_norm"] == 1.0 and cfg["optimizer"]["weight_decay"] == 0.0 and not cfg["dataset"]["add_eos"]
    assert not cfg["resume_from_checkpoint"]
    whole = tt.build_config(spec, _tt_values(train_type="full"), {"train": tmp_path / "t.jsonl"}, tiny_assets.model_dir)
    assert (whole["epochs"], whole["max_steps_per_epoch"]) == (1, 8), "no save cadence: one epoch of max_steps"
    assert whole["model"]["_component_"] == "torchtune.models.llama3.llama3"


def test_torchtune_resume_from_an_epoch_of_its_output_dir(tiny_assets, tmp_path):
    for epoch in ("epoch_0", "epoch_1"):
        (tmp_path / "out" / epoch).mkdir(parents=True)
        (tmp_path / "out" / epoch / "model-00001-of-00001.safetensors").write_bytes(b"")
        (tmp_path / "out" / epoch / "adapter_model.safetensors").write_bytes(b"")
    spec = _spec(tmp_path, resume_from=tmp_path / "out" / "epoch_0")
    lora = tt.build_config(spec, _tt_values(save_steps=4), {"train": tmp_path / "t.jsonl"}, tiny_assets.model_dir)
    assert lora["resume_from_checkpoint"] and lora["checkpointer"]["adapter_checkpoint"] == "epoch_0/adapter_model.pt"
    full = tt.build_config(spec, _tt_values(save_steps=4, train_type="full"), {"train": tmp_path / "t.jsonl"},
                           tiny_assets.model_dir)
    assert full["checkpointer"]["checkpoint_files"] == ["epoch_0/model-00001-of-00001.safetensors"]
    latest = tt.build_config(_spec(tmp_path, resume_from="latest"), _tt_values(save_steps=4),
                             {"train": tmp_path / "t.jsonl"}, tiny_assets.model_dir)
    assert latest["checkpointer"]["adapter_checkpoint"] == "epoch_1/adapter_model.pt", "latest: the newest epoch"
    latest_full = tt.build_config(_spec(tmp_path, resume_from="latest"), _tt_values(save_steps=4, train_type="full"),
                                  {"train": tmp_path / "t.jsonl"}, tiny_assets.model_dir)
    assert latest_full["checkpointer"]["checkpoint_files"] == ["epoch_1/model-00001-of-00001.safetensors"]


@pytest.mark.parametrize("values, key", [
    ({"max_steps": 8, "save_steps": 3}, "save_steps"),
    ({"lr_scheduler_type": "cosine_with_restarts"}, "lr_scheduler_type"),
    ({"lr_scheduler_type": "constant", "warmup_steps": 2}, "lr_scheduler_type"),
    ({"eval_steps": 2}, "eval_steps"),
])
def test_torchtune_refuses_what_it_cannot_express(tiny_assets, tmp_path, values, key):
    with pytest.raises(SpecRefused, match=f"torchtune cannot express {key}="):
        tt.build_config(_spec(tmp_path), _tt_values(**values), {"train": tmp_path / "t.jsonl"}, tiny_assets.model_dir)
    elsewhere = _spec(tmp_path, resume_from=tmp_path / "copy" / "epoch_0")
    with pytest.raises(SpecRefused, match="resumes only an epoch_E of its own output_dir"):
        tt.build_config(elsewhere, _tt_values(), {"train": tmp_path / "t.jsonl"}, tiny_assets.model_dir)


def test_torchtune_layout_is_read_as_torchtune_writes_it(tmp_path):
    """Checkpoints are epoch_E/ mapped to steps by the saved config's max_steps_per_epoch; the log is the DiskLogger
    file, ``lr`` read as learning_rate through the declared log_keys."""
    from harness.layout import run_checkpoint_map, run_log_history, use_layout

    out = tmp_path / "out"
    for name in ("epoch_0", "epoch_1", "epoch_x", "recipe_state"):
        (out / name).mkdir(parents=True)
    (out / "torchtune_config.yaml").write_text("max_steps_per_epoch: 4\nepochs: 2\n", encoding="utf-8")
    (out / "logs").mkdir()
    (out / "logs" / "log.txt").write_text(
        "Step 1 | loss:3.98 lr:0.001 tokens_per_second_per_gpu:312.5 grad_norm:tensor(1.2500) \n"
        "noise\nStep 2 | loss:3.5 lr:0.0005 \n", encoding="utf-8")
    adapter = load_adapter("harness.adapters.torchtune:TorchtuneAdapter")
    with use_layout(adapter):
        assert run_checkpoint_map(out) == {4: out / "epoch_0", 8: out / "epoch_1"}
        history = run_log_history(out)
    assert history[0] == {"step": 1, "loss": 3.98, "learning_rate": 0.001, "tokens_per_second_per_gpu": 312.5,
                          "grad_norm": 1.25}
    assert [h["step"] for h in history] == [1, 2] and adapter.resume_points == "newest"
    assert adapter.checkpoints(tmp_path / "never") == {}


def test_torchtune_schedules_are_its_cosine_or_transformers_linear(tiny_assets, tmp_path):
    """constant and cosine are torchtune's one schedule (num_cycles 0 / 0.5); linear is transformers'
    get_linear_schedule_with_warmup, whose signature is the one the recipes instantiate a scheduler with."""
    import inspect

    from transformers import get_linear_schedule_with_warmup

    def scheduler(**kw):
        return tt.build_config(_spec(tmp_path), _tt_values(**kw), {"train": tmp_path / "t.jsonl"},
                               tiny_assets.model_dir)["lr_scheduler"]

    assert scheduler(lr_scheduler_type="linear", warmup_steps=2) == {
        "_component_": "transformers.get_linear_schedule_with_warmup", "num_warmup_steps": 2}
    assert list(inspect.signature(get_linear_schedule_with_warmup).parameters) == [
        "optimizer", "num_warmup_steps", "num_training_steps", "last_epoch"]
    assert scheduler(lr_scheduler_type="cosine", warmup_steps=1) == {"_component_": tt.COSINE, "num_cycles": 0.5,
                                                                    "num_warmup_steps": 1}


# ---------------------------------------------------------------------------------------------- unsloth
from harness.adapters import unsloth as us  # noqa: E402 - imports no unsloth until an adapter is constructed


def test_unsloth_loads_as_its_notebooks_do():
    """FastLanguageModel keywords: the task's length bound, float32 unless asked, bitsandbytes 4/8-bit for nf4/int8,
    full_finetuning for a full run; get_peft_model's names for the run's LoRA (r, random_state)."""
    import torch

    lora = us.load_kwargs({**DEFAULTS, "train_type": "lora", "quantization": "nf4"}, "float32")
    assert lora == {"max_seq_length": 64, "dtype": torch.float32, "load_in_4bit": True, "load_in_8bit": False,
                    "full_finetuning": False, "local_files_only": True}
    full = us.load_kwargs({**DEFAULTS, "train_type": "full", "quantization": "int8"}, "auto")
    assert full["dtype"] is None and full["load_in_8bit"] and not full["load_in_4bit"] and full["full_finetuning"]
    assert us.load_kwargs({**DEFAULTS, "train_type": "lora"}, "bfloat16")["dtype"] is torch.bfloat16
    peft = us.peft_kwargs({**DEFAULTS, "lora_rank": 4, "lora_alpha": 16, "target_modules": ("q_proj", "v_proj")})
    assert peft == {"r": 4, "lora_alpha": 16, "lora_dropout": DEFAULTS["lora_dropout"],
                    "target_modules": ["q_proj", "v_proj"], "random_state": DEFAULTS["seed"],
                    "use_gradient_checkpointing": False}
    assert us.peft_kwargs({**DEFAULTS, "target_modules": "all-linear"})["target_modules"] == "all-linear"


def test_unsloth_options_are_checked_before_unsloth_is_imported(monkeypatch):
    import sys

    with pytest.raises(TypeError, match="dtype: float32"):
        us.UnslothAdapter(nope="1")
    with pytest.raises(TypeError, match="expected one of float32, bfloat16, auto"):
        us.UnslothAdapter(dtype="float16")
    monkeypatch.setitem(sys.modules, "unsloth", None)  # as where unsloth is not installed
    with pytest.raises(AdapterLoadError, match=r"ft-harness\[unsloth\]"):
        us.UnslothAdapter()
    assert {"grpo", "packing", "quant-int8"}.isdisjoint(us.UnslothAdapter.capabilities), "its CPU backend: SFT, no 8-bit"


def test_a_subclass_loads_the_model_its_own_way(tiny_assets, tmp_path):
    """The transformers adapter's ``load_model`` / ``add_lora`` hooks (what the unsloth adapter overrides) are the ones
    its trainer trains: the batches come through a subclass's loader, and its LoRA is the model trained."""
    calls = []

    class Loader(TransformersAdapter):
        def load_model(self, spec, values):
            calls.append(("load", values["train_type"]))
            return super().load_model(spec, values)

        def add_lora(self, model, values):
            calls.append(("lora", values["lora_rank"]))
            return super().add_lora(model, values)

    spec = RunSpec(model_dir=tiny_assets.model_dir, output_dir=tmp_path / "run", dataset_dir=tiny_assets.dataset_dir,
                   train_type="lora", max_steps=1, cli={"lora_rank": 2})
    assert Loader().training_batches(spec) and calls == [("load", "lora"), ("lora", 2)]


def test_torchtune_qlora_option_declares_torchao_nf4_on_the_wide_model(tiny_assets, tmp_path):
    """issue 37: option qlora=true declares torchtune's own quantised base (torchao NF4: ``quantize_base: true``),
    on the llama-wide tiny model (the default one's 64 x 64 weights are below NF4's 64 x 256-element grouping)."""
    from harness.adapter import validate_adapter

    plain, qlora = tt.TorchtuneAdapter(), tt.TorchtuneAdapter(qlora="true")
    validate_adapter(qlora)
    assert not plain.quantizations and plain.model_arch == "llama" and "torchao-nf4" not in plain.capabilities
    assert qlora.quantizations["torchao-nf4"].library == "torchao" and qlora.model_arch == "llama-wide"
    assert "torchao-nf4" in qlora.capabilities
    data = {"train": tmp_path / "t.jsonl"}
    cfg = tt.build_config(_spec(tmp_path), _tt_values(quantization="torchao-nf4"), data, tiny_assets.model_dir)
    assert cfg["model"]["quantize_base"] is True
    assert tt.build_config(_spec(tmp_path), _tt_values(), data, tiny_assets.model_dir)["model"]["quantize_base"] is False
    for values in ({"quantization": "nf4"}, {"quantization": "torchao-nf4", "train_type": "full"}):
        with pytest.raises(SpecRefused, match="torchtune cannot express quantization="):
            tt.build_config(_spec(tmp_path), _tt_values(**values), data, tiny_assets.model_dir)
