"""Seed 004 — the best evaluated step must be on disk, and be the best model.

The story (ms-swift #3314, RLHF): ``eval_steps=50, save_steps=200``; the best evaluation was at step
1050, never a save step, so the best model was never saved. Its upstream cousins: rotation by
``save_total_limit`` deletes the best checkpoint (transformers #39476 with save_steps=3,
eval_steps=2; ms-swift #9780, #6392 "save_total_limit does not work when save_steps != eval_steps"),
``best_model_checkpoint`` naming a deleted directory (#35609), and a resumed run that forgets the best
it had before the interruption.

Correct behaviour: after training, a checkpoint of the best evaluated step exists, survives rotation,
reloads (as a user reloads it) to the metric the run logged for it, and ``best_model_checkpoint``, where
recorded, names it; the newest save survives rotation too (a resume needs it); every save of an
evaluated step reproduces its logged metric. For any cadence and limit, and across a resume.

Arrange: the tiny data makes the eval loss U-shaped (train counts up, eval counts down); each test
states the precondition that makes its bug possible and asserts it before judging: the best lands on an
evaluated step that is not a save step. The scenarios pass ``metric``/``greater_is_better`` only where
the story names a metric (the maximised-metric test): elsewhere the framework's defaults apply, as for
its users.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from harness.errors import ArrangementError
from harness.faults import KillInTraining, require_killed, run_killed
from harness.models import write_datasets
from harness.spec import BEST_CHECKPOINT_STORY
from harness.oracles import (assert_best_checkpoint_kept, assert_evaluated_at, assert_final_is_best,
                             assert_newest_save_kept, assert_saves_reproduce_log, best_logged_step, logged_metrics)

from ._support import eval_rtol, evaluator, spec as _spec

REAL_RUN_PHASES = (Phase.explicit, Phase.generate)  # derandomized, no shrinking: each example is a real run

pytestmark = [pytest.mark.ft_seed("004"), pytest.mark.ft_requires("sft", "full", "best-checkpoint"),
              pytest.mark.ft_metric("eval_loss")]

LR = 1.5e-3
#: ``test_your_cadence_keeps_best`` tries these until the best evaluation falls between two saves (where the user's
#: cadence allows that): the tiny eval loss's minimum moves later as the learning rate drops
USER_CADENCE_LRS = (LR, LR / 2, LR * 2)
STORY = BEST_CHECKPOINT_STORY


def spec(*args, **fields):
    """A run of this story: an adapter option modelling its users' habit (``load_best_model_at_end=true`` in the
    transformers and LLaMA-Factory columns) applies to it, and to no other scenario's runs."""
    return _spec(*args, story=STORY, **fields)


def arrange_best_off_the_save_cadence(output_dir: Path, save_steps: int, metric: str = "eval_loss",
                                      greater_is_better: bool = False) -> int:
    """The precondition of the seed: the best evaluation is on a step the save cadence never saves."""
    metrics = logged_metrics(output_dir, metric)
    best = best_logged_step(metrics, greater_is_better) if metrics else None
    if best is None or best % save_steps == 0:
        raise ArrangementError(f"the best {metric} was to land between two saves (save_steps={save_steps}), but it is "
                               f"at step {best} ({metrics}): this run cannot show the bug")
    return best


@pytest.mark.ft_smoke
def test_seed_best_between_saves_is_kept(ft_adapter, tiny_assets, tmp_path, ft_device):
    """eval every 3, save every 20 over 40 steps (the seed's 50/200, scaled down): no evaluated step is a save step,
    so wherever this framework's eval loss is lowest, the best is between two saves."""
    run = spec(tiny_assets, tmp_path / "run", train_type="full", max_steps=40, eval_steps=3, save_steps=20,
               learning_rate=LR, device=ft_device)
    result = ft_adapter.train(run)
    assert_newest_save_kept(result.output_dir, 40)  # first: a missing newest save truncates the log read below
    judge = evaluator(ft_adapter, run)
    assert_saves_reproduce_log(result.output_dir, judge, rtol=eval_rtol(ft_device))  # the log is the saved models'
    assert_evaluated_at(result.output_dir, range(3, 41, 3), last_step=40)
    arrange_best_off_the_save_cadence(result.output_dir, 20)
    assert_best_checkpoint_kept(result.output_dir, judge, newest_step=40, rtol=eval_rtol(ft_device))


