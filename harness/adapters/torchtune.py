"""torchtune (``pip install ft-harness[torchtune]``: 0.6.1 with torchao 0.11.0), driven as its users drive it: a recipe
config for ``tune run lora_finetune_single_device`` / ``full_finetune_single_device`` (here the recipe class run on
that config, as ``recipe_main`` runs it, in a forked child), in torchtune's own layout.

Nothing of HF Trainer's layout is faked; the contract members say where torchtune keeps things:

* checkpoints are ``output_dir/epoch_E/`` (:meth:`TorchtuneAdapter.checkpoints` maps each to its optimizer step,
  ``(E + 1) * max_steps_per_epoch``, read from the ``torchtune_config.yaml`` torchtune writes into the output dir);
  torchtune saves once per epoch, never mid-epoch, so a save cadence of ``save_steps`` is written as epochs of
  ``save_steps`` steps (``max_steps_per_epoch``), which is how a torchtune user asks for it;
* the log is the ``DiskLogger`` file ``output_dir/logs/log.txt`` (``Step N | loss:... lr:... grad_norm:...``), ``lr``
  being the harness's ``learning_rate``;
* the training state is one ``recipe_state/recipe_state.pt`` per output dir (optimizer state, epoch counter, seed,
  dataloader state; no RNG state, no scheduler state: the schedule is rebuilt from the step), so the only resumable
  checkpoint is the output dir's newest (``resume_points = "newest"``); ``resume_from`` a given epoch of the same
  output dir is written as torchtune's ``adapter_checkpoint`` / ``checkpoint_files`` for that epoch; a LoRA resume
  reads ``adapter_model.pt``, not the ``adapter_model.safetensors`` beside it (``resume_files["weights"]``);
* torchtune 0.6.1's single-device recipes have no validation: no evaluation metric, no best checkpoint.

What the scenarios assume is written into every config: AdamW (torch's, weight decay 0), gradient clipping at 1.0, the
tokenizer's own BOS and no EOS (``add_eos: false``), the seed, fp32 on CPU. The learning-rate schedule is torchtune's
only one, ``get_cosine_schedule_with_warmup``, where it can be: ``constant`` is it with ``num_cycles: 0`` (a factor of
exactly 1 after the warm-up), ``cosine`` with 0.5; for ``linear`` the config names transformers'
``get_linear_schedule_with_warmup``, whose signature is the one torchtune's recipes instantiate a scheduler with (its
config system takes any callable as ``_component_``), as a torchtune user who needs a linear decay writes it.
torchtune 0.6.1 has no ModelTokenizer for a ``tokenizer.json``: :func:`tokenizer_json` adds to its
``HuggingFaceBaseTokenizer`` the two attributes its text dataset and collator read. The model directory is used as
``tune download`` leaves one: a copy with ``original_repo_id.json`` naming where it came from (torchtune writes that
name as the saved adapter's ``base_model_name_or_path``).
"""

from __future__ import annotations

import atexit
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import yaml  # (PyYAML: a dependency of transformers and omegaconf)

from ..adapter import QuantKind, RunSpec
from ..kit import ConfigFileAdapter, refuse

__all__ = ["TorchtuneAdapter", "build_config", "read_log", "epochs", "weight_files", "tokenizer_json"]

RECIPES = {"lora": "lora_finetune_single_device", "full": "full_finetune_single_device"}
#: what every run's config holds, whatever the scenario typed (the scenarios' assumptions, CPU fp32)
FIXED = {"save_adapter_weights_only": False, "shuffle": True, "clip_grad_norm": 1.0, "optimizer_in_bwd": False,
         "loss": {"_component_": "torchtune.modules.loss.CEWithChunkedOutputLoss"}, "log_every_n_steps": 1,
         "compile": False, "enable_activation_checkpointing": False}
COSINE = "torchtune.training.lr_schedulers.get_cosine_schedule_with_warmup"
LORA_KEYS = ("lora_rank", "lora_alpha", "lora_dropout")  # the same names in the harness and in torchtune's builder
#: torchtune's Llama 3 builder argument -> the HF ``config.json`` key it takes its value from
DIMS = {"vocab_size": "vocab_size", "num_layers": "num_hidden_layers", "num_heads": "num_attention_heads",
        "num_kv_heads": "num_key_value_heads", "embed_dim": "hidden_size", "intermediate_dim": "intermediate_size",
        "max_seq_len": "max_position_embeddings", "norm_eps": "rms_norm_eps"}


def tokenizer_json(path: str, max_seq_len: int | None = 64):
    """A ``tokenizer.json`` as torchtune's text dataset and collator use a tokenizer: HuggingFaceBaseTokenizer's
    ``encode``, plus the ``max_seq_len`` (truncation) and ``pad_id`` (padding) they read."""
    from torchtune.modules.transforms.tokenizers import HuggingFaceBaseTokenizer

    tok = HuggingFaceBaseTokenizer(path, tokenizer_config_json_path=str(Path(path).parent / "tokenizer_config.json"))
    tok.max_seq_len, tok.pad_id = max_seq_len, tok.tokenizer.token_to_id(tok.config["pad_token"])
    return tok


