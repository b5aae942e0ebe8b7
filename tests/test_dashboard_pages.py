"""AppTest coverage of each dashboard page, against a real registry prepared in a temporary state dir.

Each test runs one page file the way ``st.navigation`` would, reads its widgets
and output, and (where the page starts work) checks the job recorded in the
registry. Runs are written straight into the registry, so rendering a finished
train or load-test run needs no TensorFlow and no Locust.
"""

from __future__ import annotations

import http.server
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psutil
import pytest
from streamlit.testing.v1 import AppTest

from agent.data import DataSpec
from agent.export import ModelMetadata
from agent.serving.metrics import ServingMetrics
from dashboard import forms
from runs.jobs import stop_job, wait_job
from runs.registry import Registry

PAGES = Path(__file__).resolve().parent.parent / "dashboard" / "pages"
TIMEOUT_S = 60


def _page(name: str) -> AppTest:
    at = AppTest.from_file(str(PAGES / f"{name}.py"), default_timeout=TIMEOUT_S)
    return at.run()


def _text(at: AppTest) -> str:
    parts = [m.value for m in at.markdown] + [c.value for c in at.caption] + [str(m.value) for m in at.metric]
    parts += [e.value for e in at.error] + [w.value for w in at.warning] + [i.value for i in at.info]
    parts += [s.value for s in at.success] + [m.label for m in at.metric]
    return "\n".join(str(p) for p in parts)


def _json(at: AppTest, index: int = 0) -> dict:
    return json.loads(at.json[index].value)


def _assert_widgets_have_help(at: AppTest) -> None:
    """Every input widget has a key and a help text (the parameter it sets and its effect)."""
    kinds = ("slider", "select_slider", "selectbox", "number_input", "text_input", "text_area", "multiselect",
             "radio", "checkbox", "toggle", "file_uploader")
    seen = 0
    for kind in kinds:
        for widget in at.get(kind):
            seen += 1
            assert widget.key and not widget.key.startswith("$$"), f"{kind} {widget.label!r} has no key"
            assert widget.proto.help, f"{kind} {widget.label!r} has no help text"
    assert seen


def _train_run(registry: Registry, *, name: str = "train digits", hidden=(64,), lr: float = 0.001,
               status: str = "completed", epochs: int = 4, with_model: bool = True) -> str:
    run_id = registry.create_run(
        "train", {"model": {"hidden": list(hidden), "learning_rate": lr, "epochs": epochs},
                  "data": {"dataset": "digits"}}, name=name, status="running")
    registry.log_metric_rows(run_id, [
        (e, {"loss": 2.0 / e, "val_loss": 2.2 / e, "accuracy": 1 - 0.5 / e, "val_accuracy": 1 - 0.6 / e,
             "samples_per_s": 5000.0 + e})
        for e in range(1, epochs + 1)
    ])
    summary = {"data": {"name": "digits", "classes": ["zero", "one"], "notes": ["dropped 3 rows"]},
               "test_metrics": {"accuracy": 0.9375, "precision": 0.94, "recall": 0.93, "f1": 0.935,
                                "confusion_matrix": [[15, 1], [1, 15]]},
               "param_count": 4939, "epochs_run": epochs}
    if with_model:
        model = registry.artifacts_dir(run_id) / "model.keras"
        model.write_bytes(b"PK\x05\x06" + b"\0" * 18)  # an empty zip: enough for the file checks of the pages
        (model.parent / "samples.json").write_text(json.dumps({"instances": [[0.0] * 4], "targets": [1]}))
        meta = ModelMetadata(spec=DataSpec("digits", "classification", ("a", "b", "c", "d"), ("zero", "one")),
                             config={}, metrics={}, param_count=4939, output_name="probabilities")
        (model.parent / "metadata.json").write_text(json.dumps(meta.to_dict()))
        summary["model_path"] = str(model)
    registry.update_summary(run_id, summary)
    if status != "running":
        registry.set_status(run_id, status)
    return run_id


def _load_run(registry: Registry, *, name: str = "swarm constant", users: int = 8) -> str:
    run_id = registry.create_run("loadtest", {"host": "http://127.0.0.1:8600", "users": users, "run_time_s": 3,
                                              "slos": ["p95<=50ms", "rps>=1000"]}, name=name, status="running")
    registry.log_metric_rows(run_id, [
        (s, {"users": users, "rps": 100.0 + s, "fail_per_s": 0.0, "p50_ms": 4.0, "p95_ms": 9.0 + s,
             "p99_ms": 20.0, "server_queue_ms": 1.0, "server_compute_ms": 0.5, "locust_cpu_pct": 30.0})
        for s in range(3)
    ])
    registry.update_summary(run_id, {
        "requests": 303, "failures": 3, "fail_ratio": 0.0099, "rps": 101.0, "p50_ms": 4.0, "p95_ms": 10.0,
        "p99_ms": 20.0, "max_ms": 31.0, "failures_by_reason": {"503 shed": 3}, "saturated": False,
        "verdict": "ok: 101 req/s, p95 10 ms", "server": {"queue_ms": 1.0, "compute_ms": 0.5},
        "slo": [{"expr": "p95<=50ms", "measured": 10.0, "limit": 50.0, "passed": True},
                {"expr": "rps>=1000", "measured": 101.0, "limit": 1000.0, "passed": False}],
        "reports": {"csv": _report(registry, run_id, "locust_stats.csv", "Type,Name\n"),
                    "html": _report(registry, run_id, "locust.html", "<html></html>")},
    })
    registry.set_status(run_id, "completed")
    return run_id


