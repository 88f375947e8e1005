"""ft-harness adapter for myfw (the README's worked example of an out-of-tree adapter package)."""