def weight_files(model_dir: Path) -> list[str]:
    """The model's weight files, as a user lists them in ``checkpoint_files``: every ``*.safetensors`` (shards
    included) but a LoRA adapter's (a torchtune LoRA save holds the merged model beside its adapter); none:
    the name an HF model's config has, so torchtune says it is missing."""
    found = sorted(p.name for p in Path(model_dir).glob("*.safetensors") if not p.name.startswith("adapter_model"))
    return found or ["model.safetensors"]


def epochs(output_dir: Path) -> dict[int, Path]:
    """The run's ``epoch_E`` directories, E -> directory, in epoch order."""
    return dict(sorted((int(d.name[6:]), d) for d in Path(output_dir).glob("epoch_*") if d.name[6:].isdigit()))


def _model(model_dir: Path, lora: dict[str, Any] | None) -> dict[str, Any]:
    """The recipe's ``model`` section: torchtune's Llama 3 builder with the dimensions of ``config.json``."""
    cfg = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    rope = cfg.get("rope_theta") or (cfg.get("rope_parameters") or {}).get("rope_theta", 10000.0)
    return {"_component_": f"torchtune.models.llama3.{'lora_llama3' if lora else 'llama3'}", "rope_base": rope,
            **{ours: cfg[theirs] for ours, theirs in DIMS.items()}, **(lora or {})}


def build_config(spec: RunSpec, values: dict[str, Any], data: dict[str, Path], checkpoint_dir: Path) -> dict[str, Any]:
    """The recipe config a torchtune user writes for this run (``values``: the command line over the task defaults)."""
    lora, steps, out = values["train_type"] == "lora", values["max_steps"], Path(spec.output_dir)
    save, schedule, warmup = (values.get("save_steps") or steps, values["lr_scheduler_type"],
                              values.get("warmup_steps") or 0)
    if steps % save:
        refuse("torchtune", "save_steps", save, f"it saves once per epoch: epochs of {save} steps do not make {steps}")
    if values.get("eval_steps"):
        refuse("torchtune", "eval_steps", values["eval_steps"], "0.6.1's single-device recipes have no validation")
    if schedule not in ("constant", "cosine", "linear") or (schedule == "constant" and warmup):
        refuse("torchtune", "lr_scheduler_type", schedule if not warmup else f"{schedule} with warm-up",
               "its one schedule is get_cosine_schedule_with_warmup (constant: num_cycles 0; cosine: 0.5)")
    if values.get("quantization") not in (None, *(["torchao-nf4"] if lora else [])):
        refuse("torchtune", "quantization", values["quantization"], "its quantised base is torchao NF4 under LoRA")
    if lora and values["target_modules"] != "all-linear":
        refuse("torchtune", "target_modules", values["target_modules"], "the adapter writes all-linear only")
    lora_keys = {"lora_attn_modules": ["q_proj", "k_proj", "v_proj", "output_proj"], "apply_lora_to_mlp": True,
                 "apply_lora_to_output": False, "quantize_base": values.get("quantization") == "torchao-nf4",
                 **{k: values[k] for k in LORA_KEYS}} if lora else None
    checkpointer = {"_component_": "torchtune.training.FullModelHFCheckpointer", "checkpoint_dir": str(checkpoint_dir),
                    "checkpoint_files": weight_files(checkpoint_dir), "output_dir": str(out), "model_type": "LLAMA3"}
    if spec.resume_from is not None:  # that epoch's adapter (LoRA) or weights (full: then read from output_dir)
        epoch = next(reversed(epochs(out).values()), None) if spec.resume_from == "latest" else Path(spec.resume_from)
        if epoch is not None and epoch.resolve() not in {d.resolve() for d in epochs(out).values()}:
            refuse("torchtune", "resume_from", str(epoch), "it resumes only an epoch_E of its own output_dir")
        elif epoch is not None:
            checkpointer.update({"adapter_checkpoint": f"{epoch.name}/adapter_model.pt"} if lora else
                                {"checkpoint_files": [f"{epoch.name}/{name}" for name in weight_files(epoch)]})
    scheduler = ({"_component_": "transformers.get_linear_schedule_with_warmup"} if schedule == "linear" else
                 {"_component_": COSINE, "num_cycles": 0.0 if schedule == "constant" else 0.5})
    return {**FIXED, "output_dir": str(out), "model": _model(checkpoint_dir, lora_keys), "checkpointer": checkpointer,
            "tokenizer": {"_component_": f"{__name__}.tokenizer_json", "path": str(checkpoint_dir / "tokenizer.json")},
            "resume_from_checkpoint": spec.resume_from is not None, "seed": values["seed"], "epochs": steps // save,
            "dataset": {"_component_": "torchtune.datasets.text_completion_dataset", "source": "json",
                        "data_files": str(data["train"]), "split": "train", "column": "text", "add_eos": False},
            "batch_size": values["per_device_train_batch_size"], "max_steps_per_epoch": save,
            "gradient_accumulation_steps": values["gradient_accumulation_steps"],
            "optimizer": {"_component_": "torch.optim.AdamW", "lr": values["learning_rate"], "weight_decay": 0.0},
            "lr_scheduler": {**scheduler, "num_warmup_steps": warmup},
            "metric_logger": {"_component_": "torchtune.training.metric_logging.DiskLogger",
                              "log_dir": str(out / "logs"), "filename": "log.txt"},
            "device": spec.device, "dtype": "fp32" if spec.device == "cpu" else "bf16"}


