"""Load shapes as pure schedules: how many users at second ``t``, and at what pace.

The locustfile wraps :func:`tick` in a ``LoadTestShape``; keeping the arithmetic
here lets it be tested without Locust and lets the runner predict what a run
promised (the users it should reach, the request rate it offers).

Shapes:

- ``constant``: ``users`` for the whole run;
- ``steps``: a ladder starting at ``users``, adding ``step_users`` every
  ``step_time_s`` up to ``max_users``, then holding;
- ``spike``: ``users`` as a baseline, ``spike_users`` from ``spike_at_s`` for
  ``spike_duration_s``, then back to the baseline;
- ``rate``: open loop. ``users`` users each paced to ``target_rps / users``
  requests/s (Locust's ``constant_throughput``), so the offered rate stays at
  ``target_rps`` however slow the server gets, as long as each user's request
  finishes within its pacing interval. Closed-loop users slow down with the
  server and hide overload; paced users keep offering load and show it (as
  503 shed, or as latency when the server queues without bound).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Protocol

from runs.configs import known_fields, plain_dict

SHAPES = ("constant", "steps", "spike", "rate")
MAX_USERS = 100_000
MAX_RUN_TIME_S = 24 * 3600.0

_DURATION = re.compile(r"^\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m(?!s))?\s*(?:(\d+(?:\.\d+)?)s?)?\s*$")


def parse_duration(text: str | float | int) -> float:
    """Seconds from ``20``, ``20s``, ``1m30s``, ``1h`` (Locust's own --run-time style)."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value = float(text)
    else:
        m = _DURATION.match(str(text))
        if m is None or not any(m.groups()):
            raise ValueError(f"bad duration {text!r}: expected seconds like 20, 20s, 1m30s or 1h")
        h, mnt, s = (float(g) if g else 0.0 for g in m.groups())
        value = h * 3600 + mnt * 60 + s
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"bad duration {text!r}: must be a positive number of seconds")
    return value


