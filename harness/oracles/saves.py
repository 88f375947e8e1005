"""What a save must hold: the whole model after a full-parameter run (seed 001), only the adapter after a LoRA run, a
self-contained model in every full fine-tune checkpoint (seed 003), the base an adapter names, every checkpoint
whole after a killed save (crash), a sharded save equal to one process's (distributed), and a partly frozen model's
saves that froze exactly what was asked (the trainable set).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..hf import dtype_kwargs
from ..layout import (adapter_base, read_safetensors_header, run_checkpoint_map, run_checkpoints, run_log_history,
                      step_of, uses_trainer_checkpoints, weight_files)
from .failure import OracleFailure, _megabytes
from .reading import _header_and_bytes, _present_weight_files, _tensor_bytes, weights_on_disk


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
                                  f"{_megabytes(sum(p.stat().st_size for p in directory.iterdir() if p.is_file()))} on disk "
                                  f"vs {_megabytes(exp_bytes)} expected): looks like an adapter-only save")
    missing = sorted(set(expected) - set(found))
    if tied:
        missing = [k for k in missing if k != "lm_head.weight"]
    if missing:
        kept = len(set(expected) & set(found))
        got = sum(_tensor_bytes(found[k]) for k in found if k in expected)
        raise OracleFailure(seed, f"{name} holds {kept} of {len(expected)} tensors ({_megabytes(got)} of {_megabytes(exp_bytes)}): "
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
    assert_served_dtype(directory, seed=seed)
    want_bytes = sum(_tensor_bytes(found[k]) for k in found)
    if data_bytes != want_bytes:
        raise OracleFailure(seed, f"{name}: safetensors data is {_megabytes(data_bytes)} but its tensors need "
                                  f"{_megabytes(want_bytes)}: the file is truncated or padded")
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


def assert_adapter_only_save(directory: Path, *, base_dir: Path | None = None, seed: str = "000") -> None:
    """A LoRA run saved an adapter, and nothing but LoRA tensors. A full model saved beside the adapter (torchtune saves
    the merged model by default) is full training only where it differs from the base: every tensor the adapter does
    not target must be the base's (``base_dir``, else the one ``adapter_config.json`` names), bit for bit."""
    directory = Path(directory)
    if not (directory / "adapter_config.json").is_file():
        found = sorted(p.name for p in directory.iterdir())
        raise OracleFailure(seed, f"{directory.name}: expected a LoRA adapter (adapter_config.json) because the "
                                  f"command line said train_type=lora, found {found}: the run trained something else")
    header = read_safetensors_header(directory / "adapter_model.safetensors")
    non_lora = sorted(k for k in header if "lora_" not in k)
    if non_lora:
        raise OracleFailure(seed, f"{directory.name}: a LoRA run saved non-LoRA weights ({non_lora[:3]}) in its "
                                  f"adapter: full parameters were trained")
    if weight_files(directory):
        _assert_merged_copy_of_lora(directory, header, base_dir, seed)
    if not header:
        raise OracleFailure(seed, f"{directory.name}: adapter_model.safetensors holds no tensors")


def _assert_merged_copy_of_lora(directory: Path, adapter_header: Mapping[str, Any], base_dir: Path | None,
                                seed: str) -> None:
    """The full weights beside a LoRA adapter are a merged copy: each tensor the adapter does not target equals the
    base's. (One a LoRA run trained besides its adapter means full parameters were trained.)"""
    import torch

    try:
        base_dir = Path(base_dir) if base_dir is not None else adapter_base(directory)
    except ConfigError as exc:
        raise OracleFailure(seed, f"{directory.name}: a LoRA save holds full weights too, and its base cannot be found "
                                  f"to tell a merged copy from full training: {exc}") from None
    targets = {k.split(".lora_")[0].removeprefix("base_model.model.") for k in adapter_header}
    saved, base = weights_on_disk(directory, seed=seed), weights_on_disk(base_dir, seed=seed)
    changed = sorted(k for k, v in saved.items() if k.rsplit(".", 1)[0] not in targets and k in base
                     and not torch.equal(v, base[k]))
    if changed:
        raise OracleFailure(seed, f"{directory.name}: a LoRA run saved full weights whose {len(changed)} tensors outside "
                                  f"the adapter's target modules differ from the base {base_dir.name} (e.g. "
                                  f"{changed[:3]}): full parameters were trained (a merged copy of the LoRA would "
                                  f"leave them as the base's)")