def test_rotation_keeps_best(ft_adapter, tiny_assets, tmp_path, ft_device):
    """transformers #39476: save_steps=3, eval_steps=2, save_total_limit=1 must not rotate the best away. 52
    training samples (13 steps an epoch) put the lowest eval loss at step 20 (measured on the reference: 3.8421,
    against 3.8824 at 18 and 3.8566 at 22), an eval-only step, not a common multiple of both cadences."""
    data = write_datasets(tmp_path / "data", n_train=52)
    run = spec(tiny_assets, tmp_path / "run", train_type="full", max_steps=30, eval_steps=2, save_steps=3,
               save_total_limit=1, learning_rate=LR, device=ft_device).replace(dataset_dir=data)
    result = ft_adapter.train(run)
    assert_newest_save_kept(result.output_dir, 30)
    judge = evaluator(ft_adapter, run)
    assert_saves_reproduce_log(result.output_dir, judge, rtol=eval_rtol(ft_device))
    arrange_best_off_the_save_cadence(result.output_dir, 3)
    assert_best_checkpoint_kept(result.output_dir, judge, save_total_limit=1, newest_step=30,
                                rtol=eval_rtol(ft_device))


@pytest.mark.ft_metric("eval_accuracy")
def test_maximised_metric(ft_adapter, tiny_assets, tmp_path, ft_device):
    """The same guarantee for a metric to maximise (next-token accuracy), with a real mid-run maximum: the eval set
    counts up like the training set, so accuracy rises as the model learns (0.17 at step 2, 0.909 at 12 on the
    reference), then the warm-up ramp drives the learning rate high enough to degrade it (0.73 at step 30)."""
    data = write_datasets(tmp_path / "data", eval_direction=+1)
    run = spec(tiny_assets, tmp_path / "run", train_type="full", max_steps=30, eval_steps=2, save_steps=10,
               save_total_limit=1, metric="eval_accuracy", greater_is_better=True, learning_rate=3e-2,
               lr_scheduler_type="linear", warmup_steps=30, device=ft_device).replace(dataset_dir=data)
    result = ft_adapter.train(run)
    assert_newest_save_kept(result.output_dir, 30)
    logged_as = ft_adapter.metric_name("eval_accuracy")  # e.g. ms-swift logs it as eval_token_acc
    judge = evaluator(ft_adapter, run)
    assert_saves_reproduce_log(result.output_dir, judge, metric=logged_as, greater_is_better=True,
                               rtol=eval_rtol(ft_device))
    metrics = logged_metrics(result.output_dir, logged_as)
    best = arrange_best_off_the_save_cadence(result.output_dir, 10, logged_as, greater_is_better=True)
    if not metrics[best] > max(metrics[min(metrics)], metrics[max(metrics)]):
        raise ArrangementError(f"{logged_as} was to peak mid-run, above its first and last values ({metrics})")
    assert_best_checkpoint_kept(result.output_dir, judge, metric=logged_as, greater_is_better=True,
                                save_total_limit=1, newest_step=30, rtol=eval_rtol(ft_device))


@pytest.mark.ft_requires("resume")
def test_resumed_run_keeps_best_of_whole_log(ft_adapter, tiny_assets, tmp_path, ft_device):
    """Killed after checkpoint-30 (the best, at step 24 or 27 on the reference, is already behind it), resumed from
    ``latest`` to step 40 with save_total_limit=1: the best of the whole log, before and after the interruption,
    is on disk. A resume that forgets the best treats the first evaluation after it as the best and rotates the
    real one away."""
    run = spec(tiny_assets, tmp_path / "run", train_type="full", max_steps=40, eval_steps=3, save_steps=10,
               save_total_limit=1, learning_rate=LR, device=ft_device)
    require_killed(run_killed(ft_adapter, run, KillInTraining(30)), KillInTraining(30))
    result = ft_adapter.train(run.replace(resume_from="latest"))
    assert_newest_save_kept(result.output_dir, 40)
    judge = evaluator(ft_adapter, run)
    assert_saves_reproduce_log(result.output_dir, judge, rtol=eval_rtol(ft_device))
    metrics = logged_metrics(result.output_dir, "eval_loss")
    best = best_logged_step(metrics, False) if metrics else None
    if best is None or best > 30 or best % 10 == 0:
        raise ArrangementError(f"the best of the whole log was to be between two saves before the interruption at "
                               f"step 30, but it is at step {best} ({metrics})")
    assert_best_checkpoint_kept(result.output_dir, judge, save_total_limit=1, newest_step=40,
                                rtol=eval_rtol(ft_device))


def test_best_model_loaded_at_end(ft_adapter, tiny_assets, tmp_path, ft_device):
    """``load_best_model_at_end`` typed by the user, with a cadence transformers accepts (save_steps a round multiple
    of eval_steps: eval every 3, save every 9, 30 steps): the best evaluation lands on an evaluated step that is not
    a save step (LLaMA-Factory's documented case: the final model was checkpoint-20's while trainer_state reported
    step 25's score). The final model must re-evaluate to the best logged value — however the framework keeps it."""
    run = spec(tiny_assets, tmp_path / "run", train_type="full", max_steps=30, eval_steps=3, save_steps=9,
               load_best_model_at_end=True, learning_rate=LR, device=ft_device)
    result = ft_adapter.train(run)
    arrange_best_off_the_save_cadence(result.output_dir, 9)
    assert_final_is_best(result.output_dir, result.final_dir, evaluator(ft_adapter, run), rtol=eval_rtol(ft_device))


