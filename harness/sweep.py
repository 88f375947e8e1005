"""``ft-harness sweep``: which releases of a framework have which bug.

For each release of a framework (an explicit list, a range ``A..B`` expanded from the package
index's release list, or ``latest``) build an isolated environment with ``uv`` (the framework at
that release plus its pins from :mod:`harness.sweep_pins`, then ft-harness), run the selected
scenarios in it as a subprocess (``<env>/bin/ft-harness report ... --format json``), and merge the
per-release reports into one matrix (rows: scenarios; columns: releases) as md, json and html.

Environments live in ``~/.cache/ft-harness/envs/<framework>-<version>-<hash of pins>`` and are
reused when complete (a marker file written last): a second sweep over the same releases neither
downloads nor resolves. uv's wheel cache is shared by all of them. An environment that cannot be
built is a cell ``env: <reason>``, never a crash of the sweep.

``--bisect SCENARIO --good A --bad B`` binary-searches the ordered releases between A and B for the
first release where the scenario's verdict flips (regression when A is older, fix when A is newer),
building O(log n) environments; a release whose environment cannot be built is skipped, like
``git bisect skip``. ``--emit-matrix github`` prints the GitHub Actions ``strategy.matrix`` for the
releases (``examples/github-sweep.yml`` is the workflow that uses it).

Pure pieces (tested without building anything): :func:`expand_versions`, :func:`filter_releases`,
:func:`select_pins`, :func:`env_key`, :func:`bisect_releases`, :func:`github_matrix`,
:func:`first_meaningful_line`, :func:`merge_runs`.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

__all__ = ["SweepError", "Pins", "IndexSettings", "EnvResult", "VersionResult", "BisectResult", "Probe",
           "filter_releases", "expand_versions", "needs_release_list", "fetch_releases", "framework_table",
           "select_pins", "env_key", "env_name", "stale_envs", "EnvBuilder", "scenario_command", "k_expression",
           "run_version", "merge_runs", "verdict_of", "bisect_releases", "format_bisect", "github_matrix",
           "first_meaningful_line", "run_failure_line", "matrix_md", "add_parser", "main"]


class SweepError(Exception):
    """A usage error of the sweep (bad version spec, unknown framework, bisect endpoints that do not flip)."""


# --------------------------------------------------------------------------------------------- versions
def _version(text: str) -> Version:
    try:
        return Version(text)
    except InvalidVersion as exc:
        raise SweepError(f"not a version: {text!r}") from exc


def filter_releases(releases: Iterable[str], *, pre: bool = False, post: bool = False) -> list[str]:
    """Valid versions, sorted ascending, without duplicates.

    Pre-releases (``a``/``b``/``rc``/``.dev``) are dropped unless ``pre``. A post-release
    (``3.2.0.post2``) is a re-upload of the release it follows: it is dropped when that release is in
    the list, unless ``post`` (a post-release with no base release in the list stays).
    """
    parsed: dict[Version, str] = {}
    for text in releases:
        try:
            v = Version(str(text).strip())
        except InvalidVersion:
            continue
        if v.is_prerelease and not pre:
            continue
        parsed.setdefault(v, str(text).strip())
    bases = {Version(v.base_version) for v in parsed if v.post is None and not v.is_prerelease}
    out = []
    for v in sorted(parsed):
        if v.post is not None and not post and Version(v.base_version) in bases:
            continue
        out.append(parsed[v])
    return out


def needs_release_list(spec: str) -> bool:
    """Whether ``spec`` has a range or ``latest`` (so the index's release list is needed)."""
    return any(".." in tok or tok.strip().lower() == "latest" for tok in spec.split(","))


def expand_versions(spec: str, releases: Sequence[str] | None = None, *, pre: bool = False,
                    post: bool = False) -> list[str]:
    """A ``--versions`` spec -> the releases it names, ascending, without duplicates.

    ``spec`` is a comma list of: an explicit version (``3.1.1``: taken as given, even a pre-release
    or one missing from ``releases``); a range ``A..B`` (both ends inclusive, either may be left out:
    ``3.0.0..``, ``..3.2.0``), expanded from ``releases`` after :func:`filter_releases`; ``latest``
    (the newest release that survives the filter). ``releases`` is needed only for ranges and
    ``latest``.
    """
    tokens = [t.strip() for t in spec.split(",") if t.strip()]
    if not tokens:
        raise SweepError("--versions is empty")
    pool = filter_releases(releases or [], pre=pre, post=post)
    chosen: dict[Version, str] = {}
    for tok in tokens:
        if tok.lower() == "latest" or ".." in tok:
            if releases is None:
                raise SweepError(f"{tok!r} needs the package index's release list")
            if not pool:
                raise SweepError(f"{tok!r}: the index lists no release" + ("" if pre else " (pre-releases excluded)"))
        if tok.lower() == "latest":
            chosen.setdefault(Version(pool[-1]), pool[-1])
        elif ".." in tok:
            lo_text, _, hi_text = tok.partition("..")
            lo = _version(lo_text.strip()) if lo_text.strip() else None
            hi = _version(hi_text.strip()) if hi_text.strip() else None
            if lo is not None and hi is not None and lo > hi:
                raise SweepError(f"range {tok!r} is empty: {lo} is newer than {hi} (write {hi}..{lo})")
            picked = [r for r in pool if (lo is None or Version(r) >= lo) and (hi is None or Version(r) <= hi)]
            if not picked:
                raise SweepError(f"range {tok!r} holds no release" + ("" if pre else " (pre-releases excluded)"))
            for r in picked:
                chosen.setdefault(Version(r), r)
        else:
            chosen.setdefault(_version(tok), tok)
    return [chosen[v] for v in sorted(chosen)]


_INDEX_JSON = "application/vnd.pypi.simple.v1+json"


def fetch_releases(distribution: str, index: IndexSettings | None = None, *, timeout: float = 60) -> list[str]:
    """Every version the package index lists for ``distribution`` (unfiltered, yanked-only ones left
    out). Asks the index's JSON simple API (PEP 691) first, then ``pip index versions`` (which reads
    pip's own configuration: the extra local indexes of this machine included)."""
    import urllib.request

    index = index or IndexSettings()
    errors = []
    base = (index.index_url or "https://pypi.org/simple").rstrip("/")
    if base.startswith(("http://", "https://")):
        url = f"{base}/{canonicalize_name(distribution)}/"
        try:
            req = urllib.request.Request(url, headers={"Accept": _INDEX_JSON})
            with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - a package index
                data = json.loads(resp.read().decode("utf-8"))
            live: dict[str, bool] = {}
            for f in data.get("files", []):
                m = re.match(r"^[^-]+-([^-]+?)(?:-|\.tar\.gz$|\.zip$)", f.get("filename", ""))
                if m:
                    live[m.group(1)] = live.get(m.group(1), False) or not f.get("yanked")
            versions = [v for v in data.get("versions", []) if live.get(v, True)]
            if versions:
                return versions
        except Exception as exc:  # noqa: BLE001 - fall back to pip
            errors.append(f"{url}: {exc}")
    cmd = [sys.executable, "-m", "pip", "index", "versions", "--pre", distribution]
    if index.index_url:
        cmd += ["--index-url", index.index_url]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    m = re.search(r"Available versions:\s*(.+)", proc.stdout)
    if proc.returncode == 0 and m:
        return [v.strip() for v in m.group(1).split(",") if v.strip()]
    errors.append(f"pip index versions: {first_meaningful_line(proc.stderr + proc.stdout)}")
    raise SweepError(f"cannot list the releases of {distribution}: " + "; ".join(errors))


# ------------------------------------------------------------------------------------------------- pins
@dataclass(frozen=True)
class Pins:
    """What one (framework, version) environment is built from."""

    framework: str
    distribution: str
    version: str
    adapter: str
    python: str
    no_deps: bool = False
    requirements: tuple[str, ...] = ()
    requirements_files: tuple[str, ...] = ()
    overrides: tuple[str, ...] = ()
    harness_no_deps: bool = False
    adapter_options: Mapping[str, str] = field(default_factory=dict)
    note: str = ""

    def adapter_spec(self, options: Mapping[str, str] | None = None) -> str:
        """``swift`` or ``swift[load_args=true,...]``: the pins' default options, then ``options``."""
        merged = {**dict(self.adapter_options), **dict(options or {})}
        if not merged:
            return self.adapter
        return f"{self.adapter}[{','.join(f'{k}={v}' for k, v in merged.items())}]"


def framework_table(framework: str, table: Mapping[str, Any] | None = None) -> tuple[str, Mapping[str, Any]]:
    """(canonical name, its table entry) for a framework name or alias (case-insensitive)."""
    from .sweep_pins import PINS

    table = PINS if table is None else table
    want = canonicalize_name(framework)
    for name, entry in table.items():
        names = [name, entry.get("distribution", name), *entry.get("aliases", ())]
        if want in {canonicalize_name(n) for n in names}:
            return name, entry
    raise SweepError(f"no pins for framework {framework!r}; known: {', '.join(sorted(table))} "
                     "(add it to harness/sweep_pins.py)")


def _req_name(req: str) -> str:
    m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", req)
    return canonicalize_name(m.group(1)) if m else req.strip()


def _merge_requirements(defaults: Sequence[str], own: Sequence[str]) -> tuple[str, ...]:
    """``defaults`` + ``own``; an entry of ``own`` replaces a default of the same package name."""
    names = {_req_name(r) for r in own}
    return tuple([r for r in defaults if _req_name(r) not in names] + list(own))


def select_pins(framework: str, version: str, *, python: str | None = None,
                table: Mapping[str, Any] | None = None, defaults: Mapping[str, Any] | None = None) -> Pins:
    """The pins for ``framework`` at ``version``: the first range entry containing it."""
    from . import sweep_pins

    defaults = sweep_pins.DEFAULTS if defaults is None else defaults
    name, entry = framework_table(framework, table)
    v = _version(version)
    for rng in entry.get("ranges", ()):
        if SpecifierSet(rng["versions"]).contains(v, prereleases=True):
            return Pins(
                framework=name, distribution=entry.get("distribution", name), version=version,
                adapter=entry["adapter"], python=python or rng.get("python") or defaults.get("python", "3.11"),
                no_deps=bool(rng.get("no_deps", False)),
                requirements=_merge_requirements(defaults.get("requirements", ()), rng.get("requirements", ())),
                requirements_files=tuple(rng.get("requirements_files", ())),
                overrides=tuple(rng.get("overrides", ())), harness_no_deps=bool(rng.get("harness_no_deps", False)),
                adapter_options=dict(rng.get("adapter_options", {})), note=rng.get("note", ""))
    ranges = ", ".join(r["versions"] for r in entry.get("ranges", ())) or "none"
    raise SweepError(f"{name} {version}: no pins cover this version (ranges: {ranges}); add an entry to "
                     "harness/sweep_pins.py")


# ----------------------------------------------------------------------------------------- index / uv
def _pip_config() -> dict[str, str]:
    """pip's effective configuration (``pip config list``), environment variables winning."""
    out: dict[str, str] = {}
    try:
        proc = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True,
                              timeout=60)
        for line in proc.stdout.splitlines():
            key, sep, value = line.partition("=")
            if sep:
                out[key.split(".", 1)[-1].strip()] = value.strip().strip("'\"")
    except (OSError, subprocess.SubprocessError):
        pass
    for key in ("index-url", "extra-index-url", "find-links", "constraint"):
        env = os.environ.get("PIP_" + key.upper().replace("-", "_"))
        if env:
            out[key] = env
    return out


