"""axolotl (``pip install ft-harness[axolotl]``, 0.21.0 on Python 3.12), driven as its users drive it: a YAML config,
then ``axolotl train cfg.yml`` (here its own ``load_cfg`` + ``do_train``, in a forked child) and ``axolotl merge-lora``.

The tiny texts are ``type: completion`` datasets (``{"text": ...}``, trained on whole); the eval set is a
``test_datasets`` entry. axolotl reads only its YAML (no saved-args layers: no ``args`` capability), has no token
accuracy metric, and keeps its own defaults where a user would (e.g. its step-0 evaluation). CPU settings a user on
CPU must write: the four ``lora_*_kernel`` flags off (axolotl's Triton LoRA kernels are on by default and need CUDA),
no bf16/tf32, ``attn_implementation: sdpa`` (what axolotl's packing warning asks for), ``dataset_num_proc: 1``. ``save_on_best`` has no axolotl key and is not passed.
``trainable_parameters`` becomes ``unfrozen_parameters`` (:func:`unfrozen_parameters`); ``router_aux_loss_coef`` becomes
``model_config: {output_router_logits: true, router_aux_loss_coef: c}`` (axolotl's model-config overrides).
Chat data (``messages`` / prompt+completion rows) is a ``type: chat_template`` dataset on the tokenizer's own template
(``chat_template: tokenizer_default``, ``roles_to_train: [assistant]``, ``train_on_eos: turn``); ``training_batches`` runs
``axolotl train`` and stops at ``Trainer.train()`` to read one epoch of its dataloader. DPO and KTO are ``rl: dpo`` /
``rl: kto`` with ``rl_beta`` on a ``user_defined`` dataset type over the preference rows (KTO's unpaired, and
``remove_unused_columns: false``, which axolotl's validation demands).
Options (``--ft-adapter-option KEY=VALUE``): see :data:`OPTIONS`.

Like a user training often on the same data, a session keeps one ``dataset_prepared_path`` per preparation (named by
the YAML less :data:`RUN_ONLY_KEYS`, the seed included: axolotl shuffles before saving, and its dataset hash names
paths but not the seed), the data files kept by content: a run loads what an identical preparation saved.
"""

from __future__ import annotations

import atexit
import gc
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .. import hf
from ..adapter import RunSpec
from ..spec import BEST_CHECKPOINT_STORY, kl_beta
from ..errors import ConfigError
from ..kit import ConfigFileAdapter, cpu_threads, quantization_keys, refuse, run_in_fork, write_config_file
from ..layout import adapter_base, is_adapter_dir, read_safetensors_header

__all__ = ["AxolotlAdapter", "OPTIONS", "build_config", "unfrozen_parameters"]

OPTIONS = {"load_best_model_at_end": ("false", "true/false: axolotl's load_best_model_at_end (best-checkpoint story "
                                                "runs only)")}
#: the preference rows as axolotl's ``user_defined`` RL dataset types read them (``type`` a mapping of field names:
#: prompt_strategies/dpo|kto/user_defined.py); KTO's rows are the pairs unpaired (:func:`harness.kit.unpaired_preferences`)
RL_DATASET_TYPES = {"dpo": {"field_prompt": "prompt", "field_chosen": "chosen", "field_rejected": "rejected"},
                    "kto": {"field_prompt": "prompt", "field_completion": "completion", "field_label": "label"}}
QUANT_KEYS = {"nf4": {"load_in_4bit": True, "adapter": "qlora"}, "int8": {"load_in_8bit": True}}
CPU_KEYS = {"lora_mlp_kernel": False, "lora_qkv_kernel": False, "lora_o_kernel": False,
            "lora_embedding_kernel": False, "bf16": False, "fp16": False, "tf32": False,
            "attn_implementation": "sdpa", "gradient_checkpointing": False}
#: keys axolotl 0.21.0's dataset preparation never reads (utils/data, loaders/tokenizer.py): runs differing only there
#: share a prepared dataset
RUN_ONLY_KEYS = frozenset("""output_dir max_steps micro_batch_size gradient_accumulation_steps learning_rate
    lr_scheduler warmup_steps optimizer weight_decay logging_steps save_strategy save_steps save_total_limit
    save_safetensors eval_strategy eval_steps eval_batch_size metric_for_best_model greater_is_better
    load_best_model_at_end resume_from_checkpoint auto_resume_from_checkpoints adapter lora_r lora_alpha lora_dropout
    lora_target_linear lora_target_modules lora_model_dir load_in_4bit load_in_8bit dataset_prepared_path""".split())


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:20]


