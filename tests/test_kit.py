"""The adapter-authoring kit (harness/kit.py) and the axolotl adapter's own logic, without any framework installed:
the ConfigFileAdapter base end to end on a toy framework, the process-model rules, the dataset converters,
options and per-option known failures, unavailable metrics, the implied ``in-process`` capability, axolotl's YAML."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch  # imported here so pytester's in-process runs never unload/reload it

from harness import kit
from harness.spec import BEST_CHECKPOINT_STORY
from harness.adapter import RunSpec, effective_capabilities, load_adapter, validate_adapter
from harness.errors import AdapterLoadError, ConfigError
from harness.task import TASK_DEFAULTS


class ToyFramework(kit.ConfigFileAdapter):
    """A 'framework' whose launch writes what a Trainer writes: one checkpoint and the final trainer_state.json."""

    name = "toy"
    capabilities = frozenset({"sft", "full"})
    dataset_format = "alpaca"
    options = {"fast": ("false", "true/false: a switch"), "template": ("plain", "a template name")}
    known_failures = {"test_a.py::test_always": "always red"}
    known_failures_when = {"fast=true": {"test_a.py::test_fast": "red only when fast"}}

    def write_config(self, spec, values, data, workdir):
        cfg = {"out": str(spec.output_dir), "seed": values["seed"], "logging_steps": values["logging_steps"],
               "train": str(data["train"]), "first_row": json.loads(data["train"].read_text().splitlines()[0]),
               "eval_rows": len(data["eval"].read_text().splitlines())}
        return kit.write_config_file(workdir / "toy.yml", cfg)

    def launch(self, config, spec):
        import yaml

        cfg = yaml.safe_load(Path(config).read_text())
        out = Path(cfg["out"])
        state = {"log_history": [{"step": 1, "loss": 1.0}], "global_step": 1,
                 "config": cfg, "threads": torch.get_num_threads(), "pid": os.getpid()}
        (out / "checkpoint-1").mkdir(parents=True)
        (out / "checkpoint-1" / "trainer_state.json").write_text(json.dumps(state))


def test_config_file_adapter_end_to_end(tiny_assets, tmp_path):
    adapter = ToyFramework()
    validate_adapter(adapter)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # (under xdist the worker runs on one thread already: the fork must still set it)
    try:
        result = adapter.train(RunSpec(model_dir=tiny_assets.model_dir, output_dir=tmp_path / "out",
                                       dataset_dir=tiny_assets.dataset_dir, train_type="full", max_steps=1))
    finally:
        torch.set_num_threads(threads)
    assert [c.name for c in result.checkpoints] == ["checkpoint-1"] and result.final_dir == tmp_path / "out"
    assert result.log_history == ({"step": 1, "loss": 1.0},)
    state = json.loads((tmp_path / "out" / "checkpoint-1" / "trainer_state.json").read_text())
    cfg = state["config"]
    assert cfg["seed"] == TASK_DEFAULTS["seed"] and cfg["logging_steps"] == 1, "seed and cadence are explicit"
    assert set(cfg["first_row"]) == {"instruction", "output"} and cfg["eval_rows"] == 16
    assert state["threads"] == 1, f"torch must run on one thread in the forked child, found {state['threads']}"
    assert state["pid"] != os.getpid(), "launch runs in a forked child"
    assert not Path(cfg["train"]).exists(), "the converted data lives in a temporary directory, removed after the run"
    assert result.resolved["train_type"] == "full" and result.resolved.source_of("train_type").kind == "cli"


def test_run_spec_states_seed_logging_and_eval_data(tmp_path):
    spec = RunSpec(model_dir=tmp_path, output_dir=tmp_path, dataset_dir=tmp_path)
    assert (spec.run_seed(), spec.logging_steps, spec.eval_file) == (42, 1, "eval.jsonl")
    assert spec.replace(seed=7).run_seed() == 7
    assert "logging_steps" not in spec.cli_args() and "eval_file" not in spec.cli_args(), "not command-line fields"


def test_options_defaults_name_and_per_option_known_failures():
    plain = ToyFramework()
    assert plain.option_values == {"fast": "false", "template": "plain"} and plain.name == "toy"
    assert plain.flag("fast") is False and set(plain.known_failures) == {"test_a.py::test_always"}
    fast = ToyFramework(fast="TRUE")
    assert fast.flag("fast") is True and fast.name == "toy[fast=TRUE]"
    assert set(fast.known_failures) == {"test_a.py::test_always", "test_a.py::test_fast"}
    assert set(ToyFramework.known_failures) == {"test_a.py::test_always"}, "the class attribute is left alone"
    with pytest.raises(TypeError, match=r"unknown toy adapter options \['slow'\].*fast: true/false"):
        ToyFramework(slow="1")
    with pytest.raises(TypeError, match="expected true or false"):
        ToyFramework(fast="maybe").flag("fast")


def test_known_failures_when_must_name_an_option():
    class Wrong(ToyFramework):
        known_failures_when = {"nope=true": {"test_a.py::test_x": "r"}}

    with pytest.raises(TypeError, match="'nope' is not an option"):
        Wrong()


@pytest.mark.parametrize("fmt, keys", [("completion", {"text"}), ("messages", {"messages"}),
                                       ("alpaca", {"instruction", "output"}), ("prompt-only", {"prompt", "completion"})])
def test_dataset_formats(tiny_assets, tmp_path, fmt, keys):
    files = kit.convert_datasets(tiny_assets.dataset_dir, tmp_path, fmt)
    first = json.loads((tiny_assets.dataset_dir / "train.jsonl").read_text().splitlines()[0])["text"]
    row = json.loads(files["train"].read_text().splitlines()[0])
    assert set(row) == keys, f"{fmt}: expected keys {keys}, found {set(row)}"
    text = {"completion": lambda r: r["text"], "messages": lambda r: " ".join(m["content"] for m in r["messages"]),
            "alpaca": lambda r: f"{r['instruction']} {r['output']}",
            "prompt-only": lambda r: r["prompt"] + r["completion"]}[fmt](row)
    assert text == first, f"{fmt}: the row must hold the whole text {first!r}, found {text!r}"
    prompt = json.loads(files["prompts"].read_text().splitlines()[0])
    assert prompt, f"{fmt}: prompts are converted too"


def test_eval_file_is_read(tiny_assets, tmp_path):
    (tmp_path / "src").mkdir()
    for name in ("train.jsonl", "prompts.jsonl"):
        (tmp_path / "src" / name).write_text((tiny_assets.dataset_dir / name).read_text())
    (tmp_path / "src" / "other.jsonl").write_text('{"text": "w1 w2"}\n')
    files = kit.convert_datasets(tmp_path / "src", tmp_path / "out", "completion", eval_file="other.jsonl")
    assert files["eval"].read_text().strip() == '{"text": "w1 w2"}'


def test_reference_reward_is_offered():
    assert kit.counting_reward(["w1 w2"], ["w3 w4"]) == [1.0]


def test_child_sigkill_is_an_error_outside_fault_injection():
    with pytest.raises(kit.FrameworkError, match="died with signal 9"):
        kit.run_in_fork(lambda: os.kill(os.getpid(), signal.SIGKILL))


def test_child_sigkill_kills_the_parent_during_fault_injection():
    """Rule 3: while fault injection is on, the runner dies by SIGKILL as its child did."""
    import tempfile
    import traceback

    with tempfile.NamedTemporaryFile("r", suffix=".txt") as why:
        pid = os.fork()
        if pid == 0:  # a stand-in for the fault-injection child of harness.faults
            try:
                import importlib

                # the module run_in_fork consults (sys.modules'; pytester's in-process runs may leave the package
                # attribute pointing at an older copy)
                importlib.import_module("harness.faults").INJECTING = True
                kit.run_in_fork(lambda: os.kill(os.getpid(), signal.SIGKILL))
            except BaseException:  # noqa: BLE001 - reported through the file
                Path(why.name).write_text(traceback.format_exc())
            finally:
                os._exit(3)  # reached only when the SIGKILL was not passed on
        _, status = os.waitpid(pid, 0)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, (
            f"expected the runner to die by SIGKILL, found status {status}: {why.read()}")


def test_recorder_finish_in_a_child_ends_the_runner_the_same_way():
    """The crash-state recorder ends training with ``os._exit(FINISHED)`` once the save it records is over; an adapter
    training in ``run_in_fork`` (LLaMA-Factory's) must pass that on, not report "the training process exited with 3"
    (measured: LLaMA-Factory 0.9.5's crash-every-step cell was an ArrangementError for that reason)."""
    import importlib
    import tempfile
    import traceback

    faults = importlib.import_module("harness.faults")
    with tempfile.NamedTemporaryFile("r", suffix=".txt") as why:
        pid = os.fork()
        if pid == 0:  # a stand-in for the recording child of harness.faults.crash_states
            code = 0
            try:
                faults.INJECTING = True
                kit.run_in_fork(lambda: os._exit(faults.FINISHED))
            except BaseException:  # noqa: BLE001 - reported through the file
                Path(why.name).write_text(traceback.format_exc())
                code = 1
            finally:
                os._exit(code)  # reached only when FINISHED was not passed on
        _, status = os.waitpid(pid, 0)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == faults.FINISHED, (
            f"expected the runner to exit with FINISHED ({faults.FINISHED}), found status {status}: {why.read()}")
    with pytest.raises(kit.FrameworkError, match="exited with 3"):  # outside fault injection: an error
        kit.run_in_fork(lambda: os._exit(3))


def test_run_command_names_the_exit_status(tmp_path):
    assert kit.run_command(["python3", "-c", "print('ok')"]).strip() == "ok"
    with pytest.raises(kit.FrameworkError, match=r"exited with 2; output tail:\nbad"):
        kit.run_command(["python3", "-c", "import sys; print('bad'); sys.exit(2)"])


def test_in_process_capability_is_implied_unless_a_subprocess_is_launched():
    adapter = ToyFramework()
    assert "in-process" in effective_capabilities(adapter)
    adapter.launches_subprocess = True
    assert "in-process" not in effective_capabilities(adapter)
    adapter.launches_subprocess = "yes"
    with pytest.raises(AdapterLoadError, match="launches_subprocess must be True or False"):
        validate_adapter(adapter)


PLUGIN_ADAPTER = '''
from harness.adapter import Adapter

class NoAccuracy(Adapter):
    name = "noacc"
    capabilities = frozenset({"sft"})
    unavailable_metrics = {"eval_accuracy": "logs no token accuracy"}

class Spawner(NoAccuracy):
    name = "spawner"
    launches_subprocess = True
'''

PLUGIN_SCENARIOS = '''
import pytest

@pytest.mark.ft_metric("eval_accuracy")
def test_accuracy(ft_adapter):
    pass

@pytest.mark.ft_metric("eval_loss")
def test_loss(ft_adapter):
    pass

@pytest.mark.ft_requires("sft", "in-process")
def test_crash(ft_adapter):
    pass
'''


@pytest.mark.parametrize("target, skipped", [("NoAccuracy", {"test_accuracy": "cannot log metric 'eval_accuracy': "
                                                                                "logs no token accuracy"}),
                                             ("Spawner", {"test_accuracy": "cannot log metric",
                                                          "test_crash": "lacks capability 'in-process' (it launches "
                                                                        "a subprocess)"})])
def test_plugin_skips_unavailable_metrics_and_subprocess_adapters(pytester, target, skipped):
    pytester.makepyfile(kit_adapter=PLUGIN_ADAPTER, test_scen=PLUGIN_SCENARIOS)
    pytester.syspathinsert()
    result = pytester.runpytest("-p", "no:cacheprovider", "-rs", "--ft-adapter", f"kit_adapter:{target}")
    result.assert_outcomes(passed=3 - len(skipped), skipped=len(skipped))
    for test, reason in skipped.items():
        assert any(test in line or reason in line for line in result.stdout.lines), result.stdout.str()
        assert reason in result.stdout.str(), f"expected the skip reason {reason!r} in:\n{result.stdout.str()}"


# ---------------------------------------------------------------------------------------------- axolotl
from harness.adapters.axolotl import CPU_KEYS, AxolotlAdapter, build_config  # noqa: E402

DATA = {"train": Path("/d/train.jsonl"), "eval": Path("/d/eval.jsonl")}


def _values(**kw):
    return {**TASK_DEFAULTS, "logging_steps": 1, **kw}


def test_axolotl_config_maps_the_run(tmp_path):
    spec = RunSpec(model_dir=tmp_path / "m", output_dir=tmp_path / "o", dataset_dir=tmp_path / "d")
    cfg = build_config(spec, _values(max_steps=6, save_steps=2, save_total_limit=1, eval_steps=3, seed=5,
                                     per_device_train_batch_size=2, gradient_accumulation_steps=2), DATA, tmp_path)
    assert cfg["base_model"] == str(tmp_path / "m") and cfg["output_dir"] == str(tmp_path / "o")
    assert cfg["datasets"] == [{"path": "/d/train.jsonl", "ds_type": "json", "type": "completion", "split": "train"}]
    assert cfg["test_datasets"][0]["path"] == "/d/eval.jsonl" and cfg["val_set_size"] == 0
    assert (cfg["max_steps"], cfg["micro_batch_size"], cfg["gradient_accumulation_steps"]) == (6, 2, 2)
    assert (cfg["save_strategy"], cfg["save_steps"], cfg["save_total_limit"]) == ("steps", 2, 1)
    assert (cfg["eval_strategy"], cfg["eval_steps"], cfg["metric_for_best_model"]) == ("steps", 3, "eval_loss")
    assert (cfg["seed"], cfg["logging_steps"], cfg["lr_scheduler"]) == (5, 1, "constant")
    assert cfg["adapter"] == "lora" and cfg["lora_r"] == 4 and cfg["lora_target_linear"] is True
    for key, value in CPU_KEYS.items():  # the LoRA kernels need CUDA: on CPU they must be off
        assert cfg[key] == value, f"CPU run: expected {key}={value!r}, found {cfg.get(key)!r}"
    assert "save_on_best" not in cfg and "resume_from_checkpoint" not in cfg
    unlimited = build_config(spec, _values(max_steps=6, save_steps=1), DATA, tmp_path)
    assert unlimited["save_total_limit"] == 7, "no limit typed: every checkpoint kept (axolotl's own default is 4)"


def test_axolotl_config_variants(tmp_path):
    adapter_dir = tmp_path / "lora-out"
    adapter_dir.mkdir()
    (adapter_dir / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "/base"}))
    (adapter_dir / "adapter_model.safetensors").write_bytes(b"")
    spec = RunSpec(model_dir=adapter_dir, output_dir=tmp_path / "o", dataset_dir=tmp_path / "d",
                   resume_from="latest")
    cfg = build_config(spec, _values(), DATA, tmp_path)
    assert (cfg["base_model"], cfg["lora_model_dir"]) == ("/base", str(adapter_dir)), "a LoRA continues on its base"
    assert cfg["auto_resume_from_checkpoints"] is True and cfg["eval_strategy"] == "no" and "test_datasets" not in cfg
    full = build_config(spec.replace(resume_from=tmp_path / "o" / "checkpoint-2"), _values(train_type="full",
                        packing=True, quantization="int8", target_modules=("q_proj",)), DATA, tmp_path)
    assert "adapter" not in full and full["base_model"] == str(adapter_dir)
    assert full["resume_from_checkpoint"] == str(tmp_path / "o" / "checkpoint-2")
    assert full["sample_packing"] is True and full["load_in_8bit"] is True
    assert (full["micro_batch_size"], full["sequence_len"]) == (1, 64 * 4), "a batch's tokens as one packed row"
    nf4 = build_config(spec, _values(quantization="nf4", target_modules=("q_proj", "v_proj")), DATA, tmp_path)
    assert nf4["adapter"] == "qlora" and nf4["load_in_4bit"] is True and nf4["lora_target_modules"] == ["q_proj",
                                                                                                         "v_proj"]
    with pytest.raises(ConfigError, match="quantization"):
        build_config(spec, _values(quantization="quanto-int8"), DATA, tmp_path)
    gc = build_config(spec, _values(gradient_checkpointing="non-reentrant"), DATA, tmp_path)
    assert gc["gradient_checkpointing"] is True and gc["gradient_checkpointing_kwargs"] == {"use_reentrant": False}
    assert cfg["gradient_checkpointing"] is False, "off unless a run asks for it (CPU_KEYS)"
    router = build_config(spec, _values(router_aux_loss_coef=0.01), DATA, tmp_path)
    assert router["model_config"] == {"output_router_logits": True, "router_aux_loss_coef": 0.01}
    assert "model_config" not in cfg, "no router term asked: the model's own config is left alone"


