"""The diffusion LoRA path (seed 002 as it happened: SimpleTuner #659, diffusers #9108).

* :func:`build_tiny_unet` — a tiny SD1.x-shaped ``UNet2DConditionModel`` (block_out (32, 64), cross
  attention dim 32, ~0.8M parameters) and a DDPM scheduler config, saved with ``save_pretrained``
  under ``<dir>/unet`` and ``<dir>/scheduler``, built locally.
* :func:`load_unet` — the UNet, quantised with optimum-quanto ``quantize(unet, weights=qint8)`` +
  ``freeze`` (what SimpleTuner's ``base_model_precision int8-quanto`` does), or with bitsandbytes
  through diffusers' ``BitsAndBytesConfig`` (CUDA only).
* :func:`load_lora_like_simpletuner` — the resume call chain SimpleTuner makes:
  ``lora_state_dict(dir)`` -> strip ``unet.`` -> ``convert_unet_state_dict_to_peft`` ->
  ``peft.set_peft_model_state_dict(unet, sd, adapter_name="default")``. With optimum-quanto 0.2.4
  this raises ``KeyError: '<name>.weight._data'`` from quanto's ``_load_from_state_dict``.
* :func:`probe_output` — the denoiser's output on a fixed input (to compare two loaded models).

Needs ``diffusers`` (a default dependency of ft-harness).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .spec import QUANTIZATIONS

__all__ = ["LORA_WEIGHTS", "LORA_TARGETS", "build_tiny_unet", "build_tiny_sd_pipeline", "load_unet", "quantize_unet", "add_lora", "lora_layout",
           "lora_state", "save_lora", "load_lora_like_simpletuner", "probe_output", "batch"]

#: the file SimpleTuner / diffusers write a LoRA into
LORA_WEIGHTS = "pytorch_lora_weights.safetensors"
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
LATENT = 8  # latent height/width
CROSS_DIM = 32
TOKENS = 4


def build_tiny_unet(root: str | Path, seed: int = 0) -> Path:
    """Save a tiny UNet + DDPM scheduler under ``root``; returns ``root``."""
    import torch
    from diffusers import DDPMScheduler, UNet2DConditionModel

    root = Path(root)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=LATENT, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=CROSS_DIM, attention_head_dim=8, norm_num_groups=32)
    unet.save_pretrained(root / "unet")
    DDPMScheduler(num_train_timesteps=1000, clip_sample=False).save_pretrained(root / "scheduler")
    return root


def build_tiny_sd_pipeline(root: str | Path, seed: int = 0) -> Path:
    """A whole tiny SD1.x pipeline directory (what SimpleTuner's ``sd1x`` family loads): the UNet and
    scheduler of :func:`build_tiny_unet`, a tiny ``AutoencoderKL``, a 2-layer ``CLIPTextModel`` (hidden
    32) and a character-level ``CLIPTokenizer``, plus ``model_index.json``. Built locally."""
    import json

    import torch
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    root = build_tiny_unet(root, seed)
    torch.manual_seed(seed)
    AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
                  up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), block_out_channels=(32, 32),
                  latent_channels=4, layers_per_block=1, norm_num_groups=32, sample_size=16).save_pretrained(root / "vae")
    chars = "abcdefghijklmnopqrstuvwxyz0123456789"
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in chars:
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    tok_dir = root / "tokenizer"
    tok_dir.mkdir(parents=True, exist_ok=True)
    (tok_dir / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (tok_dir / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    tok = CLIPTokenizer(str(tok_dir / "vocab.json"), str(tok_dir / "merges.txt"), model_max_length=77,
                        pad_token="<|endoftext|>")
    tok.save_pretrained(str(tok_dir))
    CLIPTextModel(CLIPTextConfig(vocab_size=len(vocab), hidden_size=CROSS_DIM, intermediate_size=64,
                                 num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=77,
                                 bos_token_id=0, eos_token_id=1, pad_token_id=1)).save_pretrained(root / "text_encoder")
    index = {"_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.30.0",
             "scheduler": ["diffusers", "DDPMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
             "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
             "vae": ["diffusers", "AutoencoderKL"], "safety_checker": [None, None],
             "feature_extractor": [None, None], "requires_safety_checker": False}
    (root / "model_index.json").write_text(json.dumps(index, indent=2), encoding="utf-8")
    return root


def load_unet(root: Path, quantization: str | None = None, device: str = "cpu"):
    """The tiny UNet, on ``device``, quantised as asked: optimum-quanto after loading (``quantize`` +
    ``freeze``, SimpleTuner's ``int8-quanto``), or bitsandbytes at load time through diffusers'
    ``BitsAndBytesConfig`` (diffusers quantises with bitsandbytes on CUDA only)."""
    import torch
    from diffusers import UNet2DConditionModel

    kwargs: dict[str, Any] = {"torch_dtype": torch.float32}
    bnb = quantization in QUANTIZATIONS and QUANTIZATIONS[quantization].library == "bitsandbytes"
    if bnb:
        from diffusers import BitsAndBytesConfig

        kwargs["quantization_config"] = (
            BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)
            if quantization == "nf4" else BitsAndBytesConfig(load_in_8bit=True))
    unet = UNet2DConditionModel.from_pretrained(str(Path(root) / "unet"), **kwargs)
    if bnb:
        return unet
    unet.to(device)
    return quantize_unet(unet, quantization)


def quantize_unet(unet, quantization: str | None):
    """optimum-quanto weight quantisation of the denoiser, frozen, as SimpleTuner does (other
    quantisations are applied at load time by :func:`load_unet`)."""
    if quantization is None:
        return unet
    kind = QUANTIZATIONS.get(quantization)
    if kind is None:
        from .errors import ConfigError

        raise ConfigError(None, "quantization", f"none or one of {sorted(QUANTIZATIONS)} for the diffusion path",
                          quantization)
    if kind.library != "optimum-quanto":
        return unet
    from optimum.quanto import freeze, qint4, qint8, quantize

    quantize(unet, weights={"int8": qint8, "int4": qint4}[kind.weights])
    freeze(unet)
    return unet


def add_lora(unet, r: int, alpha: float, seed: int, targets: list[str] | None = None) -> None:
    import torch
    from peft import LoraConfig

    torch.manual_seed(seed)
    unet.add_adapter(LoraConfig(r=r, lora_alpha=alpha, init_lora_weights="gaussian",
                                target_modules=targets or LORA_TARGETS))


def lora_layout(directory: Path) -> tuple[list[str], int]:
    """(module names, rank) of a saved diffusers-format LoRA, read from the safetensors header."""
    from .layout import read_safetensors_header

    header = read_safetensors_header(Path(directory) / LORA_WEIGHTS)
    modules, rank = set(), 0
    for key, meta in header.items():
        for marker in (".lora.down.weight", ".lora_A.weight"):
            if key.endswith(marker):
                modules.add(key[: -len(marker)].removeprefix("unet."))
                rank = max(rank, int(meta["shape"][0]))
    return sorted(modules), rank


def lora_state(unet) -> dict[str, Any]:
    """The LoRA tensors in diffusers' save format (``unet.``-less keys, ``lora.down``/``lora.up``)."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    return convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))


def save_lora(unet, directory: Path) -> Path:
    """``StableDiffusionLoraLoaderMixin.save_lora_weights``: what SimpleTuner writes per checkpoint."""
    from diffusers.loaders import StableDiffusionLoraLoaderMixin

    StableDiffusionLoraLoaderMixin.save_lora_weights(str(directory), unet_lora_layers=lora_state(unet),
                                                     safe_serialization=True)
    return Path(directory) / LORA_WEIGHTS


def load_lora_like_simpletuner(unet, directory: Path):
    """SimpleTuner's ``_load_lora``: returns PEFT's incompatible-keys result (unexpected keys matter)."""
    from diffusers.loaders import StableDiffusionLoraLoaderMixin
    from diffusers.utils import convert_unet_state_dict_to_peft
    from peft.utils import set_peft_model_state_dict

    state, _ = StableDiffusionLoraLoaderMixin.lora_state_dict(str(directory))
    unet_state = {k.replace("unet.", "", 1): v for k, v in state.items() if k.startswith("unet.")}
    unet_state = convert_unet_state_dict_to_peft(unet_state)
    return set_peft_model_state_dict(unet, unet_state, adapter_name="default")


def batch(seed: int, step: int, size: int = 2, device: str = "cpu"):
    """The training batch of ``step``: latents, noise, timesteps, text states — a function of the step only,
    so the data position is exact after a resume."""
    import torch

    g = torch.Generator().manual_seed(seed * 100_003 + step)
    latents = torch.randn(size, 4, LATENT, LATENT, generator=g)
    noise = torch.randn(size, 4, LATENT, LATENT, generator=g)
    timesteps = torch.randint(0, 1000, (size,), generator=g)
    text = torch.randn(size, TOKENS, CROSS_DIM, generator=g)
    return tuple(t.to(device) for t in (latents, noise, timesteps, text))


def probe_output(unet, device: str = "cpu"):
    """Denoiser output on a fixed input (no grad), on the CPU."""
    import torch

    latents, _, timesteps, text = batch(seed=12345, step=0, size=1, device=device)
    with torch.no_grad():
        return unet(latents, timesteps, encoder_hidden_states=text).sample.float().cpu()
