"""The serving sweep: a resumable, stoppable job that measures configs up a load ladder.

A sweep is one ``sweep`` run in the registry. Its config holds the ``SweepSpec``;
its summary holds every finished point (``summary["points"]``), appended as soon
as the point is measured, so a sweep that dies (killed, machine rebooted) and is
started again with the same run id skips what it already measured: the strategy
and the ladder rule are pure functions of those points. Each load step is also a
child ``loadtest`` run (``parent_id`` = the sweep), with its own time series.

Stopping (registry stop flag or SIGTERM) ends the current step, stops the endpoint
and Locust, keeps the finished points and records status ``stopped``.
"""

from __future__ import annotations

import json
import math
import os
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.serving.config import DEFAULT_CONFIG, ServingConfig
from runs import jobs, lifecycle
from runs.configs import known_fields, plain_dict
from runs.registry import ARTIFACTS_DIRNAME, Registry, State
from tuning.exports import write_exports
from tuning.ladder import DEFAULT_USERS, MIN_THROUGHPUT_GAIN, check_levels, stop_climbing
from tuning.points import Point, config_key, config_label, group_by_config
from tuning.recommend import DEFAULT_SLOS, OBJECTIVES, Constraints, Recommendation, judge, recommend
from tuning.space import STRATEGIES, SearchSpace, apply_params, next_configs

DEFAULT_STEP_S = 8.0
MIN_STEP_S = 2.0
MAX_STEP_S = 600.0
WARMUP_REQUESTS = 30  # sequential requests after /readyz, so the first measured step is not a cold start
ENDPOINT_READY_TIMEOUT_S = 120.0
MODEL_NAME = "model"
EXPORT_DIRNAME = "recommended"
OPEN_LOOP_RPS_PER_USER = 10.0
OPEN_LOOP_MAX_USERS = 1000


@dataclass(frozen=True)
class SweepSpec:
    """Everything a sweep needs; stored as the sweep run's config so a restart can resume it."""

    model_path: str
    space: dict[str, list[Any]]
    users: tuple[int, ...] = DEFAULT_USERS
    rates: tuple[int, ...] = ()  # when given: an open-loop ladder of offered requests/s instead of users
    slos: tuple[str, ...] = DEFAULT_SLOS
    objective: str = "throughput"
    strategy: str = "grid"
    step_s: float = DEFAULT_STEP_S
    base: dict[str, Any] = field(default_factory=lambda: DEFAULT_CONFIG.to_dict())  # knobs the grid leaves alone
    min_gain: float = MIN_THROUGHPUT_GAIN
    patience: int = 1
    at_users: int | None = None
    verify_top: int = 2  # after the search, re-measure this many best configs (and batching off) back to back
    instances_per_request: int = 1
    processes: int = 0  # Locust processes per step (0: one, as loadtest.LoadTestConfig)

    def __post_init__(self) -> None:
        object.__setattr__(self, "users", check_levels(self.users))
        object.__setattr__(self, "rates", check_levels(self.rates, what="rates") if self.rates else ())
        object.__setattr__(self, "slos", tuple(self.slos))
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}; got {self.objective!r}")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}; got {self.strategy!r}")
        if not (isinstance(self.step_s, int | float) and MIN_STEP_S <= self.step_s <= MAX_STEP_S):
            raise ValueError(f"step_s must be {MIN_STEP_S:g}..{MAX_STEP_S:g} seconds; got {self.step_s!r}")
        if not isinstance(self.verify_top, int) or not 0 <= self.verify_top <= 8:
            raise ValueError(f"verify_top must be an integer 0..8; got {self.verify_top!r}")
        if not 0 <= self.min_gain < 1:
            raise ValueError(f"min_gain must be a fraction in [0, 1); got {self.min_gain!r}")
        self.search_space()  # validates names and values
        self.constraints()  # validates the SLO expressions
        ServingConfig.from_dict(dict(self.base))  # validates the base config

    @property
    def open_loop(self) -> bool:
        return bool(self.rates)

    @property
    def levels(self) -> tuple[int, ...]:
        """The ladder: offered requests/s for an open-loop sweep, else user counts."""
        return self.rates or self.users

    def search_space(self) -> SearchSpace:
        return SearchSpace.from_mapping(self.space)

    def constraints(self) -> Constraints:
        return Constraints.parse(self.slos)

    def base_config(self) -> ServingConfig:
        return ServingConfig.from_dict(dict(self.base))

    def serving_config(self, params: dict[str, Any]) -> ServingConfig:
        return apply_params(self.base_config(), params)

    def to_dict(self) -> dict[str, Any]:
        return plain_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SweepSpec:
        return cls(**known_fields(cls, d, "sweep spec"))


