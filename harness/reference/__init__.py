"""The reference implementation: correct behaviour for every scenario, behind the adapter contract."""

from .adapter import ArgsOverrideWarning, ReferenceAdapter

__all__ = ["ReferenceAdapter", "ArgsOverrideWarning"]
