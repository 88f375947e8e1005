"""Bad input, hostile files and failing disks: clear typed errors, nothing lost, nothing executed."""

from __future__ import annotations

import errno
import json
import os
import shutil

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.adapter import RunSpec
from harness.errors import (CheckpointError, ConfigError, CorruptFileError, HarnessError, MissingFileError,
                            QuantizationMismatchError, SaveError, UnsafeCheckpointError)
from harness.models import build_assets
from harness.oracles import dir_fingerprint
from harness.reference import ReferenceAdapter
from harness.reference.args import resolve
from harness.layout import read_json, read_safetensors_header, safe_torch_load
from harness.reference.io import validate_model_dir


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return build_assets(tmp_path_factory.mktemp("r"))


@pytest.fixture(scope="module")
def lora_run(assets, tmp_path_factory):
    out = tmp_path_factory.mktemp("lora")
    return ReferenceAdapter().train(RunSpec(model_dir=assets.model_dir, output_dir=out, dataset_dir=assets.dataset_dir,
                                            train_type="lora", max_steps=2, save_steps=2))


corrupt_bytes = st.one_of(
    st.binary(max_size=64),
    st.text(max_size=40).map(str.encode),
    st.sampled_from([b"", b"{", b"[]", b"null", b'"x"', b"1e999999", b'{"a": ' * 2000, b"\xff\xfe",
                     b'{"train_type": 5}', b'{"max_steps": -1}', b'{"max_steps": 1e400}',
                     b'{"global_step": "3"}', b'{"global_step": 2, "log_history": 7}']),
)
SWEEP = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@SWEEP
@given(data=corrupt_bytes)
def test_args_json_corruption_gives_typed_error(tmp_path_factory, data):
    d = tmp_path_factory.mktemp("args")
    (d / "args.json").write_bytes(data)
    try:
        resolve({}, d)
    except ConfigError as exc:
        assert "args.json" in str(exc)


@SWEEP
@given(data=corrupt_bytes, name=st.sampled_from(["config.json", "model.safetensors"]))
def test_model_dir_corruption_gives_typed_error(assets, tmp_path_factory, data, name):
    d = tmp_path_factory.mktemp("model")
    shutil.copytree(assets.model_dir, d, dirs_exist_ok=True)
    (d / name).write_bytes(data)
    with pytest.raises(HarnessError) as excinfo:
        validate_model_dir(d)
    assert name in str(excinfo.value) or "model_type" in str(excinfo.value)


@SWEEP
@given(data=corrupt_bytes)
def test_trainer_state_corruption_refused_before_resume(lora_run, tmp_path_factory, data):
    ckpt = tmp_path_factory.mktemp("ckpt") / "checkpoint-2"
    shutil.copytree(lora_run.checkpoint(2), ckpt)
    (ckpt / "trainer_state.json").write_bytes(data)
    before = dir_fingerprint(lora_run.output_dir)
    adapter = ReferenceAdapter()
    try:
        adapter.prepare_resume(None, ckpt)
    except HarnessError as exc:
        assert "trainer_state.json" in str(exc)
    assert dir_fingerprint(lora_run.output_dir) == before, "a failed resume touched an existing checkpoint"


