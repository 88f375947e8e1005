"""The vocabulary every part of ft-harness speaks: what a run is, what it resolved to, where its files are.

A scenario describes a run with a :class:`RunSpec` (what a user would type); an adapter resolves its
arguments into :class:`ResolvedArgs` (each value with its :class:`Source`) and returns a :class:`RunResult`
(where the files are, nothing more). :data:`CAPABILITIES` names what an adapter may declare,
:data:`QUANTIZATIONS` the quantised-base kinds a run may ask for, :data:`TASK_DEFAULTS` what every run of
the tiny task has when the command line leaves a value unset, and :data:`KnownFailure` what an adapter's
``known_failures`` maps a scenario id to.

Ground floor of the ground floor: plain dataclasses and tables, importing nothing of the harness. The contract
(:mod:`harness.adapter`) re-exports every name here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

__all__ = [
    "CAPABILITIES",
    "QuantKind",
    "QUANTIZATIONS",
    "TASK_DEFAULTS",
    "DEFAULT_BETA",
    "kl_beta",
    "in_trainable_set",
    "SourceKind",
    "SOURCE_PRIORITY",
    "Source",
    "ResolvedArgs",
    "LoraSpec",
    "Method",
    "TrainType",
    "Quantization",
    "RunSpec",
    "RunResult",
    "KnownFailure",
]

#: Every capability a scenario may require. An adapter declares the subset it supports.
CAPABILITIES = frozenset(
    {
        "args",  # resolve_args(): layered argument resolution is observable
        "sft",  # supervised fine-tuning
        "grpo",  # GRPO reinforcement learning
        "dpo",  # DPO preference training (method="dpo"; preferences.jsonl; logs TRL's rewards/* keys every step)
        "kto",  # KTO preference training (method="kto"; preferences.jsonl unpaired; logs rewards/*, logps/*, kl)
        "diffusion",  # LoRA on a diffusion denoiser (method="diffusion"; model_dir holds unet/ and scheduler/)
        "full",  # full-parameter training
        "lora",  # LoRA training
        "resume",  # resume from checkpoint-N
        "quant-nf4",  # bitsandbytes 4-bit base
        "quant-int8",  # bitsandbytes 8-bit base
        "quanto-int8",  # optimum-quanto int8 base
        "quanto-int4",  # optimum-quanto int4 base
        "best-checkpoint",  # eval/save cadence, save_total_limit, metric for best
        "distributed",  # world_size > 1
        "packing",  # packing=True: samples packed into rows without attending across their boundaries
        "gradient-checkpointing",  # cli gradient_checkpointing "reentrant" / "non-reentrant": activations recomputed
        "trainable-set",  # cli trainable_parameters (full runs): only the parameters those patterns name train
        "moe",  # trains a harness.models "qwen3_moe" model_dir (fused 3-D experts, a router) as it trains the tiny model
        "merge",  # merge(adapter_dir, output_dir): the framework's own LoRA merge/export into a full model
        "data",  # training_batches(spec): the tokenised, collated batches the framework would train on
        "new-tokens",  # cli new_special_tokens: the framework adds the tokens and resizes the embeddings before training
        "gpu",  # device="cuda"
        # implied unless the adapter sets launches_subprocess = True: training runs in this process or a fork of it,
        # so fault injection can kill it at a file write (the crash scenario)
        "in-process",
    }
)


#: The values a run has when the command line leaves them unset (and the reference's defaults).
#: ``0`` means "off" for the cadences/limits so that a user can override a saved cadence with "none"
#: (``None`` means "not set"). The scenarios rely on ``logging every step`` and ``seed`` as well;
#: the best-checkpoint story (seed 004, ``RunSpec.story``): the one whose runs an adapter's
#: ``load_best_model_at_end=true`` option (a habit of that story's users) applies to
BEST_CHECKPOINT_STORY = "004"

#: see docs/adapters.md, "What the scenarios assume".
TASK_DEFAULTS: dict[str, Any] = {
    "method": "sft",
    "train_type": "lora",
    "quantization": None,
    "max_steps": 8,
    "learning_rate": 1e-3,
    "per_device_train_batch_size": 4,
    "gradient_accumulation_steps": 1,
    "eval_steps": 0,
    "save_steps": 0,
    "save_total_limit": 0,
    "save_on_best": True,
    "load_best_model_at_end": False,
    "metric": "eval_loss",
    "greater_is_better": None,
    "seed": 42,
    "lora_rank": 4,
    "lora_alpha": 8.0,
    "lora_dropout": 0.0,
    "target_modules": "all-linear",
    "lr_scheduler_type": "constant",
    "warmup_steps": 0,
    "packing": False,
    "num_generations": 4,
    "beta": None,  # the KL weight to the reference model; None: the method's own default (DEFAULT_BETA)
    "loss_type": "sigmoid",  # DPO's loss (the paper's; TRL's default); KTO runs its own loss (TRL's "kto")
    "max_completion_length": 8,
    "load_args": True,
    "allow_quantization_change": False,
    "new_special_tokens": (),  # tokens added to the tokenizer (and rows to the embeddings) before training
    "gradient_checkpointing": False,  # False, "reentrant" or "non-reentrant" (torch.utils.checkpoint's use_reentrant)
    #: full runs: regular expressions over parameter names (:func:`in_trainable_set`); () means every parameter trains
    "trainable_parameters": (),
    #: mixture-of-experts runs: > 0 adds the router's load-balancing loss with this weight (``output_router_logits``
    #: on; LLaMA-Factory ``moe_aux_loss_coef``, ms-swift ``--router_aux_loss_coef``); 0: as the model's config says
    "router_aux_loss_coef": 0.0,
}


def in_trainable_set(name: str, patterns: Sequence[str]) -> bool:
    """Whether parameter ``name`` (as the base model's ``named_parameters()`` / its ``model.safetensors`` name it,
    e.g. ``model.layers.1.mlp.up_proj.weight``) trains in a full run with ``trainable_parameters=patterns``: some
    pattern matches the *whole* name (``re.fullmatch``); an empty set of patterns means every parameter trains. The
    frameworks say it their own ways (axolotl ``unfrozen_parameters`` regexes, ms-swift ``--trainable_parameters``
    prefixes, LLaMA-Factory ``finetuning_type: freeze`` layer counts and module names): an adapter translates."""
    import re

    return not patterns or any(re.fullmatch(p, name) for p in patterns)


#: the KL weight a method uses when the run leaves ``beta`` unset (TRL's defaults: DPO and KTO 0.1; GRPO 0.0, no
#: reference model at all); DPO and KTO need beta > 0
DEFAULT_BETA: dict[str, float] = {"dpo": 0.1, "kto": 0.1, "grpo": 0.0}


def kl_beta(values: Mapping[str, Any]) -> float:
    """The KL weight of a resolved run: its ``beta``, else :data:`DEFAULT_BETA` for its method (0.0 for others)."""
    beta = values.get("beta")
    return float(beta) if beta is not None else DEFAULT_BETA.get(str(values.get("method")), 0.0)


@dataclass(frozen=True)
class QuantKind:
    """One quantised-base kind a run may ask for (``RunSpec.quantization``)."""

    name: str  # the RunSpec value
    capability: str  # what an adapter declares to support it
    library: str  # the distribution that implements it
    weights: str  # the weight format: "nf4", "int8", "int4"


#: Every quantisation kind, the one table: name -> (capability, library, weight format).
QUANTIZATIONS: dict[str, QuantKind] = {
    q.name: q
    for q in (
        QuantKind("nf4", "quant-nf4", "bitsandbytes", "nf4"),
        QuantKind("int8", "quant-int8", "bitsandbytes", "int8"),
        QuantKind("quanto-int8", "quanto-int8", "optimum-quanto", "int8"),
        QuantKind("quanto-int4", "quanto-int4", "optimum-quanto", "int4"),
    )
}

SourceKind = Literal["cli", "checkpoint", "adapter", "model", "default"]
#: Layer priority, highest first. The CLI always wins.
SOURCE_PRIORITY: tuple[SourceKind, ...] = ("cli", "checkpoint", "adapter", "model", "default")


@dataclass(frozen=True)
class Source:
    """Where a resolved argument came from: a layer kind and, for files, the file's path."""

    kind: SourceKind
    path: Path | None = None

    def __str__(self) -> str:
        return f"{self.kind}:{self.path}" if self.path is not None else self.kind


