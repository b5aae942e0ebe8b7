"""Capacity sweep of an endpoint that is already running: any URL, either protocol.

What Triton's ``perf_analyzer --concurrency-range`` does, with TuneSwarm's SLOs and
explanations: the target gets one short Locust step per load level of the ladder
(users, or offered requests/s), nothing is restarted or reconfigured, and the
result is the latency-throughput curve, its knee and the highest load within SLO.
The ladder stops at the first level that breaks the SLO (``tuning.ladder``'s rule;
every higher level would break it too), not at a throughput plateau.
There is no configuration to recommend here (the target's configuration is not
ours to change); the verdict is about the deployment as it stands.

Server-side figures (queue wait, compute, batch size) come from the target's
Prometheus metrics when it is a TuneSwarm endpoint; any other target's metrics
(TF Serving's ``/monitoring/prometheus/metrics``, Triton's ``:8002/metrics``) use
other names, and the verdict says they were unavailable rather than guessing.

The sweep is a ``sweep`` run (mode ``capacity``) whose points are recorded as they
are measured, each step a child ``loadtest`` run, like a serving sweep.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from loadtest import payload
from runs import jobs, lifecycle
from runs.configs import known_fields, plain_dict
from runs.registry import Registry, State
from tuning.ladder import DEFAULT_USERS, check_levels
from tuning.points import Point
from tuning.recommend import DEFAULT_SLOS, Constraints
from tuning.sweep import (
    DEFAULT_STEP_S,
    MAX_STEP_S,
    MIN_STEP_S,
    StopFlag,
    SweepStopped,
    _record_point,
    _stop_leftovers,
    begin_in_process,
    load_points,
    open_loop_users,
    step_point,
)

MODE = "capacity"


@dataclass(frozen=True)
class CapacitySpec:
    """One external target and its ladder; stored as the sweep run's config."""

    host: str
    model_name: str = "model"
    protocol: str = "tfserving"
    users: tuple[int, ...] = DEFAULT_USERS
    rates: tuple[int, ...] = ()  # when given: an open-loop ladder of offered requests/s instead of users
    slos: tuple[str, ...] = DEFAULT_SLOS
    step_s: float = DEFAULT_STEP_S
    instances_per_request: int = 1
    processes: int = 0
    samples_path: str = ""  # empty: rows generated from the target's metadata
    signature_path: str = ""  # the inputs (signature.json) when the target's metadata cannot be read
    climb_all: bool = False  # measure every level, even past one that broke the SLO

    def __post_init__(self) -> None:
        object.__setattr__(self, "users", check_levels(self.users))
        object.__setattr__(self, "rates", check_levels(self.rates, what="rates") if self.rates else ())
        object.__setattr__(self, "slos", tuple(self.slos))
        if not (isinstance(self.step_s, int | float) and MIN_STEP_S <= self.step_s <= MAX_STEP_S):
            raise ValueError(f"step_s must be {MIN_STEP_S:g}..{MAX_STEP_S:g} seconds; got {self.step_s!r}")
        Constraints.parse(self.slos)
        self.loadtest_config(self.levels[0], samples_path=self.samples_path or None)  # validates the rest

    @property
    def open_loop(self) -> bool:
        return bool(self.rates)

    @property
    def levels(self) -> tuple[int, ...]:
        return self.rates or self.users

    @property
    def params(self) -> dict[str, Any]:
        """The one "config" of this sweep, as points name it: the target itself."""
        return {"target": f"{self.model_name}@{self.host}"}

    def constraints(self) -> Constraints:
        return Constraints.parse(self.slos)

    def loadtest_config(self, level: int, samples_path: str | None) -> Any:
        from loadtest.runner import LoadTestConfig

        users = open_loop_users(level) if self.open_loop else level
        return LoadTestConfig(
            host=self.host, model_name=self.model_name, protocol=self.protocol, users=users,
            spawn_rate=float(users), run_time_s=self.step_s, shape="rate" if self.open_loop else "constant",
            target_rps=float(level) if self.open_loop else 0.0, instances_per_request=self.instances_per_request,
            processes=self.processes, signature_path=self.signature_path if self.protocol == "v2" else "",
            # Validating before the payload exists: a stand-in width; the run uses the real samples file.
            samples_path=samples_path or "", n_features=0 if samples_path else 1,
        )

    def to_dict(self) -> dict[str, Any]:
        return plain_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CapacitySpec:
        return cls(**known_fields(cls, d, "capacity spec"))


