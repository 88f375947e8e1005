"""ft-harness: regression scenarios for LLM fine-tuning frameworks.

The contract lives in :mod:`harness.adapter`, the correct implementation in :mod:`harness.reference`,
the on-disk checks in :mod:`harness.oracles`, known-bad adapters in :mod:`harness.mutants`.
Heavy libraries (torch, transformers, peft, trl) are imported only when a run starts.
"""

__version__ = "0.1.0"