REQUIRED_MODEL_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json")


#: config.json's dtype names -> the safetensors dtype codes of tensors stored in them
CONFIG_DTYPES = {"float32": "F32", "bfloat16": "BF16", "float16": "F16", "float64": "F64"}


def assert_served_dtype(directory: Path, *, seed: str = "003") -> None:
    """A full model's ``config.json`` declares the dtype its floating tensors are stored in.

    A server loads with the defaults (transformers 5's ``dtype="auto"``, vLLM): the dtype ``config.json`` declares
    (``dtype``, or ``torch_dtype`` before transformers 4.56), not the files'. A save whose config declares bf16 over
    float32 tensors is served rounded, computing other outputs than the model that trained and was saved, while every
    reload with an explicit float32 (as the other oracles do) hides it. A directory without config.json or without
    full-model weights (an adapter) has nothing to declare."""
    directory = Path(directory)
    config_file = directory / "config.json"
    files = weight_files(directory)
    if not config_file.is_file() or not files:
        return
    config = json.loads(config_file.read_text(encoding="utf-8"))
    declared = config.get("dtype") or config.get("torch_dtype") or config.get("text_config", {}).get("dtype")
    if not isinstance(declared, str) or declared not in CONFIG_DTYPES:
        return  # none ("auto" then means float32) or a name this check does not know
    stored: dict[str, int] = {}
    for f in files:
        for name, meta in read_safetensors_header(f).items():
            if name != "__metadata__" and meta["dtype"] in CONFIG_DTYPES.values():
                stored[meta["dtype"]] = stored.get(meta["dtype"], 0) + 1
    if stored and CONFIG_DTYPES[declared] not in stored:
        found = ", ".join(f"{n} {code}" for code, n in sorted(stored.items()))
        raise OracleFailure(seed, f"{directory.name}/config.json declares dtype {declared!r}, but its floating tensors "
                                  f"are stored as {found}: loaded with the defaults a server uses (dtype='auto': "
                                  f"transformers 5, vLLM) it computes in {declared}, not as the model that was trained")


