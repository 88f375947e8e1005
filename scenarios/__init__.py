"""ft-harness scenarios: one module per documented failure, run against the selected adapter.

Run them against any adapter with ``pytest --pyargs scenarios --ft-adapter module:Class``.
"""