@dataclass(frozen=True)
class ShapeSpec:
    """A load shape and its parameters (see the module docstring for their meaning)."""

    kind: str = "constant"
    users: int = 10
    spawn_rate: float = 10.0
    run_time_s: float = 20.0
    step_users: int = 5
    step_time_s: float = 5.0
    max_users: int = 50
    spike_users: int = 50
    spike_at_s: float = 5.0
    spike_duration_s: float = 5.0
    target_rps: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in SHAPES:
            raise ValueError(f"shape must be one of {', '.join(SHAPES)}, got {self.kind!r}")
        for name in ("users", "step_users", "max_users", "spike_users"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_USERS:
                raise ValueError(f"{name} must be an integer in [0, {MAX_USERS}], got {value!r}")
        for name in ("spawn_rate", "run_time_s", "step_time_s", "spike_at_s", "spike_duration_s", "target_rps"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                raise ValueError(f"{name} must be a number, got {value!r}")
        if self.users < 1 and self.kind != "steps":
            raise ValueError(f"users must be >= 1 for the {self.kind} shape, got {self.users}")
        if self.spawn_rate <= 0:
            raise ValueError(f"spawn_rate must be > 0 users/s, got {self.spawn_rate}")
        if not 0 < self.run_time_s <= MAX_RUN_TIME_S:
            raise ValueError(f"run_time_s must be in (0, {MAX_RUN_TIME_S:.0f}], got {self.run_time_s}")
        if self.kind == "steps":
            if self.step_users < 1:
                raise ValueError(f"step_users must be >= 1 for the steps shape, got {self.step_users}")
            if self.step_time_s <= 0:
                raise ValueError(f"step_time_s must be > 0 for the steps shape, got {self.step_time_s}")
            if self.max_users < max(self.users, 1):
                raise ValueError(f"max_users must be >= users ({self.users}) for the steps shape, got {self.max_users}")
        if self.kind == "spike":
            if self.spike_users < 1:
                raise ValueError(f"spike_users must be >= 1 for the spike shape, got {self.spike_users}")
            if self.spike_at_s < 0 or self.spike_duration_s <= 0:
                raise ValueError(
                    "spike_at_s must be >= 0 and spike_duration_s > 0, "
                    f"got {self.spike_at_s} and {self.spike_duration_s}"
                )
        if self.kind == "rate" and self.target_rps <= 0:
            raise ValueError(f"target_rps must be > 0 requests/s for the rate shape, got {self.target_rps}")

    def to_dict(self) -> dict[str, Any]:
        return plain_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ShapeSpec:
        return cls(**known_fields(cls, d, "shape parameter"))


_DEFAULT = ShapeSpec()
# The load-shape command-line options as (flag, add_argument kwargs). ``python -m loadtest`` and the locustfile
# (on Locust's own parser) both declare them from here, so the two spell, default and explain them alike; the
# defaults are ShapeSpec's. Destinations (``step_time``, ``spike_at`` ...) are the flags', not ShapeSpec's fields.
SHAPE_ARGUMENTS: tuple[tuple[str, dict[str, Any]], ...] = (
    (
        "--shape",
        {
            "choices": SHAPES,
            "default": _DEFAULT.kind,
            "help": "load shape: constant users (-u), steps (ladder), spike, or rate (open loop at --target-rps) "
            f"(default: {_DEFAULT.kind})",
        },
    ),
    (
        "--step-users",
        {
            "type": int,
            "default": _DEFAULT.step_users,
            "help": f"steps: users added per step (default: {_DEFAULT.step_users})",
        },
    ),
    (
        "--step-time",
        {
            "type": float,
            "default": _DEFAULT.step_time_s,
            "help": f"steps: seconds per step (default: {_DEFAULT.step_time_s:g})",
        },
    ),
    (
        "--max-users",
        {
            "type": int,
            "default": _DEFAULT.max_users,
            "help": f"steps: users at the top of the ladder (default: {_DEFAULT.max_users})",
        },
    ),
    (
        "--spike-users",
        {
            "type": int,
            "default": _DEFAULT.spike_users,
            "help": f"spike: users during the spike (default: {_DEFAULT.spike_users})",
        },
    ),
    (
        "--spike-at",
        {
            "type": float,
            "default": _DEFAULT.spike_at_s,
            "help": f"spike: seconds into the run it starts (default: {_DEFAULT.spike_at_s:g})",
        },
    ),
    (
        "--spike-duration",
        {
            "type": float,
            "default": _DEFAULT.spike_duration_s,
            "help": f"spike: how long it lasts in s (default: {_DEFAULT.spike_duration_s:g})",
        },
    ),
    (
        "--target-rps",
        {
            "type": float,
            "default": _DEFAULT.target_rps,
            "help": "rate: offered requests/s, split evenly over -u users paced with constant_throughput",
        },
    ),
)


class _ArgumentContainer(Protocol):
    """An argparse parser or argument group (Locust's parser is an argparse parser)."""

    def add_argument(self, *flags: str, **kwargs: Any) -> Any: ...


def add_shape_arguments(parser: _ArgumentContainer, **extra: Any) -> None:
    """Declare :data:`SHAPE_ARGUMENTS` on ``parser``; ``extra`` is passed to every ``add_argument``.

    ``extra`` carries a parser's own keywords, e.g. Locust's ``include_in_web_ui=False``. Only Locust's
    parser itself accepts those: an argument group's ``add_argument`` is plain argparse and refuses them.
    """
    for flag, kwargs in SHAPE_ARGUMENTS:
        parser.add_argument(flag, **kwargs, **extra)


def target_users(spec: ShapeSpec, t: float) -> int | None:
    """Users the shape asks for at ``t`` seconds into the run; None once the run is over."""
    if t >= spec.run_time_s:
        return None
    if spec.kind == "steps":
        return min(spec.max_users, spec.users + spec.step_users * int(t // spec.step_time_s))
    if spec.kind == "spike":
        in_spike = spec.spike_at_s <= t < spec.spike_at_s + spec.spike_duration_s
        return spec.spike_users if in_spike else spec.users
    return spec.users  # constant and rate


def spawn_rate_at(spec: ShapeSpec) -> float:
    """Users started (or stopped) per second on a change of target.

    A spike reaches its peak within about a second whatever ``spawn_rate`` says:
    a slow ramp is a step ladder, not a spike. A ladder rises each step within
    the step's first second or so for the same reason.
    """
    if spec.kind == "spike":
        return float(max(spec.spawn_rate, abs(spec.spike_users - spec.users)))
    if spec.kind == "steps":
        return float(max(spec.spawn_rate, spec.step_users))
    return float(spec.spawn_rate)


def tick(spec: ShapeSpec, t: float) -> tuple[int, float] | None:
    """``(users, spawn_rate)`` at ``t`` for a Locust ``LoadTestShape.tick``; None stops the test."""
    users = target_users(spec, t)
    if users is None:
        return None
    return users, spawn_rate_at(spec)


def per_user_rate(spec: ShapeSpec) -> float | None:
    """Requests/s each paced user makes in the open-loop shape, else None (closed loop)."""
    if spec.kind != "rate":
        return None
    return spec.target_rps / spec.users


def offered_rps(spec: ShapeSpec) -> float | None:
    """The request rate an open-loop run offers (None for closed-loop shapes)."""
    return spec.target_rps if spec.kind == "rate" else None


def peak_users(spec: ShapeSpec) -> int:
    if spec.kind == "steps":
        return spec.max_users
    if spec.kind == "spike":
        return max(spec.users, spec.spike_users)
    return spec.users
