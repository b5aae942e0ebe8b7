"""Measured points of a sweep: one load level of one configuration, as plain data.

A point is what every other tuning module consumes (the ladder rule, the
recommendation, the charts, the Pareto front), so it is a frozen dataclass that
round-trips through the registry's JSON summary unchanged.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any


def config_key(params: Mapping[str, Any]) -> str:
    """A stable, readable key for a parameter assignment (sorted ``name=value`` pairs)."""
    return ",".join(f"{name}={_fmt(params[name])}" for name in sorted(params))


def config_label(params: Mapping[str, Any]) -> str:
    """A short label for charts and tables: ``tflite b32 t2ms`` style."""
    short = {  # in display order
        "runtime": "",
        "max_batch_size": "b",
        "batch_timeout_ms": "t",
        "num_batch_threads": "thr",
        "workers": "w",
        "max_enqueued_batches": "q",
        "intra_op_threads": "intra",
        "inter_op_threads": "inter",
    }
    parts = []
    for name in sorted(params, key=param_order):
        prefix = short.get(name, f"{name}=")
        suffix = "ms" if name == "batch_timeout_ms" else ""
        parts.append(f"{prefix}{_fmt(params[name])}{suffix}")
    return " ".join(parts) or "default"


PARAM_ORDER = ("runtime", "max_batch_size", "batch_timeout_ms", "num_batch_threads", "max_enqueued_batches",
               "workers", "intra_op_threads", "inter_op_threads")


def param_order(name: str) -> tuple[int, str]:
    """Sort key putting the serving knobs in the order people read them."""
    return (PARAM_ORDER.index(name) if name in PARAM_ORDER else len(PARAM_ORDER), name)


def _fmt(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


@dataclass(frozen=True)
class Point:
    """One load step of one configuration.

    Latencies are client-side (Locust) in milliseconds; ``queue_ms`` is the server's
    own mean queue wait per request and ``compute_ms`` its mean model execution time
    per batch (the compute a request sits through) over the step;
    ``cpu_ms_per_request`` is server CPU time divided by requests served, which does
    not depend on how fast the load generator is.
    """

    config_id: str
    params: dict[str, Any]
    users: int
    rps: float
    p50_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
    requests: int = 0
    failures: int = 0
    fail_ratio: float = 0.0
    queue_ms: float | None = None
    compute_ms: float | None = None
    batch_size: float | None = None
    cpu_ms_per_request: float | None = None
    saturated: bool = False
    rate: float | None = None  # offered requests/s for open-loop steps, else None
    loadtest_run_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return config_label(self.params)

    @property
    def level(self) -> int:
        """The ladder level: users (closed loop), or offered requests/s (open loop)."""
        return round(self.rate) if self.rate is not None else self.users

    @property
    def load_text(self) -> str:
        """``16 users`` or ``500 req/s offered``."""
        if self.rate is not None:
            return f"{self.rate:g} req/s offered"
        return f"{self.users} user" if self.users == 1 else f"{self.users} users"

    @property
    def queue_share(self) -> float | None:
        """Share of the server's time per request spent waiting in the batch queue."""
        if self.queue_ms is None or self.compute_ms is None:
            return None
        total = self.queue_ms + self.compute_ms
        return self.queue_ms / total if total > 0 else None

    @property
    def capacity_per_core(self) -> float | None:
        """Requests/s one core sustains at this point's server CPU cost."""
        if not self.cpu_ms_per_request or self.cpu_ms_per_request <= 0:
            return None
        return 1000.0 / self.cpu_ms_per_request

    def metrics(self) -> dict[str, float]:
        """The values SLO gates are evaluated on, under the load-test summary's names."""
        out: dict[str, float] = {"rps": self.rps, "fail_ratio": self.fail_ratio,
                                 "requests": float(self.requests), "failures": float(self.failures)}
        for name in ("p50_ms", "p95_ms", "p99_ms", "queue_ms", "compute_ms", "cpu_ms_per_request"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return out

    def to_dict(self) -> dict[str, Any]:
        return _clean(asdict(self))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Point:
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in known}
        kwargs["params"] = dict(kwargs.get("params") or {})
        kwargs.setdefault("config_id", config_key(kwargs["params"]))
        return cls(**kwargs)


def _clean(value: Any) -> Any:
    # NaN/inf are not JSON; a missing measurement is None.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def group_by_config(points: Iterable[Point]) -> dict[str, list[Point]]:
    """Points by config id (first-seen order), each list sorted by load level."""
    out: dict[str, list[Point]] = {}
    for p in points:
        out.setdefault(p.config_id, []).append(p)
    for series in out.values():
        series.sort(key=lambda p: p.level)
    return out


def points_to_json(points: Iterable[Point]) -> str:
    return json.dumps([p.to_dict() for p in points], indent=1)


def points_from_json(text: str) -> list[Point]:
    data = json.loads(text)
    if not isinstance(data, list):
        raise ValueError("points file must hold a JSON list of point objects")
    return [Point.from_dict(d) for d in data]
