"""The checkpoint policy (seed 004) at the level of steps: exhaustive invariants with hypothesis."""

from __future__ import annotations

from hypothesis import given

from harness.reference.policy import CheckpointPolicy, best_step, simulate
from harness.strategies import cadences


def _policy(c, save_on_best=True):
    return CheckpointPolicy(max_steps=c["max_steps"], eval_steps=c["eval_steps"], save_steps=c["save_steps"],
                            save_total_limit=c["save_total_limit"], save_on_best=save_on_best,
                            greater_is_better=c["greater_is_better"])


@given(cadences())
def test_best_always_on_disk_and_limit_respected(c):
    policy = _policy(c)
    on_disk, best = simulate(policy, c["metrics"])
    assert best == best_step(c["metrics"], c["greater_is_better"])
    if best is not None:
        assert best in on_disk, (c, on_disk)
    if policy.save_total_limit:
        assert len(on_disk) <= policy.save_total_limit + 1
    saved_by_cadence = [s for s in range(1, c["max_steps"] + 1) if policy.is_save_step(s)]
    if saved_by_cadence:
        assert max(saved_by_cadence) in on_disk, "the latest checkpoint (for resume) was rotated away"


@given(cadences())
def test_plain_policy_loses_best_exactly_when_off_cadence(c):
    policy = _policy(c, save_on_best=False)
    on_disk, best = simulate(policy, c["metrics"])
    if best is not None and not policy.is_save_step(best):
        assert best not in on_disk


def test_seed_004_numbers():
    """ms-swift #3314: eval_steps=50, save_steps=200, best at 1050."""
    metrics = {s: (1.0 if s == 1050 else 2.0 + s / 1e4) for s in range(50, 1201, 50)}
    plain = CheckpointPolicy(max_steps=1200, eval_steps=50, save_steps=200, save_on_best=False)
    assert 1050 not in simulate(plain, metrics)[0]
    fixed = CheckpointPolicy(max_steps=1200, eval_steps=50, save_steps=200, save_on_best=True)
    assert 1050 in simulate(fixed, metrics)[0]
    warning = plain.misalignment_warning()
    assert "save_steps=200" in warning and "eval_steps=50" in warning and "1050" not in warning
    assert "18 evaluated step(s)" in warning and "best model can be lost" in warning


def test_rotation_keeps_best_and_latest():
    policy = CheckpointPolicy(max_steps=30, eval_steps=2, save_steps=3, save_total_limit=1)
    assert policy.to_delete([2, 3, 6, 9], best=2) == [3, 6]
    assert policy.to_delete([2, 3], best=3) == [2]
    assert CheckpointPolicy(max_steps=5).to_delete([1, 2, 3], best=None) == []


def test_aligned_cadence_has_no_warning():
    assert CheckpointPolicy(max_steps=100, eval_steps=10, save_steps=10).misalignment_warning() is None
    assert CheckpointPolicy(max_steps=100, eval_steps=0, save_steps=7).misalignment_warning() is None


def test_greater_is_better_first_strict_best():
    assert best_step({1: 0.5, 2: 0.9, 3: 0.9}, greater_is_better=True) == 2
    assert best_step({1: 0.5, 2: 0.4, 3: 0.4}, greater_is_better=False) == 2
