"""The dashboard's pure parts without a UI: figure builders, form validation, formatting, scrape helpers."""

from __future__ import annotations

import http.server
import json
import math
import threading
from collections.abc import Iterator

import pytest

from agent.model import ModelConfig
from agent.serving.config import ServingConfig
from agent.serving.metrics import HistogramValue, ServerSnapshot, snapshot_delta
from agent.training import TrainJob
from dashboard import charts, endpoint_client, forms, serving_view
from dashboard import format as fmt
from loadtest.runner import LoadTestConfig
from runs.registry import Registry

# -- figures -----------------------------------------------------------------------------------


def _trace(fig, name):
    return next(t for t in fig.data if t.name == name)


def test_loss_figure_draws_train_and_validation_loss_with_gaps_for_bad_values() -> None:
    series = {"loss": [(1, 2.0), (2, 1.0), (3, float("nan"))], "val_loss": [(1, 2.5), (2, 1.5)],
              "accuracy": [(1, 0.5)]}
    fig = charts.loss_figure(series)
    assert [t.name for t in fig.data] == ["loss", "val loss"]
    assert list(_trace(fig, "loss").y) == [2.0, 1.0, None]
    assert list(_trace(fig, "val loss").x) == [1, 2]
    assert fig.layout.xaxis.title.text == "epoch"


def test_empty_series_give_a_message_not_an_empty_axis() -> None:
    fig = charts.loss_figure({})
    assert not fig.data
    assert "no epochs" in fig.layout.annotations[0].text


def test_quality_figure_is_accuracy_for_classifiers_and_mae_for_regressors() -> None:
    acc = charts.accuracy_figure({"accuracy": [(1, 0.8)], "val_accuracy": [(1, 0.7)]})
    assert acc.layout.title.text == "Accuracy"
    assert [t.name for t in acc.data] == ["accuracy", "val accuracy"]
    mae = charts.accuracy_figure({"mae": [(1, 0.3)], "val_mae": [(1, 0.4)]})
    assert mae.layout.title.text == "Mean absolute error"
    assert [t.name for t in mae.data] == ["MAE", "val MAE"]
    # before the first epoch the task decides the title
    assert charts.accuracy_figure({}, "classification").layout.title.text == "Accuracy"
    assert charts.accuracy_figure({}, "regression").layout.title.text == "Mean absolute error"


def test_confusion_matrix_heatmap_keeps_counts_and_labels() -> None:
    fig = charts.confusion_matrix_figure([[5, 1], [0, 7]], ["cat", "dog"])
    heat = fig.data[0]
    assert heat.type == "heatmap"
    assert [list(r) for r in heat.z] == [[5, 1], [0, 7]]
    assert list(heat.x) == ["cat", "dog"] and list(heat.y) == ["cat", "dog"]
    assert heat.text[0][1] == "1"
    assert fig.layout.yaxis.autorange == "reversed"  # first class on top, as a table reads
    # wrong number of labels: fall back to indices rather than mislabel
    assert list(charts.confusion_matrix_figure([[1, 0], [0, 1]], ["only one"]).data[0].x) == ["0", "1"]


def test_loadtest_figure_puts_client_and_server_series_on_one_time_axis() -> None:
    rows = [
        {"step": 0, "users": 2, "rps": 10.0, "fail_per_s": 0.0, "p50_ms": 5, "p95_ms": 9, "p99_ms": 12,
         "server_queue_ms": 1.0, "server_compute_ms": 2.0},
        {"step": 1, "users": 4, "rps": 20.0, "fail_per_s": 1.0, "p50_ms": 6, "p95_ms": 11, "p99_ms": 30,
         "server_queue_ms": 3.0, "server_compute_ms": 2.5},
    ]
    fig = charts.loadtest_figure(rows, slo_lines={"p95_ms": 50.0})
    axes = {t.name: t.yaxis for t in fig.data}
    assert axes["requests/s"] == axes["failures/s"] == "y"
    assert axes["p50"] == axes["p95"] == axes["p99"] == "y2"
    assert axes["users"] == "y3"
    assert axes["server queue wait"] == axes["server compute"] == "y4"
    assert list(_trace(fig, "p99").y) == [12, 30]
    # the four panels share one x axis
    assert {fig.layout.xaxis.matches, fig.layout.xaxis2.matches, fig.layout.xaxis3.matches} == {"x4"}
    assert any(s.y0 == 50.0 for s in fig.layout.shapes)  # the SLO limit is drawn


