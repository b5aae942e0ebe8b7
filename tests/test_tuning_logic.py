"""Pure tuning logic on recorded data: the ladder rule, strategies, constraints, objectives, Pareto, exports."""

from __future__ import annotations

import pytest

from agent.serving.config import NO_BATCHING, ServingConfig
from tuning.exports import parse_batching_text, tf_serving_batching_text, write_exports
from tuning.ladder import parse_levels, stop_climbing
from tuning.pareto import MODEL_OBJECTIVES, dominates, pareto_front, pareto_mask
from tuning.points import Point, config_key, points_from_json, points_to_json
from tuning.recommend import Constraints, format_table, recommend
from tuning.space import SearchSpace, apply_params, coordinate_path, grid, next_configs, parse_grid_arg


def pt(params: dict, users: int, rps: float, p95: float, *, p99: float | None = None, fail: float = 0.0,
       queue: float | None = None, compute: float | None = None, cpu: float | None = None,
       batch: float | None = None) -> Point:
    return Point(config_key(params), dict(params), users, rps, p50_ms=p95 / 2, p95_ms=p95,
                 p99_ms=p99 if p99 is not None else p95 * 1.3, requests=int(rps * 8),
                 failures=int(rps * 8 * fail), fail_ratio=fail, queue_ms=queue, compute_ms=compute,
                 cpu_ms_per_request=cpu, batch_size=batch)


# A sweep recorded on the digits model (numbers shaped like a real 2-core run).
BASE = {"max_batch_size": 1, "batch_timeout_ms": 0.0}
B8 = {"max_batch_size": 8, "batch_timeout_ms": 2.0}
B32 = {"max_batch_size": 32, "batch_timeout_ms": 2.0}
RECORDED = [
    pt(BASE, 1, 300, 4.0, queue=0.1, compute=1.5, cpu=2.8, batch=1),
    pt(BASE, 16, 420, 45.0, p99=60, queue=30.0, compute=1.4, cpu=2.3, batch=1),
    pt(BASE, 64, 430, 160.0, p99=200, queue=140.0, compute=1.4, cpu=2.3, batch=1),
    pt(B8, 1, 250, 5.0, queue=2.0, compute=1.6, cpu=2.9, batch=1),
    pt(B8, 16, 900, 20.0, p99=28, queue=8.0, compute=2.0, cpu=1.1, batch=5.5),
    pt(B8, 64, 1100, 70.0, p99=90, queue=45.0, compute=2.2, cpu=0.9, batch=8),
    pt(B32, 1, 240, 5.5, queue=2.0, compute=1.6, cpu=3.0, batch=1),
    pt(B32, 16, 950, 18.0, p99=24, queue=6.0, compute=2.5, cpu=1.0, batch=12),
    pt(B32, 64, 1500, 42.0, p99=49, queue=9.0, compute=4.0, cpu=0.6, batch=28),
]
SLO = Constraints.parse(["p95<=50ms", "fail_ratio<=0.01"])


# -- the ladder's early-stop rule ---------------------------------------------------------


def test_ladder_keeps_climbing_while_throughput_grows_within_slo() -> None:
    series = [pt(B32, 1, 240, 5), pt(B32, 16, 950, 18)]
    assert not stop_climbing(series, SLO.meets)
    assert not stop_climbing(series[:1], SLO.meets)
    assert not stop_climbing([], SLO.meets)


def test_ladder_stops_when_the_slo_breaks() -> None:
    series = [pt(BASE, 1, 300, 4), pt(BASE, 16, 420, 51)]
    decision = stop_climbing(series, SLO.meets)
    assert decision.stop and decision.reason == "slo"
    failing = [pt(BASE, 1, 300, 4, fail=0.2)]
    assert stop_climbing(failing, SLO.meets).reason == "slo"


