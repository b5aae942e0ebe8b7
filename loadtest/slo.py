"""Service-level objectives as gates: parse ``'p95<=50ms'`` and judge a load-test summary.

An SLO expression is ``<metric><op><number>[unit]``:

- metrics: latencies ``p50 p90 p95 p99 avg max`` (milliseconds; unit ``ms`` or
  ``s``, default ms), throughput ``rps`` (requests/s), ``fail_ratio`` (a
  fraction, or a percentage with ``%``), ``failures`` (a count);
- operators: ``<= < >= >``.

Everything here is pure: the CLI and the tuning sweeps judge recorded summaries
with the same code.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

# Metric in an expression -> key of the run summary it is measured by.
METRICS: dict[str, str] = {
    "p50": "p50_ms",
    "p90": "p90_ms",
    "p95": "p95_ms",
    "p99": "p99_ms",
    "avg": "avg_ms",
    "max": "max_ms",
    "rps": "rps",
    "fail_ratio": "fail_ratio",
    "failures": "failures",
}
LATENCY_METRICS = frozenset({"p50", "p90", "p95", "p99", "avg", "max"})
OPERATORS = ("<=", ">=", "<", ">")  # two-character operators first, so '<=' never parses as '<'
UNITS_TO_MS = {"ms": 1.0, "s": 1000.0}

_EXPR = re.compile(
    r"^\s*(?P<metric>[a-z_0-9]+)\s*(?P<op><=|>=|<|>)\s*(?P<num>[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(?P<unit>ms|s|%)?\s*$"
)


def _usage() -> str:
    return (
        f"expected <metric><op><number>[unit], e.g. 'p95<=50ms' or 'fail_ratio<=0.01'; "
        f"metrics: {', '.join(METRICS)}; operators: {', '.join(('<=', '<', '>=', '>'))}; "
        f"units: ms or s for latencies, % for fail_ratio"
    )


@dataclass(frozen=True)
class Slo:
    """One gate: ``metric op limit`` with the limit in the summary's own unit (ms, req/s, fraction, count)."""

    expr: str
    metric: str
    op: str
    limit: float

    @property
    def summary_key(self) -> str:
        return METRICS[self.metric]

    def holds(self, measured: float) -> bool:
        if self.op == "<=":
            return measured <= self.limit
        if self.op == "<":
            return measured < self.limit
        if self.op == ">=":
            return measured >= self.limit
        return measured > self.limit


@dataclass(frozen=True)
class GateResult:
    """An SLO judged against a summary; ``measured`` is None when the run has no such figure."""

    expr: str
    metric: str
    op: str
    limit: float
    measured: float | None
    passed: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "expr": self.expr,
            "metric": self.metric,
            "op": self.op,
            "limit": self.limit,
            "measured": self.measured,
            "passed": self.passed,
        }


def parse_slo(text: str) -> Slo:
    """Parse one expression; raises ValueError naming the allowed metrics and operators."""
    if not isinstance(text, str):
        raise ValueError(f"SLO must be a string, got {type(text).__name__}; {_usage()}")
    m = _EXPR.match(text.strip().lower())
    if m is None:
        raise ValueError(f"malformed SLO {text!r}: {_usage()}")
    metric, op, unit = m["metric"], m["op"], m["unit"]
    if metric not in METRICS:
        raise ValueError(f"unknown SLO metric {metric!r} in {text!r}: {_usage()}")
    value = float(m["num"])
    if not math.isfinite(value):
        raise ValueError(f"SLO limit in {text!r} must be a finite number: {_usage()}")
    if metric in LATENCY_METRICS:
        if unit == "%":
            raise ValueError(f"latency SLO {text!r} takes ms or s, not %: {_usage()}")
        value *= UNITS_TO_MS[unit or "ms"]
    elif unit in UNITS_TO_MS:
        raise ValueError(f"SLO {text!r}: {metric} has no time unit; {_usage()}")
    elif unit == "%":
        if metric != "fail_ratio":
            raise ValueError(f"SLO {text!r}: only fail_ratio takes %; {_usage()}")
        value /= 100.0
    if metric == "fail_ratio" and value > 1.0:
        raise ValueError(f"SLO {text!r}: fail_ratio is a fraction in [0, 1] (or a percentage with %)")
    return Slo(expr=text.strip(), metric=metric, op=op, limit=value)


def parse_slos(texts: Iterable[str]) -> tuple[Slo, ...]:
    return tuple(parse_slo(t) for t in texts)


def evaluate(slos: Iterable[Slo], summary: Mapping[str, Any]) -> list[GateResult]:
    """Judge each SLO against a run summary (see loadtest.results.summarize).

    A figure the run does not have (no successful request, so no latency) fails
    the gate: a gate that cannot be measured must not pass silently.
    """
    results: list[GateResult] = []
    for slo in slos:
        raw = summary.get(slo.summary_key)
        measured = float(raw) if isinstance(raw, (int, float)) and math.isfinite(float(raw)) else None
        passed = measured is not None and slo.holds(measured)
        results.append(
            GateResult(expr=slo.expr, metric=slo.metric, op=slo.op, limit=slo.limit, measured=measured, passed=passed)
        )
    return results


def format_gate(gate: GateResult) -> str:
    """One line: ``PASS  p95<=50ms  measured 12.3 ms (limit 50 ms)``."""
    unit = {"rps": " req/s", "fail_ratio": "", "failures": ""}.get(gate.metric, " ms")
    measured = "n/a" if gate.measured is None else f"{gate.measured:.4g}{unit}"
    verdict = "PASS" if gate.passed else "FAIL"
    return f"{verdict}  {gate.expr:<20} measured {measured} (limit {gate.op} {gate.limit:.4g}{unit})"
