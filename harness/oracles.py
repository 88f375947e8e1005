"""Oracles: framework-agnostic checks that judge what a run left on disk.

Each oracle reads files (safetensors headers and tensors, config.json, adapter_config.json,
trainer_state.json), re-loads or re-evaluates where needed, and raises :class:`OracleFailure` (an
``AssertionError``) whose message names the seed, what was expected and what was found. None of
them trusts an adapter's own claims about what it did.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from .hf import dtype_kwargs, eval_logits
from .layout import (LORA_FILES, list_checkpoints, lora_dir, read_log_history, read_safetensors_header, step_of,
                     weight_files)

__all__ = [
    "OracleFailure",
    "SEEDS",
    "read_log_history",
    "losses_by_step",
    "weights_on_disk",
    "start_weights",
    "assert_full_model_saved",
    "assert_adapter_only_save",
    "assert_self_contained",
    "assert_lora_base_is",
    "assert_lora_trained_as_asked",
    "assert_first_step_size",
    "assert_log_matches_cli",
    "assert_saved_args_match",
    "FIRST_STEP_RTOL",
    "assert_resume_equivalent",
    "assert_resumed_not_restarted",
    "assert_follows_checkpoint",
    "assert_resumed_into_new_dir",
    "assert_consumed_in_order",
    "assert_missing_state_reported",
    "final_weights",
    "assert_runs_agree",
    "assert_merged_is_trained_model",
    "checkpoints_fingerprint",
    "assert_diffusion_lora_reloads",
    "assert_best_checkpoint_kept",
    "assert_saves_reproduce_log",
    "assert_evaluated_at",
    "Evaluator",
    "EVAL_RTOL",
    "EVAL_RTOL_CUDA",
    "logged_metrics",
    "best_logged_step",
    "dir_fingerprint",
    "assert_batches_teach_assistant",
    "training_sample_of",
    "assert_saved_format",
    "assert_embeddings_saved",
]

#: seed id -> one-line title used in failure messages and reports
SEEDS = {
    "000": "args-precedence: a saved args.json must never beat the command line",
    "001": "grpo-full-save: a full-parameter run must save the whole model",
    "002": "quantized-lora-resume: LoRA on a quantised base must resume exactly",
    "003": "full-ft-as-lora-base: every full fine-tune checkpoint must be a self-contained model",
    "004": "best-checkpoint: the best evaluated step must be on disk",
    "crash": "crash-during-save: a killed save must never lose the previous checkpoint",
    "pickle": "hostile-checkpoint: loading a checkpoint must never unpickle arbitrary code",
    "dist": "distributed-save: a sharded full-parameter run must save the whole model",
    "resume": "resume-equivalence: an interrupted-and-resumed run must be the run it continues",
    "ga": "grad-accumulation: k micro-batches must train exactly like one batch k times larger",
    "merge": "lora-merge: the merged model must be the trained model",
    "packing": "packing: packed samples must train exactly as if run alone",
    "labels": "label-masking: every training sample must teach its assistant turns, through their end, and nothing else",
    "template": "saved-template: every saved tokenizer must encode a chat exactly as training did, and stop where it ends",
    "embeddings": "embeddings-saved: tied and resized embeddings must be saved as trained and reload to the logged eval",
}


class OracleFailure(AssertionError):
    """A documented failure was observed on disk."""

    def __init__(self, seed: str, message: str):
        self.seed = seed
        super().__init__(f"[seed {seed}: {SEEDS.get(seed, seed)}] {message}")


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 10_000 else f"{n} B"


# --------------------------------------------------------------------------- reading
def _present_weight_files(directory: Path, seed: str) -> list[Path]:
    """The weight files of a full-model directory; a shard its index lists but the disk lacks is a verdict
    (a truncated save), not a harness error."""
    files = weight_files(directory)
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise OracleFailure(seed, f"{Path(directory).name}: model.safetensors.index.json lists {len(files)} shards, "
                                  f"{len(files) - len(missing)} on disk (missing {missing[:3]}): a truncated save")
    return files


def _header_and_bytes(directory: Path, seed: str = "001") -> tuple[dict[str, dict[str, Any]], int]:
    headers: dict[str, dict[str, Any]] = {}
    data_bytes = 0
    for f in _present_weight_files(directory, seed):
        headers.update(read_safetensors_header(f))
        with open(f, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
        data_bytes += f.stat().st_size - 8 - n
    return headers, data_bytes


_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
                "F8_E4M3": 1, "F8_E5M2": 1}


def _tensor_bytes(meta: Mapping[str, Any]) -> int:
    return math.prod(meta["shape"]) * _DTYPE_BYTES.get(meta["dtype"], 4)


def weights_on_disk(directory: Path, *, seed: str = "001") -> dict[str, Any]:
    """All tensors of a full-model directory (single file or sharded index) via safetensors."""
    from safetensors.torch import load_file

    out: dict[str, Any] = {}
    for f in _present_weight_files(directory, seed):
        out.update(load_file(str(f)))
    return out


def start_weights(model_dir: Path) -> dict[str, Any]:
    """The weights a run starting from ``model_dir`` starts with (an adapter dir is merged into its base)."""
    model_dir = Path(model_dir)
    if not (model_dir / "adapter_config.json").is_file():
        return weights_on_disk(model_dir)
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    cfg = json.loads((model_dir / "adapter_config.json").read_text(encoding="utf-8"))
    base = AutoModelForCausalLM.from_pretrained(cfg["base_model_name_or_path"], **dtype_kwargs(),
                                                local_files_only=True)
    merged = PeftModel.from_pretrained(base, str(model_dir)).merge_and_unload()
    return {k: v.detach().clone() for k, v in merged.state_dict().items()}


def losses_by_step(history: Iterable[Mapping[str, Any]], key: str = "loss") -> dict[int, float]:
    return {int(h["step"]): float(h[key]) for h in history if key in h and "step" in h}


def dir_fingerprint(directory: Path) -> dict[str, str]:
    """sha256 of every file under ``directory`` (to prove a base model was left untouched)."""
    directory = Path(directory)
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------- seed 001
def assert_full_model_saved(directory: Path, reference_dir: Path, start: Mapping[str, Any] | None = None,
                            *, seed: str = "001") -> None:
    """``directory`` holds the whole model: every tensor of ``reference_dir`` with its shape, the
    expected bytes, no adapter files standing in for it, and (given ``start``) trained weights."""
    directory, name = Path(directory), Path(directory).name
    expected, _ = _header_and_bytes(reference_dir)
    ref_cfg = json.loads((Path(reference_dir) / "config.json").read_text(encoding="utf-8"))
    tied = bool(ref_cfg.get("tie_word_embeddings"))
    adapter_files = [f for f in ("adapter_config.json", "adapter_model.safetensors") if (directory / f).exists()]
    found, data_bytes = _header_and_bytes(directory, seed)
    exp_bytes = sum(_tensor_bytes(m) for m in expected.values())
    if not found:
        what = f"only {adapter_files}" if adapter_files else "no model.safetensors"
        raise OracleFailure(seed, f"{name} holds 0 of {len(expected)} model tensors ({what}, "
                                  f"{_mb(sum(p.stat().st_size for p in directory.iterdir() if p.is_file()))} on disk "
                                  f"vs {_mb(exp_bytes)} expected): looks like an adapter-only save")
    missing = sorted(set(expected) - set(found))
    if tied:
        missing = [k for k in missing if k != "lm_head.weight"]
    if missing:
        kept = len(set(expected) & set(found))
        got = sum(_tensor_bytes(found[k]) for k in found if k in expected)
        raise OracleFailure(seed, f"{name} holds {kept} of {len(expected)} tensors ({_mb(got)} of {_mb(exp_bytes)}): "
                                  f"missing e.g. {missing[:3]}; looks like a truncated save (adapter-only or one "
                                  f"rank's shard)")
    bad_shapes = [(k, found[k]["shape"], expected[k]["shape"]) for k in expected
                  if k in found and tuple(found[k]["shape"]) != tuple(expected[k]["shape"])]
    if bad_shapes:
        k, got, want = bad_shapes[0]
        raise OracleFailure(seed, f"{name}: {len(bad_shapes)} tensors have the wrong shape, e.g. {k} is {got}, "
                                  f"expected {want} (a rank-local shard?)")
    bad_dtypes = [(k, found[k]["dtype"], expected[k]["dtype"]) for k in expected
                  if k in found and found[k]["dtype"] != expected[k]["dtype"]]
    if bad_dtypes:
        k, got, want = bad_dtypes[0]
        raise OracleFailure(seed, f"{name}: {len(bad_dtypes)} tensors are saved in another dtype than the model trained "
                                  f"in, e.g. {k} is {got}, expected {want} (the base's): the saved model is a rounded "
                                  f"copy of the trained one")
    want_bytes = sum(_tensor_bytes(found[k]) for k in found)
    if data_bytes != want_bytes:
        raise OracleFailure(seed, f"{name}: safetensors data is {_mb(data_bytes)} but its tensors need "
                                  f"{_mb(want_bytes)}: the file is truncated or padded")
    lora_keys = [k for k in found if "lora_" in k]
    if adapter_files or lora_keys:
        raise OracleFailure(seed, f"{name} is a full-parameter checkpoint but also holds adapter files "
                                  f"{adapter_files or lora_keys[:2]}: loaders will treat it as a LoRA adapter")
    if start is not None:
        import torch

        saved = weights_on_disk(directory, seed=seed)
        matrices = [k for k in expected if k in start and ".layers." in k and k.endswith("proj.weight")]
        unchanged = [k for k in matrices if torch.equal(saved[k].to(start[k].dtype), start[k])]
        if unchanged:
            raise OracleFailure(seed, f"{name}: {len(unchanged)} of {len(matrices)} transformer weight matrices are "
                                      f"identical to the starting weights (e.g. {unchanged[0]}): they were not trained "
                                      f"although the run was full-parameter")


def assert_adapter_only_save(directory: Path, *, seed: str = "000") -> None:
    """A LoRA run saved an adapter, and nothing but LoRA tensors."""
    directory = Path(directory)
    if not (directory / "adapter_config.json").is_file():
        found = sorted(p.name for p in directory.iterdir())
        raise OracleFailure(seed, f"{directory.name}: expected a LoRA adapter (adapter_config.json) because the "
                                  f"command line said train_type=lora, found {found}: the run trained something else")
    header = read_safetensors_header(directory / "adapter_model.safetensors")
    non_lora = sorted(k for k in header if "lora_" not in k)
    if non_lora or weight_files(directory):
        raise OracleFailure(seed, f"{directory.name}: a LoRA run saved non-LoRA weights "
                                  f"({non_lora[:3] or 'model.safetensors'}): full parameters were trained")
    if not header:
        raise OracleFailure(seed, f"{directory.name}: adapter_model.safetensors holds no tensors")


# --------------------------------------------------------------------------- seed 003
REQUIRED_MODEL_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json")


def assert_self_contained(directory: Path, base_dir: Path, *, sample_text: str = "w1 w2 w3 w4",
                          seed: str = "003") -> None:
    """Copy ``directory`` alone to a fresh place and load model + tokenizer from it, offline.

    The loaded weights must equal the files (nothing silently re-initialised) and differ from
    ``base_dir`` (the fine-tuned weights, not the original base); the tokenizer must round-trip text.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory = Path(directory)
    missing = [f for f in REQUIRED_MODEL_FILES if not (directory / f).is_file()]
    if not weight_files(directory):
        missing.append("model.safetensors")
    else:
        _present_weight_files(directory, seed)
    if missing:
        raise OracleFailure(seed, f"{directory.name} is not a self-contained model: missing {missing}; using it as "
                                  f"model_name_or_path fails with \"does not appear to have a file named "
                                  f"{missing[0]}\"")
    with tempfile.TemporaryDirectory(prefix="ft-harness-alone-") as tmp:
        alone = Path(tmp) / directory.name
        shutil.copytree(directory, alone)
        try:
            model = AutoModelForCausalLM.from_pretrained(str(alone), local_files_only=True, **dtype_kwargs())
            tok = AutoTokenizer.from_pretrained(str(alone), local_files_only=True)
        except Exception as exc:  # the framework-agnostic verdict: it does not load on its own
            raise OracleFailure(seed, f"{directory.name} does not load on its own: {type(exc).__name__}: {exc}") from exc
        on_disk = weights_on_disk(alone, seed=seed)
        state = model.state_dict()
        for key, tensor in on_disk.items():
            if key in state and not torch.equal(state[key], tensor.to(state[key].dtype)):
                raise OracleFailure(seed, f"{directory.name}: loaded {key} differs from the file")
        tied = bool(json.loads((directory / "config.json").read_text(encoding="utf-8")).get("tie_word_embeddings"))
        not_loaded = sorted(set(state) - set(on_disk) - ({"lm_head.weight"} if tied else set()))
        if not_loaded:
            raise OracleFailure(seed, f"{directory.name}: {len(not_loaded)} parameters are not in the files and were "
                                      f"randomly initialised on load, e.g. {not_loaded[0]}")
        base = weights_on_disk(base_dir)
        _assert_generation_config_kept(directory, base_dir, seed)
        if all(torch.equal(on_disk[k], base[k]) for k in on_disk if k in base):
            raise OracleFailure(seed, f"{directory.name}: weights are identical to the original base {base_dir}: "
                                      f"the fine-tuned weights were not saved")
        ids = tok(sample_text, add_special_tokens=False)["input_ids"]
        back = tok.decode(ids)
        if back.split() != sample_text.split():
            raise OracleFailure(seed, f"{directory.name}: tokenizer does not round-trip {sample_text!r} (got {back!r})")


