"""The adapter-authoring kit: everything a framework adapter needs besides its own config (docs/adapters.md,
"Writing an adapter").

A framework that users drive through a config file or a command line (axolotl's YAML, LLaMA-Factory's
``llamafactory-cli train cfg.yaml``, a ``train.py --flags``) plugs in by subclassing :class:`ConfigFileAdapter` and
writing two methods::

    class MyAdapter(ConfigFileAdapter):
        name = "myframework"
        framework = "myframework"                       # distribution name, for the report header
        capabilities = frozenset({"sft", "full", "lora", "resume"})
        dataset_format = "alpaca"                       # what convert_datasets writes for it

        def write_config(self, spec, values, data, workdir):   # the file a user would write
            return {"model": str(spec.model_dir), "train_file": str(data["train"]), ...}

        def launch(self, config, spec):                        # runs in a forked child
            import myframework
            myframework.train(config)

The base supplies the rest: argument resolution without saved layers (the command line over
:data:`harness.spec.TASK_DEFAULTS`), the dataset conversion, the fork runner with the process-model rules, collecting
the log history and checkpoints into a :class:`~harness.adapter.RunResult`, declared options with defaults and
per-option known failures.

The process-model rules (each one cost a newcomer time; :class:`ConfigFileAdapter` follows all four):

1. Train in this process or in a fork of it (:func:`run_in_fork`), never in a subprocess when you can avoid it:
   fault injection (:mod:`harness.faults`) kills the run with SIGKILL at a checkpoint file write (``torch.save`` and
   safetensors' ``save_file``/``save_model`` are wrapped wherever they are bound) or at a training step (the first
   training forward after ``checkpoint-k`` exists, seen by :mod:`harness.probes`' global forward hook), which only
   reaches code running as Python in the test's process or a fork of it. An adapter that must launch a subprocess
   (:func:`run_command`) sets ``launches_subprocess = True``: it then lacks the implied ``in-process`` capability,
   and the scenarios needing it (crash during save, resume equivalence) are skipped, not failed.
2. Limit torch to one thread for tiny CPU runs (``with cpu_threads(spec.device):`` around the fork; a no-op for
   ``cuda``, restored afterwards): a forked child with a full OpenMP pool can deadlock, and one thread is faster at
   this size (measured 2.9 s vs 26.8 s per tiny axolotl run).
3. A child killed by SIGKILL while fault injection is on must kill the parent the same way (:func:`run_in_fork` does
   it), so the crash scenario sees the kill it asked for; any other death by a signal, and any exception in the child,
   becomes a :class:`FrameworkError` (an exception carries its type, message and traceback tail).
4. Import the framework once, in the parent (:meth:`ConfigFileAdapter.preload`, called before every fork): each forked
   run starts with the modules imported, so an import that takes a minute is paid once per session, not once per run.

Nothing here imports a framework; the default self-tests cover it without any installed.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NoReturn

from .adapter import Adapter, KnownFailure, ResolvedArgs, RunResult, RunSpec
from .layout import list_checkpoints, run_checkpoints, run_log_history
from .runtime import FrameworkError, cpu_threads, library_versions, run_in_fork
from .task import TASK_DEFAULTS, counting_reward

__all__ = [
    "ConfigFileAdapter", "parse_bool", "check_options", "convert_datasets", "chat_as_messages", "convert_chat_datasets", "quantization_keys", "DATASET_FORMATS", "collect_result",
    "checkpoints_in", "write_config_file", "run_command", "counting_reward", "run_in_fork", "cpu_threads",
    "library_versions", "FrameworkError", "TASK_DEFAULTS", "refuse",
]

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def parse_bool(adapter: str, key: str, value: str | bool) -> bool:
    """An adapter option's boolean value (``true/false/1/0/yes/no/on/off``), or a clear error."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise TypeError(f"{adapter} adapter option {key}={value!r}: expected true or false")


def check_options(adapter: str, options: Mapping[str, Any], known: Mapping[str, str]) -> None:
    """Refuse unknown options, listing the known ones with their meaning."""
    unknown = sorted(set(options) - set(known))
    if unknown:
        listing = "; ".join(f"{k}: {v}" for k, v in sorted(known.items())) or "none"
        raise TypeError(f"unknown {adapter} adapter options {unknown} (known: {listing})")


# ---------------------------------------------------------------------------------------------- datasets
# The tiny SFT rows are plain texts ("w3 w4 w5 ..."); a chat/instruction format splits one after its first word.
def _split(text: str) -> tuple[str, str]:
    first, _, rest = text.partition(" ")
    return first, rest


