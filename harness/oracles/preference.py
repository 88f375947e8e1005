"""Preference and RL training's reference model (DPO, GRPO): rewards and KL are measured against the policy the run
starts from.

DPO's reward of a completion is ``beta * (log p_policy - log p_reference)``. Before the first update the policy *is* the
starting policy, so when the reference is that same model both logged rewards of the first step are 0, whatever the
data, the tokenisation or the framework; a reference that is anything else (the bare base under a pre-trained adapter,
a freshly initialised adapter, another dtype) makes them non-zero. After a resume the reference is still the one the
run started with: every step trains on the same batch, so the reference log-probs each step used
(``logps/* - rewards/* / beta``) are one constant (a reference re-taken from the resumed weights logs rewards of 0 right
after the resume). GRPO with a KL term (``beta`` > 0) logs ``kl``, the mean per-token KL of the policy to the reference
on the sampled completions: 0 at the first step by the same argument. The oracles read the run's logged history in its
own layout (TRL's ``rewards/chosen`` / ``rewards/rejected`` / ``kl`` keys, which every TRL-based framework logs); for the
message, when the run also logs ``logps/chosen``, the harness finds the run's rendering of a row (:data:`RENDERINGS`),
recomputes what the run's reference was and names it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..layout import run_log_history
from .failure import OracleFailure
from .reading import losses_by_step

__all__ = ["DPO_REWARD_ATOL", "DPO_RESUME_RTOL", "GRPO_KL_ATOL", "RENDERINGS",
           "assert_kl_starts_at_zero", "assert_kl_survives_resume",
           "dpo_rewards_by_step", "completion_logps", "reference_logps",
           "assert_reference_is_start", "assert_reference_survives_resume"]

_SEED = "ref"

#: |rewards/chosen|, |rewards/rejected| at the first logged step. Measured: the reference logs exactly 0.0 for both in
#: every start case on CPU (the policy and its frozen copy run the same float32 kernels, and a reference reloaded from
#: disk, mutant ReferenceReloadedFromDisk, logs 0.0 too); the smallest known bug, a bfloat16 reference (mutant
#: ReferenceInBfloat16), logs max(|rewards/chosen|, |rewards/rejected|) of 1.2e-5 (LoRA on the LoRA SFT output) to
#: 3.7e-4 (full on the full SFT output); a reference that is the bare base under a pre-trained adapter 0.040.
DPO_REWARD_ATOL = 1e-6
#: GRPO's logged ``kl`` at the first step. Measured (beta 0.04, 2 steps): the reference logs exactly 0.0 in every start
#: case on CPU (the policy and its copy run the same float32 forward); a bfloat16 reference (ReferenceInBfloat16) logs
#: 4.2e-7 to 5.0e-7, the bare base under a pre-trained adapter (ReferenceIsBaseUnderAdapter) 4.9e-3.
GRPO_KL_ATOL = 1e-7
#: relative bound on the reference log-probs a resumed step used against those of the run's first step. Measured on the
#: reference, every start, steps 2-4 against step 1, resumed or not: at most 1.2e-7 (float32 rounding of
#: ``logps - rewards / beta``); a reference re-taken from the resumed weights (mutant ReferenceIsResumedPolicy) is off by
#: 4e-2 at step 3. KTO (16 unpaired rows in one batch, LoRA on the LoRA SFT output, resumed): at most 1.6e-7; the
#: re-taken reference 4.2e-2 (-14.88908 against -15.538725).
DPO_RESUME_RTOL = 1e-5
#: |logps/chosen - the harness's recomputation| (relative) under which the run rendered the preference rows as one of
#: :data:`RENDERINGS`, so the reference log-prob the run used can be recomputed and named in a failure message
_SAME_TOKENISATION_RTOL = 1e-4
#: |the reference log-prob the run used - a candidate's| (relative) under which the reference is named as that candidate:
#: float32 sums of about 16 agree to about 1e-7; the bfloat16 reference is off by 6e-5 to 2e-4 relative
_SAME_MODEL_RTOL = 2e-6


def dpo_rewards_by_step(history: Sequence[Mapping[str, Any]]) -> dict[int, dict[str, float]]:
    """Training steps' logged ``rewards/chosen``, ``rewards/rejected`` (and ``logps/*`` where logged), by step."""
    out: dict[int, dict[str, float]] = {}
    for entry in history:
        if "rewards/chosen" in entry and "rewards/rejected" in entry and "step" in entry:
            out[int(entry["step"])] = {k: float(entry[k]) for k in ("rewards/chosen", "rewards/rejected", "logps/chosen",
                                                                     "logps/rejected") if k in entry}
    return out


