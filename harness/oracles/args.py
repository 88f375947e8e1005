"""Seed 000 end to end: the values the command line gave are the values the run trained with, judged on the saved
weights (the first step's size, LoRA ranks and modules), the logged history and the saved argument files.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ..layout import run_checkpoint_map, run_log_history
from .failure import OracleFailure
from .reading import _lora_tensors


#: Adam's first update moves each zero-initialised lora_B entry by lr * g / (|g| + eps), so the median |lora_B| of
#: checkpoint-1 is the learning rate the run trained with. Measured on the reference (lr 1e-3, 3e-4, 2e-5): median
#: 0.999987 * lr (the residue is eps over the smallest gradients), every entry within 0.31 %; bound 1e-3 relative.
FIRST_STEP_RTOL = 1e-3


def _recorded_as(found: Any, want: Any) -> bool:
    """A value a framework wrote to a JSON record equals the one meant: equal, or the same number (``16`` for ``16.0``,
    a float that went through another formatting)."""
    if found == want:
        return True
    numbers = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (found, want))
    return numbers and math.isclose(float(found), float(want))


def assert_lora_trained_as_asked(directory: Path, *, r: int, alpha: float, target_modules: Iterable[str],
                                 seed: str = "000") -> None:
    """A LoRA save holds rank-``r`` matrices on exactly ``target_modules`` (the tensors), and its adapter_config.json
    (what a reload uses) says the same rank, the same ``lora_alpha`` and the same modules."""
    directory = Path(directory)
    tensors = _lora_tensors(directory)
    if tensors is None or not (directory / "adapter_config.json").is_file():
        raise OracleFailure(seed, f"{directory.name}: expected a LoRA adapter (adapter_config.json and its tensors), "
                                  f"found {sorted(p.name for p in directory.iterdir())}")
    want_modules = set(target_modules)
    ranks = {k: tuple(v.shape)[0] for k, v in tensors.items() if ".lora_A." in k}
    wrong_rank = {k: n for k, n in ranks.items() if n != r}
    if wrong_rank:
        key, n = next(iter(sorted(wrong_rank.items())))
        raise OracleFailure(seed, f"{directory.name}: the command line said lora_rank={r}, but the saved LoRA matrices "
                                  f"have rank {n} ({key} and {len(wrong_rank) - 1} more): the run trained another rank")
    trained = {k.split(".lora_A.")[0].rsplit(".", 1)[-1] for k in ranks}
    if trained != want_modules:
        raise OracleFailure(seed, f"{directory.name}: the command line said target_modules={sorted(want_modules)}, "
                                  f"but LoRA matrices were saved for {sorted(trained)}")
    config = json.loads((directory / "adapter_config.json").read_text(encoding="utf-8"))
    saved_modules = config.get("target_modules")
    saved_modules = {saved_modules} if isinstance(saved_modules, str) else set(saved_modules or ())
    found = {"r": config.get("r"), "lora_alpha": config.get("lora_alpha"), "target_modules": sorted(saved_modules)}
    want = {"r": r, "lora_alpha": alpha, "target_modules": sorted(want_modules)}
    wrong = {k: (want[k], found[k]) for k in want if not _recorded_as(found[k], want[k])}
    if wrong:
        raise OracleFailure(seed, f"{directory.name}/adapter_config.json: " + "; ".join(
            f"{k} is {got!r}, the run trained with {exp!r}" for k, (exp, got) in wrong.items())
            + ": a reload of this adapter is not the trained model")


def assert_first_step_size(checkpoint: Path, learning_rate: float, *, rtol: float = FIRST_STEP_RTOL,
                           seed: str = "000") -> None:
    """``checkpoint`` is a LoRA run's checkpoint-1 (PEFT's zero-initialised lora_B, AdamW, no warm-up): Adam's first
    step moves every lora_B entry by the learning rate, so the median |lora_B| is the learning rate it trained with."""
    import torch

    lora_b = [v.float().flatten().abs() for k, v in (_lora_tensors(Path(checkpoint)) or {}).items() if ".lora_B." in k]
    entries = torch.cat(lora_b) if lora_b else torch.zeros(0)
    moved = entries[entries > 0]
    if not moved.numel():
        raise OracleFailure(seed, f"{Path(checkpoint).name}: no trained lora_B entries, so the first optimizer step "
                                  f"did not reach the adapter")
    step = moved.median().item()
    if not math.isclose(step, learning_rate, rel_tol=rtol):
        raise OracleFailure(seed, f"{Path(checkpoint).name}: the first optimizer step moved lora_B by {step:.6g} "
                                  f"(median), so the run trained with learning rate ~{step:.3g}; the command line said "
                                  f"{learning_rate:g} (rtol {rtol:g})")


def assert_log_matches_cli(output_dir: Path, max_steps: int, learning_rate: float, *, seed: str = "000") -> None:
    """A run saving every step at a constant learning rate ran exactly ``max_steps`` optimizer steps (checkpoint-1 ..
    checkpoint-<max_steps> on disk, none beyond, losses logged up to that step) and logged ``learning_rate`` at every
    step (the log agrees with the run; the weights are judged by :func:`assert_first_step_size`)."""
    output_dir = Path(output_dir)
    steps = list(run_checkpoint_map(output_dir))
    history = run_log_history(output_dir)
    logged = sorted({int(e["step"]) for e in history if "loss" in e and "step" in e})
    if not steps or steps[-1] != max_steps or (logged and logged[-1] != max_steps):
        raise OracleFailure(seed, f"{output_dir.name}: the command line said max_steps={max_steps}; found checkpoints "
                                  f"{steps} and training losses logged up to step {logged[-1] if logged else None}")
    rates = {int(e["step"]): e["learning_rate"] for e in history if "learning_rate" in e and "step" in e}
    wrong = {k: v for k, v in rates.items() if not math.isclose(float(v), learning_rate, rel_tol=1e-6)}
    if wrong:
        raise OracleFailure(seed, f"{output_dir.name}: logged learning_rate {wrong} (step: value), the command line said "
                                  f"{learning_rate:g} with a constant schedule")


def assert_saved_args_match(directory: Path, expected: Mapping[str, Any], *, seed: str = "000") -> None:
    """The framework's own saved ``args.json`` (keys in its own names) records the values the run used."""
    path = Path(directory) / "args.json"
    saved = json.loads(path.read_text(encoding="utf-8"))
    wrong = {k: (v, saved.get(k, "<missing>")) for k, v in expected.items() if not _recorded_as(saved.get(k), v)}
    if wrong:
        raise OracleFailure(seed, f"{path}: " + "; ".join(f"{k} recorded as {got!r}, the run used {want!r}"
                                                         for k, (want, got) in wrong.items())
                            + ": the saved record is not the run (a later run that inherits it trains differently)")