def build_config(spec: RunSpec, values: Mapping[str, Any], data: Mapping[str, Path], workdir: Path, *,
                 load_best_model_at_end: bool = False) -> dict[str, Any]:
    """The axolotl YAML for one run (``values``: the command line over the task defaults, seed and logging set)."""
    model_dir, lora = Path(spec.model_dir), values["train_type"] == "lora"
    cfg: dict[str, Any] = {"base_model": str(model_dir)}
    if lora and is_adapter_dir(model_dir):  # continue a LoRA: its base, the adapter as lora_model_dir
        cfg.update(base_model=str(adapter_base(model_dir)), lora_model_dir=str(model_dir))
    if data.get("chat"):  # docs/dataset-formats/conversation.qmd: the tokenizer's own template, assistant turns trained
        ds = lambda p: [{"path": str(p), "ds_type": "json", "type": "chat_template", "split": "train",  # noqa: E731
                         "field_messages": "messages", "roles_to_train": ["assistant"], "train_on_eos": "turn"}]
        cfg["chat_template"] = "tokenizer_default"
    else:
        ds = lambda p: [{"path": str(p), "ds_type": "json", "type": "completion", "split": "train"}]  # noqa: E731
    method = values.get("method", "sft")
    cfg.update(datasets=ds(data["train"]) if method not in RL_DATASET_TYPES else [
        {"path": str(data["kto" if method == "kto" else "preferences"]), "ds_type": "json", "split": "train",
         "type": dict(RL_DATASET_TYPES[method])}], dataset_prepared_path=str(workdir / "prepared"), val_set_size=0,
               output_dir=str(spec.output_dir), sequence_len=64, max_steps=values["max_steps"],
               micro_batch_size=values["per_device_train_batch_size"],
               gradient_accumulation_steps=values["gradient_accumulation_steps"], learning_rate=values["learning_rate"],
               lr_scheduler=values["lr_scheduler_type"], warmup_steps=values.get("warmup_steps") or 0,
               optimizer="adamw_torch", weight_decay=0.0, seed=values["seed"], logging_steps=values["logging_steps"],
               dataset_num_proc=1, dataloader_num_workers=0, save_safetensors=True)
    if lora:
        tm = values["target_modules"]
        cfg.update(adapter="lora", lora_r=values["lora_rank"], lora_alpha=values["lora_alpha"],
                   lora_dropout=values["lora_dropout"], **({"lora_target_linear": True} if tm == "all-linear" else
                                                           {"lora_target_modules": [tm] if isinstance(tm, str) else
                                                            list(tm)}))
    if spec.device == "cpu":
        cfg.update(CPU_KEYS)
    else:
        cfg.update(bf16="auto")
    cfg.update(hf.gradient_checkpointing_arguments(values.get("gradient_checkpointing")))  # over CPU_KEYS' off
    cfg.update(quantization_keys(values.get("quantization"), QUANT_KEYS, "axolotl quantises with bitsandbytes"))
    cfg.update(save_strategy="steps", save_steps=values["save_steps"]) if values.get("save_steps") else cfg.update(
        save_strategy="no")
    # unset or 0, axolotl rotates to 4 checkpoints (builders/base.py: `save_total_limit or 4`): "keep them all",
    # what the scenarios assume, must be written as a limit no run reaches
    cfg["save_total_limit"] = values.get("save_total_limit") or values["max_steps"] + 1
    if method in RL_DATASET_TYPES:  # docs/rlhf.qmd: rl: dpo | kto, a user_defined dataset type, rl_beta
        cfg.update(rl=method, rl_beta=kl_beta(values))
        if method == "kto":  # axolotl's validation: "Set `remove_unused_columns: False` when using kto"
            cfg["remove_unused_columns"] = False
    if values.get("eval_steps"):
        cfg.update(test_datasets=ds(data["eval"]), eval_strategy="steps", eval_steps=values["eval_steps"],
                   eval_batch_size=8, metric_for_best_model=values["metric"],
                   load_best_model_at_end=load_best_model_at_end)
        if values.get("greater_is_better") is not None:
            cfg["greater_is_better"] = values["greater_is_better"]
    else:
        cfg["eval_strategy"] = "no"
    if values.get("packing"):  # sdpa (above) is one of the backends axolotl names as isolating packed samples
        # packed, micro_batch_size counts rows of sequence_len tokens: the batch's token budget becomes one row
        cfg.update(sample_packing=True, eval_sample_packing=False, micro_batch_size=1,
                   sequence_len=64 * values["per_device_train_batch_size"])
    if values.get("trainable_parameters"):
        cfg["unfrozen_parameters"] = unfrozen_parameters(spec, values)
    if values.get("router_aux_loss_coef"):  # axolotl's `model_config` overrides (loaders/utils.py) set on the config
        cfg["model_config"] = {"output_router_logits": True,
                               "router_aux_loss_coef": float(values["router_aux_loss_coef"])}
    if spec.resume_from == "latest":
        cfg["auto_resume_from_checkpoints"] = True
    elif spec.resume_from is not None:
        cfg["resume_from_checkpoint"] = str(spec.resume_from)
    return cfg


