"""The sweep's one error: a usage error the command line reports with exit 2."""

from __future__ import annotations

__all__ = ["SweepError"]


class SweepError(Exception):
    """A usage error of the sweep (bad version spec, unknown framework, bisect endpoints that do not flip)."""