def _assert_generation_config_kept(directory: Path, base_dir: Path, seed: str) -> None:
    """``generation_config.json`` says how the model generates (EOS, sampling); a fine-tune that did not ask to change
    it saves the base's (transformers_version aside)."""
    def read(d: Path) -> dict[str, Any]:
        f = Path(d) / "generation_config.json"
        data = json.loads(f.read_text(encoding="utf-8")) if f.is_file() else {}
        return {k: v for k, v in data.items() if k != "transformers_version"}

    got, want = read(directory), read(base_dir)
    if want and got != want:
        changed = sorted(k for k in set(got) | set(want) if got.get(k) != want.get(k))
        raise OracleFailure(seed, f"{Path(directory).name}/generation_config.json differs from the base's in "
                                  f"{changed[:4]} (e.g. {changed[0]}: {got.get(changed[0])!r}, base "
                                  f"{want.get(changed[0])!r}) although the run did not ask to change it")


def assert_lora_base_is(adapter_dir: Path, expected_base: Path, *, seed: str = "003") -> None:
    """A LoRA output's base (adapter_config.json) holds exactly ``expected_base``'s weights."""
    import torch

    adapter_dir = Path(adapter_dir)
    cfg_path = adapter_dir / "adapter_config.json"
    if not cfg_path.is_file():
        raise OracleFailure(seed, f"{adapter_dir.name}: no adapter_config.json, so LoRA training on "
                                  f"{Path(expected_base).name} did not produce an adapter")
    base = json.loads(cfg_path.read_text(encoding="utf-8")).get("base_model_name_or_path")
    if not base or not Path(base).is_dir():
        raise OracleFailure(seed, f"{adapter_dir.name}: adapter_config.json names base {base!r}, which is not a "
                                  f"directory on disk")
    got, want = weights_on_disk(Path(base), seed=seed), weights_on_disk(Path(expected_base), seed=seed)
    differing = sorted(k for k in want if k not in got or not torch.equal(got[k], want[k]))
    if differing:
        raise OracleFailure(seed, f"{adapter_dir.name}: LoRA was trained on {base}, whose weights differ from the "
                                  f"requested base {expected_base} in {len(differing)} tensors (e.g. {differing[0]}): "
                                  f"it did not start from the fine-tuned checkpoint")


