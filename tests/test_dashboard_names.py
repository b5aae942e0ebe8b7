"""Runs a person can tell apart: picker labels and defaults, sweep sub-runs grouped, deep links, the Train
form's defaults and its kept state, one error per bad CSV, readable Tune messages and estimates.

Pages run under AppTest over a real registry in a temporary state dir; runs are written straight
into it (no TensorFlow, no Locust). An "active" run is marked started with this test process's own
pid, so the pages' reaper sees a live process; it is set to stopped before the test ends.
"""

from __future__ import annotations

import os
from pathlib import Path

import psutil
import pytest
from streamlit.testing.v1 import AppTest
from test_dashboard_pages import _train_run

from dashboard import charts_tuning as ct
from dashboard import format as fmt
from dashboard import forms
from runs.registry import Registry
from tuning.points import Point
from tuning.space import SearchSpace
from tuning.sweep import SweepSpec, create_sweep, estimate, model_label

ROOT = Path(__file__).resolve().parent.parent
PAGES = ROOT / "dashboard" / "pages"
TIMEOUT_S = 60


def _page(name: str, run: str | None = None) -> AppTest:
    at = AppTest.from_file(str(PAGES / f"{name}.py"), default_timeout=TIMEOUT_S)
    if run is not None:
        at.query_params["run"] = run
    return at.run()


def _serve_run(registry: Registry, model_path: str, *, runtime: str = "tflite", batch: int = 32,
               timeout_ms: float = 2.0, status: str = "stopped", parent_id: str | None = None) -> str:
    config = {"model_path": model_path, "name": "model", "host": "127.0.0.1", "port": 0, "ceiling": False,
              "serving": {"runtime": runtime, "max_batch_size": batch, "batch_timeout_ms": timeout_ms, "workers": 1},
              "log_level": "warning"}
    run_id = registry.create_run("serve", config, name=f"serve model ({runtime})", status="running",
                                 parent_id=parent_id)
    if status == "running":  # alive as far as the reaper can tell: this very process
        registry.mark_started(run_id, os.getpid(), psutil.Process().create_time())
    else:
        registry.set_status(run_id, status)
    return run_id


def _options(at: AppTest, key: str) -> list[str]:
    """The run ids a picker offers (its options are the labels, which end with the full id)."""
    return [label.rsplit(" · ", 1)[-1] for label in at.selectbox(key=key).options]


# -- labels, pure ------------------------------------------------------------------------------


def test_an_endpoint_label_names_its_model_runtime_batching_state_and_full_id(registry: Registry) -> None:
    model = _train_run(registry, name="train wine")
    path = registry.get_run(model).summary["model_path"]
    serve_id = _serve_run(registry, path, runtime="tflite", batch=32, timeout_ms=2.0)
    label = fmt.run_label(registry.get_run(serve_id), fmt.model_names([registry.get_run(model)]))
    assert "train wine" in label and "tflite" in label and "batch 32 / 2.0 ms" in label
    assert "stopped" in label and serve_id in label  # the full id, not its last six characters
    # Without the model's run at hand the label still says whose model it is, not "serve model (tflite)".
    assert f"model of run {model}" in fmt.run_label(registry.get_run(serve_id))
    unbatched = _serve_run(registry, path, runtime="keras", batch=1)
    assert "no batching" in fmt.run_label(registry.get_run(unbatched))


def test_running_runs_come_first(registry: Registry) -> None:
    done = registry.get_run(_train_run(registry, name="done"))
    busy = registry.get_run(_train_run(registry, name="busy", status="running"))
    assert [r.name for r in fmt.running_first([done, busy])] == ["busy", "done"]


def test_the_runs_export_carries_plain_statuses(registry: Registry) -> None:
    run_id = _train_run(registry)
    csv_text = fmt.rows_to_csv(fmt.runs_table([registry.get_run(run_id)], icons=False, parent=True))
    assert ",completed," in csv_text and "✓" not in csv_text and csv_text.splitlines()[0].endswith(",parent")
    assert "✓ completed" in fmt.runs_table([registry.get_run(run_id)])[0]["status"]  # the page's table keeps it


def test_a_sweep_is_named_after_its_model_not_its_folder(registry: Registry) -> None:
    model = _train_run(registry, name="train iris")
    path = registry.get_run(model).summary["model_path"]
    assert model_label(registry, path) == "train iris"
    assert model_label(registry, "/elsewhere/fraud.keras") == "fraud"
    spec = SweepSpec(model_path=path, space={"max_batch_size": [1, 8]}, users=(1, 8))
    name = registry.get_run(create_sweep(registry, spec)).name
    assert name == "sweep of train iris: max_batch_size" and model not in name