@dataclass(frozen=True)
class IndexSettings:
    """Where packages come from, for uv (which does not read pip.conf)."""

    index_url: str | None = None
    extra_index_urls: tuple[str, ...] = ()
    find_links: tuple[str, ...] = ()
    constraints: tuple[str, ...] = ()

    @classmethod
    def from_pip_config(cls, config: Mapping[str, str] | None = None) -> IndexSettings:
        """pip's index-url / extra-index-url / find-links / constraint as uv flags (this machine:
        ``--find-links /opt/wheels`` holds the CPU torch wheel, the constraints cap torch)."""
        config = _pip_config() if config is None else config
        split = lambda key: tuple(config.get(key, "").split())  # noqa: E731
        return cls(index_url=config.get("index-url") or None, extra_index_urls=split("extra-index-url"),
                   find_links=split("find-links"), constraints=split("constraint"))

    def uv_args(self) -> list[str]:
        args: list[str] = []
        if self.index_url:
            args += ["--index-url", self.index_url]
        for url in self.extra_index_urls:
            args += ["--extra-index-url", url]
        if self.extra_index_urls:
            args += ["--index-strategy", "unsafe-best-match"]  # what pip does: best version over all indexes
        for link in self.find_links:
            args += ["--find-links", link]
        for path in self.constraints:
            if Path(path).is_file():
                args += ["--constraints", path]
        return args

    def key(self) -> dict[str, Any]:
        """What of these settings can change an environment (constraint files by content)."""
        return {"index_url": self.index_url, "extra": list(self.extra_index_urls), "find_links": list(self.find_links),
                "constraints": {p: _file_digest(Path(p)) for p in self.constraints}}


