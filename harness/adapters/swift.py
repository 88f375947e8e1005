"""ms-swift (``pip install ft-harness[swift]``), 3.x and 4.x, driven the way its users drive it.

A RunSpec becomes the argument list of ``swift sft`` (or ``swift rlhf --rlhf_type grpo|dpo``), run
through swift's own entry point (``sft_main(argv)`` / ``rlhf_main(argv)``: the same parsing,
``load_args`` and training as the CLI) in a forked child: one process per run as with the CLI,
without re-importing torch per run. Version
differences are mapped, not assumed: 3.x calls the training type ``train_type`` and its arguments
``TrainArguments``; 4.x calls it ``tuner_type`` and uses ``SftArguments``. Only keys the installed
version's argument class knows are passed.

``merge`` is ``swift export --adapters DIR --merge_lora true``. No ``packing`` capability: ms-swift packs only
with a flash-attention implementation (CUDA). ``trainable_parameters`` (whole-name regexes) is not swift's own
``--trainable_parameters`` (name prefixes): it becomes ``--freeze_parameters_ratio 1`` and one anchored
``--trainable_parameters_regex`` (:func:`trainable_regex`; capability ``trainable-set`` where the version has both).
The tiny MoE (``qwen3_moe``) runs as ``--model_type qwen3_moe``; ``router_aux_loss_coef`` is swift's own key (capability
``moe`` where the version has it).

``resolve_args`` asks swift itself: it builds the argument dataclass with the command-line values,
skips ``__post_init__`` (which loads the model) and runs swift's own checkpoint discovery and
``load_args`` code on it, then reports where each value came from by comparing it with the command
line and the args.json swift read. swift logs no warning when it overrides a value, so ``warnings``
is always empty.

Options (``--ft-adapter-option KEY=VALUE``):

``load_args``   true/false: passed as ``--load_args`` on every run (default: not passed, the
                installed version's default applies).
``ref_adapters`` true/false (default false): DPO / GRPO runs on a LoRA output also pass it as ``--ref_adapters``, the
                ms-swift way to make the reference the pre-trained adapter's policy (the default leaves it to ms-swift).
``template``    swift template name (default ``qwen`` for text data; for chat data ``ft_tiny``, the tiny chat format
                registered with ms-swift's ``register_template``, as its docs describe for a custom model;
                ``ft_tiny_thinking``, the same declared ``is_thinking`` as ms-swift's qwen3, when the model's chat
                template renders reasoning).

DPO (``method="dpo"``) is ``swift rlhf --rlhf_type dpo`` on ``messages`` + ``rejected_response`` rows (the tiny chat
template), ``--beta`` / ``--loss_type`` as resolved, and no ``--ref_model`` / ``--ref_adapters``: ms-swift chooses
the reference, as for a user who continues from ``--adapters``. KTO (``method="kto"``) is ``--rlhf_type kto`` on the
same rows unpaired (``messages`` + a boolean ``label``), ``--beta``.

Chat data (``messages`` / ``prompt``+``completion`` rows) is passed as ``messages`` rows; ``training_batches`` runs
``swift sft`` and stops at ``Trainer.train()`` to read one epoch of its dataloader.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .. import hf
from ..adapter import Adapter, ResolvedArgs, RunResult, RunSpec, Source
from ..errors import ConfigError
from ..layout import adapter_base, is_adapter_dir
from ..runtime import cpu_threads, library_versions, run_in_fork
from ..kit import (check_options, checkpoints_in, collect_result, convert_chat_datasets, convert_datasets,
                   parse_bool, refuse)
from ..spec import TASK_DEFAULTS, kl_beta
from ..task import is_chat_dataset

__all__ = ["SwiftAdapter", "OPTIONS", "build_argv", "type_key", "QUANT_ARGS", "trainable_regex"]

OPTIONS = {
    "load_args": "true/false: pass --load_args on every run (default: the installed version's default)",
    "template": "swift template (default qwen)",
    "ref_adapters": "true/false, default false: DPO/GRPO on a LoRA output also pass it as --ref_adapters (the reference "
                    "then holds the pre-trained adapter, as ms-swift documents)",
}

#: our quantisation names -> swift's command-line keys
QUANT_ARGS: dict[str, dict[str, Any]] = {
    "nf4": {"quant_method": "bnb", "quant_bits": 4, "bnb_4bit_quant_type": "nf4",
            "bnb_4bit_compute_dtype": "float32"},
    "int8": {"quant_method": "bnb", "quant_bits": 8},
    "quanto-int8": {"quant_method": "quanto", "quant_bits": 8},
    "quanto-int4": {"quant_method": "quanto", "quant_bits": 4},
}

#: harness metric names -> the names swift logs (next-token accuracy is swift's ``token_acc``)
METRIC_NAMES = {"eval_loss": "eval_loss", "eval_accuracy": "eval_token_acc"}

#: fixed settings for the tiny runs (each passed only if the installed swift knows the key)
_FIXED = {"add_version": False, "report_to": "none", "logging_steps": 1, "dataloader_num_workers": 0,
          "torch_dtype": "float32", "max_length": 64, "split_dataset_ratio": 0, "dataset_num_proc": 1,
          "gradient_checkpointing": False, "warmup_ratio": 0.0, "check_model": False, "lazy_tokenize": False,
          "save_only_model": False, "disable_tqdm": True, "weight_decay": 0.0, "model_type": "qwen2",
          "use_hf": False, "load_from_cache_file": False}


def type_key(fields: set[str]) -> str:
    """``tuner_type`` (ms-swift 4.x) or ``train_type`` (3.x), by the argument class's fields."""
    return "tuner_type" if "tuner_type" in fields else "train_type"


