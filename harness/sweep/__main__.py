"""``python -m harness.sweep ...``: the ``ft-harness sweep`` command."""

import sys

from .cli import main

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
