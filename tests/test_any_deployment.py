"""Swarms and sweeps of an endpoint started separately, in either protocol (issue 14).

The endpoint is a ``serve`` job (its own process); the swarm only gets its URL and
model name, and builds its payloads from the target's own metadata.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.serving.config import ServingConfig
from agent.serving.process import EndpointHandle, start_endpoint, stop_endpoint
from loadtest import payload
from loadtest.__main__ import main as loadtest_main
from loadtest.runner import load_result
from runs.registry import Registry

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory: pytest.TempPathFactory, trained_model: Path) -> Iterator[EndpointHandle]:
    reg = Registry(tmp_path_factory.mktemp("endpoint-state"))
    handle = start_endpoint(reg, trained_model, ServingConfig(runtime="tflite"), name="digits", ready_timeout_s=120)
    try:
        yield handle
    finally:
        stop_endpoint(reg, handle.run_id)
        reg.close()


@pytest.mark.parametrize("protocol", ["v2", "tfserving"])
def test_loadtest_cli_swarms_a_separate_endpoint_from_its_metadata(
    home: Path, endpoint: EndpointHandle, protocol: str, capsys: pytest.CaptureFixture[str],
) -> None:
    code = loadtest_main(["--host", endpoint.url, "--protocol", protocol, "--model-name", "digits",
                          "--run-time", "5s", "-u", "2", "-r", "2", "--slo", "fail_ratio<=0.01"])
    out = capsys.readouterr().out
    assert code == 0, out
    reg = Registry(home)
    (run,) = reg.list_runs(kind="loadtest")
    assert run.config["protocol"] == protocol
    result = load_result(reg, run.id)
    assert result.summary["requests"] > 0 and result.summary["failures"] == 0
    # Every request went to the protocol's own inference path.
    stats = Path(result.reports["csv"]).read_text()
    assert payload.request_path("digits", protocol) in stats, stats[:300]
    reg.close()


def test_unreadable_metadata_is_one_line_naming_the_flag(
    home: Path, endpoint: EndpointHandle, capsys: pytest.CaptureFixture[str],
) -> None:
    code = loadtest_main(["--host", endpoint.url, "--protocol", "v2", "--model-name", "nope",
                          "--run-time", "2s"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "cannot read the model's signature from" in err and "/v2/models/nope" in err
    assert "give --signature FILE" in err
    from tuning.__main__ import main as tuning_main

    code = tuning_main(["--host", endpoint.url, "--protocol", "v2", "--model-name", "nope", "--users", "1,2"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "give --signature FILE" in err
    assert not Registry(home).list_runs(kind="sweep")  # refused before anything was recorded


# -- payload units (no server) -----------------------------------------------------------------


def test_v2_metadata_bodies_and_checks() -> None:
    inputs = payload.signature_from_v2_metadata({"name": "m", "inputs": [
        {"name": "tokens", "datatype": "INT32", "shape": [-1, 3]},
        {"name": "dense", "datatype": "FP32", "shape": [-1, 2]}]})
    assert inputs == (payload.InputSpec("tokens", (3,), "int32"), payload.InputSpec("dense", (2,), "float32"))
    rows = [{"tokens": [1, 2, 3], "dense": [0.5, 0.25]}, {"tokens": [4, 5, 6], "dense": [1.0, 2.0]}]
    bodies = payload.build_v2_bodies(rows, 2, inputs)
    doc = json.loads(bodies[0])
    assert doc == {"inputs": [
        {"name": "tokens", "shape": [2, 3], "datatype": "INT32", "data": [1, 2, 3, 4, 5, 6]},
        {"name": "dense", "shape": [2, 2], "datatype": "FP32", "data": [0.5, 0.25, 1.0, 2.0]}]}
    with pytest.raises(ValueError, match="needs \\(3,\\)"):
        payload.build_v2_bodies([{"tokens": [1, 2], "dense": [0.0, 0.0]}], 1, inputs)
    with pytest.raises(ValueError, match="objects keyed by input name"):
        payload.build_v2_bodies([[1, 2, 3]], 1, inputs)
    with pytest.raises(ValueError, match="usable 'inputs'"):
        payload.signature_from_v2_metadata({"inputs": [{"name": "x", "datatype": "STRING?", "shape": [-1]}]})
    assert payload.request_path("m", "v2") == "/v2/models/m/infer"
    assert payload.request_path("m", "v2", 3) == "/v2/models/m/versions/3/infer"
    ok = json.dumps({"outputs": [{"name": "y", "shape": [2, 10], "datatype": "FP32", "data": [0] * 20}]})
    assert payload.check_response(200, ok, 2, protocol="v2") is None
    assert payload.check_response(200, ok, 3, protocol="v2") == "200 with 2 output rows, expected 3"
    assert payload.check_response(200, '{"predictions": [[1]]}', 1, protocol="v2") == "200 without an 'outputs' list"
    assert payload.check_response(400, '{"error": "bad"}', 1, protocol="v2") == "400 bad"
    with pytest.raises(ValueError, match="protocol must be one of tfserving, v2"):
        payload.request_path("m", "grpc")


# -- capacity sweep of the separately started endpoint ------------------------------------------


def test_capacity_sweep_of_a_url_records_the_curve_and_a_verdict(
    home: Path, endpoint: EndpointHandle, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    from tuning.__main__ import main as tuning_main

    code = tuning_main(["--host", endpoint.url, "--model-name", "digits", "--protocol", "v2",
                        "--users", "1,4,8", "--step-s", "2", "--slo", "p95<=5s", "--slo", "fail_ratio<=0.01",
                        "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0, out
    reg = Registry(home)
    (sweep,) = reg.list_runs(kind="sweep")
    assert sweep.status == "completed" and sweep.config["mode"] == "capacity"
    steps = [r for r in reg.list_runs(kind="loadtest") if r.parent_id == sweep.id]
    assert len(steps) == 3 and all(r.config["protocol"] == "v2" for r in steps)
    assert not reg.list_runs(kind="serve")  # nothing was started or restarted for the sweep
    points = json.loads((tmp_path / "points.json").read_text())
    assert [p["users"] for p in points] == [1, 4, 8] and all(p["rps"] > 0 for p in points)
    assert all(p["queue_ms"] is not None for p in points)  # our endpoint: server metrics were read
    verdict = json.loads((tmp_path / "capacity.json").read_text())
    assert verdict["levels"] == 3 and verdict["capacity"] is not None and verdict["server_metrics"] is None
    assert verdict["capacity"]["users"] in (1, 4, 8) and verdict["knee"] is not None
    assert "Capacity within p95<=5s and fail_ratio<=0.01" in out
    assert "Knee of the curve" in out or "No knee within the levels measured" in out
    assert "recommend" not in out.lower()
    reg.close()


def test_capacity_verdict_is_pure_and_says_what_was_not_measured() -> None:
    from tuning.capacity import knee, server_metrics_reason, verdict
    from tuning.points import Point
    from tuning.recommend import Constraints

    def pt(users: int, rps: float, p50: float, p95: float) -> Point:
        return Point("t", {"target": "m"}, users, rps, p50_ms=p50, p95_ms=p95, requests=100)

    curve = [pt(1, 100, 10, 12), pt(8, 700, 11, 15), pt(32, 900, 35, 60), pt(64, 920, 70, 140)]
    v = verdict(curve, Constraints.parse(["p95<=50ms"]), "no Prometheus metrics at the target")
    assert v.capacity is curve[1] and v.broke is curve[2] and v.knee is curve[1] and knee(curve) is curve[1]
    text = "\n".join(v.lines)
    assert "Capacity within p95<=50ms: 700 req/s at 8 users" in text
    assert "At 32 users the SLO broke (p95<=50ms)" in text
    assert "Server-side metrics unavailable: no Prometheus metrics at the target." in text
    held = verdict(curve[:2], Constraints.parse(["p95<=50ms"]), None)
    assert "the capacity may be higher" in "\n".join(held.lines)
    none = verdict(curve[2:], Constraints.parse(["p95<=20ms"]), None)
    assert none.capacity is None and "try lower load" in none.lines[0]
    reason = server_metrics_reason("http://127.0.0.1:9")  # nothing listens on the discard port
    assert reason is not None and "could not be read" in reason


# -- distributed: a master and 2 workers started as separate commands -----------------------------


def test_master_with_two_separately_started_workers_totals_match_the_workers(
    home: Path, endpoint: EndpointHandle, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    import os
    import signal
    import socket
    import subprocess
    import threading

    from loadtest.runner import LoadTestConfig, worker_command

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result: dict[str, int] = {}
    master = threading.Thread(target=lambda: result.setdefault("code", loadtest_main([
        "--host", endpoint.url, "--model-name", "digits", "--protocol", "v2", "--run-time", "4s", "-u", "4",
        "-r", "4", "--master", "--expect-workers", "2", "--master-bind-port", str(port), "--slo", "fail_ratio<=0.01"])))
    master.start()
    log = (tmp_path / "workers.log").open("ab")  # closed below, after the workers end
    cmd = worker_command(LoadTestConfig(host=endpoint.url, n_features=1, expect_workers=2, master_bind_port=port))
    workers = [subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True) for _ in range(2)]
    try:
        master.join(120)
        assert not master.is_alive()
        for w in workers:
            w.wait(30)
    finally:
        for w in workers:
            if w.poll() is None:
                os.killpg(w.pid, signal.SIGKILL)
                w.wait(10)
        log.close()
    out = capsys.readouterr().out
    assert result.get("code") == 0, out
    assert "waiting for 2 workers; on each worker machine run:" in out
    reg = Registry(home)
    (run,) = reg.list_runs(kind="loadtest")
    summary = reg.get_run(run.id).summary
    topology = summary["topology"]
    assert topology["expected_workers"] == 2 and len(topology["workers"]) == 2
    per_worker = [w["requests"] for w in topology["workers"]]
    assert all(n > 0 for n in per_worker)
    assert abs(summary["requests"] - sum(per_worker)) <= 0.01 * summary["requests"], (summary["requests"], per_worker)
    assert out.count("  worker ") == 2
    reg.close()
