"""Request bodies and response checks for TF Serving ``:predict`` swarms (no Locust here).

Bodies are built once, before the swarm starts, from real feature rows (the
``samples.json`` shipped beside a model), so the load generator spends its CPU
sending requests rather than encoding them, and the server sees inputs that
match the features it serves.
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

try:  # orjson parses answers several times faster: the load generator's CPU is the scarce resource
    from orjson import loads as _loads
except ImportError:  # pragma: no cover - orjson is in requirements.txt
    _loads = json.loads

from loadtest.results import REASON_DEADLINE, REASON_REFUSED, REASON_SHED, REASON_TIMEOUT

SAMPLES_FILENAME = "samples.json"
MAX_SAMPLES_BYTES = 50 * 1024 * 1024
MAX_INSTANCES_PER_REQUEST = 4096
DISTINCT_BODIES = 64  # enough variety that the server cannot cache one answer, few enough to build instantly
MAX_REASON_CHARS = 160


def predict_path(model_name: str, version: int | None = None) -> str:
    """The TF Serving REST path for predictions."""
    if not model_name or "/" in model_name or ":" in model_name:
        raise ValueError(f"model name must be a non-empty name without '/' or ':', got {model_name!r}")
    version_part = f"/versions/{version}" if version is not None else ""
    return f"/v1/models/{model_name}{version_part}:predict"


def resolve_samples_path(path: str | os.PathLike[str]) -> Path:
    """``samples.json`` itself, or the one beside a ``model.keras`` (or inside a bundle folder)."""
    p = Path(path)
    if p.is_dir():
        p = p / SAMPLES_FILENAME
    elif p.suffix == ".keras":
        p = p.with_name(SAMPLES_FILENAME)
    if not p.is_file():
        raise ValueError(f"samples file {p} not found: expected a samples.json or a model.keras with one beside it")
    return p


def load_samples_file(path: str | os.PathLike[str]) -> list[list[float]]:
    """Feature rows from ``{"instances": [[...], ...]}`` (a bundle's samples.json) or a bare list of rows."""
    p = resolve_samples_path(path)
    if p.stat().st_size > MAX_SAMPLES_BYTES:
        raise ValueError(f"samples file {p} is larger than {MAX_SAMPLES_BYTES // (1024 * 1024)} MB")
    try:
        data = json.loads(p.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"samples file {p} is not valid JSON: {exc}") from None
    rows = data.get("instances") if isinstance(data, dict) else data
    if not isinstance(rows, list) or not rows:
        raise ValueError(f"samples file {p} must hold a non-empty 'instances' list of feature rows")
    width = None
    for i, row in enumerate(rows):
        if not isinstance(row, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in row):
            raise ValueError(f"samples file {p}: instance {i} must be a list of numbers")
        if width is None:
            width = len(row)
        elif len(row) != width:
            raise ValueError(f"samples file {p}: instance {i} has {len(row)} features, expected {width}")
    return rows


def build_bodies(rows: Sequence[Sequence[float]], instances_per_request: int) -> list[bytes]:
    """Encoded ``{"instances": [...]}`` bodies cycling through ``rows``, ``instances_per_request`` rows each."""
    if not rows:
        raise ValueError("need at least one feature row to build requests")
    if not 1 <= instances_per_request <= MAX_INSTANCES_PER_REQUEST:
        raise ValueError(
            f"instances_per_request must be in [1, {MAX_INSTANCES_PER_REQUEST}], got {instances_per_request}"
        )
    count = min(DISTINCT_BODIES, max(1, len(rows)))
    bodies = []
    for b in range(count):
        start = b * instances_per_request
        chosen = [list(rows[(start + i) % len(rows)]) for i in range(instances_per_request)]
        bodies.append(json.dumps({"instances": chosen}, separators=(",", ":")).encode())
    return bodies


def _error_text(body: bytes | str) -> str:
    if isinstance(body, bytes):
        body = body.decode("utf-8", errors="replace")
    try:
        data = json.loads(body)
    except ValueError:
        return body.strip()[:MAX_REASON_CHARS]
    if isinstance(data, dict) and "error" in data:
        return str(data["error"])[:MAX_REASON_CHARS]
    return body.strip()[:MAX_REASON_CHARS]


def classify_error(error: BaseException | None) -> str:
    """A short reason for a request that got no HTTP answer."""
    if error is None:
        return "no response"
    if isinstance(error, ConnectionRefusedError) or getattr(error, "errno", None) == errno.ECONNREFUSED:
        return REASON_REFUSED
    name = type(error).__name__.lower()
    if isinstance(error, TimeoutError) or "timeout" in name or "timed out" in str(error).lower():
        return REASON_TIMEOUT
    if isinstance(error, ConnectionResetError) or getattr(error, "errno", None) == errno.ECONNRESET:
        return "connection reset"
    return f"{type(error).__name__}: {error}"[:MAX_REASON_CHARS]


def check_response(
    status: int | None, body: bytes | str | None, expected_predictions: int, error: BaseException | None = None
) -> str | None:
    """None if the answer is a good prediction, else the failure reason Locust records.

    Reasons are stable strings (``503 shed``, ``504 deadline``, ``400 <error>``,
    ``connection refused``, ``timeout``) so reports can count them.
    """
    if not status:
        return classify_error(error)
    body = body or b""
    if status == 503:
        return REASON_SHED
    if status == 504:
        return REASON_DEADLINE
    if status != 200:
        return f"{status} {_error_text(body)}".strip()
    try:
        data: Any = _loads(body)
    except ValueError:
        return "200 with a body that is not JSON"
    preds = data.get("predictions") if isinstance(data, dict) else None
    if not isinstance(preds, list):
        return "200 without a 'predictions' list"
    if len(preds) != expected_predictions:
        return f"200 with {len(preds)} predictions, expected {expected_predictions}"
    return None
