"""pytest plugin (registered through the ``pytest11`` entry point as ``ft_harness``).

Options:
  --ft-adapter module:Class       adapter under test (env FT_HARNESS_ADAPTER; default: reference)
  --ft-adapter-option key=value   passed to the adapter's constructor (repeatable)

Markers:
  requires(*capabilities)   skip, naming the capability, when the adapter lacks one
  seed(id)                  the documented failure a scenario reproduces (for reports)
  gpu                       needs CUDA; skipped with a reason when absent (select with -m gpu)
  slow                      long-running

Fixtures: ``ft_adapter`` (session), ``ft_device`` ("cpu", plus a gpu-marked "cuda" variant),
``tiny_assets`` (session: tiny Llama + tokenizer + datasets, built locally), ``ft_adapter_target``
((target, options), to re-create the adapter in a subprocess).

An adapter's ``known_failures`` (scenario id or prefix -> reason, or -> (reason, exception class))
turns matching tests into strict xfails: a known bug keeps CI green, and its fix turns CI red until
the entry is removed. With an exception class, failing with any other exception is a real failure.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from .adapter import FrameworkAdapter, load_adapter, parse_adapter_options

_ADAPTER_KEY = pytest.StashKey[object]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("ft-harness", "ft-harness: fine-tuning framework regression scenarios")
    group.addoption("--ft-adapter", default=None, metavar="MODULE:CLASS",
                    help="adapter to run the scenarios against: 'module:Class' or an entry-point name "
                         "(env FT_HARNESS_ADAPTER; default: reference)")
    group.addoption("--ft-adapter-option", action="append", default=[], metavar="KEY=VALUE",
                    help="option passed to the adapter constructor; repeatable")


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    config.addinivalue_line("markers", "requires(*capabilities): skip unless the adapter has every capability")
    config.addinivalue_line("markers", "seed(id): the documented failure (seed) a scenario reproduces")
    config.addinivalue_line("markers", "gpu: needs a CUDA device (run with -m gpu)")
    config.addinivalue_line("markers", "slow: long-running scenario")


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


def scenario_id(item: pytest.Item) -> str:
    """``test_module.py::test_name[params]``: how known_failures keys name a test, wherever it lives."""
    return f"{Path(str(item.fspath)).name}::{item.name}"


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
            f"capabilities: {', '.join(sorted(adapter.capabilities))}"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    scenario_items = [i for i in items if "ft_adapter" in getattr(i, "fixturenames", ())]
    cuda = None
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            if cuda is None:
                cuda = _cuda_available()
            if not cuda:
                item.add_marker(pytest.mark.skip(reason="gpu: needs a CUDA device (torch.cuda.is_available() is False)"))
    if not scenario_items:
        return
    adapter = get_adapter(config)
    caps = frozenset(adapter.capabilities)
    known = dict(getattr(adapter, "known_failures", {}) or {})
    for item in scenario_items:
        needed = [c for m in item.iter_markers("requires") for c in m.args]
        missing = [c for c in needed if c not in caps]
        if missing:
            item.add_marker(pytest.mark.skip(
                reason=f"adapter {adapter.name!r} lacks capability {', '.join(repr(c) for c in missing)}"))
            continue
        sid = scenario_id(item)
        for key, entry in known.items():
            if sid == key or sid.startswith(key):
                reason, raises = entry if isinstance(entry, tuple) else (entry, None)
                item.add_marker(pytest.mark.xfail(strict=True, raises=raises,
                                                  reason=f"known failure of {adapter.name}: {reason}"))
                break


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "ft_device" in metafunc.fixturenames:
        metafunc.parametrize("ft_device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)], scope="module")


@pytest.fixture(scope="session")
def ft_adapter(request: pytest.FixtureRequest) -> FrameworkAdapter:
    """The adapter under test (``--ft-adapter``)."""
    return get_adapter(request.config)


@pytest.fixture(scope="session")
def ft_adapter_target(request: pytest.FixtureRequest) -> tuple[str, dict[str, str]]:
    """(target, options) of the adapter under test, to re-create it in a subprocess."""
    target = request.config.getoption("ft_adapter") or os.environ.get("FT_HARNESS_ADAPTER") or "reference"
    return target, parse_options(request.config.getoption("ft_adapter_option"))


@pytest.fixture(scope="session")
def tiny_assets(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """A tiny Llama, or the adapter's ``model_arch`` (+ tokenizer, generation config) and its datasets, built once per session."""
    from .models import build_assets

    arch = getattr(get_adapter(request.config), "model_arch", "llama")  # e.g. ms-swift needs a Qwen2
    return build_assets(tmp_path_factory.mktemp(f"tiny-{arch}"), arch=arch, seed=0)