# -- reading a sweep back from the registry -----------------------------------------------


POINTS_KEY = "points"  # summary key of the search pass's points
VERIFY_KEY = "verify_points"  # summary key of the finalists' re-measurement


def load_points(registry: Registry, run_id: str, key: str = POINTS_KEY) -> list[Point]:
    """The finished points of a sweep (or of its verification pass), in the order measured."""
    return [Point.from_dict(d) for d in registry.get_run(run_id).summary.get(key, [])]


def config_done(series: list[Point], spec: SweepSpec, constraints: Constraints) -> bool:
    """A config is finished when the ladder rule stopped it or every level was measured."""
    measured = {p.level for p in series}
    if all(level in measured for level in spec.levels):
        return True
    return bool(stop_climbing(series, constraints.meets, min_gain=spec.min_gain, patience=spec.patience))


def config_scores(points: list[Point], spec: SweepSpec, constraints: Constraints) -> dict[str, float | None]:
    """Capacity within SLO of each finished config (None when no level met the SLO): the strategy's score."""
    by_config = group_by_config(points)
    scores: dict[str, float | None] = {}
    for result in judge(points, constraints):
        if config_done(by_config[result.config_id], spec, constraints):
            scores[result.config_id] = result.capacity_rps
    return scores


def plan(points: list[Point], spec: SweepSpec) -> tuple[dict[str, Any] | None, list[int]]:
    """The next config to measure and its remaining load levels; (None, []) when the sweep is done.

    A config interrupted half-way up its ladder comes first, so a resumed sweep
    finishes it before starting another.
    """
    constraints = spec.constraints()
    space = spec.search_space()
    by_config = group_by_config(points)
    for series in by_config.values():
        if not config_done(series, spec, constraints):
            measured = {p.level for p in series}
            return dict(series[0].params), [level for level in spec.levels if level not in measured]
    todo = next_configs(space, spec.strategy, config_scores(points, spec, constraints))
    if not todo:
        return None, []
    return todo[0], list(spec.levels)


def finalists(points: list[Point], spec: SweepSpec) -> list[dict[str, Any]]:
    """Configs to re-measure back to back once the search is done: the best ``verify_top`` and batching off.

    One pass over many configs on a shared machine ranks some of them on a quiet
    moment and others on a busy one; measuring the few that matter one after the
    other, under the same background, keeps a lucky outlier from being recommended.
    Empty when there is nothing to compare (fewer than two finalists).
    """
    if spec.verify_top <= 0:
        return []
    rec = recommend(points, spec.constraints(), spec.objective, at_users=spec.at_users)
    chosen = [dict(r.params) for r in rec.ranking[: spec.verify_top]]
    if rec.baseline is not None and dict(rec.baseline.params) not in chosen:
        chosen.append(dict(rec.baseline.params))
    return chosen if len(chosen) >= 2 else []


def plan_verify(points: list[Point], verified: list[Point], spec: SweepSpec) -> tuple[dict[str, Any] | None, list[int]]:
    """The next finalist to re-measure and its remaining levels; (None, []) when verification is done."""
    constraints = spec.constraints()
    for params in finalists(points, spec):
        series = [p for p in verified if p.config_id == config_key(params)]
        if not config_done(series, spec, constraints):
            measured = {p.level for p in series}
            return params, [level for level in spec.levels if level not in measured]
    return None, []