@dataclass(frozen=True)
class ResolvedArgs:
    """The outcome of argument resolution.

    ``values`` maps each argument to its effective value, ``sources`` maps the same keys to the
    :class:`Source` that supplied it, ``warnings`` holds one human-readable line per CLI value that
    overrode a different saved value (naming key, both values and both sources).
    """

    values: Mapping[str, Any]
    sources: Mapping[str, Source]
    warnings: tuple[str, ...] = ()

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)

    def source_of(self, key: str) -> Source:
        return self.sources[key]

    def describe(self) -> list[str]:
        """One line per non-default argument with its source: the seed's "source-labelled logging"."""
        return [
            f"{key} = {self.values[key]!r}  [{self.sources[key]}]"
            for key in sorted(self.values)
            if self.sources[key].kind != "default"
        ]


@dataclass(frozen=True)
class LoraSpec:
    """LoRA hyper-parameters. ``target_modules`` may be ``"all-linear"`` or a tuple of names."""

    r: int = 4
    alpha: float = 8.0
    dropout: float = 0.0
    target_modules: str | tuple[str, ...] = "all-linear"


Method = Literal["sft", "grpo", "dpo", "kto", "diffusion"]
TrainType = Literal["full", "lora"]
#: a harness kind (:data:`QUANTIZATIONS`) or one of the adapter's own (``Adapter.quantizations``)
Quantization = str

# RunSpec fields that are part of the *command line* (None = not typed by the user).
_CLI_FIELDS = (
    "method",
    "train_type",
    "quantization",
    "max_steps",
    "learning_rate",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "lr_scheduler_type",
    "warmup_steps",
    "packing",
    "eval_steps",
    "save_steps",
    "save_total_limit",
    "save_on_best",
    "load_best_model_at_end",
    "metric",
    "greater_is_better",
    "seed",
)


