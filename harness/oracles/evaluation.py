"""Reload and re-evaluate (seed 004): every save reproduces the metric the run logged at its step, and the best
evaluated step is on disk where the run says its best checkpoint is.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from ..layout import run_checkpoint_map, run_checkpoints, run_log_history, weight_files
from .failure import OracleFailure
from .reading import _header_and_bytes
from .saves import assert_served_dtype


#: Relative tolerance between a metric the run logged and the re-evaluation of the directory it saved at that step.
#: The re-evaluation runs the same float32 math in one batch where Trainer evaluated in batches of 8, so only the
#: summation order differs. Measured on CPU (torch 2.13.0, 2026-11-24): the reference's largest relative difference
#: over the 61 saves re-evaluated by scenarios/test_best_checkpoint.py was 1.87e-7 (eval_loss; eval_accuracy was
#: exact); the bound is 10x that.
EVAL_RTOL = 2e-6


#: CUDA (bf16 autocast where supported, non-deterministic reductions): not measured yet (no GPU has been lent to
#: this project's sessions); the bound is the bf16 mantissa (2^-8), to be replaced by a measurement.
EVAL_RTOL_CUDA = 4e-3


class Evaluator:
    """How an oracle re-evaluates a saved directory: ``adapter.evaluate(directory, spec)`` bound to one run, and
    whether that is the framework's own formula (the adapter overrides :meth:`harness.adapter.Adapter.evaluate`)
    or the harness's default one. Built by the scenarios; the oracles only call it."""

    def __init__(self, evaluate: Callable[[Path], Mapping[str, float]], *, own_formula: bool, name: str):
        self._evaluate, self.own_formula, self.name = evaluate, own_formula, name
        self._seen: dict[Path, Mapping[str, float]] = {}  # one evaluation per directory (a framework's may be a run)

    def __call__(self, directory: Path, metric: str, seed: str) -> float:
        try:
            if Path(directory) not in self._seen:
                assert_served_dtype(directory, seed=seed)  # what a server would load is what is re-evaluated here
                self._seen[Path(directory)] = self._evaluate(Path(directory))
            values = self._seen[Path(directory)]
        except OracleFailure:
            raise
        except Exception as exc:  # the verdict: what the run saved does not load the way its users load it
            raise OracleFailure(seed, f"{Path(directory).name} does not reload for re-evaluation ({self.name}."
                                      f"evaluate): {type(exc).__name__}: {exc}") from exc
        if metric not in values:
            raise OracleFailure(seed, f"{self.name}.evaluate({Path(directory).name}) returned {sorted(values)}, not "
                                      f"the metric the run logged ({metric!r})")
        return float(values[metric])

    def hint(self) -> str:
        if self.own_formula:
            return f"{self.name}.evaluate() is the framework's own formula, so the saved weights are not the evaluated ones"
        return (f"either the run evaluated something other than eval.jsonl, or {self.name} computes the metric "
                f"differently from the harness's default formula (harness.hf.evaluate_saved: per-token cross-entropy "
                f"over eval.jsonl's plain text, no template, no EOS): then give the adapter an evaluate(directory, "
                f"spec) that evaluates with the framework's own data pipeline (see harness.adapter.Adapter.evaluate)")


def logged_metrics(output_dir: Path, metric: str, history: Iterable[Mapping[str, Any]] | None = None
                   ) -> dict[int, float]:
    """step -> value of ``metric`` in the run's logged history (``history``: already read)."""
    history = run_log_history(output_dir) if history is None else history
    return {int(h["step"]): float(h[metric]) for h in history if metric in h}


def _close(a: float, b: float, rtol: float) -> bool:
    return math.isclose(a, b, rel_tol=rtol, abs_tol=1e-7)


