"""LLaMA-Factory (``pip install ft-harness[llamafactory]``), driven through ``run_exp(config)``: the
dict a user writes as ``llamafactory-cli train cfg.yaml``, run in a forked child (one process per
run, as with the CLI).

The tiny datasets become alpaca rows (``instruction`` = first word, ``output`` = the rest) with a
``dataset_info.json``; ``stage: sft``, ``template: empty``. DPO (``method="dpo"``) is ``stage: dpo`` on the
preference rows (a ``ranking`` dataset) with ``pref_beta`` / ``pref_loss``, and no ``ref_model`` (as its example
configs); KTO (``method="kto"``) is ``stage: kto`` on the same rows unpaired with a ``kto_tag``, with ``pref_beta``. Every Hugging Face TrainingArguments key passes through LLaMA-Factory unchanged, so the cadence keys are the
transformers ones.
``resume_from="latest"`` is LLaMA-Factory's own behaviour: an existing ``output_dir`` with
checkpoints and no ``resume_from_checkpoint`` resumes from the last one.

LLaMA-Factory has no layered args files (no ``args`` capability), no GRPO, and quantises on the fly
with bitsandbytes, HQQ or EETQ only (no optimum-quanto). ``packing=True`` becomes ``packing`` +
``neat_packing`` (no attention across packed samples); ``merge`` is ``llamafactory-cli export``'s
``export_model(config)``. Options (``--ft-adapter-option KEY=VALUE``):

``load_best_model_at_end``  true/false (default false), passed through to TrainingArguments in the best-checkpoint
                            story's runs (seed 004) only; a run that types ``load_best_model_at_end`` gets it either way.
``template``                LLaMA-Factory template (default ``empty`` for text data; for chat data none, so that
                            LLaMA-Factory parses the tokenizer's own chat template, ``parse_template``).

Chat data (``messages`` / ``prompt``+``completion`` rows) becomes sharegpt ``messages`` rows; ``training_batches``
runs the training config and stops at ``Trainer.train()`` to read one epoch of its dataloader;
``new_special_tokens`` becomes ``add_special_tokens`` (0.9.5; ``new_special_tokens`` before) + ``resize_vocab: true``.
``router_aux_loss_coef`` becomes ``moe_aux_loss_coef``; ``trainable_parameters`` becomes ``finetuning_type: freeze`` with the freeze keys that train exactly that set
(:func:`freeze_keys`; a set they cannot give is refused).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..adapter import Adapter, RunResult, RunSpec
from ..spec import BEST_CHECKPOINT_STORY, kl_beta
from ..errors import ConfigError
from ..layout import adapter_base, is_adapter_dir, read_json, read_safetensors_header
from .. import hf
from ..runtime import cpu_threads, library_versions, run_in_fork
from ..task import is_chat_dataset
from ..kit import (check_options, collect_result, convert_chat_datasets, convert_datasets, parse_bool,
                   quantization_keys, refuse)

__all__ = ["LlamaFactoryAdapter", "OPTIONS", "build_config", "build_eval_config", "QUANT_KEYS", "freeze_keys",
           "freeze_trainable"]

OPTIONS = {
    "load_best_model_at_end": "true/false, default false: TrainingArguments.load_best_model_at_end",
    "template": "LLaMA-Factory template (default empty)",
}

QUANT_KEYS: dict[str, dict[str, Any]] = {
    "nf4": {"quantization_bit": 4, "quantization_method": "bnb", "quantization_type": "nf4"},
    "int8": {"quantization_bit": 8, "quantization_method": "bnb"},
}


def freeze_trainable(names: list[str], n_layers: int, layers: int, modules: list[str], extra: list[str]) -> set[str]:
    """The parameters LLaMA-Factory's ``finetuning_type: freeze`` trains (``_setup_freeze_tuning``, 0.9.x): layers
    ``freeze_trainable_layers`` (> 0: the last n, < 0: the first n), ``freeze_trainable_modules`` (``all`` or module
    names under a layer) and ``freeze_extra_modules``, each matched as a *substring* of the parameter name
    (``".1.self_attn"``, ``".1."`` for ``all``, ``"lm_head"``) as LLaMA-Factory matches them."""
    ids = range(max(0, n_layers - layers), n_layers) if layers > 0 else range(min(-layers, n_layers))
    keys = [f".{i}.{'' if m == 'all' else m}" for m in modules for i in ids] + list(extra)
    return {n for n in names if any(k in n for k in keys)}


def freeze_keys(names: list[str], n_layers: int, patterns: list[str]) -> dict[str, Any]:
    """``trainable_parameters`` as LLaMA-Factory's freeze keys: the smallest ``freeze_trainable_layers`` /
    ``freeze_trainable_modules`` / ``freeze_extra_modules`` whose trained set (:func:`freeze_trainable`, simulated on
    the base's parameter ``names``) is exactly the set the patterns name; a set no such keys give is refused (never
    mapped to a near one)."""
    import itertools
    import re

    from ..spec import in_trainable_set

    want = {n for n in names if in_trainable_set(n, patterns)}
    hidden = sorted({n.split(".0.")[-1].split(".")[0] for n in names if ".0." in n})
    outside = sorted({n.split(".")[-2] for n in names if re.search(r"\.\d+\.", n) is None and "." in n})
    module_sets = [["all"]] + [list(c) for r in range(1, len(hidden) + 1) for c in itertools.combinations(hidden, r)]
    extra_sets = [list(c) for r in range(len(outside) + 1) for c in itertools.combinations(outside, r)]
    for layers in [*range(1, n_layers + 1), *range(-1, -n_layers, -1)]:
        for modules in module_sets:
            for extra in extra_sets:
                if freeze_trainable(names, n_layers, layers, modules, extra) == want:
                    return {"finetuning_type": "freeze", "freeze_trainable_layers": layers,
                            "freeze_trainable_modules": ",".join(modules),
                            "freeze_extra_modules": ",".join(extra) or None}
    refuse("llamafactory", "trainable_parameters", patterns,
           f"no freeze_trainable_layers / freeze_trainable_modules / freeze_extra_modules trains exactly those "
           f"{len(want)} of {len(names)} parameters")


def build_config(spec: RunSpec, values: Mapping[str, Any], dataset_dir: Path, *, template: str | None = "empty",
                 load_best_model_at_end: bool = False, special_tokens_key: str = "add_special_tokens") -> dict[str, Any]:
    """The ``llamafactory-cli train`` config for one RunSpec (``values``: CLI over defaults)."""
    model_dir = Path(spec.model_dir)
    method = values["method"]
    cfg: dict[str, Any] = {"stage": method if method in ("dpo", "kto") else "sft", "do_train": True, "template": template, "finetuning_type":
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
    cfg.update(quantization_keys(values.get("quantization"), QUANT_KEYS, "LLaMA-Factory quantises with bitsandbytes, HQQ or EETQ"))
    eval_steps = values.get("eval_steps") or 0
    cfg.update(hf.training_arguments(values, spec.output_dir, spec.device))  # LLaMA-Factory passes them to Trainer
    cfg.update(dataset="ft_train", dataset_dir=str(dataset_dir), cutoff_len=64, packing=False, overwrite_cache=True,
               preprocessing_num_workers=None, warmup_ratio=0.0, plot_loss=False, bf16=False, fp16=False)
    if method == "dpo":  # examples/train_lora/*_dpo.yaml: no ref_model key (LLaMA-Factory chooses the reference itself)
        cfg.update(dataset="ft_preferences", pref_beta=kl_beta(values), pref_loss=values["loss_type"])
    elif method == "kto":  # examples/train_lora/*_kto.yaml: stage kto, a kto_tag dataset, pref_beta, no ref_model
        cfg.update(dataset="ft_kto", pref_beta=kl_beta(values))
    if values.get("save_total_limit"):
        cfg["save_total_limit"] = values["save_total_limit"]
    if eval_steps:
        cfg.update(eval_dataset="ft_eval", eval_strategy="steps", eval_steps=eval_steps, per_device_eval_batch_size=8,
                   load_best_model_at_end=load_best_model_at_end)
        given = spec.cli_args()  # a user's config names the metric only when they chose one
        if "metric" in given:
            cfg["metric_for_best_model"] = str(values["metric"]).removeprefix("eval_")
        if "greater_is_better" in given:
            cfg["greater_is_better"] = values["greater_is_better"]
        if values["metric"] == "eval_accuracy":
            cfg["compute_accuracy"] = True
    if values.get("packing"):
        cfg.update(packing=True, neat_packing=True)  # neat_packing: no cross-attention between packed samples
    new_tokens = list(values.get("new_special_tokens") or ())
    if new_tokens:  # LLaMA-Factory adds them, resizes, and (LoRA) trains/saves embed + head as additional_target
        cfg.update({special_tokens_key: ",".join(new_tokens), "resize_vocab": True})
    if "gradient_checkpointing" in spec.cli_args():  # LLaMA-Factory's own switch (it checkpoints by default)
        checkpointing = values["gradient_checkpointing"]
        cfg.pop("gradient_checkpointing", None)
        cfg.pop("gradient_checkpointing_kwargs", None)
        cfg.update(disable_gradient_checkpointing=not checkpointing,
                   **({"use_reentrant_gc": checkpointing == "reentrant"} if checkpointing else {}))
    if values.get("router_aux_loss_coef"):  # configure_moe: output_router_logits + router_aux_loss_coef on MoE configs
        cfg["moe_aux_loss_coef"] = float(values["router_aux_loss_coef"])
    if values.get("trainable_parameters"):
        if values["train_type"] != "full":
            refuse("llamafactory", "trainable_parameters", list(values["trainable_parameters"]),
                   "the freeze keys apply to finetuning_type freeze, a full-parameter run")
        base = Path(cfg["model_name_or_path"])
        names = sorted(read_safetensors_header(base / "model.safetensors"))
        n_layers = int(read_json(base / "config.json")["num_hidden_layers"])
        cfg.update(freeze_keys(names, n_layers, list(values["trainable_parameters"])))
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


class LlamaFactoryAdapter(Adapter):
    """LLaMA-Factory ``run_exp`` with the config a user would write."""

    name = "llamafactory"
    capabilities = frozenset({"sft", "dpo", "kto", "full", "lora", "resume", "quant-nf4", "quant-int8", "best-checkpoint",
                              "merge", "packing", "data", "new-tokens", "trainable-set", "moe", "gradient-checkpointing",
                              "gpu"})

    def __init__(self, **options: str):
        check_options("llamafactory", options, OPTIONS)
        self.load_best_model_at_end = parse_bool("llamafactory", "load_best_model_at_end",
                                                 options.get("load_best_model_at_end", "false"))
        self.template = options.get("template", "empty")
        self.template_given = "template" in options
        import llamafactory

        self.version = llamafactory.__version__
        import dataclasses

        from llamafactory.hparams import ModelArguments

        #: 0.9.5 calls the comma-separated token list add_special_tokens; earlier releases new_special_tokens
        fields = {f.name for f in dataclasses.fields(ModelArguments)}
        self.special_tokens_key = "add_special_tokens" if "add_special_tokens" in fields else "new_special_tokens"
        self.name = f"llamafactory {self.version}" + ("[load_best_model_at_end=true]"
                                                      if self.load_best_model_at_end else "")

    def versions(self) -> dict[str, str]:
        return {"llamafactory": self.version, **library_versions("transformers", "peft", "trl")}

    def merge(self, adapter_dir: Path, output_dir: Path) -> Path:
        """``llamafactory-cli export`` with the config its docs give for merging LoRA: the base the adapter names,
        the adapter, ``finetuning_type: lora``, ``export_dir`` (run through ``export_model(config)`` in a fork)."""
        cfg = {"model_name_or_path": str(adapter_base(Path(adapter_dir))), "adapter_name_or_path": str(adapter_dir),
               "template": self.template, "finetuning_type": "lora", "export_dir": str(output_dir),
               "export_device": "cpu", "export_legacy_format": False}
        from llamafactory.train.tuner import export_model

        with cpu_threads("cpu"):
            run_in_fork(lambda: export_model(cfg))
        return Path(output_dir)

    def _config(self, spec: RunSpec, tmp: Path) -> tuple[dict[str, Any], Any]:
        """(config, resolved): the dataset converted into ``tmp`` — chat rows as sharegpt ``messages`` with
        ``template`` left to LLaMA-Factory's parsing of the tokenizer's own chat template (unless the ``template``
        option names one), text rows as alpaca with ``template``."""
        resolved = self.resolve_args(spec.cli_args(), spec.model_dir)
        data = Path(tmp) / "data"
        chat = is_chat_dataset(Path(spec.dataset_dir) / "train.jsonl")
        if chat:
            convert_chat_datasets(Path(spec.dataset_dir), data, "sharegpt")
        else:
            convert_datasets(Path(spec.dataset_dir), data, "alpaca")
        template = self.template if (self.template_given or not chat) else None
        loads_best = bool(resolved.values.get("load_best_model_at_end")) or (
            self.load_best_model_at_end and spec.story == BEST_CHECKPOINT_STORY)  # the option: that story's runs only
        return build_config(spec, resolved.values, data, template=template, load_best_model_at_end=loads_best,
                            special_tokens_key=self.special_tokens_key), resolved

    def train(self, spec: RunSpec) -> RunResult:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="ft-llamafactory-") as tmp:
            cfg, resolved = self._config(spec, Path(tmp))
            from llamafactory.train.tuner import run_exp

            with cpu_threads(spec.device):
                run_in_fork(lambda: run_exp(cfg))
        return collect_result(spec, Path(spec.output_dir), resolved)

    def training_batches(self, spec: RunSpec) -> list[Mapping[str, Any]]:
        """``run_exp(config)`` as for training — LLaMA-Factory's ``get_dataset`` (template, tokenisation, cutoff) and its
        ``SFTDataCollatorWith4DAttentionMask`` inside its own ``CustomSeq2SeqTrainer`` — stopped at ``train()``: the
        child writes one epoch of the trainer's train dataloader and exits before any step."""
        import json
        import os
        import tempfile

        with tempfile.TemporaryDirectory(prefix="ft-llamafactory-") as tmp:
            cfg, _ = self._config(spec, Path(tmp))
            out = Path(tmp) / "batches.json"

            def dump_batches() -> None:
                from llamafactory.train.sft.trainer import CustomSeq2SeqTrainer
                from llamafactory.train.tuner import run_exp

                def train(trainer, *args, **kwargs):
                    out.write_text(json.dumps(hf.epoch_batches(trainer.get_train_dataloader())), encoding="utf-8")
                    os._exit(0)  # the batches are out; no step, no save

                CustomSeq2SeqTrainer.train = train
                run_exp(cfg)

            with cpu_threads(spec.device):
                run_in_fork(dump_batches)
            if not out.is_file():
                raise RuntimeError("LLaMA-Factory's run ended without reaching Trainer.train(): no batches")
            return json.loads(out.read_text(encoding="utf-8"))

    def evaluate(self, directory: Path, spec: RunSpec) -> dict[str, float]:
        """LLaMA-Factory's own evaluation of a saved directory (its template: prompt masked, response + EOS
        supervised), ``do_eval`` through ``run_exp``: the formula its logged eval metrics come from."""
        import json
        import tempfile

        with tempfile.TemporaryDirectory(prefix="ft-llamafactory-eval-") as tmp:
            data = Path(tmp) / "data"
            convert_datasets(Path(spec.dataset_dir), data, "alpaca")
            cfg = build_eval_config(Path(directory), spec, data, Path(tmp) / "out",
                                    template=self.template)
            from llamafactory.train.tuner import run_exp

            with cpu_threads(spec.device):
                run_in_fork(lambda: run_exp(cfg))
            results = json.loads((Path(tmp) / "out" / "eval_results.json").read_text(encoding="utf-8"))
        return {k: float(v) for k, v in results.items() if isinstance(v, (int, float))}