def assert_self_contained(directory: Path, base_dir: Path, *, sample_text: str = "w1 w2 w3 w4",
                          seed: str = "003", generation_config: bool = True) -> None:
    """Copy ``directory`` alone to a fresh place and load model + tokenizer from it, offline.

    The loaded weights must equal the files (nothing silently re-initialised) and differ from
    ``base_dir`` (the fine-tuned weights, not the original base); the tokenizer must round-trip text; and
    (``generation_config``) its ``generation_config.json`` is the base's, as :func:`generation_config_changes` judges.
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
    assert_served_dtype(directory, seed=seed)
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
        if generation_config:
            changed = generation_config_changes(directory, base_dir, tok)
            if changed:
                raise OracleFailure(seed, changed)
        if all(torch.equal(on_disk[k], base[k]) for k in on_disk if k in base):
            raise OracleFailure(seed, f"{directory.name}: weights are identical to the original base {base_dir}: "
                                      f"the fine-tuned weights were not saved")
        ids = tok(sample_text, add_special_tokens=False)["input_ids"]
        back = tok.decode(ids)
        if back.split() != sample_text.split():
            raise OracleFailure(seed, f"{directory.name}: tokenizer does not round-trip {sample_text!r} (got {back!r})")


def _eos_ids(value: Any) -> list:
    """``eos_token_id`` as a list: a scalar and a one-element list are the same stop token."""
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def generation_config_changes(directory: Path, base_dir: Path, tok=None) -> str | None:
    """What ``directory``'s ``generation_config.json`` changed against the base's, or ``None``.

    ``generation_config.json`` says how the model generates (stop tokens, sampling); a fine-tune that did not ask to
    change it saves the base's (``transformers_version`` aside). ``eos_token_id`` is compared as a set of stop tokens
    (``3`` and ``[3]`` are the same), and may gain exactly the saved chat template's turn end (``tok``'s; a server must
    stop there: open-r1 PR #663) and nothing else; every other key must be the base's."""
    from ..task import template_turn_end

    def read(d: Path) -> dict[str, Any]:
        f = Path(d) / "generation_config.json"
        data = json.loads(f.read_text(encoding="utf-8")) if f.is_file() else {}
        return {k: v for k, v in data.items() if k != "transformers_version"}

    got, want = read(directory), read(base_dir)
    if not want:
        return None
    problems = []
    eos_got, eos_want = _eos_ids(got.get("eos_token_id")), _eos_ids(want.get("eos_token_id"))
    end = template_turn_end(tok) if tok is not None and getattr(tok, "chat_template", None) else None
    added = [e for e in eos_got if e not in eos_want]
    if [e for e in eos_want if e not in eos_got] or [e for e in added if e != end]:
        problems.append(f"eos_token_id {got.get('eos_token_id')!r}, base {want.get('eos_token_id')!r}"
                        + (f" (allowed: the base's stop tokens, plus the saved template's turn end, id {end})"
                           if end is not None else " (allowed: the base's stop tokens)"))
    changed = sorted(k for k in set(got) | set(want) if k != "eos_token_id" and got.get(k) != want.get(k))
    problems += [f"{k}: {got.get(k)!r}, base {want.get(k)!r}" for k in changed[:4]]
    if not problems:
        return None
    return (f"{Path(directory).name}/generation_config.json differs from the base's: {'; '.join(problems)} - the run "
            f"did not ask to change how the model generates")


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


