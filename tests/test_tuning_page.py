"""AppTest coverage of the Tune page, rendering sweeps prepared in a temporary registry."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from runs.registry import Registry
from tests.test_tuning_logic import RECORDED
from tuning.model_sweep import ModelSweepSpec, create_model_sweep
from tuning.sweep import SweepSpec, create_sweep, finalize

PAGE = str(Path(__file__).resolve().parent.parent / "dashboard" / "pages" / "tune.py")
TIMEOUT_S = 60


def _sweep(registry: Registry, tmp_path: Path, points=RECORDED) -> str:
    model = tmp_path / "model.keras"
    spec = SweepSpec(model_path=str(model), space={"max_batch_size": [1, 8, 32], "batch_timeout_ms": [0.0, 2.0]},
                     users=(1, 16, 64), slos=("p95<=50ms", "fail_ratio<=0.01"))
    run_id = create_sweep(registry, spec, name="digits sweep")
    registry.update_summary(run_id, {"points": [p.to_dict() for p in points]})
    finalize(registry, run_id, spec, list(points))
    registry.set_status(run_id, "completed")
    return run_id


def _texts(at: AppTest) -> str:
    parts = [m.value for m in at.markdown] + [m.value for m in at.caption] + [str(m.value) for m in at.metric]
    parts += [e.value for e in at.error] + [i.value for i in at.info]
    return "\n".join(str(p) for p in parts)


def test_page_without_sweeps_explains_how_to_start(home: Path) -> None:
    at = AppTest.from_file(PAGE, default_timeout=TIMEOUT_S).run()
    assert not at.exception
    assert "No sweep yet" in _texts(at)
    assert "Train a model" in _texts(at)


def test_page_renders_a_recorded_sweep_with_recommendation_and_exports(home: Path, registry: Registry,
                                                                        tmp_path: Path) -> None:
    _sweep(registry, tmp_path)
    at = AppTest.from_file(PAGE, default_timeout=TIMEOUT_S).run()
    assert not at.exception
    metrics = {m.label: m.value for m in at.metric}
    assert _recommended(at) == "b32 t2ms"
    assert metrics["Capacity within SLO"] == "1500 req/s"
    assert metrics["vs batching off"] == "3.6x"
    text = _texts(at)
    assert "70% of p99" in text and "cut it to 9.0 ms" in text
    labels = [b.label for b in at.get("download_button")]
    assert "serving_config.json" in labels and "batching_parameters.txt" in labels
    assert len(at.get("plotly_chart")) >= 3
    assert [b.label for b in at.button if b.label.startswith("Apply")]

    # tightening the constraints re-ranks the recorded points without re-measuring
    at.text_area(key=next(t.key for t in at.text_area if t.key.startswith("tune.slo_text."))).set_value(
        "p99<=30ms").run()
    assert not at.exception
    assert {m.label: m.value for m in at.metric}["Capacity within SLO"] == "950 req/s"
    # an impossible SLO names the closest config instead of a recommendation
    at.text_area(key=next(t.key for t in at.text_area if t.key.startswith("tune.slo_text."))).set_value(
        "p95<=1ms").run()
    assert "Closest: b1 t0ms" in _texts(at)
    # a malformed SLO is a one-line error, not a traceback
    at.text_area(key=next(t.key for t in at.text_area if t.key.startswith("tune.slo_text."))).set_value(
        "p95 under 50").run()
    assert not at.exception and "malformed SLO" in _texts(at)


def test_page_renders_a_model_sweep_pareto_front(home: Path, registry: Registry) -> None:
    run_id = create_model_sweep(registry, ModelSweepSpec(grid={"hidden": [[8], [16]]}, epochs=1))
    rows = [
        {"key": "a", "label": "8 relu", "val_accuracy": 0.90, "p99_ms": 12.0, "capacity_rps": 900, "rps": 900},
        {"key": "b", "label": "16 relu", "val_accuracy": 0.95, "p99_ms": 14.0, "capacity_rps": 850, "rps": 850},
        {"key": "c", "label": "16 tanh", "val_accuracy": 0.89, "p99_ms": 15.0, "capacity_rps": 800, "rps": 800},
    ]
    registry.update_summary(run_id, {"models": rows})
    registry.set_status(run_id, "completed")
    at = AppTest.from_file(PAGE, default_timeout=TIMEOUT_S).run()
    assert not at.exception
    assert "Front: 8 relu, 16 relu." in _texts(at)


@pytest.mark.parametrize("bad", ["1,x", "8,1"])
def test_bad_sweep_form_input_is_a_one_line_error(home: Path, registry: Registry, trained_model: Path,
                                                  bad: str) -> None:
    train_id = registry.create_run("train", {}, name="digits", status="completed")
    registry.update_summary(train_id, {"model_path": str(trained_model)})
    at = AppTest.from_file(PAGE, default_timeout=TIMEOUT_S).run()
    at.text_input(key="tune.max_batch_size" if "x" in bad else "tune.users").set_value(bad).run()
    at.button(key="tune.start").click().run()
    assert not at.exception
    assert at.error and len(at.error[0].value.splitlines()) == 1
    assert not registry.list_runs(kind="sweep")


def test_page_ranks_on_the_finalists_re_measurement(home: Path, registry: Registry, tmp_path: Path) -> None:
    from tests.test_tuning_logic import B8, B32, BASE, pt

    run_id = _sweep(registry, tmp_path)
    verified = [pt(B32, 16, 700, 30.0), pt(B32, 64, 720, 80.0), pt(B8, 16, 900, 20.0), pt(B8, 64, 1000, 45.0),
                pt(BASE, 16, 420, 45.0), pt(BASE, 64, 430, 160.0)]
    registry.update_summary(run_id, {"verify_points": [p.to_dict() for p in verified]})
    at = AppTest.from_file(PAGE, default_timeout=TIMEOUT_S).run()
    assert not at.exception
    metrics = {m.label: m.value for m in at.metric}
    assert _recommended(at) == "b8 t2ms" and metrics["Capacity within SLO"] == "1000 req/s"
    assert "re-measurement of the search's 3 finalists" in _texts(at)


@pytest.mark.integration
def test_apply_restarts_the_endpoint_with_the_recommended_config(home: Path, registry: Registry,
                                                                 trained_model: Path) -> None:
    from runs import jobs
    from runs.jobs import stop_job

    _sweep(registry, trained_model.parent)  # the recorded sweep, now pointing at a real model bundle
    try:
        at = AppTest.from_file(PAGE, default_timeout=180).run()
        at.button(key="tune.apply").click().run()  # returns at once: the endpoint starts in the background
        assert not at.exception
        serving = [r for r in registry.list_runs(kind="serve") if r.active]
        assert len(serving) == 1
        assert any(serving[0].id in s.value and "b32 t2ms" in s.value for s in at.success)
        run = jobs.wait_ready(registry, serving[0].id, 180)
        assert run.summary["config"]["max_batch_size"] == 32 and run.summary["config"]["batch_timeout_ms"] == 2.0
        # applying again replaces that endpoint instead of adding a second one, on the same port (same URL)
        at.button(key="tune.apply").click().run()
        new = [r for r in registry.list_runs(kind="serve") if r.active and r.id != run.id]
        assert len(new) == 1
        replaced = jobs.wait_ready(registry, new[0].id, 180)
        assert replaced.summary["url"] == run.summary["url"]
        assert jobs.wait_job(registry, run.id, 60).status == "stopped"  # the old endpoint was shut down
    finally:
        for r in registry.list_runs(kind="serve", status=("pending", "running")):
            stop_job(registry, r.id, grace_s=10)


def test_page_renders_a_capacity_sweep_of_a_url_and_refuses_a_remote_one(home: Path, registry: Registry) -> None:
    from tuning.capacity import CapacitySpec, create_capacity_sweep, verdict
    from tuning.points import Point
    from tuning.recommend import Constraints

    spec = CapacitySpec(host="http://127.0.0.1:8600", model_name="digits", protocol="v2", users=(1, 8, 32),
                        slos=("p95<=50ms",), step_s=2)
    run_id = create_capacity_sweep(registry, spec)
    pts = [Point("t", spec.params, u, rps, p50_ms=p50, p95_ms=p95, requests=100)
           for u, rps, p50, p95 in ((1, 250, 3, 7), (8, 1100, 6, 12), (32, 1200, 30, 80))]
    registry.update_summary(run_id, {"points": [p.to_dict() for p in pts],
                                     "verdict": verdict(pts, Constraints.parse(spec.slos), None).to_dict()})
    registry.set_status(run_id, "completed")
    at = AppTest.from_file(PAGE, default_timeout=TIMEOUT_S).run()
    assert not at.exception
    text = _texts(at)
    assert "digits at http://127.0.0.1:8600 (v2)" in text
    assert "Capacity within p95<=50ms: 1100 req/s at 8 users" in text and "At 32 users the SLO broke" in text
    at.text_input(key="tune.c_url").set_value("http://example.com:8000")
    at.button(key="tune.c_start").click().run()
    assert not at.exception
    assert "only local targets" in _texts(at)
    assert len([r for r in registry.list_runs(kind="sweep") if r.config.get("mode") == "capacity"]) == 1


def test_page_shows_an_optuna_search_front_beside_the_grids(home: Path, registry: Registry) -> None:
    grid_id = create_model_sweep(registry, ModelSweepSpec(grid={"hidden": [[8], [16]]}, epochs=1), name="grid run")
    registry.update_summary(grid_id, {"models": [
        {"key": "g8", "label": "8 relu", "val_accuracy": 0.90, "p99_ms": 12.0, "capacity_rps": 900},
        {"key": "g16", "label": "16 relu", "val_accuracy": 0.93, "p99_ms": 14.0, "capacity_rps": 850}]})
    registry.set_status(grid_id, "completed")
    spec = ModelSweepSpec(search="optuna", grid={}, ranges={"width": [4, 32]}, n_trials=3, epochs=1)
    run_id = create_model_sweep(registry, spec, name="optuna run")
    registry.update_summary(run_id, {"models": [
        {"key": "w9", "label": "9", "trial": 0, "state": "complete", "val_accuracy": 0.95, "p99_ms": 11.0},
        {"key": "w4", "label": "4", "trial": 1, "state": "pruned", "val_accuracy": 0.40},
        {"key": "w30", "label": "30", "trial": 2, "state": "complete", "val_accuracy": 0.94, "p99_ms": 13.0}]})
    registry.set_status(run_id, "completed")
    at = AppTest.from_file(PAGE, default_timeout=TIMEOUT_S).run()
    assert not at.exception
    assert at.selectbox(key="tune.msweep").value == run_id  # the newest
    assert at.selectbox(key="tune.m_compare").value == grid_id  # the other search, drawn beside it
    texts = _texts(at)
    assert "Front: 9." in texts and "1 pruned trial(s)" in texts
    fig = at.get("plotly_chart")[-1].proto.spec
    assert "optuna front" in fig and "grid front" in fig


def test_the_optuna_form_refuses_a_bad_range_in_one_line(home: Path, registry: Registry) -> None:
    at = AppTest.from_file(PAGE, default_timeout=TIMEOUT_S).run()
    at.radio(key="tune.m_search").set_value("optuna").run()
    at.text_input(key="tune.m_lr").set_value("0.1..0.01").run()
    at.button(key="tune.m_start").click().run()
    assert not at.exception
    assert at.error and "LO < HI" in at.error[0].value and len(at.error[0].value.splitlines()) == 1
    assert not registry.list_runs(kind="sweep")


def _recommended(at: AppTest) -> str:
    """The Recommended tile's config label (markdown, so a long label wraps instead of being cut)."""
    tile = next(m.value for m in at.markdown if m.value.startswith("Recommended"))
    return tile.split("**")[1]