def test_ladder_stops_when_a_step_adds_less_than_five_percent() -> None:
    assert stop_climbing([pt(B8, 1, 1000, 5), pt(B8, 16, 1049, 10)], SLO.meets).reason == "plateau"
    # 5% or more is still growth
    assert not stop_climbing([pt(B8, 1, 1000, 5), pt(B8, 16, 1050, 10)], SLO.meets)
    # a drop in throughput is a plateau too
    assert stop_climbing([pt(B8, 1, 1000, 5), pt(B8, 16, 700, 10)], SLO.meets).reason == "plateau"
    # compared with the best earlier level, not just the previous one
    series = [pt(B8, 1, 1000, 5), pt(B8, 8, 900, 8), pt(B8, 16, 1020, 10)]
    assert stop_climbing(series, SLO.meets, patience=1).reason == "plateau"
    # patience=2 waits for two flat steps in a row
    assert not stop_climbing([pt(B8, 1, 1000, 5), pt(B8, 8, 1010, 8)], SLO.meets, patience=2)
    assert stop_climbing(series, SLO.meets, patience=2).reason == "plateau"


def test_levels_parse_and_reject_bad_input() -> None:
    assert parse_levels("1,8,32,64") == (1, 8, 32, 64)
    for bad in ("", "8,1", "1,1", "0,4", "a,b"):
        with pytest.raises(ValueError, match="users"):
            parse_levels(bad)


# -- search space and strategies ---------------------------------------------------------


def test_grid_parses_and_enumerates_every_combination() -> None:
    space = SearchSpace.parse(["max_batch_size=1,8,32", "batch_timeout_ms=0,2", "runtime=keras,tflite"])
    assert space.size == 12
    configs = grid(space)
    assert len({config_key(c) for c in configs}) == 12
    assert configs[0] == {"max_batch_size": 1, "batch_timeout_ms": 0.0, "runtime": "keras"}
    assert parse_grid_arg("batch_timeout_ms=0.5,2") == ("batch_timeout_ms", (0.5, 2.0))
    for bad, message in [("max_batch_size", "NAME=V1"), ("colour=1,2", "unknown serving parameter"),
                         ("max_batch_size=a", "not a valid int")]:
        with pytest.raises(ValueError, match=message):
            parse_grid_arg(bad)
    with pytest.raises(ValueError, match="runtime must be one of"):
        SearchSpace.parse(["runtime=onnx"])
    with pytest.raises(ValueError, match="given twice"):
        SearchSpace.parse(["workers=1", "workers=2"])


def test_grid_strategy_skips_measured_configs() -> None:
    space = SearchSpace.from_mapping({"max_batch_size": [1, 8], "batch_timeout_ms": [0.0, 2.0]})
    first = grid(space)[0]
    left = next_configs(space, "grid", {config_key(first): 10.0})
    assert len(left) == 3 and first not in left


def test_coordinate_ascent_tunes_one_parameter_at_a_time() -> None:
    space = SearchSpace.from_mapping({"max_batch_size": [1, 8, 32], "batch_timeout_ms": [0.0, 2.0, 5.0]})
    truth = {  # capacity by (batch, timeout); the best is (32, 2)
        (1, 0.0): 400, (8, 0.0): 700, (32, 0.0): 900,
        (32, 2.0): 1500, (32, 5.0): 1200, (1, 2.0): 300, (8, 2.0): 1000, (1, 5.0): 200, (8, 5.0): 900,
    }
    scores: dict[str, float | None] = {}
    measured = 0
    while True:
        todo = next_configs(space, "coordinate", scores)
        if not todo:
            break
        for c in todo:
            scores[config_key(c)] = truth[(c["max_batch_size"], c["batch_timeout_ms"])]
            measured += 1
    assert measured == 5  # 3 batch sizes, then 2 more timeouts at the winner, instead of the grid's 9
    assert coordinate_path(space, scores) == {"max_batch_size": 32, "batch_timeout_ms": 2.0}
    # an infeasible config (score None) never wins
    scores2 = {config_key({"max_batch_size": b, "batch_timeout_ms": 0.0}): s
               for b, s in [(1, 5.0), (8, None), (32, None)]}
    assert next_configs(space, "coordinate", scores2)[0]["max_batch_size"] == 1


