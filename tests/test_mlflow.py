"""Runs into MLflow, read back from a real local file store through MLflow's own client."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runs import tracking
from runs.registry import Registry
from tuneswarm import cli

mlflow = pytest.importorskip("mlflow", reason="the optional mlflow package is not installed")
from mlflow.tracking import MlflowClient  # noqa: E402


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    # MLflow 3 keeps the file store in maintenance mode and refuses it unless asked.
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    return (tmp_path / "mlruns").as_uri()


def only_run(client: MlflowClient, **tags: str) -> mlflow.entities.Run:
    experiment = client.get_experiment_by_name(tracking.EXPERIMENT)
    query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    runs = client.search_runs([experiment.experiment_id], filter_string=query)
    assert len(runs) == 1, [r.info.run_name for r in runs]
    return runs[0]


def test_a_cli_training_run_logs_params_epochs_test_metrics_and_model(
    home: Path, registry: Registry, store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(tracking.TRACKING_ENV, "")  # restored after the test (the CLI sets it)
    code = cli.main(["train", "--dataset", "iris", "--hidden", "8", "--epochs", "3", "--no-tensorboard",
                     "--mlflow", store, "--home", str(home)])
    assert code == 0
    train = registry.list_runs(kind="train")[0]
    assert train.summary["mlflow"]["uri"] == store
    client = MlflowClient(tracking_uri=store)
    run = only_run(client, **{"tuneswarm.run_id": train.id})
    assert run.info.run_id == train.summary["mlflow"]["run_id"]
    assert run.info.status == "FINISHED"
    assert run.data.params["model.hidden"] == "[8]"
    assert run.data.params["data.dataset"] == "iris"
    losses = client.get_metric_history(run.info.run_id, "loss")
    assert [m.step for m in sorted(losses, key=lambda m: m.step)] == [1, 2, 3]
    assert run.data.metrics["summary.test_metrics.accuracy"] == pytest.approx(train.summary["test_metrics"]["accuracy"])
    assert "model/model.keras" in {a.path for a in client.list_artifacts(run.info.run_id, "model")}


def test_a_swarm_logs_config_summary_and_per_second_series(registry: Registry, store: str) -> None:
    run_id = registry.create_run("loadtest", {"host": "http://127.0.0.1:8600", "users": 8, "slos": ["p99<=50ms"]},
                                 name="swarm", status="running")
    for second in range(1, 4):
        registry.log_metrics(run_id, second, {"rps": 100.0 * second, "p99_ms": 10.0 + second})
    registry.update_summary(run_id, {"rps": 200.0, "p99_ms": 12.5, "fail_ratio": 0.0, "verdict": "ok",
                                     "gates": [{"expr": "p99<=50ms", "passed": True}]})
    registry.set_status(run_id, "completed")
    exported = tracking.export_run(registry, run_id, store)
    client = MlflowClient(tracking_uri=store)
    run = client.get_run(exported.mlflow_run_id)
    assert run.data.params["users"] == "8" and run.data.params["slos"] == '["p99<=50ms"]'
    assert run.data.metrics["summary.p99_ms"] == 12.5
    assert sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "rps")) == [
        (1, 100.0), (2, 200.0), (3, 300.0)]
    summary = json.loads(Path(client.download_artifacts(run.info.run_id, "summary.json")).read_text())
    assert summary["verdict"] == "ok"


def test_a_sweep_is_a_parent_run_with_one_child_per_point(registry: Registry, store: str) -> None:
    sweep = registry.create_run("sweep", {"mode": "serving", "grid": {"max_batch_size": [1, 8]}}, status="running")
    points = [registry.create_run("loadtest", {"point": {"max_batch_size": b}}, parent_id=sweep, status="completed")
              for b in (1, 8)]
    registry.update_summary(sweep, {"recommendation": {"max_batch_size": 8, "rps": 900.0}})
    registry.set_status(sweep, "completed")
    exported = tracking.export_run(registry, sweep, store)
    assert set(exported.children) == set(points)
    client = MlflowClient(tracking_uri=store)
    parent = client.get_run(exported.mlflow_run_id)
    assert parent.data.metrics["summary.recommendation.rps"] == 900.0
    for point, child_id in exported.children.items():
        child = client.get_run(child_id)
        assert child.data.tags["mlflow.parentRunId"] == exported.mlflow_run_id
        assert child.data.tags["tuneswarm.run_id"] == point


def test_without_mlflow_the_run_says_so_and_does_not_fail(
    registry: Registry, store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_id = registry.create_run("train", {"model": {}}, status="completed")
    monkeypatch.setenv(tracking.TRACKING_ENV, store)
    monkeypatch.setattr(tracking, "available", lambda: False)
    tracking.export_if_tracked(registry, run_id)
    assert registry.get_run(run_id).summary["mlflow"] == {"uri": store, "error": tracking.MISSING}
    assert cli.main(["train", "--mlflow"]) == 2


def test_the_runs_page_sends_chosen_past_runs(home: Path, registry: Registry, store: str) -> None:
    from streamlit.testing.v1 import AppTest

    run_id = registry.create_run("loadtest", {"users": 4}, name="past swarm", status="running")
    registry.update_summary(run_id, {"rps": 50.0})
    registry.set_status(run_id, "completed")
    page = Path(__file__).resolve().parent.parent / "dashboard" / "pages" / "run_history.py"
    at = AppTest.from_file(str(page), default_timeout=60).run()
    at.text_input(key="runs.mlflow_uri").input(store).run()
    at.multiselect(key="runs.mlflow_runs").set_value([run_id]).run()
    at.button(key="runs.mlflow_send").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert f"{run_id} -> MLflow run" in at.success[0].value
    assert only_run(MlflowClient(tracking_uri=store), **{"tuneswarm.run_id": run_id}).data.metrics[
        "summary.rps"] == 50.0