def test_batch_histogram_shows_only_the_used_range_as_counts() -> None:
    cumulative = [(1.0, 0.0), (2.0, 0.0), (4.0, 5.0), (8.0, 8.0), (16.0, 8.0), (math.inf, 8.0)]
    counts = serving_view.histogram_counts(cumulative)
    assert counts == [(1.0, 0.0), (2.0, 0.0), (4.0, 5.0), (8.0, 3.0), (16.0, 0.0), (math.inf, 0.0)]
    fig = charts.batch_size_figure(counts)
    assert list(fig.data[0].x) == ["2–4", "4–8"]
    assert list(fig.data[0].y) == [5.0, 3.0]
    assert not charts.batch_size_figure([(1.0, 0.0)]).data


def test_latency_split_stacks_queue_compute_and_the_rest() -> None:
    fig = charts.latency_split_figure(3.0, 1.0, 0.5)
    assert [(t.name, t.x[0]) for t in fig.data] == [("queue wait", 3.0), ("compute", 1.0), ("other", 0.5)]
    assert fig.layout.barmode == "stack"


def test_overlay_draws_one_line_per_run_that_has_the_metric() -> None:
    runs = [("a", {"val_loss": [(1, 1.0), (2, 0.5)]}), ("b", {"val_loss": [(1, 0.9)]}), ("c", {"loss": [(1, 1)]})]
    fig = charts.overlay_figure(runs, "val_loss")
    assert [t.name for t in fig.data] == ["a", "b"]
    assert fig.data[0].line.color != fig.data[1].line.color
    assert "none of the selected runs" in charts.overlay_figure(runs, "p95_ms").layout.annotations[0].text


def test_config_diff_lists_only_what_differs_with_dotted_keys() -> None:
    configs = {"r1": {"model": {"hidden": [64], "lr": 0.001}, "data": {"dataset": "digits"}},
               "r2": {"model": {"hidden": [64, 64], "lr": 0.001}, "data": {"dataset": "digits"}}}
    rows = charts.config_diff(configs)
    assert rows == [{"parameter": "model.hidden", "r1": "[64]", "r2": "[64, 64]"}]
    assert len(charts.config_diff(configs, only_different=False)) == 3


# -- forms -> configs ---------------------------------------------------------------------------


def test_train_form_round_trips_through_the_train_job_config() -> None:
    form = forms.TrainForm(dataset="wine", layers=3, units=32, activation="tanh", dropout=0.1, optimizer="sgd",
                             learning_rate=0.01, batch_size=16, epochs=7, patience=2, seed=5)
    config = forms.model_config(form)
    assert config == ModelConfig(hidden=(32, 32, 32), activation="tanh", dropout=0.1, optimizer="sgd",
                                 learning_rate=0.01, batch_size=16, epochs=7, patience=2, seed=5)
    source = forms.data_source(form)
    job = TrainJob.from_dict(json.loads(json.dumps(TrainJob(config, source).to_dict())))  # as the registry keeps it
    assert job == TrainJob(config, source) and job.data.dataset == "wine"
    no_hidden = TrainJob(forms.model_config(forms.TrainForm(layers=0)), source)
    assert TrainJob.from_dict(no_hidden.to_dict()).model.hidden == ()


def test_csv_form_points_training_at_the_saved_upload(tmp_path) -> None:
    form = forms.TrainForm(dataset="csv", csv_target="label", csv_missing="drop")
    source = forms.data_source(form, tmp_path / "data.csv")
    job = TrainJob.from_dict(TrainJob(forms.model_config(form), source).to_dict())
    assert job.data.csv_path == str(tmp_path / "data.csv") and job.data.target == "label"
    assert job.data.missing == "drop"
    with pytest.raises(ValueError, match="uploaded file"):
        forms.data_source(form)


