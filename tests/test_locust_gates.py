"""SLO gates inside Locust: a plain ``locust -f loadtest/locustfile.py --headless --slo ...`` sets its exit code."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.serving.config import ServingConfig
from agent.serving.process import EndpointHandle, start_endpoint, stop_endpoint
from runs.registry import Registry

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
LOCUSTFILE = ROOT / "loadtest" / "locustfile.py"


@pytest.fixture(scope="module")
def ceiling(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EndpointHandle]:
    """The endpoint's fixed-answer handler: fast to start, answers any :predict with one prediction."""
    registry = Registry(tmp_path_factory.mktemp("gates-state"))
    handle = start_endpoint(registry, None, ServingConfig(), name="model", ceiling=True, ready_timeout_s=60)
    try:
        yield handle
    finally:
        stop_endpoint(registry, handle.run_id)
        registry.close()


def plain_locust(host: str, cwd: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """Locust itself (not ``python -m loadtest``), run from outside the checkout, always ended."""
    argv = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--only-summary",
            "-u", "2", "-r", "2", "-t", "3s", "--host", host, "--n-features", "64", *extra]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def test_a_violated_gate_fails_locust_and_a_met_one_passes(ceiling: EndpointHandle, tmp_path: Path) -> None:
    # (not a tiny latency limit: Locust rounds sub-millisecond answers of this endpoint to 0 ms)
    failed = plain_locust(ceiling.url, tmp_path, "--slo", "rps>=100000", "--slo", "fail_ratio<=0.01")
    assert failed.returncode == 1, failed.stderr[-2000:]
    assert "FAIL  rps>=100000" in failed.stderr
    assert "PASS  fail_ratio<=0.01" in failed.stderr

    html = tmp_path / "report.html"
    met = plain_locust(ceiling.url, tmp_path, "--slo", "p99<=5s", "--slo", "rps>=1", "--html", str(html))
    assert met.returncode == 0, met.stderr[-2000:]
    assert "PASS  rps>=1" in met.stderr
    # Locust's own report charts the tail the gates watch.
    report = html.read_text()
    assert '"percentiles_to_chart": [0.5, 0.95, 0.99]' in report
    assert '"response_time_percentile_0.99"' in report


def test_gates_judge_failures_and_a_bad_gate_is_bad_usage(tmp_path: Path) -> None:
    dead = "http://127.0.0.1:9"  # discard port: every request fails, no latency is measured
    out = plain_locust(dead, tmp_path, "--slo", "p95<=50ms")
    assert out.returncode == 1
    assert "FAIL  p95<=50ms" in out.stderr and "measured n/a" in out.stderr

    bad = plain_locust(dead, tmp_path, "--slo", "p97<=5ms")
    assert bad.returncode == 2
    assert "unknown SLO metric 'p97'" in bad.stderr


def test_a_master_judges_its_workers_totals(ceiling: EndpointHandle, tmp_path: Path) -> None:
    """Distributed mode: the master's exit code comes from the gates on the aggregated stats."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    worker = subprocess.Popen([sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--worker",
                               "--master-host", "127.0.0.1", "--master-port", str(port), "--n-features", "64"],
                              cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    try:
        master = plain_locust(ceiling.url, tmp_path, "--master", "--master-bind-host", "127.0.0.1",
                              "--master-bind-port", str(port), "--expect-workers", "1",
                              "--expect-workers-max-wait", "30", "--slo", "rps>=100000", "--slo", "rps>=1")
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(timeout=10)
    assert master.returncode == 1, master.stderr[-2000:]
    assert "FAIL  rps>=100000" in master.stderr
    assert "PASS  rps>=1" in master.stderr  # the workers' requests reached the master's totals


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
