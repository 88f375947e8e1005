"""Root conftest for ft-harness's own test runs (the plugin itself is loaded via its entry point).

Registers the hypothesis profiles ``ft-default`` (500 examples, random), ``ft-ci`` (200, derandomized) and
``ft-thorough`` (5000), and loads ``ft-ci`` unless ``--hypothesis-profile`` is given: the README's test command is
deterministic (the same examples in every run) and its properties take 0.4 x the time (the three argument-resolution
properties: 13.2 / 11.8 / 11.7 s with 500 random examples on a slow 2-core machine). Explore with
``--hypothesis-profile ft-default`` or ``ft-thorough``.

Under pytest-xdist each worker computes with one thread (torch's intra-op pool, and ``OMP_NUM_THREADS=1`` for the
processes it starts): ``-n 2`` on 2 cores is then 2 threads, not 4 whose OpenMP pools spin against each other.
"""

import os

from hypothesis import settings

from harness.strategies import register_profiles

pytest_plugins = ["pytester"]

register_profiles()


def pytest_configure(config):
    if not config.getoption("hypothesis_profile", None):
        settings.load_profile("ft-ci")
    if os.environ.get("PYTEST_XDIST_WORKER"):  # one core per worker
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        import torch

        torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    """The detection matrix's reference shards first, its mutants last: under ``pytest -n 2`` xdist hands the first
    tests out one per worker, so each worker traces one shard of the shared reference run (about 60 s each) at the
    start, and neither waits on the other's when the mutants, which read both, come at the end."""
    detection = "tests/test_detection.py::"
    reference = [i for i in items if i.nodeid.startswith(detection + "test_detection_reference")]
    mutants = [i for i in items if i.nodeid.startswith(detection + "test_detection[")]
    chosen = {id(i) for i in reference + mutants}
    items[:] = reference + [i for i in items if id(i) not in chosen] + mutants