def total_configs(spec: SweepSpec) -> int:
    """Configs the strategy will measure (exact for the grid, the usual count for coordinate ascent)."""
    space = spec.search_space()
    if spec.strategy == "grid":
        return space.size
    return max(1, sum(len(v) for _, v in space.params) - (len(space.params) - 1))


# Rough costs around the measured seconds, for the estimate shown before a sweep starts: an endpoint
# start (process, TensorFlow import, model load, warm-up) and Locust's start and stop around each step.
ENDPOINT_START_S = 15.0
STEP_OVERHEAD_S = 3.0


@dataclass(frozen=True)
class SweepEstimate:
    """How long a sweep takes at most: every config climbs its whole ladder (the ladder rule often stops sooner)."""

    configs: int
    levels: int
    step_s: float
    finalists: int  # configs re-measured back to back after the search (0: no verification)

    @property
    def per_config_s(self) -> float:
        return ENDPOINT_START_S + self.levels * (self.step_s + STEP_OVERHEAD_S)

    @property
    def search_s(self) -> float:
        return self.configs * self.per_config_s

    @property
    def verify_s(self) -> float:
        return self.finalists * self.per_config_s

    @property
    def total_s(self) -> float:
        return self.search_s + self.verify_s

    def text(self) -> str:
        """``up to 6 min 30 s: 6 configs × 3 levels × 8 s steps, then 3 finalists re-measured (≈ 2 min 9 s)``."""
        def minutes(seconds: float) -> str:
            m, s = divmod(round(seconds), 60)
            return f"{m} min {s:02d} s" if m else f"{s} s"

        text = (f"up to {minutes(self.total_s)}: {self.configs} config{'s' if self.configs != 1 else ''} × "
                f"{self.levels} level{'s' if self.levels != 1 else ''} × {self.step_s:g} s steps")
        if self.finalists:
            text += f", then {self.finalists} finalists re-measured (≈ {minutes(self.verify_s)})"
        return text


def estimate(spec: SweepSpec) -> SweepEstimate:
    """The sweep's duration from its grid, ladder and step time, before it starts."""
    n = total_configs(spec)
    # finalists(): the best verify_top and batching off, only when there are two or more to compare
    finalists_n = min(spec.verify_top + 1, n) if spec.verify_top > 0 and n >= 2 else 0
    return SweepEstimate(configs=n, levels=len(spec.levels), step_s=float(spec.step_s), finalists=finalists_n)


# -- measuring ---------------------------------------------------------------------------


# A stop unwinds the sweep with the job contract's own exception: waits on child jobs
# (runs.jobs.wait_job / wait_ready) raise it too when the sweep's job is asked to stop.
SweepStopped = lifecycle.JobStopped


@dataclass
class StopFlag:
    """The sweep's stop request: a signal to its job or the registry's flag (polled between and during steps)."""

    registry: Registry
    run_id: str

    def __call__(self) -> bool:
        ctx = lifecycle.current()
        return (ctx is not None and ctx.signalled) or self.registry.stop_requested(self.run_id)

    def check(self) -> None:
        if self():
            raise SweepStopped()


def _warm(url: str, body: bytes, n: int = WARMUP_REQUESTS) -> None:
    """Sequential requests so caches, allocators and compiled paths are warm before measuring."""
    req = f"{url.rstrip('/')}/v1/models/{MODEL_NAME}:predict"
    for _ in range(n):
        try:
            with urllib.request.urlopen(
                urllib.request.Request(req, data=body, headers={"Content-Type": "application/json"}), timeout=10
            ) as resp:
                resp.read()
        except OSError:
            return  # the first step will record the failures honestly


