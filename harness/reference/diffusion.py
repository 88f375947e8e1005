"""The reference's diffusion LoRA trainer (``RunSpec.method="diffusion"``): a tiny UNet, optionally
quanto-quantised and frozen, LoRA on its attention projections, MSE noise prediction — the loop
SimpleTuner runs, small enough for the default suite.

Checkpoints (``checkpoint-N/``, staged and renamed into place) hold ``pytorch_lora_weights.safetensors``
(diffusers' format, as SimpleTuner saves), ``optimizer.pt`` and ``trainer_state.json`` (global step
and log history). Resume goes through :meth:`ReferenceAdapter.load_diffusion_lora`: SimpleTuner's
own call chain, then a strict check that every LoRA tensor arrived.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..adapter import RunResult
from ..errors import CheckpointError, ConfigError
from ..layout import list_checkpoints, read_json, safe_torch_load
from .io import atomic_replace_dir

if TYPE_CHECKING:  # pragma: no cover
    from .adapter import ReferenceAdapter, RunContext

__all__ = ["train", "check_lora_loaded"]


def check_lora_loaded(unet, directory: Path) -> int:
    """Every LoRA parameter of ``unet`` equals the saved tensor of the same name (diffusers' or PEFT's
    key format, compared in PEFT's); returns the count."""
    import torch
    from diffusers.utils import convert_unet_state_dict_to_peft
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import load_file

    from ..diffusion import LORA_WEIGHTS

    saved = load_file(str(Path(directory) / LORA_WEIGHTS))
    saved = convert_unet_state_dict_to_peft({k.replace("unet.", "", 1): v for k, v in saved.items()})
    have = get_peft_model_state_dict(unet)
    if set(have) != set(saved):
        raise CheckpointError(directory, f"LoRA keys differ after loading: {sorted(set(have) ^ set(saved))[:3]}",
                              LORA_WEIGHTS)
    bad = [k for k in saved if not torch.equal(have[k].detach().cpu(), saved[k].to(have[k].dtype))]
    if bad:
        raise CheckpointError(directory, f"{len(bad)} LoRA tensors differ from the file after loading, e.g. {bad[0]}",
                              LORA_WEIGHTS)
    return len(saved)


def _stage(unet, optimizer, state: dict[str, Any], staging: Path, adapter: "ReferenceAdapter", ctx: "RunContext",
           *, final: bool) -> Path:
    """Write a complete save into ``staging`` (LoRA, optimizer unless final, trainer_state, args.json)."""
    import torch

    from ..diffusion import save_lora

    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    save_lora(unet, staging)
    if not final:
        torch.save(optimizer.state_dict(), staging / "optimizer.pt")
    (staging / "trainer_state.json").write_text(json.dumps(state, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    adapter.finalize_checkpoint(ctx, staging, final=final)
    return staging


def train(adapter: "ReferenceAdapter", ctx: "RunContext") -> RunResult:
    """Train (or resume from the already vetted ``ctx.resume``) and save; see the module docstring."""
    import torch

    spec, values, resume = ctx.spec, ctx.values, ctx.resume
    from .. import diffusion

    output_dir = Path(spec.output_dir)
    if values["train_type"] != "lora":
        raise ConfigError(None, "train_type", "'lora' for the diffusion path", values["train_type"])
    output_dir.mkdir(parents=True, exist_ok=True)
    seed = values["seed"]
    unet = diffusion.load_unet(Path(spec.model_dir), values["quantization"], spec.device)
    unet.requires_grad_(False)
    diffusion.add_lora(unet, values["lora_rank"], values["lora_alpha"], seed)
    params = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=values["learning_rate"], weight_decay=0.0)
    start, history = 0, []
    if resume is not None:
        adapter.load_diffusion_lora(ctx, resume, unet)
        if (Path(resume) / "optimizer.pt").is_file():
            optimizer.load_state_dict(safe_torch_load(Path(resume) / "optimizer.pt"))
        state = read_json(Path(resume) / "trainer_state.json")
        start, history = int(state["global_step"]), list(state.get("log_history", []))
    unet.train()
    save_steps = values["save_steps"] or 0
    for step in range(start + 1, values["max_steps"] + 1):
        latents, noise, timesteps, text = diffusion.batch(seed, step, values["per_device_train_batch_size"],
                                                          spec.device)
        pred = unet(latents + noise * (timesteps.float() / 1000).view(-1, 1, 1, 1), timesteps,
                    encoder_hidden_states=text).sample
        loss = torch.nn.functional.mse_loss(pred, noise)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append({"step": step, "loss": float(loss.item())})
        if save_steps and step % save_steps == 0:
            name = f"checkpoint-{step}"
            staging = _stage(unet, optimizer, {"global_step": step, "log_history": history},
                             output_dir / f".staging-{name}", adapter, ctx, final=False)
            atomic_replace_dir(staging, output_dir / name)
    # the final output: staged, then moved into output_dir file by file
    staging = _stage(unet, optimizer, {"global_step": values["max_steps"], "log_history": history},
                     output_dir / ".staging-final", adapter, ctx, final=True)
    for item in staging.iterdir():
        os.replace(item, output_dir / item.name)
    staging.rmdir()
    return RunResult(output_dir=output_dir, checkpoints=tuple(list_checkpoints(output_dir)), final_dir=output_dir,
                     log_history=tuple(history), resolved=None)
