"""Pareto dominance over several objectives, each to be maximised or minimised.

A point dominates another when it is at least as good on every objective and
strictly better on one. The front is the set of points nobody dominates: the
only candidates worth shipping, whatever weight one puts on each objective.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

SENSES = ("max", "min")
# The model sweep's objectives: accuracy up, tail latency down, capacity up.
MODEL_OBJECTIVES: dict[str, str] = {"val_accuracy": "max", "p99_ms": "min", "capacity_rps": "max"}


def _check(objectives: Mapping[str, str]) -> None:
    if not objectives:
        raise ValueError("give at least one objective")
    for name, sense in objectives.items():
        if sense not in SENSES:
            raise ValueError(f"objective {name!r}: sense must be 'max' or 'min'; got {sense!r}")


def _value(point: Mapping[str, Any], name: str, sense: str) -> float:
    value = point.get(name)
    if value is None:
        # A missing measurement is the worst possible value, never a free win.
        return float("-inf") if sense == "max" else float("inf")
    return float(value)


def dominates(a: Mapping[str, Any], b: Mapping[str, Any], objectives: Mapping[str, str]) -> bool:
    """True if ``a`` is no worse than ``b`` on every objective and better on one."""
    _check(objectives)
    better = False
    for name, sense in objectives.items():
        va, vb = _value(a, name, sense), _value(b, name, sense)
        if sense == "min":
            va, vb = -va, -vb
        if va < vb:
            return False
        if va > vb:
            better = True
    return better


def pareto_mask(points: Sequence[Mapping[str, Any]], objectives: Mapping[str, str]) -> list[bool]:
    """For each point, True if no other point dominates it (O(n^2); sweeps are small)."""
    _check(objectives)
    return [
        not any(dominates(other, p, objectives) for j, other in enumerate(points) if j != i)
        for i, p in enumerate(points)
    ]


def pareto_front(points: Sequence[Mapping[str, Any]], objectives: Mapping[str, str]) -> list[int]:
    """Indices of the non-dominated points, in input order."""
    return [i for i, on in enumerate(pareto_mask(points, objectives)) if on]