def assert_saves_reproduce_log(output_dir: Path, evaluate: Evaluator, *, metric: str = "eval_loss",
                               greater_is_better: bool = False, rtol: float = EVAL_RTOL,
                               seed: str = "004") -> dict[str, float]:
    """Every save of an evaluated step reloads (as a user reloads it) and reproduces the metric logged at its step.

    Judged: each ``checkpoint-N`` with an evaluation logged at step N, and the final output (when it holds weights
    and the last step was evaluated), which must reproduce the metric logged at the last step or, for a run that
    reloads the best (saved) model at the end, at another evaluated step. Returns ``{save: re-evaluated value}`` (empty when no save
    is of an evaluated step: :func:`assert_best_checkpoint_kept` is what requires the best's save).
    """
    output_dir = Path(output_dir)
    history = run_log_history(output_dir)
    metrics = logged_metrics(output_dir, metric, history)
    if not metrics:
        raise OracleFailure(seed, f"{output_dir.name}: no {metric!r} in the logged history; nothing was evaluated")
    judged: list[tuple[str, Path, dict[int, float]]] = []
    for step, ckpt in run_checkpoint_map(output_dir).items():
        if step in metrics:
            judged.append((ckpt.name, ckpt, {step: metrics[step]}))
    last = max(int(h["step"]) for h in history if "step" in h)
    if last in metrics and (weight_files(output_dir) or (output_dir / "adapter_config.json").is_file()):
        # the last step's model, or the one a load-best-at-end reloaded: any evaluated step's (an exact match to
        # another step's logged value cannot happen by chance at this tolerance); shown: the last and the best
        best = best_logged_step(metrics, greater_is_better)
        judged.append(("the final output", output_dir, {last: metrics[last], best: metrics[best],
                                                         **{s: v for s, v in metrics.items() if s not in (last, best)}}))
    found, wrong = {}, []  # no save of an evaluated step (cadences that never meet): nothing to judge here
    for label, directory, expected in judged:
        if weight_files(directory):
            _assert_dtype_is_configs(directory, seed)  # a missing shard or a rounded save is a verdict of its own
        found[label] = value = evaluate(directory, metric, seed)
        if not any(_close(value, v, rtol) for v in expected.values()):
            wrong.append((label, value, expected))
    values = list(found.values())
    logged = [(label, next(iter(exp.values()))) for label, _, exp in judged]  # each save's own step's value first
    if len({round(v, 9) for _, v in logged}) > 1 and all(_close(v, values[0], 1e-9) for v in values):
        raise OracleFailure(seed, f"{evaluate.name}'s evaluate gives {metric}={values[0]:.6g} for each of {len(judged)} "
                                  f"saves whose logged values differ "
                                  f"({', '.join(f'{label}: {v:.6g}' for label, v in logged[:3])}): it does not evaluate "
                                  f"the directory it is given (the adapter's evaluate is wrong, not the framework's saves)")
    if len(wrong) == len(judged) and len(judged) > 1:
        shown = "; ".join(f"{label}: {value:.6g} vs {', '.join(f'{v:.6g} at step {s}' for s, v in list(exp.items())[:2])}"
                          for label, value, exp in wrong[:3])
        raise OracleFailure(seed, f"no save reproduces the {metric} the run logged for it ({len(wrong)} of "
                                  f"{len(judged)} reloaded and re-evaluated by {evaluate.name}: {shown}): "
                                  f"{evaluate.hint()}")
    if wrong:
        label, value, exp = wrong[0]
        logged = " or ".join(f"{v:.6g} (step {s})" for s, v in list(exp.items())[:2]) + (
            " or any other evaluated step's value" if len(exp) > 2 else "")
        raise OracleFailure(seed, f"{label} reloaded gives {metric}={value:.6g}, but the run logged {logged} for it "
                                  f"(rtol {rtol:g}; {len(judged) - len(wrong)} other save(s) reproduce theirs): the "
                                  f"saved model is not the model the run evaluated")
    return found


_SAFETENSORS_DTYPES = {"float32": "F32", "bfloat16": "BF16", "float16": "F16", "float64": "F64"}


def _assert_dtype_is_configs(directory: Path, seed: str) -> None:
    """A full save's floating tensors are in the dtype its config.json declares (a bf16 file under a float32 config
    is a rounded copy of the trained model)."""
    directory = Path(directory)
    headers, _ = _header_and_bytes(directory, seed)
    cfg = json.loads((directory / "config.json").read_text(encoding="utf-8")) if (directory / "config.json").is_file() \
        else {}
    declared = _SAFETENSORS_DTYPES.get(str(cfg.get("dtype") or cfg.get("torch_dtype") or ""))
    if declared is None:
        return
    other = sorted(k for k, m in headers.items() if m["dtype"] in _SAFETENSORS_DTYPES.values() and m["dtype"] != declared)
    if other:
        raise OracleFailure(seed, f"{directory.name}: config.json declares {cfg.get('dtype') or cfg.get('torch_dtype')} "
                                  f"but {len(other)} tensors are saved as {headers[other[0]]['dtype']} (e.g. {other[0]}): "
                                  f"the save is a rounded copy of the model the run trained and evaluated")


