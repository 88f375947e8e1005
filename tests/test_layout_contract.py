"""issue 37: a framework keeps its own checkpoint layout and log instead of faking HF Trainer's. The contract's
``checkpoints`` (step -> directory), ``log_history`` and ``log_keys`` are what the oracles read a run through
(:func:`harness.layout.use_layout`, entered by the plugin with the adapter under test). Proven on the reference
with its runs rearranged afterwards into another layout: the scenarios that read checkpoints and logs pass on it,
and fail, naming what they missed, when the adapter does not declare the layout."""

from __future__ import annotations

import json

import pytest

from harness.errors import ConfigError
from harness.layout import (TRAINER_LAYOUT, run_checkpoint_map, run_checkpoints, run_log_history, run_step_of,
                            use_layout)

STEP_DIRS = '''
import json
from pathlib import Path

from harness.adapter import Adapter
from harness.layout import CHECKPOINT_RE
from harness.reference import ReferenceAdapter


class StepDirs(ReferenceAdapter):
    """The reference, each run then rearranged into another framework's layout: checkpoints as saves/step_N/, the
    log as metrics.jsonl with 'lr' for the learning rate, no trainer_state.json anywhere."""

    name = "step-dirs"
    log_keys = {"learning_rate": "lr"}

    def train(self, spec):
        result = super().train(spec)
        out = Path(spec.output_dir)
        history = json.loads((out / "trainer_state.json").read_text())["log_history"]
        (out / "metrics.jsonl").write_text("".join(
            json.dumps({("lr" if k == "learning_rate" else k): v for k, v in h.items()}) + "\\n" for h in history))
        (out / "saves").mkdir(exist_ok=True)
        for d in sorted(out.iterdir()):
            m = CHECKPOINT_RE.match(d.name)
            if m:
                (d / "trainer_state.json").unlink()
                d.rename(out / "saves" / f"step_{m.group(1)}")
        (out / "trainer_state.json").unlink()
        return result

    def checkpoints(self, output_dir):
        saves = Path(output_dir) / "saves"
        return {int(p.name.split("_")[1]): p for p in saves.iterdir()} if saves.is_dir() else {}

    def log_history(self, output_dir):
        return [json.loads(line) for line in (Path(output_dir) / "metrics.jsonl").read_text().splitlines()]


class StepDirsWithoutLogKeys(StepDirs):
    log_keys = {}


class StepDirsUndeclared(StepDirs):
    checkpoints = Adapter.checkpoints
'''

SELECTION = ["--pyargs", "scenarios.test_checkpoint_layout", "scenarios.test_grad_accumulation", "-m", "not ft_gpu",
             "-k", "test_checkpoint_layout or test_accumulation_equals_large_batch", "-p", "no:cacheprovider", "-q"]


@pytest.fixture(scope="module", autouse=True)
def _heavy_imports_once():
    # imported here so pytester's sys.modules snapshot keeps them between the in-process runs (torch's C extension
    # cannot be imported twice)
    import datasets  # noqa: F401
    import peft  # noqa: F401
    import torch  # noqa: F401
    import trl  # noqa: F401
    from transformers import LlamaForCausalLM  # noqa: F401

    import harness.reference.trainer  # noqa: F401


@pytest.fixture
def step_dirs(pytester):
    pytester.makepyfile(step_dirs=STEP_DIRS)
    pytester.syspathinsert()
    return lambda target: pytester.runpytest_inprocess(*SELECTION, "--ft-adapter", f"step_dirs:{target}")


def test_scenarios_read_a_declared_layout(step_dirs):
    result = step_dirs("StepDirs")
    result.assert_outcomes(passed=4)


@pytest.mark.parametrize("target, message", [
    ("StepDirsWithoutLogKeys", "logged no learning_rate"),
    ("StepDirsUndeclared", "expected checkpoints ['checkpoint-2', 'checkpoint-4']"),
])
def test_an_undeclared_layout_is_named(step_dirs, target, message):
    result = step_dirs(target)
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed", 0) >= 1, result.stdout.str()[-3000:]
    assert message in result.stdout.str(), result.stdout.str()[-3000:]


class _Layout:
    log_keys = {"learning_rate": "lr"}

    def __init__(self, checkpoints, history):
        self._checkpoints, self._history = checkpoints, history

    def checkpoints(self, output_dir):
        return self._checkpoints

    def log_history(self, output_dir):
        return self._history


def test_run_readers_follow_the_layout_in_use_and_check_the_schema(tmp_path):
    (tmp_path / "epoch_0").mkdir()
    (tmp_path / "checkpoint-7").mkdir()
    layout = _Layout({3: tmp_path / "epoch_0", 6: tmp_path / "epoch_1"}, [{"step": 1, "loss": 2.0, "lr": 1e-3}])
    assert run_checkpoints(tmp_path) == [tmp_path / "checkpoint-7"]  # outside any layout: HF Trainer's
    with use_layout(layout):
        assert run_checkpoints(tmp_path) == [tmp_path / "epoch_0"]  # epoch_1 is not on disk (a dangling entry)
        assert run_step_of(tmp_path / "epoch_0") == 3
        assert run_checkpoint_map(tmp_path) == {3: tmp_path / "epoch_0"}
        assert run_log_history(tmp_path) == [{"step": 1, "loss": 2.0, "learning_rate": 1e-3}]
        layout._history = [{"step": "1", "loss": 2.0}]
        with pytest.raises(ConfigError, match=r"log_history: key '\[0\]\.step': expected an integer step"):
            run_log_history(tmp_path)
        layout._history = [{"step": 1, "loss": "nan?"}]
        with pytest.raises(ConfigError, match=r"key '\[0\]\.loss': expected a number"):
            run_log_history(tmp_path)
        layout._checkpoints = {"3": tmp_path / "epoch_0"}
        with pytest.raises(ConfigError, match=r"checkpoints\(\).*a mapping of step \(int >= 0\)"):
            run_checkpoints(tmp_path)
    assert json.dumps(TRAINER_LAYOUT.log_keys) == "{}"


def test_kit_results_follow_the_layout_in_use(tmp_path):
    """A kit adapter's RunResult (``collect_result``) lists the checkpoints and the log its layout declares."""
    from harness import kit
    from harness.adapter import RunSpec

    (tmp_path / "epoch_0").mkdir()
    layout = _Layout({3: tmp_path / "epoch_0"}, [{"step": 3, "loss": 1.5, "lr": 5e-4}])
    run = RunSpec(model_dir=tmp_path, output_dir=tmp_path, dataset_dir=tmp_path)
    assert kit.collect_result(run, tmp_path, None).checkpoints == ()  # HF Trainer's layout: no checkpoint-N here
    with use_layout(layout):
        result = kit.collect_result(run, tmp_path, None)
    assert result.checkpoints == (tmp_path / "epoch_0",)
    assert result.log_history == ({"step": 3, "loss": 1.5, "learning_rate": 5e-4},)
