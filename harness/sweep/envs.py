"""One isolated uv environment per (framework, release): which pins it gets (from :mod:`harness.sweep.pins`),
the hash that names it in the cache, building or reusing it, and finding the cached ones the pins no longer use."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

from .errors import SweepError
from .failures import first_meaningful_line
from .index import IndexSettings, _file_digest, find_uv
from .versions import _version

__all__ = ["Pins", "framework_table", "select_pins", "env_key", "env_name", "harness_fingerprint", "tree_fingerprint",
           "source_version", "declared_requirements", "EnvResult",
           "EnvBuilder", "stale_envs"]


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
    #: a local source tree or sdist of the framework, installed instead of ``distribution==version`` (``--source``)
    source: str = ""
    #: (name, path) of each library installed from a local source tree or sdist over what resolved (``--with``)
    with_sources: tuple[tuple[str, str], ...] = ()
    #: resolve the framework's own requirements to the lowest versions they allow (``--min-versions``)
    min_versions: bool = False

    @property
    def cell(self) -> str:
        """The cell's name in file names, logs and the sweep's timings: the version, marked when the cell is not the
        plain release (``5.25.0.dev0-src``, ``0.9.5-min``, ``0.9.5-with-transformers``)."""
        name = self.version + ("-src" if self.source else "") + ("-min" if self.min_versions else "")
        if self.with_sources:
            name += "-with-" + "-".join(lib for lib, _ in self.with_sources)
        return name

    def adapter_spec(self, options: Mapping[str, str] | None = None) -> str:
        """``swift`` or ``swift[load_args=true,...]``: the pins' default options, then ``options``."""
        merged = {**dict(self.adapter_options), **dict(options or {})}
        if not merged:
            return self.adapter
        return f"{self.adapter}[{','.join(f'{k}={v}' for k, v in merged.items())}]"


def framework_table(framework: str, table: Mapping[str, Any] | None = None) -> tuple[str, Mapping[str, Any]]:
    """(canonical name, its table entry) for a framework name or alias (case-insensitive)."""
    from .pins import PINS

    table = PINS if table is None else table
    want = canonicalize_name(framework)
    for name, entry in table.items():
        names = [name, entry.get("distribution", name), *entry.get("aliases", ())]
        if want in {canonicalize_name(n) for n in names}:
            return name, entry
    raise SweepError(f"no pins for framework {framework!r}; known: {', '.join(sorted(table))} "
                     "(add it to harness/sweep/pins.py)")


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
    from . import pins as pin_table

    defaults = pin_table.DEFAULTS if defaults is None else defaults
    name, entry = framework_table(framework, table)
    v = _version(version)
    for rng in entry.get("ranges", ()):
        if SpecifierSet(rng["versions"]).contains(v, prereleases=True):
            return Pins(
                framework=name, distribution=entry.get("distribution", name), version=version,
                adapter=entry["adapter"], python=python or rng.get("python") or defaults.get("python", "3.11"),
                no_deps=bool(rng.get("no_deps", False)),
                requirements=_merge_requirements(defaults.get("requirements", ()),
                                                 [r.replace("{version}", version) for r in rng.get("requirements", ())]),
                requirements_files=tuple(rng.get("requirements_files", ())),
                overrides=tuple(rng.get("overrides", ())), harness_no_deps=bool(rng.get("harness_no_deps", False)),
                adapter_options=dict(rng.get("adapter_options", {})), note=rng.get("note", ""))
    ranges = ", ".join(r["versions"] for r in entry.get("ranges", ())) or "none"
    raise SweepError(f"{name} {version}: no pins cover this version (ranges: {ranges}); add an entry to "
                     "harness/sweep/pins.py")


# ----------------------------------------------------------------------------------------- cache names
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
    if pins.min_versions:
        material["min_versions"] = True
    if pins.source or pins.with_sources:  # (absent for release cells: their keys are unchanged)
        material["source"] = [pins.source, tree_fingerprint(Path(pins.source))] if pins.source else None
        material["with_sources"] = [[lib, where, tree_fingerprint(Path(where))] for lib, where in pins.with_sources]
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:16]


def env_name(pins: Pins, key: str) -> str:
    return f"{pins.framework}-{pins.cell}-{key[:12]}"


_SKIP_PARTS = {".git", "__pycache__", ".tox", ".venv", "build", "dist", ".eggs"}


def tree_fingerprint(path: Path) -> str:
    """What a source cell's environment is keyed on: an sdist's bytes, or a tree's file names, sizes and
    modification times (``.git``, caches and build outputs aside), so an edited tree rebuilds its env."""
    path = Path(path)
    h = hashlib.sha256()
    if path.is_file():
        h.update(path.read_bytes())
    elif path.is_dir():
        for p in sorted(path.rglob("*")):
            rel = p.relative_to(path)
            if p.is_file() and not (_SKIP_PARTS & set(rel.parts)) and p.suffix not in (".pyc", ".pyo"):
                st = p.stat()
                h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    else:
        raise SweepError(f"source {path}: no such file or directory")
    return h.hexdigest()[:16]