def _file_digest(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def env_key(pins: Pins, index: IndexSettings | None = None, harness_source: Path | None = None) -> str:
    """A stable hash of everything an environment is built from: the pins (not the adapter options or
    the note), the contents of their requirement files, the index settings, and, where ft-harness's
    own dependencies are resolved into the env, its ``pyproject.toml``."""
    source = Path(harness_source) if harness_source is not None else None
    files = {f: _file_digest(source / f) if source is not None else None for f in pins.requirements_files}
    material = {
        "framework": pins.framework, "distribution": pins.distribution, "version": pins.version,
        "python": pins.python, "no_deps": pins.no_deps, "requirements": list(pins.requirements),
        "requirements_files": files, "overrides": list(pins.overrides), "harness_no_deps": pins.harness_no_deps,
        "index": (index or IndexSettings()).key(),
        "harness_deps": (None if pins.harness_no_deps or source is None else _file_digest(source / "pyproject.toml")),
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:16]


def env_name(pins: Pins, key: str) -> str:
    return f"{pins.framework}-{pins.version}-{key[:12]}"


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_NOISE = re.compile(r"^(Using |Resolved |Prepared |Installed |Uninstalled |Audited |Downloading|Downloaded |Building |"
                    r"Built |Creating virtual|Activate with|warning:|WARNING:|[+-~] |Checked |Bytecode|hint:|help:|"
                    r"Looking in|Collecting |Requirement already)")


_CAUSES = ("╰─▶", "Caused by:", "caused by:", "cause:")  # uv's cause line: a tree on a terminal, "cause:" in a pipe


def first_meaningful_line(text: str, limit: int = 200) -> str:
    """The line of a tool's error output that says what went wrong (uv's ``× ...`` headline joined
    with its first ``╰─▶`` cause; else the first line naming an error; else the last line)."""
    lines = [_ANSI.sub("", ln).strip() for ln in str(text).splitlines()]
    lines = [ln for ln in lines if ln and not _NOISE.match(ln)]
    if not lines:
        return "no error output"
    pick = None
    for i, ln in enumerate(lines):
        if ln.startswith(("×", "error:", "ERROR:")) or re.search(r"\b(error|failed|not found|no solution|"
                                                                  r"no matching|could not|cannot)\b", ln, re.I):
            pick = ln.lstrip("×").strip()
            cause = next((c for c in lines[i + 1:i + 4] if c.startswith(_CAUSES)), None)
            if cause:
                for prefix in _CAUSES:
                    cause = cause.removeprefix(prefix)
                pick = f"{pick.rstrip(':')}: {cause.strip()}"
            break
    if pick is None:
        pick = lines[-1]
    pick = re.sub(r"\s+", " ", pick)
    return pick if len(pick) <= limit else pick[: limit - 3] + "..."


def find_uv(explicit: str | None = None) -> str:
    """``--uv``, else ``uv`` beside this Python (the project venv), else on PATH."""
    if explicit:
        return explicit
    beside = Path(sys.executable).with_name("uv")
    if beside.is_file():
        return str(beside)
    found = shutil.which("uv")
    if found:
        return found
    raise SweepError("uv not found: `python -m pip install uv` into this environment (or pass --uv PATH)")


def harness_fingerprint(source: Path) -> str:
    """Content hash of the ft-harness source tree that gets installed into the envs."""
    source = Path(source)
    h = hashlib.sha256()
    paths = [source / "pyproject.toml"]
    for sub in ("harness", "scenarios"):
        paths += sorted(p for p in (source / sub).rglob("*") if p.is_file() and "__pycache__" not in p.parts
                        and p.suffix not in (".pyc", ".pyo"))
    for p in paths:
        if p.is_file():
            h.update(str(p.relative_to(source)).encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------------------- environments
@dataclass
class EnvResult:
    path: Path
    ok: bool
    reason: str = ""
    build_s: float = 0.0
    cached: bool = False
    harness_s: float = 0.0


_MARKER = ".ft-sweep-complete.json"
_HARNESS_STAMP = ".ft-harness-source"


class EnvBuilder:
    """Builds (or reuses) one uv environment per (framework, version, pins)."""

    def __init__(self, root: Path, harness_source: Path, index: IndexSettings, *, uv: str | None = None,
                 uv_cache_dir: str | None = None, log_dir: Path | None = None, rebuild: bool = False,
                 timeout: float = 3600):
        self.root = Path(root).expanduser()
        self.harness_source = Path(harness_source).resolve()
        self.index = index
        self.uv = find_uv(uv)
        self.uv_cache_dir = uv_cache_dir
        self.log_dir = log_dir
        self.rebuild = rebuild
        self.timeout = timeout
        self._source_fp: str | None = None
        self._fp_lock = threading.Lock()

    def path_for(self, pins: Pins) -> Path:
        return self.root / env_name(pins, env_key(pins, self.index, self.harness_source))

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "CONDA_PREFIX")}
        env["UV_PYTHON_DOWNLOADS"] = "never"
        env.setdefault("UV_HTTP_TIMEOUT", "300")
        if self.uv_cache_dir:
            env["UV_CACHE_DIR"] = self.uv_cache_dir
        return env

    def _run(self, cmd: list[str], log, cwd: Path) -> None:
        log.write(f"$ {shlex.join(cmd)}\n")
        log.flush()
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=self._env(), timeout=self.timeout)
        log.write(proc.stdout + proc.stderr + f"[exit {proc.returncode}]\n")
        log.flush()
        if proc.returncode != 0:
            raise _BuildFailed(first_meaningful_line(proc.stderr or proc.stdout))

    def _uv_install(self, env: Path, args: list[str], pins: Pins, overrides: Path | None) -> list[str]:
        cmd = [self.uv, "pip", "install", "--python", str(env / "bin" / "python"), *self.index.uv_args()]
        if overrides is not None:
            cmd += ["--overrides", str(overrides)]
        return cmd + args

    def source_fingerprint(self) -> str:
        with self._fp_lock:
            if self._source_fp is None:
                self._source_fp = harness_fingerprint(self.harness_source)
            return self._source_fp

    def ensure(self, pins: Pins) -> EnvResult:
        """The environment for ``pins``: reused when its marker is present, else (re)built. Never raises
        for a build failure: the result says why (first meaningful line of the tool's error)."""
        import fcntl

        path = self.path_for(pins)
        self.root.mkdir(parents=True, exist_ok=True)
        log_path = (self.log_dir or self.root) / f"{path.name}.build.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        with open(self.root / f"{path.name}.lock", "w") as lock, open(log_path, "a", encoding="utf-8") as log:
            fcntl.flock(lock, fcntl.LOCK_EX)  # two sweeps building the same env wait for each other
            try:
                cached = (path / _MARKER).is_file() and not self.rebuild
                if not cached:
                    self._build(path, pins, log)
                build_s = time.perf_counter() - start
                t_h = time.perf_counter()
                self._install_harness(path, pins, log)
                return EnvResult(path, True, build_s=build_s, cached=cached, harness_s=time.perf_counter() - t_h)
            except _BuildFailed as exc:
                return EnvResult(path, False, reason=str(exc), build_s=time.perf_counter() - start)
            except subprocess.TimeoutExpired:
                return EnvResult(path, False, reason=f"build timed out after {self.timeout:.0f}s",
                                 build_s=time.perf_counter() - start)
            except OSError as exc:
                return EnvResult(path, False, reason=f"{type(exc).__name__}: {exc}",
                                 build_s=time.perf_counter() - start)

    def _build(self, path: Path, pins: Pins, log) -> None:
        if path.exists():
            shutil.rmtree(path)  # incomplete (no marker) or --rebuild
        cwd = self.root
        log.write(f"# build {path.name} ({pins.framework} {pins.version}, python {pins.python})\n")
        self._run([self.uv, "venv", "--no-project", "--python", pins.python, str(path)], log, cwd)
        overrides = None
        if pins.overrides:
            overrides = path / "ft-sweep-overrides.txt"
            overrides.write_text("\n".join(pins.overrides) + "\n", encoding="utf-8")
        files: list[str] = []
        for rel in pins.requirements_files:
            f = self.harness_source / rel
            if not f.is_file():
                raise _BuildFailed(f"requirements file {rel} not found under {self.harness_source}")
            files += ["-r", str(f)]
        framework = f"{pins.distribution}=={pins.version}"
        deps = [*pins.requirements, *files]
        if not pins.harness_no_deps:
            deps.append(str(self.harness_source))
        if pins.no_deps:
            self._run(self._uv_install(path, ["--no-deps", framework], pins, overrides), log, cwd)
            if deps:
                self._run(self._uv_install(path, deps, pins, overrides), log, cwd)
        else:
            self._run(self._uv_install(path, [framework, *deps], pins, overrides), log, cwd)
        if pins.harness_no_deps:
            self._run(self._uv_install(path, ["--no-deps", str(self.harness_source)], pins, None), log, cwd)
        (path / _HARNESS_STAMP).write_text(self.source_fingerprint(), encoding="utf-8")
        marker = {"framework": pins.framework, "version": pins.version, "pins": dataclasses.asdict(pins),
                  "built": time.strftime("%Y-%m-%dT%H:%M:%S")}
        (path / _MARKER).write_text(json.dumps(marker, indent=2, default=str), encoding="utf-8")  # written last

    def _install_harness(self, path: Path, pins: Pins, log) -> None:
        """Reinstall ft-harness (``--no-deps``) when its source changed since the env got it."""
        stamp = path / _HARNESS_STAMP
        fp = self.source_fingerprint()
        if stamp.is_file() and stamp.read_text(encoding="utf-8").strip() == fp:
            return
        self._run(self._uv_install(path, ["--no-deps", "--reinstall-package", "ft-harness",
                                          str(self.harness_source)], pins, None), log, self.root)
        stamp.write_text(fp, encoding="utf-8")