def _report(registry: Registry, run_id: str, name: str, text: str) -> str:
    path = registry.artifacts_dir(run_id) / name
    path.write_text(text)
    return str(path)


# -- Train ------------------------------------------------------------------------------------


def test_train_first_run_shows_the_one_click_path_and_defaults(home: Path) -> None:
    at = _page("train")
    assert not at.exception
    assert [b.label for b in at.button][:2] == ["Train the default model", "Train"]
    assert at.selectbox(key="train.dataset").value == "digits"
    assert at.slider(key="train.layers").value == forms.DEFAULT_TRAIN.layers  # what the first-run card trains
    assert at.select_slider(key="train.units").value == 64
    assert at.select_slider(key="train.lr").value == 0.001
    assert at.number_input(key="train.epochs").value == forms.DEFAULT_TRAIN.epochs
    assert "No training runs yet" in _text(at)
    _assert_widgets_have_help(at)


@pytest.mark.integration  # starts a real training job
def test_train_the_default_model_in_one_click(home: Path, registry: Registry) -> None:
    at = _page("train")
    at.button(key="train.first_run").click().run()
    assert not at.exception
    run = registry.list_runs(kind="train")[0]
    try:
        assert run.config["model"] == forms.model_config(forms.DEFAULT_TRAIN).to_dict()
        assert run.config["data"]["dataset"] == "digits" and run.pid is not None
        assert "train.first_run" not in [b.key for b in at.button]  # the first-run box is gone
    finally:
        stop_job(registry, run.id, grace_s=5)


def test_train_config_follows_the_widgets(home: Path) -> None:
    at = _page("train")
    at.slider(key="train.layers").set_value(3)
    at.select_slider(key="train.units").set_value(128)
    at.selectbox(key="train.activation").set_value("tanh")
    at.select_slider(key="train.lr").set_value(0.01)
    at.number_input(key="train.epochs").set_value(3)
    at.run()
    assert not at.exception
    model = _json(at)["model"]
    assert model["hidden"] == [128, 128, 128]
    assert model["activation"] == "tanh" and model["learning_rate"] == 0.01 and model["epochs"] == 3


def test_train_validation_messages_instead_of_tracebacks(home: Path) -> None:
    at = _page("train")
    at.number_input(key="train.epochs").set_value(4)
    at.number_input(key="train.patience").set_value(6)
    at.slider(key="train.layers").set_value(0)
    at.slider(key="train.dropout").set_value(0.3)
    at.run()
    assert not at.exception
    warnings = [w.value for w in at.warning]
    assert any("can never stop training early" in w for w in warnings)
    assert any("dropout has no effect without hidden layers" in w for w in warnings)
    assert not at.button(key="train.start").disabled  # advice, not a blocker

    at.selectbox(key="train.dataset").set_value("csv").run()
    assert any("upload a CSV file" in e.value for e in at.error)
    assert at.button(key="train.start").disabled


def test_train_csv_upload_preview_target_and_missing_values(home: Path) -> None:
    at = _page("train")
    at.selectbox(key="train.dataset").set_value("csv").run()
    rows = "\n".join(f"{i},{i * 2 if i != 3 else ''},{'yes' if i % 2 else 'no'}" for i in range(80))
    at.file_uploader(key="train.upload").set_value(("pets.csv", f"a,b,label\n{rows}\n".encode(), "text/csv")).run()
    assert not at.exception
    assert at.selectbox(key="train.target").value == "label"  # last column by default
    assert at.dataframe  # the preview
    assert any("missing values in b" in e.value for e in at.error)  # the default policy rejects them
    at.selectbox(key="train.missing").set_value("drop").run()
    assert not at.error, [e.value for e in at.error]
    assert any("classification, 79 rows, 2 features" in s.value for s in at.success)
    assert not at.button(key="train.start").disabled


