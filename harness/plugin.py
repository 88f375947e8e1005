"""pytest plugin (registered through the ``pytest11`` entry point as ``ft_harness``).

Options:
  --ft-adapter module:Class       adapter under test (env FT_HARNESS_ADAPTER; default: reference)
  --ft-adapter-option key=value   passed to the adapter's constructor (repeatable)
  --ft-known-failures FILE        more known failures, one scenario id (prefix) per line, ``# reason`` after it
  --ft-report FILE                write the ft-harness-report/1 JSON of this run (works under ``-n auto``)
  --ft-progress                   one line per finished scenario test on stderr (what ``ft-harness run`` shows)
  --ft-strict                     a scenario skipped for a missing capability, an unavailable metric or an
                                  unimportable dependency (``pytest.importorskip``) fails the run (exit status 1),
                                  listed under "ft-harness strict"; CUDA-only variants without CUDA stay skips
  --ft-require CAP,...            capabilities the adapter must declare (repeatable): a usage error at session start
                                  naming the missing ones; ``gpu`` also turns skips for lack of CUDA into failures
  --ft-marker-alias FT=HOST       add the host suite's marker HOST to every scenario item carrying FT
                                  (``ft_slow=slow``), before ``-m`` selects; repeatable; ini: ``ft_marker_alias``
  --ft-user-config FILE           the tiny arrangement of a user's own config (JSON, written by ``ft-harness check``):
                                  the tests marked ``ft_user_config`` run with it; without it they are deselected

Markers (the unprefixed names ``requires``, ``seed``, ``gpu``, ``slow`` still work for one release and warn):
  ft_requires(*capabilities)   skip, naming the capability, when the adapter lacks one
  ft_metric(name)              skip, with the adapter's reason, when the adapter declares it cannot log that metric
  ft_seed(id)                  the documented failure a scenario reproduces (for reports)
  ft_gpu                       needs CUDA; skipped with a reason when absent (select with ``-m ft_gpu`` or ``-m gpu``)
  ft_slow                      long-running
  ft_quantizations(*kinds)     parametrise the test's ``quant`` argument with ``kinds`` (``None``: unquantised) and
                               the adapter's own kinds (``Adapter.quantizations``), each requiring its capability
  ft_smoke(*variants)          the smoke tier (``-m ft_smoke``): at least one test of every scenario module, the
                               seed stories first; with variants, only those parametrisations
  ft_user_config(section)      runs only with ``--ft-user-config`` holding ``section`` (the ``ft_user_config`` fixture
                               gives it); otherwise deselected: no user config, nothing to judge

Fixtures: ``ft_adapter`` (session), ``ft_device`` ("cpu", plus an ft_gpu-marked "cuda" variant),
``tiny_assets`` (session: the adapter's tiny model + tokenizer + datasets, built locally), ``ft_user_config``
(session: the ``--ft-user-config`` mapping).

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
import re
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from .adapter import (FrameworkAdapter, effective_capabilities, load_adapter, parse_adapter_options,
                      read_known_failures, split_adapter_spec)

_ADAPTER_KEY = pytest.StashKey[object]()
_KNOWN_KEY = pytest.StashKey[dict]()
_ALIASES_KEY = pytest.StashKey[dict]()  # ft marker -> host markers (--ft-marker-alias / ft_marker_alias)
_USER_KEY = pytest.StashKey[dict]()  # the --ft-user-config mapping
_SKIPS_KEY = pytest.StashKey[dict]()  # on an item: reason of a skip the plugin added -> its kind (for --ft-strict)

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
    group.addoption("--ft-strict", action="store_true", default=False,
                    help="fail the run (exit status 1) when a scenario test is skipped for a missing capability, an "
                         "unavailable metric or an unimportable dependency (pytest.importorskip), listing each with "
                         "its reason; CUDA-only variants skipped without CUDA stay skips unless --ft-require gpu")
    group.addoption("--ft-require", action="append", default=[], metavar="CAP,...",
                    help="capabilities the adapter must declare (comma-separated, repeatable): one it does not "
                         "declare is a usage error at session start; 'gpu' also fails the run when CUDA-only "
                         "variants are skipped for lack of CUDA")
    group.addoption("--ft-marker-alias", action="append", default=[], metavar="FT_MARKER=HOST_MARKER",
                    help="also mark every scenario test carrying FT_MARKER with the host suite's HOST_MARKER "
                         "(e.g. ft_slow=slow, so -m 'not slow' deselects it); repeatable; ini: ft_marker_alias")
    group.addoption("--ft-user-config", default=None, metavar="FILE",
                    help="the tiny arrangement of a user's config (JSON, as 'ft-harness check' writes it): run the "
                         "tests marked ft_user_config with it (without it they are deselected)")
    parser.addini("ft_marker_alias", type="linelist", default=[],
                  help="ft-harness: FT_MARKER=HOST_MARKER pairs (whitespace- or line-separated), as "
                       "--ft-marker-alias")


def pytest_configure(config: pytest.Config) -> None:
    for name, (alias, text) in MARKERS.items():
        config.addinivalue_line("markers", text)
        config.addinivalue_line("markers", f"{alias}: deprecated alias of {name}")
    config.addinivalue_line("markers", "ft_metric(name): skip when the adapter declares it cannot log this metric")
    config.addinivalue_line("markers", "ft_quantizations(*kinds): parametrise 'quant' with these kinds (None: "
                                       "unquantised) and the adapter's own, each requiring its capability")
    config.addinivalue_line("markers", "ft_user_config(section): runs only with --ft-user-config holding section "
                                       "(ft-harness check); deselected otherwise")
    config.addinivalue_line("markers", "ft_smoke(*variants): in the smoke tier (-m ft_smoke): every variant, or only "
                                       "those whose parameter id (device part aside) is one of variants")
    _configure_marker_aliases(config)
    if hasattr(config, "workerinput"):  # an xdist worker: the controller writes the report and judges skips
        return
    if _strict_active(config):
        config.pluginmanager.register(StrictGate(config.getoption("ft_strict"), required_capabilities(config)),
                                      "ft-harness-strict")
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
    from .runtime import library_versions, quanto_extension_pending

    adapter = get_adapter(config)
    lines = [f"ft-harness adapter: {adapter.name} ({type(adapter).__module__}.{type(adapter).__qualname__}); "
             f"capabilities: {', '.join(sorted(effective_capabilities(adapter)))}"]
    versions = {**adapter.versions(), **library_versions("torch", "transformers", "peft", "trl")}
    lines.append("ft-harness versions: " + ", ".join(f"{name} {value}" for name, value in versions.items()))
    pending = quanto_extension_pending()
    if pending:
        lines.append(f"ft-harness: {pending}")
    return lines


@pytest.hookimpl(tryfirst=True)  # before -m/-k deselection: alias markers must be in place for `-m gpu`
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    _select_user_config(config, items)
    scenario_items = [i for i in items if is_scenario_item(i)]
    if not scenario_items:
        return
    for key, value in OFFLINE_ENVIRONMENT.items():
        os.environ.setdefault(key, value)
    _narrow_smoke(scenario_items)
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
            _add_skip(item, "capability",
                      f"adapter {adapter.name!r} lacks capability {', '.join(repr(c) for c in missing)}{why}")
            continue
        metric = next((m.args[0] for m in item.iter_markers("ft_metric") if m.args and m.args[0] in unavailable), None)
        if metric is not None:
            _add_skip(item, "metric", f"adapter {adapter.name!r} cannot log metric {metric!r}: {unavailable[metric]}")
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


def user_config(config: pytest.Config) -> dict:
    """The ``--ft-user-config`` mapping (section -> values), read once; {} without the option."""
    if _USER_KEY not in config.stash:
        import json

        path = config.getoption("ft_user_config")
        data: dict = {}
        if path:
            try:
                data = json.loads(Path(path).read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise pytest.UsageError(f"ft-harness: --ft-user-config {path}: {exc}") from exc
            if not isinstance(data, dict):
                raise pytest.UsageError(f"ft-harness: --ft-user-config {path}: expected a JSON object of sections")
        config.stash[_USER_KEY] = data
    return config.stash[_USER_KEY]


def _select_user_config(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect the ``ft_user_config(section)`` tests whose section the user config lacks (all of them without
    ``--ft-user-config``): a test of a user's arrangement has nothing to run without one, and is not a skip."""
    sections = user_config(config)
    dropped = [i for i in items if any(m.args and m.args[0] not in sections for m in i.iter_markers("ft_user_config"))]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = [i for i in items if i not in dropped]


