"""``python -m tuneswarm``: the same as the ``tuneswarm`` console script."""

from __future__ import annotations

import sys

from tuneswarm.cli import main

if __name__ == "__main__":
    sys.exit(main())
