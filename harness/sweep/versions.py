"""Which releases a ``--versions`` spec names: parsing, filtering (pre-/post-releases), ranges and ``latest``
expanded from the package index's release list, and fetching that list."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterable, Sequence

from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from .errors import SweepError
from .failures import first_meaningful_line
from .index import IndexSettings

__all__ = ["filter_releases", "needs_release_list", "expand_versions", "fetch_releases"]


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


def _range(tok: str, pool: Sequence[str], pre: bool) -> list[str]:
    """The releases of ``pool`` inside the range token ``A..B`` (either end may be left out)."""
    lo_text, _, hi_text = tok.partition("..")
    lo = _version(lo_text.strip()) if lo_text.strip() else None
    hi = _version(hi_text.strip()) if hi_text.strip() else None
    if lo is not None and hi is not None and lo > hi:
        raise SweepError(f"range {tok!r} is empty: {lo} is newer than {hi} (write {hi}..{lo})")
    picked = [r for r in pool if (lo is None or Version(r) >= lo) and (hi is None or Version(r) <= hi)]
    if not picked:
        raise SweepError(f"range {tok!r} holds no release" + ("" if pre else " (pre-releases excluded)"))
    return picked


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
            for r in _range(tok, pool, pre):
                chosen.setdefault(Version(r), r)
        else:
            chosen.setdefault(_version(tok), tok)
    return [chosen[v] for v in sorted(chosen)]


_INDEX_JSON = "application/vnd.pypi.simple.v1+json"


def _json_api_versions(base: str, distribution: str, timeout: float) -> list[str]:
    """The versions the index's JSON simple API (PEP 691) lists, leaving out those whose files are all yanked."""
    import urllib.request

    url = f"{base}/{canonicalize_name(distribution)}/"
    req = urllib.request.Request(url, headers={"Accept": _INDEX_JSON})
    with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - a package index
        data = json.loads(resp.read().decode("utf-8"))
    live: dict[str, bool] = {}
    for f in data.get("files", []):
        m = re.match(r"^[^-]+-([^-]+?)(?:-|\.tar\.gz$|\.zip$)", f.get("filename", ""))
        if m:
            live[m.group(1)] = live.get(m.group(1), False) or not f.get("yanked")
    return [v for v in data.get("versions", []) if live.get(v, True)]


def fetch_releases(distribution: str, index: IndexSettings | None = None, *, timeout: float = 60) -> list[str]:
    """Every version the package index lists for ``distribution`` (unfiltered, yanked-only ones left
    out). Asks the index's JSON simple API (PEP 691) first, then ``pip index versions`` (which reads
    pip's own configuration: the extra local indexes of this machine included)."""
    index = index or IndexSettings()
    errors = []
    base = (index.index_url or "https://pypi.org/simple").rstrip("/")
    if base.startswith(("http://", "https://")):
        try:
            versions = _json_api_versions(base, distribution, timeout)
            if versions:
                return versions
        except Exception as exc:  # noqa: BLE001 - fall back to pip
            errors.append(f"{base}/{canonicalize_name(distribution)}/: {exc}")
    cmd = [sys.executable, "-m", "pip", "index", "versions", "--pre", distribution]
    if index.index_url:
        cmd += ["--index-url", index.index_url]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    m = re.search(r"Available versions:\s*(.+)", proc.stdout)
    if proc.returncode == 0 and m:
        return [v.strip() for v in m.group(1).split(",") if v.strip()]
    errors.append(f"pip index versions: {first_meaningful_line(proc.stderr + proc.stdout)}")
    raise SweepError(f"cannot list the releases of {distribution}: " + "; ".join(errors))