def test_the_sweep_estimate_comes_from_grid_ladder_and_step_time() -> None:
    space = SearchSpace.from_mapping({"max_batch_size": (1, 8, 32), "batch_timeout_ms": (0, 2)}).to_dict()
    spec = SweepSpec(model_path="m.keras", space=space, users=(1, 16, 64), step_s=8.0)
    est = estimate(spec)
    assert (est.configs, est.levels, est.finalists) == (6, 3, 3)  # best two and batching off re-measured
    longer = estimate(SweepSpec(model_path="m.keras", space=space, users=(1, 16, 64), step_s=16.0))
    assert longer.total_s - est.total_s == pytest.approx((6 + 3) * 3 * 8.0)  # every step of every config
    assert "6 configs × 3 levels × 8 s steps" in est.text() and "3 finalists" in est.text()
    single = estimate(SweepSpec(model_path="m.keras", space={"max_batch_size": [8]}, users=(4,)))
    assert single.finalists == 0 and "finalists" not in single.text()


def test_a_model_sweep_estimate_counts_its_models_and_is_shown_before_start(home: Path) -> None:
    from tuning.model_sweep import ModelSweepSpec, estimate_text

    spec = ModelSweepSpec(grid={"hidden": [[32], [64]], "learning_rate": [0.001, 0.01]}, epochs=3, step_s=6.0)
    assert "4 models × (training for up to 3 epochs" in estimate_text(spec) and "6 s load step" in estimate_text(spec)
    at = _page("tune")
    assert not at.exception
    assert any(c.value.startswith("Estimated duration: at least") and "models" in c.value for c in at.caption)


def test_the_apply_message_is_a_sentence() -> None:
    text = fmt.apply_message("20261203-170704-9030d7", "model",
                             {"runtime": "tflite", "max_batch_size": 32, "batch_timeout_ms": 2.0, "workers": 1,
                              "num_batch_threads": 1}, "tflite b32 t2")
    assert text.startswith("Restarting the endpoint of model with tflite b32 t2 (tflite runtime")
    assert "run 20261203-170704-9030d7" in text
    assert "{" not in text and "'" not in text and "32 rows" in text and "1 worker)" in text


def test_tuning_charts_drop_constant_parameters_and_label_load_levels() -> None:
    points = [Point(config_id=f"b{b}", params={"runtime": "tflite", "max_batch_size": b}, users=u,
                    rps=100.0 * u, p50_ms=1.0, p95_ms=2.0 * u, p99_ms=3.0 * u, fail_ratio=0.0)
              for b in (1, 32) for u in (1, 16)]
    fig = ct.parallel_coordinates_figure(ct.capacity_rows(points))
    labels = [d.label for d in fig.data[0].dimensions]
    assert "max_batch_size" in labels and "runtime" not in labels  # every config ran tflite
    lines = ct.latency_throughput_figure(points)
    assert all(list(trace.text) == ["1u", "16u"] for trace in lines.data)


def test_the_first_run_card_promises_what_the_form_starts_with(home: Path) -> None:
    at = _page("train")
    assert not at.exception
    card = next(m.value for m in at.markdown if "The registry is empty" in m.value)
    assert forms.describe_model(forms.DEFAULT_TRAIN) in card
    d = forms.DEFAULT_TRAIN
    assert at.slider(key="train.layers").value == d.layers
    assert at.select_slider(key="train.units").value == d.units
    assert at.number_input(key="train.epochs").value == d.epochs
    assert at.number_input(key="train.patience").value == d.patience
    assert f"up to {d.epochs} epochs" in card and f"{d.layers} hidden layer" in card
    assert ("early stopping after" in card) == (d.patience > 0)


def test_units_and_activation_are_disabled_without_hidden_layers(home: Path) -> None:
    at = _page("train")
    at.slider(key="train.layers").set_value(0).run()
    assert at.select_slider(key="train.units").disabled and at.selectbox(key="train.activation").disabled
    at.selectbox(key="train.dataset").set_value("synthetic").run()
    help_text = at.selectbox(key="train.synthetic_activation").proto.help
    assert "output activation" not in help_text and "GradientTape" in help_text


@pytest.mark.parametrize(("data", "expected"), [
    (b'a,b,label\n1,2,x\n3,"4\n', "CSV"),  # malformed: an unterminated quote
    (b"label\n1\n2\n3\n", "column"),  # one column: no features
    ("a,b,label\n1,2,é\n".encode("latin-1"), "UTF-8"),  # not UTF-8
])
def test_a_bad_csv_shows_only_its_own_error(home: Path, data: bytes, expected: str) -> None:
    at = _page("train")
    at.selectbox(key="train.dataset").set_value("csv").run()
    at.file_uploader(key="train.upload").set_value(("bad.csv", data, "text/csv")).run()
    assert not at.exception
    errors = [e.value for e in at.error]
    assert len(errors) == 1, errors
    assert expected.lower() in errors[0].lower() and "target column" not in errors[0]
    assert at.button(key="train.start").disabled


# -- pickers: defaults, sub-runs, deep links -----------------------------------------------------


