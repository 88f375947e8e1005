"""Runs that must agree: two configurations the same training must not tell apart (gradient accumulation, packing),
and a merged model that must be the trained model (LoRA merge).
"""

from __future__ import annotations

import math
from pathlib import Path

from ..hf import dtype_kwargs, eval_logits
from ..layout import LORA_FILES, run_checkpoint_map, run_log_history, weight_files
from .failure import OracleFailure
from .reading import _max_difference, checkpoint_weights, final_weights, losses_by_step, weights_on_disk
from .saves import assert_self_contained, generation_config_changes


def assert_runs_agree(expected: Path, actual: Path, *, keys: tuple[str, ...], rtol: float, weight_atol: float,
                      what: str, seed: str) -> None:
    """Two runs that must train the same model: every logged ``keys`` value per step within ``rtol``, and
    the weights of every checkpoint both saved (and the final ones) within ``weight_atol`` (max abs)."""
    history_e, history_a = run_log_history(expected), run_log_history(actual)
    for key in keys:
        e, a = losses_by_step(history_e, key), losses_by_step(history_a, key)
        if not e:
            raise OracleFailure(seed, f"{Path(expected).name} logged no {key}: nothing to compare")
        missing = sorted(set(e) - set(a))
        if missing:
            raise OracleFailure(seed, f"{what}: logged no {key} for steps {missing} (logged: {sorted(a)})")
        for step in sorted(e):
            if not math.isclose(a[step], e[step], rel_tol=rtol, abs_tol=1e-12):
                raise OracleFailure(seed, f"{what}: {key} at step {step} is {a[step]!r}, expected {e[step]!r} "
                                          f"(relative difference {abs(a[step] - e[step]) / abs(e[step] or 1):.3g} > "
                                          f"{rtol:g})")
    ckpts_e, ckpts_a = run_checkpoint_map(expected), run_checkpoint_map(actual)
    loads = [(f"checkpoint-{n}", checkpoint_weights, ckpts_e[n], ckpts_a[n])
             for n in sorted(ckpts_e.keys() & ckpts_a.keys())]
    loads.append(("final weights", final_weights, Path(expected), Path(actual)))
    for label, load, where_e, where_a in loads:
        we, wa = load(where_e, seed=seed), load(where_a, seed=seed)
        if set(we) != set(wa):
            raise OracleFailure(seed, f"{what}: {label} hold different tensors: {sorted(set(we) ^ set(wa))[:3]}")
        worst, diff, _ = _max_difference(we, wa, 0.0, 0.0)
        if diff > weight_atol:
            raise OracleFailure(seed, f"{what}: {label}: {worst} differs by {diff:.3g} (> {weight_atol:g})")


def assert_every_lora_b_moved(checkpoint: Path, *, seed: str) -> None:
    """Every LoRA ``B`` matrix in ``checkpoint`` has left its zero initialisation (PEFT's default): one still all zero
    got no gradient, i.e. its layer did not train (a reentrant activation checkpoint whose inputs do not require
    grad passes none to the adapters inside it)."""
    weights = checkpoint_weights(Path(checkpoint), seed=seed)
    b = sorted(name for name in weights if "lora_B" in name)
    if not b:
        raise OracleFailure(seed, f"{Path(checkpoint).name} holds no lora_B tensor: nothing to judge (found "
                                  f"{sorted(weights)[:3]})")
    still = [name for name in b if not bool(weights[name].any())]
    if still:
        raise OracleFailure(seed, f"{Path(checkpoint).name}: {len(still)} of {len(b)} lora_B matrices are still all "
                                  f"zero, as initialised, e.g. {still[0]}: expected every adapter to have trained "
                                  f"(a layer whose adapter gets no gradient)")


