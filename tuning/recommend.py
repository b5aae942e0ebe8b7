"""From measured points to a decision: constraints, objectives, the recommendation.

Constraints are SLO gates parsed by ``loadtest.slo`` (one parser for CI gates and
tuning). A point is *within SLO* when every gate passes on it; a config's
*capacity* is the highest throughput it reached at a point within SLO. The
objective ranks the feasible configs:

- ``throughput``: the highest capacity within SLO;
- ``latency``: the lowest latency (the SLO's percentile, p95 by default) at a given load;
- ``cpu``: the lowest server CPU per request at the config's capacity point.

The explanation is built from the same numbers, so every sentence can be checked
against the table.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from loadtest.slo import LATENCY_METRICS, GateResult, Slo, evaluate, parse_slos
from tuning.points import Point, config_label, group_by_config, param_order

OBJECTIVES = ("throughput", "latency", "cpu")
DEFAULT_SLOS = ("p95<=50ms", "fail_ratio<=0.01")


@dataclass(frozen=True)
class Constraints:
    """SLO gates every recommended point must pass."""

    slos: tuple[Slo, ...]

    @classmethod
    def parse(cls, exprs: Iterable[str]) -> Constraints:
        return cls(parse_slos(exprs))

    @property
    def exprs(self) -> list[str]:
        return [s.expr for s in self.slos]

    @property
    def latency_key(self) -> str:
        """The summary key of the latency the SLO is about (p95_ms if it names none)."""
        for slo in self.slos:
            if slo.metric in LATENCY_METRICS:
                return slo.summary_key
        return "p95_ms"

    def gates(self, point: Point) -> list[GateResult]:
        return evaluate(self.slos, point.metrics())

    def meets(self, point: Point) -> bool:
        return all(g.passed for g in self.gates(point))

    def violation(self, point: Point) -> float:
        """How far the point is from passing: 0 when it passes, else the worst relative miss."""
        worst = 0.0
        for gate in self.gates(point):
            if gate.passed:
                continue
            if gate.measured is None:
                return float("inf")
            if gate.op in ("<=", "<"):
                miss = gate.measured / gate.limit - 1.0 if gate.limit > 0 else gate.measured
            else:
                miss = gate.limit / gate.measured - 1.0 if gate.measured > 0 else float("inf")
            worst = max(worst, miss, 1e-9)
        return worst


@dataclass(frozen=True)
class ConfigResult:
    """One configuration's ladder, judged against the constraints."""

    config_id: str
    params: dict[str, Any]
    points: tuple[Point, ...]
    feasible: tuple[Point, ...]
    capacity_point: Point | None  # highest-throughput point within SLO
    score: float | None = None  # objective value, higher is better; None = not ranked

    @property
    def label(self) -> str:
        return config_label(self.params)

    @property
    def capacity_rps(self) -> float | None:
        return None if self.capacity_point is None else self.capacity_point.rps

    @property
    def capacity_per_core(self) -> float | None:
        return None if self.capacity_point is None else self.capacity_point.capacity_per_core

    def to_dict(self) -> dict[str, Any]:
        return {
            "config_id": self.config_id,
            "params": dict(self.params),
            "label": self.label,
            "capacity_rps": self.capacity_rps,
            "capacity_per_core": self.capacity_per_core,
            "capacity_users": None if self.capacity_point is None else self.capacity_point.users,
            "capacity_level": None if self.capacity_point is None else self.capacity_point.level,
            "score": self.score,
            "levels": len(self.points),
            "feasible_levels": len(self.feasible),
        }