def assert_best_checkpoint_kept(output_dir: Path, evaluate: Evaluator, *, metric: str = "eval_loss",
                                greater_is_better: bool = False, save_total_limit: int = 0,
                                newest_step: int | None = None, rtol: float = EVAL_RTOL, seed: str = "004") -> int:
    """The best logged evaluation has a checkpoint on disk that reproduces the metric, rotation kept the newest save
    (``newest_step``: the last step of the save cadence, what a resume needs) and at most ``save_total_limit`` + the
    best, and a recorded ``best_model_checkpoint`` names ``checkpoint-<best step>``. Returns the best step.

    The best is the oracle's own reading of the logged history (the first step holding the best value; in a tie, any
    tied step whose checkpoint is on disk, the first of them judged); the checkpoint's own trainer_state.json is
    never taken as evidence that it holds the best model.
    """
    output_dir = Path(output_dir)
    metrics = logged_metrics(output_dir, metric)
    if not metrics:
        raise OracleFailure(seed, f"{output_dir.name}: no {metric!r} in the logged history; nothing was evaluated")
    first = best_logged_step(metrics, greater_is_better)
    # a tie: every step holding the best value is a best model (transformers keeps the first; a framework that keeps a
    # later one has the same model quality, and is judged by whether that one is on disk and named)
    tied = sorted(s for s, v in metrics.items() if v == metrics[first])
    on_disk = run_checkpoint_map(output_dir)
    best = next((s for s in tied if s in on_disk), first)
    if best not in on_disk:
        also = f" (tied at steps {tied})" if len(tied) > 1 else ""
        raise OracleFailure(seed, f"best {metric}={metrics[best]:.6g} was logged at step {best}{also}, but there is "
                                  f"no checkpoint-{best} on disk (checkpoints: {sorted(on_disk)}): the best model was "
                                  f"never saved or was rotated away")
    if newest_step is not None:
        assert_newest_save_kept(output_dir, newest_step, seed=seed)
    if save_total_limit and len(on_disk) > save_total_limit + 1:
        raise OracleFailure(seed, f"{len(on_disk)} checkpoints on disk ({sorted(on_disk)}) with "
                                  f"save_total_limit={save_total_limit} (at most limit + the best allowed)")
    # the run's final record (older checkpoints may legitimately name a best that was later superseded)
    final_state = output_dir / "trainer_state.json"
    if not final_state.is_file() and on_disk:
        final_state = on_disk[max(on_disk)] / "trainer_state.json"
    if final_state.is_file():
        recorded = json.loads(final_state.read_text(encoding="utf-8")).get("best_model_checkpoint")
        names = {f"checkpoint-{s}" for s in tied if s in on_disk}
        if recorded and (Path(recorded).name not in names or not Path(recorded).is_dir()):
            where = "does not exist on disk" if not Path(recorded).is_dir() else "exists, but is not the best"
            raise OracleFailure(seed, f"{final_state.parent.name}/trainer_state.json names best_model_checkpoint="
                                      f"{recorded!r}, which {where}: the best logged {metric} is "
                                      f"{metrics[best]:.6g} at step {best} (checkpoint-{best})")
    value = evaluate(on_disk[best], metric, seed)
    if _close(value, metrics[best], rtol):
        return best
    others = [s for s in sorted(on_disk, reverse=True) if s != best and s in metrics]
    formula = others and not _close(evaluate(on_disk[others[0]], metric, seed), metrics[others[0]], rtol)
    raise OracleFailure(seed, f"re-evaluating checkpoint-{best} gives {metric}={value:.6g}, but {metrics[best]:.6g} "
                              f"was logged at step {best}: " + (
                                  f"checkpoint-{others[0]} does not reproduce its logged value either: "
                                  + evaluate.hint() if formula else "the checkpoint does not hold the best model"))