def test_baseline_is_the_strongest_batching_off_config() -> None:
    """Two batching-off configs (the timeout does nothing at batch size 1): the gain is taken against the faster."""
    base_t2 = {"max_batch_size": 1, "batch_timeout_ms": 2.0}
    rec = recommend([*RECORDED, pt(base_t2, 1, 310, 4.0), pt(base_t2, 16, 600, 40.0), pt(base_t2, 64, 620, 150.0)],
                    SLO, "throughput")
    assert rec.baseline.params == base_t2 and rec.baseline.capacity_rps == 600
    assert rec.speedup_vs_baseline == pytest.approx(1500 / 600)


def test_apply_params_keeps_the_serving_config_valid() -> None:
    base = ServingConfig(max_batch_size=32, allowed_batch_sizes=(8, 16, 32))
    cfg = apply_params(base, {"max_batch_size": 16, "batch_timeout_ms": 0})
    assert cfg.max_batch_size == 16 and cfg.allowed_batch_sizes == (8, 16) and cfg.batch_timeout_ms == 0.0
    assert apply_params(base, {"max_batch_size": 1}).allowed_batch_sizes == ()
    assert apply_params(base, {"max_batch_size": 64}).allowed_batch_sizes == (8, 16, 32, 64)


# -- constraints and objectives on recorded data ------------------------------------------


def test_throughput_objective_picks_highest_capacity_within_slo() -> None:
    rec = recommend(RECORDED, SLO, "throughput")
    assert rec.met
    assert rec.best.params == B32 and rec.best.capacity_rps == 1500 and rec.best.capacity_point.users == 64
    # B8 at 64 users broke p95 (70 ms), so its capacity is its 16-user point
    assert rec.runner_up.params == B8 and rec.runner_up.capacity_rps == 900
    assert rec.baseline.params == BASE and rec.baseline.capacity_rps == 420
    assert rec.speedup_vs_baseline == pytest.approx(1500 / 420)
    assert rec.best.capacity_per_core == pytest.approx(1000 / 0.6)
    text = " ".join(rec.explanation)
    assert "1500 req/s" in text and "b32 t2ms" in text
    assert "3.6x" in text  # vs batching off
    assert "140.0 ms, 70% of p99 (200.0 ms)" in text  # queue wait with batching off at 64 users
    assert "max_batch_size 1 -> 32" in text and "cut it to 9.0 ms" in text
    assert "top of the load ladder" in text  # B32 never broke the SLO, so its capacity may be higher
    assert "Locust itself saturated" not in text
    from dataclasses import replace

    saturated = [*RECORDED[:-1], replace(RECORDED[-1], saturated=True)]
    assert "Locust itself saturated" in " ".join(recommend(saturated, SLO).explanation)


def test_tighter_slo_changes_the_answer_and_says_why() -> None:
    tight = Constraints.parse(["p99<=30ms"])
    rec = recommend(RECORDED, tight, "throughput")
    assert rec.best.params == B32 and rec.best.capacity_rps == 950
    assert "at 64 users p99 reached 49 ms, breaking p99<=30ms" in " ".join(rec.explanation)


def test_min_throughput_and_fail_ratio_constraints() -> None:
    rec = recommend(RECORDED, Constraints.parse(["p95<=50ms", "rps>=1000"]), "throughput")
    assert [r.params for r in rec.ranking] == [B32]
    failing = [*RECORDED[:-1], pt(B32, 64, 1600, 40, fail=0.05)]
    rec2 = recommend(failing, SLO, "throughput")
    assert rec2.best.params == B32 and rec2.best.capacity_rps == 950


def test_latency_objective_compares_at_one_load() -> None:
    rec = recommend(RECORDED, SLO, "latency", at_users=16)
    assert rec.best.params == B32  # p95 18 ms at 16 users
    rec1 = recommend(RECORDED, SLO, "latency", at_users=1)
    assert rec1.best.params == BASE  # batching costs a little latency at low load
    assert recommend(RECORDED, SLO, "latency").at_users == 64


def test_cpu_objective_picks_cheapest_request() -> None:
    rec = recommend(RECORDED, SLO, "cpu")
    assert rec.best.params == B32 and rec.best.score == pytest.approx(-0.6)