# --------------------------------------------------------------------------- seed 000, end to end
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
    steps = sorted(step_of(c) for c in list_checkpoints(output_dir))
    history = read_log_history(output_dir)
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


# --------------------------------------------------------------------------- seed 002
def _lora_tensors(directory: Path) -> dict[str, Any] | None:
    """The LoRA tensors a directory holds (PEFT's or diffusers' file), or None."""
    from safetensors.torch import load_file

    for name in LORA_FILES:
        if (Path(directory) / name).is_file():
            return load_file(str(Path(directory) / name))
    return None


def _adapter_tensors(directory: Path) -> dict[str, Any]:
    tensors = _lora_tensors(directory)
    if tensors is None:
        raise OracleFailure("002", f"{Path(directory).name}: none of {LORA_FILES} (LoRA weights not saved)")
    return tensors


def assert_diffusion_lora_reloads(model_dir: Path, dir_a: Path, dir_b: Path, quantization: str | None, *,
                                  rtol: float = 0.0, atol: float = 0.0, device: str = "cpu",
                                  seed: str = "002") -> None:
    """Both saved LoRAs reload into a fresh (quantised) UNet through SimpleTuner's call chain, every
    tensor equal to its file, and the two reloaded denoisers give the same output."""
    import torch

    from .diffusion import add_lora, load_lora_like_simpletuner, load_unet, lora_layout, probe_output

    outputs = []
    for directory in (dir_a, dir_b):
        directory = lora_dir(Path(directory))
        targets, rank = lora_layout(directory)
        unet = load_unet(Path(model_dir), quantization, device)
        add_lora(unet, rank, 8.0, seed=0, targets=targets)
        try:
            load_lora_like_simpletuner(unet, Path(directory))
        except Exception as exc:
            raise OracleFailure(seed, f"reloading the LoRA in {Path(directory).name} into a fresh {quantization or 'fp32'} "
                                      f"UNet (lora_state_dict -> set_peft_model_state_dict, as SimpleTuner resumes) "
                                      f"failed: {type(exc).__name__}: {exc}") from exc
        _assert_unet_lora_equals_file(unet, directory, quantization, seed)
        outputs.append(probe_output(unet, device))
    if not torch.allclose(outputs[0], outputs[1], rtol=rtol, atol=atol):
        diff = (outputs[0] - outputs[1]).abs().max().item()
        raise OracleFailure(seed, f"the resumed run's LoRA gives a different denoiser output than the uninterrupted "
                                  f"run's (max diff {diff:.3g})")


def _assert_unet_lora_equals_file(unet, directory: Path, quantization: str | None, seed: str) -> None:
    """Every LoRA parameter of the reloaded UNet equals the saved tensor of the same name (diffusers' or
    PEFT's key format, compared in PEFT's): nothing was skipped or re-initialised on load."""
    import torch
    from diffusers.utils import convert_unet_state_dict_to_peft
    from peft.utils import get_peft_model_state_dict

    saved = _adapter_tensors(directory)
    saved = convert_unet_state_dict_to_peft({k.replace("unet.", "", 1): v for k, v in saved.items()})
    have = get_peft_model_state_dict(unet)
    if set(have) != set(saved):
        raise OracleFailure(seed, f"{Path(directory).name}: after reloading into a fresh {quantization or 'fp32'} UNet "
                                  f"the LoRA keys differ from the file: {sorted(set(have) ^ set(saved))[:3]}")
    bad = [k for k in saved if not torch.equal(have[k].detach().cpu(), saved[k].to(have[k].dtype))]
    if bad:
        raise OracleFailure(seed, f"{Path(directory).name}: {len(bad)} LoRA tensors differ from the file after "
                                  f"reloading into a fresh {quantization or 'fp32'} UNet, e.g. {bad[0]}: they were "
                                  f"not loaded (re-initialised or skipped)")


def final_weights(output_dir: Path, *, seed: str = "resume") -> dict[str, Any]:
    """What a run ended with: its LoRA tensors (final output, else newest checkpoint), or the full model's."""
    output_dir = Path(output_dir)
    lora = _lora_tensors(lora_dir(output_dir))
    if lora is not None:
        return lora
    if weight_files(output_dir):
        return weights_on_disk(output_dir, seed=seed)
    ckpts = list_checkpoints(output_dir)
    if ckpts and weight_files(ckpts[-1]):
        return weights_on_disk(ckpts[-1], seed=seed)
    raise OracleFailure(seed, f"{output_dir.name}: no weights on disk (neither {LORA_FILES} nor a full model)")


def checkpoint_weights(checkpoint: Path, *, seed: str = "resume") -> dict[str, Any]:
    """The LoRA tensors of a checkpoint, or its full model."""
    lora = _lora_tensors(checkpoint)
    return lora if lora is not None else weights_on_disk(checkpoint, seed=seed)


def trained_weights(output_dir: Path, *, seed: str = "resume") -> dict[str, Any]:
    """The state the run trained to: its newest checkpoint's weights (a final save may be a best checkpoint
    reloaded by ``load_best_model_at_end``, even one before a resume point), else its final weights."""
    ckpts = list_checkpoints(output_dir)
    return checkpoint_weights(ckpts[-1], seed=seed) if ckpts else final_weights(output_dir, seed=seed)