def test_safetensors_header_claims_too_much(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes((10**12).to_bytes(8, "little") + b"{}")
    with pytest.raises(CorruptFileError, match=r"header claims .* \(truncated\?\)"):
        read_safetensors_header(path)


def test_read_json_errors(tmp_path):
    with pytest.raises(MissingFileError, match="config.json"):
        read_json(tmp_path / "config.json")
    (tmp_path / "config.json").write_text("[1]")
    with pytest.raises(ConfigError, match="config.json"):
        read_json(tmp_path / "config.json")


class _Evil:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


def test_malicious_pickle_refused_never_run(tmp_path):
    import torch

    marker = tmp_path / "PWNED"
    torch.save({"x": _Evil(marker)}, tmp_path / "optimizer.pt")
    with pytest.raises(UnsafeCheckpointError, match="refusing to load 'optimizer.pt'"):
        safe_torch_load(tmp_path / "optimizer.pt")
    assert not marker.exists()


def test_quantization_mismatch_names_both(assets, tmp_path, lora_run):
    ckpt = tmp_path / "checkpoint-2"
    shutil.copytree(lora_run.checkpoint(2), ckpt)
    args = json.loads((ckpt / "args.json").read_text())
    (ckpt / "args.json").write_text(json.dumps({**args, "quantization": "nf4"}))
    spec = RunSpec(model_dir=assets.model_dir, output_dir=tmp_path / "out", dataset_dir=assets.dataset_dir,
                   train_type="lora", quantization="int8", max_steps=4, resume_from=ckpt)
    with pytest.raises(QuantizationMismatchError, match="quantization='nf4'.*quantization='int8'"):
        ReferenceAdapter().train(spec)


def test_disk_full_during_checkpoint_keeps_previous(assets, tmp_path, monkeypatch):
    """A save that fails (ENOSPC on the final rename) raises SaveError; checkpoint-2 stays intact."""
    import harness.reference.adapter as adapter_mod

    out = tmp_path / "run"
    real = adapter_mod.atomic_replace_dir
    calls = {"n": 0}

    def failing(staging, final):
        calls["n"] += 1
        if calls["n"] == 2:
            raise SaveError(final, os.strerror(errno.ENOSPC))
        return real(staging, final)

    monkeypatch.setattr(adapter_mod, "atomic_replace_dir", failing)
    spec = RunSpec(model_dir=assets.model_dir, output_dir=out, dataset_dir=assets.dataset_dir, train_type="full",
                   max_steps=4, save_steps=2)
    with pytest.raises(SaveError, match="checkpoint-4.*No space left on device.*left intact"):
        ReferenceAdapter().train(spec)
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("checkpoint-")) == ["checkpoint-2"]
    validate_model_dir(out / "checkpoint-2")
    assert not list(out.glob(".staging-*")), "the failed save left its staging directory behind"


def test_missing_resume_dir_and_latest(assets, tmp_path):
    spec = RunSpec(model_dir=assets.model_dir, output_dir=tmp_path / "none", dataset_dir=assets.dataset_dir,
                   resume_from="latest")
    with pytest.raises(MissingFileError, match="no checkpoint exists"):
        ReferenceAdapter().train(spec)
    with pytest.raises(CheckpointError, match="resume checkpoint does not exist"):
        ReferenceAdapter().prepare_resume(None, tmp_path / "checkpoint-9")


def _tree(directory):
    """Relative path -> bytes of every file of ``directory`` (``mkstemp``'s random ``*.tmp`` names by suffix only)."""
    import re

    out = {}
    for path in sorted(directory.rglob("*")):
        rel = re.sub(r"\.[a-z0-9_]{8}\.tmp$", ".XXXXXXXX.tmp", str(path.relative_to(directory)))
        out[rel] = path.read_bytes() if path.is_file() else "dir"
    return out


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fault injection forks")
def test_crash_state_is_what_a_real_kill_leaves(assets, tmp_path):
    """harness.faults.crash_states copies the output dir before each file-system step instead of killing a run
    there: for the rename that publishes checkpoint-2 and for a step inside the rotation of checkpoint-1, a real
    SIGKILL at that step leaves byte for byte the recorded copy."""
    from harness.faults import KILLED, crash_states, run_killed_at_step

    out = tmp_path / "run"
    run = RunSpec(model_dir=assets.model_dir, output_dir=out, dataset_dir=assets.dataset_dir, train_type="full",
                  max_steps=3, save_steps=1, save_total_limit=1)
    found = crash_states(ReferenceAdapter(), run, after_checkpoint=1, root=tmp_path / "states")
    ops = [s.mutation.op for s in found.states]
    assert {"mkdir", "write-tensors", "open-write", "rename", "unlink", "rmdir"} <= set(ops), ops
    publish = next(s for s in found.states if s.mutation.op == "rename" and s.mutation.path.endswith("-> checkpoint-2"))
    rotating = next(s for s in found.states
                    if s.mutation.op == "unlink" and s.mutation.path.startswith("checkpoint-1/"))
    for state in (publish, rotating):
        shutil.rmtree(out)
        assert run_killed_at_step(ReferenceAdapter(), run, after_checkpoint=1, index=state.mutation.index) == KILLED
        assert _tree(out) == _tree(state.tree), f"killed before {state.mutation}: the tree differs from the copy"