@pytest.mark.parametrize(
    ("changes", "message", "is_error"),
    [
        ({"dataset": "csv"}, "upload a CSV file", True),
        ({"dataset": "nope"}, "dataset must be one of digits", True),  # DataSource's own message
        ({"epochs": 0}, "epochs must be an integer in [1, 10000]; got 0", True),  # ModelConfig's own message
        ({"patience": 5, "epochs": 5}, "can never stop training early", False),
        ({"layers": 0, "dropout": 0.2}, "dropout has no effect without hidden layers", False),
        ({"learning_rate": 50.0}, "learning_rate must be a number in [1e-06, 10]; got 50.0", True),
        ({"optimizer": "sgd", "learning_rate": 5.0}, "with SGD diverges almost surely", False),
    ],
)
def test_train_check_sorts_errors_from_advice_in_one_line_each(changes, message, is_error) -> None:
    check = forms.train_check(forms.TrainForm(**changes))
    hits_in_errors = [m for m in check.errors if message in m]
    hits_in_advice = [m for m in check.advice if message in m]
    assert (hits_in_errors if is_error else hits_in_advice), check
    assert not (hits_in_advice if is_error else hits_in_errors), check
    assert check.ok is not is_error
    assert all("\n" not in m for m in (*check.errors, *check.advice))


def test_train_check_errors_are_modelconfigs_own() -> None:
    """Whatever ModelConfig refuses, the form refuses with the same message (and nothing it accepts)."""
    for changes in ({"units": 0}, {"layers": 9}, {"dropout": 0.95}, {"batch_size": 0}, {"patience": -1},
                    {"seed": -1}, {"activation": "softplus"}, {"optimizer": "adagrad"}):
        form = forms.TrainForm(**changes)
        with pytest.raises(ValueError) as raised:
            forms.model_config(form)
        assert forms.train_check(form).errors == (str(raised.value),)
    for changes in ({"dropout": 0.9}, {"learning_rate": 10.0}, {"learning_rate": 1e-6}, {"layers": 8},
                    {"units": 4096, "layers": 1}, {"patience": 0, "epochs": 1}):
        assert forms.train_check(forms.TrainForm(**changes)).ok


def test_train_check_of_a_csv_form_asks_for_the_file_then_the_target() -> None:
    form = forms.TrainForm(dataset="csv")
    assert forms.train_check(form).errors == ("upload a CSV file, or pick a built-in dataset",)
    assert forms.train_check(form, has_csv=True).errors == ("choose the target column of the CSV file",)
    assert forms.train_check(forms.TrainForm(dataset="csv", csv_target="y"), has_csv=True).ok


def test_every_builtin_dataset_is_described() -> None:
    from agent.data import BUILTIN_DATASETS

    assert set(forms.BUILTIN_INFO) == set(BUILTIN_DATASETS)


def test_every_load_shape_is_described() -> None:
    from loadtest.shapes import SHAPES

    assert set(forms.SHAPE_HELP) == set(SHAPES)


def test_default_train_form_has_no_problems() -> None:
    assert forms.train_check(forms.TrainForm()) == forms.Check()
    assert forms.train_check(forms.DEFAULT_TRAIN) == forms.Check()
    small = forms.train_check(forms.TrainForm(batch_size=128), n_rows=100)
    assert small.ok and "larger than the 100 rows" in " ".join(small.advice)