class _BuildFailed(Exception):
    pass


def stale_envs(root: Path, framework: str, index: IndexSettings, harness_source: Path,
               python: str | None = None) -> list[Path]:
    """Environments of ``framework`` under ``root`` that the current pins would not use any more (their
    hash differs from what :func:`env_key` gives today, or no pins cover their version)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        return []
    out = []
    prefix = f"{framework}-"
    for path in sorted(root.iterdir()):
        if not path.is_dir() or not path.name.startswith(prefix):
            continue
        version, _, digest = path.name[len(prefix):].rpartition("-")
        try:
            pins = select_pins(framework, version, python=python)
        except SweepError:
            out.append(path)
            continue
        if env_name(pins, env_key(pins, index, harness_source)) != path.name:
            out.append(path)
    return out


# ------------------------------------------------------------------------------------------------ runs
def k_expression(patterns: Sequence[str]) -> str | None:
    """``--scenario`` patterns -> one pytest ``-k`` expression (each pattern is itself a -k expression)."""
    pats = [p.strip() for p in patterns if p and p.strip()]
    if not pats:
        return None
    return pats[0] if len(pats) == 1 else " or ".join(f"({p})" for p in pats)


def scenario_command(env: Path, adapter_spec: str, out_json: Path, k_expr: str | None = None,
                     pytest_args: Sequence[str] = ()) -> list[str]:
    """The one command that runs the scenarios inside a version's environment (kept in one place: a
    ``pytest --ft-report FILE`` form may replace it)."""
    cmd = [str(Path(env) / "bin" / "ft-harness"), "report", "--adapter", adapter_spec, "--format", "json",
           "-o", str(out_json)]
    extra = list(pytest_args)
    if k_expr:
        extra = ["-k", k_expr, *extra]
    if extra:
        cmd += ["--", *extra]
    return cmd


@dataclass
class VersionResult:
    version: str
    pins: Pins
    adapter_spec: str
    report: Path | None = None  # the per-version ft-harness-report/1 JSON
    error: str | None = None  # "env: ..." / "run: ..." when there is no report
    env: EnvResult | None = None
    run_s: float = 0.0
    exit_code: int | None = None

    def timings(self) -> dict[str, Any]:
        return {"env_s": round(self.env.build_s, 2) if self.env else None,
                "env_cached": self.env.cached if self.env else None,
                "harness_install_s": round(self.env.harness_s, 2) if self.env else None,
                "run_s": round(self.run_s, 2), "exit_code": self.exit_code, "error": self.error}


def _run_env(env_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME",
                                                             "FT_HARNESS_ADAPTER", "PYTEST_ADDOPTS")}
    env["PATH"] = f"{env_dir / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(env_dir)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def run_version(builder: EnvBuilder, pins: Pins, out: Path, *, options: Mapping[str, str] | None = None,
                k_expr: str | None = None, pytest_args: Sequence[str] = (), timeout: float = 7200,
                log: Callable[[str], None] = print) -> VersionResult:
    """Build/reuse the env for ``pins`` and run the scenarios in it; never raises for env or run failures."""
    spec = pins.adapter_spec(options)
    res = VersionResult(pins.version, pins, spec)
    tag = f"[{pins.framework} {pins.version}]"
    res.env = env = builder.ensure(pins)
    if not env.ok:
        res.error = f"env: {env.reason}"
        log(f"{tag} environment failed after {env.build_s:.1f}s: {env.reason}")
        out.mkdir(parents=True, exist_ok=True)
        _write_error_report(out / f"{pins.framework}-{pins.version}.json", res)
        return res
    log(f"{tag} environment {'reused' if env.cached else 'built'} in {env.build_s:.1f}s: {env.path}")
    out_json = out / f"{pins.framework}-{pins.version}.json"
    out_json.unlink(missing_ok=True)
    work = out / ".work" / f"{pins.framework}-{pins.version}"
    work.mkdir(parents=True, exist_ok=True)  # neutral cwd: no repo conftest/pyproject, no ./scenarios shadowing
    cmd = scenario_command(env.path, spec, out_json.resolve(), k_expr, pytest_args)
    run_log = out / "logs" / f"{pins.framework}-{pins.version}.run.log"
    run_log.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(run_log, "w", encoding="utf-8") as fh:
        fh.write(f"$ {shlex.join(cmd)}\n")
        fh.flush()
        res.exit_code = _run_group(cmd, fh, work, _run_env(env.path), timeout)
    res.run_s = time.perf_counter() - start
    if out_json.is_file() and (res.exit_code in (0, 1) or _has_tests(out_json)):
        res.report = out_json
        log(f"{tag} scenarios ran in {res.run_s:.1f}s (exit {res.exit_code}) -> {out_json}")
    else:  # no report, or pytest stopped before any test (an import error in the framework, INTERNALERROR)
        tail = run_log.read_text(encoding="utf-8", errors="replace")[-20000:]
        why = (f"timed out after {timeout:.0f}s" if res.exit_code == -1
               else f"exit {res.exit_code}: {run_failure_line(tail)}")
        res.error = f"run: {why}"
        log(f"{tag} scenario run failed ({why}); log: {run_log}")
        _write_error_report(out_json, res)
        res.report = None
    return res


def _run_group(cmd: list[str], out, cwd: Path, env: Mapping[str, str], timeout: float) -> int:
    """Run ``cmd`` in its own process group; on timeout or interruption the whole group (the forked
    training children included) is killed. -1 on timeout."""
    import signal

    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=cwd, env=dict(env),
                            start_new_session=True)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return -1
    finally:
        if proc.poll() is None:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, sig)
                try:
                    proc.wait(timeout=10)
                    break
                except subprocess.TimeoutExpired:
                    continue


_PSEUDO_TESTS = ("<session>", "<environment>")


def _has_tests(path: Path) -> bool:
    """Whether the report holds a scenario outcome (a ``<session>`` row alone, pytest's INTERNALERROR at
    collection, is a run that stopped before any test: it gets the version's own ``run:`` cell)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return any(t.get("scenario", t.get("nodeid")) not in _PSEUDO_TESTS
                   for a in data.get("adapters", []) for t in a.get("tests") or [])
    except (OSError, ValueError, AttributeError):
        return False