def _transformers_drives_bnb_here() -> bool:
    """bitsandbytes on this device through the installed transformers. transformers < 4.55 (ms-swift
    3.1.1 pins 4.49) has no CPU path for bitsandbytes 0.4x/0.5x: its multi-backend check fails with
    ``AttributeError: 'frozenset' object has no attribute 'discard'`` before training; on CUDA it works."""
    import torch
    import transformers

    major, minor = (int(p) for p in transformers.__version__.split(".")[:2])
    return (major, minor) >= (4, 55) or torch.cuda.is_available()


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _model_type(model_dir: Path) -> str | None:
    config = model_dir / "config.json"
    return json.loads(config.read_text(encoding="utf-8")).get("model_type") if config.is_file() else None


def trainable_regex(patterns: Sequence[str]) -> str:
    """The harness's ``trainable_parameters`` (each pattern matches a whole name) as the one regular expression
    ms-swift's ``--trainable_parameters_regex`` takes (``re.search`` over ``named_parameters()`` names): anchored."""
    return "^(?:" + "|".join(f"(?:{p})" for p in patterns) + ")$"


def swift_cli(cli: Mapping[str, Any], fields: set[str]) -> dict[str, Any]:
    """Our command-line keys -> swift keys: the training type (version dependent), quantisation and
    metric are mapped, every other key has the same name in swift."""
    out: dict[str, Any] = {}
    for key, value in cli.items():
        if value is None:
            continue
        if key == "train_type":
            out[type_key(fields)] = value
        elif key == "quantization":
            if value not in QUANT_ARGS:
                raise ConfigError(None, "quantization", f"one of {sorted(QUANT_ARGS)}", value)
            out.update(QUANT_ARGS[value])
        elif key == "metric":
            out["metric_for_best_model"] = METRIC_NAMES.get(value, value).removeprefix("eval_")
        elif key == "trainable_parameters":  # swift's own --trainable_parameters are name prefixes: not the same
            if value:  # freeze everything, then unfreeze the names one anchored regex matches (re.search)
                out.update(freeze_parameters_ratio=1.0, trainable_parameters_regex=trainable_regex(value))
        elif key == "gradient_checkpointing":  # False, "reentrant" or "non-reentrant" (TrainingArguments' own keys)
            out[key] = bool(value)
            gc = hf.gradient_checkpointing_arguments(value)
            if gc:  # the kwargs as the JSON swift's argument parser reads
                out["gradient_checkpointing_kwargs"] = json.dumps(gc["gradient_checkpointing_kwargs"])
        elif key == "lora_alpha" and float(value).is_integer():
            out[key] = int(value)  # swift 3.x parses --lora_alpha as int and refuses "8.0"
        elif key not in ("method", "save_on_best"):  # no swift equivalent: handled by build_argv / not offered
            out[key] = value
    return out