def test_serve_form_builds_the_endpoint_config_and_flags_useless_combinations() -> None:
    form = forms.ServeForm(runtime="keras", max_batch_size=8, batch_timeout_ms=1.5, max_enqueued_batches=10,
                             num_batch_threads=2, workers=1)
    assert forms.serve_check(form) == forms.Check()
    cfg = forms.serving_config(form)
    assert isinstance(cfg, ServingConfig)
    assert (cfg.runtime, cfg.max_batch_size, cfg.batch_timeout_ms, cfg.max_enqueued_batches,
            cfg.num_batch_threads) == ("keras", 8, 1.5, 10, 2)
    useless = forms.serve_check(forms.ServeForm(max_batch_size=1, batch_timeout_ms=2.0))
    assert useless == forms.Check(advice=(
        "batch timeout has no effect with max batch size 1 (every batch is full at once); set it to 0",))
    assert forms.serve_check(forms.ServeForm(max_batch_size=1, batch_timeout_ms=0.0)) == forms.Check()
    slow = forms.serve_check(forms.ServeForm(batch_timeout_ms=250.0))
    assert slow.ok and "adds that much latency" in slow.advice[0]
    assert forms.serve_check(forms.ServeForm(workers=0)).errors == ("workers must be in [1, 32]; got 0",)
    assert "model name must be a non-empty name" in forms.serve_check(forms.ServeForm(model_name="")).errors[0]
    assert not forms.serve_check(forms.ServeForm(model_name="a/b")).ok


@pytest.mark.parametrize(
    ("changes", "accepted"),
    [
        ({"num_batch_threads": 0}, True),  # batches on the event loop: ServingConfig takes it, so the UI does
        ({"num_batch_threads": -1}, False),
        ({"num_batch_threads": 65}, False),
        ({"batch_timeout_ms": 0.0}, True),
        ({"batch_timeout_ms": 10_000.0}, True),
        ({"batch_timeout_ms": 10_000.5}, False),
        ({"max_batch_size": 8192}, True),
        ({"max_batch_size": 8193}, False),
        ({"max_enqueued_batches": 0}, False),
        ({"runtime": "onnx"}, False),
    ],
)
def test_serve_check_accepts_exactly_what_servingconfig_accepts(changes, accepted) -> None:
    form = forms.ServeForm(**changes)
    check = forms.serve_check(form)
    values = {k: v for k, v in form.__dict__.items() if k != "model_name"}
    if accepted:
        assert ServingConfig(**values) and check.errors == ()
    else:
        with pytest.raises(ValueError) as raised:
            ServingConfig(**values)
        assert check.errors == (str(raised.value),)  # ServingConfig's own message, shown as is


def test_load_form_validation_messages() -> None:
    ok = forms.LoadForm(host="http://127.0.0.1:8600", slos="p95<=50ms")
    assert forms.load_check(ok, n_features=8) == forms.Check()

    def check(**changes):
        return forms.load_check(forms.LoadForm(**{**ok.__dict__, **changes}), n_features=8)

    def errors(**changes):
        return " | ".join(check(**changes).errors)

    def advice(**changes):
        found = check(**changes)
        assert found.ok, found.errors
        return " | ".join(found.advice)

    assert "spawn_rate must be > 0 users/s" in errors(spawn_rate=0.0)
    assert "choose a target" in errors(host="")
    assert "choose a target" in errors(host="   ") and "host must be" not in errors(host="")
    assert "spawn_rate must be > 0" in errors(host="", spawn_rate=0.0)  # the rest is still checked
    assert "only local targets" in errors(host="http://example.com:80")
    assert forms.load_check(forms.LoadForm(host="http://[::1]:8600"), n_features=8).ok
    assert "host must be an http(s) URL like http://127.0.0.1:8600" in errors(host="127.0.0.1:8600")
    assert "malformed SLO 'p95 under 50'" in errors(slos="p95 under 50")
    two_bad = check(slos="p95 under 50\np99<=1s\nlatency<5ms").errors
    assert len(two_bad) == 2 and "p95 under 50" in two_bad[0] and "latency" in two_bad[1]  # every bad line, once
    assert "max_users must be >= users (10) for the steps shape, got 5" in errors(shape="steps", users=10,
                                                                                  max_users=5)
    assert "target_rps must be > 0 requests/s for the rate shape" in errors(shape="rate", target_rps=0.0)
    assert "model_name: model name must be a non-empty name" in errors(model_name=" ")
    assert "samples_path must name a samples.json" in " | ".join(forms.load_check(ok).errors)
    assert "spike ends after the run" in advice(shape="spike", spike_at_s=15.0, spike_duration_s=10.0)
    assert "the ladder never climbs" in advice(shape="steps", step_time_s=30.0)
    assert "takes longer than the 20 s run" in advice(users=100, spawn_rate=2.0)


