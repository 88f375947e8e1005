"""The release: the wheel that ``pip install ft-harness`` gets holds every module the scenarios and the plugin need,
registers the plugin and the adapters, and takes its version from the one source (``harness.__version__``).

Built with ``pip wheel --no-deps`` (the same PEP 517 build ``python -m build`` runs) into a temporary directory; the
checks read the archive, so nothing is installed.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import harness

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(ROOT)],
                           capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, f"pip wheel failed:\n{build.stdout[-2000:]}\n{build.stderr[-2000:]}"
    (found,) = out.glob("ft_harness-*.whl")
    return found


def test_wheel_holds_every_module(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    sources = {p.relative_to(ROOT).as_posix() for d in ("harness", "scenarios") for p in (ROOT / d).rglob("*.py")}
    missing = sorted(sources - names)
    assert not missing, f"modules missing from {wheel.name}: {missing}"
    strays = sorted(n for n in names if n.split("/")[0] in ("tests", "benchmarks", "examples", "docs", ".ci"))
    assert not strays, f"{wheel.name} ships files that are not the package: {strays[:10]}"


def test_wheel_registers_the_plugin_and_adapters(wheel):
    archive = zipfile.ZipFile(wheel)
    (entry_points,) = [n for n in archive.namelist() if n.endswith(".dist-info/entry_points.txt")]
    text = archive.read(entry_points).decode()
    for line in ("ft_harness = harness.plugin", "ft-harness = harness.cli:main",
                 "reference = harness.reference:ReferenceAdapter"):
        assert line in text, f"{entry_points} lacks {line!r}:\n{text}"


def test_wheel_version_is_the_package_version(wheel):
    archive = zipfile.ZipFile(wheel)
    (metadata,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
    head = archive.read(metadata).decode().split("\n\n")[0]
    assert f"Version: {harness.__version__}" in head.splitlines(), head
    assert wheel.name.startswith(f"ft_harness-{harness.__version__}-"), wheel.name