@pytest.mark.integration  # starts a real training job
def test_train_on_an_uploaded_csv_saves_it_with_the_run_and_trains(home: Path, registry: Registry) -> None:
    at = _page("train")
    at.selectbox(key="train.dataset").set_value("csv").run()
    rows = "\n".join(f"{i % 7},{(i * 3) % 5},{'yes' if (i % 7) > 3 else 'no'}" for i in range(120))
    data = f"a,b,label\n{rows}\n".encode()
    at.file_uploader(key="train.upload").set_value(("pets.csv", data, "text/csv")).run()
    at.slider(key="train.layers").set_value(1)
    at.number_input(key="train.epochs").set_value(2)
    at.select_slider(key="train.batch_size").set_value(16)
    at.run()
    at.button(key="train.start").click().run()
    assert not at.exception
    run = registry.list_runs(kind="train")[0]
    try:
        saved = Path(run.config["data"]["csv_path"])
        assert saved.parent == registry.artifacts_dir(run.id)  # the upload lives with its run
        assert saved.read_bytes() == data
        assert run.config["data"]["target"] == "label" and run.name == "train pets"
        assert saved.name == "pets.csv"  # the file's own name, so the dataset is named after it
        finished = wait_job(registry, run.id, timeout_s=120)
        assert finished.status == "completed", finished.error
        assert finished.summary["data"]["name"] == "pets"  # not "data"
        assert finished.summary["data"]["task"] == "classification"
        assert finished.summary["data"]["classes"] == ["no", "yes"]
    finally:
        stop_job(registry, run.id, grace_s=5)


@pytest.mark.integration  # starts a real training job
def test_train_button_starts_a_job_that_stop_ends(home: Path, registry: Registry) -> None:
    at = _page("train")
    at.selectbox(key="train.dataset").set_value("iris")
    at.slider(key="train.layers").set_value(1)
    at.select_slider(key="train.units").set_value(8)
    at.number_input(key="train.epochs").set_value(2)
    at.run()
    at.button(key="train.start").click().run()
    runs = registry.list_runs(kind="train")
    assert len(runs) == 1
    run = runs[0]
    try:
        assert run.config["model"]["hidden"] == [8] and run.config["model"]["epochs"] == 2
        assert run.config["data"]["dataset"] == "iris"
        assert run.pid is not None
        assert at.selectbox(key="train.view").value == run.id  # the page follows the new run
        at.button(key="train.stop").click().run()
        assert not at.exception
        stopped = registry.get_run(run.id)
        assert stopped.status == "stopped"
        with pytest.raises(ProcessLookupError):
            os.killpg(run.pid, 0)  # the job's whole process group is gone
    finally:
        stop_job(registry, run.id, grace_s=5)


def test_train_page_renders_a_finished_run(home: Path, registry: Registry) -> None:
    _train_run(registry)
    at = _page("train")
    assert not at.exception
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["accuracy"] == "0.9375"
    assert metrics["parameters"] == "4,939"
    assert metrics["epochs run"] == "4"
    assert len(at.get("plotly_chart")) == 3  # loss, accuracy, confusion matrix
    assert [b.label for b in at.get("download_button")] == ["Download model.keras"]
    assert "dropped 3 rows" in _text(at)
    assert "Train the default model" not in [b.label for b in at.button]


def test_train_page_renders_a_regression_run_without_confusion_matrix(home: Path, registry: Registry) -> None:
    run_id = registry.create_run("train", {"model": {"hidden": [8]}, "data": {"dataset": "diabetes"}},
                                 name="train diabetes", status="running")
    registry.log_metric_rows(run_id, [(e, {"loss": 3.0 / e, "val_loss": 3.5 / e, "mae": 1.0 / e,
                                           "val_mae": 1.2 / e}) for e in (1, 2)])
    registry.update_summary(run_id, {"test_metrics": {"mse": 0.5, "mae": 0.25, "r2": 0.75}, "param_count": 97,
                                     "epochs_run": 2})
    registry.set_status(run_id, "completed")
    at = _page("train")
    assert not at.exception
    metrics = {m.label: m.value for m in at.metric}
    assert (metrics["MSE"], metrics["MAE"], metrics["R²"]) == ("0.5000", "0.2500", "0.7500")
    assert metrics["val MAE"] == "0.6000"
    titles = [json.loads(c.proto.spec)["layout"]["title"]["text"] for c in at.get("plotly_chart")]
    assert titles == ["Loss", "Mean absolute error"]


def test_train_page_shows_a_running_job_live_with_stop(home: Path, registry: Registry) -> None:
    run_id = _train_run(registry, status="running", with_model=False)
    # The run's process is this test process: alive, so nothing reaps it.
    registry.mark_started(run_id, os.getpid(), psutil.Process().create_time())
    registry.set_progress(run_id, {"epoch": 3, "epochs": 4, "batch": 5, "batches": 10})
    at = _page("train")
    assert not at.exception
    progress = at.get("progress")
    assert progress and "epoch 3/4, batch 5/10" in progress[0].proto.text
    assert at.button(key="train.stop")
    assert {m.label: m.value for m in at.metric}["samples/s"] == "5004"
    registry.set_status(run_id, "stopped")


# -- Runs -------------------------------------------------------------------------------------


def test_runs_page_empty_registry(home: Path) -> None:
    at = _page("run_history")
    assert not at.exception
    assert "No runs match" in _text(at)