def read_log(path: Path) -> list[dict[str, Any]]:
    """The DiskLogger file: one entry per ``Step N | key:value ...`` line (``grad_norm:tensor(0.12)`` included)."""
    number = lambda v: float(v.removeprefix("tensor(").split(")")[0].split(",")[0])  # noqa: E731
    lines = [line[5:].partition(" | ") for line in path.read_text(encoding="utf-8").splitlines() if line[:5] == "Step "]
    return [{"step": int(step), **{k: number(v) for k, _, v in (pair.partition(":") for pair in rest.split())}}
            for step, _, rest in lines]


class TorchtuneAdapter(ConfigFileAdapter):
    """torchtune's single-device LoRA and full recipes, with the config a user would write."""

    name = framework = "torchtune"
    libraries = ("torchao", "torch")
    capabilities = frozenset({"sft", "full", "lora", "resume"})
    options = {"qlora": ("false", "true: also its QLoRA, quantisation kind torchao-nf4 (quantize_base: true in the LoRA "
                                  "builder), on the llama-wide tiny model, whose weights torchao's NF4 can quantise")}
    unavailable_metrics = dict.fromkeys(("eval_loss", "eval_accuracy"), "its 0.6.1 recipes run no validation")
    resume_files = {"optimizer": "../recipe_state/recipe_state.pt", "weights": "adapter_model.pt"}
    resume_points = "newest"
    log_keys = {"learning_rate": "lr"}
    _recipes: dict[str, type] = {}  # recipe name -> class, loaded once per process (preload)

    def __init__(self, **options: str):
        super().__init__(**options)
        if self.option_values["qlora"].strip().lower() == "true":  # (the plain tiny model is too small for NF4)
            self.capabilities, self.model_arch = self.capabilities | {"torchao-nf4"}, "llama-wide"
            self.quantizations = {"torchao-nf4": QuantKind("torchao-nf4", "torchao-nf4", "torchao", "nf4")}
        self.session_dir = Path(tempfile.mkdtemp(prefix="ft-torchtune-session-"))
        atexit.register(shutil.rmtree, self.session_dir, True)

    def _downloaded(self, model_dir: Path) -> Path:
        """The model directory as ``tune download`` leaves it: the files plus ``original_repo_id.json``."""
        copy = self.session_dir / "models" / str(Path(model_dir).resolve()).replace("/", "_")
        if not copy.is_dir():
            shutil.copytree(model_dir, copy)
            (copy / "original_repo_id.json").write_text(json.dumps({"repo_id": str(model_dir)}), encoding="utf-8")
        return copy

    def write_config(self, spec, values, data, workdir):
        return build_config(spec, values, data, self._downloaded(Path(spec.model_dir)))

    def preload(self) -> None:
        """The recipe classes of ``recipes/<name>.py``, the files ``tune run <name>`` runs (the directory is not a
        package: torchtune forbids importing it), loaded once, under another name than ``__main__`` (so their
        ``recipe_main``, which parses argv, does not run)."""
        import runpy

        from torchtune._cli.run import ROOT  # where `tune run` finds the recipe files

        for name in set(RECIPES.values()) - set(self._recipes):
            module = runpy.run_path(str(ROOT / "recipes" / f"{name}.py"), run_name=name)
            self._recipes[name] = next(v for k, v in module.items() if k.endswith("RecipeSingleDevice"))

    def launch(self, config: dict[str, Any], spec: RunSpec) -> None:
        from omegaconf import OmegaConf

        cfg = OmegaConf.create(config)
        run = self._recipes[RECIPES["lora" if "lora" in config["model"]["_component_"] else "full"]](cfg=cfg)
        run.setup(cfg=cfg)  # what recipe_main does after parsing the command line
        run.train()
        run.cleanup()

    def final_dir(self, spec: RunSpec) -> Path:
        return next(reversed(epochs(spec.output_dir).values()), Path(spec.output_dir))

    def checkpoints(self, output_dir: Path) -> dict[int, Path]:
        """epoch_E -> its optimizer step, (E + 1) * max_steps_per_epoch of the config torchtune saved beside them."""
        config = Path(output_dir) / "torchtune_config.yaml"
        steps = yaml.safe_load(config.read_text(encoding="utf-8"))["max_steps_per_epoch"] if config.is_file() else 0
        return {(e + 1) * int(steps): d for e, d in epochs(output_dir).items() if steps and d.is_dir()}

    def log_history(self, output_dir: Path) -> list[dict[str, Any]]:
        return read_log(Path(output_dir) / "logs" / "log.txt")  # (none yet: FileNotFoundError, naming it)
