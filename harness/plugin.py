"""pytest plugin (registered through the ``pytest11`` entry point as ``ft_harness``).

Options:
  --ft-adapter module:Class       adapter under test (env FT_HARNESS_ADAPTER; default: reference)
  --ft-adapter-option key=value   passed to the adapter's constructor (repeatable)
  --ft-known-failures FILE        more known failures, one scenario id (prefix) per line, ``# reason`` after it
  --ft-report FILE                write the ft-harness-report/1 JSON of this run (works under ``-n auto``)
  --ft-progress                   one line per finished scenario test on stderr (what ``ft-harness run`` shows)

Markers (the unprefixed names ``requires``, ``seed``, ``gpu``, ``slow`` still work for one release and warn):
  ft_requires(*capabilities)   skip, naming the capability, when the adapter lacks one
  ft_metric(name)              skip, with the adapter's reason, when the adapter declares it cannot log that metric
  ft_seed(id)                  the documented failure a scenario reproduces (for reports)
  ft_gpu                       needs CUDA; skipped with a reason when absent (select with ``-m ft_gpu`` or ``-m gpu``)
  ft_slow                      long-running

Fixtures: ``ft_adapter`` (session), ``ft_device`` ("cpu", plus an ft_gpu-marked "cuda" variant),
``tiny_assets`` (session: the adapter's tiny model + tokenizer + datasets, built locally).

The plugin acts only on *scenario items* — tests that use the ``ft_adapter`` fixture or carry an
``ft_``-marker — so installing ft-harness changes nothing in the rest of a suite. For them it sets the
offline Hugging Face environment (``HF_HUB_OFFLINE=1`` & co.), skips on missing capabilities or CUDA,
and applies known failures.

Known failures (the adapter's ``known_failures`` plus ``--ft-known-failures``; scenario id or prefix ->
reason, or -> (reason, exception class)) turn matching tests into strict xfails: a known bug keeps CI
green, and its fix turns CI red until the entry is removed. An entry that matches no collected test of
a collected module is reported as stale (a warning), so a renamed test cannot hide behind it.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import pytest

from .adapter import (FrameworkAdapter, effective_capabilities, load_adapter, parse_adapter_options,
                      read_known_failures, split_adapter_spec)

_ADAPTER_KEY = pytest.StashKey[object]()
_KNOWN_KEY = pytest.StashKey[dict]()

#: marker name -> its deprecated unprefixed alias
MARKERS = {
    "ft_requires": ("requires", "ft_requires(*capabilities): skip unless the adapter has every capability"),
    "ft_seed": ("seed", "ft_seed(id): the documented failure (seed) a scenario reproduces"),
    "ft_gpu": ("gpu", "ft_gpu: needs a CUDA device (run with -m ft_gpu)"),
    "ft_slow": ("slow", "ft_slow: long-running scenario"),
}
OFFLINE_ENVIRONMENT = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
                       "TOKENIZERS_PARALLELISM": "false", "TRANSFORMERS_VERBOSITY": "error"}


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("ft-harness", "ft-harness: fine-tuning framework regression scenarios")
    group.addoption("--ft-adapter", default=None, metavar="MODULE:CLASS",
                    help="adapter to run the scenarios against: 'module:Class' or an entry-point name, optionally "
                         "with options in brackets: 'swift[load_args=true]' (env FT_HARNESS_ADAPTER; default: "
                         "reference)")
    group.addoption("--ft-adapter-option", action="append", default=[], metavar="KEY=VALUE",
                    help="option passed to the adapter constructor; repeatable")
    group.addoption("--ft-known-failures", default=None, metavar="FILE",
                    help="known failures of the adapter under test: one scenario id or prefix per line "
                         "('test_x.py::test_y[cpu  # upstream #123'); they run as strict xfails")
    group.addoption("--ft-report", default=None, metavar="FILE",
                    help="write this run's scenario results as ft-harness-report/1 JSON (render or merge it with "
                         "'ft-harness report --merge FILE'); works under pytest-xdist")
    group.addoption("--ft-progress", action="store_true", default=False,
                    help="print one line per finished scenario test to stderr")


def pytest_configure(config: pytest.Config) -> None:
    for name, (alias, text) in MARKERS.items():
        config.addinivalue_line("markers", text)
        config.addinivalue_line("markers", f"{alias}: deprecated alias of {name}")
    config.addinivalue_line("markers", "ft_metric(name): skip when the adapter declares it cannot log this metric")
    if hasattr(config, "workerinput"):  # an xdist worker: the controller writes the report
        return
    if config.getoption("ft_report") or config.getoption("ft_progress"):
        from .report.collect import ResultCollector

        label = adapter_label(config)
        config.pluginmanager.register(
            ResultCollector(label, path=config.getoption("ft_report"),
                            progress=sys.stderr if config.getoption("ft_progress") else None,
                            describe=lambda: describe_adapter(config, label)),
            "ft-harness-report")


def adapter_label(config: pytest.Config) -> str:
    """The adapter as the user named it (a report column): ``--ft-adapter``, $FT_HARNESS_ADAPTER or reference."""
    return config.getoption("ft_adapter") or os.environ.get("FT_HARNESS_ADAPTER") or "reference"


def describe_adapter(config: pytest.Config, label: str) -> tuple[str, dict[str, str], dict[str, str]]:
    """(name, versions, options) of the session's adapter, for the report collector: the name and versions
    the adapter reports (the label and none when it cannot be loaded: that usage error is already shown),
    the ``--ft-adapter-option`` options under those the label carries in brackets."""
    _, own = split_adapter_spec(label)
    options = {**parse_options(config.getoption("ft_adapter_option")), **own}
    try:
        adapter = get_adapter(config)
        return adapter.name, dict(adapter.versions()), options
    except Exception:  # noqa: BLE001 - the report still says what ran
        return label, {}, options


def parse_options(pairs: list[str]) -> dict[str, str]:
    from .errors import AdapterLoadError

    try:
        return parse_adapter_options(pairs)
    except AdapterLoadError as exc:
        raise pytest.UsageError(str(exc)) from exc


def get_adapter(config: pytest.Config) -> FrameworkAdapter:
    """The session's adapter, created once (errors become a clear usage error)."""
    if _ADAPTER_KEY not in config.stash:
        from .errors import AdapterLoadError

        try:
            config.stash[_ADAPTER_KEY] = load_adapter(config.getoption("ft_adapter"),
                                                      parse_options(config.getoption("ft_adapter_option")))
        except AdapterLoadError as exc:
            raise pytest.UsageError(f"ft-harness: {exc}") from exc
    return config.stash[_ADAPTER_KEY]  # type: ignore[return-value]


