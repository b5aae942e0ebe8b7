"""Sweeps with real parts: real endpoints, real Locust steps, a real killed-and-resumed job, the CLI, exports."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from serving_helpers import wait_until

from agent.serving.config import ServingConfig
from runs.jobs import reap, stop_job
from runs.registry import Registry
from tuning.exports import write_exports
from tuning.sweep import SweepSpec, create_sweep, load_points, start_sweep_job

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parent.parent
STEP_S = 2.0  # the shortest step a sweep accepts: these tests check behaviour, not numbers
LAX_SLOS = ("p95<=5000ms", "fail_ratio<=0.5")
# What `python -m tuning ... --out DIR` writes when a config met the SLO.
UNINTERRUPTED_OUT = ("points.json", "serving_config.json", "batching_parameters.txt", "recommendation.json")




def _stop_everything(registry: Registry) -> None:
    """No endpoint or Locust may outlive a test, whatever happened."""
    reap(registry)
    for run in registry.list_runs(status=("pending", "running")):
        stop_job(registry, run.id, grace_s=5.0)


def _group_gone(pid: int, registry: Registry | None = None) -> bool:
    if registry is not None:
        reap(registry)  # collect our own exited child, or it lingers in its group as a zombie
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_killed_sweep_resumes_without_remeasuring_finished_points(registry: Registry, trained_model: Path) -> None:
    # Two configs, one level each: the kill lands after the first config's point and the
    # resumed job must measure only the second. (Resuming half-way up a ladder is the
    # pure ``plan`` test in test_tuning_logic.)
    spec = SweepSpec(model_path=str(trained_model), space={"max_batch_size": [1, 8]}, users=(2,), step_s=STEP_S,
                     slos=LAX_SLOS, verify_top=0)
    run_id = create_sweep(registry, spec)
    try:
        job = start_sweep_job(registry, run_id)
        wait_until(lambda: len(registry.get_run(run_id).summary.get("points", [])) >= 1, 120, "the first point")
        os.killpg(job.pid, signal.SIGKILL)  # no clean-up at all: as if the machine lost the process
        wait_until(lambda: _group_gone(job.pid, registry), 10, "the sweep's process group to die")
        killed = registry.get_run(run_id)
        assert killed.status == "interrupted" and "SIGKILL" in killed.error
        before = load_points(registry, run_id)
        assert len(before) == 1 and before[0].params == {"max_batch_size": 1}

        out = registry.home / "resumed-out"
        proc = _cli("--run-id", run_id, "--out", str(out), home=registry.home)  # same run id: resume
        assert proc.returncode == 0, proc.stdout + proc.stderr
        done = registry.get_run(run_id)
        assert done.status == "completed", done.error
        # the same files an uninterrupted sweep writes to --out, readable by others
        assert sorted(p.name for p in out.iterdir()) == sorted(UNINTERRUPTED_OUT)
        assert all(oct(p.stat().st_mode & 0o777) == "0o644" for p in out.iterdir())
        assert len(json.loads((out / "points.json").read_text())) == 2
        again = registry.home / "again-out"  # a finished sweep: reported and written again, not re-measured
        proc = _cli("--run-id", run_id, "--out", str(again), home=registry.home, timeout=60)
        assert proc.returncode == 0 and "completed with 2 points" in proc.stdout, proc.stdout + proc.stderr
        assert {p.name: p.read_text() for p in again.iterdir()} == {p.name: p.read_text() for p in out.iterdir()}
        assert all(oct(p.stat().st_mode & 0o777) == "0o644" for p in Path(done.summary["exports"]["serving_config"])
                   .parent.iterdir())
        after = load_points(registry, run_id)
        # the point finished before the kill is kept as it was, not measured again
        assert after[0] == before[0]
        assert [p.params["max_batch_size"] for p in after] == [1, 8]
        assert done.progress["resumed_points"] == 1
        # each point is a child loadtest run; the killed attempt's leftovers were stopped on resume
        children = [r for r in registry.list_runs() if r.parent_id == run_id]
        assert {p.loadtest_run_id for p in after} <= {r.id for r in children if r.kind == "loadtest"}
        assert not [r for r in children if r.active]
        assert done.summary["recommendation"]["met"] is True
        assert ServingConfig.from_json_file(done.summary["exports"]["serving_config"]).max_batch_size in (1, 8)
    finally:
        _stop_everything(registry)


def test_stopping_a_sweep_keeps_its_points_and_leaves_nothing_running(registry: Registry,
                                                                      trained_model: Path) -> None:
    spec = SweepSpec(model_path=str(trained_model), space={"max_batch_size": [1, 4, 8]}, users=(1, 2, 3),
                     step_s=STEP_S, slos=LAX_SLOS, min_gain=0.0, verify_top=0)
    run_id = create_sweep(registry, spec)
    try:
        job = start_sweep_job(registry, run_id)
        wait_until(lambda: len(registry.get_run(run_id).summary.get("points", [])) >= 1, 120, "the first point")
        status = stop_job(registry, run_id, grace_s=30)
        assert status == "stopped"
        run = registry.get_run(run_id)
        assert run.error == "stopped by request"
        assert len(load_points(registry, run_id)) >= 1
        assert "recommendation" in run.summary  # recommended from what was measured
        assert _group_gone(job.pid, registry)
        children = [r for r in registry.list_runs() if r.parent_id == run_id]
        assert children and not [r for r in children if r.active]
    finally:
        _stop_everything(registry)


def _cli(*args: str, home: Path, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TUNESWARM_HOME": str(home), "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "tuning", *args], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=ROOT, check=False)


def test_cli_bad_usage_exits_2_with_one_line(home: Path, trained_model: Path) -> None:
    for args, message in [
        ((), "--model PATH (.keras or SavedModel directory) is required"),
        (("--model", str(trained_model)), "--grid"),
        (("--model", str(trained_model), "--grid", "max_batch_size=1,x"), "not a valid int"),
        (("--model", str(trained_model), "--grid", "colour=1"), "unknown serving parameter"),
        (("--model", str(trained_model), "--grid", "max_batch_size=1", "--users", "8,1"), "rise strictly"),
        (("--model", str(trained_model), "--grid", "max_batch_size=1", "--slo", "p95 under 5"), "malformed SLO"),
        (("--model", str(home / "model.h5"), "--grid", "max_batch_size=1"), "--model"),
    ]:
        proc = _cli(*args, home=home, timeout=60)
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert lines[-1].startswith("error:") and message in lines[-1], (args, proc.stderr)
        assert "Traceback" not in proc.stderr


def test_cli_exit_1_names_the_closest_when_no_config_meets_the_slo(home: Path, trained_model: Path,
                                                                   tmp_path: Path) -> None:
    # an open-loop ladder (offered requests/s) through the same CLI
    out = tmp_path / "out"
    proc = _cli("--model", str(trained_model), "--grid", "max_batch_size=1", "--rates", "40,80", "--step-s", "2",
                "--slo", "p95<=0.001ms", "--out", str(out), "--export-tfserving", str(tmp_path / "ship"), home=home)
    try:
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert "--export-tfserving: sweep" in proc.stderr and "no recommended config" in proc.stderr
        assert not (tmp_path / "ship").exists()  # nothing recommended, nothing shipped
        assert "No configuration met p95<=0.001ms" in proc.stdout
        assert "Closest: b1 at 40 req/s offered" in proc.stdout
        points = json.loads((out / "points.json").read_text())
        assert [p["rate"] for p in points] == [40.0]  # the SLO broke at the first level: no climbing
        assert not (out / "serving_config.json").exists()  # nothing to recommend, nothing exported
        step = Registry(home).get_run(points[0]["loadtest_run_id"])
        assert step.config["shape"] == "rate" and step.config["target_rps"] == 40.0
    finally:
        _stop_everything(Registry(home))


def test_exported_json_loads_back_into_the_endpoint_through_its_cli(home: Path, trained_model: Path,
                                                                    tmp_path: Path) -> None:
    config = ServingConfig(runtime="keras", max_batch_size=16, batch_timeout_ms=1.0, num_batch_threads=1,
                           max_enqueued_batches=32, allowed_batch_sizes=(4, 16))
    paths = write_exports(tmp_path / "export", config)
    env = {**os.environ, "TUNESWARM_HOME": str(home), "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "agent.serving", "--model", str(trained_model), "--name", "digits",
                             "--port", "0", "--config", str(paths["serving_config"])], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # bounded: the process exits (EOF) if it cannot serve
        assert line.startswith("ready: "), line
        url = line.split(" ", 1)[1].strip()
        run = Registry(home).list_runs(kind="serve")[0]  # the CLI records its run like a page's start()
        assert run.status == "running" and run.pid == proc.pid
        assert ServingConfig.from_dict(run.summary["config"]) == config
        with urllib.request.urlopen(f"{url}/v1/models/digits/metadata", timeout=10) as resp:
            assert resp.status == 200
            assert "signature_def" in json.loads(resp.read())["metadata"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        assert Registry(home).get_run(run.id).status == "stopped"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


@pytest.mark.slow
def test_model_sweep_cli_trains_serves_and_marks_the_pareto_front(home: Path, tmp_path: Path) -> None:
    out = tmp_path / "models"
    proc = _cli("--mode", "models", "--dataset", "digits", "--train-grid", "hidden=4,32", "--epochs", "1",
                "--users", "2", "--step-s", "2", "--slo", "p99<=5000ms", "--out", str(out), home=home)
    try:
        assert proc.returncode == 0, proc.stdout + proc.stderr
        rows = json.loads((out / "models.json").read_text())
        assert [r["hidden"] for r in rows] == [[4], [32]]
        for r in rows:
            assert 0.0 <= r["val_accuracy"] <= 1.0 and r["p99_ms"] > 0 and r["rps"] > 0
            assert r["param_count"] > 0 and r["train_run_id"]
        assert rows[1]["param_count"] > rows[0]["param_count"]
        registry = Registry(home)
        sweep = next(r for r in registry.list_runs(kind="sweep") if r.config.get("mode") == "models")
        assert sweep.status == "completed" and sweep.summary["front"]  # somebody is always on the front
        children = [r for r in registry.list_runs() if r.parent_id == sweep.id]
        assert {r.kind for r in children} == {"train", "serve", "loadtest"}
        assert not [r for r in children if r.active]
        assert "*" in proc.stdout  # the table marks the front
    finally:
        _stop_everything(Registry(home))