def _mark_gpu_and_seeds(items: list[pytest.Item]) -> None:
    """ft_gpu items skip without CUDA; an item's ft_seed travels with its reports (xdist included)."""
    cuda = None
    for item in items:
        if markers(item, "ft_gpu"):
            if cuda is None:
                cuda = _cuda_available()
            if not cuda:
                _add_skip(item, "gpu", "gpu: needs a CUDA device (torch.cuda.is_available() is False)")
        seed = next((m.args[0] for m in markers(item, "ft_seed") if m.args), None)
        if seed is not None:
            item.user_properties.append(("ft_seed", seed))


def _narrow_smoke(items: list[pytest.Item]) -> None:
    """``ft_smoke("nf4-2", ...)`` on a parametrised test puts only the named variants in the smoke tier: the mark is
    dropped from every other variant before ``-m`` selects (a variant matches when its parameter id, with the
    ``ft_device`` part in front taken off, is one of the names: ``nf4-2`` selects ``cpu-nf4-2`` and ``cuda-nf4-2``)."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        marks = [m for m in getattr(item, "own_markers", []) if m.name == "ft_smoke" and m.args]
        if not marks or callspec is None:
            continue
        wanted = {str(v) for m in marks for v in m.args}
        device, _, rest = callspec.id.partition("-")
        if callspec.id not in wanted and not (device in ("cpu", "cuda") and rest in wanted):
            item.own_markers[:] = [m for m in item.own_markers if m.name != "ft_smoke"]


def _add_skip(item: pytest.Item, kind: str, reason: str) -> None:
    """Skip ``item`` with ``reason``, remembering the skip's kind (``capability``, ``metric``, ``gpu``) for
    ``--ft-strict`` / ``--ft-require``."""
    item.add_marker(pytest.mark.skip(reason=reason))
    item.stash.setdefault(_SKIPS_KEY, {})[reason] = kind


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
    selecting them; an item carrying an ft marker (or its deprecated alias) named by ``--ft-marker-alias`` /
    ``ft_marker_alias`` also carries the host's markers. This runs in the plugin's ``tryfirst``
    ``pytest_collection_modifyitems``, before the mark plugin's ``-m`` / ``-k`` deselection."""
    warned = config.stash.setdefault(_WARNED_KEY, set())
    aliases = config.stash.get(_ALIASES_KEY, {})
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
            names.add("gpu")
        for name, hosts in aliases.items():
            if name in names or (name in MARKERS and MARKERS[name][0] in names):
                for host in hosts:
                    if host not in names:
                        item.add_marker(getattr(pytest.mark, host))  # registered: --strict-markers accepts it
                        names.add(host)


