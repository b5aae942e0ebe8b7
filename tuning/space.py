"""The search space over serving parameters and the strategies that walk it.

Both strategies are pure functions of the scores measured so far, so a sweep that
was killed and restarted asks the same question ("what is left to measure?") and
gets the same answer without any saved strategy state.

- ``grid``: every combination (brute force; cost = product of the value counts).
- ``coordinate ascent``: tune one parameter at a time, holding the others at the
  best values found so far (cost = sum of the value counts, roughly).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from agent.serving.config import RUNTIMES, ServingConfig
from tuning.points import config_key

# Serving parameters a sweep may vary, with how a value is parsed from the command line.
PARAM_TYPES: dict[str, Callable[[str], Any]] = {
    "runtime": str,
    "max_batch_size": int,
    "batch_timeout_ms": float,
    "num_batch_threads": int,
    "max_enqueued_batches": int,
    "workers": int,
    "intra_op_threads": int,
    "inter_op_threads": int,
}
STRATEGIES = ("grid", "coordinate")
MAX_CONFIGS = 256
MAX_VALUES = 32


@dataclass(frozen=True)
class SearchSpace:
    """Parameter name -> candidate values, in the order given (the first is the start)."""

    params: tuple[tuple[str, tuple[Any, ...]], ...]

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for name, values in self.params:
            if name not in PARAM_TYPES:
                raise ValueError(f"unknown serving parameter {name!r}; sweepable: {', '.join(PARAM_TYPES)}")
            if name in seen:
                raise ValueError(f"parameter {name!r} given twice; give all its values in one --grid")
            seen.add(name)
            if not values:
                raise ValueError(f"parameter {name!r} needs at least one value")
            if len(values) > MAX_VALUES:
                raise ValueError(f"parameter {name!r}: at most {MAX_VALUES} values; got {len(values)}")
            if len(set(values)) != len(values):
                raise ValueError(f"parameter {name!r} repeats a value: {list(values)}")
            if name == "runtime":
                bad = [v for v in values if v not in RUNTIMES]
                if bad:
                    raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}; got {bad[0]!r}")
            elif any(not isinstance(v, int | float) or isinstance(v, bool) or v < 0 for v in values):
                raise ValueError(f"parameter {name!r} takes non-negative numbers; got {list(values)}")
        if self.size > MAX_CONFIGS:
            raise ValueError(f"the grid has {self.size} configs; at most {MAX_CONFIGS} (narrow a --grid)")

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Iterable[Any]]) -> SearchSpace:
        return cls(tuple((name, tuple(values)) for name, values in mapping.items()))

    @classmethod
    def parse(cls, specs: Iterable[str]) -> SearchSpace:
        """From ``["max_batch_size=1,8,32", "runtime=keras,tflite"]`` (the CLI's --grid)."""
        return cls(tuple(parse_grid_arg(s) for s in specs))

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.params)

    @property
    def size(self) -> int:
        n = 1
        for _, values in self.params:
            n *= len(values)
        return n

    def start(self) -> dict[str, Any]:
        return {name: values[0] for name, values in self.params}

    def to_dict(self) -> dict[str, list[Any]]:
        return {name: list(values) for name, values in self.params}


def parse_grid_arg(text: str) -> tuple[str, tuple[Any, ...]]:
    """``"max_batch_size=1,8,32"`` -> ("max_batch_size", (1, 8, 32))."""
    name, sep, raw = text.partition("=")
    name = name.strip()
    if not sep or not name or not raw.strip():
        raise ValueError(f"--grid takes NAME=V1,V2,...; got {text!r}")
    if name not in PARAM_TYPES:
        raise ValueError(f"unknown serving parameter {name!r}; sweepable: {', '.join(PARAM_TYPES)}")
    kind = PARAM_TYPES[name]
    values = []
    for part in raw.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            value = kind(part)
        except ValueError:
            raise ValueError(f"--grid {name}: {part!r} is not a valid {kind.__name__}") from None
        if isinstance(value, float) and value.is_integer():
            value = int(value) if name != "batch_timeout_ms" else value
        values.append(value)
    return name, tuple(values)


def grid(space: SearchSpace) -> list[dict[str, Any]]:
    """Every combination, the first parameter varying slowest."""
    names = space.names
    return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*(v for _, v in space.params))]


def next_configs(
    space: SearchSpace, strategy: str, scores: Mapping[str, float | None]
) -> list[dict[str, Any]]:
    """The configs still to measure, given the scores of those measured (by config key).

    An empty list means the strategy is done. ``scores`` holds each measured
    config's objective value (higher is better; None = no feasible point).
    """
    if strategy == "grid":
        return [c for c in grid(space) if config_key(c) not in scores]
    if strategy == "coordinate":
        return _coordinate_next(space, scores)
    raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}; got {strategy!r}")


def coordinate_path(space: SearchSpace, scores: Mapping[str, float | None]) -> dict[str, Any]:
    """The best config coordinate ascent has reached with the scores given."""
    current = space.start()
    for name, values in space.params:
        candidates = [{**current, name: v} for v in values]
        if any(config_key(c) not in scores for c in candidates):
            break
        current = max(candidates, key=lambda c: _score(scores.get(config_key(c))))
    return current


def _coordinate_next(space: SearchSpace, scores: Mapping[str, float | None]) -> list[dict[str, Any]]:
    current = space.start()
    for name, values in space.params:
        candidates = [{**current, name: v} for v in values]
        missing = [c for c in candidates if config_key(c) not in scores]
        if missing:
            return missing
        # max() keeps the first of equal scores, so ties stay at the earlier value.
        current = max(candidates, key=lambda c: _score(scores.get(config_key(c))))
    return []


def _score(value: float | None) -> float:
    return float("-inf") if value is None else float(value)


def apply_params(base: ServingConfig, params: Mapping[str, Any]) -> ServingConfig:
    """``base`` with the swept parameters set, kept valid.

    Padding sizes belong to one max_batch_size; when the sweep changes it, sizes
    above the new maximum are dropped and the maximum itself appended.
    """
    changes = dict(params)
    if "batch_timeout_ms" in changes:
        changes["batch_timeout_ms"] = float(changes["batch_timeout_ms"])
    mbs = int(changes.get("max_batch_size", base.max_batch_size))
    if base.allowed_batch_sizes and "allowed_batch_sizes" not in changes:
        sizes = [s for s in base.allowed_batch_sizes if s < mbs]
        changes["allowed_batch_sizes"] = (*sizes, mbs) if mbs > 1 else ()
    return base.with_changes(**changes)
