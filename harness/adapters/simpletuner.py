"""SimpleTuner (``pip install ft-harness[simpletuner]``, Python >= 3.12), for the diffusion LoRA path.

Each run is what a SimpleTuner user does: a working directory holding ``config/config.json`` and a
multidatabackend json (a local image folder with ``.txt`` captions and a text-embed cache), launched
as ``python -m simpletuner.train`` in a subprocess. The RunSpec maps to ``model_family sd1x,
model_type lora, base_model_precision int8-quanto|int4-quanto|no_change, quantize_via cpu``,
``max_train_steps``, ``checkpoint_step_interval``, ``learning_rate``, ``lora_rank``/``lora_alpha``,
``train_batch_size``, ``seed``. ``model_dir`` is a whole SD1.x pipeline directory
(:func:`harness.diffusion.build_tiny_sd_pipeline`).

Resuming: SimpleTuner only resumes from ``<output_dir>/<checkpoint name>`` (a path is cut to its
base name, and a checkpoint that is not there silently starts a new run), so the adapter copies the
requested checkpoint into ``output_dir`` first and passes its name.

Losses: SimpleTuner reports ``train_loss`` through ``accelerator.log`` (to its trackers); the launcher
records those calls verbatim, and the adapter writes them as ``trainer_state.json``'s log history in
``output_dir`` — the file the oracles read.

Fixes the launcher applies on CPU (each an upstream finding, see docs/frameworks.md):

1. SimpleTuner builds its SD1.x text-to-image pipeline without ``safety_checker``/``feature_extractor``
   while caching text embeds (``TypeError: StableDiffusionPipeline.__init__() missing 2 required
   positional arguments``): they default to ``None``.
2. ``collate`` calls ``.pin_memory()``, which needs CUDA: a no-op without CUDA.
3. Not SimpleTuner's: on these machines oneDNN's AMX bf16 kernels die with SIGILL (the CPU advertises
   AMX); ``ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16`` keeps bf16 matmuls (the text encoder runs in bf16) off AMX.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..adapter import Adapter, RunResult, RunSpec
from ..errors import ConfigError
from ..runtime import library_versions
from ..kit import check_options, checkpoints_in, collect_result

__all__ = ["SimpleTunerAdapter", "OPTIONS", "build_config", "PRECISION", "LAUNCHER"]

OPTIONS = {"timeout_s": "seconds one SimpleTuner run may take (default 900)"}

#: our quantisation names -> SimpleTuner's base_model_precision
PRECISION = {None: "no_change", "quanto-int8": "int8-quanto", "quanto-int4": "int4-quanto"}

LAUNCHER = r'''
import functools, json, os, runpy

import torch

# fix 1: SimpleTuner's SD1.x pipeline is built without safety_checker / feature_extractor
from simpletuner.helpers.models.sd1x import pipeline as _sd1x

for _cls in vars(_sd1x).values():
    _init = getattr(_cls, "__init__", None)
    if isinstance(_cls, type) and "safety_checker" in getattr(getattr(_init, "__code__", None), "co_varnames", ()):
        @functools.wraps(_init)
        def _patched(self, *a, __orig=_init, **k):
            k.setdefault("safety_checker", None)
            k.setdefault("feature_extractor", None)
            return __orig(self, *a, **k)
        _cls.__init__ = _patched

# fix 2: collate pins memory, which needs CUDA
if not torch.cuda.is_available():
    torch.Tensor.pin_memory = lambda self, *a, **k: self

# record what SimpleTuner reports to its trackers (train_loss per step)
import accelerate

_log = accelerate.Accelerator.log
_path = os.environ["FT_SIMPLETUNER_LOG"]

def _record(self, values, step=None, log_kwargs=None):
    row = {"step": step}
    row.update({k: float(v) for k, v in values.items() if isinstance(v, (int, float)) or hasattr(v, "item")})
    with open(_path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(row) + "\n")
    return _log(self, values, step=step, log_kwargs=log_kwargs or {})

accelerate.Accelerator.log = _record
runpy.run_module("simpletuner.train", run_name="__main__")
'''


def build_config(spec: RunSpec, values: Mapping[str, Any], workdir: Path, resume_name: str | None) -> dict[str, Any]:
    """SimpleTuner's ``config/config.json`` for one RunSpec."""
    quant = values.get("quantization")
    if quant not in PRECISION:
        raise ConfigError(None, "quantization", f"one of {sorted(q for q in PRECISION if q)} or none "
                                                f"(SimpleTuner quantises with optimum-quanto here)", quant)
    cfg: dict[str, Any] = {
        "model_family": "sd1x", "model_type": "lora", "pretrained_model_name_or_path": str(spec.model_dir),
        "base_model_precision": PRECISION[quant], "quantize_via": "cpu" if spec.device == "cpu" else "accelerator",
        "lora_rank": values["lora_rank"], "lora_alpha": values["lora_alpha"],
        "data_backend_config": str(workdir / "config" / "multidatabackend.json"),
        "output_dir": str(spec.output_dir), "max_train_steps": values["max_steps"], "num_train_epochs": 0,
        "checkpoint_step_interval": values.get("save_steps") or values["max_steps"],
        "checkpoints_total_limit": values.get("save_total_limit") or 100,
        "learning_rate": values["learning_rate"], "lr_scheduler": "constant", "lr_warmup_steps": 0,
        "train_batch_size": values["per_device_train_batch_size"], "seed": values["seed"],
        "resolution": 64, "resolution_type": "pixel", "optimizer": "optimi-adamw",
        "mixed_precision": "no" if spec.device == "cpu" else "bf16", "report_to": "none",
        "validation_disable": True, "validation_steps": 0, "push_to_hub": False, "gradient_checkpointing": False,
        "use_ema": False, "caption_dropout_probability": 0.0, "vae_batch_size": 1,
    }
    if resume_name:
        cfg["resume_from_checkpoint"] = resume_name
    return cfg