def _max_difference(a: Mapping[str, Any], b: Mapping[str, Any], rtol: float, atol: float
                    ) -> tuple[str | None, float, bool]:
    """(worst key, its max abs difference, all within tolerance) over tensors of equal names and shapes."""
    import torch

    worst, worst_diff, close = None, 0.0, True
    for key in sorted(a):
        x, y = a[key].float(), b[key].float()
        diff = (x - y).abs().max().item() if x.numel() else 0.0
        if diff > worst_diff:
            worst, worst_diff = key, diff
        if not torch.allclose(x, y, rtol=rtol, atol=atol):
            close = False
    return worst, worst_diff, close


def assert_resume_equivalent(uninterrupted: Path, resumed: Path, resumed_from_step: int, *,
                             rtol: float = 0.0, atol: float = 0.0, keys: tuple[str, ...] = ("loss",),
                             seed: str = "002") -> None:
    """Run B (resumed from ``checkpoint-k``) must reproduce run A's logged ``keys`` (loss; the learning rate
    too where the schedule matters) for every step k+1..N, and end with the same weights (LoRA tensors, or
    the full model). ``rtol``/``atol`` default to exact: CPU runs are bit-identical."""
    k = resumed_from_step
    history_a, history_b = read_log_history(uninterrupted), read_log_history(resumed)
    for key in keys:
        a, b = losses_by_step(history_a, key), losses_by_step(history_b, key)
        want = {s: v for s, v in a.items() if s > k}
        if not want:
            raise OracleFailure(seed, f"uninterrupted run logged no {key} after step {k}; nothing to compare")
        missing = sorted(set(want) - set(b))
        if missing:
            raise OracleFailure(seed, f"resumed run logged no {key} for steps {missing} (logged steps: "
                                      f"{sorted(b)}): it did not continue from step {k} to step {max(want)}")
        for step in sorted(want):
            if not math.isclose(b[step], want[step], rel_tol=rtol, abs_tol=atol):
                what = ("the LR schedule was not restored (it restarted or moved)" if key == "learning_rate" else
                        "resume did not restore the weights, optimizer, scheduler, RNG or data position")
                raise OracleFailure(seed, f"resumed from checkpoint-{k}: {key} at step {step} is {b[step]!r}, the "
                                          f"uninterrupted run had {want[step]!r} (rtol={rtol}, atol={atol}): {what}")
    ta, tb = final_weights(uninterrupted, seed=seed), final_weights(resumed, seed=seed)
    if set(ta) != set(tb):
        raise OracleFailure(seed, f"final weights hold different tensors: {sorted(set(ta) ^ set(tb))[:3]}")
    worst, diff, close = _max_difference(ta, tb, rtol, atol)
    if not close:
        raise OracleFailure(seed, f"final tensor {worst} differs from the uninterrupted run by {diff:.3g} "
                                  f"(rtol={rtol}, atol={atol})")


# --------------------------------------------------------------------------- resume is a resume
def stat_fingerprint(directory: Path) -> dict[str, tuple[int, int, int]]:
    """(inode, size, mtime_ns) of every file under ``directory``: a rewrite changes it even when the
    bytes come out the same (a deterministic restart rewrites identical checkpoints)."""
    directory = Path(directory)
    out = {}
    for path in sorted(directory.rglob("*")):
        if path.is_file():
            st = path.stat()
            out[str(path.relative_to(directory))] = (st.st_ino, st.st_size, st.st_mtime_ns)
    return out


def checkpoints_fingerprint(output_dir: Path, up_to_step: int) -> dict[str, Any]:
    """:func:`stat_fingerprint` of every ``checkpoint-N`` with N <= ``up_to_step``."""
    return {c.name: stat_fingerprint(c) for c in list_checkpoints(output_dir) if step_of(c) <= up_to_step}


def assert_resumed_not_restarted(output_dir: Path, k: int, max_steps: int, before: Mapping[str, Any], *,
                                 save_steps: int = 1, seed: str = "resume") -> None:
    """The run resumed in ``output_dir`` from checkpoint-k continued it: checkpoints <= k are untouched (a
    restart rewrites them), every save step after k has its checkpoint, up to ``max_steps``, each step
    is logged once, and the final weights differ from checkpoint-k's (it trained)."""
    after = checkpoints_fingerprint(output_dir, k)
    if after != before:
        changed = sorted(name for name in set(before) | set(after) if before.get(name) != after.get(name))
        raise OracleFailure(seed, f"resuming from checkpoint-{k} rewrote or removed {changed}: the run trained "
                                  f"steps <= {k} again instead of continuing")
    have = {step_of(c) for c in list_checkpoints(output_dir)}
    want = {s for s in range(k + 1, max_steps + 1) if s % save_steps == 0}
    if want - have:
        raise OracleFailure(seed, f"resumed from checkpoint-{k}, the run left no checkpoint for steps "
                                  f"{sorted(want - have)} (on disk: {sorted(have)}): it did not reach max_steps="
                                  f"{max_steps}")
    steps = [int(h["step"]) for h in read_log_history(output_dir) if "loss" in h]
    twice = sorted({s for s in steps if steps.count(s) > 1})
    if twice:
        raise OracleFailure(seed, f"steps {twice} are logged more than once after resuming from checkpoint-{k}: "
                                  f"they were trained again")
    ckpt = Path(output_dir) / f"checkpoint-{k}"
    _, diff, _ = _max_difference(checkpoint_weights(ckpt, seed=seed), trained_weights(output_dir, seed=seed), 0, 0)
    if diff == 0.0:
        raise OracleFailure(seed, f"{list_checkpoints(output_dir)[-1].name}'s weights equal checkpoint-{k}'s: the "
                                  f"resumed run did not train")


def assert_resumed_into_new_dir(output_dir: Path, k: int, *, seed: str = "002") -> None:
    """A run resumed from checkpoint-k into a new ``output_dir`` saves only steps after k: a
    ``checkpoint-N`` with N <= k there was trained again from step 0."""
    again = [c.name for c in list_checkpoints(output_dir) if step_of(c) <= k]
    if again:
        raise OracleFailure(seed, f"resumed from checkpoint-{k} into {Path(output_dir).name}, the run saved {again}: "
                                  f"it trained steps <= {k} again (resume_from was not applied)")


def assert_follows_checkpoint(resumed: Path, perturbed: Path, k: int, *, seed: str = "resume") -> None:
    """A run resumed from a *perturbed* copy of checkpoint-k must differ from one resumed from the original:
    its loss at step k+1 and its final weights follow the weights it read. Equal results mean the
    checkpoint's weights were never read (a restart from step 0, or weights taken from elsewhere)."""
    a, b = losses_by_step(read_log_history(resumed)), losses_by_step(read_log_history(perturbed))
    if k + 1 in a and k + 1 in b and a[k + 1] == b[k + 1]:
        raise OracleFailure(seed, f"perturbing checkpoint-{k}'s weights on disk left the loss at step {k + 1} "
                                  f"unchanged ({a[k + 1]!r}): the resumed run did not start from checkpoint-{k}")
    _, diff, _ = _max_difference(trained_weights(resumed, seed=seed), trained_weights(perturbed, seed=seed), 0, 0)
    if diff == 0.0:
        raise OracleFailure(seed, f"perturbing checkpoint-{k}'s weights on disk left the weights the run ended "
                                  f"with unchanged: the resumed run did not start from checkpoint-{k}")