def unfrozen_parameters(spec: RunSpec, values: Mapping[str, Any]) -> list[str]:
    """``trainable_parameters`` as axolotl's ``unfrozen_parameters``: axolotl escapes every ``.`` of a pattern (a dot is
    never a wildcard there) and matches from the start of the name (``re.match``), so a harness pattern (``\\.`` and
    ``.*``) cannot be passed as written; the set it names on the base (its ``model.safetensors`` names) is listed one
    anchored name per parameter (``^model.layers.1.mlp.up_proj.weight$``), which matches exactly that name."""
    import re

    from ..spec import in_trainable_set

    patterns = list(values["trainable_parameters"])
    if values["train_type"] != "full":
        refuse("axolotl", "trainable_parameters", patterns, "unfrozen_parameters applies to a full-parameter run")
    names = sorted(read_safetensors_header(Path(spec.model_dir) / "model.safetensors"))
    odd = [n for n in names if not re.fullmatch(r"[A-Za-z0-9_.]+", n)]
    if odd:
        refuse("axolotl", "trainable_parameters", patterns, f"parameter names such as {odd[0]!r} cannot be written as "
                                                             f"an unfrozen_parameters pattern")
    return [f"^{n}$" for n in names if in_trainable_set(n, patterns)]


def _run(command: str, config_path: Path, **kwargs: Any) -> None:
    """``axolotl <command> cfg.yml`` as its CLI runs it: load_cfg, then the command (in this, a forked, process)."""
    from axolotl.cli.config import load_cfg

    gc.freeze()  # the inherited heap (torch, transformers, axolotl) is left out of axolotl's many gc.collect() calls
    if command == "train":
        from axolotl.cli.args import TrainerCliArgs
        from axolotl.cli.train import do_train

        do_train(load_cfg(str(config_path)), TrainerCliArgs())
    else:
        from axolotl.cli.merge_lora import do_cli

        do_cli(config=str(config_path), **kwargs)