def test_runs_page_filters_overlays_and_diffs(home: Path, registry: Registry) -> None:
    a = _train_run(registry, name="small", hidden=(16,))
    b = _train_run(registry, name="big", hidden=(256, 256))
    load = _load_run(registry)
    at = _page("run_history")
    assert not at.exception
    _assert_widgets_have_help(at)
    assert len(at.dataframe[0].value) == 3
    at.multiselect(key="runs.kinds").set_value(["loadtest"]).run()
    assert list(at.dataframe[0].value["id"]) == [load]
    at.multiselect(key="runs.kinds").set_value([]).run()

    at.multiselect(key="runs.compare").set_value([a, b]).run()
    assert not at.exception
    charts = at.get("plotly_chart")
    assert len(charts) == 1
    fig = json.loads(charts[0].proto.spec)
    assert sorted(t["name"] for t in fig["data"]) == [f"big ({b})", f"small ({a})"]  # full ids
    diff = at.table[0].value
    assert list(diff["parameter"]) == ["model.hidden"]

    at.multiselect(key="runs.compare").set_value([a, load]).run()  # mixed kinds: one chart per kind
    assert len(at.get("plotly_chart")) == 2


def test_runs_page_exports_and_deletes_a_run(home: Path, registry: Registry) -> None:
    keep = _train_run(registry, name="keep")
    gone = _train_run(registry, name="gone")
    at = _page("run_history")
    at.selectbox(key="runs.detail").set_value(gone).run()
    labels = [d.label for d in at.get("download_button")]
    assert labels == ["Export this list (CSV)", "Export JSON", "Export metrics CSV"]
    assert at.button(key="runs.delete").disabled  # needs the confirmation first
    at.checkbox(key="runs.confirm_delete").check().run()
    at.button(key="runs.delete").click().run()
    assert not at.exception
    assert [r.id for r in registry.list_runs()] == [keep]
    assert not registry.artifacts_dir(gone).exists()


def test_runs_page_refuses_to_delete_an_active_run(home: Path, registry: Registry) -> None:
    run_id = _train_run(registry, status="running", with_model=False)
    registry.mark_started(run_id, os.getpid(), psutil.Process().create_time())
    at = _page("run_history")
    assert at.button(key="runs.delete").disabled
    assert at.checkbox(key="runs.confirm_delete").disabled
    assert "stop it from its page" in _text(at)
    registry.set_status(run_id, "stopped")


# -- Serve ------------------------------------------------------------------------------------


def test_serve_page_without_models_points_to_train(home: Path) -> None:
    at = _page("serve")
    assert not at.exception
    assert "Train one on the **Train** page" in _text(at)


def test_serve_page_defaults_config_and_validation(home: Path, registry: Registry) -> None:
    _train_run(registry)
    at = _page("serve")
    assert not at.exception
    _assert_widgets_have_help(at)
    assert at.selectbox(key="serve.runtime").value == "tflite"
    assert at.select_slider(key="serve.max_batch_size").value == 32
    assert at.slider(key="serve.batch_timeout_ms").value == 2.0
    assert {m.label: m.value for m in at.metric}["test accuracy"] == "0.9375"

    at.selectbox(key="serve.runtime").set_value("keras")
    at.select_slider(key="serve.max_batch_size").set_value(64)
    at.slider(key="serve.num_batch_threads").set_value(2)
    at.run()
    cfg = _json(at)
    assert (cfg["runtime"], cfg["max_batch_size"], cfg["num_batch_threads"]) == ("keras", 64, 2)

    at.select_slider(key="serve.max_batch_size").set_value(1).run()
    assert any("batch timeout has no effect with max batch size 1" in w.value for w in at.warning)
    assert not at.error and not at.button(key="serve.start").disabled  # advice, not a blocker
    at.text_input(key="serve.model_name").set_value("  ").run()
    assert any("model name must be a non-empty name" in e.value for e in at.error)
    assert at.button(key="serve.start").disabled


def test_serve_page_accepts_zero_batch_threads_like_the_serving_config(home: Path, registry: Registry) -> None:
    """ServingConfig runs batches on the event loop with num_batch_threads=0; the page offers and accepts it."""
    _train_run(registry)
    at = _page("serve")
    slider = at.slider(key="serve.num_batch_threads")
    assert slider.min == 0 and "event loop" in slider.proto.help
    slider.set_value(0).run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert _json(at)["num_batch_threads"] == 0
    assert not at.button(key="serve.start").disabled
    at.text_input(key="serve.model_name").set_value("a/b").run()  # the endpoint's URL rule, with its message
    assert [e.value for e in at.error] == ["model name must be a non-empty name without '/' or ':', got 'a/b'"]
    assert at.button(key="serve.start").disabled