def assert_merged_is_trained_model(merged: Path, adapter_dir: Path, dataset_dir: Path, *, quantization: str | None,
                                   atol: float, output: str = "", seed: str = "merge") -> None:
    """A merged LoRA export is the trained model: a self-contained full model (no adapter files, no
    ``lora_`` / ``base_model.model.`` keys) whose logits on the eval set equal those of the model the LoRA
    trained as — the base the adapter names, loaded as in training (``quantization``), plus the adapter —
    within ``atol``. For a quantised training base, where no merge can be faithful to the bit, a merge that
    differs is accepted when the run's ``output`` holds a warning line about the quantisation."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from ..hf import load_causal_lm
    from ..layout import adapter_base

    merged, adapter_dir = Path(merged), Path(adapter_dir)
    leftovers = [n for n in ("adapter_config.json", *LORA_FILES) if (merged / n).is_file()]
    if leftovers:
        raise OracleFailure(seed, f"{merged.name} still holds {leftovers}: a loader takes it for an adapter, not a "
                                  f"merged model")
    if not weight_files(merged):
        raise OracleFailure(seed, f"{merged.name} holds no full-model weights (model.safetensors or an index)")
    keys = [k for k in weights_on_disk(merged, seed=seed) if "lora_" in k or k.startswith("base_model.model.")]
    if keys:
        raise OracleFailure(seed, f"{merged.name} holds adapter tensors after merging, e.g. {keys[0]} "
                                  f"({len(keys)} in all): the LoRA was not merged into the base weights")
    base = adapter_base(adapter_dir)
    assert_self_contained(merged, base, seed=seed, generation_config=False)  # judged after the logits: see below
    trained = PeftModel.from_pretrained(load_causal_lm(base, quantization, "cpu"), str(adapter_dir))
    want = eval_logits(trained, dataset_dir, base)
    got = eval_logits(AutoModelForCausalLM.from_pretrained(str(merged), **dtype_kwargs(), local_files_only=True),
                      dataset_dir, merged)
    diff = (got - want).abs().max().item()
    warned = [line for line in output.splitlines() if "warn" in line.lower() and names_quantization(line, quantization)]
    problems = []
    if diff > atol and not (quantization and warned):  # (a lossy merge of a quantised base is accepted when said)
        on = f"the {quantization} base" if quantization else "the base"
        problems.append(f"{merged.name}: logits on eval.jsonl differ from {on} + the adapter it trained by {diff:.3g} "
                        f"(> atol {atol:g}): the merge changed the model (wrong LoRA scale, wrong base, or a lossy merge "
                        f"of a quantised base" + (", with no warning about the quantisation)" if quantization else ")"))
    # the generation config is judged after the logits, so a merge whose numbers are right is not reported as one
    # whose numbers were never compared (and both are reported when both are wrong)
    from transformers import AutoTokenizer

    changed = generation_config_changes(merged, base, AutoTokenizer.from_pretrained(str(merged), local_files_only=True))
    if changed:
        problems.append(changed + (f" (the logits agree within {diff:.3g})" if diff <= atol else ""))
    if problems:
        raise OracleFailure(seed, "; and ".join(problems))


#: how a message may name each quantisation kind: the kind itself, its bit width, or its library (a refusal or
#: warning saying "an nf4 (bitsandbytes) base" names it as well as one saying "quantised")
QUANTIZATION_NAMES = {
    "nf4": ("nf4", "4bit", "4-bit", "4 bit", "bitsandbytes", "bnb"),
    "int8": ("int8", "8bit", "8-bit", "8 bit", "llm.int8", "bitsandbytes", "bnb"),
    "quanto-int8": ("quanto", "qint8", "int8"),
    "quanto-int4": ("quanto", "qint4", "int4"),
}


def names_quantization(text: str, kind: str | None) -> bool:
    """Whether ``text`` names the quantisation ``kind`` (or quantisation at all: quant-ised/-ized/-ization)."""
    lowered = text.lower()
    return "quant" in lowered or any(name in lowered for name in QUANTIZATION_NAMES.get(kind or "", ()))


def assert_logged_term_present(with_term: Path, without_term: Path, *, key: str = "loss", step: int = 1,
                               min_rtol: float, what: str, seed: str) -> None:
    """A run asked for an extra loss term logs another ``key`` at ``step`` than the same run without it (by more than
    ``min_rtol`` relative): a framework that silently drops the term trains another objective than it was given."""
    a = losses_by_step(run_log_history(with_term), key)
    b = losses_by_step(run_log_history(without_term), key)
    if step not in a or step not in b:
        raise OracleFailure(seed, f"{what}: no {key} logged at step {step} (logged: {sorted(a)} and {sorted(b)})")
    if abs(a[step] - b[step]) <= min_rtol * abs(b[step]):
        raise OracleFailure(seed, f"{what}: {key} at step {step} is {a[step]!r} with the term and {b[step]!r} without "
                                  f"it (relative difference {abs(a[step] - b[step]) / abs(b[step] or 1):.3g} <= "
                                  f"{min_rtol:g}): expected the term in the loss (it was not trained)")
