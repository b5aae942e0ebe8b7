"""Pure helpers for the Serve page: scrapes of ``/metrics`` -> rows and histograms to chart.

The endpoint's counters are cumulative since it started; the page keeps the
last few scrapes per endpoint and turns consecutive pairs into per-interval
rates here (via ``runs.metrics_scrape.snapshot_delta``), so the figures say
what happened in the last seconds, not since start-up.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

SCRAPE_TIMEOUT_S = 1.0


def histogram_counts(cumulative: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """Prometheus cumulative buckets ``[(le, count_le)]`` -> per-bucket counts ``[(le, n)]``."""
    out: list[tuple[float, float]] = []
    prev = 0.0
    for le, count in sorted(cumulative):
        out.append((le, max(0.0, count - prev)))
        prev = count
    return out


def delta_row(delta: Any, snapshot: Any, t: float) -> dict[str, float | None]:
    """One timeline row from a ``SnapshotDelta`` (and the later ``ServerSnapshot`` for gauges)."""

    def ms(seconds: float | None) -> float | None:
        return None if seconds is None else 1000.0 * seconds

    per_s = (lambda n: n / delta.seconds) if delta.seconds > 0 else (lambda n: None)
    return {
        "t": t,
        "server_rps": delta.requests_per_s,
        "p50_ms": ms(delta.p50_latency_s),
        "p99_ms": ms(delta.p99_latency_s),
        "mean_ms": ms(delta.mean_latency_s),
        "server_queue_ms": ms(delta.mean_queue_wait_s),
        "server_compute_ms": ms(delta.mean_compute_s),
        "batch_size": delta.mean_batch_size,
        "server_shed_per_s": per_s(delta.shed_503),
        "queue_depth_rows": snapshot.queue_depth_rows,
        "cpu_ms_per_request": ms(delta.cpu_per_request_s),
    }


def describe_signature(signature: dict[str, Any]) -> str:
    """``image 8x8x1 float32, tokens 50 int32`` from a ``signature.json`` document."""
    parts = [f"{i.get('name')} {'x'.join(map(str, i.get('shape', []))) or 'scalar'} {i.get('dtype')}"
             for i in signature.get("inputs", [])]
    return ", ".join(parts) or "—"


def describe_row(row: Any, limit: int = 16) -> str:
    """A short text for one instance: its numbers (flattened) or, per named input, its first numbers."""
    if isinstance(row, dict):
        return "; ".join(f"{k}: {describe_row(v, limit // 2)}" for k, v in row.items())
    flat = _flatten(row)
    head = ", ".join(f"{v:g}" for v in flat[:limit]) + (" …" if len(flat) > limit else "")
    return f"{len(flat)} numbers: {head}"


def _flatten(value: Any) -> list[float]:
    if isinstance(value, list):
        return [v for item in value for v in _flatten(item)]
    return [float(value)]


def describe_prediction(prediction: Any, class_labels: Sequence[str]) -> tuple[str, float | None]:
    """(label, confidence) for one prediction row: argmax class for classifiers, the value for regression."""
    if isinstance(prediction, list) and prediction and all(isinstance(v, (int, float)) for v in prediction):
        if len(prediction) == 1 and not class_labels:
            return f"{float(prediction[0]):.4g}", None
        best = max(range(len(prediction)), key=lambda i: prediction[i])
        label = class_labels[best] if best < len(class_labels) else str(best)
        return str(label), float(prediction[best])
    if isinstance(prediction, (int, float)):
        return f"{float(prediction):.4g}", None
    if isinstance(prediction, dict) and prediction:  # several named outputs: describe the first
        name, first = next(iter(prediction.items()))
        label, conf = describe_prediction(first, class_labels)
        return f"{name}: {label}", conf
    return json.dumps(prediction)[:80], None