@dataclass(frozen=True)
class CapacityVerdict:
    """What the curve says, without recommending anything."""

    capacity: Point | None  # highest throughput within SLO
    broke: Point | None  # the first level measured above the capacity that broke the SLO
    knee: Point | None  # most throughput per unit of latency (Kleinrock's power, rps / p50)
    levels: int
    server_metrics: str | None  # None: read; else why they were unavailable
    lines: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"capacity": None if self.capacity is None else self.capacity.to_dict(),
                "broke": None if self.broke is None else self.broke.to_dict(),
                "knee": None if self.knee is None else self.knee.to_dict(),
                "levels": self.levels, "server_metrics": self.server_metrics, "explanation": list(self.lines)}


def knee(points: Sequence[Point]) -> Point | None:
    """The knee of the latency-throughput curve: the level with the highest power (rps / p50 latency).

    Below it, more load buys throughput almost for free; above it, mostly queueing.
    Kleinrock's power metric picks that point without a tuned threshold. Levels with
    failures do not count (their latency is not that of served requests).
    """
    usable = [p for p in points if p.p50_ms and p.rps > 0 and p.fail_ratio == 0]
    return max(usable, key=lambda p: p.rps / p.p50_ms) if usable else None  # type: ignore[operator]


def verdict(points: Sequence[Point], constraints: Constraints, server_metrics: str | None) -> CapacityVerdict:
    """The capacity within SLO, where it broke, the knee, and what was not measured; pure."""
    ordered = sorted(points, key=lambda p: p.level)
    feasible = [p for p in ordered if constraints.meets(p)]
    cap = max(feasible, key=lambda p: p.rps) if feasible else None
    above = [p for p in ordered if not constraints.meets(p) and (cap is None or p.level > cap.level)]
    broke = above[0] if above else None
    k = knee(ordered)
    slo_text = " and ".join(constraints.exprs) or "no SLO"
    lines = []
    if cap is not None:
        lines.append(f"Capacity within {slo_text}: {cap.rps:.0f} req/s at {cap.load_text} "
                     f"(p95 {_ms(cap.p95_ms)}, {cap.fail_ratio:.1%} failed).")
    elif ordered:
        lines.append(f"No level measured met {slo_text}; the lowest, {ordered[0].load_text}, gave "
                     f"{ordered[0].rps:.0f} req/s at p95 {_ms(ordered[0].p95_ms)}: try lower load.")
    if broke is not None:
        failed = [g.expr for g in constraints.gates(broke) if not g.passed]
        lines.append(f"At {broke.load_text} the SLO broke ({', '.join(failed)}): {broke.rps:.0f} req/s, "
                     f"p95 {_ms(broke.p95_ms)}.")
    elif cap is not None and cap is ordered[-1]:
        lines.append("The SLO held at every level measured: the capacity may be higher; add a higher level.")
    if k is not None and k is ordered[-1] and len(ordered) > 1:
        lines.append(f"No knee within the levels measured: throughput per unit of latency still rose at "
                     f"{k.load_text} ({k.rps:.0f} req/s at p50 {_ms(k.p50_ms)}); add higher levels to find it.")
    elif k is not None:
        lines.append(f"Knee of the curve (most throughput per unit of latency): {k.load_text}, {k.rps:.0f} req/s "
                     f"at p50 {_ms(k.p50_ms)}; beyond it added load mostly waits in queues.")
    saturated = [p for p in ordered if p.saturated]
    if saturated:
        lines.append(f"The load generator saturated at {saturated[0].load_text}: from there the figures measure "
                     "Locust, not the target; use more Locust processes.")
    if server_metrics is None:
        if cap is not None and cap.queue_ms is not None:
            lines.append(f"Server side at capacity: {cap.queue_ms:.2f} ms queue wait, "
                         f"{_ms(cap.compute_ms)} compute per batch, mean batch {cap.batch_size or 0:.1f} rows.")
    else:
        lines.append(f"Server-side metrics unavailable: {server_metrics}.")
    return CapacityVerdict(cap, broke, k, len(ordered), server_metrics, tuple(lines))