def test_no_feasible_config_names_the_closest() -> None:
    rec = recommend(RECORDED, Constraints.parse(["p95<=3ms"]), "throughput")
    assert not rec.met and rec.best is None
    assert rec.closest is not None and rec.closest.params == BASE and rec.closest.users == 1
    assert "Closest: b1 t0ms at 1 user" in " ".join(rec.explanation)
    with pytest.raises(ValueError, match="objective must be one of"):
        recommend(RECORDED, SLO, "accuracy")
    assert "FAIL" in format_table(RECORDED, SLO) and "ok" in format_table(RECORDED, SLO)


def test_points_round_trip_through_json() -> None:
    back = points_from_json(points_to_json(RECORDED))
    assert back == RECORDED
    assert recommend(back, SLO).to_dict()["best"]["config_id"] == config_key(B32)


# -- Pareto dominance on hand-made points -------------------------------------------------


def test_pareto_dominance_and_front() -> None:
    obj = MODEL_OBJECTIVES  # val_accuracy max, p99_ms min, capacity_rps max
    a = {"val_accuracy": 0.97, "p99_ms": 20, "capacity_rps": 900}
    b = {"val_accuracy": 0.95, "p99_ms": 25, "capacity_rps": 800}  # worse on all: dominated by a
    c = {"val_accuracy": 0.93, "p99_ms": 10, "capacity_rps": 1500}  # faster, less accurate: on the front
    d = {"val_accuracy": 0.97, "p99_ms": 20, "capacity_rps": 900}  # equal to a: neither dominates
    e = {"val_accuracy": 0.99, "p99_ms": None, "capacity_rps": 100}  # missing latency counts as worst
    assert dominates(a, b, obj) and not dominates(b, a, obj)
    assert not dominates(a, c, obj) and not dominates(c, a, obj)
    assert not dominates(a, d, obj) and not dominates(d, a, obj)
    assert pareto_mask([a, b, c, d, e], obj) == [True, False, True, True, True]
    assert pareto_front([a, b, c], {"val_accuracy": "max"}) == [0]
    with pytest.raises(ValueError, match="sense"):
        dominates(a, b, {"p99_ms": "down"})


# -- exports ------------------------------------------------------------------------------


def test_tf_serving_text_uses_batching_parameters_fields() -> None:
    cfg = ServingConfig(max_batch_size=32, batch_timeout_ms=2.0, num_batch_threads=4, max_enqueued_batches=64,
                        allowed_batch_sizes=(8, 16, 32))
    text = tf_serving_batching_text(cfg, comment="from sweep X")
    lines = text.splitlines()
    assert lines[0] == "# from sweep X"
    assert "max_batch_size { value: 32 }" in lines
    assert "batch_timeout_micros { value: 2000 }" in lines
    assert "num_batch_threads { value: 4 }" in lines
    assert "max_enqueued_batches { value: 64 }" in lines
    assert [ln for ln in lines if ln.startswith("allowed_batch_sizes")] == [
        "allowed_batch_sizes: 8", "allowed_batch_sizes: 16", "allowed_batch_sizes: 32"]
    assert parse_batching_text(text) == {"max_batch_size": 32, "batch_timeout_micros": 2000,
                                         "max_enqueued_batches": 64, "num_batch_threads": 4,
                                         "allowed_batch_sizes": [8, 16, 32]}
    plain = tf_serving_batching_text(NO_BATCHING)
    assert "allowed_batch_sizes" not in plain and "batch_timeout_micros { value: 0 }" in plain


def test_json_export_loads_back_as_the_same_config(tmp_path) -> None:
    cfg = ServingConfig(runtime="keras", max_batch_size=16, batch_timeout_ms=1.5, workers=1)
    paths = write_exports(tmp_path / "out", cfg, recommendation={"x": float("nan")})
    assert ServingConfig.from_json_file(paths["serving_config"]) == cfg
    assert paths["recommendation"].read_text().strip().endswith("}")
    assert "null" in paths["recommendation"].read_text()


# -- resuming: what is left to measure, from the recorded points alone ---------------------


