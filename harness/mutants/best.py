"""Mutants of best-checkpoint handling: rotation that deletes the best, only save-cadence steps saved, a mislabelled
pointer, rotation by name, evaluation on the training split, best tracking forgotten on resume, every save but the
best deleted at the end, load_best_model_at_end ignored.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from ..layout import list_checkpoints, step_of
from ..reference import ReferenceAdapter
from ..reference.adapter import RunContext
from ..reference.policy import CheckpointPolicy


class RotationDeletesBest(ReferenceAdapter):
    """Best checkpoint (seed 004), transformers #39476, ms-swift #9780 — rotation by ``save_total_limit`` deletes the
    oldest checkpoints even when one of them is the best."""

    name = "mutant:rotation-deletes-best"
    fails = ("test_best_checkpoint",)

    def rotate_checkpoints(self, ctx: RunContext, policy: CheckpointPolicy, best_step: int | None) -> None:
        super().rotate_checkpoints(ctx, policy, None)


class PlainTrainerBestCheckpoint(RotationDeletesBest):
    """Best checkpoint (seed 004), ms-swift #3314 — plain Trainer behaviour: only save-cadence steps are saved, so a
    best evaluation between two saves is lost (ms-swift #3314: eval_steps=50, save_steps=200, best at 1050)."""

    name = "mutant:plain-trainer-best-checkpoint"
    fails = ("test_best_checkpoint",)

    def checkpoint_policy(self, ctx: RunContext) -> CheckpointPolicy:
        import dataclasses

        policy = super().checkpoint_policy(ctx)
        if not policy.eval_steps:  # no evaluation, no best: plain Trainer saves exactly as the reference does
            return policy
        return dataclasses.replace(policy, save_on_best=False)


#: mutant class name -> the scenario modules it must fail (and it must pass all the others)
class BestCheckpointMislabelled(ReferenceAdapter):
    """Best checkpoint — ``best_model_checkpoint`` names a checkpoint that exists but is not the best: the newest one
    already on disk when the new best is saved (the pointer is taken before the save that it should point at)."""

    name = "mutant:best-checkpoint-mislabelled"
    fails = ("test_best_checkpoint",)

    def best_checkpoint_path(self, ctx: RunContext, step: int) -> Path:
        from ..layout import list_checkpoints

        earlier = [c for c in list_checkpoints(ctx.output_dir) if int(c.name.split("-")[1]) < step]
        return earlier[-1] if earlier else super().best_checkpoint_path(ctx, step)


class RotationSortsByName(ReferenceAdapter):
    """Best checkpoint, transformers' early rotation — checkpoints sorted by *name*, so ``checkpoint-10`` is "older"
    than ``checkpoint-9``: rotation keeps the best but removes the newest save, the one a resume needs."""

    name = "mutant:rotation-sorts-by-name"
    fails = ("test_best_checkpoint",)

    def rotate_checkpoints(self, ctx: RunContext, policy: CheckpointPolicy, best_step: int | None) -> None:
        from ..layout import list_checkpoints

        ckpts = sorted(list_checkpoints(ctx.output_dir), key=lambda c: c.name)
        by_name = {i: c for i, c in enumerate(ckpts)}  # position in name order stands for the step
        best = next((i for i, c in by_name.items() if best_step is not None and c.name == f"checkpoint-{best_step}"),
                    None)
        for i in policy.to_delete(sorted(by_name), best):
            shutil.rmtree(by_name[i])


class EvaluatesOnTrainSplit(ReferenceAdapter):
    """Reload and re-evaluate — the run logs its evaluations on the training split instead of eval.jsonl (a
    dataset-mapping slip): every logged eval metric, and so the best checkpoint, is computed on the wrong data."""

    name = "mutant:evaluates-on-train-split"
    # every scenario whose reload must reproduce the logged eval loss (embeddings, the trained-values run)
    fails = ("test_args_precedence", "test_best_checkpoint", "test_embeddings_saved", "test_moe_lora")

    def evaluation_dataset(self, ctx: RunContext, trainer):
        return trainer.train_dataset


class ResumeForgetsBest(ReferenceAdapter):
    """Best checkpoint across a resume — a resumed run starts best tracking afresh: the first evaluation after the
    resume is "the best", and rotation removes the real best, saved before the interruption."""

    name = "mutant:resume-forgets-best"
    fails = ("test_best_checkpoint",)

    def restore_best(self, ctx: RunContext, state) -> tuple[int, float] | None:
        return None


class EndCleanupKeepsOnlyBest(ReferenceAdapter):
    """Best checkpoint, transformers 4.49 (ms-swift 3.1.1) — at the end of training with ``save_total_limit=1``, every
    checkpoint but the best is deleted, the newest save (the one a resume needs) included, while the framework still
    reports it as the last checkpoint. The log left in the surviving checkpoint stops at the best's step, so a scenario
    that read it for its arrangement first would report a failed arrangement instead of the deleted save (issue 32)."""

    name = "mutant:end-cleanup-keeps-only-best"
    fails = ("test_best_checkpoint",)

    def rotate_checkpoints(self, ctx: RunContext, policy: CheckpointPolicy, best_step: int | None) -> None:
        super().rotate_checkpoints(ctx, policy, best_step)
        ckpts = {step_of(c): c for c in list_checkpoints(ctx.output_dir)}
        if policy.save_total_limit == 1 and best_step in ckpts and max(ckpts) >= policy.max_steps:  # the final save
            for step, directory in ckpts.items():
                if step != best_step:
                    shutil.rmtree(directory)


class IgnoresLoadBestAtEnd(ReferenceAdapter):
    """Best model at the end — ``load_best_model_at_end`` is accepted and silently ignored: the final model is the last
    step's, though the best evaluation was earlier and is on disk (a framework that parses the key but never passes it
    on to Trainer, or reloads the best before a final save that writes the live model)."""

    name = "mutant:ignores-load-best-at-end"
    fails = ("test_best_checkpoint",)

    def load_best_at_end(self, ctx: RunContext, trainer) -> None:
        return None