def _warm_body(model_path: str) -> bytes:
    from agent.export import load_samples

    rows = load_samples(model_path) or []
    return json.dumps({"instances": rows[:1]}).encode()


MeasureStep = Callable[..., Point]


def measure_step(
    registry: Registry,
    sweep_id: str,
    spec: SweepSpec,
    params: dict[str, Any],
    endpoint: Any,
    level: int,
    stop: StopFlag,
) -> Point:
    """One Locust step at ``level`` against a running endpoint, with the server's own accounting.

    ``level`` is a user count, or for an open-loop sweep the offered requests/s
    (Locust's ``rate`` shape: users paced so the offered rate holds whatever the latency).
    """
    from loadtest.runner import LoadTestConfig, run_loadtest
    from runs.metrics_scrape import scrape, server_cpu_seconds, snapshot_delta

    before, cpu_before = scrape(endpoint.url), server_cpu_seconds(endpoint.pid)
    rate = float(level) if spec.open_loop else None
    users = open_loop_users(level) if spec.open_loop else level
    config = LoadTestConfig(
        host=endpoint.url,
        model_name=MODEL_NAME,
        users=users,
        spawn_rate=float(users),
        run_time_s=spec.step_s,
        shape="rate" if spec.open_loop else "constant",
        target_rps=rate or 0.0,
        samples_path=str(Path(spec.model_path).parent / "samples.json"),
        instances_per_request=spec.instances_per_request,
        processes=spec.processes,
    )
    result = run_loadtest(registry, config, serve_run_id=endpoint.run_id, parent_id=sweep_id,
                          name=f"{config_label(params)} @ {level} {'req/s' if spec.open_loop else 'users'}")
    after, cpu_after = scrape(endpoint.url), server_cpu_seconds(endpoint.pid)
    delta = snapshot_delta(before, after)
    served = delta.requests or 0
    cpu_ms = (cpu_after - cpu_before) * 1000.0 / served if served else None
    return step_point(params, users, rate, result, delta, cpu_ms)


def step_point(params: dict[str, Any], users: int, rate: float | None, result: Any, delta: Any,
               cpu_ms: float | None) -> Point:
    """A point from one load step's result and (when the server could be read) its metrics' delta."""
    summary = result.summary
    return Point(
        config_id=config_key(params),
        params=dict(params),
        users=users,
        rate=rate,
        rps=float(summary.get("rps") or 0.0),
        p50_ms=_num(summary.get("p50_ms")),
        p95_ms=_num(summary.get("p95_ms")),
        p99_ms=_num(summary.get("p99_ms")),
        requests=int(summary.get("requests") or 0),
        failures=int(summary.get("failures") or 0),
        fail_ratio=float(summary.get("fail_ratio") if summary.get("fail_ratio") is not None else 1.0),
        queue_ms=None if delta is None else _ms(delta.mean_queue_wait_s),
        compute_ms=None if delta is None else _ms(delta.mean_compute_s),
        batch_size=None if delta is None else _num(delta.mean_batch_size),
        cpu_ms_per_request=cpu_ms,
        saturated=bool(summary.get("saturated")),
        loadtest_run_id=result.run_id,
    )


def open_loop_users(rate: int) -> int:
    """Users for an open-loop step: each paced to ~10 requests/s, so a 100 ms answer still keeps pace."""
    return max(1, min(OPEN_LOOP_MAX_USERS, math.ceil(rate / OPEN_LOOP_RPS_PER_USER)))


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else _num(seconds * 1000.0)