_ALIAS_PAIR = re.compile(r"(ft_\w+)=([A-Za-z_]\w*)")


def _configure_marker_aliases(config: pytest.Config) -> None:
    """Parse ``--ft-marker-alias`` and the ``ft_marker_alias`` ini lines (``FT=HOST`` pairs, separated by
    whitespace, commas or lines) into ``config.stash``; register each host marker that is not registered yet, so
    ``--strict-markers`` accepts it."""
    pairs = [p for entry in [*config.getini("ft_marker_alias"), *config.getoption("ft_marker_alias")]
             for p in re.split(r"[\s,]+", entry) if p]
    aliases: dict[str, list[str]] = {}
    for pair in pairs:
        match = _ALIAS_PAIR.fullmatch(pair)
        if match is None or match.group(2).startswith("ft_"):
            raise pytest.UsageError(f"ft-harness: --ft-marker-alias / ft_marker_alias expects FT_MARKER=HOST_MARKER "
                                    f"(an ft_ marker and a host marker name, e.g. ft_slow=slow), got {pair!r}")
        hosts = aliases.setdefault(match.group(1), [])
        if match.group(2) not in hosts:
            hosts.append(match.group(2))
    config.stash[_ALIASES_KEY] = aliases
    registered = {line.split(":")[0].split("(")[0].strip() for line in config.getini("markers")}
    for name, hosts in aliases.items():
        for host in hosts:
            if host not in registered:
                config.addinivalue_line("markers", f"{host}: the host's marker for ft-harness {name} "
                                                   f"(--ft-marker-alias {name}={host})")
                registered.add(host)