def assert_final_is_best(output_dir: Path, final_dir: Path, evaluate: Evaluator, *, metric: str = "eval_loss",
                         greater_is_better: bool = False, rtol: float = EVAL_RTOL, seed: str = "004") -> int:
    """``load_best_model_at_end``: the final model (``final_dir``) does what the best evaluation's model did — it
    re-evaluates to the best logged metric. Judged by what the final model does, not by which checkpoint a
    trainer_state names, so a framework that keeps the best model any way it likes passes. When it does not, the
    message says which checkpoint's weights the final model holds (LLaMA-Factory's documented mislabel, and
    transformers' own behaviour when the best evaluation was not a save step: the best *saved* checkpoint is
    loaded, while ``best_metric`` reports the unsaved step's value). Returns the best step."""
    output_dir, final_dir = Path(output_dir), Path(final_dir)
    metrics = logged_metrics(output_dir, metric)
    if not metrics:
        raise OracleFailure(seed, f"{output_dir.name}: no {metric!r} in the logged history; nothing was evaluated")
    best = best_logged_step(metrics, greater_is_better)
    value = evaluate(final_dir, metric, seed)
    if _close(value, metrics[best], rtol):
        return best
    from .reading import weights_on_disk

    final = weights_on_disk(final_dir, seed=seed)

    def same(directory: Path) -> bool:
        other = weights_on_disk(directory, seed=seed)
        return other.keys() == final.keys() and all(other[k].equal(final[k]) for k in final)

    holds = [c.name for c in run_checkpoints(output_dir) if weight_files(c) and same(c)]
    close = sorted((s for s, v in metrics.items() if _close(value, v, rtol)))
    state_file = final_dir / "trainer_state.json"
    state = json.loads(state_file.read_text(encoding="utf-8")) if state_file.is_file() else {}
    says = (f"; its trainer_state.json says best_model_checkpoint={Path(state['best_model_checkpoint']).name!r}, "
            f"best_metric={state.get('best_metric')!r}" if state.get("best_model_checkpoint") else "")
    raise OracleFailure(seed, f"load_best_model_at_end: the final model in {final_dir.name} re-evaluates to "
                              f"{metric}={value:.6g}, but the best {metric}={metrics[best]:.6g} was logged at step "
                              f"{best}; " + (f"it holds {holds[0]}'s weights" if holds else
                                             "its weights are no checkpoint's on disk") +
                              (f" (the value logged at step {close[0]})" if close else "") + says +
                              ": the model loaded at the end is not the best")


def assert_newest_save_kept(output_dir: Path, newest_step: int, *, seed: str = "004") -> None:
    """The newest save of the cadence (``newest_step``: the one a resume needs) survived rotation. Scenarios check it
    before reading the log for their arrangement: a framework that deleted it (transformers 4.49's end-of-training
    cleanup under ``save_total_limit=1`` keeps only the best; ms-swift 3.1.1 still reports it as
    ``last_model_checkpoint``) leaves a log that ends at an older save, which reads as a failed arrangement
    otherwise, hiding the bug (issue 32)."""
    on_disk = run_checkpoint_map(output_dir)
    if newest_step not in on_disk:
        raise OracleFailure(seed, f"the newest save, checkpoint-{newest_step} (the one a resume needs), is not on disk "
                                  f"(checkpoints: {sorted(on_disk)}): rotation removed it")


def best_logged_step(metrics: Mapping[int, float], greater_is_better: bool) -> int:
    """The oracle's own definition of the best step: the first step holding the best value (a later
    equal value is no improvement, as in transformers). Deliberately not shared with any implementation."""
    best = max(metrics.values()) if greater_is_better else min(metrics.values())
    return min(step for step, value in metrics.items() if value == best)


def assert_evaluated_at(output_dir: Path, steps: Iterable[int], *, last_step: int, metric: str = "eval_loss",
                        seed: str = "004") -> None:
    """The run evaluated at every one of ``steps`` (the cadence the scenario's arrangement depends on) and nowhere
    else, except at ``last_step`` (transformers evaluates the final step of an eval-by-steps run)."""
    got, want = set(logged_metrics(output_dir, metric)), set(steps)
    if not want <= got or got - want - {last_step}:
        raise OracleFailure(seed, f"{metric} was to be logged at steps {sorted(want)} (the eval cadence the run asked "
                                  f"for; at the last step {last_step} optionally), but was logged at {sorted(got)}")
