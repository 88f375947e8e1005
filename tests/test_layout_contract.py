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


class EpochDirs:
    """A framework layout with no ``checkpoint-N`` name: ``epoch_E/`` holds the save of step 2 * (E + 1)."""

    log_keys: dict = {}
    resume_files = {"weights": "adapter_model.pt"}

    def checkpoints(self, output_dir):
        return {2 * (int(p.name[6:]) + 1): p for p in output_dir.glob("epoch_*")}

    def log_history(self, output_dir):
        return []


class _SavesThenTrains:
    """An adapter whose "training" saves epoch_0/ (step 2 in :class:`EpochDirs`), then runs training forwards."""

    def train(self, spec):
        import torch

        (spec.output_dir / "epoch_0").mkdir(parents=True)
        embedding = torch.nn.Embedding(4, 2).train()
        for _ in range(3):
            embedding(torch.tensor([[1, 2]]))


def test_kill_points_find_the_checkpoint_in_the_layout_in_use(tmp_path):
    """issue 37: a kill "at the first training step after checkpoint-2" arms on the layout's checkpoint of step 2
    (before: only on a directory named checkpoint-2, so a framework with its own layout was never killed and its
    resume tests were arrangement errors)."""
    from harness.adapter import RunSpec
    from harness.faults import FINISHED, KILLED, KillInTraining, run_killed

    def spec(name):
        return RunSpec(model_dir=tmp_path, output_dir=tmp_path / name, dataset_dir=tmp_path)

    with use_layout(EpochDirs()):
        assert run_killed(_SavesThenTrains(), spec("declared"), KillInTraining(2)) == KILLED
    assert run_killed(_SavesThenTrains(), spec("trainer"), KillInTraining(2)) == FINISHED, (
        "in HF Trainer's layout epoch_0/ is no checkpoint: the kill point is never reached")


def test_a_refusal_inside_a_killed_fork_is_the_refusal(tmp_path):
    """An adapter refusing its spec in the forked child of a kill arrangement raises the same SpecRefused in the test
    (the cell says the framework cannot express it), not "the run raised" (an arrangement error)."""
    from harness.adapter import RunSpec
    from harness.errors import SpecRefused
    from harness.faults import KillInTraining, run_killed
    from harness.kit import refuse

    class Refuses:
        def train(self, spec):
            refuse("myfw", "lr_scheduler_type", "linear", "it has only cosine")

    with pytest.raises(SpecRefused, match=r"myfw cannot express lr_scheduler_type='linear' .*: it has only cosine"):
        run_killed(Refuses(), RunSpec(model_dir=tmp_path, output_dir=tmp_path / "o", dataset_dir=tmp_path),
                   KillInTraining(2))


def test_perturbation_reaches_the_declared_weights_file(tmp_path):
    """A resume-reads-the-checkpoint check perturbs the weights the framework's resume reads: the safetensors, and the
    ``resume_files["weights"]`` file where the adapter declares one (torchtune resumes LoRA from adapter_model.pt)."""
    import torch
    from safetensors.torch import load_file, save_file

    from harness.faults import perturb_weights

    ckpt = tmp_path / "epoch_0"
    ckpt.mkdir()
    save_file({"w": torch.zeros(2)}, str(ckpt / "adapter_model.safetensors"))
    torch.save({"w": torch.zeros(2), "step": 3}, ckpt / "adapter_model.pt")
    assert perturb_weights(ckpt) == [ckpt / "adapter_model.safetensors"], "HF Trainer's layout declares no .pt"
    with use_layout(EpochDirs()):
        changed = perturb_weights(ckpt)
    assert changed == [ckpt / "adapter_model.safetensors", ckpt / "adapter_model.pt"]
    pt = torch.load(ckpt / "adapter_model.pt", weights_only=True)
    assert pt["step"] == 3 and torch.all(pt["w"] > 0) and torch.all(load_file(str(ckpt / "adapter_model.safetensors"))["w"] > 0)


def test_crash_oracles_read_steps_from_the_layout(tmp_path, tiny_assets):
    """The completeness check needs trainer_state.json only in HF Trainer's layout; its steps are the layout's."""
    import shutil

    from harness.oracles import assert_checkpoints_complete

    out = tmp_path / "out"
    for name in ("epoch_0", "epoch_1"):
        shutil.copytree(tiny_assets.model_dir, out / name)
    with use_layout(EpochDirs()):
        assert assert_checkpoints_complete(out, tiny_assets.model_dir) == [2, 4]
