"""Training with metric streaming, stop requests, the CLI and the job supervisor (real TF)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from agent import export
from agent.data import DataSource
from agent.model import ModelConfig
from agent.training import main, train
from runs import jobs
from runs.registry import Registry

EPOCH_METRICS = {"loss", "val_loss", "accuracy", "val_accuracy", "lr", "epoch_time_s", "samples_per_s"}


def test_default_digits_model_reaches_095_and_streams_every_epoch(registry: Registry) -> None:
    config = ModelConfig()  # two hidden layers of 128, 20 epochs
    result = train(config, DataSource("digits"), registry)

    assert result.status == "completed" and result.epochs_run == 20
    assert result.metrics["accuracy"] >= 0.95
    rows = registry.metric_rows(result.run_id)
    assert [r["step"] for r in rows] == list(range(1, 21))
    for row in rows:
        assert EPOCH_METRICS <= set(row), f"epoch {row['step']} lacks {EPOCH_METRICS - set(row)}"
        assert row["samples_per_s"] > 0 and row["lr"] == pytest.approx(1e-3)
    assert rows[-1]["loss"] < rows[0]["loss"]

    run = registry.get_run(result.run_id)
    assert run.status == "completed"
    assert run.progress["epoch"] == 20 and run.progress["batch"] == run.progress["batches"] > 0
    summary = run.summary
    assert set(summary["test_metrics"]) == {"accuracy", "precision", "recall", "f1", "confusion_matrix"}
    cm = np.array(summary["test_metrics"]["confusion_matrix"])
    assert cm.shape == (10, 10) and cm.sum() == summary["data"]["sizes"]["test"]
    assert summary["param_count"] == 64 * 2 + 1 + 64 * 128 + 128 + 128 * 128 + 128 + 128 * 10 + 10


def test_bundle_is_saved_and_loads_safely(trained_model: Path) -> None:
    model = export.load_model(trained_model)
    meta = export.load_metadata(trained_model)
    samples = export.load_samples(trained_model)
    assert meta is not None and samples is not None
    assert meta.spec.n_features == 64 and meta.spec.class_labels == tuple(str(i) for i in range(10))
    assert meta.param_count == model.count_params()
    pred = model.predict(np.asarray(samples[:5], np.float32), verbose=0)
    assert pred.shape == (5, 10) and np.allclose(pred.sum(axis=1), 1.0, atol=1e-5)
    targets = json.loads(trained_model.with_name("samples.json").read_text())["targets"]
    assert len(targets) == len(samples)


def test_regression_reports_mse_mae_r2(registry: Registry) -> None:
    result = train(ModelConfig(hidden=(16,), epochs=3, learning_rate=0.01), DataSource("diabetes"), registry)
    assert set(result.metrics) == {"mse", "mae", "r2"}
    assert {"loss", "val_loss", "mae", "val_mae"} <= set(registry.metric_rows(result.run_id)[0])


def test_stop_request_ends_training_and_keeps_partial_results(registry: Registry) -> None:
    config = ModelConfig(hidden=(64,), epochs=500, batch_size=16)
    run_id = registry.create_run("train", {"model": config.to_dict()}, status="running")

    def request_stop_after_two_epochs() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and registry.count_metrics(run_id) < 2 * 7:
            time.sleep(0.02)
        registry.request_stop(run_id)

    stopper = threading.Thread(target=request_stop_after_two_epochs, daemon=True)
    stopper.start()
    result = train(config, DataSource("digits"), registry, run_id)
    stopper.join(5)

    run = registry.get_run(run_id)
    assert result.status == run.status == "stopped"
    assert 2 <= result.epochs_run < 20
    # The stop landed within the epoch it was requested in: at most one more epoch row.
    assert len(registry.metric_rows(run_id)) == result.epochs_run
    assert result.model_path.is_file() and "accuracy" in run.summary["test_metrics"]


def test_failure_is_recorded_on_the_run(registry: Registry, tmp_path: Path) -> None:
    csv = tmp_path / "one_class.csv"
    csv.write_text("a,y\n" + "\n".join(f"{i},k" for i in range(20)) + "\n")
    with pytest.raises(ValueError, match="single class"):
        train(ModelConfig(epochs=1), DataSource(csv_path=str(csv), target="y"), registry)
    run = registry.list_runs()[0]
    assert run.status == "failed" and "single class" in run.error


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--hidden", "12,abc"], "expected comma-separated layer sizes"),
        (["--lr", "-1"], "learning_rate must be a number"),
        (["--activation", "wobbly"], "invalid choice"),
        (["--csv", "/nonexistent.csv", "--target", "y"], "cannot read"),
        (["--csv", "x.csv"], "needs a target column"),
        (["--run-id", "missing-run"], "no run with id"),
    ],
)
def test_cli_bad_arguments_exit_2_with_one_line(
    argv: list[str], message: str, home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1] and "Traceback" not in "".join(err)


@pytest.mark.integration
def test_training_job_streams_and_stops_through_the_supervisor(registry: Registry) -> None:
    config = ModelConfig(hidden=(32,), epochs=400, batch_size=16)
    run_id = registry.create_run("train", {"model": config.to_dict()})
    argv = jobs.python_module_argv(
        "agent.training", "--run-id", run_id, "--hidden", "32", "--epochs", "400", "--batch-size", "16"
    )
    jobs.start_job(registry, run_id, argv)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not registry.metric_rows(run_id):
            assert registry.get_run(run_id).status == "running", registry.get_run(run_id).error
            time.sleep(0.1)
        progress = registry.get_run(run_id).progress
        assert progress["epochs"] == 400 and progress["batches"] > 0
    finally:
        status = jobs.stop_job(registry, run_id, grace_s=60)

    run = registry.get_run(run_id)
    assert status == "stopped" and run.error == "stopped by request"
    assert (registry.artifacts_dir(run_id) / export.MODEL_FILENAME).is_file()
    assert 1 <= run.summary["epochs_run"] < 400 == config.epochs
    log = (registry.artifacts_dir(run_id) / jobs.LOG_FILENAME).read_text()
    assert "epoch 1/400" in log and "stopped after" in log


def test_an_upload_keeps_its_own_file_name_made_path_safe() -> None:
    from agent.training import UPLOAD_FILENAME, upload_filename

    assert upload_filename("pets.csv") == "pets.csv"
    assert upload_filename("../../etc/sales 2024 (v2).CSV") == "sales_2024_v2.csv"  # no folders, no spaces
    assert upload_filename(None) == upload_filename("...csv") == UPLOAD_FILENAME