class AxolotlAdapter(ConfigFileAdapter):
    """axolotl with the YAML a user would write."""

    name = framework = "axolotl"
    libraries = ("transformers", "peft", "trl", "torch")
    options = OPTIONS
    capabilities = frozenset({"sft", "dpo", "kto", "data", "full", "lora", "resume", "best-checkpoint", "packing", "moe",
                              "merge", "quant-nf4", "quant-int8", "trainable-set", "gradient-checkpointing", "gpu"})
    dataset_format = None  # converted in write_config: text rows as completion rows, chat rows as messages rows
    unavailable_metrics = {"eval_accuracy": "axolotl logs no next-token accuracy (eval_causal_lm_metrics are "
                                            "generation metrics: sacrebleu, comet, ter, chrf, perplexity)"}

    def __init__(self, **options: str):
        super().__init__(**options)
        self.trained_with: dict[Path, dict[str, Any]] = {}
        self.session_dir = Path(tempfile.mkdtemp(prefix="ft-axolotl-session-"))  # data by content, prepared datasets
        atexit.register(shutil.rmtree, self.session_dir, True)

    def _kept(self, path: Path) -> Path:
        if not Path(path).is_file():
            return Path(path)
        kept = self.session_dir / "data" / _digest(Path(path).read_bytes()) / Path(path).name
        if not kept.is_file():
            kept.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, kept)
        return kept

    def _prepared_dir(self, cfg: Mapping[str, Any]) -> Path:
        model = Path(cfg["base_model"])  # its tokenizer and config files by content: what tokenising reads
        files = {p.name: _digest(p.read_bytes()) for p in sorted(model.glob("*")) if p.is_file()
                 and p.suffix in (".json", ".txt", ".model", ".jinja")} if model.is_dir() else {}
        key = {**{k: v for k, v in cfg.items() if k not in RUN_ONLY_KEYS}, "base_model_files": files}
        return self.session_dir / "prepared" / _digest(json.dumps(key, sort_keys=True, default=str).encode())

    def write_config(self, spec, values, data, workdir):
        data = dict(data) or self.convert(spec, Path(workdir))  # (the kit passes none: dataset_format is None)
        if values.get("method") == "kto":
            from ..kit import unpaired_preferences
            from ..models import read_jsonl, write_jsonl

            data = {**data, "kto": write_jsonl(Path(workdir) / "kto.jsonl", unpaired_preferences(
                read_jsonl(data["preferences"]), lambda p, c, label: {"prompt": p, "completion": c, "label": label}))}
        data = {name: self._kept(path) for name, path in data.items()}
        loads_best = bool(values.get("load_best_model_at_end")) or (
            self.flag("load_best_model_at_end") and spec.story == BEST_CHECKPOINT_STORY)  # the option: that story only
        cfg = build_config(spec, values, data, workdir, load_best_model_at_end=loads_best)
        cfg["dataset_prepared_path"] = str(self._prepared_dir(cfg))
        self.trained_with[Path(spec.output_dir)] = cfg  # merge-lora reuses it, as users pass their training YAML
        return write_config_file(workdir / "axolotl.yml", cfg)

    def convert(self, spec: RunSpec, workdir: Path) -> dict[str, Path]:
        """The tiny datasets as axolotl reads them: text rows as ``completion`` rows (:func:`harness.kit.convert_datasets`),
        chat rows as ``messages`` rows (``"chat"`` marks them) for a ``chat_template`` dataset."""
        from ..kit import chat_as_messages, convert_datasets
        from ..models import write_jsonl
        from ..task import is_chat_dataset

        src = Path(spec.dataset_dir)
        if not is_chat_dataset(src / "train.jsonl"):
            return convert_datasets(src, workdir / "data", "completion", eval_file=spec.eval_file)
        return {"train": write_jsonl(workdir / "data" / "train.jsonl", chat_as_messages(src / "train.jsonl")),
                "eval": write_jsonl(workdir / "data" / "eval.jsonl", chat_as_messages(src / spec.eval_file)),
                "chat": workdir / "data"}

    def training_batches(self, spec: RunSpec) -> list[dict[str, Any]]:
        """``axolotl train`` on the run's YAML (its dataset preparation, chat template and collator inside its own
        trainer), stopped at ``Trainer.train()``: the child writes one epoch of the trainer's train dataloader and exits
        before any step."""
        resolved, values = self.run_values(spec)
        workdir = Path(tempfile.mkdtemp(prefix="ft-axolotl-batches-"))
        try:
            config = self.write_config(spec, values, {}, workdir)
            out = workdir / "batches.json"
            self.preload()

            def dump_batches() -> None:
                import transformers

                def train(trainer, *args, **kwargs):
                    out.write_text(json.dumps(hf.epoch_batches(trainer.get_train_dataloader())), encoding="utf-8")
                    os._exit(0)  # the batches are out; no step, no save

                transformers.Trainer.train = train
                _run("train", config)

            with cpu_threads(spec.device):
                run_in_fork(dump_batches)
            if not out.is_file():
                raise RuntimeError("axolotl's run ended without reaching Trainer.train(): no batches")
            return json.loads(out.read_text(encoding="utf-8"))
        finally:
            shutil.rmtree(workdir, ignore_errors=True)

    def launch(self, config: Path, spec: RunSpec) -> None:
        _run("train", config)

    def preload(self) -> None:
        os.environ.setdefault("AXOLOTL_DO_NOT_TRACK", "1")  # no telemetry (nothing outside is reachable here)
        import axolotl.cli.merge_lora  # noqa: F401
        import axolotl.cli.train  # noqa: F401
        import axolotl.train  # noqa: F401
        import axolotl.common.datasets  # noqa: F401
        import axolotl.core.builders  # noqa: F401  (trl's trainers, wandb, evaluate: 3 s a run if imported after fork)

    def merge(self, adapter_dir: Path, output_dir: Path) -> Path:
        """``axolotl merge-lora train.yml --lora-model-dir DIR``: the YAML the adapter was trained with (quantisation
        included: axolotl's merge then simulates the NF4 base), else one for its base; axolotl writes
        ``<output_dir>/merged``."""
        adapter_dir, out = Path(adapter_dir), Path(output_dir)
        cfg = self.trained_with.get(adapter_dir) or self.trained_with.get(adapter_dir.parent)
        if cfg is None:
            spec = RunSpec(model_dir=adapter_base(adapter_dir), output_dir=out, dataset_dir=out)
            cfg = build_config(spec, {**self.run_values(spec)[1], "train_type": "lora"},
                               {"train": out / "unused.jsonl", "eval": out / "unused.jsonl"}, out)
        cfg = {**cfg, "output_dir": str(out)}
        path = write_config_file(Path(output_dir).parent / f"{Path(output_dir).name}-axolotl.yml", cfg)
        self.preload()
        with cpu_threads("cpu"):
            run_in_fork(lambda: _run("merge-lora", path, lora_model_dir=str(adapter_dir)))
        return Path(output_dir) / "merged"
