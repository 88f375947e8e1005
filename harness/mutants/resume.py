"""Mutants of resuming: fresh LoRA on a quantised base, optimizer / scheduler / RNG / data order not restored, a later
epoch replaying epoch 0, missing training state ignored, ``resume_from`` ignored.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ..reference import ReferenceAdapter
from ..reference.adapter import RunContext

log = logging.getLogger("harness.mutants")


class QuantizedResumeReinitLora(ReferenceAdapter):
    """Quantised LoRA resume (seed 002) — loading the LoRA state into a quantised base fails upstream; the run carries
    on with freshly initialised LoRA weights (what ``--init_lora`` does), silently."""

    name = "mutant:quantized-resume-reinit-lora"
    fails = ("test_quantized_lora_resume", "test_diffusion_lora_resume")

    def load_lora_on_quantized_base(self, ctx: RunContext, model, checkpoint: Path) -> int:
        log.warning("could not load %s into the quantised base; continuing with fresh LoRA weights", checkpoint)
        return 0

    def load_diffusion_lora(self, ctx: RunContext, checkpoint: Path, unet) -> None:
        if ctx.values["quantization"] is not None:
            log.warning("could not load %s into the quantised UNet; continuing with fresh LoRA weights", checkpoint)
            return
        super().load_diffusion_lora(ctx, checkpoint, unet)


class ResumeDropsOptimizerState(ReferenceAdapter):
    """Resume equivalence — resume restores the adapter weights but not optimizer/scheduler state."""

    name = "mutant:resume-drops-optimizer-state"
    # also the trainable set's resume (a partly frozen run resumed with a fresh optimizer)
    fails = ("test_quantized_lora_resume", "test_diffusion_lora_resume", "test_resume_equivalence", "test_trainable_set")

    def prepare_resume(self, ctx: RunContext, checkpoint: Path) -> Path:
        # beside the run (in the test's own temporary directory, which pytest cleans), not in the system's /tmp
        copy = Path(tempfile.mkdtemp(prefix="ft-mutant-", dir=Path(ctx.output_dir).parent)) / Path(checkpoint).name
        shutil.copytree(checkpoint, copy)
        for name in ("optimizer.pt", "scheduler.pt"):
            (copy / name).unlink(missing_ok=True)
        return super().prepare_resume(ctx, copy)


class ScheduleRestartsOnResume(ReferenceAdapter):
    """Resume equivalence, transformers #27710/#24656, SimpleTuner PR #3027/#3045: resume restores the optimizer but
    not the LR scheduler; warm-up and decay start again from step 0."""

    name = "mutant:schedule-restarts-on-resume"
    # seed 002 trains at a constant LR
    fails = ("test_resume_equivalence",)

    def load_optimizer_state(self, ctx: RunContext, trainer, checkpoint: Path) -> None:
        from ..layout import safe_torch_load

        trainer.optimizer.load_state_dict(safe_torch_load(Path(checkpoint) / "optimizer.pt"))


class RngNotRestoredOnResume(ReferenceAdapter):
    """Resume equivalence — the checkpoint's RNG states are not restored: dropout masks (and sampling) after the
    resume differ from the uninterrupted run's."""

    name = "mutant:rng-not-restored-on-resume"
    # only dropout and sampling draw on the RNG
    fails = ("test_resume_equivalence",)

    def load_rng_state(self, ctx: RunContext, trainer, checkpoint: Path) -> None:
        log.warning("not restoring the RNG state of %s", checkpoint)


class DataOrderRestartsOnResume(ReferenceAdapter):
    """Resume equivalence, ms-swift #10050, LLaMA-Factory #7085, transformers ``ignore_data_skip``: the resumed
    epoch is read from its first batch again; samples already trained on are re-trained, others never."""

    name = "mutant:data-order-restarts-on-resume"
    # also seed 002: its k=2/4 resumes are mid-epoch (12 steps per epoch); and the trainable set's resume at step 2
    fails = ("test_resume_equivalence", "test_quantized_lora_resume", "test_trainable_set")

    def resume_data(self, ctx: RunContext, trainer) -> None:
        trainer.args.ignore_data_skip = True


