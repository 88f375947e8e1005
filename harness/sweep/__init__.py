"""``ft-harness sweep``: which releases of a framework have which bug.

For each release of a framework (an explicit list, a range ``A..B`` expanded from the package
index's release list, or ``latest``) build an isolated environment with ``uv`` (the framework at
that release plus its pins from :mod:`harness.sweep.pins`, then ft-harness), run the selected
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
:func:`first_meaningful_line`, :func:`merge_runs`, :func:`source_version`.

A cell need not be a release: ``--source PATH`` adds one built from a local source tree or sdist of the framework
(a main checkout, a PR branch; its version read from it, its environment keyed on the tree's contents), and
``--with NAME=PATH`` installs a library under the framework from a tree into every cell (transformers main under a
LLaMA-Factory release). No git host is needed: the tree is whatever is on disk. ``--min-versions`` adds a cell per
release with the framework's declared requirements at their floors (``<version>-min``).

The package, one module per piece of knowledge (each importable and testable alone):
:mod:`~harness.sweep.versions` (version specs, the index's release list), :mod:`~harness.sweep.index`
(pip's index settings passed on to uv, the uv executable), :mod:`~harness.sweep.pins` (the pins table,
data only), :mod:`~harness.sweep.envs` (pins selection, cache keys, building environments),
:mod:`~harness.sweep.runs` (one release's scenario run), :mod:`~harness.sweep.matrix` (the merged
matrix), :mod:`~harness.sweep.bisect`, :mod:`~harness.sweep.github` (the CI matrix),
:mod:`~harness.sweep.failures` (the one line saying why a tool or run failed),
:mod:`~harness.sweep.errors` and :mod:`~harness.sweep.cli`. This module is the face: every name below
is importable as ``from harness.sweep import X``.
"""

from __future__ import annotations

from .bisect import BisectResult, Probe, bisect_releases, format_bisect, verdict_of
from .cli import EPILOG, add_parser, main  # noqa: F401 - EPILOG: public, outside __all__
from .envs import (EnvBuilder, EnvResult, Pins, env_key, env_name, framework_table,  # noqa: F401
                   declared_requirements, harness_fingerprint, select_pins, source_version, stale_envs,
                   tree_fingerprint)
from .errors import SweepError
from .failures import first_meaningful_line, run_failure_line
from .github import github_matrix
from .index import IndexSettings, find_uv  # noqa: F401 - find_uv: public, outside __all__
from .matrix import matrix_md, merge_runs, write_matrix  # noqa: F401 - write_matrix: public, outside __all__
from .runs import VersionResult, k_expression, run_version, scenario_command
from .versions import expand_versions, fetch_releases, filter_releases, needs_release_list

__all__ = ["SweepError", "Pins", "IndexSettings", "EnvResult", "VersionResult", "BisectResult", "Probe",
           "filter_releases", "expand_versions", "needs_release_list", "fetch_releases", "framework_table",
           "select_pins", "source_version", "tree_fingerprint", "declared_requirements", "env_key", "env_name", "stale_envs", "EnvBuilder", "scenario_command", "k_expression",
           "run_version", "merge_runs", "verdict_of", "bisect_releases", "format_bisect", "github_matrix",
           "first_meaningful_line", "run_failure_line", "matrix_md", "add_parser", "main"]