_EXC_LINE = re.compile(r"^([A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)|AssertionError)\b.*")


def run_failure_line(text: str, limit: int = 200) -> str:
    """Why a scenario run stopped: the last ``SomethingError: ...`` line of its output (pytest's
    ``INTERNALERROR>`` and ``E`` prefixes removed), else :func:`first_meaningful_line`."""
    lines = [re.sub(r"^(INTERNALERROR>|E)\s+", "", _ANSI.sub("", ln).strip()) for ln in str(text).splitlines()]
    hits = [ln for ln in lines if _EXC_LINE.match(ln)]
    if hits:
        pick = re.sub(r"\s+", " ", hits[-1])
        return pick if len(pick) <= limit else pick[: limit - 3] + "..."
    return first_meaningful_line(text, limit)


def _error_run(res: VersionResult):
    from .report import AdapterRun, TestOutcome

    return AdapterRun(target=res.adapter_spec, name=f"{res.pins.adapter} {res.version}",
                      options=dict(res.pins.adapter_options), exit_code=3, duration_s=0.0,
                      tests=[TestOutcome("<environment>", "<environment>", "error", res.error or "", 0.0, None)],
                      versions={res.pins.distribution: res.version})


def _write_error_report(path: Path, res: VersionResult) -> None:
    """A per-version report for a version without one (env or run failure), so that CI's
    ``report --merge`` of the per-job files still shows the cell."""
    from .report import render

    path.write_text(render([_error_run(res)], "json"), encoding="utf-8")