def build_argv(spec: RunSpec, fields: set[str], data: Mapping[str, Path], *, template: str = "qwen",
               load_args: bool | None = None, plugin: Path | None = None,
               ref_adapters: bool = False) -> tuple[str, list[str]]:
    """(entry point, argv) for one RunSpec: what the user would type after ``swift``.

    A LoRA output directory as ``model_dir`` is passed as ``--adapters DIR --model <its base>``
    (swift's documented way to continue from an adapter). ``resume_from="latest"`` becomes the
    newest ``checkpoint-N`` path, as swift needs a path.
    """
    cli = spec.cli_args()
    method = cli.pop("method", None) or "sft"
    args: dict[str, Any] = {}
    model_dir = Path(spec.model_dir)
    if is_adapter_dir(model_dir):
        args["model"], args["adapters"] = str(adapter_base(model_dir)), str(model_dir)
    else:
        args["model"] = str(model_dir)
    args["template"] = template
    if _model_type(Path(args["model"])) == "qwen3_moe":  # the tiny MoE: swift's qwen3_moe group (is_moe_model)
        args["model_type"] = "qwen3_moe"
    args.update(swift_cli(cli, fields))
    if load_args is not None and "load_args" not in args:
        args["load_args"] = load_args
    eval_steps = cli.get("eval_steps") or 0
    if method == "grpo":
        entry = "rlhf"
        args.setdefault("per_device_train_batch_size", cli.get("num_generations", 4))  # one prompt's group
        args.update(rlhf_type="grpo", dataset=str(data["prompts"]), beta=kl_beta({**cli, "method": method}),
                    eval_strategy="no",
                    reward_funcs="ft_counting", num_generations=cli.get("num_generations", 4),
                    max_completion_length=cli.get("max_completion_length", 8), temperature=1.0,
                    use_vllm=False)  # 3.10.0/3.10.1 default to vLLM, which needs CUDA
        if plugin is not None:
            args["external_plugins"] = str(plugin)
    elif method == "dpo":  # docs: swift rlhf --rlhf_type dpo, messages + rejected_response rows, no --ref_model
        entry = "rlhf"
        args.update(rlhf_type="dpo", dataset=str(data["preferences"]), eval_strategy="no")
        args["beta"] = kl_beta({**cli, "method": method})
        args.setdefault("loss_type", TASK_DEFAULTS["loss_type"])
    elif method == "kto":  # docs: swift rlhf --rlhf_type kto, messages + label rows (KTO's own loss), no --ref_model
        entry = "rlhf"
        args.update(rlhf_type="kto", dataset=str(data["preferences"]), eval_strategy="no")
        args["beta"] = kl_beta({**cli, "method": method})
        args.pop("loss_type", None)
        # 4.6.0's prepare_kto_dataset multiplies by gradient_accumulation_steps before ms-swift has defaulted it
        # (TypeError: 'int' and 'NoneType' without the flag), so it is always typed
        args.setdefault("gradient_accumulation_steps", cli.get("gradient_accumulation_steps", 1))
    elif method == "sft":
        entry = "sft"
        args.update(dataset=str(data["train"]), val_dataset=str(data["eval"]),
                    eval_strategy="steps" if eval_steps else "no")
        if not eval_steps:
            args.pop("eval_steps", None)
    else:
        raise ConfigError(None, "method", "sft, grpo, dpo or kto", method)
    if ref_adapters and entry == "rlhf" and "adapters" in args:  # the reference: base + the pre-trained adapter
        args["ref_adapters"] = args["adapters"]
    args.setdefault("lr_scheduler_type", "constant")
    args.setdefault("save_strategy", "steps")
    if not cli.get("save_steps"):
        args["save_steps"] = 10_000  # no intermediate saves; swift still saves the last step
    if cli.get("save_total_limit") == 0:
        args.pop("save_total_limit")
    args.update({k: v for k, v in _FIXED.items() if k not in args})
    args["output_dir"] = str(spec.output_dir)
    if spec.device == "cpu":
        args["use_cpu"] = True
    if spec.resume_from is not None:
        resume = spec.resume_from
        if resume == "latest":
            ckpts = checkpoints_in(spec.output_dir)
            if not ckpts:
                raise ConfigError(None, "resume_from", "a checkpoint-N in output_dir", "latest")
            resume = ckpts[-1]
        args["resume_from_checkpoint"] = str(resume)
    argv = []
    for key, value in args.items():
        if key not in fields and key not in ("model", "dataset"):
            continue  # this swift version has no such argument
        argv.append(f"--{key}")
        if isinstance(value, (list, tuple)):
            argv.extend(_fmt(v) for v in value)
        else:
            argv.append(_fmt(value))
    return entry, argv


