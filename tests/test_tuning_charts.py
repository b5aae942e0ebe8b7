"""The Tune page's figure builders, on recorded sweep data (no UI)."""

from __future__ import annotations

import plotly.graph_objects as go
import pytest

from dashboard.charts_tuning import (
    capacity_rows,
    cpu_per_request_figure,
    figure_html,
    latency_throughput_figure,
    parallel_coordinates_figure,
    pareto_figure,
)
from tests.test_tuning_logic import RECORDED, SLO
from tuning.pareto import MODEL_OBJECTIVES


def test_latency_throughput_has_one_line_per_config_and_the_slo_line() -> None:
    fig = latency_throughput_figure(RECORDED, percentile="p95_ms", slo_ms=50)
    assert isinstance(fig, go.Figure)
    assert [t.name for t in fig.data] == ["b1 t0ms", "b8 t2ms", "b32 t2ms"]
    assert list(fig.data[2].x) == [240, 950, 1500] and list(fig.data[2].y) == [5.5, 18.0, 42.0]
    assert [s.y0 for s in fig.layout.shapes] == [50]
    assert latency_throughput_figure([]).layout.annotations[0].text == "no measured points yet"
    with pytest.raises(ValueError, match="percentile"):
        latency_throughput_figure(RECORDED, percentile="p42_ms")


def test_capacity_rows_cpu_bars_and_parallel_coordinates() -> None:
    rows = capacity_rows(RECORDED, SLO.meets, best_id=RECORDED[-1].config_id)
    by_label = {r["label"]: r for r in rows}
    assert by_label["b32 t2ms"]["capacity_rps"] == 1500 and by_label["b32 t2ms"]["best"]
    assert by_label["b8 t2ms"]["capacity_rps"] == 900  # its 64-user point broke the SLO
    bars = cpu_per_request_figure(rows)
    assert bars.data[0].x[0] == "b32 t2ms"  # cheapest first
    assert bars.data[0].y[0] == pytest.approx(600)
    par = parallel_coordinates_figure(rows)
    labels = [d.label for d in par.data[0].dimensions]
    assert labels[:2] == ["max_batch_size", "batch_timeout_ms"] and "capacity_rps" in labels
    assert b"<html" in figure_html(bars)[:200].lower()


def test_pareto_figure_greys_dominated_points() -> None:
    rows = [
        {"label": "a", "val_accuracy": 0.97, "p99_ms": 20, "capacity_rps": 900},
        {"label": "b", "val_accuracy": 0.95, "p99_ms": 25, "capacity_rps": 800},
        {"label": "c", "val_accuracy": 0.93, "p99_ms": 10, "capacity_rps": 1500},
    ]
    fig = pareto_figure(rows, MODEL_OBJECTIVES)
    traces = {t.name: t for t in fig.data if t.name}
    assert list(traces["dominated"].text) == ["b"] and traces["dominated"].marker.color == "lightgrey"
    assert sorted(traces["Pareto front"].text) == ["a", "c"]


def test_pareto_figure_draws_a_second_sweeps_front_beside_and_leaves_out_pruned_trials() -> None:
    optuna_rows = [
        {"label": "t0", "val_accuracy": 0.96, "p99_ms": 8, "state": "complete"},
        {"label": "t1", "val_accuracy": 0.99, "state": "pruned"},  # never served: not a point
        {"label": "t2", "val_accuracy": 0.90, "p99_ms": 9, "state": "complete"},
    ]
    grid_rows = [
        {"label": "g1", "val_accuracy": 0.97, "p99_ms": 20},
        {"label": "g2", "val_accuracy": 0.93, "p99_ms": 10},
        {"label": "g3", "val_accuracy": 0.92, "p99_ms": 30},  # dominated in the plotted plane
    ]
    fig = pareto_figure(optuna_rows, {"val_accuracy": "max", "p99_ms": "min"}, size=None, name="Optuna front",
                        compare=grid_rows, compare_name="grid front")
    traces = {t.name: t for t in fig.data if t.name}
    assert list(traces["Optuna front"].text) == ["t0"] and list(traces["dominated"].text) == ["t2"]
    assert list(traces["grid front"].text) == ["g2", "g1"]  # along p99
    assert all("t1" not in (t.text or ()) for t in fig.data)