def known_failures(config: pytest.Config) -> dict:
    """The adapter's known failures plus those of ``--ft-known-failures`` (the file wins on a shared key)."""
    if _KNOWN_KEY not in config.stash:
        from .errors import AdapterLoadError

        known = dict(get_adapter(config).known_failures)
        path = config.getoption("ft_known_failures")
        if path:
            try:
                known.update(read_known_failures(path))
            except AdapterLoadError as exc:
                raise pytest.UsageError(f"ft-harness: {exc}") from exc
        config.stash[_KNOWN_KEY] = known
    return config.stash[_KNOWN_KEY]


def scenario_id(item: pytest.Item) -> str:
    """``test_module.py::test_name[params]``: how known_failures keys name a test, wherever it lives."""
    return f"{Path(str(item.fspath)).name}::{item.name}"


def markers(item: pytest.Item, name: str) -> list[pytest.Mark]:
    """Marks of ``ft_<name>`` and of its deprecated alias on ``item``."""
    alias = MARKERS[name][0]
    return [m for m in item.iter_markers() if m.name in (name, alias)]


def is_scenario_item(item: pytest.Item) -> bool:
    return "ft_adapter" in getattr(item, "fixturenames", ()) or any(
        m.name in MARKERS or m.name == "ft_metric" for m in item.iter_markers())


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def pytest_report_header(config: pytest.Config) -> list[str]:
    if not (config.getoption("ft_adapter") or os.environ.get("FT_HARNESS_ADAPTER")):
        return []
    adapter = get_adapter(config)
    return [f"ft-harness adapter: {adapter.name} ({type(adapter).__module__}.{type(adapter).__qualname__}); "
            f"capabilities: {', '.join(sorted(effective_capabilities(adapter)))}"]


