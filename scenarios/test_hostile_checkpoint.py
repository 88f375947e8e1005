"""Security — resuming from a checkpoint must never unpickle arbitrary code.

Checkpoints come from anywhere. ``optimizer.pt``, ``rng_state.pth`` and ``training_args.bin`` are
pickles; one crafted to create a marker directory when unpickled replaces the real file. Resuming
must not run it: load with ``torch.load(weights_only=True)`` (or safetensors) and refuse what
needs more. The marker must not exist afterwards, whatever the adapter did. The files poisoned are the ones the adapter says
its framework reads (``Adapter.resume_files``: torchtune's ``../recipe_state/recipe_state.pt``, not Trainer's names).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from harness.errors import ArrangementError
from harness.layout import run_checkpoint

from ._support import spec

pytestmark = [pytest.mark.ft_seed("pickle"), pytest.mark.ft_requires("sft", "lora", "resume")]


class _Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


#: a framework that resumes only its own output dir's newest checkpoint (``resume_points="newest"``, e.g. torchtune's
#: single recipe state) is poisoned in a copy of the whole output dir, resumed from its checkpoint-2 there: its run
#: goes on past checkpoint-2, so that save is an intermediate one with its training state
IN_PLACE_STEPS = 4


def in_place(adapter) -> bool:
    return adapter.resume_points == "newest"


@pytest.fixture(scope="module")
def clean_run(ft_adapter, tiny_assets, tmp_path_factory):
    out = tmp_path_factory.mktemp("clean")
    steps = IN_PLACE_STEPS if in_place(ft_adapter) else 2
    return ft_adapter.train(spec(tiny_assets, out, train_type="lora", max_steps=steps, save_steps=2))


#: the pickles a resume reads, as roles of ``Adapter.resume_files`` (ids: HF Trainer's file names)
POISONED = [pytest.param("optimizer", id="optimizer.pt"), pytest.param("rng", id="rng_state.pth"),
            pytest.param("args", id="training_args.bin")]


def _poisoned_file(ft_adapter, role: str) -> str:
    """The file the adapter says holds ``role`` (``resume_files``); a role it does not write is skipped."""
    relative = ft_adapter.resume_files.get(role)
    if relative is None:
        pytest.skip(f"the adapter's resume_files names no {role} file: its checkpoints hold no such pickle")
    return relative


def _resume_from_poisoned(ft_adapter, clean_run, tiny_assets, tmp_path, relative):
    """Arrange a checkpoint whose file ``relative`` (one a resume reads) is a malicious pickle, act: resume from it.
    Returns (marker path, the exception the resume raised or None). Poisoning a file the framework does not write
    would prove nothing (it never reads it): that is an arrangement error naming the file."""
    import torch

    if in_place(ft_adapter):  # its own output dir, copied whole: the resume reads the state beside checkpoint-2
        shutil.copytree(clean_run.output_dir, tmp_path / "resumed", symlinks=True)
        ckpt = run_checkpoint(tmp_path / "resumed", 2)
    else:  # a poisoned copy of the clean run's checkpoint
        ckpt = tmp_path / "checkpoint-2"
        shutil.copytree(run_checkpoint(clean_run.output_dir, 2), ckpt)
    if not (ckpt / relative).is_file():
        raise ArrangementError(f"checkpoint-2 of the clean run ({ckpt}) has no {relative}; it holds "
                               f"{sorted(p.name for p in ckpt.iterdir())}: the adapter's resume_files must name the "
                               f"files its framework reads on resume")
    marker = tmp_path / "PWNED"
    torch.save({"state": _Payload(marker)}, ckpt / relative)
    try:
        ft_adapter.train(spec(tiny_assets, tmp_path / "resumed", train_type="lora",
                              max_steps=IN_PLACE_STEPS + 2 if in_place(ft_adapter) else 4, save_steps=2,
                              resume_from=ckpt))
    except Exception as exc:  # refusing is a correct outcome
        return marker, exc
    return marker, None


@pytest.mark.ft_smoke("optimizer.pt")
@pytest.mark.parametrize("poisoned", POISONED)
def test_poisoned_pickle_is_never_executed(ft_adapter, clean_run, tiny_assets, tmp_path, poisoned):
    """Security: whatever the adapter does with the file, the pickle's code never runs."""
    poisoned = _poisoned_file(ft_adapter, poisoned)
    marker, _ = _resume_from_poisoned(ft_adapter, clean_run, tiny_assets, tmp_path, poisoned)
    assert not marker.exists(), (
        f"[pickle] resuming from a checkpoint whose {poisoned} holds a malicious pickle EXECUTED it "
        f"(marker {marker} was created): the file was loaded without weights_only=True")


@pytest.mark.parametrize("poisoned", POISONED)
def test_refusal_names_the_file(ft_adapter, clean_run, tiny_assets, tmp_path, poisoned):
    """Usability: a refused resume says which file it refused (a safe refusal that does not is this
    test's failure only, never the security test's)."""
    poisoned = _poisoned_file(ft_adapter, poisoned)
    marker, error = _resume_from_poisoned(ft_adapter, clean_run, tiny_assets, tmp_path, poisoned)
    if marker.exists():
        pytest.skip("the pickle was executed: test_poisoned_pickle_is_never_executed reports it")
    if error is None:
        pytest.skip(f"the resume did not refuse {poisoned} (it was never loaded, or loaded weights-only): "
                    f"nothing to name")
    assert Path(poisoned).name in str(error), (
        f"[pickle] the refusal should name the offending file {poisoned!r}, got "
        f"{type(error).__name__}: {str(error)[:300]}")
