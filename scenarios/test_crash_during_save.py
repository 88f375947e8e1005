"""Reliability — a crash in the middle of a save must never lose or corrupt a checkpoint.

A run is SIGKILLed at deterministic points inside the save of its second checkpoint (before a file
is written, or with a file half-written; see :mod:`harness.faults`). Afterwards every
``checkpoint-N`` on disk must be complete (the previous one intact and loadable), and resuming
from the newest checkpoint must finish the run. Saving in place (no temporary sibling + rename)
leaves a half-written ``checkpoint-4`` that a resume picks up.
"""

from __future__ import annotations

import os

import pytest

from harness.faults import KILLED, KillPoint, run_killed
from harness.oracles import assert_checkpoints_complete, read_log_history

from ._support import spec

pytestmark = [pytest.mark.ft_seed("crash"), pytest.mark.ft_requires("sft", "full", "resume", "in-process")]

POINTS = [KillPoint(after_checkpoint=2, nth_write=1, partial=True),
          KillPoint(after_checkpoint=2, nth_write=2, partial=False),
          KillPoint(after_checkpoint=2, nth_write=3, partial=True)]


@pytest.mark.parametrize("point", POINTS, ids=str)
def test_crash_during_save_keeps_previous_checkpoint(ft_adapter, tiny_assets, tmp_path, point):
    if not hasattr(os, "fork"):
        pytest.skip("fault injection forks the test process; this platform has no os.fork")
    out = tmp_path / "run"
    status = run_killed(ft_adapter, spec(tiny_assets, out, train_type="full", max_steps=6, save_steps=2), point)
    assert status == KILLED, (
        f"arrange: the run should have been killed at {point}, but it exited with status {status} "
        f"(3: finished without reaching the kill point, 4: raised; see captured stderr)")
    steps = assert_checkpoints_complete(out, tiny_assets.model_dir)
    assert 2 in steps, f"the checkpoint saved before the crash is gone (on disk: {steps})"
    result = ft_adapter.train(spec(tiny_assets, out, train_type="full", max_steps=6, save_steps=2,
                                   resume_from="latest"))
    steps_logged = {h["step"] for h in read_log_history(result.output_dir) if "loss" in h}
    assert 6 in steps_logged, f"the resumed run did not reach step 6 (logged steps {sorted(steps_logged)})"
    assert_checkpoints_complete(out, tiny_assets.model_dir)