#: format -> (SFT row from a text, GRPO prompt row from a prompt)
DATASET_FORMATS: dict[str, tuple[Any, Any]] = {
    # ms-swift, TRL conversational: a user turn with the first word, the assistant turn the rest
    "messages": (lambda t: {"messages": [{"role": "user", "content": _split(t)[0]},
                                         {"role": "assistant", "content": _split(t)[1]}]},
                 lambda p: {"messages": [{"role": "user", "content": p}]}),
    # LLaMA-Factory, axolotl ``type: alpaca``: instruction = the first word, output = the rest
    "alpaca": (lambda t: {"instruction": _split(t)[0], "output": _split(t)[1]},
               lambda p: {"instruction": p, "output": ""}),
    # raw text (axolotl ``type: completion``, TRL language modelling): the whole text is trained on
    "completion": (lambda t: {"text": t}, lambda p: {"prompt": p}),
    # prompt-only (TRL GRPO standard format): SFT rows as prompt + completion, prompts as {"prompt": ...}
    "prompt-only": (lambda t: {"prompt": _split(t)[0], "completion": " " + _split(t)[1]}, lambda p: {"prompt": p}),
}


def unpaired_preferences(rows, make) -> list[dict[str, Any]]:
    """Preference rows (prompt / chosen / rejected) unpaired for KTO, as TRL's ``unpair_preference_dataset`` does: every
    chosen completion a desirable row, then every rejected one an undesirable row; ``make(prompt, completion, label)``
    builds a row in the framework's format."""
    return ([make(r["prompt"], r["chosen"], True) for r in rows]
            + [make(r["prompt"], r["rejected"], False) for r in rows])


def convert_datasets(dataset_dir: Path, out_dir: Path, fmt: str, *, eval_file: str = "eval.jsonl") -> dict[str, Path]:
    """The tiny datasets in a framework's format (:data:`DATASET_FORMATS`); returns ``{"train", "eval", "prompts",
    "preferences"} -> file`` (``prompts`` / ``preferences`` only when ``prompts.jsonl`` / ``preferences.jsonl`` exist;
    preference rows are copied as they are, validated). ``"alpaca"`` also writes a LLaMA-Factory ``dataset_info.json``
    naming the files ``ft_train`` / ``ft_eval`` (and ``ft_preferences``, a ``ranking`` dataset, and ``ft_kto``, the same
    rows unpaired with a ``kto_tag``: each chosen completion desirable, each rejected one not)."""
    from .models import read_jsonl, read_texts, write_jsonl

    if fmt not in DATASET_FORMATS:
        raise ValueError(f"unknown dataset format {fmt!r} ({', '.join(DATASET_FORMATS)})")
    row, prompt_row = DATASET_FORMATS[fmt]
    src, out_dir = Path(dataset_dir), Path(out_dir)
    files = {"train": write_jsonl(out_dir / "train.jsonl", [row(t) for t in read_texts(src / "train.jsonl")]),
             "eval": write_jsonl(out_dir / "eval.jsonl", [row(t) for t in read_texts(src / eval_file)])}
    if (src / "prompts.jsonl").is_file():
        files["prompts"] = write_jsonl(out_dir / "prompts.jsonl",
                                       [prompt_row(r["prompt"]) for r in read_jsonl(src / "prompts.jsonl")])
    if (src / "preferences.jsonl").is_file():  # DPO rows, as they are (prompt / chosen / rejected strings)
        from .task import preferences

        files["preferences"] = write_jsonl(out_dir / "preferences.jsonl", preferences(src))
    if fmt == "alpaca":
        info = {f"ft_{name}": {"file_name": path.name, "columns": {"prompt": "instruction", "response": "output"}}
                for name, path in files.items() if name not in ("prompts", "preferences")}
        if "preferences" in files:  # LLaMA-Factory's alpaca preference format, and its KTO format
            info["ft_preferences"] = {"file_name": files["preferences"].name, "ranking": True,
                                      "columns": {"prompt": "prompt", "chosen": "chosen", "rejected": "rejected"}}
            kto = write_jsonl(out_dir / "kto.jsonl", unpaired_preferences(read_jsonl(files["preferences"]),
                                                                         lambda p, c, tag: {"instruction": p, "output": c,
                                                                                            "kto_tag": tag}))
            info["ft_kto"] = {"file_name": kto.name,
                              "columns": {"prompt": "instruction", "response": "output", "kto_tag": "kto_tag"}}
        (out_dir / "dataset_info.json").write_text(json.dumps(info, indent=2), encoding="utf-8")
    return files


# ---------------------------------------------------------------------------------------------- results
def checkpoints_in(output_dir: Path) -> list[Path]:
    """The ``checkpoint-N`` directories of a run, oldest first (none when the directory is missing)."""
    return list_checkpoints(Path(output_dir)) if Path(output_dir).is_dir() else []