# --- --ft-strict / --ft-require ---------------------------------------------------------------------------------

#: kind of a scenario skip -> how the strict section names it
SKIP_KINDS = {"capability": "missing capability", "metric": "unavailable metric",
              "import": "unimportable dependency", "gpu": "no CUDA device"}
#: a capability skip a scenario raises itself (``pytest.skip(f"adapter {name!r} lacks capability ...")``)
_LACKS_CAPABILITY = re.compile(r"adapter .* lacks capabilit")


def _strict_active(config: pytest.Config) -> bool:
    return bool(config.getoption("ft_strict") or config.getoption("ft_require"))


def required_capabilities(config: pytest.Config) -> frozenset[str]:
    """The capabilities of ``--ft-require`` (comma-separated, repeatable), each checked against ``CAPABILITIES``."""
    from .spec import CAPABILITIES

    required = frozenset(c.strip() for entry in config.getoption("ft_require") for c in entry.split(",") if c.strip())
    unknown = sorted(required - CAPABILITIES)
    if unknown:
        raise pytest.UsageError(f"ft-harness: --ft-require: unknown capabilit{'y' if len(unknown) == 1 else 'ies'} "
                                f"{', '.join(map(repr, unknown))} (known: {', '.join(sorted(CAPABILITIES))})")
    return required


def pytest_sessionstart(session: pytest.Session) -> None:
    """``--ft-require``: the adapter must declare every required capability, before any test runs (the xdist
    controller checks, before it starts workers)."""
    config = session.config
    if hasattr(config, "workerinput") or not config.getoption("ft_require"):
        return
    required = required_capabilities(config)
    adapter = get_adapter(config)
    caps = effective_capabilities(adapter)
    missing = sorted(required - caps)
    if missing:
        raise pytest.UsageError(
            f"ft-harness: --ft-require: adapter {adapter.name!r} does not declare "
            f"{', '.join(map(repr, missing))} (it declares: {', '.join(sorted(caps)) or 'nothing'}); the scenarios "
            f"needing {'it' if len(missing) == 1 else 'them'} would only be skipped")


def _skip_kind(item: pytest.Item, excinfo: pytest.ExceptionInfo) -> str | None:
    """Why a scenario item was skipped, as a ``SKIP_KINDS`` key, or None for any other skip."""
    if not isinstance(excinfo.value, pytest.skip.Exception):
        return None
    msg = str(excinfo.value.msg)
    kind = item.stash.get(_SKIPS_KEY, {}).get(msg)
    if kind is not None:
        return kind
    if any(entry.name == "importorskip" for entry in excinfo.traceback):
        return "import"
    if _LACKS_CAPABILITY.match(msg):
        return "capability"
    return None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """Under ``--ft-strict`` / ``--ft-require``, a skipped scenario report carries ``ft_skip`` (its kind): it is
    made where the test ran (an xdist worker) and travels with the report to the controller, which judges it."""
    report = yield
    if (report.skipped and call.excinfo is not None and not hasattr(report, "wasxfail")
            and _strict_active(item.config) and is_scenario_item(item)):
        kind = _skip_kind(item, call.excinfo)
        if kind is not None:
            report.ft_skip = kind
    return report


def _test_id(report: pytest.TestReport) -> str:
    """The report's nodeid, or, for a module outside the rootdir (``--pyargs scenarios`` from an installed
    ft-harness: the nodeid is ``::test_name[...]`` for every module), the module's file name before it."""
    if report.nodeid.startswith("::"):
        return f"{Path(report.location[0]).name}{report.nodeid}"
    return report.nodeid


