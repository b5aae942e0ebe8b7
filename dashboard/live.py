"""Pure helpers for live views: the figure each tile shows, progress text, stage lines (no Streamlit).

A swarm's per-second rows are written by two writers at different times: Locust's
history (users, rps, percentiles, failures) lands a second or two late, while the
CPU and server samples land on time. So the newest row often holds only some of the
figures; a tile shows the newest value that exists for *its* figure instead.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

SWARM_TILES = ("users", "rps", "p95_ms", "fail_per_s", "locust_cpu_pct")
# The serve job's stages, in order (``progress["stage"]`` of a ``serve`` run; see agent/serving/__main__.py).
SERVE_STAGES = ("starting", "waiting for the port", "loading TensorFlow and the model", "converting",
                "warming up", "ready")


def latest_figures(rows: Sequence[Mapping[str, Any]], names: Iterable[str] = SWARM_TILES) -> dict[str, Any]:
    """``{name: value}`` from the newest row holding a value for ``name`` (None if no row does)."""
    wanted = list(names)
    out: dict[str, Any] = dict.fromkeys(wanted)
    missing = set(wanted)
    for row in reversed(rows):
        for name in list(missing):
            if row.get(name) is not None:
                out[name] = row[name]
                missing.discard(name)
        if not missing:
            break
    return out


def elapsed_progress(elapsed_s: float, total_s: float) -> tuple[float, str]:
    """(fraction, text) of a timed run; never past its end ("12 s of 12 s", not "15 s of 12 s").

    Locust's last rows come after the run time (spawn and stop take a moment), so the
    step of the newest row can exceed the planned duration.
    """
    if total_s <= 0:
        return 0.0, f"{max(elapsed_s, 0.0):.0f} s"
    shown = min(max(elapsed_s, 0.0), total_s)
    return shown / total_s, f"{shown:.0f} s of {total_s:.0f} s"


def active_duration(started_at: float | None, now: float) -> float | None:
    """Seconds an active run has been going at ``now`` (None before it started)."""
    if started_at is None:
        return None
    return max(0.0, now - started_at)


def serve_stage(progress: Mapping[str, Any] | None, ready: bool) -> str:
    """The stage line of an endpoint: what it is doing now ("ready" once its summary says so)."""
    if ready:
        return "ready"
    stage = str((progress or {}).get("stage") or "starting")
    detail = (progress or {}).get("detail")
    return f"{stage} ({detail})" if detail else stage


def stage_index(stage: str) -> int:
    """Position of ``stage`` in :data:`SERVE_STAGES` (for a progress bar); 0 for an unknown one."""
    head = stage.split(" (", 1)[0]
    return SERVE_STAGES.index(head) if head in SERVE_STAGES else 0
