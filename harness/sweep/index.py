"""Where packages come from and which uv installs them: pip's configuration passed on to uv (which does not
read pip.conf), and the uv executable."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import SweepError

__all__ = ["IndexSettings", "find_uv"]


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
