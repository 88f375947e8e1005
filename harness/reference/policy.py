"""Checkpoint policy (seed 004): which steps to evaluate, save and delete. Pure; no torch.

The rules the reference follows:

* evaluate every ``eval_steps`` (0 = never), save every ``save_steps`` (0 = only the final output);
* with ``save_on_best``, an evaluation that improves on the best so far is saved at once, even off the
  save cadence (improvement is strict, so the *first* step reaching the best value is the best);
* rotation by ``save_total_limit`` deletes the oldest checkpoints but never the best one nor the
  latest one (needed for resume), so at most ``limit + 1`` checkpoints remain when the best is old.

:func:`simulate` runs the policy over a sequence of metrics and returns what would be on disk;
hypothesis uses it to check the invariants for any cadence, and the Trainer callback in
:mod:`harness.reference.trainer` applies the same object during real training.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = ["CheckpointPolicy", "simulate", "best_step"]


def best_step(metrics: Mapping[int, float], greater_is_better: bool) -> int | None:
    """The first step holding the best value (strict improvement, as transformers does)."""
    best: tuple[int, float] | None = None
    for step in sorted(metrics):
        value = metrics[step]
        if best is None or (value > best[1] if greater_is_better else value < best[1]):
            best = (step, value)
    return None if best is None else best[0]


@dataclass(frozen=True)
class CheckpointPolicy:
    max_steps: int
    eval_steps: int = 0
    save_steps: int = 0
    save_total_limit: int = 0
    save_on_best: bool = True
    greater_is_better: bool = False

    def __post_init__(self) -> None:
        for name in ("max_steps", "eval_steps", "save_steps", "save_total_limit"):
            value = getattr(self, name)
            if type(value) is not int or value < 0:
                raise ValueError(f"CheckpointPolicy.{name} must be a non-negative int, got {value!r}")

    def is_eval_step(self, step: int) -> bool:
        return self.eval_steps > 0 and step % self.eval_steps == 0

    def is_save_step(self, step: int) -> bool:
        """On the save cadence; like transformers, the last step is saved too when saving by steps."""
        return self.save_steps > 0 and (step % self.save_steps == 0 or step == self.max_steps)

    def eval_steps_list(self) -> list[int]:
        return [s for s in range(1, self.max_steps + 1) if self.is_eval_step(s)]

    def is_improvement(self, value: float, best: float | None) -> bool:
        if best is None:
            return True
        return value > best if self.greater_is_better else value < best

    def should_save(self, step: int, new_best: bool) -> bool:
        return self.is_save_step(step) or (self.save_on_best and new_best)

    def to_delete(self, saved_steps: Sequence[int], best: int | None) -> list[int]:
        """Which of ``saved_steps`` rotation removes: oldest first, never the best nor the latest."""
        if self.save_total_limit <= 0:
            return []
        steps = sorted(saved_steps)
        if not steps:
            return []
        protected = {steps[-1]} | ({best} if best is not None else set())
        excess = len(steps) - self.save_total_limit
        out = []
        for step in steps:
            if excess <= 0:
                break
            if step in protected:
                continue
            out.append(step)
            excess -= 1
        return out

    def unsaved_eval_steps(self) -> list[int]:
        """Evaluated steps that the save cadence alone would never save (what seed 004 loses)."""
        return [s for s in self.eval_steps_list() if not self.is_save_step(s)]

    def misalignment_warning(self) -> str | None:
        """A warning, given up front, when the best evaluation could fall on an unsaved step."""
        lost = self.unsaved_eval_steps()
        if not lost or self.eval_steps == 0:
            return None
        shown = ", ".join(map(str, lost[:6])) + (", ..." if len(lost) > 6 else "")
        cure = ("save-on-best will save such a step when it is the best"
                if self.save_on_best else "the best model can be lost: enable save_on_best or align the cadences")
        return (f"eval_steps={self.eval_steps} is not a multiple of save_steps={self.save_steps}: "
                f"{len(lost)} evaluated step(s) ({shown}) are never on the save cadence; {cure}")


def simulate(policy: CheckpointPolicy, metrics: Mapping[int, float]) -> tuple[list[int], int | None]:
    """Apply ``policy`` to ``metrics`` (eval step -> value). Returns (steps on disk, best step)."""
    on_disk: list[int] = []
    best: tuple[int, float] | None = None
    for step in range(1, policy.max_steps + 1):
        new_best = False
        if policy.is_eval_step(step) and step in metrics:
            if policy.is_improvement(metrics[step], None if best is None else best[1]):
                best = (step, metrics[step])
                new_best = True
        if policy.should_save(step, new_best):
            if step not in on_disk:
                on_disk.append(step)
            for gone in policy.to_delete(on_disk, None if best is None else best[0]):
                on_disk.remove(gone)
    return sorted(on_disk), (None if best is None else best[0])
