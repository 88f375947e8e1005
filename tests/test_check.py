"""``ft-harness check``: reading each framework's config, mapping it onto the tiny task, the answers.

The example configs under ``tests/check_configs/`` are shaped like each framework's own examples (LLaMA-Factory
``examples/train_lora/llama3_lora_sft.yaml``, axolotl ``examples/llama-3/lora-1b.yml``, an ms-swift ``swift sft``
command line with seed 004's cadence, a ``TrainingArguments`` JSON with transformers #39476's). The readers and
the plan are tested without any framework; two real checks run on the reference (PASS) and on a mutant that loses
the best checkpoint (FAIL), so the answer is shown to be able to go red.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from harness.check import answers, plan, read_config, render
from harness.check.plan import MAX_TINY_STEPS, tiny_cadence
from harness.errors import ConfigError
from harness.report.model import AdapterRun, TestOutcome

CONFIGS = Path(__file__).parent / "check_configs"
ROOT = Path(__file__).resolve().parents[1]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness.cli", "check", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=600)


def test_llamafactory_yaml_is_read_with_its_own_keys_and_lines():
    config = read_config("llamafactory", CONFIGS / "llamafactory_lora_sft.yaml")
    assert {n: s.value for n, s in config.settings.items()} == {
        "train_type": "lora", "lora_target": ["all-linear"], "save_steps": 500, "save_total_limit": 2,
        "per_device_train_batch_size": 1, "gradient_accumulation_steps": 8, "eval_strategy": "steps",
        "eval_steps": 100}
    assert config.settings["eval_steps"].line == 35 and config.settings["train_type"].key == "finetuning_type"
    assert "model_name_or_path" in config.unchecked and "learning_rate" in config.unchecked
    questions = plan(config).questions
    assert [q.keyword for q in questions] == ["test_your_cadence_keeps_best",
                                              "test_accumulation_equals_large_batch and 1x4", "test_moe_lora"]
    assert plan(config).user_config["cadence"] == {"eval_steps": 1, "save_steps": 5, "save_total_limit": 2,
                                                   "max_steps": 20, "load_best_model_at_end": False}


def test_axolotl_yaml_per_epoch_cadence_packing_and_adapter():
    config = read_config("axolotl", CONFIGS / "axolotl_lora.yml")
    values = {n: s.value for n, s in config.settings.items()}
    assert values["per_device_train_batch_size"] == 2 and values["packing"] is True
    assert values["train_type"] == "lora" and "quantization" not in values  # load_in_4bit: false says nothing
    assert "resume_from_checkpoint" in values and values["resume_from_checkpoint"] is None  # an empty key: unset
    the_plan = plan(config)
    assert the_plan.user_config["cadence"]["eval_steps"] == 1 and the_plan.user_config["cadence"]["save_steps"] == 4  # 3:12 per epoch
    assert [q.modules[0] for q in the_plan.questions] == ["test_best_checkpoint.py", "test_grad_accumulation.py",
                                                          "test_packing.py"]


def test_swift_argument_list_with_continuations_and_a_load_args_resume(tmp_path):
    config = read_config("swift", CONFIGS / "swift_sft.sh")
    assert config.cite("eval_steps", "save_steps") == "--eval_steps 50 / --save_steps 200"
    assert config.settings["save_steps"].line == 11 and config.get("lora_target") == ["all-linear"]
    assert plan(config).user_config["cadence"]["save_steps"] == 4  # 50:200 -> 1:4
    argv = tmp_path / "resume.sh"
    argv.write_text("swift sft --train_type full --resume_from_checkpoint out/checkpoint-200 --load_args=true "
                    "--quant_bits 4 --packing\n")
    resumed = read_config("swift", argv)
    assert resumed.get("load_args") is True and resumed.get("packing") is True and resumed.get("quantization") == "nf4"
    the_plan = plan(resumed)
    topics = [q.modules[0] for q in the_plan.questions]
    assert topics == ["test_packing.py", "test_resume_equivalence.py", "test_quantized_lora_resume.py",
                      "test_args_precedence.py"]
    assert the_plan.options == {"load_args": "true"}  # the precedence story runs in the load_args column


def test_transformers_json_and_what_is_not_checked(tmp_path):
    config = read_config("transformers", CONFIGS / "transformers_args.json")
    the_plan = plan(config)
    assert the_plan.user_config == {"cadence": {"eval_steps": 2, "save_steps": 3, "save_total_limit": 1,
                                                "max_steps": 12, "load_best_model_at_end": False}}
    assert the_plan.unchecked_keys == ["output_dir", "learning_rate", "bf16"]
    ratio = tmp_path / "ratio.json"
    ratio.write_text(json.dumps({"eval_strategy": "steps", "eval_steps": 0.1, "save_strategy": "best",
                                 "metric_for_best_model": "accuracy", "quantization": None}))
    ratio_plan = plan(read_config("transformers", ratio))
    assert not ratio_plan.questions
    assert any("a ratio of the total steps" in line for line in ratio_plan.not_checked)
    assert any("save_strategy best" in line for line in ratio_plan.not_checked)
    assert "No setting of this config reaches a scenario" in render(read_config("transformers", ratio), ratio_plan,
                                                                    "reference", None, None)
    default_save = tmp_path / "default-save.json"
    default_save.write_text(json.dumps({"eval_strategy": "steps", "eval_steps": 50}))
    (question,) = plan(read_config("transformers", default_save)).questions
    assert question.cited == "eval_strategy steps / eval_steps 50 / save_steps 500 (the default)"
    assert plan(read_config("transformers", default_save)).user_config["cadence"]["save_steps"] == 10  # 50:500
    silent = tmp_path / "silent.json"
    silent.write_text(json.dumps({"eval_steps": 50, "save_steps": 200}))
    silent_plan = plan(read_config("transformers", silent))
    assert not silent_plan.questions and "eval_steps 50 without eval_strategy" in silent_plan.not_checked[0]


@pytest.mark.parametrize("framework, name, text, message", [
    ("llamafactory", "bad.yaml", "eval_steps: 5\nsave_steps: [1\n", "bad.yaml:3: expected valid YAML"),
    ("llamafactory", "bad.yaml", "- a list\n", "bad.yaml:1: expected a mapping of settings, found a list"),
    ("axolotl", "bad.yml", "micro_batch_size: 2\neval_steps: fifty\n",
     "bad.yml:2: key 'eval_steps': expected a number of steps, found 'fifty'"),
    ("axolotl", "bad.yml", "load_in_4bit: maybe\n", "bad.yml:1: key 'load_in_4bit': expected true or false"),
    ("transformers", "bad.json", '{\n  "eval_steps": 2,\n  "save_steps": \n}\n', "bad.json:4: expected valid JSON"),
    ("transformers", "bad.json", '{"save_total_limit": "two"}', "key 'save_total_limit': expected an integer"),
    ("swift", "bad.sh", "swift sft \\\n  --eval_steps 5 \\\n  --output_dir 'out\n",
     "bad.sh:3: expected a shell argument list"),
])
def test_unreadable_config_names_file_line_and_key(tmp_path, framework, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        read_config(framework, path)
    assert message in str(caught.value)


def test_cli_errors_exit_2_naming_the_file(tmp_path):
    bad = tmp_path / "train.yaml"
    bad.write_text("save_steps: many\n")
    done = _cli("--framework", "llamafactory", "--config", str(bad))
    assert done.returncode == 2 and "train.yaml:1: key 'save_steps'" in done.stderr
    missing = _cli("--framework", "axolotl", "--config", str(tmp_path / "nope.yml"))
    assert missing.returncode == 2 and "nope.yml: expected a config file, no such file" in missing.stderr
    dry = _cli("--framework", "axolotl", "--config", str(CONFIGS / "axolotl_lora.yml"), "--dry-run")
    assert dry.returncode == 0 and "PLAN    evals_per_epoch 4 / saves_per_epoch 1" in dry.stdout
    assert "not checked (no scenario is sensitive to these keys): base_model" in dry.stdout


@given(st.integers(1, 2000), st.integers(1, 2000))
def test_tiny_cadence_keeps_ratio_class_and_bounds(eval_steps, save_steps):
    """What the seed's failure depends on survives the scaling: whether every evaluation falls on a save (then the
    best cannot be between saves), whether every save falls on an evaluation, and equality."""
    e, s = tiny_cadence(eval_steps, save_steps)
    assert 1 <= e <= 6 and 1 <= s <= 12
    assert (eval_steps % save_steps == 0) == (e % s == 0)
    assert (save_steps % eval_steps == 0) == (s % e == 0)


@given(st.integers(1, 500), st.integers(1, 500), st.integers(0, 10))
def test_tiny_run_rotates_when_the_user_run_would(eval_steps, save_steps, limit):
    config_text = {"eval_strategy": "steps", "eval_steps": eval_steps, "save_steps": save_steps,
                   "save_total_limit": limit}
    from harness.check.configs import UserConfig, Setting

    config = UserConfig("transformers", "args.json",
                        {k: Setting(k, v, k) for k, v in config_text.items()})
    tiny = plan(config).user_config["cadence"]
    assert tiny["max_steps"] <= MAX_TINY_STEPS and tiny["max_steps"] >= 2 * tiny["eval_steps"]
    assert (tiny["save_total_limit"] > 0) == (limit > 0)
    if limit:
        assert tiny["max_steps"] // tiny["save_steps"] > tiny["save_total_limit"], "no rotation in the tiny run"


def test_answers_read_the_run_per_question():
    the_plan = plan(read_config("swift", CONFIGS / "swift_sft.sh"))
    run = AdapterRun("x", "x", {}, 1, 1.0, [
        TestOutcome("scenarios/test_best_checkpoint.py::test_your_cadence_keeps_best[cpu]",
                    "test_best_checkpoint.py::test_your_cadence_keeps_best", "failed", "no checkpoint-2 on disk",
                    1.0, "004"),
        TestOutcome("scenarios/test_grad_accumulation.py::test_accumulation_equals_large_batch[cpu-1x4]",
                    "test_grad_accumulation.py::test_accumulation_equals_large_batch", "passed", "", 1.0, None),
        TestOutcome("scenarios/test_grad_accumulation.py::test_accumulation_equals_large_batch[cpu-2x2]",
                    "test_grad_accumulation.py::test_accumulation_equals_large_batch", "failed", "", 1.0, None),
        TestOutcome("scenarios/test_moe_lora.py::test_lora_trains_every_expert_and_router[cpu]",
                    "test_moe_lora.py::test_lora_trains_every_expert_and_router", "skipped",
                    "adapter 'x' lacks capability 'moe'", 0.0, None)], {"x": "1.0"})
    verdicts = [a.verdict for a in answers(the_plan, run)]
    assert verdicts == ["FAIL", "PASS", "NOT RUN"]  # the 2x2 variant is not the user's split
    text = render(read_config("swift", CONFIGS / "swift_sft.sh"), the_plan, "x", run, answers(the_plan, run))
    assert "no checkpoint-2 on disk" in text and "not run: adapter 'x' lacks capability 'moe'" in text
    assert "to fix: save at every evaluation" in text
    cadence = the_plan.questions[0]
    meaning, _ = cadence.advice("no save reproduces the eval_loss the run logged for it (4 of 4 reloaded ...)")
    assert meaning.startswith("not judged on the cadence")  # an evaluation mismatch is not blamed on the cadence


def test_known_failures_are_answered_as_the_framework_behaves():
    """An adapter's known failure that still fails is a FAIL naming its test (not a crash of the report); one that
    passes is a PASS that says the bug is gone."""
    the_plan = plan(read_config("transformers", CONFIGS / "transformers_args.json"))
    node = "scenarios/test_best_checkpoint.py::test_your_cadence_keeps_best[cpu]"
    still = AdapterRun("x", "x", {}, 0, 1.0, [TestOutcome(node, "test_best_checkpoint.py::test_your_cadence_keeps_best",
                                                          "xfailed", "known failure of x: upstream #1", 1.0, "004")])
    (answer,) = answers(the_plan, still)
    assert answer.verdict == "FAIL" and answer.first_bad.outcome == "xfailed"
    text = render(read_config("transformers", CONFIGS / "transformers_args.json"), the_plan, "x", still, [answer])
    assert "known failure of x: upstream #1" in text and "1 of 1 test(s) red" in text
    gone = AdapterRun("x", "x", {}, 1, 1.0, [dataclasses.replace(still.tests[0], outcome="xpassed", reason="")])
    (answer,) = answers(the_plan, gone)
    assert answer.verdict == "PASS"
    assert "the bug is gone" in render(read_config("transformers", CONFIGS / "transformers_args.json"), the_plan,
                                       "x", gone, [answer])


def test_check_on_the_reference_passes_and_on_a_best_losing_framework_fails():
    """One real check each way (a few seconds each): the user's cadence is trained and judged."""
    good = _cli("--framework", "transformers", "--config", str(CONFIGS / "transformers_args.json"),
                "--adapter", "reference")
    assert good.returncode == 0, good.stdout + good.stderr
    assert "PASS    eval_strategy steps / eval_steps 2 / save_steps 3 / save_total_limit 1" in good.stdout
    bad = _cli("--framework", "transformers", "--config", str(CONFIGS / "transformers_args.json"),
               "--adapter", "harness.mutants:PlainTrainerBestCheckpoint")
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "FAIL    eval_strategy steps" in bad.stdout and "the best evaluated step must be on disk" in bad.stdout
    assert "to fix: save at every evaluation" in bad.stdout


