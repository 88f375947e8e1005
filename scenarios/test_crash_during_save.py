"""Reliability — a crash in the middle of a save must never lose or corrupt a checkpoint.

A run is SIGKILLed at deterministic points inside a checkpoint save (before a file is written, or with
a file half-written; see :mod:`harness.faults`): once checkpoint-2's directory exists, and inside the
*next* save, armed only after checkpoint-2 is complete and training has moved on. Afterwards every
``checkpoint-N`` on disk must be complete (the previous one intact and loadable), and resuming from the
newest checkpoint must finish the run. Saving in place (no temporary sibling + rename) leaves a
half-written checkpoint that a resume picks up.

Then every file-system step of one save, as ALICE (Pillai et al., OSDI 2014) and CrashMonkey (Mohan et al.,
OSDI 2018) do for file systems: with ``save_total_limit=1`` the save of checkpoint-4 is recorded step by step
and each step's crash state is judged and resumed. The old checkpoint may go only once the new one is complete
under its name: rotating first (making room), deleting the old one before the staged new one is renamed into
place, or publishing the new one by copying it file by file each leave a moment with nothing whole to resume
from.
"""

from __future__ import annotations

import os

import pytest

from harness.faults import KillPoint, crash_states, require_killed, restore_tree, run_killed
from harness.oracles import (assert_checkpoints_complete, assert_crash_state_sound, completed_checkpoints,
                             read_log_history)

from ._support import spec

pytestmark = [pytest.mark.ft_seed("crash"), pytest.mark.ft_requires("sft", "full", "resume", "in-process")]

POINTS = [KillPoint(after_checkpoint=2, nth_write=1, partial=True),
          KillPoint(after_checkpoint=2, nth_write=2, partial=False),
          KillPoint(after_checkpoint=2, nth_write=3, partial=True),
          KillPoint(after_checkpoint=2, nth_write=1, partial=True, in_next_save=True),
          KillPoint(after_checkpoint=2, nth_write=2, partial=False, in_next_save=True)]


def kill(adapter, run, point: KillPoint) -> None:
    """Arrange: ``run`` SIGKILLed at ``point`` (in a forked child)."""
    if not hasattr(os, "fork"):
        pytest.skip("fault injection forks the test process; this platform has no os.fork")
    require_killed(run_killed(adapter, run, point), point)


@pytest.mark.ft_smoke("write#1-half-written")
@pytest.mark.parametrize("point", POINTS, ids=str)
def test_crash_during_save_keeps_previous_checkpoint(ft_adapter, tiny_assets, tmp_path, point):
    out = tmp_path / "run"
    kill(ft_adapter, spec(tiny_assets, out, train_type="full", max_steps=6, save_steps=2), point)
    steps = assert_checkpoints_complete(out, tiny_assets.model_dir)
    assert 2 in steps, f"the checkpoint saved before the crash is gone (on disk: {steps})"
    result = ft_adapter.train(spec(tiny_assets, out, train_type="full", max_steps=6, save_steps=2,
                                   resume_from="latest"))
    steps_logged = {h["step"] for h in read_log_history(result.output_dir) if "loss" in h}
    assert 6 in steps_logged, f"the resumed run did not reach step 6 (logged steps {sorted(steps_logged)})"
    assert_checkpoints_complete(out, tiny_assets.model_dir)


def test_crash_at_every_step_of_a_save(ft_adapter, tiny_assets, tmp_path, record_property):
    """save_total_limit=1, a crash at every file-system step of checkpoint-4's save
    (:func:`harness.faults.crash_states`: each mkdir, open for writing, tensor write, rename, unlink and rmdir, from
    the staging of the new checkpoint to the rotation of the old one): whatever each step leaves is a state a user
    can resume from — every ``checkpoint-N`` on disk byte for byte as its completed save wrote it (a half-deleted
    checkpoint-2 is allowed only beside a complete checkpoint-4: "latest" never picks it), checkpoint-2 or
    checkpoint-4 complete, and a resume from latest reaches step 6. This is where a framework that deletes the old
    checkpoint after writing the new one's files but before renaming it into place, or that copies a staged
    checkpoint file by file instead of renaming it, loses data: between two tensor writes, where the kill points
    above never land. The number of steps tried is recorded as the test's ``crash_points`` property (JUnit XML)."""
    if not hasattr(os, "fork"):
        pytest.skip("fault injection forks the test process; this platform has no os.fork")
    out = tmp_path / "run"
    run = spec(tiny_assets, out, train_type="full", max_steps=6, save_steps=2, save_total_limit=1)
    found = crash_states(ft_adapter, run, after_checkpoint=2, root=tmp_path / "states")
    record_property("crash_points", len(found.states))
    completed = completed_checkpoints(found.before, found.after)
    resumed: set[tuple] = set()
    for state in found.states:
        point = f"{state.mutation} of {len(found.states)} in checkpoint-4's save"
        complete = assert_crash_state_sound(state.tree, completed, point=point, after_checkpoint=2)
        # resume once per distinct shape of what the crash left: the names in the output dir, and which
        # checkpoints are complete (states that differ only inside a staging dir resume alike)
        shape = (tuple(sorted(p.name for p in state.tree.iterdir())), tuple(complete))
        if shape in resumed:
            continue
        resumed.add(shape)
        restore_tree(state.tree, out)
        result = ft_adapter.train(run.replace(resume_from="latest"))
        steps_logged = {h["step"] for h in read_log_history(result.output_dir) if "loss" in h}
        assert 6 in steps_logged, (
            f"killed just before file-system step {point}, the run resumed from latest did not reach step 6 (logged "
            f"steps {sorted(steps_logged)}; on disk before the resume: {sorted(p.name for p in state.tree.iterdir())})")
    record_property("crash_resumes", len(resumed))