@pytest.hookimpl(tryfirst=True)  # before -m/-k deselection: alias markers must be in place for `-m gpu`
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    scenario_items = [i for i in items if is_scenario_item(i)]
    if not scenario_items:
        return
    for key, value in OFFLINE_ENVIRONMENT.items():
        os.environ.setdefault(key, value)
    _mark_aliases(config, scenario_items)
    _mark_gpu_and_seeds(scenario_items)
    if not any("ft_adapter" in getattr(i, "fixturenames", ()) for i in scenario_items):
        return
    adapter = get_adapter(config)
    caps = effective_capabilities(adapter)
    unavailable = dict(getattr(adapter, "unavailable_metrics", {}))
    known = known_failures(config)
    used: set[str] = set()
    for item in scenario_items:
        needed = [c for m in markers(item, "ft_requires") for c in m.args]
        missing = [c for c in needed if c not in caps]
        if missing:
            why = " (it launches a subprocess)" if missing == ["in-process"] else ""
            item.add_marker(pytest.mark.skip(
                reason=f"adapter {adapter.name!r} lacks capability {', '.join(repr(c) for c in missing)}{why}"))
            continue
        metric = next((m.args[0] for m in item.iter_markers("ft_metric") if m.args and m.args[0] in unavailable), None)
        if metric is not None:
            item.add_marker(pytest.mark.skip(
                reason=f"adapter {adapter.name!r} cannot log metric {metric!r}: {unavailable[metric]}"))
            continue
        sid = scenario_id(item)
        for key, entry in known.items():
            if sid == key or sid.startswith(key):
                reason, raises = entry if isinstance(entry, tuple) else (entry, None)
                item.add_marker(pytest.mark.xfail(strict=True, raises=raises,
                                                  reason=f"known failure of {adapter.name}: {reason}"))
                used.add(key)
                break
    _warn_stale(sorted(set(known) - used), items, adapter.name)


def _mark_gpu_and_seeds(items: list[pytest.Item]) -> None:
    """ft_gpu items skip without CUDA; an item's ft_seed travels with its reports (xdist included)."""
    cuda = None
    for item in items:
        if markers(item, "ft_gpu"):
            if cuda is None:
                cuda = _cuda_available()
            if not cuda:
                item.add_marker(pytest.mark.skip(
                    reason="gpu: needs a CUDA device (torch.cuda.is_available() is False)"))
        seed = next((m.args[0] for m in markers(item, "ft_seed") if m.args), None)
        if seed is not None:
            item.user_properties.append(("ft_seed", seed))


def _warn_stale(unused: list[str], items: list[pytest.Item], adapter_name: str) -> None:
    """A known-failure entry of a collected module that matches none of its tests is stale: warn."""
    collected_modules = {scenario_id(i).partition("::")[0] for i in items}
    for key in unused:
        module = key.partition("::")[0]
        if module in collected_modules and not any(scenario_id(i).startswith(key) for i in items):
            warnings.warn(pytest.PytestWarning(
                f"ft-harness: known failure {key!r} of adapter {adapter_name!r} matches no test of {module} "
                f"(renamed or removed?): remove or fix the entry"), stacklevel=1)


_WARNED_KEY = pytest.StashKey[set]()


def _mark_aliases(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deprecated unprefixed markers warn once; ``ft_gpu`` items also carry ``gpu`` so ``-m gpu`` keeps
    selecting them."""
    warned = config.stash.setdefault(_WARNED_KEY, set())
    for item in items:
        names = {m.name for m in item.iter_markers()}
        for name, (alias, _) in MARKERS.items():
            if alias in names and name not in names and alias not in warned:
                warned.add(alias)
                warnings.warn(pytest.PytestDeprecationWarning(
                    f"ft-harness: the marker '{alias}' is deprecated, use '{name}' (the old name goes in the next "
                    f"release)"), stacklevel=1)
        if "ft_gpu" in names and "gpu" not in names:
            item.add_marker(pytest.mark.gpu)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "ft_device" in metafunc.fixturenames:
        metafunc.parametrize("ft_device", ["cpu", pytest.param("cuda", marks=pytest.mark.ft_gpu)], scope="module")


@pytest.fixture(scope="session")
def ft_adapter(request: pytest.FixtureRequest) -> FrameworkAdapter:
    """The adapter under test (``--ft-adapter``)."""
    return get_adapter(request.config)


@pytest.fixture(scope="session")
def tiny_assets(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """The adapter's ``model_arch`` tiny model (+ tokenizer, generation config) and its datasets, built once
    per session."""
    from .models import build_assets

    arch = get_adapter(request.config).model_arch  # e.g. a framework that only knows Qwen2
    return build_assets(tmp_path_factory.mktemp(f"tiny-{arch}"), arch=arch, seed=0)