def source_version(path: Path) -> str:
    """The version a framework's source tree or sdist declares: an sdist's or wheel's file name
    (``transformers-5.25.0.dev0.tar.gz``), else ``pyproject.toml``'s ``[project] version``, else ``setup.py``'s
    ``version=``, else a package's ``__version__``; a :class:`SweepError` when none says."""
    path = Path(path)
    if path.is_file():
        m = re.match(r"^[A-Za-z0-9_.]+?-(\d[^-]*?)(?:\.tar\.gz|\.zip|-py\d.*\.whl)$", path.name)
        if m:
            return m.group(1)
        raise SweepError(f"source {path}: cannot read a version from the file name (NAME-VERSION.tar.gz)")
    pyproject = path / "pyproject.toml"
    if pyproject.is_file():
        m = re.search(r"""(?ms)^\[project\][^\[]*?^version\s*=\s*["']([^"']+)["']""",
                      pyproject.read_text(encoding="utf-8"))
        if m:
            return m.group(1)
    pattern = re.compile(r"""(?m)^\s*(?:__version__\s*=|version\s*=)\s*["']([0-9][^"']*)["']""")
    candidates = [path / "setup.py", *sorted(path.glob("src/*/__init__.py")), *sorted(path.glob("*/__init__.py"))]
    for f in candidates:
        if f.is_file():
            m = pattern.search(f.read_text(encoding="utf-8", errors="replace"))
            if m:
                return m.group(1)
    raise SweepError(f"source {path}: no version in pyproject.toml, setup.py or a package's __version__")


def declared_requirements(env: Path, distribution: str) -> list[str]:
    """The requirements ``distribution`` declares (``Requires-Dist`` of its installed metadata in ``env``) that apply
    without extras on the env's Python, for a ``--min-versions`` cell: passed to uv as direct requirements, so that
    ``--resolution lowest-direct`` takes each at the lowest version the framework allows (within the other pins and
    ft-harness's own floors)."""
    from email.parser import Parser

    from packaging.requirements import InvalidRequirement, Requirement

    want = canonicalize_name(distribution)
    found = [m for m in Path(env).glob("lib/python*/site-packages/*.dist-info/METADATA")
             if canonicalize_name(m.parent.name[: -len(".dist-info")].rsplit("-", 1)[0]) == want]
    if not found:
        raise _BuildFailed(f"--min-versions: no installed metadata of {distribution} in {env}")
    meta = found[0]
    python = meta.parents[2].name.removeprefix("python")  # lib/python3.12/site-packages/...
    marker_env = {"extra": "", "python_version": python, "python_full_version": f"{python}.0"}
    out = []
    for line in Parser().parsestr(meta.read_text(encoding="utf-8")).get_all("Requires-Dist") or []:
        try:
            req = Requirement(line)
        except InvalidRequirement:
            continue
        if req.marker is None or req.marker.evaluate(marker_env):
            req.marker = None
            out.append(str(req))
    return out


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
        framework = pins.source or f"{pins.distribution}=={pins.version}"
        deps = [*pins.requirements, *files]
        if not pins.harness_no_deps:
            deps.append(str(self.harness_source))
        if pins.min_versions and pins.no_deps:
            raise _BuildFailed(f"--min-versions: the pins install {pins.distribution} {pins.version} with --no-deps "
                               "(its own metadata does not resolve), so there are no declared floors to take")
        if pins.min_versions:  # the framework first, alone, to read what it declares; then those at their floors
            self._run(self._uv_install(path, ["--no-deps", framework], pins, overrides), log, cwd)
            declared = declared_requirements(path, pins.distribution)
            log.write(f"# --min-versions: {pins.distribution} declares {' '.join(declared) or 'nothing'}\n")
            self._run(self._uv_install(path, ["--resolution", "lowest-direct", framework, *declared, *deps], pins,
                                       overrides), log, cwd)
        elif pins.no_deps:
            self._run(self._uv_install(path, ["--no-deps", framework], pins, overrides), log, cwd)
            if deps:
                self._run(self._uv_install(path, deps, pins, overrides), log, cwd)
        else:
            self._run(self._uv_install(path, [framework, *deps], pins, overrides), log, cwd)
        if pins.harness_no_deps:
            self._run(self._uv_install(path, ["--no-deps", str(self.harness_source)], pins, None), log, cwd)
        if pins.with_sources:  # over whatever resolved, as a user tests a library's main under a released framework
            self._run(self._uv_install(path, ["--no-deps", "--reinstall",
                                              *[where for _, where in pins.with_sources]], pins, None), log, cwd)
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