def merge_runs(runs: Sequence[Any]) -> list[Any]:
    """Per-version runs -> the runs of the merged matrix: a version without results (its one test is
    ``<environment>``, outcome ``error``, reason ``env: ...``/``run: ...``) gets that cell in every
    scenario row the other versions have (keeping the row's seed)."""
    from .report import TestOutcome

    seeds: dict[str, str | None] = {}
    for run in runs:
        for t in run.tests:
            if t.scenario != "<environment>":
                seeds.setdefault(t.scenario, t.seed)
    out = []
    for run in runs:
        if seeds and len(run.tests) == 1 and run.tests[0].scenario == "<environment>":
            t = run.tests[0]
            run = dataclasses.replace(run, tests=[TestOutcome(s, s, "error", t.reason, 0.0, seed)
                                                  for s, seed in seeds.items()])
        out.append(run)
    return out


def _result_runs(results: Sequence[VersionResult]) -> list[Any]:
    from .report import load_runs

    runs = []
    for res in results:
        if res.report is not None:
            try:
                runs += load_runs(res.report)
                continue
            except (OSError, ValueError, KeyError, TypeError) as exc:
                res.error = f"run: unreadable report {res.report}: {exc}"
        runs.append(_error_run(res))
    return merge_runs(runs)


def write_matrix(results: Sequence[VersionResult], out: Path, framework: str, *, extra: Mapping[str, Any]) -> dict:
    """``<out>/<framework>-sweep.{json,md,html}``; returns the merged JSON dict."""
    from .report import render

    runs = _result_runs(results)
    data = json.loads(render(runs, "json"))
    data["sweep"] = dict(extra)
    (out / f"{framework}-sweep.json").write_text(json.dumps(data, indent=2, sort_keys=True), encoding="utf-8")
    md = matrix_md(data) + "\n" + _timings_md(results, extra) + "\n"
    (out / f"{framework}-sweep.md").write_text(md, encoding="utf-8")
    try:
        from .html_report import render_html

        (out / f"{framework}-sweep.html").write_text(render_html(data), encoding="utf-8")
    except ImportError:  # pragma: no cover - html_report is part of the package
        pass
    return data


def _timings_md(results: Sequence[VersionResult], extra: Mapping[str, Any]) -> str:
    lines = ["| version | environment | env time | scenario run | note |", "|---|---|---|---|---|"]
    for r in results:
        env = r.env
        if env is None:
            lines.append(f"| {r.version} | — | — | — | {r.error or ''} |")
            continue
        how = ("reused" if env.cached else "built") if env.ok else "FAILED"
        note = (r.error or "").replace("|", "/")
        lines.append(f"| {r.version} | {how} | {env.build_s:.1f}s | {r.run_s:.1f}s | {note} |")
    if "wall_s" in extra:
        lines.append(f"\nwhole sweep: {extra['wall_s']:.1f}s wall ({extra.get('jobs', 1)} job(s))")
    return "\n".join(lines)