@dataclass(frozen=True)
class Recommendation:
    objective: str
    constraints: tuple[str, ...]
    best: ConfigResult | None
    runner_up: ConfigResult | None
    ranking: tuple[ConfigResult, ...]  # feasible configs, best first
    baseline: ConfigResult | None  # the batching-off config, when the sweep measured one
    closest: Point | None  # when nothing is feasible: the point nearest to passing
    explanation: tuple[str, ...] = field(default_factory=tuple)
    at_users: int | None = None  # the latency objective's load level (users, or offered req/s)

    @property
    def met(self) -> bool:
        return self.best is not None

    @property
    def speedup_vs_baseline(self) -> float | None:
        if self.best is None or self.baseline is None:
            return None
        b, base = self.best.capacity_rps, self.baseline.capacity_rps
        if not b or not base:
            return None
        return b / base

    def to_dict(self) -> dict[str, Any]:
        return {
            "objective": self.objective,
            "constraints": list(self.constraints),
            "met": self.met,
            "best": None if self.best is None else self.best.to_dict(),
            "runner_up": None if self.runner_up is None else self.runner_up.to_dict(),
            "ranking": [r.to_dict() for r in self.ranking],
            "baseline": None if self.baseline is None else self.baseline.to_dict(),
            "closest": None if self.closest is None else self.closest.to_dict(),
            "speedup_vs_baseline": self.speedup_vs_baseline,
            "explanation": list(self.explanation),
            "at_users": self.at_users,
        }


def judge(points: Iterable[Point], constraints: Constraints) -> list[ConfigResult]:
    """Each config's points split into within-SLO or not, and its capacity point."""
    out = []
    for config_id, series in group_by_config(points).items():
        feasible = tuple(p for p in series if constraints.meets(p))
        cap = max(feasible, key=lambda p: p.rps) if feasible else None
        out.append(ConfigResult(config_id, dict(series[0].params), tuple(series), feasible, cap))
    return out


def default_at_users(results: Sequence[ConfigResult]) -> int | None:
    """The highest load level every config measured (so the latency comparison is fair)."""
    tops = [max(p.level for p in r.points) for r in results if r.points]
    return min(tops) if tops else None


def _score(result: ConfigResult, objective: str, constraints: Constraints, at_users: int | None) -> float | None:
    if result.capacity_point is None:
        return None
    if objective == "throughput":
        return result.capacity_point.rps
    if objective == "cpu":
        cpu = result.capacity_point.cpu_ms_per_request
        return None if cpu is None else -cpu
    # latency at a given load: the point at that level, if it is within SLO
    at = [p for p in result.feasible if p.level == at_users]
    if not at:
        return None
    latency = at[0].metrics().get(constraints.latency_key)
    return None if latency is None else -latency


def is_baseline(params: Mapping[str, Any]) -> bool:
    """The untuned default: batching off (one row per model execution)."""
    return params.get("max_batch_size") == 1


def recommend(
    points: Iterable[Point],
    constraints: Constraints,
    objective: str = "throughput",
    *,
    at_users: int | None = None,
) -> Recommendation:
    """Rank the configs measured in ``points`` and explain the choice."""
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}; got {objective!r}")
    points = list(points)
    judged = judge(points, constraints)
    if objective == "latency" and at_users is None:
        at_users = default_at_users(judged)
    scored = [
        ConfigResult(r.config_id, r.params, r.points, r.feasible, r.capacity_point,
                     _score(r, objective, constraints, at_users))
        for r in judged
    ]
    # Higher score first; ties go to the higher capacity, then to the order measured.
    ranking = sorted(
        (r for r in scored if r.score is not None),
        key=lambda r: (-(r.score or 0.0), -(r.capacity_rps or 0.0)),
    )
    # The strongest batching-off config is the reference, so the gain printed is the cautious one
    # (a grid may hold several: batch_timeout_ms does nothing at max_batch_size 1).
    baselines = [r for r in scored if is_baseline(r.params)]
    baseline = max(baselines, key=lambda r: r.capacity_rps or 0.0) if baselines else None
    best = ranking[0] if ranking else None
    runner_up = ranking[1] if len(ranking) > 1 else None
    closest = None
    if best is None and points:
        closest = min(points, key=lambda p: (constraints.violation(p), -p.rps))
    rec = Recommendation(
        objective=objective,
        constraints=tuple(constraints.exprs),
        best=best,
        runner_up=runner_up,
        ranking=tuple(ranking),
        baseline=baseline,
        closest=closest,
        at_users=at_users if objective == "latency" else None,
    )
    return Recommendation(**{**rec.__dict__, "explanation": tuple(explain(rec, scored, constraints))})


# -- the plain-language explanation -------------------------------------------------------


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f} ms"


def _us(cpu_ms: float | None) -> str:
    return "n/a" if cpu_ms is None else f"{cpu_ms * 1000:.0f} µs"