@pytest.mark.integration
def test_serve_page_imports_a_model_by_path_and_refuses_a_bad_one(
    home: Path, registry: Registry, trained_model: Path, tmp_path: Path
) -> None:
    at = _page("serve")
    assert not at.exception
    (tmp_path / "model.h5").write_bytes(b"x")
    at.text_input(key="serve.import_path").set_value(str(tmp_path / "model.h5")).run()
    at.button(key="serve.import").click().run()
    assert not at.exception
    assert [e.value for e in at.error] == ["Not imported: model.h5: .h5 files are refused (they can run code when "
                                           "loaded); save the model as .keras or as a SavedModel directory"]
    assert registry.list_runs() == []
    at.text_input(key="serve.import_path").set_value(str(trained_model)).run()
    at.button(key="serve.import").click().run()
    assert not at.exception and not at.error
    (run,) = registry.list_runs(kind="train")
    assert run.config["imported"] is True and run.status == "completed"
    assert at.selectbox(key="serve.model").value == run.id  # the picker shows the imported model
    assert "features 64 float32" in _text(at)


def test_serve_page_renders_a_stopped_endpoint(home: Path, registry: Registry) -> None:
    model_run = _train_run(registry)
    model_path = registry.get_run(model_run).summary["model_path"]
    run_id = registry.create_run("serve", {"model_path": model_path, "name": "digits"}, name="serve digits (xla)")
    registry.update_summary(run_id, {"url": "http://127.0.0.1:1", "port": 1, "pid": 4242, "name": "digits",
                                     "runtime": "xla", "ready_at": time.time() - 5,
                                     "config": {"max_batch_size": 16, "batch_timeout_ms": 1.0}})
    registry.set_status(run_id, "stopped")
    at = _page("serve")
    assert not at.exception
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["status"] == "stopped"
    assert metrics["runtime"] == "xla" and metrics["pid"] == "4242"
    assert metrics["batching"] == "16 / 1.0 ms"
    assert "serve.stop" not in [b.key for b in at.button]