@settings(max_examples=6, deadline=None, derandomize=True, database=None, phases=REAL_RUN_PHASES,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(eval_steps=st.integers(1, 5), save_steps=st.integers(1, 12), limit=st.integers(0, 2),
       max_steps=st.integers(6, 16), lr=st.just(LR))
@example(eval_steps=2, save_steps=3, limit=1, max_steps=16, lr=LR)  # #39476's cadence
@example(eval_steps=5, save_steps=4, limit=0, max_steps=16, lr=LR)  # the seed's eval < save, unaligned
@example(eval_steps=2, save_steps=5, limit=1, max_steps=24, lr=LR)  # the best is the last evaluation (step 24)
@example(eval_steps=2, save_steps=3, limit=1, max_steps=12, lr=0.0)  # a tie: every evaluation gives the same loss
def test_any_cadence_keeps_best(ft_adapter, tiny_assets, ft_device, eval_steps, save_steps, limit, max_steps, lr):
    """Any cadence and limit (6 drawn, derandomized, besides the stories' own). Two edges are explicit: the best at
    the last evaluation (eval 2 over 24 steps: the eval loss is lowest at step 24, not a save step) and a metric tie
    (learning rate 0: every evaluation of the unchanged model gives the same value; any tied step may be the one
    kept, it must be on disk and be what ``best_model_checkpoint`` names)."""
    judge_cadence(ft_adapter, tiny_assets, ft_device, eval_steps=eval_steps, save_steps=save_steps, limit=limit,
                  max_steps=max_steps, lr=lr)


def judge_cadence(ft_adapter, tiny_assets, ft_device, *, eval_steps: int, save_steps: int, limit: int, max_steps: int,
                  lr: float, load_best_model_at_end: bool = False) -> int | None:
    """One full run at this cadence, judged: the newest save survives, every save reproduces its logged eval_loss,
    the best evaluated step is on disk and named; with ``load_best_model_at_end`` the final model is the best.
    Returns the best evaluated step (None when nothing was evaluated)."""
    with tempfile.TemporaryDirectory() as tmp:
        run = spec(tiny_assets, Path(tmp) / "run", train_type="full", max_steps=max_steps, eval_steps=eval_steps,
                   save_steps=save_steps, save_total_limit=limit, learning_rate=lr, device=ft_device,
                   **({"load_best_model_at_end": True} if load_best_model_at_end else {}))
        result = ft_adapter.train(run)
        assert_newest_save_kept(result.output_dir, max_steps)
        judge = evaluator(ft_adapter, run)
        assert_saves_reproduce_log(result.output_dir, judge, rtol=eval_rtol(ft_device))
        assert_best_checkpoint_kept(result.output_dir, judge, save_total_limit=limit, newest_step=max_steps,
                                    rtol=eval_rtol(ft_device))
        if load_best_model_at_end:
            assert_final_is_best(result.output_dir, result.final_dir, judge, rtol=eval_rtol(ft_device))
        metrics = logged_metrics(result.output_dir, "eval_loss")
        return best_logged_step(metrics, False) if metrics else None


@pytest.mark.ft_user_config("cadence")
def test_your_cadence_keeps_best(ft_adapter, tiny_assets, ft_device, ft_user_config):
    """``ft-harness check``: the user's own eval / save cadence and save_total_limit, scaled onto the tiny task by
    ``harness.check.plan`` (the eval:save ratio, whether saves fall on evaluations, and rotation kept), judged as
    any cadence is; with the user's ``load_best_model_at_end`` the final model must be the best. Where the cadence
    lets the best fall between two saves, a run must put it there (up to three learning rates; an ArrangementError
    otherwise): a PASS on a run whose best happened to be saved would not answer the user's question."""
    c = ft_user_config["cadence"]
    bests = []
    for lr in USER_CADENCE_LRS:  # the eval loss's minimum moves with the learning rate: find one off the saves
        best = judge_cadence(ft_adapter, tiny_assets, ft_device, eval_steps=c["eval_steps"], save_steps=c["save_steps"],
                             limit=c["save_total_limit"], max_steps=c["max_steps"], lr=lr,
                             load_best_model_at_end=c.get("load_best_model_at_end", False))
        bests.append(best)
        if c["eval_steps"] % c["save_steps"] == 0 or (best is not None and best % c["save_steps"]):
            return  # every evaluation is a save, or the best fell between two saves: the user's risk was run
    raise ArrangementError(f"eval every {c['eval_steps']} / save every {c['save_steps']}: the best eval_loss fell on a "
                           f"save step at every learning rate tried ({dict(zip(USER_CADENCE_LRS, bests))}), so these "
                           "runs could not show whether a best between two saves is kept")
