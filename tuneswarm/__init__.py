"""TuneSwarm: train a model, serve it, swarm it with Locust, pick the configuration to ship.

This package holds only the ``tuneswarm`` command line (``tuneswarm.cli``) and the
version; the work lives in ``agent``, ``loadtest``, ``tuning``, ``runs`` and ``dashboard``.
"""

from __future__ import annotations

# The one place the version is written: pyproject.toml reads it from here.
__version__ = "0.1.0"