@pytest.fixture
def fake_endpoint() -> Iterator[tuple[str, ServingMetrics]]:
    """A real local HTTP server with the endpoint's own metrics exposition and a TF Serving :predict."""
    metrics = ServingMetrics("digits", process_metrics=False)

    class Handler(http.server.BaseHTTPRequestHandler):
        def _send(self, code: int, body: bytes, ctype: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            self._send(200, metrics.exposition(), "text/plain")

        def do_POST(self) -> None:
            rows = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["instances"]
            self._send(200, json.dumps({"predictions": [[0.2, 0.8] for _ in rows]}).encode(), "application/json")

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", metrics
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_serve_page_live_panel_and_try_it_on_a_running_endpoint(home: Path, registry: Registry,
                                                                 fake_endpoint) -> None:
    url, metrics = fake_endpoint
    model_path = registry.get_run(_train_run(registry)).summary["model_path"]
    run_id = registry.create_run("serve", {"model_path": model_path, "name": "digits"}, name="serve digits")
    registry.mark_started(run_id, os.getpid(), psutil.Process().create_time())
    registry.update_summary(run_id, {"url": url, "port": 1, "pid": os.getpid(), "name": "digits",
                                     "runtime": "tflite", "ready_at": time.time(),
                                     "config": {"max_batch_size": 32, "batch_timeout_ms": 2.0}})
    try:
        at = _page("serve")  # first scrape
        for _ in range(40):  # then traffic: 40 requests in 5 batches of 8 rows, 2 shed
            metrics.request_done(200, 0.004)
            metrics.queue_waits([0.002])
        for _ in range(5):
            metrics.batch_done(8, 8, 0.001)
        metrics.request_done(503, 0.0001)
        metrics.request_done(503, 0.0001)
        time.sleep(0.05)
        at.run()  # second scrape: the panel now has an interval to show
        assert not at.exception
        m = {x.label: x.value for x in at.metric}
        assert m["status"] == "ready" and m["runtime"] == "tflite"
        assert m["mean batch"] == "8.0"
        assert m["503 shed"] == "2"
        figs = {c.key: json.loads(c.proto.spec) for c in at.get("plotly_chart") if c.key}
        batch = figs["serve.batch_chart"]["data"][0]
        assert batch["x"] == ["4–8"] and batch["y"] == [5.0]
        split = {t["name"]: t["x"][0] for t in figs["serve.split_chart"]["data"]}
        assert split["queue wait"] == pytest.approx(2.0) and split["compute"] == pytest.approx(1.0)

        at.button(key="serve.send").click().run()
        m = {x.label: x.value for x in at.metric}
        assert m["prediction"] == "one (80.0%)"
        assert m["true label"] == "one"
    finally:
        registry.set_status(run_id, "stopped")


# -- Load test --------------------------------------------------------------------------------


def test_loadtest_page_defaults_and_external_url_config(home: Path) -> None:
    at = _page("load_test")
    assert not at.exception
    _assert_widgets_have_help(at)
    assert "No endpoint is running" in _text(at)
    assert at.number_input(key="load.users").value == 16
    assert at.number_input(key="load.run_time_s").value == 20
    assert at.selectbox(key="load.shape").value == "constant"
    at.radio(key="load.target_kind").set_value("URL").run()
    at.number_input(key="load.users").set_value(5)
    at.selectbox(key="load.shape").set_value("steps").run()
    at.number_input(key="load.max_users").set_value(20)
    at.run()
    assert not at.exception
    cfg = _json(at)
    assert cfg["host"] == "http://127.0.0.1:8600" and cfg["n_features"] == 64
    assert (cfg["users"], cfg["shape"], cfg["max_users"]) == (5, "steps", 20)
    assert cfg["slos"] == ["p95<=100ms", "fail_ratio<=0.01"]
    assert not at.button(key="load.start").disabled


def test_loadtest_page_protocol_choice_reaches_the_config(home: Path) -> None:
    at = _page("load_test")
    at.radio(key="load.target_kind").set_value("URL").run()
    assert at.radio(key="load.protocol").value == "tfserving"
    assert "/v1/models/model:predict" in _text(at)
    at.radio(key="load.protocol").set_value("v2").run()
    assert not at.exception
    assert _json(at)["protocol"] == "v2"
    assert "POST `http://127.0.0.1:8600/v2/models/model/infer`" in _text(at)  # code, not a link


def test_loadtest_page_master_mode_shows_the_worker_command_and_each_workers_share(
    home: Path, registry: Registry,
) -> None:
    run_id = _load_run(registry)
    registry.update_summary(run_id, {"topology": {"role": "master", "expected_workers": 2, "workers": [
        {"id": "vm_aaa", "requests": 150, "failures": 1, "cpu_pct_max": 35.0},
        {"id": "vm_bbb", "requests": 153, "failures": 2, "cpu_pct_max": 97.0}]}})
    at = _page("load_test")
    assert not at.exception
    assert "2 connected; their requests add up to 303" in _text(at)
    frames = {tuple(d.value.columns): d.value for d in at.dataframe}
    workers = frames[("worker", "requests", "failures", "peak CPU %", "saturated")]
    assert list(workers["saturated"]) == ["no", "yes: measured Locust"]
    at.radio(key="load.target_kind").set_value("URL").run()
    at.number_input(key="load.expect_workers").set_value(2).run()
    assert not at.exception
    assert _json(at)["expect_workers"] == 2
    code = at.get("code")
    assert code and "--worker --master-host 127.0.0.1 --master-port 5557" in code[0].value


def test_loadtest_page_url_target_can_send_a_trained_models_rows(home: Path, registry: Registry) -> None:
    run_id = _train_run(registry)
    at = _page("load_test")
    at.radio(key="load.target_kind").set_value("URL").run()
    at.selectbox(key="load.payload").set_value(run_id).run()
    assert not at.exception
    cfg = _json(at)
    assert cfg["samples_path"] == str(registry.artifacts_dir(run_id) / "samples.json")
    assert cfg["n_features"] == 0


def test_loadtest_page_validation_messages(home: Path) -> None:
    at = _page("load_test")
    at.radio(key="load.target_kind").set_value("URL").run()
    at.number_input(key="load.spawn_rate").set_value(0.0)
    at.text_area(key="load.slos").set_value("p95 fast")
    at.text_input(key="load.url").set_value("http://example.com:80")
    at.run()
    assert not at.exception
    errors = " | ".join(e.value for e in at.error)
    assert "spawn_rate must be > 0 users/s, got 0.0" in errors  # LoadTestConfig's own message
    assert "malformed SLO 'p95 fast'" in errors
    assert "only local targets" in errors
    assert at.button(key="load.start").disabled


def test_loadtest_page_shows_advice_without_blocking_the_start(home: Path) -> None:
    at = _page("load_test")
    at.radio(key="load.target_kind").set_value("URL").run()
    at.number_input(key="load.users").set_value(100)
    at.number_input(key="load.spawn_rate").set_value(2.0)
    at.run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert any("spawning 100 users at 2/s takes longer than the 20 s run" in w.value for w in at.warning)
    assert not at.button(key="load.start").disabled
    at.selectbox(key="load.shape").set_value("steps").run()
    at.number_input(key="load.max_users").set_value(50).run()  # below the 100-user start: LoadTestConfig refuses
    assert [e.value for e in at.error] == ["max_users must be >= users (100) for the steps shape, got 50"]
    assert at.button(key="load.start").disabled


def test_loadtest_page_uses_the_running_endpoint_as_target(home: Path, registry: Registry) -> None:
    model_run = _train_run(registry)
    model_path = registry.get_run(model_run).summary["model_path"]
    serve = registry.create_run("serve", {"model_path": model_path, "name": "digits"}, name="serve digits")
    registry.mark_started(serve, os.getpid(), psutil.Process().create_time())
    registry.update_summary(serve, {"url": "http://127.0.0.1:8611", "name": "digits", "ready_at": time.time()})
    at = _page("load_test")
    assert not at.exception
    cfg = _json(at)
    assert cfg["host"] == "http://127.0.0.1:8611" and cfg["model_name"] == "digits"
    assert cfg["samples_path"].endswith("samples.json")
    registry.set_status(serve, "stopped")


@pytest.mark.integration  # a real endpoint (in a thread) whose metadata the generator reads
def test_loadtest_page_generates_payloads_from_the_endpoints_signature(home: Path, registry: Registry,
                                                                       tmp_path: Path) -> None:
    from model_zoo import cnn_model
    from serving_helpers import running_server

    from agent.serving.app import create_app
    from agent.serving.config import ServingConfig

    model_path = tmp_path / "cnn.keras"  # an imported model without samples.json beside it
    cnn_model().save(model_path)
    with running_server(create_app(model_path, "cnn", ServingConfig(runtime="tf-function"))) as port:
        serve = registry.create_run("serve", {"model_path": str(model_path), "name": "cnn"}, name="serve cnn")
        registry.mark_started(serve, os.getpid(), psutil.Process().create_time())
        registry.update_summary(serve, {"url": f"http://127.0.0.1:{port}", "name": "cnn", "ready_at": time.time()})
        at = _page("load_test")
        assert at.radio(key="load.endpoint_payload").options == ["generated from the signature"]
        at.selectbox(key="load.gen_dist").set_value("normal")
        at.number_input(key="load.gen_low").set_value(-1.0)
        at.number_input(key="load.gen_high").set_value(1.0).run()
        assert not at.exception and not at.error, [e.value for e in at.error]
        _assert_widgets_have_help(at)
        cfg = _json(at)
        samples = Path(cfg["samples_path"])
        assert samples.parent == home / "payloads" and cfg["n_features"] == 0
        rows = np.asarray(json.loads(samples.read_text())["instances"])
        assert rows.shape == (256, 8, 8, 1) and rows.min() >= -1.0 and rows.max() <= 1.0 and rows.min() < -0.5
        assert not at.button(key="load.start").disabled

        at.number_input(key="load.gen_low").set_value(2.0).run()  # low above high
        assert [e.value for e in at.error][:1] == ["payload range must be finite with low <= high; got 2.0..1.0"]
        assert at.button(key="load.start").disabled
        registry.set_status(serve, "stopped")

    at = _page("load_test")  # a URL nothing answers at: one line, no start
    at.radio(key="load.target_kind").set_value("URL").run()
    at.text_input(key="load.url").set_value(f"http://127.0.0.1:{port}")
    at.selectbox(key="load.payload").set_value("generated from the signature").run()
    assert not at.exception
    errors = [e.value for e in at.error]
    assert errors and "cannot read the model's signature" in errors[0] and "\n" not in errors[0]
    assert at.button(key="load.start").disabled


def test_loadtest_page_renders_a_finished_swarm(home: Path, registry: Registry) -> None:
    _load_run(registry)
    at = _page("load_test")
    assert not at.exception
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["requests"] == "303" and metrics["p95"] == "10.0 ms" and metrics["failure ratio"] == "0.99%"
    assert "ok: 101 req/s" in _text(at)
    frames = {tuple(d.value.columns): d.value for d in at.dataframe}
    assert list(frames[("reason", "count")]["reason"]) == ["503 shed"]
    assert list(frames[("gate", "measured", "limit", "verdict")]["verdict"]) == ["PASS", "FAIL"]
    assert "server queue_ms" in list(frames[("metric", "value")]["metric"])
    fig = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert {t["name"] for t in fig["data"]} >= {"p95", "users", "server queue wait"}
    assert sorted(b.label for b in at.get("download_button")) == ["HTML report", "Stats CSV"]


def test_loadtest_page_headlines_a_failed_gate_as_fail_without_failures(home: Path, registry: Registry) -> None:
    from loadtest import results

    run_id = _load_run(registry)
    summary = {"requests": 4000, "failures": 0, "fail_ratio": 0.0, "rps": 680.0, "p95_ms": 160.0,
               "failures_by_reason": {}, "saturated": False, "shed": 0, "target": "http://127.0.0.1:8600",
               "slo": [{"expr": "p95<=100ms", "metric": "p95", "op": "<=", "limit": 100.0, "measured": 160.0,
                        "passed": False}]}
    registry.update_summary(run_id, {**summary, "verdict": results.verdict(summary)})
    at = _page("load_test")
    assert not at.exception
    headline = ("FAIL: p95<=100ms measured 160 ms (limit <= 100 ms) | "
                "680 req/s, p95 160 ms, no failures out of 4000")
    assert headline in [e.value for e in at.error]  # (the start form's own checks are errors too)
    assert not any("680 req/s" in s.value for s in at.success)
    assert "completed · started" in _text(at) and "gates **FAIL**" in _text(at)


def test_loadtest_page_shows_goodput_and_503s_against_offered_rate_for_rate_runs(home: Path,
                                                                               registry: Registry) -> None:
    host = "http://127.0.0.1:8600"
    for offered, ok_rps, shed in ((2000.0, 2000.0, 0), (8000.0, 5000.0, 9000)):
        run_id = registry.create_run("loadtest", {"host": host, "shape": "rate", "users": 64, "target_rps": offered,
                                                  "run_time_s": 3}, name=f"rate {offered:.0f}", status="running")
        registry.update_summary(run_id, {"requests": int(3 * (ok_rps + shed / 3)), "failures": shed, "rps":
                                         ok_rps + shed / 3, "ok_rps": ok_rps, "shed": shed, "offered_rps": offered,
                                         "verdict": "x"})
        registry.set_status(run_id, "completed")
    at = _page("load_test")
    assert not at.exception
    figs = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    overload = next(f for f in figs if f["layout"].get("title", {}).get("text", "").startswith("Goodput and 503s"))
    traces = {t["name"]: t for t in overload["data"]}
    assert traces["goodput (2xx/s)"]["x"] == [2000.0, 8000.0] and traces["goodput (2xx/s)"]["y"] == [2000.0, 5000.0]
    assert traces["503/s"]["y"][1] == pytest.approx(3000.0)


@pytest.mark.integration  # a fresh interpreter per page
@pytest.mark.parametrize("page", ["train", "serve", "load_test", "run_history"])
def test_pages_do_not_import_tensorflow(page: str, home: Path, registry: Registry) -> None:
    """First paint must not wait for TensorFlow: rendering a page (with a run to show) leaves it unloaded."""
    import subprocess
    import sys
    import textwrap

    _train_run(registry)
    code = textwrap.dedent(f"""
        import sys
        from streamlit.testing.v1 import AppTest
        at = AppTest.from_file({str(PAGES / (page + '.py'))!r}, default_timeout=60).run()
        assert not at.exception, at.exception
        print("tensorflow" in sys.modules, "keras" in sys.modules)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=str(PAGES.parent.parent), env={**os.environ, "PYTHONPATH": str(PAGES.parent.parent)})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-2:] == ["False", "False"]


# -- app.py: navigation -----------------------------------------------------------------------

def test_every_page_takes_an_imported_saved_model(home: Path, registry: Registry) -> None:
    """An imported model (a train run without training metrics, a SavedModel directory) in every picker."""
    run_id = registry.create_run("train", {"imported": True, "format": "saved_model", "source": "/x"},
                                 name="imported sm", status="running")
    folder = registry.artifacts_dir(run_id)
    (folder / "saved_model").mkdir()
    (folder / "saved_model" / "saved_model.pb").write_bytes(b"")
    (folder / "samples.json").write_text(json.dumps({"instances": [{"vec": [0.5, 0.5], "tokens": [1, 0]}]}))
    signature = {"inputs": [{"name": "tokens", "shape": [2], "dtype": "int32"},
                            {"name": "vec", "shape": [2], "dtype": "float32"}],
                 "outputs": [{"name": "score", "shape": [1], "dtype": "float32"}]}
    registry.update_summary(run_id, {"model_path": str(folder / "saved_model"), "imported": True,
                                     "format": "saved_model", "signature": signature, "param_count": 12,
                                     "size_bytes": 2048, "data": {"name": "imported (saved model)", "task": None}})
    registry.set_status(run_id, "completed")
    for name in ("train", "serve", "load_test", "tune", "run_history"):
        at = _page(name)
        assert not at.exception, (name, at.exception)
        if name != "load_test":  # (which lists what its form still lacks, with no endpoint running)
            assert not at.error, (name, [e.value for e in at.error])
    at = _page("serve")
    assert at.selectbox(key="serve.model").value == run_id
    assert "tokens 2 int32, vec 2 float32" in _text(at)


APP = PAGES.parent.parent / "app.py"


def test_app_opens_on_train_and_lists_active_jobs_in_the_sidebar(home: Path, registry: Registry) -> None:
    run_id = _train_run(registry, name="busy training", status="running", with_model=False)
    registry.mark_started(run_id, os.getpid(), psutil.Process().create_time())
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT_S).run()
    try:
        assert not at.exception
        assert "Train" in at.title[0].value
        assert any("busy training" in c.value for c in at.sidebar.caption)
    finally:
        registry.set_status(run_id, "stopped")


def test_app_skips_a_page_whose_file_is_missing(home: Path, tmp_path: Path) -> None:
    """Without tune.py (the Tune page not installed) the app still starts, without that page."""
    root = tmp_path / "app"
    pages = root / "dashboard" / "pages"
    pages.mkdir(parents=True)
    (root / "app.py").write_text(APP.read_text())
    for page in PAGES.glob("*.py"):
        if page.name != "tune.py":
            (pages / page.name).symlink_to(page)
    at = AppTest.from_file(str(root / "app.py"), default_timeout=TIMEOUT_S).run()
    assert not at.exception
    assert "Train" in at.title[0].value
    at.switch_page(str(pages / "run_history.py")).run()
    assert not at.exception
    assert "Runs" in at.title[0].value