def assert_checkpoints_complete(output_dir: Path, reference_dir: Path, *, seed: str = "crash",
                                only: Iterable[int] | None = None) -> list[int]:
    """Every ``checkpoint-N`` on disk (or those of the steps ``only``) is complete: whole model weights, and in HF
    Trainer's layout a readable trainer_state.json of its step (a framework with its own layout keeps its state
    elsewhere: its weights are judged).

    A crash may leave no ``checkpoint-N`` or a complete one, never a half-written one under that name
    (a resume would pick it up). Returns the steps checked.
    """
    steps = []
    wanted = None if only is None else set(only)
    trainer_layout = uses_trainer_checkpoints()
    for step, ckpt in run_checkpoint_map(output_dir).items():
        if wanted is not None and step not in wanted:
            continue
        if trainer_layout:
            state_file = ckpt / "trainer_state.json"
            try:
                state = json.loads(state_file.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise OracleFailure(seed, f"{ckpt.name} is incomplete: trainer_state.json unreadable ({exc}); a "
                                          f"resume would pick up a partial checkpoint") from None
            if state.get("global_step") != step:
                raise OracleFailure(seed, f"{ckpt.name}/trainer_state.json has global_step="
                                          f"{state.get('global_step')!r}, expected {step}")
        try:
            assert_full_model_saved(ckpt, reference_dir, seed=seed)
        except OracleFailure as exc:
            raise OracleFailure(seed, f"{ckpt.name} is incomplete after a crash: {exc}") from None
        except Exception as exc:  # unreadable safetensors and the like
            raise OracleFailure(seed, f"{ckpt.name} is incomplete after a crash: {type(exc).__name__}: {exc}") from None
        steps.append(step)
    return steps


#: a file of a checkpoint as its save left it: (size in bytes, sha256)
FileDigest = tuple[int, str]


def checkpoint_digests(tree: Path) -> dict[str, dict[str, FileDigest]]:
    """``checkpoint-N`` name -> {file path inside it: (size, sha256)} for every checkpoint of ``tree``."""
    import hashlib

    out: dict[str, dict[str, FileDigest]] = {}
    for ckpt in run_checkpoints(tree):
        files = sorted(p for p in ckpt.rglob("*") if p.is_file())
        out[ckpt.name] = {str(p.relative_to(ckpt)): (p.stat().st_size, hashlib.sha256(p.read_bytes()).hexdigest())
                          for p in files}
    return out


@dataclass(frozen=True)
class CompletedCheckpoints:
    """Each checkpoint's completed versions around one save (``versions``: name -> digests), and the names the save
    left once it was over (``kept``; a name missing there was rotated away by the save)."""

    versions: Mapping[str, list[dict[str, FileDigest]]]
    kept: frozenset[str]


def completed_checkpoints(before: Path, after: Path) -> CompletedCheckpoints:
    """Each checkpoint as it stood when the save began (``before``) and once the save was over (``after``): a crash
    state may hold either version of each, and nothing in between."""
    versions: dict[str, list[dict[str, FileDigest]]] = {}
    final = checkpoint_digests(after)
    for tree in (checkpoint_digests(before), final):
        for name, files in tree.items():
            if files not in versions.setdefault(name, []):
                versions[name].append(files)
    return CompletedCheckpoints(versions=versions, kept=frozenset(final))


def _incompleteness(found: Mapping[str, FileDigest], versions: list[dict[str, FileDigest]]) -> str | None:
    """None when ``found`` holds one completed version's every file byte for byte; else what is missing or differs
    (measured against the closest version)."""
    if not versions:
        return "no completed save of this run left a checkpoint of this name"
    best = None
    for files in versions:
        missing = [f for f in files if f not in found]
        differs = [f"{f} ({found[f][0]} of {size} bytes)" if found[f][0] != size else f"{f} (other bytes)"
                   for f, (size, digest) in files.items() if f in found and found[f][1] != digest]
        if not missing and not differs:
            return None
        text = "; ".join(part for part in (f"missing {', '.join(missing)}" if missing else "",
                                            f"differs: {', '.join(differs)}" if differs else "") if part)
        if best is None or len(missing) + len(differs) < best[0]:
            best = (len(missing) + len(differs), text)
    return best[1]


def assert_crash_state_sound(state: Path, completed: CompletedCheckpoints, *, point: str,
                             after_checkpoint: int, seed: str = "crash") -> list[int]:
    """What a crash at ``point`` left (``state``, an output dir) is something a user can resume from: every
    ``checkpoint-N`` on disk is byte for byte one of its completed versions (:func:`completed_checkpoints`), at
    least one of ``checkpoint-{after_checkpoint}`` and the newer ones is complete, and the newest is. The one
    exception is a checkpoint the save was rotating away (it has no version once the save is over) while a newer
    complete one exists: a half-deleted old checkpoint that "latest" never picks (transformers' ``shutil.rmtree``
    rotation leaves one). Returns the steps of the complete checkpoints."""
    found = checkpoint_digests(state)
    verdicts = {name: _incompleteness(files, list(completed.versions.get(name, []))) for name, files in found.items()}
    step_by_name = {c.name: k for k, c in run_checkpoint_map(state).items()}  # the layout's steps, not names
    steps = sorted((step_by_name[name], name) for name in found)
    complete = [s for s, name in steps if verdicts[name] is None]
    where = f"killed just before file-system step {point}"
    if steps and verdicts[steps[-1][1]] is not None:
        newest = steps[-1][1]
        raise OracleFailure(seed, f"{where}: {newest} is on disk but incomplete ({verdicts[newest]}) and it is the "
                                  f"newest checkpoint, so a resume from latest picks it up; expected every "
                                  f"checkpoint-N on disk to be as its completed save wrote it, or absent")
    if not any(s >= after_checkpoint for s in complete):
        raise OracleFailure(seed, f"{where}: no complete checkpoint-{after_checkpoint} or newer is left (on disk: "
                                  f"{[name for _, name in steps] or 'no checkpoint'}); the old checkpoint may go only "
                                  f"once the new one is complete")
    for s, name in steps:
        rotated = name in completed.versions and name not in completed.kept
        if verdicts[name] is None or (rotated and any(c > s for c in complete)):
            continue
        raise OracleFailure(seed, f"{where}: {name} is on disk but incomplete ({verdicts[name]}); expected every "
                                  f"checkpoint-N on disk to be as its completed save wrote it, or absent")
    return complete


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


def assert_checkpoint_layout(output_dir: Path, final_dir: Path, steps: Iterable[int], train_type: str, *,
                             seed: str = "layout") -> None:
    """``output_dir`` holds exactly the checkpoints of ``steps`` in the run's layout (HF Trainer's
    ``checkpoint-<step>``, each with a ``trainer_state.json`` whose ``global_step`` is its step and whose log has
    losses; a framework declaring its own ``checkpoints`` maps its directories to steps, and its log must hold a
    loss for each checkpoint's step), each with safetensors weights of ``train_type`` (``full``: model.safetensors or
    an index and its shards; ``lora``: adapter_model.safetensors) holding tensors; ``final_dir`` holds such weights
    too."""
    output_dir, final_dir = Path(output_dir), Path(final_dir)
    trainer_layout = uses_trainer_checkpoints()

    def weights(directory: Path) -> list[Path]:
        if train_type == "full":
            return weight_files(directory)
        adapter = directory / "adapter_model.safetensors"
        return [adapter] if adapter.is_file() else []

    expected_steps = sorted(steps)
    if trainer_layout:
        names = sorted((p.name for p in output_dir.iterdir() if p.name.startswith("checkpoint-")),
                       key=lambda n: (len(n), n))
        expected = [f"checkpoint-{s}" for s in expected_steps]
        if names != expected:
            raise OracleFailure(seed, f"expected checkpoints {expected} in {output_dir}, found {names}")
        ckpts = [output_dir / name for name in names]
    else:
        found = run_checkpoint_map(output_dir)
        ckpts = list(found.values())
        if list(found) != expected_steps:
            raise OracleFailure(seed, f"expected checkpoints of steps {expected_steps} in {output_dir}, the adapter's "
                                      f"checkpoints() gives {({k: str(v) for k, v in sorted(found.items())})}")
        logged = {h["step"] for h in run_log_history(output_dir) if "loss" in h and "step" in h}
        unlogged = [s for s in expected_steps if s not in logged]
        if unlogged:
            raise OracleFailure(seed, f"the run's log_history holds no loss for checkpoint steps {unlogged} "
                                      f"(logged: {sorted(logged)})")
    for ckpt in ckpts:
        name = ckpt.name
        if trainer_layout:
            state_file = ckpt / "trainer_state.json"
            if not state_file.is_file():
                raise OracleFailure(seed, f"{name} has no trainer_state.json (found "
                                          f"{sorted(p.name for p in ckpt.iterdir())})")
            state = json.loads(state_file.read_text(encoding="utf-8"))
            if state.get("global_step") != step_of(ckpt):
                raise OracleFailure(seed, f"{name}/trainer_state.json records global_step "
                                          f"{state.get('global_step')!r}, expected {step_of(ckpt)}")
            if not [h.get("step") for h in state.get("log_history", []) if "loss" in h]:
                raise OracleFailure(seed, f"{name}/trainer_state.json logs no loss (expected one per logged step)")
        files = weights(ckpt)
        if not files:
            raise OracleFailure(seed, f"{name} holds no {train_type} weights (found "
                                      f"{sorted(p.name for p in ckpt.iterdir())})")
        for path in files:
            if not path.is_file() or not read_safetensors_header(path):
                raise OracleFailure(seed, f"{name}/{path.name} is missing or holds no tensors")
    if not weights(final_dir):
        raise OracleFailure(seed, f"the final output {final_dir} holds no {train_type} weights "
                                  f"(found {sorted(p.name for p in final_dir.iterdir())})")


def _saved_optimizer_shapes(checkpoint: Path) -> list[tuple[int, ...]] | None:
    """The shape of every parameter the checkpoint's ``optimizer.pt`` holds state for (its first moment, or
    whichever tensor the optimizer keeps per parameter), sorted; None where there is no Trainer optimizer file."""
    from ..layout import safe_torch_load

    file = Path(checkpoint) / "optimizer.pt"
    if not uses_trainer_checkpoints() or not file.is_file():
        return None
    state = safe_torch_load(file).get("state", {})
    shapes = []
    for entry in state.values():
        tensors = [v for v in entry.values() if hasattr(v, "shape") and v.dim() > 0]
        if tensors:
            shapes.append(tuple(tensors[0].shape))
    return sorted(shapes)


def assert_trainable_set(output_dir: Path, base_dir: Path, patterns: Iterable[str], *,
                         seed: str = "trainable") -> None:
    """A full run asked to train only the parameters ``patterns`` name (:func:`harness.spec.in_trainable_set`): in
    every checkpoint and the final save, every tensor outside that set is byte-identical to the base's (same dtype,
    same values), every tensor inside it has changed, and the optimizer state a checkpoint saved (``optimizer.pt``,
    the state a resume restores) covers exactly the trainable tensors: one entry per trainable tensor, of its shape.
    A frozen tensor that moved trained; a trainable one still equal to the base never did; optimizer state for a frozen
    tensor means it was updated (modelscope/ms-swift #5485: "the llm's gradients and optimizer state are still
    loaded" under ``freeze_llm``)."""
    import torch

    from ..spec import in_trainable_set

    patterns = list(patterns)
    base = weights_on_disk(Path(base_dir), seed=seed)
    trainable = sorted(n for n in base if in_trainable_set(n, patterns))
    frozen = sorted(set(base) - set(trainable))
    if not trainable or not frozen:
        raise ValueError(f"trainable_parameters {patterns} must split {Path(base_dir).name}'s {len(base)} tensors into "
                         f"a trainable and a frozen part (trainable: {len(trainable)})")
    saves = [(c.name, c) for c in run_checkpoints(Path(output_dir))]
    if weight_files(Path(output_dir)):
        saves.append(("the final save", Path(output_dir)))
    if not saves:
        raise OracleFailure(seed, f"{Path(output_dir).name}: no full-model save to judge (no checkpoint-N and no "
                                  f"final model.safetensors)")
    for label, directory in saves:
        saved = weights_on_disk(directory, seed=seed)
        missing = [n for n in base if n not in saved]
        if missing:
            raise OracleFailure(seed, f"{label}: {len(missing)} of the base's {len(base)} tensors are not saved, e.g. "
                                      f"{missing[0]}: a full save of a partly frozen model must still hold all of them")
        moved = []
        for name in frozen:
            if saved[name].dtype != base[name].dtype:
                moved.append(f"{name} ({base[name].dtype} -> {saved[name].dtype})")
            elif not torch.equal(saved[name], base[name]):
                diff = (saved[name].float() - base[name].float()).abs().max().item()
                moved.append(f"{name} (max |change| {diff:.3g})")
        if moved:
            raise OracleFailure(seed, f"{label}: {len(moved)} of {len(frozen)} tensors outside trainable_parameters "
                                      f"{patterns} differ from the base, e.g. {moved[0]}: expected every frozen tensor "
                                      f"byte-identical to the base (they trained)")
        still = [n for n in trainable if torch.equal(saved[n], base[n])]
        if still:
            raise OracleFailure(seed, f"{label}: {len(still)} of {len(trainable)} tensors named by "
                                      f"trainable_parameters {patterns} are still the base's, e.g. {still[0]}: "
                                      f"expected every one to have trained (it was frozen)")
        shapes = _saved_optimizer_shapes(directory)
        want = sorted(tuple(base[n].shape) for n in trainable)
        if shapes is not None and shapes != want:
            raise OracleFailure(seed, f"{label}/optimizer.pt holds state for {len(shapes)} tensors, the trainable set "
                                      f"is {len(want)} (shapes {_shape_counts(want)}; saved {_shape_counts(shapes)}): "
                                      f"expected optimizer state for exactly the trainable tensors, which a resume "
                                      f"restores")


def _shape_counts(shapes: list[tuple[int, ...]]) -> str:
    from collections import Counter

    return ", ".join(f"{n}x{list(s)}" for s, n in sorted(Counter(shapes).items()))