def assert_consumed_in_order(uninterrupted: list[int], resumed: list[int], k: int, samples_per_step: int, *,
                             seed: str = "resume") -> None:
    """The resumed run consumed exactly the samples the uninterrupted run consumed after step k, in the same
    order (transformers' ``test_resume_batch_order``): no replay of steps 1..k, no skipped or repeated
    samples, the resumed epoch's own shuffle."""
    done = k * samples_per_step
    want = uninterrupted[done:]
    if resumed == want:
        return
    if len(resumed) != len(want):
        raise OracleFailure(seed, f"resumed from checkpoint-{k}, the run consumed {len(resumed)} samples, the "
                                  f"uninterrupted run {len(want)} after step {k} ({samples_per_step} per step): "
                                  + ("it trained the first steps again" if len(resumed) > len(want) else
                                     "it skipped training"))
    first = next(i for i, (x, y) in enumerate(zip(resumed, want)) if x != y)
    raise OracleFailure(seed, f"resumed from checkpoint-{k}, sample #{done + first} consumed is {resumed[first]} but "
                              f"the uninterrupted run consumed {want[first]} there (resumed order "
                              f"{resumed[:12]}..., expected {want[:12]}...): the data position or the epoch's "
                              f"shuffle was not restored")


def assert_missing_state_reported(missing: Path, error: BaseException | None, output: str, *,
                                  seed: str = "resume") -> None:
    """Resuming from a checkpoint that lacks ``missing`` (optimizer or scheduler state) must fail or warn,
    naming the file; a run that silently continues with a fresh one is a failure."""
    name = Path(missing).name
    if error is not None and name in str(error):
        return
    if name in output:
        return
    got = (f"it raised {type(error).__name__}: {str(error)[:200]}" if error is not None else
           "it trained to the end without an error or a warning naming it")
    raise OracleFailure(seed, f"{Path(missing).parent.name} has no {name}; resuming from it must fail or warn "
                              f"naming {name}, but {got}: a silent fresh "
                              f"{'optimizer' if 'optim' in name else 'LR schedule' if 'sched' in name else 'state'}")


# --------------------------------------------------------------------------- equivalent runs
def assert_runs_agree(expected: Path, actual: Path, *, keys: tuple[str, ...], rtol: float, weight_atol: float,
                      what: str, seed: str) -> None:
    """Two runs that must train the same model: every logged ``keys`` value per step within ``rtol``, and
    the weights of every checkpoint both saved (and the final ones) within ``weight_atol`` (max abs)."""
    history_e, history_a = read_log_history(expected), read_log_history(actual)
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
    both = sorted({step_of(c) for c in list_checkpoints(expected)} & {step_of(c) for c in list_checkpoints(actual)})
    loads = [(f"checkpoint-{n}", checkpoint_weights, f"checkpoint-{n}") for n in both]
    loads.append(("final weights", final_weights, "."))
    for label, load, sub in loads:
        we, wa = load(Path(expected) / sub, seed=seed), load(Path(actual) / sub, seed=seed)
        if set(we) != set(wa):
            raise OracleFailure(seed, f"{what}: {label} hold different tensors: {sorted(set(we) ^ set(wa))[:3]}")
        worst, diff, _ = _max_difference(we, wa, 0.0, 0.0)
        if diff > weight_atol:
            raise OracleFailure(seed, f"{what}: {label}: {worst} differs by {diff:.3g} (> {weight_atol:g})")


# --------------------------------------------------------------------------- LoRA merge
def assert_merged_is_trained_model(merged: Path, adapter_dir: Path, dataset_dir: Path, *, quantization: str | None,
                                   atol: float, output: str = "", seed: str = "merge") -> None:
    """A merged LoRA export is the trained model: a self-contained full model (no adapter files, no
    ``lora_`` / ``base_model.model.`` keys) whose logits on the eval set equal those of the model the LoRA
    trained as — the base the adapter names, loaded as in training (``quantization``), plus the adapter —
    within ``atol``. For a quantised training base, where no merge can be faithful to the bit, a merge that
    differs is accepted when the run's ``output`` holds a warning line about the quantisation."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from .hf import load_causal_lm
    from .layout import adapter_base

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
    assert_self_contained(merged, base, seed=seed)
    trained = PeftModel.from_pretrained(load_causal_lm(base, quantization, "cpu"), str(adapter_dir))
    want = eval_logits(trained, dataset_dir, base)
    got = eval_logits(AutoModelForCausalLM.from_pretrained(str(merged), **dtype_kwargs(), local_files_only=True),
                      dataset_dir, merged)
    diff = (got - want).abs().max().item()
    warned = [line for line in output.splitlines() if "warn" in line.lower() and "quant" in line.lower()]
    if diff > atol and quantization and warned:
        return  # not faithful, and said so
    if diff > atol:
        on = f"the {quantization} base" if quantization else "the base"
        raise OracleFailure(seed, f"{merged.name}: logits on eval.jsonl differ from {on} + the adapter it trained by "
                                  f"{diff:.3g} (> atol {atol:g}): the merge changed the model (wrong LoRA scale, wrong "
                                  f"base, or a lossy merge of a quantised base"
                                  + (", with no warning about the quantisation)" if quantization else ")"))


# --------------------------------------------------------------------------- reload and re-evaluate (seed 004)
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
    history = read_log_history(output_dir) if history is None else history
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
    history = read_log_history(output_dir)
    metrics = logged_metrics(output_dir, metric, history)
    if not metrics:
        raise OracleFailure(seed, f"{output_dir.name}: no {metric!r} in the logged history; nothing was evaluated")
    judged: list[tuple[str, Path, dict[int, float]]] = []
    for ckpt in list_checkpoints(output_dir):
        if step_of(ckpt) in metrics:
            judged.append((ckpt.name, ckpt, {step_of(ckpt): metrics[step_of(ckpt)]}))
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

    The best is the oracle's own reading of the logged history (the first step holding the best value);
    the checkpoint's own trainer_state.json is never taken as evidence that it holds the best model.
    """
    output_dir = Path(output_dir)
    metrics = logged_metrics(output_dir, metric)
    if not metrics:
        raise OracleFailure(seed, f"{output_dir.name}: no {metric!r} in the logged history; nothing was evaluated")
    best = best_logged_step(metrics, greater_is_better)
    on_disk = {step_of(c): c for c in list_checkpoints(output_dir)}
    if best not in on_disk:
        raise OracleFailure(seed, f"best {metric}={metrics[best]:.6g} was logged at step {best}, but there is no "
                                  f"checkpoint-{best} on disk (checkpoints: {sorted(on_disk)}): the best model was "
                                  f"never saved or was rotated away")
    if newest_step is not None and newest_step not in on_disk:
        raise OracleFailure(seed, f"the newest save, checkpoint-{newest_step} (the one a resume needs), is not on disk "
                                  f"(checkpoints: {sorted(on_disk)}): rotation removed it")
    if save_total_limit and len(on_disk) > save_total_limit + 1:
        raise OracleFailure(seed, f"{len(on_disk)} checkpoints on disk ({sorted(on_disk)}) with "
                                  f"save_total_limit={save_total_limit} (at most limit + the best allowed)")
    # the run's final record (older checkpoints may legitimately name a best that was later superseded)
    final_state = output_dir / "trainer_state.json"
    if not final_state.is_file() and on_disk:
        final_state = on_disk[max(on_disk)] / "trainer_state.json"
    if final_state.is_file():
        recorded = json.loads(final_state.read_text(encoding="utf-8")).get("best_model_checkpoint")
        if recorded and (Path(recorded).name != f"checkpoint-{best}" or not Path(recorded).is_dir()):
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