def assert_lora_reaches_experts(adapter_dir: Path, *, seed: str = "moe") -> None:
    """A LoRA trained on a mixture of experts reached every expert and the router: merged into its base as a user serving
    it merges (PEFT ``merge_and_unload`` of the saved adapter, compared with the base as transformers loads it, experts
    fused), every expert's slice of each fused 3-D expert parameter
    and every router (``mlp.gate.weight``) differs from the base's, and ``adapter_config.json`` (what a reload uses)
    names each of them among its ``target_modules`` / ``target_parameters``. An adapter that adapted attention only
    leaves the experts the base's while the run reports LoRA on them (huggingface/peft #3009, unslothai/unsloth PR
    #6936: "LoRA attached to attention only and left every expert frozen")."""
    import torch
    from transformers import AutoModelForCausalLM

    from ..hf import dtype_kwargs
    from ..layout import adapter_base
    from .reading import start_weights

    adapter_dir = Path(adapter_dir)
    # both as loaded (transformers 5 fuses the experts it saves per expert, ``experts.<i>.down_proj.weight``)
    base = AutoModelForCausalLM.from_pretrained(str(adapter_base(adapter_dir)), **dtype_kwargs(),
                                                local_files_only=True).state_dict()
    experts = sorted(n for n, t in base.items() if ".experts." in n and t.dim() == 3)
    routers = sorted(n for n in base if n.endswith("mlp.gate.weight"))
    if not experts:
        raise ValueError(f"{adapter_base(adapter_dir)} holds no fused 3-D expert parameter: not a mixture of experts")
    merged = start_weights(adapter_dir, seed=seed)
    untouched = [f"{n} expert {e}" for n in experts for e in range(base[n].shape[0])
                 if torch.equal(merged[n][e].to(base[n].dtype), base[n][e])]
    untouched += [n for n in routers if torch.equal(merged[n].to(base[n].dtype), base[n])]
    total = sum(base[n].shape[0] for n in experts) + len(routers)
    if untouched:
        raise OracleFailure(seed, f"{adapter_dir.name}: merged into its base, {len(untouched)} of {total} expert weights "
                                  f"(one per expert and projection) and routers are still the base's, e.g. "
                                  f"{untouched[0]}: expected the LoRA to have trained every expert and the router (it "
                                  f"never reached them)")
    config = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    named = set()
    for key in ("target_modules", "target_parameters"):
        value = config.get(key) or ()
        named |= {value} if isinstance(value, str) else set(value)
    unnamed = [n for n in experts + routers if not any(n == t or n.endswith("." + t) for t in named)]
    if unnamed:
        raise OracleFailure(seed, f"{adapter_dir.name}/adapter_config.json names {sorted(named)} in target_modules / "
                                  f"target_parameters, not {unnamed[0]} ({len(unnamed)} tensors): a reload of the "
                                  f"adapter does not put the trained expert LoRA back")