def matrix_md(data: Mapping[str, Any]) -> str:
    """The merged matrix as markdown: rows scenarios, one column per version (framework version in
    the header), outcome words; env/run failures keep their reason."""
    from .html_report import cell_class, columns

    cols = columns(data)
    heads = []
    for c in cols:
        fw = c["framework"]
        opts = ",".join(f"{k}={v}" for k, v in (c["options"] or {}).items())
        heads.append((fw[1] if fw else c["target"]) + (f" [{opts}]" if opts else ""))
    lines = ["| scenario | seed | " + " | ".join(heads) + " |", "|---|---|" + "---|" * len(cols)]
    for s in data.get("scenarios", []):
        cells = []
        for c in cols:
            cell = s.get("results", {}).get(c["key"])
            _, word = cell_class(cell)
            reason = str((cell or {}).get("reason", ""))
            cells.append(reason if reason.startswith(("env:", "run:")) else word)
        row = [s["id"], s.get("seed") or ""] + cells
        lines.append("| " + " | ".join(x.replace("|", "\\|") for x in row) + " |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- bisect
@dataclass(frozen=True)
class Probe:
    """One probed release: ``verdict`` is ``pass`` / ``fail`` / ``skip`` (env error, scenario not run)."""

    version: str
    verdict: str
    detail: str = ""


@dataclass
class BisectResult:
    scenario: str
    releases: list[str]  # the ordered candidates from the older to the newer endpoint
    good: str
    bad: str
    probes: list[Probe]
    first: str  # first release with the newer endpoint's verdict
    last_before: str  # newest release known to have the older endpoint's verdict
    candidates: list[str]  # releases the flip may be at: [first] unless skipped ones sit before it
    kind: str  # "regression" (good is older) or "fix" (good is newer)

    @property
    def ambiguous(self) -> bool:
        return len(self.candidates) > 1

    def neighbours(self) -> tuple[str | None, str | None]:
        """(release before the first flipped one, release after it) in the ordered list."""
        i = self.releases.index(self.first)
        return (self.releases[i - 1] if i > 0 else None,
                self.releases[i + 1] if i + 1 < len(self.releases) else None)


def verdict_of(report: Mapping[str, Any] | None, scenario: str) -> tuple[str, str]:
    """(verdict, detail) of ``scenario`` in an ``ft-harness-report/1`` dict: ``pass`` (passed, or a
    known failure that now passes), ``fail`` (failed or strict xfail: the bug is there), ``skip``
    (skipped, not collected, no report, or ``error``: the test could not be set up, e.g. the release
    does not import beside its pins — untestable, like ``git bisect skip``). ``scenario`` matches a row id exactly or as a substring;
    several matching rows give the worst."""
    if report is None:
        return "skip", "no report"
    rows = [s for s in report.get("scenarios", []) if s["id"] == scenario] or \
           [s for s in report.get("scenarios", []) if scenario in s["id"]]
    cells = [(c["outcome"], c.get("reason", "")) for s in rows for c in s.get("results", {}).values()]
    if not cells:
        return "skip", f"scenario {scenario!r} not in the report"
    for outcome, reason in cells:
        if outcome == "error" and str(reason).startswith(("env:", "run:")):
            return "skip", reason
    order = {"error": 5, "failed": 4, "xfailed": 3, "xpassed": 1, "passed": 1, "skipped": 0}
    outcome, reason = max(cells, key=lambda c: order.get(c[0], 0))
    verdict = {"failed": "fail", "xfailed": "fail", "xpassed": "pass", "passed": "pass"}.get(outcome, "skip")
    return verdict, f"{outcome}" + (f": {reason}" if reason else "")


def _next_probe(lo: int, hi: int, skipped: set[int]) -> int:
    """The index to probe strictly between ``lo`` and ``hi``: the midpoint, or, when it was skipped,
    the first untested of mid+1, mid-1, mid+2, mid-2, mid+4, mid-4, ... (a block of k untestable
    releases costs O(log k) probes, not k), else the untested index nearest the midpoint."""
    mid = (lo + hi) // 2
    ok = lambda j: lo < j < hi and j not in skipped  # noqa: E731
    if ok(mid):
        return mid
    step = 1
    while step < hi - lo:
        for j in (mid + step, mid - step):
            if ok(j):
                return j
        step *= 2
    return min((j for j in range(lo + 1, hi) if j not in skipped), key=lambda j: (abs(j - mid), j))


def bisect_releases(releases: Sequence[str], good: str, bad: str, probe: Callable[[str], Probe | tuple]
                    ) -> BisectResult:
    """Binary search over ``releases`` (any order; sorted here) between ``good`` and ``bad`` for the
    first release where ``probe``'s verdict flips. ``good`` must ``pass`` and ``bad`` must ``fail``
    (else :class:`SweepError`). A ``skip`` verdict is skipped like ``git bisect skip``: releases at
    growing distances from the midpoint are probed instead (:func:`_next_probe`). ``probe`` is called
    O(log n) times (plus O(log k) for a block of k untestable releases)."""
    ordered = sorted(dict.fromkeys(releases), key=Version)
    for name, v in (("--good", good), ("--bad", bad)):
        if v not in ordered:
            raise SweepError(f"{name} {v} is not among the releases considered "
                             f"({ordered[0] if ordered else '?'} .. {ordered[-1] if ordered else '?'})")
    if Version(good) == Version(bad):
        raise SweepError(f"--good and --bad are the same release ({good}): nothing to bisect")
    i_good, i_bad = ordered.index(good), ordered.index(bad)
    lo_i, hi_i = sorted((i_good, i_bad))
    ordered = ordered[lo_i:hi_i + 1]
    probes: list[Probe] = []

    def ask(version: str) -> Probe:
        p = probe(version)
        p = p if isinstance(p, Probe) else Probe(version, *p)
        probes.append(p)
        return p

    pg = ask(good)
    pb = ask(bad)
    if pg.verdict == "skip" or pb.verdict == "skip":
        which = pg if pg.verdict == "skip" else pb
        raise SweepError(f"cannot bisect: {which.version} could not be tested ({which.detail})")
    if pg.verdict == pb.verdict:
        raise SweepError(f"--good {good} and --bad {bad} both {pg.verdict} ({pg.detail}): the verdict does not "
                         "flip between them")
    if pg.verdict != "pass":
        raise SweepError(f"--good {good} fails ({pg.detail}) and --bad {bad} passes: the labels are reversed "
                         f"(swap them: --good {bad} --bad {good})")
    kind = "regression" if Version(good) < Version(bad) else "fix"
    old_verdict = pg.verdict if kind == "regression" else pb.verdict
    lo, hi = 0, len(ordered) - 1  # lo has old_verdict, hi the other
    skipped: set[int] = set()
    while True:
        between = [i for i in range(lo + 1, hi) if i not in skipped]
        if not between:
            break
        i = _next_probe(lo, hi, skipped)
        p = ask(ordered[i])
        if p.verdict == "skip":
            skipped.add(i)
        elif p.verdict == old_verdict:
            lo = i
        else:
            hi = i
    candidates = [ordered[i] for i in range(lo + 1, hi + 1)]
    return BisectResult(scenario="", releases=list(ordered), good=good, bad=bad, probes=probes, first=ordered[hi],
                        last_before=ordered[lo], candidates=candidates, kind=kind)


def format_bisect(res: BisectResult, framework: str = "") -> str:
    fw = f"{framework} " if framework else ""
    new = "fail" if res.kind == "regression" else "pass"
    lines = [f"bisect {res.scenario or 'scenario'}: {fw}{res.releases[0]}..{res.releases[-1]} "
             f"({len(res.releases)} releases, --good {res.good}, --bad {res.bad}, {res.kind}); "
             f"{len(res.probes)} probed"]
    for p in res.probes:
        lines.append(f"  {p.version:>14}  {p.verdict:4}  {p.detail}")
    before, after = res.neighbours()
    what = "first bad release (regression)" if res.kind == "regression" else "first fixed release"
    verdicts = {p.version: p.verdict for p in res.probes}
    show = lambda v: "—" if v is None else f"{v} ({verdicts.get(v, 'not probed')})"  # noqa: E731
    if res.ambiguous:
        lines.append(f"{what}: one of {', '.join(res.candidates)} (the releases before {res.first} could not be "
                     f"tested); last {('good' if res.kind == 'regression' else 'bad')}: {res.last_before}")
    else:
        lines.append(f"{what}: {fw}{res.first} ({new})")
    lines.append(f"  before: {show(before)}   first: {show(res.first)}   after: {show(after)}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------- github matrix
def github_matrix(framework: str, versions: Sequence[str], *, python: str | None = None,
                  options: Mapping[str, str] | None = None, table: Mapping[str, Any] | None = None) -> dict:
    """GitHub Actions ``strategy.matrix`` for one job per version (``fromJSON`` of the printed line)."""
    include = []
    for v in versions:
        pins = select_pins(framework, v, python=python, table=table)
        include.append({"framework": pins.framework, "version": v, "python": pins.python,
                        "adapter": pins.adapter_spec(options)})
    return {"include": include}


# -------------------------------------------------------------------------------------------------- CLI
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
uv (venv + pip interface) from harness/sweep_pins.py and reused while complete; uv's wheel cache is
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
    sp.add_argument("framework", metavar="FRAMEWORK",
                    help="a framework of harness/sweep_pins.py: ms-swift (swift), llamafactory, transformers, "
                         "simpletuner")
    sp.add_argument("--versions", metavar="SPEC", default=None,
                    help="versions: '3.1.1,3.2.0', '3.0.0..3.3.0', 'latest' or a comma list of those")
    sp.add_argument("--scenario", action="append", default=[], metavar="PATTERN",
                    help="pytest -k expression selecting scenarios (repeatable: or-ed); default: all")
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
    sp.add_argument("--timeout", type=float, default=7200, metavar="S", help="per-version run limit (default 7200)")
    sp.add_argument("--show-pins", action="store_true", help="print each version's pins and env path, build nothing")
    sp.add_argument("--pytest-args", default="", metavar="'ARGS'",
                    help="extra pytest arguments for every version's run, one shell-quoted string "
                         "(e.g. --pytest-args '-m \"not ft_gpu\" -x')")
    sp.set_defaults(func=main)
    return sp


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
    return Path(__file__).resolve().parent.parent


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
    from .adapter import parse_adapter_options
    from .errors import AdapterLoadError

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
    name, entry = framework_table(args.framework)
    distribution = entry.get("distribution", name)
    index = _index_settings(args)
    if args.prune:
        source = Path(args.harness_source).resolve() if args.harness_source else _default_source()
        env_root = Path(args.env_dir or os.environ.get("FT_HARNESS_ENV_DIR") or "~/.cache/ft-harness/envs")
        for path in stale_envs(env_root, name, index, source, python=args.python):
            shutil.rmtree(path, ignore_errors=True)
            Path(f"{path}.lock").unlink(missing_ok=True)
            print(f"removed {path}")
        return 0
    if not bisecting and not args.versions:
        raise SweepError("--versions SPEC is required (e.g. 3.1.1,3.2.0 or 3.0.0..3.3.0 or latest)")
    endpoints = [args.good, args.bad] if bisecting else []
    versions = _versions(args, distribution, index, extra=endpoints)
    if bisecting:
        versions = sorted({*versions, *endpoints}, key=Version)
    pins_of = {v: select_pins(name, v, python=args.python) for v in versions}
    pytest_args = shlex.split(args.pytest_args or "")

    if args.emit_matrix == "github":
        print(json.dumps(github_matrix(name, versions, python=args.python, options=options), separators=(",", ":")))
        return 0
    source = Path(args.harness_source).resolve() if args.harness_source else _default_source()
    if not (source / "pyproject.toml").is_file():
        raise SweepError(f"--harness-source {source}: no pyproject.toml there")
    env_root = Path(args.env_dir or os.environ.get("FT_HARNESS_ENV_DIR") or "~/.cache/ft-harness/envs").expanduser()
    out = Path(args.out)
    if args.show_pins:
        for v in versions:
            p = pins_of[v]
            path = env_root / env_name(p, env_key(p, index, source))
            print(f"{name} {v}: python {p.python}, {'--no-deps, ' if p.no_deps else ''}adapter {p.adapter_spec(options)}"
                  f"\n  requirements: {' '.join(p.requirements) or '-'}  files: {' '.join(p.requirements_files) or '-'}"
                  f"  overrides: {' '.join(p.overrides) or '-'}\n  harness {'--no-deps' if p.harness_no_deps else 'with deps'}"
                  f"  env: {path}{' (complete)' if (path / _MARKER).is_file() else ''}\n  note: {p.note}")
        return 0
    out.mkdir(parents=True, exist_ok=True)
    builder = EnvBuilder(env_root, source, index, uv=args.uv, uv_cache_dir=args.uv_cache_dir, log_dir=out / "logs",
                         rebuild=args.rebuild)
    lock = threading.Lock()

    def log(msg: str) -> None:
        with lock:
            print(msg, file=sys.stderr, flush=True)

    if bisecting:
        return _bisect(args, name, versions, pins_of, builder, out, options, pytest_args, log)

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
             "timings": {r.version: r.timings() for r in results}}
    data = write_matrix(results, out, name, extra=extra)
    print((out / f"{name}-sweep.md").read_text(encoding="utf-8"))
    log(f"ft-harness sweep: {len(versions)} version(s) in {wall:.1f}s; wrote {out / (name + '-sweep.md')}, "
        f".json, .html")
    bad = any(c["outcome"] in ("failed", "error", "xpassed") for s in data["scenarios"] for c in s["results"].values())
    return 1 if bad else 0


def _bisect(args, name, versions, pins_of, builder, out, options, pytest_args, log) -> int:
    scenario = args.bisect
    k_expr = scenario.split("::")[-1] if "::" in scenario else scenario
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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