# --------------------------------------------------------------------------- crash / hostile input
def assert_checkpoints_complete(output_dir: Path, reference_dir: Path, *, seed: str = "crash",
                                only: Iterable[int] | None = None) -> list[int]:
    """Every ``checkpoint-N`` on disk (or those of the steps ``only``) is complete: whole model weights and a readable
    trainer_state.json.

    A crash may leave no ``checkpoint-N`` or a complete one, never a half-written one under that name
    (a resume would pick it up). Returns the steps checked.
    """
    steps = []
    wanted = None if only is None else set(only)
    for ckpt in list_checkpoints(output_dir):
        if wanted is not None and step_of(ckpt) not in wanted:
            continue
        state_file = ckpt / "trainer_state.json"
        try:
            state = json.loads(state_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise OracleFailure(seed, f"{ckpt.name} is incomplete: trainer_state.json unreadable ({exc}); a resume "
                                      f"would pick up a partial checkpoint") from None
        if state.get("global_step") != int(ckpt.name.split("-")[1]):
            raise OracleFailure(seed, f"{ckpt.name}/trainer_state.json has global_step={state.get('global_step')!r}")
        try:
            assert_full_model_saved(ckpt, reference_dir, seed=seed)
        except OracleFailure as exc:
            raise OracleFailure(seed, f"{ckpt.name} is incomplete after a crash: {exc}") from None
        except Exception as exc:  # unreadable safetensors and the like
            raise OracleFailure(seed, f"{ckpt.name} is incomplete after a crash: {type(exc).__name__}: {exc}") from None
        steps.append(int(ckpt.name.split("-")[1]))
    return steps


# --------------------------------------------------------------------------- distributed
def assert_same_weights(directory: Path, expected_dir: Path, *, atol: float, seed: str = "dist") -> None:
    """The full model in ``directory`` equals the one in ``expected_dir`` within ``atol`` (max abs)."""
    got, want = weights_on_disk(directory, seed=seed), weights_on_disk(expected_dir, seed=seed)
    if set(got) != set(want):
        raise OracleFailure(seed, f"{Path(directory).name} holds different tensors than {Path(expected_dir).name}: "
                                  f"{sorted(set(got) ^ set(want))[:3]}")
    worst = max(((k, (got[k].float() - want[k].float()).abs().max().item()) for k in want
                 if got[k].shape == want[k].shape), key=lambda kv: kv[1], default=(None, 0.0))
    shapes = [k for k in want if got[k].shape != want[k].shape]
    if shapes:
        raise OracleFailure(seed, f"{Path(directory).name}: {shapes[0]} has shape {tuple(got[shapes[0]].shape)}, "
                                  f"expected {tuple(want[shapes[0]].shape)}")
    if worst[1] > atol:
        raise OracleFailure(seed, f"{Path(directory).name}: {worst[0]} differs from the single-process run by "
                                  f"{worst[1]:.3g} (> atol {atol})")


# --------------------------------------------------------------------------- issue 21: label masking
def _spans(positions: list[int]) -> list[list[int]]:
    """Contiguous runs of sorted positions."""
    out: list[list[int]] = []
    for p in positions:
        if out and p == out[-1][-1] + 1:
            out[-1].append(p)
        else:
            out.append([p])
    return out


def assert_batches_teach_assistant(batches: Iterable[Mapping[str, Any]], dataset_dir: Path, tokenizer_dir: Path, *,
                                   turn_end: str | None = None, seed: str = "labels") -> int:
    """Every training sample teaches exactly its assistant turns, each through its turn end, and nothing else.

    ``batches``: the collated batches a framework trains on (``Adapter.training_batches``). Per sample (row of a
    batch): no label on a padding position (attention mask 0); at least one supervised token (label != -100);
    every label equal to the input token at its position (labels aligned with the inputs; the model shifts them);
    at most one BOS among the attended tokens; the supervised positions form one span per assistant turn, and the
    spans, less their last token, are the token ids of one ``train.jsonl`` row's assistant contents, in order, and each
    span's last token is the turn end (``turn_end``, default the tokenizer's EOS). One epoch covers every row.
    Returns the number of samples checked."""
    from transformers import AutoTokenizer

    from .models import read_jsonl
    from .task import chat_messages

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
    path = Path(dataset_dir) / "train.jsonl"
    rows = read_jsonl(path)
    expected: dict[tuple[tuple[int, ...], ...], int] = {}
    for i, row in enumerate(rows):
        turns = [m["content"] for m in chat_messages(row, path, i) if m["role"] == "assistant"]
        expected[tuple(tuple(tok(t, add_special_tokens=False)["input_ids"]) for t in turns)] = i
    end_token = turn_end or tok.eos_token
    end_id = tok.convert_tokens_to_ids(end_token)
    bos_id = tok.bos_token_id

    def show(ids: Iterable[int]) -> str:
        return " ".join(tok.convert_ids_to_tokens(list(ids)))

    seen: set[int] = set()
    checked = 0
    for b, batch in enumerate(batches):
        missing = [k for k in ("input_ids", "labels", "attention_mask") if batch.get(k) is None]
        if missing:
            raise OracleFailure(seed, f"batch {b} has no {missing}: cannot tell padding from tokens")
        for r, (ids, labels, mask) in enumerate(zip(batch["input_ids"], batch["labels"], batch["attention_mask"])):
            ids, labels, mask = list(ids), list(labels), list(mask)
            real = [i for i, m in enumerate(mask) if m]
            where = f"batch {b} sample {r} ({show(ids[i] for i in real)!r})"
            if not (len(ids) == len(labels) == len(mask)):
                raise OracleFailure(seed, f"{where}: input_ids, labels and attention_mask have lengths "
                                          f"{len(ids)}, {len(labels)}, {len(mask)}")
            padded = [i for i, m in enumerate(mask) if not m and labels[i] != -100]
            if padded:
                raise OracleFailure(seed, f"{where}: {len(padded)} padding positions (attention mask 0) carry a label, "
                                          f"first at {padded[0]}: label {show([labels[padded[0]]])!r}; expected -100 on "
                                          f"padding: the loss trains the model to predict padding")
            supervised = [i for i in real if labels[i] != -100]
            if not supervised:
                raise OracleFailure(seed, f"{where}: every label is -100: the sample teaches nothing (trl #1820/#980: "
                                          f"the response template was not found in the tokenised sample)")
            shifted = [i for i in supervised if labels[i] != ids[i]]
            if shifted:
                i = shifted[0]
                raise OracleFailure(seed, f"{where}: the label at position {i} is {show([labels[i]])!r} but the input "
                                          f"there is {show([ids[i]])!r} ({len(shifted)} such positions): labels are not "
                                          f"aligned with the inputs (a mask shifted by the padding: trl PR #550)")
            bos = sum(ids[i] == bos_id for i in real) if bos_id is not None else 0
            if bos > 1:
                raise OracleFailure(seed, f"{where}: {bos} BOS tokens {tok.bos_token!r}; expected at most one (a template "
                                          f"that writes the BOS, tokenised with special tokens added again: open-r1 "
                                          f"PR #462, DeepSeek-R1 #151)")
            spans = [[ids[i] for i in span] for span in _spans(supervised)]
            contents = tuple(tuple(s[:-1]) if s[-1] == end_id else tuple(s) for s in spans)
            row = expected.get(contents)
            if row is None:
                wanted = min(expected, key=lambda k: abs(len(k) - len(contents)))
                raise OracleFailure(seed, f"{where}: supervised spans {[show(s) for s in spans]} are not the assistant "
                                          f"turns of any training sample (each turn's content, then {end_token!r}; e.g. "
                                          f"{[show(t) + ' ' + end_token for t in wanted]}): a prompt, user turn or header "
                                          f"is trained on, or an assistant turn is masked")
            unended = [show(s) for s in spans if s[-1] != end_id]
            if unended:
                raise OracleFailure(seed, f"{where}: assistant turn {unended[0]!r} is supervised without its turn end: "
                                          f"{end_token!r} carries label -100 ({len(unended)} of {len(spans)} turns); the "
                                          f"model never learns to stop (trl #1623: a pad token equal to the EOS masks "
                                          f"the EOS)")
            seen.add(row)
            checked += 1
    unseen = sorted(set(range(len(rows))) - seen)
    if unseen:
        raise OracleFailure(seed, f"one epoch of training batches never holds train.jsonl rows {[u + 1 for u in unseen]} "
                                  f"(of {len(rows)}; {checked} samples seen): dropped or truncated away")
    return checked


# --------------------------------------------------------------------------- issue 21: the saved chat format
def training_sample_of(batches: Iterable[Mapping[str, Any]], conversation: list[Mapping[str, str]], tokenizer_dir: Path,
                       *, seed: str = "template") -> list[int]:
    """The attended token ids of the training sample that holds ``conversation`` (every message's content tokens in
    order), from a framework's collated batches (``Adapter.training_batches``)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
    words = [t for m in conversation for t in tok(m["content"], add_special_tokens=False)["input_ids"]]
    for batch in batches:
        for ids, mask in zip(batch["input_ids"], batch["attention_mask"]):
            real = [t for t, m in zip(ids, mask) if m]
            it = iter(real)
            if all(any(t == w for t in it) for w in words):
                return real
    raise OracleFailure(seed, f"no training sample holds the conversation {[m['content'] for m in conversation]}")


def assert_saved_format(directory: Path, base_dir: Path, conversation: list[Mapping[str, str]],
                        training_ids: list[int], *, seed: str = "template") -> None:
    """A saved directory carries the format its run trained in: its tokenizer is on disk with a chat template,
    ``apply_chat_template(conversation)`` gives exactly ``training_ids`` (the tokens the run trained on), the
    generation config that serves it (the directory's, else — an adapter — its base's) stops at the template's turn
    end, and every special token of the base tokenizer keeps its id."""
    from transformers import AutoTokenizer, GenerationConfig

    from .layout import TOKENIZER_FILES, adapter_base, is_adapter_dir
    from .task import template_turn_end

    directory = Path(directory)
    label = directory.name
    absent = [n for n in TOKENIZER_FILES if not (directory / n).is_file()]
    tok_dir = directory
    if absent and is_adapter_dir(directory):  # an adapter without a tokenizer is served with its base's
        tok_dir, label = adapter_base(directory), f"{directory.name} (no tokenizer of its own: its base's)"
        absent = [n for n in TOKENIZER_FILES if not (Path(tok_dir) / n).is_file()]
    if absent:
        raise OracleFailure(seed, f"{label} holds no tokenizer ({absent} missing): it cannot be served in the format "
                                  f"it was trained in")
    tok = AutoTokenizer.from_pretrained(str(tok_dir), local_files_only=True)
    if not tok.chat_template:
        raise OracleFailure(seed, f"{label}: the saved tokenizer has no chat template (no chat_template.jinja, none in "
                                  f"tokenizer_config.json): a server falls back to a default format the model never "
                                  f"saw (LLaMA-Factory #5836 / #5904, ms-swift #2831)")
    served = tok.apply_chat_template(list(conversation), tokenize=True)
    served = list(served["input_ids"] if hasattr(served, "keys") else served)
    if served != list(training_ids):
        def show(ids):
            return " ".join(tok.convert_ids_to_tokens(list(ids)))

        raise OracleFailure(seed, f"{label}: apply_chat_template of the training conversation gives {show(served)!r}, "
                                  f"but the run trained on {show(training_ids)!r}: the saved template is not the one "
                                  f"the model was trained with (LLaMA-Factory #7785 / #5476, Qwen3-VL #1488)")
    base = AutoTokenizer.from_pretrained(str(base_dir), local_files_only=True)
    for attr in ("bos_token", "eos_token", "pad_token", "unk_token"):
        want, got = getattr(base, attr), getattr(tok, attr)
        if want is not None and (got != want or tok.convert_tokens_to_ids(want) != base.convert_tokens_to_ids(want)):
            raise OracleFailure(seed, f"{label}: {attr} is {got!r} (id {getattr(tok, attr + '_id')}), the base "
                                      f"tokenizer's is {want!r} (id {getattr(base, attr + '_id')}): special-token ids "
                                      f"changed between training base and saved model")
    end = template_turn_end(tok)
    config_dir = directory if (directory / "generation_config.json").is_file() else (
        adapter_base(directory) if is_adapter_dir(directory) else None)
    if config_dir is None or not (Path(config_dir) / "generation_config.json").is_file():
        raise OracleFailure(seed, f"{label}: a full model without generation_config.json: generation stops only at "
                                  f"config.json's eos, not at the template's turn end")
    eos = GenerationConfig.from_pretrained(str(config_dir)).eos_token_id
    eos = eos if isinstance(eos, list) else [eos]
    if end is not None and end not in eos:
        raise OracleFailure(seed, f"{label}: generation_config.json ({Path(config_dir).name}) has eos_token_id {eos}, "
                                  f"which lacks the template's turn end {tok.convert_ids_to_tokens(end)!r} (id {end}): "
                                  f"served generation never stops at the end of a turn (open-r1 PR #663)")


# --------------------------------------------------------------------------- issue 21: embeddings on disk
def _embedding_key(tensors: Mapping[str, Any]) -> str | None:
    return next((k for k in sorted(tensors) if k.endswith("embed_tokens.weight")), None)


def _saved_embeddings(directory: Path, seed: str) -> Any:
    """The input-embedding matrix a directory holds: a full model's, or a LoRA adapter's whole-module copy
    (PEFT ``modules_to_save`` / ``save_embedding_layers``); None when it holds none."""
    directory = Path(directory)
    tensors = _lora_tensors(directory) if (directory / "adapter_config.json").is_file() else weights_on_disk(
        directory, seed=seed)
    key = _embedding_key(tensors or {})
    return None if key is None else tensors[key]


def batches_loss(model, batches: Iterable[Mapping[str, Any]]) -> float:
    """The token-mean cross-entropy of ``model`` on collated batches (``Adapter.training_batches``: input ids,
    attention mask, labels aligned with the inputs, -100 where nothing is scored), every scored token weighing the
    same: Trainer's eval loss when the eval set is one batch."""
    import torch

    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for batch in batches:
            ids = torch.tensor(batch["input_ids"])
            logits = model(input_ids=ids, attention_mask=torch.tensor(batch["attention_mask"])).logits.float()
            labels = torch.tensor(batch["labels"])[:, 1:]
            scored = labels != -100
            losses = torch.nn.functional.cross_entropy(logits[:, :-1][scored], labels[scored], reduction="sum")
            total, count = total + losses.item(), count + int(scored.sum())
    return total / max(count, 1)


def assert_embeddings_saved(output_dir: Path, base_dir: Path, eval_batches: list[Mapping[str, Any]], *,
                            new_tokens: tuple[str, ...] = (), rel_tol: float, seed: str = "embeddings") -> None:
    """Tied and resized embeddings survive save and reload. For the final directory of ``output_dir``: the saved
    tokenizer holds ``new_tokens``; a full save's ``config.json`` tie flag agrees with its tensors (tied: no
    ``lm_head.weight`` or one equal to the embeddings; untied: an ``lm_head.weight`` of its own) and its embeddings
    hold a row per token; an adapter of a resized run holds the full-size embeddings; the added tokens' rows differ
    between the first checkpoint and the final save (they were trained); and reloading the final directory — the full
    directory, or the base resized to the saved tokenizer plus the adapter — reproduces the last logged ``eval_loss``
    within ``rel_tol``, scored on ``eval_batches``: the eval set as the framework itself encodes and collates it (its
    template and labels: the loss it logged is over those)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .layout import is_adapter_dir

    output_dir = Path(output_dir)
    evals = {int(h["step"]): float(h["eval_loss"]) for h in read_log_history(output_dir) if "eval_loss" in h}
    if not evals:
        raise OracleFailure(seed, f"{output_dir.name}: no eval_loss logged; nothing to reproduce")
    step = max(evals)
    own = all((output_dir / n).is_file() for n in ("tokenizer.json", "tokenizer_config.json"))
    if not own and is_adapter_dir(output_dir):
        from .layout import adapter_base

        tok_dir, whose = adapter_base(output_dir), "its base's tokenizer (the adapter holds none)"
    else:
        tok_dir, whose = output_dir, "the saved tokenizer"
    tok = AutoTokenizer.from_pretrained(str(tok_dir), local_files_only=True)
    absent = [t for t in new_tokens if t not in tok.get_vocab()]
    if absent:
        raise OracleFailure(seed, f"{output_dir.name}: {whose} lacks the added tokens {absent} ({len(tok)} tokens): "
                                  f"the model cannot be served with the vocabulary it trained on")
    new_ids = [tok.convert_tokens_to_ids(t) for t in new_tokens]
    adapter = is_adapter_dir(output_dir)
    if not adapter:
        config = json.loads((output_dir / "config.json").read_text(encoding="utf-8"))
        tied = bool(config.get("tie_word_embeddings", config.get("text_config", {}).get("tie_word_embeddings")))
        tensors = weights_on_disk(output_dir, seed=seed)
        head, embed = tensors.get("lm_head.weight"), tensors.get(_embedding_key(tensors) or "")
        if tied and head is not None and embed is not None and not torch.equal(head, embed):
            raise OracleFailure(seed, f"{output_dir.name}: config.json says tie_word_embeddings=true but lm_head.weight "
                                      f"on disk differs from the embeddings by {(head - embed).abs().max().item():.3g}: "
                                      f"a loader ties them and silently drops one (DeepSpeed #1896, peft #2777)")
        if not tied and head is None:
            raise OracleFailure(seed, f"{output_dir.name}: config.json says tie_word_embeddings=false but no "
                                      f"lm_head.weight is on disk: a loader initialises the output head at random "
                                      f"(NeMo Automodel #2571)")
    embed = _saved_embeddings(output_dir, seed)
    if new_tokens and embed is None:
        raise OracleFailure(seed, f"{output_dir.name}: the adapter holds no embedding matrix although the vocabulary "
                                  f"grew by {len(new_tokens)} tokens: the added tokens' trained rows were not saved: "
                                  f"a reload gives them fresh rows (unsloth #9326; PEFT modules_to_save / save_embedding_layers, peft PR #1147)")
    if embed is not None and embed.shape[0] < len(tok):
        raise OracleFailure(seed, f"{output_dir.name}: the saved embeddings have {embed.shape[0]} rows, the saved "
                                  f"tokenizer {len(tok)} tokens: the resized rows were not saved")
    checkpoints = list_checkpoints(output_dir)
    if new_tokens and checkpoints:
        first = _saved_embeddings(checkpoints[0], seed)
        if first is not None and torch.equal(first[new_ids], embed[new_ids]):
            raise OracleFailure(seed, f"{output_dir.name}: the rows of {list(new_tokens)} are identical in "
                                      f"{checkpoints[0].name} and the final save: the added tokens were not trained")
    if adapter:
        from peft import PeftModel

        from .layout import adapter_base

        base = AutoModelForCausalLM.from_pretrained(str(adapter_base(output_dir)), **dtype_kwargs(),
                                                    local_files_only=True)
        rows = embed.shape[0] if embed is not None else len(tok)  # a framework may pad the vocabulary (LLaMA-Factory: 64)
        if base.get_input_embeddings().weight.shape[0] != rows:
            base.resize_token_embeddings(rows)
        model = PeftModel.from_pretrained(base, str(output_dir))
        how = "base + resize + adapter" if new_tokens else "base + adapter"
    else:
        _present_weight_files(output_dir, seed)
        model = AutoModelForCausalLM.from_pretrained(str(output_dir), **dtype_kwargs(), local_files_only=True)
        how = f"the full directory (config.json tie_word_embeddings={tied})"
    got = batches_loss(model, eval_batches)
    if not math.isclose(got, evals[step], rel_tol=rel_tol):
        raise OracleFailure(seed, f"{output_dir.name}: reloading {how} gives eval_loss {got:.6g}, the run logged "
                                  f"{evals[step]:.6g} at step {step} (relative difference "
                                  f"{abs(got - evals[step]) / abs(evals[step]):.3g} > {rel_tol:g}): what was saved is "
                                  f"not the model that was evaluated")