def test_axolotl_dpo_and_kto_configs(tmp_path):
    """DPO and KTO are ``rl: dpo|kto`` with ``rl_beta`` on a ``user_defined`` dataset type (a mapping of the rows'
    fields); KTO reads the rows unpaired (written beside the YAML) and sets ``remove_unused_columns: false``, as
    axolotl's validation demands."""
    from harness.models import preference_rows, read_jsonl

    spec = RunSpec(model_dir=tmp_path / "m", output_dir=tmp_path / "o", dataset_dir=tmp_path / "d", method="dpo")
    data = {**DATA, "preferences": Path("/d/preferences.jsonl"), "kto": Path("/w/kto.jsonl")}
    dpo = build_config(spec, _values(method="dpo"), data, tmp_path)
    assert (dpo["rl"], dpo["rl_beta"]) == ("dpo", 0.1) and "remove_unused_columns" not in dpo
    assert dpo["datasets"] == [{"path": "/d/preferences.jsonl", "ds_type": "json", "split": "train",
                                "type": {"field_prompt": "prompt", "field_chosen": "chosen", "field_rejected": "rejected"}}]
    kto = build_config(spec.replace(method="kto"), _values(method="kto", beta=0.3), data, tmp_path)
    assert (kto["rl"], kto["rl_beta"], kto["remove_unused_columns"]) == ("kto", 0.3, False)
    assert kto["datasets"][0]["path"] == "/w/kto.jsonl" and kto["datasets"][0]["type"]["field_label"] == "label"
    assert "rl" not in build_config(spec.replace(method="sft"), _values(), DATA, tmp_path)
    from harness.models import write_datasets

    adapter = AxolotlAdapter()
    work = tmp_path / "work"
    work.mkdir()
    src = write_datasets(tmp_path / "src")
    adapter.write_config(spec.replace(method="kto", dataset_dir=src), _values(method="kto"), {}, work)
    rows = read_jsonl(work / "kto.jsonl")
    assert [r["label"] for r in rows] == [True] * 8 + [False] * 8 and rows[0]["completion"] == preference_rows()[0]["chosen"]


