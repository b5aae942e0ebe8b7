"""Real Locust swarms of a few seconds against real endpoints on free ports.

Each run is a ``loadtest`` registry job (runner process + Locust child). The
endpoints are started through ``agent.serving.process`` and always stopped.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from agent.serving.config import ServingConfig
from agent.serving.process import EndpointHandle, start_endpoint, stop_endpoint
from loadtest import slo
from loadtest.__main__ import format_summary
from loadtest.__main__ import main as cli_main
from loadtest.runner import LoadTestConfig, load_result, run_loadtest, start_loadtest, stop_loadtest
from runs import jobs
from runs.registry import Registry

pytestmark = pytest.mark.integration

N_FEATURES = 64  # the digits model of the trained_model fixture


@pytest.fixture(scope="module")
def swarm_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """One registry for the module, so endpoints can be shared between tests."""
    reg = Registry(tmp_path_factory.mktemp("swarm-state"))
    yield reg
    reg.close()


@pytest.fixture(scope="module")
def ceiling(swarm_registry: Registry) -> Iterator[EndpointHandle]:
    """The endpoint's fixed-answer handler: fast to start, answers any :predict with one prediction."""
    handle = start_endpoint(swarm_registry, None, ServingConfig(), name="model", ceiling=True, ready_timeout_s=60)
    try:
        yield handle
    finally:
        stop_endpoint(swarm_registry, handle.run_id)


@pytest.fixture(scope="module")
def model_endpoint(swarm_registry: Registry, trained_model: Path) -> Iterator[EndpointHandle]:
    handle = start_endpoint(swarm_registry, trained_model, ServingConfig(), name="digits", ready_timeout_s=120)
    try:
        yield handle
    finally:
        stop_endpoint(swarm_registry, handle.run_id)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def group_processes(pgid: int) -> list[psutil.Process]:
    out = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                out.append(proc)
        except (ProcessLookupError, psutil.Error):
            continue
    return out


