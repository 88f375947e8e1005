"""The ``ft-harness sweep`` command line: its arguments, and the sweep, bisection, ``--show-pins``,
``--emit-matrix`` and ``--prune`` it runs from them (usage errors are :class:`SweepError`, exit 2)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import shutil
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from packaging.version import Version

from ..report.model import RED_OUTCOMES
from .bisect import Probe, bisect_releases, format_bisect, verdict_of
from .envs import _MARKER, EnvBuilder, Pins, env_key, env_name, framework_table, select_pins, source_version, stale_envs
from .errors import SweepError
from .github import github_matrix
from .index import IndexSettings
from .matrix import write_matrix
from .runs import VersionResult, k_expression, run_version
from .versions import expand_versions, fetch_releases, filter_releases, needs_release_list

__all__ = ["EPILOG", "add_parser", "main"]

EPILOG = """\
examples:
  ft-harness sweep ms-swift --versions 3.1.1,3.2.0,latest --scenario args_precedence
  ft-harness sweep ms-swift --versions 3.0.0..3.3.0 --scenario "test_seed_lora_on_full_output_trains_lora" \\
                   --scenario grpo_full_save --jobs 2 --out sweep-swift
  ft-harness sweep ms-swift --versions 4.6.0 --adapter-option load_args=true
  ft-harness sweep ms-swift --bisect test_seed_lora_on_full_output_trains_lora --good 4.6.0 --bad 3.0.0
  ft-harness sweep llamafactory --versions 0.9.0..0.9.5 --emit-matrix github     # CI matrix JSON, no envs
  ft-harness sweep ms-swift --versions 3.0.0..4.6.0 --show-pins                  # what each env gets