def _ms(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.1f} ms"


def target_inputs(spec: CapacitySpec) -> tuple[payload.InputSpec, ...]:
    """The target's inputs: from ``signature_path``, else its metadata (ValueError naming the flag to pass)."""
    if spec.signature_path:
        return payload.signature_from_file(spec.signature_path)
    return payload.fetch_signature(spec.host, spec.model_name, protocol=spec.protocol)


def create_capacity_sweep(registry: Registry, spec: CapacitySpec, *, name: str | None = None) -> str:
    label = name or f"capacity {spec.model_name} @ {spec.host} ({spec.protocol})"
    return jobs.create(registry, "sweep", {"mode": MODE, "spec": spec.to_dict()}, name=label)


def start(registry: Registry, spec: CapacitySpec, *, name: str | None = None) -> str:
    """Record a capacity sweep and launch its job (``python -m tuning --run-id ID``); returns the run id."""
    run_id = create_capacity_sweep(registry, spec, name=name)
    jobs.launch(registry, run_id)
    return run_id


def server_metrics_reason(host: str) -> str | None:
    """None when the target's Prometheus metrics can be read (a TuneSwarm endpoint), else why not."""
    from runs.metrics_scrape import scrape

    try:
        scrape(host)
    except (OSError, ValueError) as exc:
        return f"{host}/metrics could not be read as a TuneSwarm endpoint's ({lifecycle.one_line_error(exc)})"
    return None


def run_capacity(registry: Registry, run_id: str, *, on_point: Callable[[Point], None] | None = None) -> str:
    """Run (or resume) the capacity sweep ``run_id`` in this process; returns its final status."""
    from loadtest.runner import run_loadtest
    from runs.metrics_scrape import scrape, snapshot_delta

    spec = CapacitySpec.from_dict(registry.get_run(run_id).config["spec"])
    stop = StopFlag(registry, run_id)
    begin_in_process(registry, run_id)
    _stop_leftovers(registry, run_id)
    points = load_points(registry, run_id)
    constraints = spec.constraints()
    try:
        samples = spec.samples_path or str(payload.generated_payload_file(
            registry.home / "payloads", target_inputs(spec), payload.PayloadSpec()))
        reason = server_metrics_reason(spec.host)
        registry.update_summary(run_id, {"server_metrics": reason, "samples_path": samples})
        done = {p.level for p in points}
        for level in spec.levels:
            if level in done:
                continue
            # Past a level that broke the SLO every higher one breaks it too (the capacity is known).
            # A throughput plateau does not stop it: the curve past the knee is what this sweep shows.
            if points and not spec.climb_all and not constraints.meets(max(points, key=lambda p: p.level)):
                break
            stop.check()
            registry.set_progress(run_id, {"phase": "measuring", "level": level, "points": len(points)})
            config = spec.loadtest_config(level, samples)
            before = None if reason else _try_scrape(scrape, spec.host)
            result = run_loadtest(registry, config, parent_id=run_id,
                                  name=f"{spec.model_name} @ {level} {'req/s' if spec.open_loop else 'users'}")
            stop.check()
            after = None if before is None else _try_scrape(scrape, spec.host)
            delta = snapshot_delta(before, after) if before is not None and after is not None else None
            point = step_point(spec.params, config.users, float(level) if spec.open_loop else None, result,
                               delta, None)
            _record_point(registry, run_id, point)
            points.append(point)
            if on_point:
                on_point(point)
        registry.update_summary(run_id, {"verdict": verdict(points, constraints, reason).to_dict()})
        registry.finish_if_active(run_id, State.COMPLETED)
    except SweepStopped:
        _stop_leftovers(registry, run_id)
        registry.update_summary(run_id, {"verdict": verdict(points, constraints,
                                                             registry.get_run(run_id).summary.get("server_metrics"))
                                         .to_dict()})
        registry.finish_if_active(run_id, State.STOPPED, "stopped by request")
    except BaseException as exc:
        registry.finish_if_active(run_id, State.FAILED, lifecycle.one_line_error(exc))
        _stop_leftovers(registry, run_id)
        raise
    return registry.get_run(run_id).status


def _try_scrape(scrape: Callable[[str], Any], host: str) -> Any:
    try:
        return scrape(host)
    except (OSError, ValueError):
        return None