def test_axolotl_chat_data_is_a_chat_template_dataset(tmp_path):
    """Chat rows (``messages`` or prompt/completion) become ``messages`` rows of a ``chat_template`` dataset on the
    tokenizer's own template, assistant turns trained, each turn's EOS too; text rows stay ``completion`` rows."""
    from harness.models import read_jsonl, write_jsonl

    src = tmp_path / "chat"
    chat = [{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
            {"prompt": "c", "completion": "d"}]
    write_jsonl(src / "train.jsonl", chat)
    write_jsonl(src / "eval.jsonl", chat[:1])
    spec = RunSpec(model_dir=tmp_path / "m", output_dir=tmp_path / "o", dataset_dir=src)
    data = AxolotlAdapter().convert(spec, tmp_path / "w")
    assert read_jsonl(data["train"])[1] == {"messages": [{"role": "user", "content": "c"},
                                                         {"role": "assistant", "content": "d"}]}
    cfg = build_config(spec, _values(), data, tmp_path)
    assert cfg["chat_template"] == "tokenizer_default"
    assert cfg["datasets"] == [{"path": str(data["train"]), "ds_type": "json", "type": "chat_template", "split": "train",
                                "field_messages": "messages", "roles_to_train": ["assistant"], "train_on_eos": "turn"}]
    assert "chat_template" not in build_config(spec, _values(), DATA, tmp_path)


def test_axolotl_trainable_set_lists_each_trainable_name(tiny_assets, tmp_path):
    """trainable_parameters becomes unfrozen_parameters, one anchored name per trainable parameter: run through
    axolotl's own rule (every "." escaped, re.match), they unfreeze exactly the asked set."""
    import re

    from harness.errors import SpecRefused
    from harness.layout import read_safetensors_header
    from harness.spec import in_trainable_set
    from scenarios.test_trainable_set import TRAINABLE_SETS

    spec = RunSpec(model_dir=tiny_assets.model_dir, output_dir=tmp_path / "o", dataset_dir=tmp_path / "d")
    names = sorted(read_safetensors_header(tiny_assets.model_dir / "model.safetensors"))
    for patterns in TRAINABLE_SETS.values():
        unfrozen = build_config(spec, _values(train_type="full", trainable_parameters=patterns), DATA,
                                tmp_path)["unfrozen_parameters"]
        axolotl_rule = [re.compile(p.replace(".", "\\.")) for p in unfrozen]  # axolotl's LayerNamePattern
        assert {n for n in names if any(r.match(n) for r in axolotl_rule)} == {
            n for n in names if in_trainable_set(n, patterns)}
    assert "unfrozen_parameters" not in build_config(spec, _values(train_type="full"), DATA, tmp_path)
    with pytest.raises(SpecRefused, match="full-parameter"):
        build_config(spec, _values(trainable_parameters=TRAINABLE_SETS["last-layer"]), DATA, tmp_path)


def test_axolotl_adapter_loads_without_axolotl(tmp_path):
    adapter = load_adapter("axolotl[load_best_model_at_end=true]")
    assert isinstance(adapter, AxolotlAdapter) and adapter.name.endswith("[load_best_model_at_end=true]")
    assert "args" not in adapter.capabilities and "eval_accuracy" in adapter.unavailable_metrics
    spec = RunSpec(model_dir=tmp_path / "m", output_dir=tmp_path / "o", dataset_dir=tmp_path / "d", eval_steps=2,
                   story=BEST_CHECKPOINT_STORY)
    import yaml

    path = adapter.write_config(spec, _values(eval_steps=2), DATA, tmp_path)
    cfg = yaml.safe_load(path.read_text())
    assert path.name == "axolotl.yml" and cfg["load_best_model_at_end"] is True and cfg["lora_mlp_kernel"] is False
    assert adapter.trained_with[tmp_path / "o"]["output_dir"] == str(tmp_path / "o"), "merge-lora reuses the YAML"
    # the option is the best-checkpoint story's: another story's evaluating run keeps axolotl's default
    other = yaml.safe_load(adapter.write_config(spec.replace(story="embeddings"), _values(eval_steps=2), DATA,
                                                tmp_path).read_text())
    assert other["load_best_model_at_end"] is False
    typed_values = _values(eval_steps=2, load_best_model_at_end=True)
    typed = yaml.safe_load(adapter.write_config(spec.replace(story=None), typed_values, DATA, tmp_path).read_text())
    assert typed["load_best_model_at_end"] is True, "typed by the user: on in any story"


# ---------------------------------------------------------------------------------------------- the worked example
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "myfw-adapter"


def test_worked_example_gets_a_first_green_scenario(pytester):
    """The README's out-of-tree example package: its known-failures file parses, and its adapter passes a scenario.
    (In-process, with only the example's directory added to the path, as its PYTHONPATH would: a subprocess run
    paid 10 s of imports more for the same verdict.)"""
    from harness.adapter import read_known_failures

    known = read_known_failures(EXAMPLE / "myfw_adapter" / "known-failures.txt")
    assert set(known) == {"test_crash_during_save.py::",
                          "test_resume_equivalence.py::test_resume_without_training_state_is_not_silent"}
    pytester.syspathinsert(EXAMPLE)
    result = pytester.runpytest_inprocess("--pyargs", "scenarios", "-p", "no:cacheprovider", "-q", "-m", "not ft_gpu",
                                          "-k", "test_checkpoint_layout", "--ft-adapter",
                                          "myfw_adapter.adapter:MyFwAdapter")
    outcomes = result.parseoutcomes()
    assert result.ret == 0 and outcomes.get("passed") == 2, f"expected 2 passed, got:\n{result.stdout.str()[-3000:]}"


def test_resume_files_default_to_trainers_and_unknown_roles_are_refused():
    """issue 37: where a checkpoint keeps its training state and pickles is a contract member (HF Trainer's files by
    default), so the missing-state and hostile-pickle scenarios delete or poison the files the framework really reads."""
    adapter = ToyFramework()
    assert adapter.resume_files == {"optimizer": "optimizer.pt", "scheduler": "scheduler.pt", "rng": "rng_state.pth",
                                    "args": "training_args.bin"}
    adapter.resume_files = {"optimizer": "../recipe_state/recipe_state.pt", "scheduler": "../recipe_state/recipe_state.pt"}
    validate_adapter(adapter)  # roles left out: those tests are skipped, naming the role
    adapter.resume_files = {"optimiser": "opt.pt"}
    with pytest.raises(AdapterLoadError, match=r"resume_files has unknown roles \['optimiser'\]; known: \['args'"):
        validate_adapter(adapter)


def test_refuse_names_the_key_and_value_and_is_a_config_error():
    """issue 37: a spec the framework cannot express is refused up front, with a reason that names the key and value."""
    from harness.errors import ConfigError, SpecRefused

    with pytest.raises(SpecRefused) as info:
        kit.refuse("torchtune", "lr_scheduler_type", "linear", "0.6.1 has only a cosine schedule with warm-up")
    assert isinstance(info.value, ConfigError) and info.value.key == "lr_scheduler_type"
    assert str(info.value).startswith("torchtune cannot express lr_scheduler_type='linear' (the scenario's command line): "
                                      "0.6.1 has only a cosine"), str(info.value)


def test_resume_points_is_any_or_newest():
    """issue 37: a framework with one resume point per run by design (torchtune's single recipe state) declares
    resume_points = "newest"; the tests that resume from a copied or another run's checkpoint then skip, saying so."""
    import scenarios._support as support

    adapter = ToyFramework()
    assert adapter.resume_points == "any"
    support.require_resume_from_elsewhere(adapter)  # no skip
    adapter.resume_points = "newest"
    validate_adapter(adapter)
    with pytest.raises(pytest.skip.Exception, match="resumes only the newest checkpoint of its own output dir"):
        support.require_resume_from_elsewhere(adapter)
    adapter.resume_points = "latest"
    with pytest.raises(AdapterLoadError, match="resume_points must be 'any' or 'newest'"):
        validate_adapter(adapter)


def test_every_contract_member_is_in_the_adapter_docs():
    """docs/adapters.md's "What an adapter may declare" table names every member the contract lets an adapter have
    (``OPTIONAL_MEMBERS`` plus the required ones), so the docs cannot fall behind the contract."""
    from harness.adapter import OPTIONAL_MEMBERS

    doc = (EXAMPLE.parent.parent / "docs" / "adapters.md").read_text(encoding="utf-8")
    table = doc[doc.index("### What an adapter may declare"):]
    table = table[:table.index("\n\n", table.index("| member |"))]
    missing = [m for m in ("name", "capabilities", "train", *OPTIONAL_MEMBERS) if f"`{m}" not in table]
    assert not missing, f"docs/adapters.md's member table lacks {missing}"


def test_own_quantization_kinds_are_validated():
    """issue 37: a framework's own quantised-base kind (torchtune's torchao NF4) is declared in ``quantizations``
    with its capability; a kind that shadows a harness kind, lacks its declared capability or is not a QuantKind
    is refused, naming the key."""
    from harness.adapter import QuantKind, quantization_kinds

    adapter = ToyFramework()
    kind = QuantKind("myq", "myq-cap", "mylib", "int4")
    adapter.quantizations = {"myq": kind}
    with pytest.raises(AdapterLoadError, match=r"quantizations\['myq'\] needs capability 'myq-cap'"):
        validate_adapter(adapter)
    adapter.capabilities = adapter.capabilities | {"myq-cap"}
    validate_adapter(adapter)  # its capability is known through the kind
    assert quantization_kinds(adapter)["myq"] is kind and "nf4" in quantization_kinds(adapter)
    adapter.quantizations = {"nf4": QuantKind("nf4", "myq-cap", "mylib", "nf4")}
    with pytest.raises(AdapterLoadError, match=r"quantizations\['nf4'\] shadows the harness's own kind"):
        validate_adapter(adapter)
    adapter.quantizations = {"myq": ("myq-cap", "mylib")}
    with pytest.raises(AdapterLoadError, match=r"quantizations\['myq'\] = .*expected QuantKind\(name='myq'"):
        validate_adapter(adapter)
    adapter.quantizations, adapter.capabilities = {}, frozenset({"sft", "myq-cap"})
    with pytest.raises(AdapterLoadError, match=r"unknown capabilities \['myq-cap'\]"):
        validate_adapter(adapter)


OWN_KIND_ADAPTER = '''
from harness.adapter import Adapter, QuantKind

class OwnKind(Adapter):
    name = "ownkind"
    capabilities = frozenset({"sft", "lora", "quant-nf4", "myq-cap"})
    quantizations = {"myq": QuantKind("myq", "myq-cap", "mylib", "int4")}

    def train(self, spec):
        raise NotImplementedError
'''


def test_ft_quantizations_adds_the_adapters_own_kinds(pytester):
    """issue 37: ``ft_quantizations`` parametrises ``quant`` with the named kinds and the adapter's own, each needing
    its capability: the harness kinds keep their ids (known-failure keys do not move), the own kind runs."""
    pytester.makepyfile(own_kind_adapter=OWN_KIND_ADAPTER, test_q='''
import pytest

@pytest.mark.ft_quantizations(None, "nf4", "int8")
def test_q(ft_adapter, quant):
    assert quant in (None, "nf4", "int8", "myq")
''')
    pytester.syspathinsert()
    result = pytester.runpytest("--ft-adapter", "own_kind_adapter:OwnKind", "-v", "-rs", "-p", "no:cacheprovider")
    result.stdout.fnmatch_lines(["*test_q[[]none[]] PASSED*", "*test_q[[]nf4[]] PASSED*", "*test_q[[]int8[]] SKIPPED*",
                                 "*test_q[[]myq[]] PASSED*", "*lacks capability 'quant-int8'*"])
    reference = pytester.runpytest("-v", "-p", "no:cacheprovider")  # the reference has no own kind
    assert "myq" not in reference.stdout.str() and reference.parseoutcomes().get("passed") == 3