versions: a comma list of explicit versions, ranges A..B (inclusive; an open end means "from the
first" / "to the newest") expanded from the package index's release list, and 'latest'.
Pre-releases are left out unless --pre; a post-release (3.2.0.post2) is left out when its base
release is listed, unless --post.

environments: ~/.cache/ft-harness/envs/<framework>-<version>-<hash of pins> (--env-dir), built with
uv (venv + pip interface) from harness/sweep/pins.py and reused while complete; uv's wheel cache is
shared. uv does not read pip.conf: pip's index-url, extra-index-url, find-links and constraint are
passed on explicitly (--no-pip-config to drop them; --find-links/--index-url/... to add).
An environment that cannot be built becomes the cell 'env: <reason>'.

outputs (--out): <framework>-<version>.json per version (ft-harness-report/1), the merged
<framework>-sweep.{json,md,html}, logs/ (build and run logs).

bisect: --good passes and --bad fails the scenario (either may be the older one: good older = the
first bad release of a regression, good newer = the first fixed release); --versions, if given,
restricts the candidates. Releases whose environment fails are skipped. Exit 0 found, 1 ambiguous
(skipped releases next to the flip), 2 usage error.
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``sweep`` on ft-harness's sub-command parsers."""
    sp = subparsers.add_parser(
        "sweep", help="run scenarios across releases of a framework (version matrix, bisection, CI matrix)",
        description="Build one isolated uv environment per release of FRAMEWORK, run the selected scenarios in "
                    "each, and merge the reports into a scenario x version matrix; or bisect the first release "
                    "where a scenario's verdict flips.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_selection_arguments(sp)
    _add_environment_arguments(sp)
    _add_run_arguments(sp)
    sp.set_defaults(func=main)
    return sp


def _add_selection_arguments(sp: argparse.ArgumentParser) -> None:
    """Which framework, releases and scenarios; sweep, bisect or CI matrix; where the outputs go."""
    from .pins import PINS

    known = ", ".join(f"{name} ({', '.join(e['aliases'])})" if e.get("aliases") else name for name, e in PINS.items())
    sp.add_argument("framework", metavar="FRAMEWORK", help=f"a framework of harness/sweep/pins.py: {known}")
    sp.add_argument("--versions", metavar="SPEC", default=None,
                    help="versions: '3.1.1,3.2.0', '3.0.0..3.3.0', 'latest' or a comma list of those")
    sp.add_argument("--source", action="append", default=[], metavar="PATH",
                    help="also a cell built from this local source tree or sdist of the framework (a main "
                         "checkout, a PR branch, a commit) instead of a release; its version is read from it "
                         "(repeatable; with --source, --versions may be left out)")
    sp.add_argument("--with", dest="with_sources", action="append", default=[], metavar="NAME=PATH",
                    help="install library NAME from a local source tree or sdist into every cell, over what "
                         "resolved (e.g. transformers=../transformers for transformers main under a framework "
                         "release; repeatable)")
    sp.add_argument("--min-versions", action="store_true",
                    help="also a cell per release resolved to the lowest versions the framework declares (its "
                         "Requires-Dist taken as direct requirements, uv --resolution lowest-direct; within the "
                         "pins and ft-harness's own floors); named <version>-min")
    sp.add_argument("--scenario", action="append", default=[], metavar="PATTERN",
                    help="pytest -k expression selecting scenarios (repeatable: or-ed); default: all; with "
                         "--bisect, it narrows the bisected scenario (e.g. to one parametrisation)")
    sp.add_argument("--adapter-option", action="append", default=[], metavar="KEY=VALUE",
                    help="adapter option (repeatable), over the pins' defaults")
    sp.add_argument("--jobs", type=int, default=1, metavar="N", help="versions run in parallel (default 1)")
    sp.add_argument("--bisect", metavar="SCENARIO", default=None,
                    help="find the first release where SCENARIO's verdict flips (needs --good and --bad)")
    sp.add_argument("--good", metavar="V", default=None, help="bisect: a release where SCENARIO passes")
    sp.add_argument("--bad", metavar="V", default=None, help="bisect: a release where SCENARIO fails")
    sp.add_argument("--emit-matrix", choices=("github",), default=None,
                    help="print the CI matrix JSON for the versions and exit (no environment is built)")
    sp.add_argument("--out", metavar="DIR", default="sweep-out", help="output directory (default: sweep-out)")
    sp.add_argument("--python", metavar="X.Y", default=None, help="interpreter for every env (default: the pins')")
    sp.add_argument("--pre", action="store_true", help="include pre-releases in ranges and 'latest'")
    sp.add_argument("--post", action="store_true", help="include post-releases beside their base release")


def _add_environment_arguments(sp: argparse.ArgumentParser) -> None:
    """Where the environments live and where uv takes their packages from."""
    sp.add_argument("--harness-source", metavar="PATH", default=None,
                    help="ft-harness source tree installed into each env (default: the one this runs from)")
    sp.add_argument("--env-dir", metavar="DIR", default=None,
                    help="environment cache (default: $FT_HARNESS_ENV_DIR or ~/.cache/ft-harness/envs)")
    sp.add_argument("--rebuild", action="store_true", help="rebuild the environments even when complete")
    sp.add_argument("--prune", action="store_true",
                    help="delete FRAMEWORK's cached environments that the current pins no longer use, then exit")
    sp.add_argument("--uv", metavar="PATH", default=None, help="uv executable (default: beside python, or PATH)")
    sp.add_argument("--uv-cache-dir", metavar="DIR", default=None, help="uv's cache (default: uv's own)")
    sp.add_argument("--no-pip-config", action="store_true",
                    help="do not pass pip's configured indexes/find-links/constraints on to uv")
    sp.add_argument("--index-url", metavar="URL", default=None, help="primary package index for uv")
    sp.add_argument("--extra-index-url", action="append", default=[], metavar="URL", help="extra index (repeatable)")
    sp.add_argument("--find-links", action="append", default=[], metavar="DIR|URL",
                    help="extra wheel location (repeatable), e.g. /opt/wheels")
    sp.add_argument("--constraint", action="append", default=[], metavar="FILE", help="constraints file (repeatable)")


def _add_run_arguments(sp: argparse.ArgumentParser) -> None:
    """How each release's scenarios run (or, with --show-pins, that nothing is built)."""
    sp.add_argument("--timeout", type=float, default=7200, metavar="S", help="per-version run limit (default 7200)")
    sp.add_argument("--show-pins", action="store_true", help="print each version's pins and env path, build nothing")
    sp.add_argument("--pytest-args", default="", metavar="'ARGS'",
                    help="extra pytest arguments for every version's run, one shell-quoted string "
                         "(e.g. --pytest-args '-m \"not ft_gpu\" -x')")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ft-harness")
    add_parser(p.add_subparsers(dest="command"))
    return p


def _index_settings(args) -> IndexSettings:
    base = IndexSettings() if args.no_pip_config else IndexSettings.from_pip_config()
    return IndexSettings(index_url=args.index_url or base.index_url,
                         extra_index_urls=base.extra_index_urls + tuple(args.extra_index_url),
                         find_links=base.find_links + tuple(args.find_links),
                         constraints=base.constraints + tuple(args.constraint))


def _default_source() -> Path:
    return Path(__file__).resolve().parent.parent.parent


def _harness_source(args) -> Path:
    return Path(args.harness_source).resolve() if args.harness_source else _default_source()


def _env_root(args) -> Path:
    return Path(args.env_dir or os.environ.get("FT_HARNESS_ENV_DIR") or "~/.cache/ft-harness/envs")


def _versions(args, distribution: str, index: IndexSettings, *, extra: Sequence[str] = ()) -> list[str]:
    spec = args.versions
    releases = None
    if spec is None or needs_release_list(spec):
        releases = fetch_releases(distribution, index)
    if spec is None:  # bisect without --versions: every release between the endpoints
        lo, hi = sorted((Version(v) for v in extra), key=lambda v: v)
        pool = filter_releases(releases or [], pre=args.pre, post=args.post)
        return sorted({*[r for r in pool if lo <= Version(r) <= hi], *extra}, key=Version)
    return expand_versions(spec, releases, pre=args.pre, post=args.post)


def main(args: argparse.Namespace | Sequence[str] | None = None) -> int:
    """``ft-harness sweep``; ``args`` is the parsed namespace (or an argv list for ``python -m``)."""
    import signal

    if args is None or not isinstance(args, argparse.Namespace):
        args = _parser().parse_args(["sweep", *(args if args is not None else sys.argv[1:])])

    def _terminate(signum, frame):  # SIGTERM: unwind, so running scenario process groups are killed
        raise KeyboardInterrupt(f"signal {signum}")

    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        return _main(args)
    except SweepError as exc:
        print(f"ft-harness sweep: {exc}", file=sys.stderr)
        return 2
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _main(args) -> int:
    options = _check_args(args)
    bisecting = args.bisect is not None
    name, entry = framework_table(args.framework)
    distribution = entry.get("distribution", name)
    index = _index_settings(args)
    if args.prune:
        return _prune(args, name, index)
    sources = [Path(src).expanduser().resolve() for src in args.source]
    if not bisecting and not args.versions and not sources:
        raise SweepError("--versions SPEC is required (e.g. 3.1.1,3.2.0 or 3.0.0..3.3.0 or latest), or a --source")
    endpoints = [args.good, args.bad] if bisecting else []
    versions = _versions(args, distribution, index, extra=endpoints) if (args.versions or bisecting) else []
    if bisecting:
        versions = sorted({*versions, *endpoints}, key=Version)
    with_sources = _with_sources(args.with_sources)
    pins_of = {}
    for v in versions:
        pins_of[v] = dataclasses.replace(select_pins(name, v, python=args.python), with_sources=with_sources)
        if args.min_versions and not bisecting:
            floor = dataclasses.replace(pins_of[v], min_versions=True)
            pins_of[floor.cell] = floor
    for src in sources:  # a cell named by its version and "-src", keyed like the release cells by that name
        pins = dataclasses.replace(select_pins(name, source_version(src), python=args.python), source=str(src),
                                   with_sources=with_sources)
        pins_of[pins.cell] = pins
    versions = list(pins_of)
    pytest_args = shlex.split(args.pytest_args or "")

    if args.emit_matrix == "github":
        print(json.dumps(github_matrix(name, versions, python=args.python, options=options), separators=(",", ":")))
        return 0
    source = _harness_source(args)
    if not (source / "pyproject.toml").is_file():
        raise SweepError(f"--harness-source {source}: no pyproject.toml there")
    env_root = _env_root(args).expanduser()
    out = Path(args.out)
    if args.show_pins:
        _show_pins(name, versions, pins_of, env_root, index, source, options)
        return 0
    out.mkdir(parents=True, exist_ok=True)
    builder = EnvBuilder(env_root, source, index, uv=args.uv, uv_cache_dir=args.uv_cache_dir, log_dir=out / "logs",
                         rebuild=args.rebuild)
    log = _stderr_log()
    if bisecting:
        return _bisect(args, name, versions, pins_of, builder, out, options, pytest_args, log)
    return _sweep(args, name, distribution, versions, pins_of, builder, out, options, pytest_args, env_root, log)


def _with_sources(pairs: Sequence[str]) -> tuple[tuple[str, str], ...]:
    """``NAME=PATH`` pairs as (name, absolute path); a :class:`SweepError` naming a malformed pair or a missing path."""
    out = []
    for pair in pairs:
        name, sep, path = pair.partition("=")
        if not sep or not name or not path:
            raise SweepError(f"--with {pair!r}: expected NAME=PATH (e.g. transformers=../transformers)")
        where = Path(path).expanduser().resolve()
        if not where.exists():
            raise SweepError(f"--with {pair!r}: {where} does not exist")
        out.append((name, str(where)))
    return tuple(out)


def _check_args(args) -> dict[str, str]:
    """The adapter options; :class:`SweepError` for arguments that do not go together."""
    from ..adapter import parse_adapter_options
    from ..errors import AdapterLoadError

    try:
        options = parse_adapter_options(args.adapter_option, flag="--adapter-option")
    except AdapterLoadError as exc:
        raise SweepError(str(exc)) from exc
    if args.jobs < 1:
        raise SweepError("--jobs must be at least 1")
    bisecting = args.bisect is not None
    if bisecting and (not args.good or not args.bad):
        raise SweepError("--bisect needs --good V and --bad V")
    if not bisecting and (args.good or args.bad):
        raise SweepError("--good/--bad only go with --bisect")
    return options


def _prune(args, name: str, index: IndexSettings) -> int:
    """``--prune``: delete ``name``'s cached environments that the current pins no longer use."""
    source = _harness_source(args)
    for path in stale_envs(_env_root(args), name, index, source, python=args.python):
        shutil.rmtree(path, ignore_errors=True)
        Path(f"{path}.lock").unlink(missing_ok=True)
        print(f"removed {path}")
    return 0


def _show_pins(name: str, versions: Sequence[str], pins_of: dict[str, Pins], env_root: Path, index: IndexSettings,
               source: Path, options: dict[str, str]) -> None:
    """``--show-pins``: each version's pins and environment path; nothing is built."""
    for v in versions:
        p = pins_of[v]
        path = env_root / env_name(p, env_key(p, index, source))
        print(f"{name} {v}: python {p.python}, {'--no-deps, ' if p.no_deps else ''}adapter {p.adapter_spec(options)}"
              f"\n  requirements: {' '.join(p.requirements) or '-'}  files: {' '.join(p.requirements_files) or '-'}"
              f"  overrides: {' '.join(p.overrides) or '-'}"
              f"\n  harness {'--no-deps' if p.harness_no_deps else 'with deps'}"
              f"  env: {path}{' (complete)' if (path / _MARKER).is_file() else ''}\n  note: {p.note}"
              + (f"\n  framework from: {p.source}" if p.source else "")
              + (f"\n  over it: {' '.join(f'{lib}={where}' for lib, where in p.with_sources)}" if p.with_sources
                 else "")
              + ("\n  its declared requirements at their floors (uv --resolution lowest-direct)" if p.min_versions
                 else ""))


def _stderr_log() -> Callable[[str], None]:
    """A progress logger to stderr that parallel version jobs can share (one whole line at a time)."""
    lock = threading.Lock()

    def log(msg: str) -> None:
        with lock:
            print(msg, file=sys.stderr, flush=True)

    return log


def _sweep(args, name, distribution, versions, pins_of, builder, out, options, pytest_args, env_root, log) -> int:
    """Every version's scenarios (``--jobs`` at a time), merged into ``<out>/<name>-sweep.{json,md,html}``;
    1 when a cell is failed, error or xpassed."""
    k_expr = k_expression(args.scenario)
    log(f"ft-harness sweep: {name} {', '.join(versions)} ({len(versions)} version(s), {args.jobs} job(s)); "
        f"scenarios: {k_expr or 'all'}; envs under {env_root}")
    start = time.perf_counter()

    def one(v: str) -> VersionResult:
        return run_version(builder, pins_of[v], out, options=options, k_expr=k_expr, pytest_args=pytest_args,
                           timeout=args.timeout, log=log)

    if args.jobs == 1:
        results = [one(v) for v in versions]
    else:
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:  # each version's work is subprocesses
            results = list(pool.map(one, versions))
    wall = time.perf_counter() - start
    extra = {"framework": name, "distribution": distribution, "versions": versions, "scenario_filter": k_expr,
             "adapter_options": options, "jobs": args.jobs, "wall_s": round(wall, 2),
             "timings": {r.pins.cell: r.timings() for r in results}}
    data = write_matrix(results, out, name, extra=extra)
    print((out / f"{name}-sweep.md").read_text(encoding="utf-8"))
    log(f"ft-harness sweep: {len(versions)} version(s) in {wall:.1f}s; wrote {out / (name + '-sweep.md')}, "
        f".json, .html")
    bad = any(c["outcome"] in RED_OUTCOMES for s in data["scenarios"] for c in s["results"].values())
    return 1 if bad else 0


def _bisect(args, name, versions, pins_of, builder, out, options, pytest_args, log) -> int:
    scenario = args.bisect
    k_expr = scenario.split("::")[-1] if "::" in scenario else scenario
    if args.scenario:  # --scenario narrows the bisected test (one parametrisation of it, say)
        k_expr = f"({k_expr}) and (" + " or ".join(f"({k})" for k in args.scenario) + ")"
    start = time.perf_counter()
    timings: dict[str, Any] = {}

    def probe(v: str) -> Probe:
        res = run_version(builder, pins_of[v], out, options=options, k_expr=k_expr, pytest_args=pytest_args,
                          timeout=args.timeout, log=log)
        timings[v] = res.timings()
        if res.error:
            return Probe(v, "skip", res.error)
        report = json.loads(res.report.read_text(encoding="utf-8")) if res.report else None
        verdict, detail = verdict_of(report, scenario)
        log(f"[{name} {v}] verdict: {verdict} ({detail})")
        return Probe(v, verdict, detail)

    result = bisect_releases(versions, args.good, args.bad, probe)
    result.scenario = scenario
    wall = time.perf_counter() - start
    text = format_bisect(result, name) + f"\nwall time: {wall:.1f}s for {len(result.probes)} probe(s)\n"
    print(text)
    (out / f"{name}-bisect.txt").write_text(text, encoding="utf-8")
    (out / f"{name}-bisect.json").write_text(json.dumps({
        **{k: v for k, v in dataclasses.asdict(result).items() if k != "probes"},
        "probes": [dataclasses.asdict(p) for p in result.probes], "wall_s": round(wall, 2), "timings": timings},
        indent=2), encoding="utf-8")
    return 1 if result.ambiguous else 0