def test_the_serve_picker_defaults_to_the_running_endpoint(home: Path, registry: Registry) -> None:
    model = _train_run(registry, name="train digits")
    path = registry.get_run(model).summary["model_path"]
    running = _serve_run(registry, path, runtime="keras", batch=8, status="running")
    newer_stopped = _serve_run(registry, path, runtime="tflite", batch=32)
    try:
        at = _page("serve")
        assert not at.exception
        picker = at.selectbox(key="serve.endpoint")
        assert picker.value == running  # not the newer, stopped one
        labels = list(picker.options)
        assert any("● running" in lab and "train digits" in lab and "keras" in lab for lab in labels), labels
        assert any("stopped" in lab and "tflite" in lab and "batch 32" in lab for lab in labels), labels
        assert newer_stopped in " ".join(labels)
    finally:
        registry.set_status(running, "stopped")


def _sweep_family(registry: Registry) -> tuple[str, str, str, str]:
    """A model sweep with its own training and load step, beside a training a person started."""
    own = _train_run(registry, name="train wine")
    sweep = registry.create_run("sweep", {"mode": "models", "spec": {}}, name="model sweep digits: hidden",
                                status="running")
    registry.set_status(sweep, "completed")
    sub_train = _train_run(registry, name="model sweep digits: hidden: 32")
    registry._conn().execute("UPDATE runs SET parent_id = ? WHERE id = ?", (sweep, sub_train))
    sub_load = registry.create_run("loadtest", {"host": "http://127.0.0.1:1"}, name="b1 @ 8 users",
                                   status="running", parent_id=sweep)
    registry.set_status(sub_load, "completed")
    return own, sweep, sub_train, sub_load


def test_sweep_sub_runs_are_hidden_from_pickers_unless_asked(home: Path, registry: Registry) -> None:
    own, _, sub_train, _ = _sweep_family(registry)
    at = _page("train")
    assert not at.exception
    assert _options(at, "train.view") == [own]
    at.toggle(key="train.show_sub_runs").set_value(True).run()
    assert set(_options(at, "train.view")) == {own, sub_train}
    serve = _page("serve")
    assert _options(serve, "serve.model") == [own]


def test_the_runs_page_groups_sub_runs_under_their_sweep(home: Path, registry: Registry) -> None:
    own, sweep, sub_train, sub_load = _sweep_family(registry)
    at = _page("run_history")
    assert not at.exception
    table = at.dataframe[0].value  # (AppTest does not carry a dataframe's key)
    assert set(table["id"]) == {own, sweep}
    assert int(table.loc[table["id"] == sweep, "sub-runs"].iloc[0]) == 2
    assert any(e.label.startswith("model sweep digits: hidden") and "2 sub-runs" in e.label for e in at.expander)
    grouped = at.dataframe[1].value
    assert set(grouped["id"]) == {sub_train, sub_load}
    assert set(_options(at, "runs.detail")) == {own, sweep}
    at.toggle(key="runs.show_sub_runs").set_value(True).run()
    assert set(at.dataframe[0].value["id"]) == {own, sweep, sub_train, sub_load}


def test_a_run_link_opens_that_run_and_the_picker_writes_its_choice_back(home: Path, registry: Registry) -> None:
    older = _train_run(registry, name="train iris")
    newest = _train_run(registry, name="train wine")
    at = _page("train", run=older)
    assert not at.exception
    assert at.selectbox(key="train.view").value == older  # not the newest, the default
    at.selectbox(key="train.view").set_value(newest).run()
    assert at.selectbox(key="train.view").value == newest  # the user's choice beats the link it came from
    assert at.query_params.get("run") in (newest, [newest])
    # Serve this model / Tune it: a training run's id preselects it on those pages.
    assert _page("serve", run=older).selectbox(key="serve.model").value == older
    assert _page("tune", run=older).selectbox(key="tune.model").value == older


def test_the_train_form_keeps_its_values_across_pages(home: Path) -> None:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT_S).run()
    at.number_input(key="train.epochs").set_value(7).run()
    at.slider(key="train.layers").set_value(3).run()
    at.switch_page(str(PAGES / "run_history.py")).run()
    assert "Runs" in at.title[0].value
    at.switch_page(str(PAGES / "train.py")).run()
    assert not at.exception
    assert at.number_input(key="train.epochs").value == 7 and at.slider(key="train.layers").value == 3


def test_swarm_this_endpoint_targets_it_on_the_load_test_page(home: Path, registry: Registry) -> None:
    model = _train_run(registry, name="train digits")
    path = registry.get_run(model).summary["model_path"]
    first = _serve_run(registry, path, runtime="keras", status="running")
    linked = _serve_run(registry, path, runtime="tflite", status="running")
    for run_id in (first, linked):
        registry.update_summary(run_id, {"url": "http://127.0.0.1:9", "name": "model"})
    try:
        at = _page("load_test")
        at.radio(key="load.target_kind").set_value("URL").run()  # the user had a URL target before
        at.query_params["run"] = first
        at.run()
        assert not at.exception
        assert at.radio(key="load.target_kind").value == "running endpoint"
        assert at.selectbox(key="load.endpoint").value == first  # not the newest: the one the link names
        assert "train digits" in at.selectbox(key="load.endpoint").options[0]
    finally:
        registry.set_status(first, "stopped")
        registry.set_status(linked, "stopped")
