"""The contract between the scenarios and a fine-tuning framework: the :class:`Adapter` base with every member an
adapter may have and its default, loading (:func:`load_adapter`) and validation, and the known-failures file.

The vocabulary the contract speaks (:class:`RunSpec`, :class:`RunResult`, :class:`ResolvedArgs`, :data:`CAPABILITIES`,
:data:`QUANTIZATIONS`, :data:`TASK_DEFAULTS`, ...) is defined in :mod:`harness.spec` and re-exported here.

A framework plugs into ft-harness by providing one class that satisfies :class:`FrameworkAdapter` (subclassing
:class:`Adapter` is the easy way).
Scenarios only ever talk to that class: they describe a run with a :class:`RunSpec` (what a user
would type), call :meth:`FrameworkAdapter.train`, and then judge *the files on disk* with the
oracles in :mod:`harness.oracles`. The adapter's :class:`RunResult` only says where things are.

Adapters are selected with ``--ft-adapter module:Class`` (or the ``FT_HARNESS_ADAPTER`` environment
variable, or an entry-point name in the ``ft_harness.adapters`` group). Options given with
``--ft-adapter-option key=value`` are passed to the constructor as keyword arguments (strings).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from .errors import AdapterLoadError
from .layout import TRAINER_LAYOUT, trainer_default
from .spec import *  # noqa: F403 - the vocabulary, re-exported (harness.spec.__all__)
from .spec import __all__ as _VOCABULARY
from .spec import (CAPABILITIES, QUANTIZATIONS, TASK_DEFAULTS, KnownFailure, QuantKind, ResolvedArgs, RunResult,
                   RunSpec, Source)

__all__ = [
    # the contract
    "FrameworkAdapter",
    "Adapter",
    "OPTIONAL_MEMBERS",
    "load_adapter",
    "validate_adapter",
    "quantization_kinds",
    "effective_capabilities",
    "read_known_failures",
    "parse_adapter_options",
    "split_adapter_spec",
    "ADAPTER_ENTRY_POINT_GROUP",
    "RESUME_FILE_ROLES",
    # the vocabulary, re-exported: every name of harness.spec
    *_VOCABULARY,
]

ADAPTER_ENTRY_POINT_GROUP = "ft_harness.adapters"
#: the roles of :attr:`Adapter.resume_files`
RESUME_FILE_ROLES = frozenset({"optimizer", "scheduler", "rng", "args", "weights"})


@runtime_checkable
class FrameworkAdapter(Protocol):
    """What a framework implements to be tested by ft-harness.

    * ``name``: short id used in reports.
    * ``capabilities``: subset of :data:`CAPABILITIES`; scenarios needing others are skipped.
    * ``known_failures``: optional mapping of scenario test id (or a prefix of it) to a reason or
      upstream issue URL, or to ``(reason, ExceptionClass)``; those tests run as *strict* xfail
      (with ``raises=ExceptionClass`` when given: another exception is a real failure).
    * ``resolve_args(cli, model_dir, resume_dir=None)``: pure and fast; how the framework would
      resolve the given command line against the saved argument files, with sources and warnings.
    * ``train(spec)``: run the framework as a user would and return where the files are.
    """

    name: str
    capabilities: frozenset[str]

    def resolve_args(
        self, cli: Mapping[str, Any], model_dir: Path, resume_dir: Path | None = None
    ) -> ResolvedArgs: ...

    def train(self, spec: RunSpec) -> RunResult: ...


class Adapter:
    """Base class of every adapter: each member a scenario, the plugin or a report may use, with its default.

    Subclass it, set :attr:`name` and :attr:`capabilities`, implement :meth:`train`; override the rest
    only where the framework differs from the default. (Duck-typed adapters work too: :func:`load_adapter`
    fills in the defaults below for any optional member they lack.)
    """

    #: short id used in reports and failure messages
    name: str = "adapter"
    #: subset of :data:`CAPABILITIES`; a scenario needing another one is skipped, naming it
    capabilities: frozenset[str] = frozenset()
    #: scenario test id or prefix (``test_module.py::test_name[params``) -> :data:`KnownFailure`; matching tests
    #: run as *strict* xfails. Compute it in ``__init__`` when it depends on options or installed versions.
    known_failures: Mapping[str, KnownFailure] = {}
    #: the tiny model architecture the framework is tested with (one of :data:`harness.models.ARCHITECTURES`)
    model_arch: str = "llama"
    #: harness metric name -> the name the framework logs it under (e.g. ms-swift: eval_accuracy -> eval_token_acc)
    metric_names: Mapping[str, str] = {}
    #: harness argument key -> the framework's key for it in its saved argument files (ms-swift 4: train_type ->
    #: tuner_type); scenarios read the framework's files through this map and never spell framework keys
    arg_names: Mapping[str, str] = {}
    #: harness metric name -> why the framework cannot log it (e.g. ``{"eval_accuracy": "no token accuracy"}``);
    #: a scenario marked ``ft_metric(name)`` is then skipped with that reason instead of failing
    unavailable_metrics: Mapping[str, str] = {}
    #: the files a resume reads besides the weights, role -> path relative to a checkpoint directory: ``optimizer``,
    #: ``scheduler`` and ``rng`` (the training state) and ``args`` (pickled training arguments). HF Trainer's by
    #: default. The missing-state scenario deletes the ``optimizer`` and ``scheduler`` files, the hostile-checkpoint
    #: scenario poisons the ``optimizer``, ``rng`` and ``args`` pickles; leave out a role the framework does not write
    #: (its tests are skipped, naming it) and point a role at the framework's own file (e.g. one recipe-state file
    #: for several roles: ``"../recipe_state/recipe_state.pt"``). ``weights``: the file a resume reads the trained
    #: weights from when it is not the safetensors ones (torchtune's ``adapter_model.pt``, read with
    #: ``weights_only=True``): the scenarios that perturb a checkpoint to prove a resume read it perturb that one too
    resume_files: Mapping[str, str] = {"optimizer": "optimizer.pt", "scheduler": "scheduler.pt",
                                       "rng": "rng_state.pth", "args": "training_args.bin"}
    #: which checkpoints the framework can resume from: ``"any"`` (a path to any checkpoint, also a copy or another
    #: run's, into any output dir: HF Trainer) or ``"newest"`` (only its own output dir's newest, by design: one
    #: resume point per run, as torchtune's single recipe state). With ``"newest"``, the scenarios that resume from a
    #: copied or another run's checkpoint skip, saying so, instead of failing (the hostile-pickle ones poison a copy of
    #: the whole output dir instead)
    resume_points: str = "any"
    #: the framework's own quantised-base kinds, beyond :data:`QUANTIZATIONS` (name -> :class:`QuantKind`), e.g.
    #: torchtune's torchao NF4: ``{"torchao-nf4": QuantKind("torchao-nf4", "torchao-nf4", "torchao", "nf4")}``. Each
    #: kind's capability is declared in ``capabilities`` too; a name may not shadow a harness kind. The scenarios
    #: marked ``ft_quantizations`` (seed 002's resume: it judges only what the runs log and save) also run every
    #: one of these as ``RunSpec.quantization``; the ones whose oracles load the quantised base themselves (merge
    #: parity) cannot, as only the framework can load its own kind, and take the harness kinds only
    quantizations: Mapping[str, QuantKind] = {}
    #: the framework's names for the log keys the oracles read (:data:`harness.layout.LOG_SCHEMA`), harness key ->
    #: its key, e.g. ``{"learning_rate": "lr"}``; applied to what :meth:`log_history` returns
    log_keys: Mapping[str, str] = {}
    #: True when ``train`` runs the framework in a *subprocess* (a CLI by name): fault injection cannot kill it at a
    #: file write, so scenarios needing the implied ``in-process`` capability (the crash scenario) are skipped
    launches_subprocess: bool = False

    def versions(self) -> Mapping[str, str]:
        """Installed versions to show in reports (framework first, then libraries); default none."""
        return {}

    def resolve_args(self, cli: Mapping[str, Any], model_dir: Path, resume_dir: Path | None = None) -> ResolvedArgs:
        """How the framework resolves ``cli`` against saved argument files, with sources and warnings.

        Pure and fast (hypothesis calls it thousands of times). The default is a framework that reads
        no saved files: the command line over :data:`harness.task.TASK_DEFAULTS`. Declare the ``args``
        capability only when you override this with the framework's real layering.
        """
        values = dict(TASK_DEFAULTS)
        sources = {k: Source("default") for k in TASK_DEFAULTS}
        for key, value in cli.items():
            if value is not None:
                values[key], sources[key] = value, Source("cli")
        return ResolvedArgs(values=values, sources=sources)

    def train(self, spec: RunSpec) -> RunResult:
        """Run the framework as a user would and return where the files are."""
        raise NotImplementedError(f"{type(self).__name__}.train")

    def merge(self, adapter_dir: Path, output_dir: Path) -> Path:
        """The framework's own LoRA merge/export (``swift export --merge_lora``, ``llamafactory-cli export``,
        PEFT ``merge_and_unload``): merge the adapter in ``adapter_dir`` into the base it names and write a
        self-contained full model (weights, config, tokenizer) to ``output_dir``; return that directory.
        Declare the ``merge`` capability when you implement it."""
        raise NotImplementedError(f"{type(self).__name__}.merge (declare the 'merge' capability only with it)")

    def evaluate(self, directory: Path, spec: RunSpec) -> Mapping[str, float]:
        """Re-evaluate a saved directory (a checkpoint or the final output) on ``spec.dataset_dir``'s ``eval.jsonl`` the
        way the framework evaluated it during ``train(spec)``: metric name (as the framework logs it) -> value.

        Every re-evaluating oracle calls this and compares the result with the metric the run logged at that step.
        The default is the harness's formula (:func:`harness.hf.evaluate_saved`: the directory reloaded as a user
        reloads it, per-token cross-entropy and next-token accuracy over eval.jsonl's plain text), which is what a
        Trainer given the task's datasets logs. A framework that evaluates another way (a chat template, an EOS
        token, prompt tokens masked from the labels) overrides this with its own data pipeline, loading the
        directory as its users do; otherwise its logged metrics cannot be reproduced and those oracles fail, saying so.
        """
        from .hf import evaluate_saved

        values = evaluate_saved(directory, spec.dataset_dir, spec.quantization, spec.device)
        return {self.metric_name(k): v for k, v in values.items()}

    def training_batches(self, spec: RunSpec) -> list[Mapping[str, Sequence[Sequence[int]]]]:
        """The batches the framework would feed the model for ``spec``, one epoch in training order, without training:
        each a mapping with ``input_ids``, ``labels`` and ``attention_mask``, one row of ints per sample, as its collator
        returns them (labels aligned with the inputs, -100 where nothing is learnt; the model shifts them). Read from
        the framework's own data path (its template, tokenisation, truncation, padding and collator). Declare the
        ``data`` capability when you implement it."""
        raise NotImplementedError(f"{type(self).__name__}.training_batches (declare the 'data' capability only with it)")

    @trainer_default
    def checkpoints(self, output_dir: Path) -> Mapping[int, Path]:
        """The run's checkpoints, step -> directory (each one a resume point holding the weights saved at that
        step): where the oracles look for them. HF Trainer's ``output_dir/checkpoint-N`` by default; a framework with
        its own layout (``epoch_E/``, ``step_N/``) maps its directories to optimizer steps here instead of faking
        Trainer's names. A directory that is not on disk (a dangling link) is ignored."""
        return TRAINER_LAYOUT.checkpoints(output_dir)

    def log_history(self, output_dir: Path) -> list[Mapping[str, Any]]:
        """The run's log, one mapping per logged event with an integer ``step`` (:data:`harness.layout.LOG_SCHEMA`;
        other names through :attr:`log_keys`). HF Trainer's ``trainer_state.json`` ``log_history`` by default (the
        final output's, else the newest checkpoint's); a framework with its own metric log reads it here."""
        return TRAINER_LAYOUT.log_history(output_dir)

    def metric_name(self, metric: str) -> str:
        """The name the framework logs ``metric`` under."""
        return self.metric_names.get(metric, metric)

    def arg_name(self, key: str) -> str:
        """The framework's name for argument ``key`` in its saved files."""
        return self.arg_names.get(key, key)