def test_load_check_accepts_exactly_what_loadtestconfig_accepts() -> None:
    """Boundary values: the form's verdict is LoadTestConfig's, with its own message."""
    base = forms.LoadForm(host="http://127.0.0.1:8600")
    for changes in ({"processes": 0}, {"processes": 64}, {"instances_per_request": 4096},
                    {"shape": "steps", "users": 0, "max_users": 1}):
        assert forms.load_check(forms.LoadForm(**{**base.__dict__, **changes}), n_features=8).ok, changes
    for changes in ({"processes": 65}, {"instances_per_request": 4097}, {"timeout_s": 0.0},
                    {"shape": "constant", "users": 0}, {"shape": "burst"}):
        form = forms.LoadForm(**{**base.__dict__, **changes})
        with pytest.raises(ValueError) as raised:
            forms.loadtest_config(form, n_features=8)
        assert forms.load_check(form, n_features=8).errors == (str(raised.value),), changes


def test_load_form_builds_the_runner_config(tmp_path) -> None:
    samples = tmp_path / "samples.json"
    samples.write_text(json.dumps({"instances": [[0.0, 1.0]]}))
    form = forms.LoadForm(host="http://127.0.0.1:9/", model_name="digits", users=8, spawn_rate=4, run_time_s=10,
                            shape="rate", target_rps=100.0, processes=1, slos="p95<=50ms, fail_ratio<=0.01")
    cfg = forms.loadtest_config(form, samples_path=samples)
    assert isinstance(cfg, LoadTestConfig)
    assert cfg.host == "http://127.0.0.1:9" and cfg.model_name == "digits"
    assert (cfg.users, cfg.run_time_s, cfg.shape, cfg.target_rps, cfg.processes) == (8, 10.0, "rate", 100.0, 0)
    assert cfg.slos == ("p95<=50ms", "fail_ratio<=0.01")
    external = forms.loadtest_config(forms.LoadForm(host="http://127.0.0.1:9"), n_features=64)
    assert external.n_features == 64 and external.samples_path == ""
    assert forms.slo_limits_ms(["p95<=50ms", "p99<0.2s", "rps>=10", "nonsense"]) == {"p95_ms": 50.0, "p99_ms": 200.0}


# -- formatting and scrapes -------------------------------------------------------------------


def test_duration_and_csv_export() -> None:
    assert fmt.duration(None) == "—"
    assert fmt.duration(12.34) == "12.3 s"
    assert fmt.duration(125) == "2 min 05 s"
    assert fmt.duration(7380) == "2 h 03 min"
    text = fmt.rows_to_csv([{"step": 1, "loss": 0.5}, {"step": 2, "val_loss": 0.4}])
    assert text.splitlines() == ["step,loss,val_loss", "1,0.5,", "2,,0.4"]


def test_run_export_holds_config_summary_and_metrics(registry: Registry) -> None:
    run_id = registry.create_run("train", {"model": {"hidden": [8]}}, name="t")
    registry.log_metrics(run_id, 1, {"loss": 1.0})
    registry.update_summary(run_id, {"test_metrics": {"accuracy": 0.9}})
    run = registry.get_run(run_id)
    doc = json.loads(fmt.run_export_json(run, registry.metric_rows(run_id)))
    assert doc["config"] == {"model": {"hidden": [8]}}
    assert doc["metrics"] == [{"step": 1, "loss": 1.0}]
    assert fmt.headline(run) == "test accuracy 0.900"