class StrictGate:
    """Registered on the controller (or the only process) under ``--ft-strict`` / ``--ft-require``: collects
    the scenario skips that fail the run from every report (xdist workers' included), lists them in the terminal
    summary and turns a passing exit status into 1."""

    def __init__(self, strict: bool, required: frozenset[str]):
        self.strict = strict
        self.required = required
        self.failing: dict[tuple[str, str], tuple[str, str]] = {}  # (test id, nodeid) -> (kind, reason)

    def fails(self, kind: str) -> bool:
        """Capability, metric and import skips fail under --ft-strict; skips for lack of CUDA only when
        ``gpu`` is required."""
        return "gpu" in self.required if kind == "gpu" else self.strict

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        kind = getattr(report, "ft_skip", None)
        if kind is not None and report.skipped and self.fails(kind):
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
            self.failing[(_test_id(report), report.nodeid)] = (kind, reason.removeprefix("Skipped: "))

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self.failing and session.exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter) -> None:
        if not self.failing:
            return
        n = len(self.failing)
        terminalreporter.section(f"ft-harness strict: {n} scenario test{'s' if n != 1 else ''} skipped", sep="=",
                                 red=True, bold=True)
        for (test, _), (kind, reason) in sorted(self.failing.items()):
            terminalreporter.line(f"SKIPPED {test} - {SKIP_KINDS[kind]}: {reason}")
        flags = " ".join(filter(None, ["--ft-strict" if self.strict else "",
                                       f"--ft-require {','.join(sorted(self.required))}" if self.required else ""]))
        terminalreporter.line(f"{flags}: these skips fail the run (exit status 1)", red=True)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "ft_device" in metafunc.fixturenames:
        metafunc.parametrize("ft_device", ["cpu", pytest.param("cuda", marks=pytest.mark.ft_gpu)], scope="module")
    kinds = metafunc.definition.get_closest_marker("ft_quantizations")
    if kinds is not None and "quant" in metafunc.fixturenames:
        metafunc.parametrize("quant", quantization_params(kinds.args, get_adapter(metafunc.config)))


def quantization_params(names, adapter) -> list:
    """``pytest.param`` per quantisation kind: ``names`` (``None``: unquantised), then the adapter's own kinds
    (``Adapter.quantizations``); each marked with the capability it needs, its id its name."""
    from .adapter import quantization_kinds

    table = quantization_kinds(adapter)
    unknown = [n for n in names if n is not None and n not in table]
    if unknown:
        raise pytest.UsageError(f"ft_quantizations names unknown kinds {unknown}; known: {sorted(table)}")
    chosen = [*names, *(n for n in getattr(adapter, "quantizations", {}) if n not in names)]
    return [pytest.param(q, id=q or "none", marks=[pytest.mark.ft_requires(table[q].capability)] if q else [])
            for q in chosen]


@pytest.fixture(scope="session")
def ft_adapter(request: pytest.FixtureRequest) -> Iterator[FrameworkAdapter]:
    """The adapter under test (``--ft-adapter``); while it is up, the oracles read runs in its layout (its
    ``checkpoints`` / ``log_history`` / ``log_keys``: :func:`harness.layout.use_layout`)."""
    from .layout import use_layout

    adapter = get_adapter(request.config)
    with use_layout(adapter):
        yield adapter


@pytest.fixture(scope="session")
def ft_user_config(request: pytest.FixtureRequest) -> dict:
    """The user's config as ``ft-harness check`` mapped it onto the tiny task (``--ft-user-config``): section -> values."""
    return user_config(request.config)


@pytest.fixture(scope="session")
def tiny_assets(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """The adapter's ``model_arch`` tiny model (+ tokenizer, generation config) and its datasets, built once
    per session."""
    from .models import build_assets

    arch = get_adapter(request.config).model_arch  # e.g. a framework that only knows Qwen2
    return build_assets(tmp_path_factory.mktemp(f"tiny-{arch}"), arch=arch, seed=0)