#: optional members and their defaults (what load_adapter fills in for a duck-typed adapter)
OPTIONAL_MEMBERS = ("known_failures", "model_arch", "metric_names", "arg_names", "versions", "metric_name", "arg_name",
                    "resolve_args", "merge", "evaluate", "unavailable_metrics", "launches_subprocess",
                    "training_batches", "resume_files", "resume_points", "checkpoints", "log_history", "log_keys",
                    "quantizations")


def _import_target(target: str) -> Any:
    if ":" in target:
        module_name, _, attr = target.partition(":")
    else:
        from importlib.metadata import entry_points

        eps = {ep.name: ep for ep in entry_points(group=ADAPTER_ENTRY_POINT_GROUP)}
        if target in eps:
            return eps[target].load()
        raise AdapterLoadError(
            f"adapter {target!r} is neither 'module:Class' nor a registered entry point "
            f"(known: {sorted(eps)})"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise AdapterLoadError(f"cannot import adapter module {module_name!r}: {exc}") from exc
    try:
        obj = module
        for part in attr.split("."):
            obj = getattr(obj, part)
    except AttributeError as exc:
        raise AdapterLoadError(f"module {module_name!r} has no attribute {attr!r}") from exc
    return obj


def parse_adapter_options(pairs: Sequence[str], flag: str = "--ft-adapter-option") -> dict[str, str]:
    """``["key=value", ...]`` -> ``{"key": "value"}``; a malformed pair is an AdapterLoadError naming ``flag``."""
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise AdapterLoadError(f"{flag} expects KEY=VALUE, got {pair!r}")
        options[key.strip()] = value
    return options


def split_adapter_spec(spec: str) -> tuple[str, dict[str, str]]:
    """``"swift[load_args=true,template=qwen]"`` -> ``("swift", {"load_args": "true", "template": "qwen"})``.

    The bracket form gives options to one adapter of a multi-adapter report; a plain target has none.
    """
    spec = spec.strip()
    if not spec.endswith("]") or "[" not in spec:
        return spec, {}
    target, _, inner = spec[:-1].partition("[")
    pairs = [p for p in inner.split(",") if p.strip()]
    return target.strip(), parse_adapter_options(pairs, flag=f"--adapter {spec!r}")


def quantization_kinds(adapter: Any) -> dict[str, QuantKind]:
    """Every quantised-base kind a run on ``adapter`` may ask for: :data:`QUANTIZATIONS` and the adapter's own."""
    return {**QUANTIZATIONS, **dict(getattr(adapter, "quantizations", {}) or {})}


def effective_capabilities(adapter: Any) -> frozenset[str]:
    """The declared capabilities plus the implied ``in-process`` (unless the adapter launches a subprocess)."""
    implied = set() if getattr(adapter, "launches_subprocess", False) else {"in-process"}
    return frozenset(adapter.capabilities) | implied


def load_adapter(target: str | None = None, options: Mapping[str, str] | None = None) -> FrameworkAdapter:
    """Instantiate an adapter from ``module:Class`` / entry-point name (default: the reference).

    Raises :class:`AdapterLoadError` with a clear message when the target cannot be imported, is
    not a class, or does not satisfy :class:`FrameworkAdapter`.
    """
    target = target or os.environ.get("FT_HARNESS_ADAPTER") or "reference"
    target, own = split_adapter_spec(target)
    options = {**dict(options or {}), **own}
    cls = _import_target(target)
    try:
        adapter = cls(**dict(options or {}))
    except TypeError as exc:
        raise AdapterLoadError(f"cannot construct adapter {target!r} with options {dict(options or {})}: {exc}") from exc
    missing = [a for a in ("name", "capabilities", "train") if not hasattr(adapter, a)]
    if missing:
        raise AdapterLoadError(f"adapter {target!r} does not satisfy FrameworkAdapter: missing {missing}")
    if not isinstance(adapter, Adapter):  # duck-typed: the contract's defaults for what it does not define
        for member in OPTIONAL_MEMBERS:
            if not hasattr(adapter, member):
                default = getattr(Adapter, member)
                setattr(adapter, member, default.__get__(adapter) if callable(default) else default)
    validate_adapter(adapter, target)
    return adapter


def validate_adapter(adapter: Any, target: str = "") -> None:
    """Check every member of the contract an adapter declares; an AdapterLoadError names the member."""
    label = target or type(adapter).__name__
    if not isinstance(adapter.name, str) or not adapter.name:
        raise AdapterLoadError(f"adapter {label!r}: name must be a non-empty string, got {adapter.name!r}")
    own_kinds = adapter.quantizations
    if not isinstance(own_kinds, Mapping):
        raise AdapterLoadError(f"adapter {label!r}: quantizations must map a name to a QuantKind, got {own_kinds!r}")
    for key, kind in own_kinds.items():
        if not isinstance(kind, QuantKind) or kind.name != key:
            raise AdapterLoadError(f"adapter {label!r}: quantizations[{key!r}] = {kind!r}; expected "
                                   f"QuantKind(name={key!r}, capability, library, weights)")
        if key in QUANTIZATIONS:
            raise AdapterLoadError(f"adapter {label!r}: quantizations[{key!r}] shadows the harness's own kind {key!r} "
                                   f"(harness.spec.QUANTIZATIONS); give the framework's kind its own name")
        if kind.capability not in adapter.capabilities:
            raise AdapterLoadError(f"adapter {label!r}: quantizations[{key!r}] needs capability {kind.capability!r}, "
                                   f"which capabilities does not declare")
    known = CAPABILITIES | {kind.capability for kind in own_kinds.values()}
    unknown = set(adapter.capabilities) - known
    if unknown:
        raise AdapterLoadError(
            f"adapter {label!r} declares unknown capabilities {sorted(unknown)}; known: {sorted(known)}"
        )
    for key, entry in dict(adapter.known_failures).items():
        reason, exc = (entry if isinstance(entry, tuple) and len(entry) == 2 else (entry, BaseException))
        if not isinstance(key, str) or "::" not in key or not isinstance(reason, str) or not (
                isinstance(exc, type) and issubclass(exc, BaseException)):
            raise AdapterLoadError(
                f"adapter {label!r}: known_failures[{key!r}] = {entry!r}; expected 'test_module.py::test_name[...' -> "
                f"'reason' or ('reason', ExceptionClass)")
    from .models import ARCHITECTURES

    if adapter.model_arch not in ARCHITECTURES:
        raise AdapterLoadError(f"adapter {label!r}: model_arch {adapter.model_arch!r} is not one of {ARCHITECTURES}")
    for member in ("metric_names", "arg_names", "unavailable_metrics", "resume_files", "log_keys"):
        mapping = getattr(adapter, member)
        if not isinstance(mapping, Mapping) or not all(isinstance(k, str) and isinstance(v, str)
                                                        for k, v in mapping.items()):
            raise AdapterLoadError(f"adapter {label!r}: {member} must map str to str, got {mapping!r}")
    unknown_roles = set(adapter.resume_files) - RESUME_FILE_ROLES
    if unknown_roles:
        raise AdapterLoadError(f"adapter {label!r}: resume_files has unknown roles {sorted(unknown_roles)}; known: "
                               f"{sorted(RESUME_FILE_ROLES)}")
    if adapter.resume_points not in ("any", "newest"):
        raise AdapterLoadError(f"adapter {label!r}: resume_points must be 'any' or 'newest', "
                               f"got {adapter.resume_points!r}")
    if not isinstance(adapter.launches_subprocess, bool):
        raise AdapterLoadError(f"adapter {label!r}: launches_subprocess must be True or False, "
                               f"got {adapter.launches_subprocess!r}")
    if not callable(adapter.versions) or not callable(adapter.resolve_args) or not callable(adapter.train):
        raise AdapterLoadError(f"adapter {label!r}: versions, resolve_args and train must be methods")


def read_known_failures(path: str | os.PathLike[str]) -> dict[str, str]:
    """A known-failures file (``--ft-known-failures``), as array-api-tests' xfails file: one scenario id or
    prefix per line, optionally followed by ``# reason``; blank lines and ``#`` comment lines are ignored."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise AdapterLoadError(f"cannot read known-failures file {path}: {exc.strerror or exc}") from None
    out: dict[str, str] = {}
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        key, _, reason = text.partition("#")
        key = key.strip()
        if "::" not in key or " " in key:
            raise AdapterLoadError(f"{path}:{number}: expected 'test_module.py::test_name[params]  # reason', "
                                   f"got {line!r}")
        out[key] = reason.strip() or f"listed in {path.name}"
    return out