#: the renderings of a preference row the harness recomputes log-probs under: the tokenizer's chat template (TRL's
#: conversational rows), and the plain prompt + completion text with or without the BOS before it and the EOS after
#: it (LLaMA-Factory's ``empty`` template renders neither)
RENDERINGS = ("chat template", "text", "text + EOS", "BOS + text", "BOS + text + EOS")


def _encode(tok, row: Mapping[str, str], rendering: str) -> tuple[list[int], list[int]]:
    """(input ids, labels): the row's prompt and chosen completion under ``rendering``, only the completion labelled."""
    if rendering == "chat template":
        from ..task import encode_chat

        enc = encode_chat(tok, [{"role": "user", "content": row["prompt"]},
                                {"role": "assistant", "content": row["chosen"]}])
        return enc["input_ids"], enc["labels"]
    prompt = tok(row["prompt"], add_special_tokens=rendering.startswith("BOS"))["input_ids"]
    completion = tok(row["chosen"], add_special_tokens=False)["input_ids"]
    if rendering.endswith("EOS"):
        completion = completion + [tok.eos_token_id]
    return prompt + completion, [-100] * len(prompt) + completion


def completion_logps(directory: Path, dataset_dir: Path, device: str = "cpu") -> dict[str, float]:
    """Per :data:`RENDERINGS` entry, the mean over ``preferences.jsonl``'s rows of the summed log-probability of the
    ``chosen`` completion under the model saved in ``directory`` (an adapter on its base, or a full model; the
    directory's tokenizer, else its base's)."""
    import torch
    from transformers import AutoTokenizer

    from ..hf import load_saved
    from ..task import preferences

    model, tok_dir = load_saved(Path(directory), None, device)
    tok = AutoTokenizer.from_pretrained(str(tok_dir), local_files_only=True)
    model.eval()
    rows = preferences(Path(dataset_dir))
    out = {}
    for rendering in RENDERINGS:
        total = []
        for row in rows:
            ids, labels = _encode(tok, row, rendering)
            with torch.no_grad():
                logps = torch.log_softmax(model(input_ids=torch.tensor([ids], device=model.device)).logits[0, :-1].float(),
                                          -1)
            target = torch.tensor(labels[1:], device=model.device)
            keep = target != -100
            total.append(logps[keep].gather(-1, target[keep].unsqueeze(-1)).sum().item())
        out[rendering] = sum(total) / len(total)
    return out


def _diagnosis(step_log: Mapping[str, float], beta: float, candidates: Mapping[str, Path], start: str,
               dataset_dir: Path) -> str:
    """What the run's reference was, found from the logged policy log-prob: the rendering under which the starting
    policy gives the run's ``logps/chosen`` is the run's tokenisation; under it, the reference's log-prob
    (``logps/chosen - rewards/chosen / beta``) is compared with each candidate's."""
    if "logps/chosen" not in step_log:
        return ""
    found = {name: completion_logps(path, dataset_dir) for name, path in candidates.items()}
    policy = step_log["logps/chosen"]
    # the run's rendering: the one under which the starting policy (else another candidate) gives its logps/chosen
    match = next(((name, r) for name in (start, *(n for n in found if n != start)) for r in RENDERINGS
                  if math.isclose(policy, found[name][r], rel_tol=_SAME_TOKENISATION_RTOL)), None)
    if match is None:
        return (f"; the run's logps/chosen {policy:.6g} is no candidate's ({', '.join(found)}) under any of the "
                f"renderings {', '.join(RENDERINGS)}, so the harness cannot recompute its reference")
    trained, rendering = match
    also = "" if trained == start else f"; the policy the run trains is {trained}, not {start} (its logps/chosen)"
    used = policy - step_log["rewards/chosen"] / beta
    by_name = {name: values[rendering] for name, values in found.items()}
    nearest = min(by_name, key=lambda name: abs(by_name[name] - used))
    off = abs(by_name[nearest] - used)
    # the recomputation's own error, seen on the policy (the run's batching and kernels against one row at a time),
    # bounds its error on the reference
    noise = max(_SAME_MODEL_RTOL * abs(used), 10 * abs(policy - found[trained][rendering]))
    listed = ", ".join(f"{name} {value:.8g}" for name, value in by_name.items())
    verdict = (f"the reference is {nearest}" if off <= noise else
               f"the reference is none of them (nearest: {nearest}, off by {off:.3g}: another dtype or precision?)")
    return (also + f"; the reference's mean log-prob of the chosen completions was {used:.8g} (logps/chosen - "
            f"rewards/chosen / beta; the run renders a row as {rendering}); recomputed: {listed}: {verdict}")