def _num(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


# -- the job -----------------------------------------------------------------------------


def climb(
    registry: Registry,
    run_id: str,
    spec: SweepSpec,
    params: dict[str, Any],
    levels: list[int] | tuple[int, ...],
    series: list[Point],
    stop: StopFlag,
    *,
    measure: MeasureStep = measure_step,
    before_step: Callable[[int], None] | None = None,
    after_step: Callable[[Point], None] | None = None,
    key: str = POINTS_KEY,
) -> list[Point]:
    """Serve ``params`` and climb ``levels`` until the ladder rule stops it; every point is recorded at once.

    ``series`` holds the config's points measured earlier (a resumed config) and
    grows in place. The endpoint is stopped whatever happens.
    """
    from agent.serving.process import start_endpoint, stop_endpoint

    endpoint = start_endpoint(registry, spec.model_path, spec.serving_config(params), name=MODEL_NAME,
                              parent_id=run_id)
    try:
        _warm(endpoint.url, _warm_body(spec.model_path))
        for level in levels:
            stop.check()
            if before_step:
                before_step(level)
            point = measure(registry, run_id, spec, params, endpoint, level, stop)
            stop.check()  # a step cut short by a stop is not a finished point
            _record_point(registry, run_id, point, key)
            series.append(point)
            if after_step:
                after_step(point)
            if stop_climbing(series, spec.constraints().meets, min_gain=spec.min_gain, patience=spec.patience):
                break
    finally:
        stop_endpoint(registry, endpoint.run_id)
    return series


def _record_point(registry: Registry, run_id: str, point: Point, key: str = POINTS_KEY) -> None:
    summary = registry.get_run(run_id).summary
    step = len(summary.get(POINTS_KEY, [])) + len(summary.get(VERIFY_KEY, []))  # one step per point, both passes
    points = [*summary.get(key, []), point.to_dict()]
    registry.update_summary(run_id, {key: points})
    registry.log_metrics(run_id, step, {
        "users": point.users, "level": point.level, "rps": point.rps, "p95_ms": point.p95_ms, "p99_ms": point.p99_ms,
        "fail_ratio": point.fail_ratio, "cpu_ms_per_request": point.cpu_ms_per_request,
    })


def _stop_leftovers(registry: Registry, run_id: str) -> None:
    """Stop endpoints/Locust runs a previous attempt of this sweep left running (it was killed)."""
    from runs.jobs import stop_job

    for child in registry.list_runs(status=("pending", "running")):
        if child.parent_id == run_id:
            stop_job(registry, child.id, grace_s=5.0)


def finalize(
    registry: Registry, run_id: str, spec: SweepSpec, points: list[Point], verified: list[Point] | None = None
) -> dict[str, Any]:
    """Recommend, write the exports into the run's artifacts, store both in the summary.

    When the finalists were re-measured, the recommendation ranks those numbers
    (measured back to back); the search pass's ranking is kept beside it.
    """
    search = recommend(points, spec.constraints(), spec.objective, at_users=spec.at_users)
    out: dict[str, Any] = {"search_recommendation": search.to_dict()}
    rec = search
    if verified:
        rec = recommend(verified, spec.constraints(), spec.objective, at_users=spec.at_users)
        out["verified_configs"] = sorted({p.config_id for p in verified})
    out["recommendation"] = rec.to_dict()
    if verified:
        n = len({p.config_id for p in verified})
        note = (f"The {n} finalists of the search were re-measured back to back, under the same background "
                f"load; the figures below are from that pass.")
        if search.best is not None and rec.best is not None:
            note += (f" The search pass had ranked {search.best.label} first at {search.best.capacity_rps:.0f} "
                     f"req/s.")
        out["recommendation"]["explanation"] = [note, *out["recommendation"]["explanation"]]
    if rec.best is not None:
        config = spec.serving_config(rec.best.params)
        paths = write_exports(
            registry.artifacts_dir(run_id) / EXPORT_DIRNAME, config, recommendation=out["recommendation"],
            comment=f"TuneSwarm sweep {run_id}: {rec.best.label}, {rec.best.capacity_rps:.0f} req/s within "
                    f"{' and '.join(rec.constraints)}",
        )
        out["recommended_config"] = config.to_dict()
        out["exports"] = {k: str(v) for k, v in paths.items()}
    registry.update_summary(run_id, out)
    return out


def run_sweep(
    registry: Registry,
    run_id: str,
    *,
    measure: MeasureStep = measure_step,
    on_point: Callable[[Point], None] | None = None,
) -> str:
    """Run (or resume) the sweep ``run_id``; returns its final status."""
    run = registry.get_run(run_id)
    spec = SweepSpec.from_dict(run.config["spec"])
    stop = StopFlag(registry, run_id)
    begin_in_process(registry, run_id)
    _stop_leftovers(registry, run_id)
    points = load_points(registry, run_id)
    resumed = len(points)
    n_total = total_configs(spec)
    started = time.monotonic()
    try:
        while True:
            stop.check()
            params, levels = plan(points, spec)
            if params is None:
                break
            done_configs = len({p.config_id for p in points})
            label = config_label(params)
            registry.set_progress(run_id, {
                "phase": "starting endpoint", "config": label, "configs_done": done_configs,
                "configs_total": n_total, "points": len(points), "resumed_points": resumed,
                "elapsed_s": time.monotonic() - started,
            })
            series = [p for p in points if p.config_id == config_key(params)]

            def progress(level: int, label: str = label, done_configs: int = done_configs) -> None:
                registry.set_progress(run_id, {
                    "phase": "measuring", "config": label, "level": level,
                    "load": f"{level} req/s offered" if spec.open_loop else f"{level} users",
                    "configs_done": done_configs,
                    "configs_total": n_total, "points": len(points), "resumed_points": resumed,
                    "elapsed_s": time.monotonic() - started,
                })

            def record(point: Point) -> None:
                points.append(point)
                if on_point:
                    on_point(point)

            climb(registry, run_id, spec, params, levels, series, stop, measure=measure, before_step=progress,
                  after_step=record)
        verified = load_points(registry, run_id, VERIFY_KEY)

        def record_verified(point: Point) -> None:
            verified.append(point)
            if on_point:
                on_point(point)

        while True:
            stop.check()
            params, levels = plan_verify(points, verified, spec)
            if params is None:
                break
            label = config_label(params)
            registry.set_progress(run_id, {
                "phase": "verifying finalists", "config": label, "configs_done": n_total, "configs_total": n_total,
                "points": len(points), "resumed_points": resumed, "elapsed_s": time.monotonic() - started,
            })
            series = [p for p in verified if p.config_id == config_key(params)]
            climb(registry, run_id, spec, params, levels, series, stop, measure=measure,
                  after_step=record_verified, key=VERIFY_KEY)
        finalize(registry, run_id, spec, points, verified)
        registry.set_progress(run_id, {"phase": "done", "configs_done": len({p.config_id for p in points}),
                                       "configs_total": n_total, "points": len(points),
                                       "resumed_points": resumed, "elapsed_s": time.monotonic() - started})
        registry.finish_if_active(run_id, State.COMPLETED)
    except SweepStopped:
        _stop_leftovers(registry, run_id)  # in case the stop landed while an endpoint was being stopped
        if points:
            finalize(registry, run_id, spec, points, load_points(registry, run_id, VERIFY_KEY))
        registry.finish_if_active(run_id, State.STOPPED, "stopped by request")
    except BaseException as exc:
        registry.finish_if_active(run_id, State.FAILED, lifecycle.one_line_error(exc))
        _stop_leftovers(registry, run_id)
        raise
    return registry.get_run(run_id).status


def begin_in_process(registry: Registry, run_id: str) -> None:
    """Make a sweep run ``running`` in this process: resumed from where it ended, with this pid recorded.

    Inside its job, ``job_context`` has recorded the pid already; called in-process
    (tests, benches) the run still names a live process for the reaper.
    """
    if not registry.get_run(run_id).active:
        registry.reopen(run_id)
    ctx = lifecycle.current()
    if ctx is None or ctx.run_id != run_id:
        registry.mark_started(run_id, os.getpid(), lifecycle.process_start_time(os.getpid()))


def confirm(
    registry: Registry,
    spec: SweepSpec,
    configs: list[dict[str, Any]],
    *,
    name: str | None = None,
    rounds: int = 1,
    on_point: Callable[[Point], None] | None = None,
) -> tuple[str, Recommendation]:
    """Re-measure a few configs (e.g. the baseline and the recommendation) in a run of their own.

    A sweep's numbers come from one pass on a noisy machine; a separate run
    checks that the winner still wins. With ``rounds`` > 1 the configs take turns
    (A, B, A, B) so a burst of background load hits both alike, and each config's
    capacity is its best round.
    """
    if not 1 <= rounds <= 10:
        raise ValueError(f"rounds must be 1..10; got {rounds}")
    run_id = registry.create_run("sweep", {"mode": "confirm", "spec": spec.to_dict(), "configs": configs,
                                           "rounds": rounds}, name=name or "confirmation run")
    begin_in_process(registry, run_id)
    stop = StopFlag(registry, run_id)
    try:
        for _ in range(rounds):
            for params in configs:
                climb(registry, run_id, spec, params, spec.levels, [], stop, after_step=on_point)
        rec = recommend(load_points(registry, run_id), spec.constraints(), spec.objective, at_users=spec.at_users)
        registry.update_summary(run_id, {"recommendation": rec.to_dict()})
        registry.finish_if_active(run_id, State.COMPLETED)
        return run_id, rec
    except BaseException as exc:
        registry.finish_if_active(run_id, State.FAILED, lifecycle.one_line_error(exc))
        raise


def model_label(registry: Registry, model_path: str | os.PathLike[str]) -> str:
    """A model named for people: the name of the run whose artifacts hold it, else its file or folder name."""
    path = Path(model_path).resolve()
    runs_root = (registry.home / ARTIFACTS_DIRNAME).resolve()
    for folder in path.parents:
        if folder.parent == runs_root:
            try:
                return registry.get_run(folder.name).name
            except KeyError:
                break
    return path.parent.name if path.stem in ("model", "saved_model") else path.stem


def create_sweep(registry: Registry, spec: SweepSpec, *, name: str | None = None) -> str:
    """A pending sweep run holding ``spec``; run it with ``launch_sweep`` (a job) or ``execute`` (here)."""
    label = name or f"sweep of {model_label(registry, spec.model_path)}: {', '.join(spec.space)}"
    return jobs.create(registry, "sweep", {"mode": "serving", "spec": spec.to_dict()}, name=label)


def start(registry: Registry, spec: SweepSpec, *, name: str | None = None) -> str:
    """Record a serving sweep and launch its job (``python -m tuning --run-id ID``); returns the run id."""
    run_id = create_sweep(registry, spec, name=name)
    jobs.launch(registry, run_id)
    return run_id


def launch_sweep(registry: Registry, run_id: str) -> jobs.JobHandle:
    """Launch (or relaunch, to resume) the job of a recorded sweep, serving or model."""
    if not registry.get_run(run_id).active:
        registry.reopen(run_id)
    return jobs.launch(registry, run_id)


start_sweep_job = launch_sweep  # the older name


def execute(registry: Registry, run_id: str, *, on_point: Callable[[Point], None] | None = None) -> str:
    """The job: run (or resume) sweep ``run_id`` of any mode inside ``job_context``; returns its status."""
    if not registry.get_run(run_id).active:
        registry.reopen(run_id)
    with lifecycle.job_context(registry, run_id):
        mode = registry.get_run(run_id).config.get("mode")
        if mode == "models":
            from tuning.model_sweep import run_model_sweep

            run_model_sweep(registry, run_id)
        elif mode == "capacity":
            from tuning.capacity import run_capacity

            run_capacity(registry, run_id, on_point=on_point)
        else:
            run_sweep(registry, run_id, on_point=on_point)
    return registry.get_run(run_id).status
