"""Security — resuming from a checkpoint must never unpickle arbitrary code.

Checkpoints come from anywhere. ``optimizer.pt``, ``rng_state.pth`` and ``training_args.bin`` are
pickles; one crafted to create a marker directory when unpickled replaces the real file. Resuming
must not run it: load with ``torch.load(weights_only=True)`` (or safetensors) and refuse what
needs more. The marker must not exist afterwards, whatever the adapter did.
"""

from __future__ import annotations

import os
import shutil

import pytest

from ._support import spec

pytestmark = [pytest.mark.ft_seed("pickle"), pytest.mark.ft_requires("sft", "lora", "resume")]


class _Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


@pytest.fixture(scope="module")
def clean_run(ft_adapter, tiny_assets, tmp_path_factory):
    out = tmp_path_factory.mktemp("clean")
    return ft_adapter.train(spec(tiny_assets, out, train_type="lora", max_steps=2, save_steps=2))


POISONED = ["optimizer.pt", "rng_state.pth", "training_args.bin"]


def _resume_from_poisoned(ft_adapter, clean_run, tiny_assets, tmp_path, poisoned):
    """Arrange a checkpoint whose ``poisoned`` file is a malicious pickle, act: resume from it.
    Returns (marker path, the exception the resume raised or None)."""
    import torch

    ckpt = tmp_path / "checkpoint-2"
    shutil.copytree(clean_run.checkpoint(2), ckpt)
    marker = tmp_path / "PWNED"
    torch.save({"state": _Payload(marker)}, ckpt / poisoned)
    try:
        ft_adapter.train(spec(tiny_assets, tmp_path / "resumed", train_type="lora", max_steps=4, save_steps=2,
                              resume_from=ckpt))
    except Exception as exc:  # refusing is a correct outcome
        return marker, exc
    return marker, None


@pytest.mark.ft_smoke("optimizer.pt")
@pytest.mark.parametrize("poisoned", POISONED)
def test_poisoned_pickle_is_never_executed(ft_adapter, clean_run, tiny_assets, tmp_path, poisoned):
    """Security: whatever the adapter does with the file, the pickle's code never runs."""
    marker, _ = _resume_from_poisoned(ft_adapter, clean_run, tiny_assets, tmp_path, poisoned)
    assert not marker.exists(), (
        f"[pickle] resuming from a checkpoint whose {poisoned} holds a malicious pickle EXECUTED it "
        f"(marker {marker} was created): the file was loaded without weights_only=True")


@pytest.mark.parametrize("poisoned", POISONED)
def test_refusal_names_the_file(ft_adapter, clean_run, tiny_assets, tmp_path, poisoned):
    """Usability: a refused resume says which file it refused (a safe refusal that does not is this
    test's failure only, never the security test's)."""
    marker, error = _resume_from_poisoned(ft_adapter, clean_run, tiny_assets, tmp_path, poisoned)
    if marker.exists():
        pytest.skip("the pickle was executed: test_poisoned_pickle_is_never_executed reports it")
    if error is None:
        pytest.skip(f"the resume did not refuse {poisoned} (it was never loaded, or loaded weights-only): "
                    f"nothing to name")
    assert poisoned in str(error), (
        f"[pickle] the refusal should name the offending file {poisoned!r}, got "
        f"{type(error).__name__}: {str(error)[:300]}")