def wait_for(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_constant_run_records_series_summary_and_gates(
    swarm_registry: Registry, model_endpoint: EndpointHandle, trained_model: Path
) -> None:
    config = LoadTestConfig(
        host=model_endpoint.url,
        model_name="digits",
        users=4,
        spawn_rate=4,
        run_time_s=4,
        instances_per_request=2,
        samples_path=str(trained_model),
        slos=("fail_ratio<=0.01", "p99<=5s", "rps>=1000000", "p95<=0.001ms"),
    )
    result = run_loadtest(swarm_registry, config, serve_run_id=model_endpoint.run_id)
    assert result.status == "completed", result.error
    s = result.summary
    assert s["requests"] > 0 and s["failures"] == 0 and s["fail_ratio"] == 0.0
    for key in ("rps", "p50_ms", "p90_ms", "p95_ms", "p99_ms", "avg_ms", "max_ms", "locust_cpu_pct"):
        assert isinstance(s[key], float), key
    assert s["p50_ms"] <= s["p95_ms"] <= s["p99_ms"] <= s["max_ms"]
    assert s["target"] == model_endpoint.url and s["saturated"] in (True, False) and s["shed"] == 0
    assert s["verdict"]
    for kind in ("csv", "json", "html", "history_csv"):
        assert Path(s["reports"][kind]).is_file(), kind
    # The endpoint's own view of the same seconds: queue wait and compute split, realised batch size.
    assert s["server"]["compute_ms"] is not None and s["server"]["cpu_ms_per_request"] > 0

    series = swarm_registry.metric_series(result.run_id)
    for name in ("users", "rps", "fail_per_s", "p50_ms", "p95_ms", "p99_ms", "avg_ms", "locust_cpu_pct",
                 "server_rps", "server_queue_ms", "server_compute_ms", "server_batch_size", "server_shed_per_s"):
        assert name in series, name
    busy = [v for _, v in series["users"] if v]
    assert busy and max(busy) == 4
    # Per-second rates add up to the requests counted (less the last fraction of a second after the last row).
    assert 0.5 * s["requests"] <= sum(v or 0 for _, v in series["rps"]) <= s["requests"]

    # Gates: judged on the recorded summary, stored with it, and read back identically.
    assert [g.passed for g in result.gates] == [True, True, False, False]
    assert not result.passed
    # No request failed, yet the run is a FAIL naming its failed gates, in the registry and the CLI.
    assert s["verdict"].startswith("FAIL: rps>=1000000 measured ")
    assert "; p95<=0.001ms measured " in s["verdict"] and "(limit <= 0.001 ms)" in s["verdict"]
    assert swarm_registry.get_run(result.run_id).summary["verdict"] == s["verdict"]
    assert f"verdict: {s['verdict']}" in format_summary(load_result(swarm_registry, result.run_id))
    again = slo.evaluate(slo.parse_slos(config.slos), swarm_registry.get_run(result.run_id).summary)
    assert again == list(load_result(swarm_registry, result.run_id).gates)


def test_dead_port_fails_at_once_with_one_message_and_no_load(swarm_registry: Registry) -> None:
    """The target is probed before Locust starts: a dead port fails in well under the run time, sending nothing."""
    config = LoadTestConfig(host=f"http://127.0.0.1:{free_port()}", users=2, spawn_rate=2, run_time_s=30,
                            n_features=N_FEATURES, slos=("fail_ratio<=0.01",))
    t0 = time.monotonic()
    result = run_loadtest(swarm_registry, config)
    assert time.monotonic() - t0 < 15  # not the 30 s run time
    assert result.status == "failed"
    assert "refused" in (result.error or "") and "no load was sent" in (result.error or "")
    s = result.summary
    assert s["requests"] == 0 and s["target_unreachable"] is True
    assert s["verdict"] == result.error  # one message: the verdict is the error
    assert [g.passed for g in result.gates] == [False]
    assert result.error is not None and format_summary(result).count(result.error) == 1
    assert not (swarm_registry.artifacts_dir(result.run_id) / "locust.log").exists()  # Locust never started


def test_target_that_never_answers_times_out_and_fails(swarm_registry: Registry) -> None:
    with socket.socket() as listener:  # accepts connections (kernel backlog), never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        port = listener.getsockname()[1]
        config = LoadTestConfig(host=f"http://127.0.0.1:{port}", users=2, spawn_rate=2, run_time_s=2,
                                timeout_s=0.5, stop_timeout_s=1, n_features=N_FEATURES)
        result = run_loadtest(swarm_registry, config)
    assert result.status == "failed"
    reasons = result.summary["failures_by_reason"]
    assert set(reasons) == {"timeout"} and reasons["timeout"] == result.summary["requests"] > 0
    assert "no request succeeded" in (result.error or "")


def test_target_dying_mid_run_is_recorded(swarm_registry: Registry) -> None:
    target = start_endpoint(swarm_registry, None, ServingConfig(), ceiling=True, ready_timeout_s=60)
    try:
        run_id = start_loadtest(
            swarm_registry,
            LoadTestConfig(host=target.url, users=2, spawn_rate=2, run_time_s=6, n_features=N_FEATURES),
        )
        wait_for(lambda: (swarm_registry.get_run(run_id).progress or {}).get("requests", 0) > 0, 30, "requests")
    finally:
        stop_endpoint(swarm_registry, target.run_id)
    run = jobs.wait_job(swarm_registry, run_id, 60)
    assert run.status == "failed"
    s = run.summary
    assert s["failures_by_reason"].get("connection refused", 0) > 0
    assert s["requests"] > s["failures"] > 0  # it answered, then it was gone
    assert "went down during the run" in s["verdict"] and "went down" in run.error


def test_stop_mid_run_keeps_partial_results_and_leaves_no_locust(
    swarm_registry: Registry, ceiling: EndpointHandle
) -> None:
    # --processes 2: a Locust master and two forked workers, all of which a stop must end.
    config = LoadTestConfig(host=ceiling.url, users=4, spawn_rate=4, run_time_s=60, n_features=N_FEATURES, processes=2)
    run_id = start_loadtest(swarm_registry, config)
    pgid = swarm_registry.get_run(run_id).pid
    wait_for(
        lambda: (swarm_registry.get_run(run_id).progress or {}).get("requests", 0) > 0
        and len(group_processes(pgid)) >= 4,
        30,
        "requests from the runner, Locust's master and its two workers",
    )
    assert sum("locust" in " ".join(p.cmdline()) for p in group_processes(pgid)) >= 3
    status = stop_loadtest(swarm_registry, run_id)
    assert status == "stopped"
    run = swarm_registry.get_run(run_id)
    assert run.summary["requests"] > 0 and run.summary["rps"] > 0
    assert Path(run.summary["reports"]["csv"]).is_file()
    assert "users" in swarm_registry.metric_series(run_id)
    assert group_processes(pgid) == []
    with pytest.raises(ProcessLookupError):
        os.killpg(pgid, 0)


def test_each_shape_delivers_its_users_and_rates(swarm_registry: Registry, ceiling: EndpointHandle) -> None:
    base = {"host": ceiling.url, "n_features": N_FEATURES, "spawn_rate": 10}
    configs = {
        "steps": LoadTestConfig(**base, shape="steps", users=1, step_users=2, step_time_s=2, max_users=5,
                                run_time_s=8),
        "spike": LoadTestConfig(**base, shape="spike", users=1, spike_users=6, spike_at_s=2, spike_duration_s=3,
                                run_time_s=8),
        "rate": LoadTestConfig(**base, shape="rate", users=4, target_rps=40, run_time_s=8),
    }
    # The three are light; run them side by side to keep the suite short.
    run_ids = {name: start_loadtest(swarm_registry, cfg) for name, cfg in configs.items()}
    runs = {name: jobs.wait_job(swarm_registry, rid, 90) for name, rid in run_ids.items()}
    assert all(r.status == "completed" for r in runs.values()), {n: r.error for n, r in runs.items()}

    steps = [int(v) for _, v in swarm_registry.metric_series(run_ids["steps"], ["users"])["users"] if v]
    assert steps[0] == 1 and max(steps) == 5
    assert set(steps) <= {1, 2, 3, 4, 5} and {1, 3, 5} <= set(steps)
    assert steps == sorted(steps)  # a ladder only climbs

    spike = [int(v) for _, v in swarm_registry.metric_series(run_ids["spike"], ["users"])["users"] if v]
    assert spike[0] == 1 and max(spike) == 6
    top = [i for i, u in enumerate(spike) if u == 6]
    assert 2 <= len(top) <= 5 and spike[-1] == 1 and top[-1] < len(spike) - 1  # rose, held, came back down

    # Seconds with all 4 paced users running, without the first (spawning) and the last (stopping).
    full = [r for r in swarm_registry.metric_rows(run_ids["rate"]) if r.get("users") == 4][1:-1]
    assert len(full) >= 3
    offered = [r["rps"] for r in full]
    assert sum(offered) / len(offered) == pytest.approx(40, rel=0.25)
    assert runs["rate"].summary["offered_rps"] == 40


def test_open_loop_above_capacity_sheds_and_says_so(swarm_registry: Registry, trained_model: Path) -> None:
    # No batching and a one-batch queue: capacity is one model call at a time, the rest is refused at once.
    low = ServingConfig(runtime="keras", max_batch_size=1, batch_timeout_ms=0, max_enqueued_batches=1)
    target = start_endpoint(swarm_registry, trained_model, low, name="digits", ready_timeout_s=120)
    try:
        config = LoadTestConfig(host=target.url, model_name="digits", shape="rate", users=12, spawn_rate=12,
                                target_rps=600, run_time_s=5, samples_path=str(trained_model),
                                # Any shed request fails this gate. (The share shed depends on how long the
                                # endpoint parks refused connections, so a fail_ratio gate would be a coin toss.)
                                slos=("failures<1",))
        result = run_loadtest(swarm_registry, config, serve_run_id=target.run_id)
    finally:
        stop_endpoint(swarm_registry, target.run_id)
    s = result.summary
    assert result.status == "completed", result.error
    assert s["shed"] > 0 and s["failures_by_reason"]["503 shed"] == s["shed"]
    assert "timeout" not in s["failures_by_reason"]  # refused at once, not queued without bound
    assert s["offered_rps"] == 600
    assert "shed load" in s["verdict"] and "above its capacity" in s["verdict"]
    assert any((v or 0) > 0 for _, v in swarm_registry.metric_series(result.run_id)["server_shed_per_s"])
    assert not result.passed


def test_rate_far_above_what_the_generator_offers_says_so(swarm_registry: Registry, ceiling: EndpointHandle) -> None:
    # Two users cannot offer 20,000 req/s to anything: each waits for its answer.
    config = LoadTestConfig(host=ceiling.url, n_features=N_FEATURES, shape="rate", users=2, spawn_rate=2,
                            target_rps=20000, run_time_s=3)
    result = run_loadtest(swarm_registry, config)
    s = result.summary
    assert result.status == "completed", result.error
    assert s["shed"] == 0 and s["rps"] < 0.5 * 20000
    assert f"offered 20000 req/s, achieved {s['rps']:.0f} req/s" in s["verdict"]
    assert "2 users cannot offer it" in s["verdict"] or "load generator could not keep up" in s["verdict"]


def test_cli_exit_codes_against_a_running_host(
    home: Path, ceiling: EndpointHandle, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    common = ["--host", ceiling.url, "--n-features", "64", "-u", "2", "-r", "2", "--run-time", "2s"]
    assert cli_main([*common, "--slo", "fail_ratio<=0.01", "--slo", "p99<=10s", "--report-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "PASS  fail_ratio<=0.01" in out and "PASS  p99<=10s" in out
    for name in ("locust_stats.csv", "locust_stats_history.csv", "locust.json", "locust.html", "summary.json"):
        assert (tmp_path / name).is_file(), name
    assert cli_main([*common, "--slo", "rps>=100000000"]) == 1
    out = capsys.readouterr().out
    assert "FAIL  rps>=100000000" in out and "verdict: FAIL: rps>=100000000 measured " in out


def test_cli_serve_starts_and_always_stops_the_endpoint(
    home: Path, trained_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli_main(["--serve", str(trained_model), "--runtime", "keras", "-u", "2", "-r", "2", "--run-time", "2s",
                     "--slo", "fail_ratio<=0.01"])
    out = capsys.readouterr().out
    assert code == 0, out
    reg = Registry(home)
    serve_runs = reg.list_runs(kind="serve")
    assert len(serve_runs) == 1 and not serve_runs[0].active
    assert reg.list_runs(kind="loadtest")[0].status == "completed"
    assert "server queue / compute" in out
