"""Mutants of argument handling: saved argument files that beat the command line, a run that trains with other values
than it reports, an adapter config that names another base or records another alpha, a LoRA that misses the fused
experts of a mixture of experts.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..adapter import ResolvedArgs, Source
from ..reference import ReferenceAdapter
from ..reference.adapter import RunContext
from ..reference import args as argres


def _saved_differences(model_dir, resume_dir, keys, resolved: ResolvedArgs) -> tuple[Source | None, dict[str, Any]]:
    """The highest saved args.json that applies (its source), and its values for ``keys`` that differ from the
    resolution: what a framework that force-loads that file would change."""
    layers = argres.discover_layers(Path(model_dir), Path(resume_dir) if resume_dir else None)
    if not layers:
        return None, {}
    source, path = layers[0]
    saved = argres.read_args_file(path)
    return source, {k: saved[k] for k in keys
                    if saved.get(k) is not None and not argres.same_value(saved[k], resolved.values.get(k))}


class ArgsJsonBeatsCli(ReferenceAdapter):
    """Args precedence (seeds 000, 001) — ms-swift ``load_args``: the first saved args.json found (checkpoint, adapter
    or model dir) force-loads its tuner keys over the command line, silently (ms-swift #3168)."""

    name = "mutant:args-json-beats-cli"
    # also: a forced saved lora becomes the base of LoRA-on-checkpoint runs, a forced saved quantisation hides the
    # requested one on resume (no mismatch error), and full DPO on a LoRA SFT output trains (and saves) LoRA
    fails = ("test_args_precedence", "test_grpo_full_save", "test_full_ft_as_lora_base", "test_quantized_lora_resume",
             "test_reference_model")
    FORCE_LOAD = ("train_type", "quantization", "lora_rank", "lora_alpha", "target_modules")

    def resolve_args(self, cli: Mapping[str, Any], model_dir: Path, resume_dir: Path | None = None) -> ResolvedArgs:
        resolved = super().resolve_args(cli, model_dir, resume_dir)
        if not resolved.values.get("load_args", True):
            return resolved
        source, beaten = _saved_differences(model_dir, resume_dir, self.FORCE_LOAD, resolved)
        if not beaten:  # the saved file agrees with the resolution: nothing is beaten, the answer is the same
            return resolved
        values, sources = dict(resolved.values), dict(resolved.sources)
        for key, value in beaten.items():
            values[key], sources[key] = value, Source(source.kind, source.path)
        return ResolvedArgs(values=values, sources=sources, warnings=())  # silently


class TrainsWithSavedArgs(ReferenceAdapter):
    """Args precedence, end to end — the resolution reports the command line (``resolve_args``, its log lines, no
    warning owed), but the run trains with the saved args.json's learning rate and LoRA shape: the saved file is
    re-applied after the resolution is logged (pytorch/examples #816 "resume will override learning rate on command
    line"; ms-swift #3168's ``load_args`` applied over the parsed command line)."""

    name = "mutant:trains-with-saved-args"
    fails = ("test_args_precedence",)
    REAPPLIED = ("learning_rate", "lora_rank", "lora_alpha")

    def effective_args(self, spec, resolved: ResolvedArgs) -> ResolvedArgs:
        _, changed = _saved_differences(spec.model_dir, spec.resume_from, self.REAPPLIED, resolved)
        if not changed:
            return resolved
        return ResolvedArgs(values={**resolved.values, **changed}, sources=resolved.sources,
                            warnings=resolved.warnings)


class AdapterNamesAnotherBase(ReferenceAdapter):
    """LoRA base (seed 003) — LoRA trained on a fine-tuned checkpoint, but adapter_config.json names the model *that*
    checkpoint was fine-tuned from (the hub id the framework carried along), so ``PeftModel.from_pretrained`` puts the
    adapter on the wrong weights without an error (UniPixel #9 "checkpoints record base_model_path as Qwen instead of
    UniPixel when finetuning from UniPixel-7B"; llm-foundry PR #1407, adapters saved without the right base name)."""

    name = "mutant:adapter-names-another-base"
    # the LoRA-on-a-full-output runs: the named base's weights (seed 003) and the re-evaluation through it (seed 000)
    fails = ("test_args_precedence", "test_full_ft_as_lora_base")

    def name_finetuned_base(self, ctx: RunContext, directory: Path) -> None:
        import json

        super().name_finetuned_base(ctx, directory)
        origin_args = Path(ctx.base_dir) / "args.json"
        origin = json.loads(origin_args.read_text(encoding="utf-8")).get("model_dir") if origin_args.is_file() else None
        if origin:
            config_file = Path(directory) / "adapter_config.json"
            config = json.loads(config_file.read_text(encoding="utf-8"))
            config["base_model_name_or_path"] = origin
            config_file.write_text(json.dumps(config, indent=2), encoding="utf-8")


class SavedAlphaDiffersFromTrained(ReferenceAdapter):
    """Args precedence, end to end — the saved adapter_config.json records ``lora_alpha = r`` (scaling 1) whatever alpha
    the run trained with, so a reload applies the LoRA update at another strength (diffusers #6087 "doesn't save and
    load the LoraConfig, resulting wrong lora_alpha during inference"; mlx-examples #622)."""

    name = "mutant:saved-alpha-differs-from-trained"
    # the saved config (seed 000) and every LoRA reload that re-evaluates (embeddings); merge parity compares the
    # merged model with the same mis-scaled reload, so it cannot see it
    fails = ("test_args_precedence", "test_embeddings_saved", "test_moe_lora")

    def finalize_adapter(self, ctx: RunContext, directory: Path) -> None:
        import json

        super().finalize_adapter(ctx, directory)
        config_file = Path(directory) / "adapter_config.json"
        config = json.loads(config_file.read_text(encoding="utf-8"))
        if config.get("lora_alpha") != config.get("r"):
            config["lora_alpha"] = config.get("r")
            config_file.write_text(json.dumps(config, indent=2), encoding="utf-8")


class LoraSkipsFusedExperts(ReferenceAdapter):
    """LoRA on a mixture of experts (huggingface/peft #3009, unslothai/unsloth PR #6936) — ``all-linear`` resolved as a
    search for ``nn.Linear`` modules, as PEFT did before it knew transformers 5's fused experts: the 3-D expert
    parameters and the router are no ``nn.Linear``, so the adapter trains attention only while the run reports LoRA on
    ``all-linear``. Silent: the loss falls, every save reloads to its logged evaluation."""

    name = "mutant:lora-skips-fused-experts"
    fails = ("test_moe_lora",)

    def expert_lora(self, ctx: RunContext, model, config):
        import copy

        import torch

        config = copy.deepcopy(config)
        config.target_modules = sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                                        if isinstance(module, torch.nn.Linear) and not name.endswith("lm_head")})
        config.target_parameters = None
        return config