def _diff(a: Mapping[str, Any], b: Mapping[str, Any]) -> str:
    """``max_batch_size 1 -> 32, batch_timeout_ms 0 -> 2`` for the params that differ."""
    parts = [f"{k} {config_label({k: a.get(k)}).strip() if k == 'runtime' else _plain(a.get(k))} -> "
             f"{config_label({k: b.get(k)}).strip() if k == 'runtime' else _plain(b.get(k))}"
             for k in sorted(set(a) | set(b), key=param_order) if a.get(k) != b.get(k)]
    return ", ".join(parts)


def _plain(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _why_ceiling(result: ConfigResult, constraints: Constraints) -> str | None:
    """Why the ladder could not go higher than the capacity point."""
    cap = result.capacity_point
    if cap is None:
        return None
    after = [p for p in result.points if p.level > cap.level]
    if not after:
        return "that was the top of the load ladder, so the real capacity may be higher"
    nxt = after[0]
    failed = [g for g in constraints.gates(nxt) if not g.passed]
    if failed:
        g = failed[0]
        unit = "" if g.metric in ("fail_ratio", "failures", "rps") else " ms"
        measured = "n/a" if g.measured is None else f"{g.measured:.3g}{unit}"
        return f"at {nxt.load_text} {g.metric} reached {measured}, breaking {g.expr}"
    return f"at {nxt.load_text} throughput no longer grew ({nxt.rps:.0f} req/s)"


def _queue_sentence(ref: ConfigResult, best: ConfigResult) -> str | None:
    """Compare where time went at the highest load both configs measured."""
    ref_by_level = {p.level: p for p in ref.points}
    shared = [p.level for p in best.points if p.level in ref_by_level]
    for level in sorted(shared, reverse=True):
        a, b = ref_by_level[level], next(p for p in best.points if p.level == level)
        if a.queue_ms is None or b.queue_ms is None or not a.p99_ms or not b.p99_ms:
            continue
        share_a = min(1.0, a.queue_ms / a.p99_ms)
        share_b = min(1.0, b.queue_ms / b.p99_ms)
        verb = "cut it to" if b.queue_ms <= a.queue_ms else "raised it to"
        return (
            f"At {a.load_text} the mean queue wait was {a.queue_ms:.1f} ms, {share_a:.0%} of p99 "
            f"({a.p99_ms:.1f} ms), with {ref.label}; changing {_diff(ref.params, best.params)} "
            f"{verb} {b.queue_ms:.1f} ms, {share_b:.0%} of p99 ({b.p99_ms:.1f} ms)."
        )
    return None


def _nearest(best: ConfigResult, others: Sequence[ConfigResult]) -> ConfigResult | None:
    """The measured config differing from ``best`` in the fewest parameters (lowest capacity on ties)."""
    def distance(r: ConfigResult) -> int:
        keys = set(r.params) | set(best.params)
        return sum(r.params.get(k) != best.params.get(k) for k in keys)

    candidates = [r for r in others if r.config_id != best.config_id and r.points]
    if not candidates:
        return None
    return min(candidates, key=lambda r: (distance(r), r.capacity_rps or 0.0))


def explain(rec: Recommendation, results: Sequence[ConfigResult], constraints: Constraints) -> list[str]:
    """Sentences grounded in the measured numbers."""
    slo_text = " and ".join(rec.constraints) or "no constraints"
    if rec.best is None:
        lines = [f"No configuration met {slo_text} at any load level measured."]
        if rec.closest is not None:
            gates = [g for g in constraints.gates(rec.closest) if not g.passed]
            misses = "; ".join(
                f"{g.metric} {'n/a' if g.measured is None else f'{g.measured:.3g}'} vs limit {g.op} {g.limit:.3g}"
                for g in gates
            )
            lines.append(
                f"Closest: {rec.closest.label} at {rec.closest.load_text} "
                f"({rec.closest.rps:.0f} req/s): {misses}."
            )
        return lines

    best = rec.best
    cap = best.capacity_point
    assert cap is not None
    at_text = f"{rec.at_users} req/s offered" if cap.rate is not None else f"{rec.at_users} users"
    goal = {
        "throughput": "the highest throughput",
        "latency": f"the lowest {constraints.latency_key.removesuffix('_ms')} latency at {at_text}",
        "cpu": "the lowest server CPU per request",
    }[rec.objective]
    lines = [
        f"{best.label} gives {goal} within {slo_text}: {cap.rps:.0f} req/s at {cap.load_text} "
        f"(p95 {_ms(cap.p95_ms)}, p99 {_ms(cap.p99_ms)}, fail ratio {cap.fail_ratio:.2%})."
    ]
    if cap.cpu_ms_per_request is not None:
        per_core = cap.capacity_per_core
        lines.append(
            f"The server spent {_us(cap.cpu_ms_per_request)} of CPU per request there, "
            f"so one core serves about {per_core:.0f} req/s."
        )
    why = _why_ceiling(best, constraints)
    if why:
        lines.append(f"Capacity stops at {cap.rps:.0f} req/s because {why}.")
    if cap.saturated:
        lines.append(
            "Locust itself saturated at that level (the load generator, not the server, was the limit), so the "
            "endpoint's real capacity is at least this; give Locust more cores (--processes) to find it."
        )
    if cap.batch_size is not None:
        lines.append(f"The batcher formed batches of {cap.batch_size:.1f} rows on average at that load.")
    if rec.runner_up is not None and rec.runner_up.capacity_rps:
        ru = rec.runner_up
        lines.append(
            f"Runner-up: {ru.label} at {ru.capacity_rps:.0f} req/s within SLO "
            f"({(1 - ru.capacity_rps / cap.rps):.0%} less)." if rec.objective == "throughput" and cap.rps
            else f"Runner-up: {ru.label} ({ru.capacity_rps:.0f} req/s within SLO)."
        )
    base = rec.baseline
    if base is not None and base.config_id != best.config_id:
        if base.capacity_rps:
            lines.append(
                f"With batching off ({base.label}) the endpoint sustains {base.capacity_rps:.0f} req/s within SLO; "
                f"the recommendation is {cap.rps / base.capacity_rps:.1f}x that."
            )
        else:
            lines.append(f"With batching off ({base.label}) no load level met {slo_text}.")
    ref = base if base is not None and base.config_id != best.config_id else _nearest(best, results)
    if ref is not None:
        sentence = _queue_sentence(ref, best)
        if sentence:
            lines.append(sentence)
        ref_cap = ref.capacity_point or (ref.points[-1] if ref.points else None)
        if ref_cap is not None and ref_cap.cpu_ms_per_request and cap.cpu_ms_per_request:
            lines.append(
                f"Server CPU per request: {_us(ref_cap.cpu_ms_per_request)} with {ref.label} vs "
                f"{_us(cap.cpu_ms_per_request)} with {best.label}."
            )
    return lines


def _load_cell(p: Point) -> str:
    return f"{p.rate:g}/s" if p.rate is not None else str(p.users)


def format_table(results: Sequence[ConfigResult] | Iterable[Point], constraints: Constraints) -> str:
    """A fixed-width table of every point, marking the ones within SLO."""
    points: list[Point] = []
    for item in results:
        if isinstance(item, ConfigResult):
            points.extend(item.points)
        else:
            points.append(item)
    header = (f"{'config':<28} {'load':>7} {'req/s':>8} {'p50':>7} {'p95':>7} {'p99':>7} "
              f"{'fail':>6} {'queue':>7} {'batch':>6} {'cpu/req':>8}  SLO")
    rows = [header, "-" * len(header)]

    def num(v: float | None, fmt: str) -> str:
        return "-" if v is None else format(v, fmt)

    for p in points:
        cpu = None if p.cpu_ms_per_request is None else p.cpu_ms_per_request * 1000
        rows.append(
            f"{p.label[:28]:<28} {_load_cell(p):>7} {p.rps:>8.1f} {num(p.p50_ms, '7.1f')} {num(p.p95_ms, '7.1f')} "
            f"{num(p.p99_ms, '7.1f')} {p.fail_ratio:>6.1%} {num(p.queue_ms, '7.2f')} {num(p.batch_size, '6.1f')} "
            f"{num(cpu, '6.0f') + 'µs':>8}  {'ok' if constraints.meets(p) else 'FAIL'}"
        )
    return "\n".join(rows)