@dataclass(frozen=True)
class RunSpec:
    """One training run, described as a user would launch it.

    Every command-line field left as ``None`` means "not given on the command line": the adapter
    resolves it the way its framework does (saved ``args.json`` files, then defaults). ``cli`` holds
    any further command-line keys (e.g. ``{"load_args": False}``); a key may not be given both as a
    field and in ``cli``. ``options`` are adapter-specific switches that are not training arguments.
    ``resume_from`` is a checkpoint directory, or ``"latest"``: the newest *complete* checkpoint in
    ``output_dir`` (what ``resume_from_checkpoint=True`` means in transformers).
    """

    model_dir: Path
    output_dir: Path
    dataset_dir: Path
    method: Method | None = None
    train_type: TrainType | None = None
    quantization: Quantization | None = None
    lora: LoraSpec | None = None
    max_steps: int | None = None
    learning_rate: float | None = None
    per_device_train_batch_size: int | None = None
    gradient_accumulation_steps: int | None = None
    lr_scheduler_type: Literal["constant", "linear", "cosine"] | None = None
    warmup_steps: int | None = None
    packing: bool | None = None
    eval_steps: int | None = None
    save_steps: int | None = None
    save_total_limit: int | None = None
    save_on_best: bool | None = None
    #: the final model (``output_dir``) is the best evaluated checkpoint's, as transformers'
    #: ``load_best_model_at_end`` promises
    load_best_model_at_end: bool | None = None
    metric: str | None = None
    greater_is_better: bool | None = None
    resume_from: Path | Literal["latest"] | None = None
    seed: int | None = None
    device: Literal["cpu", "cuda"] = "cpu"
    world_size: int = 1
    cli: Mapping[str, Any] = field(default_factory=dict)
    options: Mapping[str, str] = field(default_factory=dict)
    #: the failure story this run belongs to (its scenario module's seed, e.g. ``"004"`` for the best checkpoint), not
    #: a training argument: an adapter option that models a habit of that story's users (transformers' and
    #: LLaMA-Factory's ``load_best_model_at_end=true`` column) applies only to the runs of that story
    story: str | None = None
    #: what every scenario relies on without typing it (docs/adapters.md, "What the scenarios assume"): pass these to
    #: the framework explicitly. The seed is ``seed`` when typed, else :data:`TASK_DEFAULTS`' (see
    #: :meth:`run_seed`); the loss (and the eval metrics when ``eval_steps`` is set) is logged every
    #: ``logging_steps``; evaluation reads ``dataset_dir / eval_file``, training ``dataset_dir / "train.jsonl"``.
    logging_steps: int = 1
    eval_file: str = "eval.jsonl"

    def __post_init__(self) -> None:
        for name in ("model_dir", "output_dir", "dataset_dir", "resume_from"):
            value = getattr(self, name)
            if value is not None and value != "latest" and not isinstance(value, Path):
                object.__setattr__(self, name, Path(value))
        both = set(self.cli) & {f for f in _CLI_FIELDS if getattr(self, f) is not None}
        if both:
            raise ValueError(f"RunSpec: {sorted(both)} given both as a field and in cli")

    def cli_args(self) -> dict[str, Any]:
        """The command line as a flat dict: typed fields that are set, LoRA settings, then ``cli``."""
        args = {name: getattr(self, name) for name in _CLI_FIELDS if getattr(self, name) is not None}
        if self.lora is not None:
            tm = self.lora.target_modules
            args.update(
                lora_rank=self.lora.r,
                lora_alpha=self.lora.alpha,
                lora_dropout=self.lora.dropout,
                target_modules=tm if isinstance(tm, str) else list(tm),
            )
        args.update(self.cli)
        return args

    def run_seed(self) -> int:
        """The seed this run uses: the typed ``seed``, else the task default (42). Pass it to the framework even when
        the user typed none: a framework that shuffles from the global RNG is otherwise not reproducible."""
        if self.seed is not None:
            return self.seed
        return int(TASK_DEFAULTS["seed"])

    def replace(self, **changes: Any) -> "RunSpec":
        import dataclasses

        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class RunResult:
    """Where a finished run left its files. Oracles read the files, not these claims."""

    output_dir: Path
    checkpoints: tuple[Path, ...]
    final_dir: Path
    log_history: tuple[Mapping[str, Any], ...]
    resolved: ResolvedArgs | None = None

    def checkpoint(self, step: int) -> Path:
        for ckpt in self.checkpoints:
            if ckpt.name == f"checkpoint-{step}":
                return ckpt
        raise FileNotFoundError(
            f"no checkpoint-{step} in {self.output_dir} (have: {[c.name for c in self.checkpoints]})"
        )


#: A known failure: a reason (upstream issue), or ``(reason, ExceptionClass)`` when the failure is an exception
#: of that class (any other exception is then a real failure).
KnownFailure = Union[str, "tuple[str, type[BaseException]]"]
