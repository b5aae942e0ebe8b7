"""The concurrency ladder and the rule that stops climbing it.

A configuration is measured at rising load levels (users, or open-loop rates).
Climbing further is wasted time once the SLO is broken (every higher level breaks
it too, so the capacity within SLO is already known) or once throughput has stopped
growing: Triton Model Analyzer stops when a step adds less than 5% throughput, and
we follow it. That is what keeps a sweep to minutes instead of hours.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tuning.points import Point

MIN_THROUGHPUT_GAIN = 0.05  # Model Analyzer's rule: a step must add >= 5% throughput
DEFAULT_USERS = (1, 8, 32, 64)
MAX_LEVELS = 16
MAX_USERS = 10_000


@dataclass(frozen=True)
class StopDecision:
    stop: bool
    reason: str  # "" while climbing; "slo", "plateau" or "top" once stopped

    def __bool__(self) -> bool:
        return self.stop


def stop_climbing(
    points: Sequence[Point],
    meets_slo: Callable[[Point], bool],
    *,
    min_gain: float = MIN_THROUGHPUT_GAIN,
    patience: int = 1,
) -> StopDecision:
    """Decide, after the last measured level of one config, whether to go higher.

    ``points`` are this config's levels in the order measured. Stop when the last
    level broke the SLO, or when the last ``patience`` levels each failed to beat the
    best earlier throughput by ``min_gain`` (5%).
    """
    if not points:
        return StopDecision(False, "")
    if not meets_slo(points[-1]):
        return StopDecision(True, "slo")
    if patience < 1 or len(points) <= patience:
        return StopDecision(False, "")
    best_before = max(p.rps for p in points[:-patience])
    recent = points[-patience:]
    if all(p.rps < best_before * (1.0 + min_gain) for p in recent):
        return StopDecision(True, "plateau")
    return StopDecision(False, "")


def parse_levels(text: str, *, what: str = "users") -> tuple[int, ...]:
    """``"1,8,32,64"`` -> (1, 8, 32, 64): positive, strictly rising integers."""
    try:
        levels = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ValueError(f"{what} must be a comma-separated list of integers like 1,8,32,64; got {text!r}") from None
    return check_levels(levels, what=what)


def check_levels(levels: Sequence[int], *, what: str = "users") -> tuple[int, ...]:
    levels = tuple(int(v) for v in levels)
    if not levels:
        raise ValueError(f"{what}: give at least one load level")
    if len(levels) > MAX_LEVELS:
        raise ValueError(f"{what}: at most {MAX_LEVELS} load levels; got {len(levels)}")
    if any(v < 1 or v > MAX_USERS for v in levels):
        raise ValueError(f"{what}: each level must be 1..{MAX_USERS}; got {list(levels)}")
    if any(b <= a for a, b in itertools.pairwise(levels)):
        raise ValueError(f"{what}: levels must rise strictly; got {list(levels)}")
    return levels