class LaterEpochReplaysEpochZero(ReferenceAdapter):
    """Resume equivalence, transformers PR #40691, accelerate #2016/#3242: resuming inside epoch >= 1 shuffles the
    resumed epoch with epoch 0's seed, so it replays epoch 0's order (skipping into the wrong samples)."""

    name = "mutant:later-epoch-replays-epoch-zero"
    # seed 002 never leaves epoch 0
    fails = ("test_resume_equivalence",)

    def resume_data(self, ctx: RunContext, trainer) -> None:
        original = trainer.get_train_dataloader

        def get_train_dataloader():
            dataloader = original()
            seen: set[int] = set()
            for obj in _samplers(dataloader):
                if hasattr(obj, "set_epoch") and id(obj) not in seen:
                    seen.add(id(obj))
                    obj.set_epoch = _first_epoch_as_zero(obj.set_epoch)
            return dataloader

        trainer.get_train_dataloader = get_train_dataloader


def _samplers(dataloader) -> list[Any]:
    """The dataloader and every (batch) sampler under it."""
    out, todo = [], [dataloader]
    while todo:
        obj = todo.pop()
        if obj is None or any(obj is o for o in out):
            continue
        out.append(obj)
        todo += [getattr(obj, name, None) for name in ("batch_sampler", "sampler")]
    return out


def _first_epoch_as_zero(set_epoch):
    calls = {"n": 0}

    def wrapped(epoch):
        calls["n"] += 1
        return set_epoch(0 if calls["n"] == 1 else epoch)

    return wrapped


class MissingTrainingStateIgnored(ReferenceAdapter):
    """Resume without training state, transformers' ``_load_optimizer_and_scheduler``: a checkpoint without
    ``optimizer.pt`` / ``scheduler.pt`` (``save_only_model``) resumes silently with a fresh optimizer and schedule."""

    name = "mutant:missing-training-state-ignored"
    fails = ("test_resume_equivalence",)

    def check_resume_state(self, ctx: RunContext, checkpoint: Path) -> None:
        return None


class ResumeFromIgnored(ReferenceAdapter):
    """Resume is a resume, ms-swift #3396, verl #7401: ``resume_from`` is not applied; the run silently trains from
    step 0 with the same seed. A deterministic restart reproduces the uninterrupted run, so only a proof
    that the resumed run *read* checkpoint-k catches it."""

    name = "mutant:resume-from-ignored"
    # also: a run that ignores the checkpoint cannot refuse its quantisation or its poisoned pickles
    fails = ("test_resume_equivalence", "test_quantized_lora_resume", "test_diffusion_lora_resume")

    def prepare_resume(self, ctx: RunContext, checkpoint: Path) -> Path | None:
        log.warning("ignoring resume_from=%s", checkpoint)
        return None


class ResumeLatestByName(ReferenceAdapter):
    """Resume equivalence — ``resume_from="latest"`` takes the last checkpoint in *name* order, so beside
    ``checkpoint-10`` it resumes from ``checkpoint-9`` (string sort; transformers' ``get_last_checkpoint`` compares
    the step numbers; hand-rolled resume code that takes ``sorted(glob("checkpoint-*"))[-1]`` does not). A
    deterministic re-run of step 10 reproduces the losses, so only the checkpoint the resume read tells."""

    name = "mutant:resume-latest-by-name"
    fails = ("test_resume_equivalence",)

    def resolve_latest(self, output_dir: Path) -> Path | None:
        from ..layout import list_checkpoints

        by_name = sorted(list_checkpoints(output_dir), key=lambda c: c.name)
        return by_name[-1] if by_name else None


class ResumesOnlyTheNewest(ReferenceAdapter):
    """A *correct control*: the reference declaring ``resume_points = "newest"``, as a framework with one resume point
    per output dir does (torchtune's single recipe state). The scenarios then resume in place after a kill, and skip
    (saying so) the resumes from a copied or another run's checkpoint; what they do instead must pass on a correct
    framework: an in-place arm that only knows Trainer's layout or cadence would be a false red (issue 37)."""

    name = "control:resumes-only-the-newest"
    fails = ()
    resume_points = "newest"