def test_user_config_tests_are_deselected_without_a_user_config(tmp_path):
    """Without --ft-user-config the user-arrangement test is not collected at all (a deselect, not a skip a strict
    run would count); with one, it is."""
    args = [sys.executable, "-m", "pytest", "--pyargs", "scenarios.test_best_checkpoint", "--collect-only", "-q",
            "-p", "no:cacheprovider", "-k", "test_your_cadence"]
    without = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert without.returncode == 5, without.stdout
    user = tmp_path / "user.json"
    user.write_text(json.dumps({"cadence": {"eval_steps": 1, "save_steps": 4, "save_total_limit": 1, "max_steps": 8}}))
    with_config = subprocess.run(args + ["--ft-user-config", str(user)], capture_output=True, text=True,
                                 cwd=tmp_path, timeout=300)
    assert with_config.returncode == 0 and "test_your_cadence_keeps_best[cpu]" in with_config.stdout


def test_framework_options_go_only_to_that_framework(tmp_path, monkeypatch):
    """ms-swift's load_args from the config reaches the swift adapter, not the reference a user checks against; the
    run gets the user config, the plan's -k expression and no CUDA variants."""
    import harness.report.runner as runner
    from harness.check import run_check

    calls = []

    def fake(target, options, pytest_args, progress=True):
        user = pytest_args[pytest_args.index("--ft-user-config") + 1]
        calls.append((target, dict(options), list(pytest_args), json.loads(Path(user).read_text())))
        return AdapterRun(target or "reference", "x", options, 0, 0.0, [])

    monkeypatch.setattr(runner, "run_adapter", fake)
    argv = tmp_path / "resume.sh"
    argv.write_text("swift sft --load_args true --eval_steps 5 --save_steps 10\n")
    the_plan = plan(read_config("swift", argv))
    run_check(the_plan, "swift", {})
    run_check(the_plan, None, {"x": "1"})
    (swift_target, swift_opts, args, user), (ref_target, ref_opts, _, _) = calls
    assert swift_opts == {"load_args": "true"} and ref_opts == {"x": "1"}
    assert args[args.index("-k") + 1] == the_plan.keyword and args[args.index("-m") + 1] == "not ft_gpu"
    assert user["cadence"]["save_steps"] == 2 and user["cadence"]["eval_steps"] == 1