def backend_config(workdir: Path, images: Path) -> list[dict[str, Any]]:
    return [
        {"id": "tiny", "type": "local", "instance_data_dir": str(images), "caption_strategy": "textfile",
         "crop": False, "resolution": 64, "resolution_type": "pixel", "minimum_image_size": 32,
         "cache_dir_vae": str(workdir / "cache" / "vae"), "repeats": 0},
        {"id": "text-embeds", "dataset_type": "text_embeds", "default": True, "type": "local",
         "cache_dir": str(workdir / "cache" / "text")},
    ]


def write_images(directory: Path, seed: int, n: int = 4) -> Path:
    """``n`` deterministic 64x64 RGB images with one-line captions (written once; a dataset stays where it
    is between runs, as a user's does: SimpleTuner's saved sampler state names the image files)."""
    import numpy as np
    from PIL import Image

    if (directory / f"img{n - 1}.txt").is_file():
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(directory / f"img{i}.png")
        (directory / f"img{i}.txt").write_text(f"a photo number {i}", encoding="utf-8")
    return directory


def _tail(text: str, lines: int = 25) -> str:
    clean = re.sub(r"\x1b\[[0-9;]*m", "", text)
    return "\n".join(clean.splitlines()[-lines:])


class SimpleTunerAdapter(Adapter):
    """SimpleTuner 4.x, ``python -m simpletuner.train`` per run, for ``method="diffusion"``."""

    name = "simpletuner"
    capabilities = frozenset({"diffusion", "lora", "resume", "quanto-int8", "quanto-int4", "gpu"})

    def __init__(self, **options: str):
        check_options("simpletuner", options, OPTIONS)
        self.timeout_s = float(options.get("timeout_s", 900))
        from importlib.metadata import version

        self.version = version("simpletuner")
        self.name = f"simpletuner {self.version}"

    def versions(self) -> dict[str, str]:
        return library_versions("simpletuner", "diffusers", "peft", "optimum-quanto", "torch")

    def train(self, spec: RunSpec) -> RunResult:
        if (spec.method or "sft") != "diffusion":
            raise ConfigError(None, "method", "'diffusion' (the SimpleTuner adapter trains diffusion LoRA only)",
                              spec.method)
        resolved = self.resolve_args(spec.cli_args(), spec.model_dir)
        values = dict(resolved.values)
        output_dir = Path(spec.output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        resume_name = None
        if spec.resume_from == "latest":
            resume_name = "latest"
        elif spec.resume_from is not None:
            source = Path(spec.resume_from)
            resume_name = source.name
            if source.resolve() != (output_dir / source.name).resolve():
                shutil.copytree(source, output_dir / source.name, dirs_exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="ft-simpletuner-") as tmp:
            work = Path(tmp)
            images = write_images(Path(tempfile.gettempdir()) / "ft-harness-simpletuner-images", seed=0)
            (work / "config").mkdir()
            (work / "config" / "multidatabackend.json").write_text(json.dumps(backend_config(work, images),
                                                                              indent=2))
            (work / "config" / "config.json").write_text(json.dumps(build_config(spec, values, work, resume_name),
                                                                    indent=2))
            log_file = work / "tracker.jsonl"
            env = dict(os.environ, FT_SIMPLETUNER_LOG=str(log_file), HF_HUB_OFFLINE="1", WANDB_MODE="disabled")
            if spec.device == "cpu":
                env.setdefault("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")
                env.setdefault("CUDA_VISIBLE_DEVICES", "")
            proc = subprocess.run([sys.executable, "-c", LAUNCHER], cwd=work, env=env, capture_output=True,
                                  text=True, timeout=self.timeout_s)
            if proc.returncode != 0:
                raise RuntimeError(f"python -m simpletuner.train exited with {proc.returncode} (config "
                                   f"{work / 'config' / 'config.json'}):\n{_tail(proc.stdout + proc.stderr)}")
            rows = [json.loads(line) for line in log_file.read_text().splitlines()] if log_file.is_file() else []
        history = [{"step": int(r["step"]), "loss": r["train_loss"]} for r in rows
                   if "train_loss" in r and r.get("step") is not None]
        state = {"global_step": values["max_steps"], "log_history": history,
                 "note": "train_loss as SimpleTuner reported it to accelerator.log, recorded by ft-harness"}
        (output_dir / "trainer_state.json").write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")
        if not checkpoints_in(output_dir) and not (output_dir / "pytorch_lora_weights.safetensors").is_file():
            raise RuntimeError(f"SimpleTuner left no LoRA in {output_dir}")
        return collect_result(spec, output_dir, resolved)