def _assert_policy_is_start(step_log: Mapping[str, float], step: int, *, start: str, candidates: Mapping[str, Path],
                            dataset_dir: Path) -> None:
    """Rewards of 0 say the reference is the policy; this says the policy is the model the run was given. When the run
    logs ``logps/chosen``, the starting policy, recomputed, gives it under one of :data:`RENDERINGS`; a run whose
    logged log-prob is instead another candidate's (the bare base: a pre-trained adapter dropped or re-initialised at
    load, the reference then dropped with it) trains from the wrong model. A run whose log-prob is no candidate's under
    any rendering (a framework's own template) cannot be recomputed: only its rewards are judged, and a warning says so."""
    if "logps/chosen" not in step_log:
        return
    policy = step_log["logps/chosen"]

    def gives(path: Path) -> bool:
        return any(math.isclose(policy, value, rel_tol=_SAME_TOKENISATION_RTOL)
                   for value in completion_logps(path, dataset_dir).values())

    if gives(candidates[start]):
        return
    trained = next((name for name, path in candidates.items() if name != start and gives(path)), None)
    if trained is None:  # not judged, and said so: the run renders rows in a way the harness does not recompute
        import warnings

        warnings.warn(f"ft-harness: step {step}'s logps/chosen {policy:.8g} is no candidate's ({', '.join(candidates)}) "
                      f"under any of the renderings {', '.join(RENDERINGS)}: whether the run trains from {start} was "
                      f"not judged, only that its reference is its policy", UserWarning, stacklevel=3)
        return
    raise OracleFailure(_SEED, f"step {step} (before any update) logged rewards of 0 and logps/chosen {policy:.8g}, "
                               f"which is {trained}'s ({candidates[trained]}), not {start}'s ({candidates[start]}): "
                               f"the run trains from {trained}, and its reference is that same model, not the "
                               f"policy it was given (a pre-trained adapter dropped or re-initialised at load?)")


def assert_reference_is_start(output_dir: Path, *, start: str, candidates: Mapping[str, Path], dataset_dir: Path,
                              beta: float, method: str = "DPO", atol: float = DPO_REWARD_ATOL) -> None:
    """Before any update the reference is the policy the run starts from: the first logged step's ``rewards/chosen``
    and ``rewards/rejected`` are 0 within ``atol``, and (where the run logs ``logps/chosen`` under a rendering the
    harness can recompute) that policy is the start itself, not another candidate. ``candidates`` names saved models
    the reference could be (the starting policy under the name ``start``, the bare base, ...)."""
    rewards = dpo_rewards_by_step(run_log_history(Path(output_dir)))
    if not rewards:
        raise OracleFailure(_SEED, f"{Path(output_dir).name} logged no {method} rewards: expected 'rewards/chosen' and "
                                  f"'rewards/rejected' at every training step (TRL's keys)")
    step = min(rewards)
    log = rewards[step]
    chosen, rejected = log["rewards/chosen"], log["rewards/rejected"]
    if abs(chosen) <= atol and abs(rejected) <= atol:
        _assert_policy_is_start(log, step, start=start, candidates=candidates, dataset_dir=Path(dataset_dir))
        return
    raise OracleFailure(_SEED, f"step {step} (before any update) logged rewards/chosen {chosen:.6g} and rewards/rejected "
                              f"{rejected:.6g}, expected 0 (|r| <= {atol:g}): the reference model is not the policy the "
                              f"run starts from ({start}: {candidates[start]})"
                              + _diagnosis(log, beta, candidates, start, Path(dataset_dir)))


def reference_logps(log: Mapping[str, float], beta: float) -> tuple[float, float] | None:
    """The reference's mean log-probs of the chosen and rejected completions a logged step used:
    ``logps/<x> - rewards/<x> / beta`` (None when the step logged no policy log-probs)."""
    if "logps/chosen" not in log or "logps/rejected" not in log:
        return None
    return (log["logps/chosen"] - log["rewards/chosen"] / beta, log["logps/rejected"] - log["rewards/rejected"] / beta)


