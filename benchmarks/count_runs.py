"""A pytest plugin for benchmarks/tiers.py (not part of ft-harness): counts the adapter's framework runs.

Loaded with ``-p count_runs`` (``benchmarks/`` on ``PYTHONPATH``) and ``FT_COUNT_RUNS=FILE``: every call of the
adapter's ``train``, ``merge`` and ``evaluate`` (the members that start the framework) appends its name to FILE,
from this process or any child forked from it (the crash scenarios train in a forked child), so a run's count is
the file's lines. The adapter's class is patched after the plugin has made the session's adapter.
"""

from __future__ import annotations

import functools
import os

import pytest

COUNTED = ("train", "merge", "evaluate")


@pytest.hookimpl(trylast=True)
def pytest_configure(config):
    path = os.environ.get("FT_COUNT_RUNS")
    if not path:  # (under xdist each worker counts: it inherits the variable)
        return
    from harness.plugin import get_adapter

    cls = type(get_adapter(config))
    for name in COUNTED:
        original = getattr(cls, name, None)
        if original is None or getattr(original, "_ft_counted", False):
            continue

        def counted(self, *args, _name=name, _original=original, **kwargs):
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, f"{_name}\n".encode())
            finally:
                os.close(fd)
            return _original(self, *args, **kwargs)

        counted._ft_counted = True
        setattr(cls, name, functools.wraps(original)(counted))
