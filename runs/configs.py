"""Small helpers every package's frozen configs and files use (a leaf: imports nothing of ours).

- :func:`known_fields` is the one unknown-key check behind every ``from_dict``;
- :func:`atomic_write_text` is the one write-then-rename (readers never see half a file).
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

FILE_MODE = 0o644  # exports are read by other tools and users; mkstemp's 0600 would hide them


def known_fields(cls: type, d: Any, what: str) -> dict[str, Any]:
    """``d`` as a plain dict after checking it names only fields of the dataclass ``cls``.

    Raises ValueError naming the unknown keys and the expected ones, e.g.
    ``unknown serving config key(s) foo; expected some of max_batch_size, ...``.
    """
    if not isinstance(d, Mapping):
        raise ValueError(f"a {what} must be a JSON object (a mapping); got {type(d).__name__}")
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(d) - set(known))
    if unknown:
        raise ValueError(f"unknown {what} key(s) {', '.join(map(str, unknown))}; expected some of {', '.join(known)}")
    return dict(d)


def atomic_write_text(path: str | os.PathLike[str], text: str | bytes, mode: int = FILE_MODE) -> Path:
    """Write ``text`` (or bytes) to ``path`` through a temporary file and a rename; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb" if isinstance(text, bytes) else "w") as fh:
            fh.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