def assert_reference_survives_resume(resumed_dir: Path, uninterrupted_dir: Path, *, resumed_from: int, beta: float,
                                     rtol: float = DPO_RESUME_RTOL, atol: float = DPO_REWARD_ATOL) -> None:
    """After a resume from checkpoint-``resumed_from`` the reference is still the original starting policy. Every step
    trains on the same batch (all the rows), so the reference's log-probs each step used (:func:`reference_logps`)
    are one constant: those of the uninterrupted run's first step, within ``rtol``, at every resumed step. This
    judges the reference alone (a resume that lost the optimizer state moves the policy, not the reference). A
    framework that logs no policy log-probs is judged by its rewards against the uninterrupted run's instead."""
    resumed = dpo_rewards_by_step(run_log_history(Path(resumed_dir)))
    expected = dpo_rewards_by_step(run_log_history(Path(uninterrupted_dir)))
    later = sorted(s for s in expected if s > resumed_from)
    if not later:
        raise OracleFailure(_SEED, f"the uninterrupted run logged no DPO rewards after step {resumed_from}")
    missing = [s for s in later if s not in resumed]
    if missing:
        raise OracleFailure(_SEED, f"the run resumed from checkpoint-{resumed_from} logged no DPO rewards for steps "
                                   f"{missing} (logged: {sorted(resumed)})")
    first = resumed[later[0]]
    retaken = abs(first["rewards/chosen"]) <= atol and abs(first["rewards/rejected"]) <= atol
    start = reference_logps(expected[min(expected)], beta)
    for step in later:
        used = reference_logps(resumed[step], beta)
        if start is not None and used is not None:
            for which, got, want in (("chosen", used[0], start[0]), ("rejected", used[1], start[1])):
                if math.isclose(got, want, rel_tol=rtol):
                    continue
                why = (f"its rewards are 0 at step {later[0]}: the reference is the resumed policy (checkpoint-"
                       f"{resumed_from}'s weights)" if retaken else "the reference changed at the resume")
                raise OracleFailure(_SEED, f"after resuming from checkpoint-{resumed_from}, the reference's mean log-prob "
                                           f"of the {which} completions at step {step} is {got:.8g} (logps/{which} - "
                                           f"rewards/{which} / beta), expected {want:.8g}, the starting policy's (step "
                                           f"{min(expected)} of the uninterrupted run): {why}, not the policy the run "
                                           f"started from")
            continue
        for key in ("rewards/chosen", "rewards/rejected"):  # no logps logged: the rewards must be the uninterrupted run's
            got, want = resumed[step][key], expected[step][key]
            if not math.isclose(got, want, rel_tol=rtol, abs_tol=atol):
                why = (f"its rewards are 0 at step {later[0]}: the reference is the resumed policy" if retaken else
                       "the reference, or the resumed policy, is not the uninterrupted run's (the run logs no "
                       "logps/* to tell them apart)")
                raise OracleFailure(_SEED, f"after resuming from checkpoint-{resumed_from}, {key} at step {step} is "
                                           f"{got:.6g}, expected {want:.6g} as in the uninterrupted run: {why}")


def assert_kl_starts_at_zero(output_dir: Path, *, start: str, method: str = "GRPO", atol: float = GRPO_KL_ATOL) -> None:
    """GRPO with a KL term, or KTO: before any update the reference is the policy the run starts from, so the first
    logged step's ``kl`` (the policy against the reference: on GRPO's sampled completions, on KTO's mismatched
    prompt-completion pairs) is 0 within ``atol``."""
    kls = losses_by_step(run_log_history(Path(output_dir)), "kl")
    if not kls:
        raise OracleFailure(_SEED, f"{Path(output_dir).name} logged no 'kl': a {method} run (GRPO with beta > 0) logs its "
                                   f"KL to the reference model at every step (TRL's key)")
    step = min(kls)
    if abs(kls[step]) > atol:
        raise OracleFailure(_SEED, f"step {step} (before any update) logged kl {kls[step]:.6g}, expected 0 (|kl| <= "
                                   f"{atol:g}): {method}'s reference model is not the policy the run starts from ({start})")


def assert_kl_survives_resume(resumed_dir: Path, uninterrupted_dir: Path, *, resumed_from: int,
                              atol: float = GRPO_KL_ATOL) -> None:
    """GRPO with a KL term, resumed from checkpoint-``resumed_from``: the reference is not re-taken from the resumed
    weights. Such a reference is the policy again, so the first resumed step logs a KL of 0 where the uninterrupted run
    logs one above ``atol``. Only the KL's vanishing is judged, not its value: GRPO logs no log-probs to separate the
    reference from the policy, and a resume that changes the sampled completions or the policy (a lost optimizer state,
    another data order or RNG state: other scenarios' bugs) changes the KL without touching the reference."""
    resumed = losses_by_step(run_log_history(Path(resumed_dir)), "kl")
    expected = losses_by_step(run_log_history(Path(uninterrupted_dir)), "kl")
    later = sorted(s for s in expected if s > resumed_from)
    if not later:
        raise OracleFailure(_SEED, f"the uninterrupted GRPO run logged no 'kl' after step {resumed_from}")
    if later[0] not in resumed:
        raise OracleFailure(_SEED, f"the GRPO run resumed from checkpoint-{resumed_from} logged no 'kl' for step "
                                   f"{later[0]} (logged: {sorted(resumed)})")
    step = later[0]
    if abs(expected[step]) > atol and abs(resumed[step]) <= atol:
        raise OracleFailure(_SEED, f"after resuming GRPO from checkpoint-{resumed_from}, step {step} logged kl "
                                   f"{resumed[step]:.6g}, expected {expected[step]:.6g} as in the uninterrupted run (a "
                                   f"KL above {atol:g}): the reference is the resumed policy (checkpoint-{resumed_from}'s "
                                   f"weights), not the policy the run started from")