def collect_result(spec: RunSpec, final_dir: Path, resolved: ResolvedArgs | None) -> RunResult:
    """A RunResult from the files on disk, read in the layout in use (the adapter under test's ``checkpoints`` and
    ``log_history``; HF Trainer's, the newest trainer_state.json, by default)."""
    output_dir = Path(spec.output_dir)
    try:
        history = tuple(run_log_history(output_dir))
    except FileNotFoundError:
        history = ()
    checkpoints = tuple(run_checkpoints(output_dir)) if output_dir.is_dir() else ()
    return RunResult(output_dir=output_dir, checkpoints=checkpoints, final_dir=Path(final_dir),
                     log_history=history, resolved=resolved)


def write_config_file(path: Path, config: Mapping[str, Any]) -> Path:
    """``config`` as YAML (PyYAML when installed; else JSON, which every YAML reader reads) at ``path``."""
    try:
        import yaml
    except ImportError:  # pragma: no cover - PyYAML comes with transformers/huggingface_hub
        text = json.dumps(config, indent=2)
    else:
        text = yaml.safe_dump(dict(config), sort_keys=False)
    Path(path).write_text(text, encoding="utf-8")
    return Path(path)


def run_command(argv: list[str], *, env: Mapping[str, str] | None = None, cwd: Path | None = None) -> str:
    """Run a framework's CLI in a subprocess (rule 1: then set ``launches_subprocess = True``); its output, or a
    :class:`FrameworkError` naming the exit status with the output's tail."""
    import os
    import subprocess

    proc = subprocess.run(argv, env={**os.environ, **(env or {})}, cwd=cwd, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        raise FrameworkError(f"{' '.join(argv[:3])} ... exited with {proc.returncode}; output tail:\n"
                             f"{proc.stdout[-3000:]}")
    return proc.stdout


# ---------------------------------------------------------------------------------------------- the base class
class ConfigFileAdapter(Adapter):
    """Base of an adapter for a framework driven by a config file or command line; see the module docstring.

    Class attributes a subclass sets (besides :class:`~harness.adapter.Adapter`'s ``name``, ``capabilities``, ...):

    * ``framework``: the distribution name (its version heads the report and the adapter's name);
    * ``libraries``: further distributions whose versions the report shows;
    * ``dataset_format``: a key of :data:`DATASET_FORMATS` (``None``: the subclass converts the data itself);
    * ``options``: option -> ``(default, meaning)``; ``--ft-adapter-option KEY=VALUE`` values land in
      ``self.option_values`` (strings; :meth:`flag` reads a boolean one). An option set to something other
      than its default is shown in the adapter's name: ``axolotl 0.21.0[sample_packing=false]``;
    * ``known_failures``: as in the contract, for every option setting;
    * ``known_failures_when``: ``"option=value"`` -> ``{scenario id (prefix): reason}``, added when that option
      has that value (an option-dependent known failure).

    Override :meth:`write_config` (return the config; write files into ``workdir`` if the framework reads them)
    and :meth:`launch` (runs the framework in a forked child, torch on one thread). Optionally :meth:`final_dir`
    (default: ``spec.output_dir``) and :meth:`resolve_args` (default: no saved layers; declare ``args`` only with
    the framework's real layering).
    """

    framework: str = ""
    libraries: tuple[str, ...] = ("transformers", "peft", "trl", "torch")
    dataset_format: str | None = "completion"
    options: Mapping[str, tuple[str, str]] = {}
    known_failures_when: Mapping[str, Mapping[str, KnownFailure]] = {}

    def __init__(self, **options: str):
        label = self.framework or self.name
        check_options(label, options, {k: meaning for k, (_, meaning) in self.options.items()})
        self.option_values = {k: str(default) for k, (default, _) in self.options.items()} | dict(options)
        known = dict(type(self).known_failures)
        for key, entries in self.known_failures_when.items():
            option, _, value = key.partition("=")
            if option not in self.options:
                raise TypeError(f"{label} known_failures_when[{key!r}]: {option!r} is not an option "
                                f"({sorted(self.options)})")
            if self.option_values[option].strip().lower() == value.strip().lower():
                known.update(entries)
        self.known_failures = known
        version = self.versions().get(self.framework, "") if self.framework else ""
        changed = [f"{k}={v}" for k, v in self.option_values.items()
                   if str(self.options[k][0]).strip().lower() != v.strip().lower()]
        self.name = " ".join(p for p in (type(self).name, version) if p) + (f"[{','.join(changed)}]" if changed else "")

    def flag(self, option: str) -> bool:
        """A boolean option's value."""
        return parse_bool(self.framework or self.name, option, self.option_values[option])

    def versions(self) -> dict[str, str]:
        return library_versions(*((self.framework,) if self.framework else ()), *self.libraries)

    # -- what a subclass writes
    def write_config(self, spec: RunSpec, values: Mapping[str, Any], data: Mapping[str, Path], workdir: Path) -> Any:
        """The framework's config for this run. ``values``: the resolved command line over the task defaults, plus
        ``seed`` (always set) and ``logging_steps``; ``data``: :func:`convert_datasets`' files."""
        raise NotImplementedError(f"{type(self).__name__}.write_config")

    def launch(self, config: Any, spec: RunSpec) -> None:
        """Run the framework on ``config``; called in a forked child."""
        raise NotImplementedError(f"{type(self).__name__}.launch")

    def preload(self) -> None:
        """Import the framework's heavy modules; called in this process before every fork, so each forked run
        starts with them imported (an import that takes a minute is paid once per session, not once per run)."""

    def final_dir(self, spec: RunSpec) -> Path:
        """Where the framework writes the final model (default: the output directory itself)."""
        return Path(spec.output_dir)

    # -- what the base supplies
    def run_values(self, spec: RunSpec) -> tuple[ResolvedArgs, dict[str, Any]]:
        """The resolved arguments and the values a config is built from (seed and logging cadence explicit)."""
        resolved = self.resolve_args(spec.cli_args(), spec.model_dir)
        values = {**resolved.values, "seed": resolved.get("seed", spec.run_seed()),
                  "logging_steps": spec.logging_steps}
        return resolved, values

    def train(self, spec: RunSpec) -> RunResult:
        resolved, values = self.run_values(spec)
        workdir = Path(tempfile.mkdtemp(prefix=f"ft-{self.framework or 'adapter'}-"))
        try:
            data = ({} if self.dataset_format is None else
                    convert_datasets(spec.dataset_dir, workdir / "data", self.dataset_format, eval_file=spec.eval_file))
            config = self.write_config(spec, values, data, workdir)
            self.preload()
            with cpu_threads(spec.device):
                run_in_fork(lambda: self.launch(config, spec))
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        return collect_result(spec, self.final_dir(spec), resolved)


def chat_as_messages(path: Path) -> list[dict[str, Any]]:
    """A chat dataset (``messages`` or ``prompt``/``completion`` rows) as ``{"messages": [...]}`` rows only: one format
    for the whole file (TRL, ms-swift), a prompt/completion row becoming one user/assistant exchange."""
    from .models import read_jsonl
    from .task import chat_messages

    return [{"messages": chat_messages(row, path, i)} for i, row in enumerate(read_jsonl(path))]


def convert_chat_datasets(dataset_dir: Path, out_dir: Path, fmt: str) -> dict[str, Path]:
    """A chat dataset in a framework's format; returns ``{"train", "eval"} -> file``. ``fmt``: ``"messages"`` (ms-swift,
    TRL: ``{"messages": [{"role", "content"}, ...]}``), ``"sharegpt"`` (LLaMA-Factory: the same rows with a
    ``dataset_info.json`` naming them ``ft_train`` / ``ft_eval``, ``formatting: sharegpt`` and OpenAI-style tags)."""
    from .models import write_jsonl

    out_dir = Path(out_dir)
    files = {name: write_jsonl(out_dir / f"{name}.jsonl", chat_as_messages(Path(dataset_dir) / f"{name}.jsonl"))
             for name in ("train", "eval")}
    if fmt == "sharegpt":
        tags = {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant",
                "system_tag": "system"}
        info = {f"ft_{name}": {"file_name": path.name, "formatting": "sharegpt", "columns": {"messages": "messages"},
                               "tags": tags} for name, path in files.items()}
        (out_dir / "dataset_info.json").write_text(json.dumps(info, indent=2), encoding="utf-8")
    elif fmt != "messages":
        raise ValueError(f"unknown chat dataset format {fmt!r} (messages, sharegpt)")
    return files


def refuse(framework: str, key: str, value: Any, why: str) -> NoReturn:
    """Refuse a run the framework cannot express (``refuse("torchtune", "eval_steps", 2, "0.6.1's single-device
    recipes have no validation")``) instead of running something else: raises :class:`harness.errors.SpecRefused`, a red cell whose
    reason names the key and value. Never map an unsupported value to a near one: the scenario would judge a run it
    did not ask for."""
    from .errors import SpecRefused

    raise SpecRefused(framework, key, value, why)


def quantization_keys(quantization: str | None, table: Mapping[str, Mapping[str, Any]], how: str) -> dict[str, Any]:
    """The framework's config keys for ``RunSpec.quantization`` from its ``table`` (harness kind -> keys); none for an
    unquantised run; a kind the framework cannot do is a ConfigError saying ``how`` it quantises."""
    from .errors import ConfigError

    if quantization is None:
        return {}
    if quantization not in table:
        raise ConfigError(None, "quantization", f"one of {sorted(table)} ({how})", quantization)
    return dict(table[quantization])