def swift_kto(rows_file: Path, out: Path) -> Path:
    """Preference rows unpaired as ms-swift's KTO format: each exchange as ``messages`` with a boolean ``label``
    (the chosen answer desirable, the rejected one not)."""
    from ..kit import unpaired_preferences
    from ..models import read_jsonl, write_jsonl

    return write_jsonl(out, unpaired_preferences(read_jsonl(rows_file), lambda prompt, completion, label: {
        "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}],
        "label": label}))


def swift_preferences(rows_file: Path, out: Path) -> Path:
    """Preference rows (prompt / chosen / rejected) as ms-swift's DPO format: the chosen exchange as ``messages`` and
    the rejected answer as ``rejected_response``."""
    from ..models import read_jsonl, write_jsonl

    return write_jsonl(out, [{"messages": [{"role": "user", "content": r["prompt"]},
                                           {"role": "assistant", "content": r["chosen"]}],
                              "rejected_response": r["rejected"]} for r in read_jsonl(rows_file)])


_PLUGIN = '''\
"""ft-harness GRPO reward for ms-swift (--external_plugins): the harness's counting reward."""
from harness.task import counting_reward

try:  # ms-swift 4.x
    from swift.rewards import ORM, orms
except ImportError:  # ms-swift 3.x
    from swift.plugin import ORM, orms


class FtCounting(ORM):
    def __call__(self, completions, **kwargs):
        messages = kwargs.get("messages") or [[]] * len(completions)
        prompts = [next((m["content"] for m in reversed(ms) if m.get("role") == "user"), "") for ms in messages]
        return counting_reward(prompts, completions)


orms["ft_counting"] = FtCounting
'''


#: ms-swift template for the tiny chat format (its tokenizer's jinja template in ms-swift's terms), registered the way
#: ms-swift documents a custom model's template: BOS, ``<|user|> QUERY <|assistant|> ``, the response, then the EOS
#: (between rounds too: ms-swift trains a ``chat_sep`` that starts with the suffix, ``_add_dynamic_eos``)
TINY_TEMPLATE = "ft_tiny"
TINY_TEMPLATE_META = {"template_type": TINY_TEMPLATE, "prefix": [["bos_token_id"]],
                      "prompt": ["<|user|> {{QUERY}} <|assistant|> "], "chat_sep": [["eos_token_id"], " "],
                      "suffix": [["eos_token_id"]]}


#: the same for a reasoning model's tokenizer (a chat template with ``</think>``), as ms-swift declares its own hybrid
#: thinking templates (qwen3): ``is_thinking`` removes the reasoning of every turn before the last user turn
#: (``_remove_history_thinking``), ``non_thinking_prefix`` gives a final turn without reasoning its empty think block
TINY_THINKING_TEMPLATE = "ft_tiny_thinking"
TINY_THINKING_TEMPLATE_META = {**TINY_TEMPLATE_META, "template_type": TINY_THINKING_TEMPLATE, "is_thinking": True,
                               "non_thinking_prefix": "<think> </think> "}


def register_tiny_template(meta: Mapping[str, Any] = TINY_TEMPLATE_META) -> None:
    """Register :data:`TINY_TEMPLATE` (or another of these metas) with the installed ms-swift (4.x
    ``swift.template``, 3.x ``swift.llm``)."""
    try:
        from swift.template import TemplateMeta, register_template
    except ImportError:  # ms-swift 3.x
        from swift.llm import TemplateMeta, register_template
    register_template(TemplateMeta(**meta), exist_ok=True)


def _template_meta_has(field_name: str) -> bool:
    """Whether the installed ms-swift's ``TemplateMeta`` has this field (``is_thinking`` is in 4.x, not in 3.1.1)."""
    try:
        from swift.template import TemplateMeta
    except ImportError:  # ms-swift 3.x
        from swift.llm import TemplateMeta
    return field_name in {f.name for f in dataclasses.fields(TemplateMeta)}


def _is_reasoning_model(model_dir: Path) -> bool:
    """Whether the model's own chat template renders reasoning (``</think>``), read as a user picks the template."""
    for name in ("chat_template.jinja", "tokenizer_config.json"):
        path = Path(model_dir) / name
        if path.is_file() and "</think>" in path.read_text(encoding="utf-8", errors="replace"):
            return True
    return False