def test_plan_resumes_half_way_up_a_ladder_then_moves_on() -> None:
    from tuning.sweep import SweepSpec, plan

    spec = SweepSpec(model_path="m.keras", space={"max_batch_size": [1, 8, 32], "batch_timeout_ms": [0.0, 2.0]},
                     users=(1, 16, 64), slos=("p95<=50ms",))
    assert plan([], spec) == ({"max_batch_size": 1, "batch_timeout_ms": 0.0}, [1, 16, 64])
    # killed after the first level of the baseline: finish its ladder first
    assert plan(RECORDED[:1], spec) == (BASE, [16, 64])
    # the baseline's ladder is done (its 64-user point broke the SLO): the next grid config
    assert plan(RECORDED[:3], spec)[0] == {"max_batch_size": 1, "batch_timeout_ms": 2.0}
    # a config the SLO rule stopped early counts as done
    broke = [pt(BASE, 1, 300, 4.0), pt(BASE, 16, 420, 80.0)]
    assert plan(broke, spec)[0] != BASE
    every = [pt({"max_batch_size": b, "batch_timeout_ms": t}, 1, 100, 500.0) for b in (1, 8, 32) for t in (0.0, 2.0)]
    assert plan(every, spec) == (None, [])


def test_open_loop_points_are_ranked_and_explained_by_offered_rate() -> None:
    from dataclasses import replace

    from tuning.sweep import SweepSpec, plan

    open_loop = [replace(p, rate=float(r), users=max(1, r // 10))
                 for p, r in zip(RECORDED, [250, 500, 1000] * 3, strict=True)]
    rec = recommend(open_loop, SLO, "throughput")
    assert rec.best.params == B32 and rec.best.capacity_point.level == 1000
    text = " ".join(rec.explanation)
    assert "at 1000 req/s offered" in text and "users" not in text
    assert "1000/s" in format_table(open_loop, SLO)
    spec = SweepSpec(model_path="m.keras", space={"max_batch_size": [1, 8, 32], "batch_timeout_ms": [0.0, 2.0]},
                     rates=(250, 500, 1000), slos=("p95<=50ms",))
    assert spec.open_loop and spec.levels == (250, 500, 1000)
    assert plan(open_loop[:1], spec) == (BASE, [500, 1000])
    with pytest.raises(ValueError, match="rates"):
        SweepSpec(model_path="m.keras", space={"max_batch_size": [1]}, rates=(500, 250))


def test_finalists_are_re_measured_and_the_recommendation_comes_from_that_pass(registry, tmp_path) -> None:
    from tuning.sweep import SweepSpec, create_sweep, finalists, finalize, plan_verify

    spec = SweepSpec(model_path=str(tmp_path / "model.keras"),
                     space={"max_batch_size": [1, 8, 32], "batch_timeout_ms": [0.0, 2.0]},
                     users=(1, 16, 64), slos=("p95<=50ms", "fail_ratio<=0.01"), verify_top=2)
    assert finalists(RECORDED, spec) == [B32, B8, BASE]  # the top two, then batching off
    assert plan_verify(RECORDED, [], spec) == (B32, [1, 16, 64])
    # B32's search numbers were a lucky quiet moment: re-measured back to back, B8 wins
    verified = [pt(B32, 1, 240, 5.5), pt(B32, 16, 700, 30.0), pt(B32, 64, 720, 80.0),
                pt(B8, 1, 250, 5.0), pt(B8, 16, 900, 20.0), pt(B8, 64, 1000, 45.0),
                pt(BASE, 1, 300, 4.0), pt(BASE, 16, 420, 45.0), pt(BASE, 64, 430, 160.0)]
    assert plan_verify(RECORDED, verified[:4], spec) == (B8, [16, 64])
    assert plan_verify(RECORDED, verified, spec) == (None, [])
    run_id = create_sweep(registry, spec)
    out = finalize(registry, run_id, spec, RECORDED, verified)
    rec = registry.get_run(run_id).summary["recommendation"]
    assert rec["best"]["params"] == B8 and rec["best"]["capacity_rps"] == 1000
    assert out["search_recommendation"]["best"]["params"] == B32
    assert rec["explanation"][0].startswith("The 3 finalists of the search were re-measured back to back")
    assert "ranked b32 t2ms first at 1500 req/s" in rec["explanation"][0]
    assert ServingConfig.from_json_file(out["exports"]["serving_config"]).max_batch_size == 8
    assert finalists(RECORDED, SweepSpec(model_path="m.keras", space={"max_batch_size": [1]}, verify_top=0)) == []