def test_delta_row_turns_two_scrapes_into_interval_rates() -> None:
    a = ServerSnapshot(at=10.0, requests_by_code={"200": 100.0},
                       queue_wait=HistogramValue(100, 0.1), compute=HistogramValue(10, 0.05),
                       batch_size=HistogramValue(10, 100))
    b = ServerSnapshot(at=12.0, requests_by_code={"200": 300.0, "503": 20.0},
                       queue_wait=HistogramValue(300, 0.5), compute=HistogramValue(20, 0.1),
                       batch_size=HistogramValue(20, 300), queue_depth_rows=7.0)
    row = serving_view.delta_row(snapshot_delta(a, b), b, 2.0)
    assert row["server_rps"] == pytest.approx(110.0)
    assert row["server_queue_ms"] == pytest.approx(2.0)
    assert row["server_compute_ms"] == pytest.approx(5.0)
    assert row["batch_size"] == pytest.approx(20.0)
    assert row["server_shed_per_s"] == pytest.approx(10.0)
    assert row["queue_depth_rows"] == 7.0


def test_describe_prediction_names_the_class() -> None:
    assert serving_view.describe_prediction([0.1, 0.7, 0.2], ["a", "b", "c"]) == ("b", 0.7)
    assert serving_view.describe_prediction([3.25], []) == ("3.25", None)
    assert serving_view.describe_prediction(1.5, []) == ("1.5", None)


@pytest.fixture
def fake_endpoint() -> Iterator[str]:
    """A real local HTTP server answering :predict like TF Serving (and 400 for a wrong width)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            rows = body["instances"]
            if any(len(r) != 2 for r in rows):
                code, doc = 400, {"error": "each instance needs 2 features"}
            else:
                code, doc = 200, {"predictions": [[0.25, 0.75] for _ in rows]}
            data = json.dumps(doc).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_predict_sends_tf_serving_rows_and_reads_errors(fake_endpoint: str) -> None:
    status, body = endpoint_client.predict(fake_endpoint, "m", [[1.0, 2.0]])
    assert status == 200 and body == {"predictions": [[0.25, 0.75]]}
    status, body = endpoint_client.predict(fake_endpoint, "m", [[1.0]])
    assert status == 400 and "2 features" in body["error"]


def test_overload_figure_plots_goodput_and_503s_against_offered_load() -> None:
    from loadtest.results import overload_point

    runs = [{"offered_rps": 4000.0, "requests": 40000, "rps": 4000.0, "ok_rps": 4000.0, "shed": 0},
            {"offered_rps": 20000.0, "requests": 100000, "rps": 10000.0, "ok_rps": 6000.0, "shed": 40000}]
    points = [overload_point(s) for s in runs]
    assert points[1] == {"offered": 20000.0, "achieved": 10000.0, "goodput": 6000.0, "shed_per_s": 4000.0}
    assert overload_point({"offered_rps": None, "requests": 5, "rps": 1.0}) is None  # closed loop
    fig = charts.overload_figure([p for p in points if p], current=20000.0)
    traces = {t.name: t for t in fig.data}
    assert list(traces["goodput (2xx/s)"].y) == [4000.0, 6000.0]
    assert list(traces["503/s"].y) == [0.0, 4000.0] and list(traces["503/s"].x) == [4000.0, 20000.0]
    assert "no open-loop" in charts.overload_figure([]).layout.annotations[0].text


def test_loadtest_figure_has_a_legend_per_panel_and_one_colour_per_meaning() -> None:
    rows = [{"step": t, "users": 4, "rps": 10.0, "server_rps": 9.0, "fail_per_s": 1.0, "server_shed_per_s": 0.5,
             "p50_ms": 5, "p95_ms": 9, "p99_ms": 12, "server_queue_ms": 1.0, "server_compute_ms": 2.0}
            for t in range(3)]
    fig = charts.loadtest_figure(rows)
    legend_of = {t.name: t.legend for t in fig.data}
    assert legend_of["requests/s"] == legend_of["failures/s"] == "legend"
    assert legend_of["p50"] == legend_of["p99"] == "legend2"
    assert legend_of["server compute"] == "legend4"
    assert not _trace(fig, "users").showlegend  # one line: the panel's title names it
    # each legend sits beside its own panel
    assert fig.layout.legend2.y == fig.layout.yaxis2.domain[1] and fig.layout.legend4.y == fig.layout.yaxis4.domain[1]
    colours = [t.line.color for t in fig.data]
    assert len(colours) == len(set(colours))  # p99 and failures/s no longer share red
