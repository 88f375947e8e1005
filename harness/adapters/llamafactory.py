"""LLaMA-Factory (``pip install ft-harness[llamafactory]``), driven through ``run_exp(config)``: the
dict a user writes as ``llamafactory-cli train cfg.yaml``, run in a forked child (one process per
run, as with the CLI).

The tiny datasets become alpaca rows (``instruction`` = first word, ``output`` = the rest) with a
``dataset_info.json``; ``stage: sft``, ``template: empty``. Every Hugging Face TrainingArguments key
passes through LLaMA-Factory unchanged, so the cadence keys are the transformers ones.
``resume_from="latest"`` is LLaMA-Factory's own behaviour: an existing ``output_dir`` with
checkpoints and no ``resume_from_checkpoint`` resumes from the last one.

LLaMA-Factory has no layered args files (no ``args`` capability), no GRPO, and quantises on the fly
with bitsandbytes, HQQ or EETQ only (no optimum-quanto). ``packing=True`` becomes ``packing`` +
``neat_packing`` (no attention across packed samples); ``merge`` is ``llamafactory-cli export``'s
``export_model(config)``. Options (``--ft-adapter-option KEY=VALUE``):

``load_best_model_at_end``  true/false (default false), passed through to TrainingArguments.
``template``                LLaMA-Factory template (default ``empty``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..kit import ConfigFileAdapter, convert_datasets, cpu_threads, run_in_fork
from ..layout import adapter_base, is_adapter_dir
from .. import hf
from ..adapter import RunSpec

__all__ = ["LlamaFactoryAdapter", "OPTIONS", "build_config", "build_eval_config", "QUANT_KEYS"]

OPTIONS = {
    "load_best_model_at_end": ("false", "true/false, default false: TrainingArguments.load_best_model_at_end"),
    "template": ("empty", "LLaMA-Factory template (default empty)"),
}

QUANT_KEYS: dict[str, dict[str, Any]] = {
    "nf4": {"quantization_bit": 4, "quantization_method": "bnb", "quantization_type": "nf4"},
    "int8": {"quantization_bit": 8, "quantization_method": "bnb"},
}


def build_config(spec: RunSpec, values: Mapping[str, Any], dataset_dir: Path, *, template: str = "empty",
                 load_best_model_at_end: bool = False) -> dict[str, Any]:
    """The ``llamafactory-cli train`` config for one RunSpec (``values``: CLI over defaults)."""
    model_dir = Path(spec.model_dir)
    cfg: dict[str, Any] = {"stage": "sft", "do_train": True, "template": template, "finetuning_type":
                           values["train_type"]}  # trust_remote_code: default False; 0.9.0/0.9.1 reject the key
    if is_adapter_dir(model_dir):
        cfg.update(model_name_or_path=str(adapter_base(model_dir)), adapter_name_or_path=str(model_dir))
    else:
        cfg["model_name_or_path"] = str(model_dir)
    if values["train_type"] == "lora":
        tm = values["target_modules"]
        cfg.update(lora_rank=values["lora_rank"], lora_alpha=values["lora_alpha"],
                   lora_dropout=values["lora_dropout"],
                   lora_target="all" if tm == "all-linear" else ",".join(tm if not isinstance(tm, str) else [tm]))
    quant = values.get("quantization")
    if quant is not None:
        if quant not in QUANT_KEYS:
            raise ConfigError(None, "quantization", f"one of {sorted(QUANT_KEYS)} (LLaMA-Factory quantises with "
                                                    f"bitsandbytes, HQQ or EETQ)", quant)
        cfg.update(QUANT_KEYS[quant])
    eval_steps = values.get("eval_steps") or 0
    cfg.update(hf.training_arguments(values, spec.output_dir, spec.device))  # LLaMA-Factory passes them to Trainer
    cfg.update(dataset="ft_train", dataset_dir=str(dataset_dir), cutoff_len=64, packing=False, overwrite_cache=True,
               preprocessing_num_workers=None, warmup_ratio=0.0, plot_loss=False, bf16=False, fp16=False)
    if values.get("save_total_limit"):
        cfg["save_total_limit"] = values["save_total_limit"]
    if eval_steps:
        cfg.update(eval_dataset="ft_eval", eval_strategy="steps", eval_steps=eval_steps, per_device_eval_batch_size=8,
                   metric_for_best_model=str(values["metric"]).removeprefix("eval_"),
                   load_best_model_at_end=load_best_model_at_end)
        if values.get("greater_is_better") is not None:
            cfg["greater_is_better"] = values["greater_is_better"]
        if values["metric"] == "eval_accuracy":
            cfg["compute_accuracy"] = True
    if values.get("packing"):
        cfg.update(packing=True, neat_packing=True)  # neat_packing: no cross-attention between packed samples
    if spec.resume_from is not None and spec.resume_from != "latest":
        cfg["resume_from_checkpoint"] = str(spec.resume_from)
    return cfg


def build_eval_config(directory: Path, spec: RunSpec, dataset_dir: Path, output_dir: Path, *,
                      template: str = "empty") -> dict[str, Any]:
    """The config that evaluates a saved directory as LLaMA-Factory evaluated it during training (``do_train: false,
    do_eval: true``): a full directory as ``model_name_or_path``; an adapter on the base its adapter_config.json
    names; the same template, eval data, cutoff and eval batch size; ``compute_accuracy`` for next-token accuracy."""
    directory = Path(directory)
    cfg: dict[str, Any] = {"stage": "sft", "do_train": False, "do_eval": True, "template": template}
    if is_adapter_dir(directory):
        cfg.update(model_name_or_path=str(adapter_base(directory)), adapter_name_or_path=str(directory),
                   finetuning_type="lora")
        if spec.quantization in QUANT_KEYS:
            cfg.update(QUANT_KEYS[spec.quantization])
    else:
        cfg.update(model_name_or_path=str(directory), finetuning_type="full")
    cfg.update(eval_dataset="ft_eval", dataset_dir=str(dataset_dir), cutoff_len=64, overwrite_cache=True,
               preprocessing_num_workers=None, per_device_eval_batch_size=8, output_dir=str(output_dir),
               report_to="none", use_cpu=spec.device == "cpu", bf16=False, fp16=False, disable_tqdm=True,
               compute_accuracy=spec.cli_args().get("metric") == "eval_accuracy")
    return cfg


class LlamaFactoryAdapter(ConfigFileAdapter):
    """LLaMA-Factory ``run_exp`` with the config a user would write."""

    name = "llamafactory"
    framework = "llamafactory"
    libraries = ("transformers", "peft", "trl")
    dataset_format = "alpaca"
    options = OPTIONS
    capabilities = frozenset({"sft", "full", "lora", "resume", "quant-nf4", "quant-int8", "best-checkpoint", "merge",
                              "packing", "gpu"})

    def __init__(self, **options: str):
        import llamafactory  # noqa: F401 - a missing framework is an error when the adapter is chosen

        super().__init__(**options)

    def write_config(self, spec: RunSpec, values: Mapping[str, Any], data: Mapping[str, Path], workdir: Path):
        return build_config(spec, values, data["train"].parent, template=self.option_values["template"],
                            load_best_model_at_end=self.flag("load_best_model_at_end"))

    def launch(self, config: Mapping[str, Any], spec: RunSpec) -> None:
        from llamafactory.train.tuner import run_exp

        run_exp(dict(config))

    def merge(self, adapter_dir: Path, output_dir: Path) -> Path:
        """``llamafactory-cli export`` with the config its docs give for merging LoRA: the base the adapter names,
        the adapter, ``finetuning_type: lora``, ``export_dir`` (run through ``export_model(config)`` in a fork)."""
        cfg = {"model_name_or_path": str(adapter_base(Path(adapter_dir))), "adapter_name_or_path": str(adapter_dir),
               "template": self.option_values["template"], "finetuning_type": "lora", "export_dir": str(output_dir),
               "export_device": "cpu", "export_legacy_format": False}
        from llamafactory.train.tuner import export_model

        with cpu_threads("cpu"):
            run_in_fork(lambda: export_model(cfg))
        return Path(output_dir)

    def evaluate(self, directory: Path, spec: RunSpec) -> dict[str, float]:
        """LLaMA-Factory's own evaluation of a saved directory (its template: prompt masked, response + EOS
        supervised), ``do_eval`` through ``run_exp``: the formula its logged eval metrics come from."""
        import json
        import tempfile

        with tempfile.TemporaryDirectory(prefix="ft-llamafactory-eval-") as tmp:
            data = Path(tmp) / "data"
            convert_datasets(Path(spec.dataset_dir), data, "alpaca")
            cfg = build_eval_config(Path(directory), spec, data, Path(tmp) / "out",
                                    template=self.option_values["template"])
            from llamafactory.train.tuner import run_exp

            with cpu_threads(spec.device):
                run_in_fork(lambda: run_exp(cfg))
            results = json.loads((Path(tmp) / "out" / "eval_results.json").read_text(encoding="utf-8"))
        return {k: float(v) for k, v in results.items() if isinstance(v, (int, float))}