class SwiftAdapter(Adapter):
    """ms-swift 3.x / 4.x through ``swift sft`` / ``swift rlhf`` argument lists, in-process."""

    name = "swift"
    #: what the scenarios call a metric -> what swift logs it as (oracles read the log under that name)
    metric_names = METRIC_NAMES
    #: the tiny Llama is registered with swift as ``--model_type qwen2 --template qwen`` (transformers 5.19
    #: forces Qwen2Tokenizer on a config whose model_type is qwen2, which the tiny WordLevel tokenizer is not)
    model_arch = "llama"

    def __init__(self, **options: str):
        check_options("swift", options, OPTIONS)
        self.load_args = (parse_bool("swift", "load_args", options["load_args"]) if "load_args" in options
                          else None)
        self.template = options.get("template", "qwen")
        self.template_given = "template" in options
        self.ref_adapters = parse_bool("swift", "ref_adapters", options.get("ref_adapters", "false"))
        import swift

        self.version = getattr(swift, "__version__", "0")
        self.major = int(str(self.version).split(".")[0] or 0)
        self.name = f"swift {self.version}" + (f"[load_args={_fmt(self.load_args)}]" if self.load_args is not None
                                               else "") + ("[ref_adapters=true]" if self.ref_adapters else "")
        caps = {"args", "sft", "full", "lora", "resume", "quant-nf4", "quant-int8", "quanto-int8", "quanto-int4",
                "best-checkpoint", "merge", "data", "gpu"}  # no "packing": swift packs only with flash attention (CUDA)
        if self._has_grpo():
            caps.add("grpo")
        if self._has_rlhf("dpo"):
            caps.add("dpo")
        if self._has_rlhf("kto"):
            caps.add("kto")
        if "new_special_tokens" in self._fields():  # --new_special_tokens: swift adds them and resizes
            caps.add("new-tokens")
        if "router_aux_loss_coef" in self._fields():
            caps.add("moe")  # --model_type qwen3_moe for the tiny MoE, --router_aux_loss_coef as typed
        if {"freeze_parameters_ratio", "trainable_parameters_regex"} <= self._fields():
            caps.add("trainable-set")  # --freeze_parameters_ratio 1 --trainable_parameters_regex (swift_cli)
        if {"gradient_checkpointing", "gradient_checkpointing_kwargs"} <= self._fields():
            caps.add("gradient-checkpointing")  # TrainingArguments' own keys (swift_cli)
        if not _transformers_drives_bnb_here():
            caps -= {"quant-nf4", "quant-int8"}
        self.capabilities = frozenset(caps)
        #: 3.x saves the training type as train_type, 4.x as tuner_type
        self.arg_names = {"train_type": type_key(self._fields())}

    def versions(self) -> dict[str, str]:
        return {"ms-swift": self.version, **library_versions("transformers", "peft", "trl")}

    # ------------------------------------------------------------------ swift's own classes
    def _sft_class(self):
        if self.major >= 4:
            from swift.arguments import SftArguments

            return SftArguments
        from swift.llm import TrainArguments

        return TrainArguments

    def _rlhf_class(self):
        try:
            if self.major >= 4:
                from swift.arguments import RLHFArguments
            else:
                from swift.llm import RLHFArguments
        except ImportError:
            return None
        return RLHFArguments

    def _has_grpo(self) -> bool:
        return self._has_rlhf("grpo")

    def _has_rlhf(self, kind: str) -> bool:
        """Whether this ms-swift's ``rlhf_type`` offers ``kind`` (its dataclass field's Literal type names it)."""
        cls = self._rlhf_class()
        return cls is not None and any(kind in str(f.type) for f in dataclasses.fields(cls) if f.name == "rlhf_type")

    def _fields(self) -> set[str]:
        return {f.name for f in dataclasses.fields(self._sft_class())}

    # ------------------------------------------------------------------ arguments
    def resolve_args(self, cli: Mapping[str, Any], model_dir: Path, resume_dir: Path | None = None) -> ResolvedArgs:
        cls = self._sft_class()
        fields = self._fields()
        obj = cls.__new__(cls)
        for f in dataclasses.fields(cls):
            if f.default is not dataclasses.MISSING:
                setattr(obj, f.name, f.default)
            elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
                setattr(obj, f.name, f.default_factory())  # type: ignore[misc]
        defaults = {k: getattr(obj, k, None) for k in fields}
        given = swift_cli(cli, fields)
        if self.load_args is not None:
            given.setdefault("load_args", self.load_args)
        for key, value in given.items():
            setattr(obj, key, value)
        model_dir = Path(model_dir)
        obj.model, obj.adapters = str(model_dir), []
        if is_adapter_dir(model_dir):
            obj.model, obj.adapters = str(adapter_base(model_dir)), [str(model_dir)]
        if resume_dir is not None:  # what TrainArguments.__post_init__ does with --resume_from_checkpoint
            if getattr(obj, type_key(fields)) == "full":
                obj.model = str(resume_dir)
            else:
                obj.adapters = [str(resume_dir)]
        obj._init_ckpt_dir()  # swift's own discovery + load_args_from_ckpt
        ckpt = Path(obj.ckpt_dir) if getattr(obj, "ckpt_dir", None) else None
        saved = json.loads((ckpt / "args.json").read_text(encoding="utf-8")) if ckpt else {}
        kind = ("checkpoint" if resume_dir is not None and ckpt == Path(resume_dir) else
                "adapter" if ckpt is not None and is_adapter_dir(ckpt) else "model")
        back = {type_key(fields): "train_type"}
        values: dict[str, Any] = {}
        sources: dict[str, Source] = {}
        for skey in fields:
            key = back.get(skey, skey)
            value = getattr(obj, skey, None)
            if key in ("output_dir", "device", "resume_from_checkpoint"):
                values[key], sources[key] = value, Source("cli" if skey in given else "default")
                continue
            values[key] = value
            if skey in given and given[skey] == value:
                sources[key] = Source("cli")
            elif ckpt is not None and skey in saved and saved[skey] == value and value != defaults.get(skey):
                sources[key] = Source(kind, ckpt / "args.json")  # type: ignore[arg-type]
            elif skey in given:
                sources[key] = Source(kind, ckpt / "args.json") if ckpt else Source("default")  # type: ignore
            else:
                sources[key] = Source("default")
        return ResolvedArgs(values=values, sources=sources, warnings=())

    # ------------------------------------------------------------------ training
    def _template_for(self, spec: RunSpec) -> str:
        """The ``template`` option when given; else the tiny chat template for chat data and DPO's conversational rows,
        ``qwen`` for text."""
        if self.template_given:
            return self.template
        if spec.method not in ("dpo", "kto") and not is_chat_dataset(Path(spec.dataset_dir) / "train.jsonl"):
            return self.template
        if not _is_reasoning_model(spec.model_dir):
            return TINY_TEMPLATE
        if not _template_meta_has("is_thinking"):
            refuse("ms-swift", "template", TINY_THINKING_TEMPLATE,
                   "this release's TemplateMeta has no is_thinking (no thinking templates): it cannot render a "
                   "reasoning model's template")
        return TINY_THINKING_TEMPLATE

    def _data(self, spec: RunSpec, tmp: Path) -> dict[str, Path]:
        if is_chat_dataset(Path(spec.dataset_dir) / "train.jsonl"):
            files = convert_chat_datasets(Path(spec.dataset_dir), Path(tmp) / "data", "messages")
            return {**files, "prompts": files["train"]}
        return convert_datasets(Path(spec.dataset_dir), Path(tmp) / "data", "messages")

    def training_batches(self, spec: RunSpec) -> list[Mapping[str, Any]]:
        """``swift sft`` with the run's arguments, stopped at ``Trainer.train()``: the child writes one epoch of the
        trainer's train dataloader (ms-swift's template encode, its collator and sampler) and exits before any step."""
        import json
        import os
        import tempfile

        with tempfile.TemporaryDirectory(prefix="ft-swift-") as tmp:
            data = self._data(spec, Path(tmp))
            entry, argv = build_argv(spec, self._fields(), data, template=self._template_for(spec),
                                     load_args=self.load_args)
            out = Path(tmp) / "batches.json"

            def dump_batches() -> None:
                import transformers

                def train(trainer, *args, **kwargs):
                    out.write_text(json.dumps(hf.epoch_batches(trainer.get_train_dataloader())), encoding="utf-8")
                    os._exit(0)  # the batches are out; no step, no save

                transformers.Trainer.train = train
                self._run(entry, argv)

            with cpu_threads(spec.device):
                run_in_fork(dump_batches)
            if not out.is_file():
                raise RuntimeError(f"swift {entry} ended without reaching Trainer.train(): no batches")
            return json.loads(out.read_text(encoding="utf-8"))

    def train(self, spec: RunSpec) -> RunResult:
        import tempfile

        fields = self._fields()
        with tempfile.TemporaryDirectory(prefix="ft-swift-") as tmp:
            data = self._data(spec, Path(tmp))
            plugin = Path(tmp) / "ft_swift_plugin.py"
            plugin.write_text(_PLUGIN, encoding="utf-8")
            if spec.method in ("grpo", "dpo", "kto"):
                fields = fields | self._rlhf_fields()
            if spec.method == "dpo":
                data["preferences"] = swift_preferences(data["preferences"], Path(tmp) / "data" / "dpo.jsonl")
            elif spec.method == "kto":
                data["preferences"] = swift_kto(data["preferences"], Path(tmp) / "data" / "kto.jsonl")
            entry, argv = build_argv(spec, fields, data, template=self._template_for(spec), load_args=self.load_args,
                                     ref_adapters=self.ref_adapters,
                                     plugin=plugin)
            with cpu_threads(spec.device):
                run_in_fork(lambda: self._run(entry, argv))
        ckpts = checkpoints_in(spec.output_dir)
        if not ckpts:
            raise RuntimeError(f"swift {entry} left no checkpoint in {spec.output_dir} (argv: {' '.join(argv)})")
        return collect_result(spec, ckpts[-1], None)

    def evaluate(self, directory: Path, spec: RunSpec) -> dict[str, float]:
        """ms-swift's own evaluation of a saved directory. swift has no evaluate-only mode for ``sft``, so this is the
        command a user would run to see it: ``swift sft`` from the directory (``--model DIR`` for a full save,
        ``--adapters DIR`` for an adapter) for one step at learning rate 0 with an evaluation at step 1 — the weights
        are unchanged (AdamW's update and decoupled weight decay both scale with the learning rate), and the logged
        eval metrics come from swift's template, data pipeline and loss."""
        import tempfile

        from ..layout import read_log_history

        adapter = is_adapter_dir(Path(directory))
        with tempfile.TemporaryDirectory(prefix="ft-swift-eval-") as tmp:
            run = RunSpec(model_dir=Path(directory), output_dir=Path(tmp) / "out", dataset_dir=spec.dataset_dir,
                          train_type="lora" if adapter else "full", quantization=spec.quantization if adapter else None,
                          max_steps=1, learning_rate=0.0, eval_steps=1, save_steps=1, device=spec.device,
                          metric=spec.cli_args().get("metric"))
            self.train(run)
            history = read_log_history(run.output_dir)
        evals = [h for h in history if any(k.startswith("eval_") for k in h)]
        if not evals:
            raise RuntimeError(f"swift logged no evaluation when re-evaluating {directory}")
        return {k: float(v) for k, v in evals[0].items() if k.startswith("eval_") and isinstance(v, (int, float))}

    def merge(self, adapter_dir: Path, output_dir: Path) -> Path:
        """``swift export --adapters DIR --merge_lora true --output_dir OUT``: swift reads the model, template and
        quantisation from the adapter's ``args.json`` (and, for a quantised training base, merges into the
        original unquantised model: peft #2321)."""
        argv = ["--adapters", str(adapter_dir), "--merge_lora", "true", "--output_dir", str(output_dir)]
        with cpu_threads("cpu"):
            run_in_fork(lambda: self._run("export", argv))
        return Path(output_dir)

    def _rlhf_fields(self) -> set[str]:
        return {f.name for f in dataclasses.fields(self._rlhf_class())}

    def _run(self, entry: str, argv: Sequence[str]) -> None:
        import torch

        if not hasattr(torch.cpu, "max_memory_reserved"):  # ms-swift 3.10.2-3.11.x call it on every log step
            torch.cpu.max_memory_reserved = lambda device=None: 0  # a CPU machine setting, not a training fix
        if "--template" in argv and TINY_TEMPLATE in argv:
            register_tiny_template()
        if "--template" in argv and TINY_THINKING_TEMPLATE in argv:
            register_tiny_template(TINY_THINKING_TEMPLATE_META)
        if self.major >= 4:
            from swift.pipelines import export_main, rlhf_main, sft_main
        else:
            from swift.llm import export_main, rlhf_main, sft_main
        {"rlhf": rlhf_main, "sft": sft_main, "export": export_main}[entry](list(argv))
