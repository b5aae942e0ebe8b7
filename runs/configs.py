"""Small helpers every package's frozen configs and files use (a leaf: imports nothing of ours).

- :func:`known_fields` is the one unknown-key check behind every ``from_dict``;
- :func:`atomic_write_text` is the one write-then-rename (readers never see half a file);
- :func:`int_list` is the argparse type for "8,16,32" the CLIs share.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

FILE_MODE = 0o644  # exports are read by other tools and users; mkstemp's 0600 would hide them


def known_fields(cls: type, d: Any, what: str) -> dict[str, Any]:
    """The keyword arguments for the dataclass ``cls`` from ``d`` (JSON data): the one ``from_dict`` check.

    Raises ValueError naming the unknown keys and the expected ones, e.g.
    ``unknown serving config key(s) foo; expected some of max_batch_size, ...``.
    JSON lists become tuples for the fields declared as tuples (frozen configs hold tuples).
    """
    if not isinstance(d, Mapping):
        raise ValueError(f"a {what} must be a JSON object (a mapping); got {type(d).__name__}")
    fields = dataclasses.fields(cls)
    known = [f.name for f in fields]
    unknown = sorted(set(d) - set(known))
    if unknown:
        raise ValueError(f"unknown {what} key(s) {', '.join(map(str, unknown))}; expected some of {', '.join(known)}")
    values = dict(d)
    for f in fields:
        if isinstance(values.get(f.name), list) and str(f.type).startswith("tuple"):
            values[f.name] = tuple(values[f.name])
    return values


def plain_dict(obj: Any) -> dict[str, Any]:
    """A frozen config as JSON-ready data (``asdict`` with tuples as lists): the one ``to_dict``."""
    return _plain(dataclasses.asdict(obj))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


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


def int_list(text: str) -> tuple[int, ...]:
    """argparse type: comma-separated integers like ``8,16,32`` (ArgumentTypeError names the bad text)."""
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 8,16,32; got {text!r}") from None
