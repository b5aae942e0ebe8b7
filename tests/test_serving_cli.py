"""The endpoint as a process: CLI contract, graceful shutdown, registry jobs, workers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from serving_helpers import request, wait_until

from agent.export import ModelFormatError, load_samples
from agent.serving.__main__ import build_parser, config_from_args
from agent.serving.config import ServingConfig
from agent.serving.metrics import SHARED_DIR_ENV, parse_metrics
from agent.serving.process import EndpointError, start_endpoint, stop_endpoint
from runs.jobs import is_alive
from runs.registry import Registry

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "agent.serving"]
BATCH_WAIT_MS = 6000  # long enough that requests are still queued when SIGTERM arrives
STEP_TIMEOUT_S = 60.0


def _run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


@pytest.fixture
def cli_server(trained_model: Path) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        [*CLI, "--model", str(trained_model), "--name", "digits", "--port", "0", "--runtime", "tflite",
         "--max-batch-size", "64", "--batch-timeout-ms", str(BATCH_WAIT_MS), "--max-enqueued-batches", "4"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


@pytest.mark.slow
def test_sigterm_finishes_in_flight_requests_and_exits_0(
    cli_server: subprocess.Popen[str], trained_model: Path
) -> None:
    assert cli_server.stdout is not None
    line = cli_server.stdout.readline()  # blocks until ready (or EOF if it died)
    assert line.startswith("ready: http://127.0.0.1:"), line
    port = int(line.strip().rsplit(":", 1)[1])
    rows = np.asarray(load_samples(trained_model), dtype=np.float32)[:3]
    with ThreadPoolExecutor(3) as pool:
        inflight = [pool.submit(request, port, "POST", "/v1/models/digits:predict", {"instances": [r.tolist()]})
                    for r in rows]
        deadline = time.monotonic() + STEP_TIMEOUT_S
        while parse_metrics(request(port, "GET", "/metrics").body.decode()).queue_depth_rows < 3:
            assert time.monotonic() < deadline, "requests never reached the queue"
            time.sleep(0.05)
        os.kill(cli_server.pid, signal.SIGTERM)
        # New connections are refused while the queued requests are still waiting.
        refused = False
        while not refused and time.monotonic() < deadline:
            try:
                request(port, "GET", "/healthz", timeout=2)
                time.sleep(0.05)
            except (ConnectionRefusedError, ConnectionResetError):
                # Refused, or reset when it raced the listening socket's close: not served either way.
                refused = True
        assert refused and not any(f.done() for f in inflight)
        answers = [f.result(timeout=STEP_TIMEOUT_S) for f in inflight]
    assert [a.status for a in answers] == [200, 200, 200]
    assert all(len(a.json["predictions"][0]) == 10 for a in answers)
    assert cli_server.wait(STEP_TIMEOUT_S) == 0
    assert cli_server.stdout.read() == ""  # "ready: ..." was the only line


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda d: d / "model.h5", ".h5 files are refused"),
        (lambda d: d / "missing.keras", "no such model file"),
        (lambda d: d / "notzip.keras", "not a Keras v3 archive"),
    ],
)
def test_cli_refuses_bad_model_files_with_one_line(tmp_path: Path, make: Callable[[Path], Path], fragment: str,
                                                   home: Path) -> None:
    path = make(tmp_path)
    if path.name != "missing.keras":
        path.write_bytes(b"\x89HDF\r\n\x1a\n not a keras archive")
    result = _run_cli("--model", str(path), "--port", "0")
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], result.stderr
    (run,) = Registry(home).list_runs(kind="serve")  # recorded like any other serve run, as failed
    assert run.status == "failed" and fragment in run.error


def _lambda_model(path: Path) -> Path:
    """A model safe mode refuses to load: a Lambda layer holds arbitrary Python."""
    import keras

    inp = keras.Input((4,), name="features")
    keras.Model(inp, keras.layers.Lambda(lambda x: x * 2.0)(inp)).save(path)
    return path


def test_model_refused_at_load_exits_2_and_records_failed(tmp_path: Path, home: Path, registry: Registry) -> None:
    model = _lambda_model(tmp_path / "lambda.keras")
    result = _run_cli("--model", str(model), "--port", "0", "--runtime", "keras")
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1].startswith("error: ") and "Lambda" in result.stderr
    (cli_run,) = registry.list_runs(kind="serve")
    assert cli_run.status == "failed" and "Lambda" in cli_run.error and "\n" not in cli_run.error
    # the same through the function the pages use
    with pytest.raises(EndpointError, match="Lambda"):
        start_endpoint(registry, model, ServingConfig(runtime="keras"))
    page_run = registry.list_runs(kind="serve")[0]
    assert page_run.id != cli_run.id and page_run.status == "failed" and "Lambda" in page_run.error
    # The run is marked failed before the job prints its last line and exits: read the log once it has.
    wait_until(lambda: not is_alive(registry.get_run(page_run.id)), 30, "the refused job to exit")
    log = (registry.artifacts_dir(page_run.id) / "job.log").read_text()
    assert "error: " in log and "Traceback" not in log


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--ceiling", "--max-batch-size", "0"], "max_batch_size must be in [1, 8192]; got 0"),
        (["--ceiling", "--runtime", "onnx"], "invalid choice: 'onnx'"),
        (["--ceiling", "--max-batch-size", "8", "--allowed-batch-sizes", "2,4"], "must end with max_batch_size (8)"),
        (["--ceiling", "--allowed-batch-sizes", "a,b"], "expected comma-separated integers"),
        (["--ceiling", "--config", "/nonexistent/cfg.json"], "cannot read serving config"),
        (["--port", "0"], "--model PATH.keras is required"),
        (["--ceiling", "--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_cli_bad_flags_exit_2_with_one_line(args: list[str], fragment: str) -> None:
    result = _run_cli(*args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], result.stderr


def test_config_file_with_flags_on_top(tmp_path: Path) -> None:
    path = tmp_path / "tuned.json"
    path.write_text(json.dumps(ServingConfig(runtime="keras", max_batch_size=16, num_batch_threads=2).to_dict()))
    args = build_parser().parse_args(["--ceiling", "--config", str(path), "--max-batch-size", "8"])
    cfg = config_from_args(args)
    assert (cfg.runtime, cfg.max_batch_size, cfg.num_batch_threads) == ("keras", 8, 2)
    assert "--run-id" in build_parser().format_help() and "--intra-op-threads" in build_parser().format_help()


def test_start_endpoint_records_the_run(registry: Registry, trained_model: Path) -> None:
    handle = start_endpoint(registry, trained_model, ServingConfig(runtime="tflite"), name="digits")
    try:
        run = registry.get_run(handle.run_id)
        assert run.kind == "serve" and run.status == "running"
        s = run.summary
        assert {"url", "port", "pid", "name", "runtime", "config", "ready_at"} <= set(s)
        assert s["url"] == handle.url and s["port"] == handle.port and s["pid"] == handle.pid
        assert s["runtime"] == "tflite" and ServingConfig.from_dict(s["config"]) == ServingConfig(runtime="tflite")
        rows = load_samples(trained_model)[:4]
        r = request(handle.port, "POST", "/v1/models/digits:predict", {"instances": rows})
        assert r.status == 200 and len(r.json["predictions"]) == 4
    finally:
        status = stop_endpoint(registry, handle.run_id)
    assert status == "stopped" and registry.get_run(handle.run_id).error == "stopped by request"
    assert not is_alive(registry.get_run(handle.run_id))


def test_two_workers_share_the_port(registry: Registry) -> None:
    # The ceiling app keeps this test free of TensorFlow start-up; workers serving a
    # model run the same code path with --model instead of --ceiling.
    handle = start_endpoint(registry, None, ServingConfig(workers=2), ceiling=True)
    try:
        pids = registry.get_run(handle.run_id).summary["worker_pids"]
        assert len(pids) == 2 and handle.pid not in pids
        for _ in range(6):  # fresh connections: the kernel hands them to either worker
            assert request(handle.port, "POST", "/v1/models/m:predict", {"instances": [[1.0]]}).status == 200
        # The workers listen with SO_REUSEPORT; another endpoint's workers must still not join them on the port.
        for workers in (2, 1):
            with pytest.raises(EndpointError, match="in use"):
                start_endpoint(registry, None, ServingConfig(workers=workers), port=handle.port, ceiling=True,
                               ready_timeout_s=60)
        assert request(handle.port, "POST", "/v1/models/m:predict", {"instances": [[1.0]]}).status == 200
    finally:
        assert stop_endpoint(registry, handle.run_id) == "stopped"
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_start_endpoint_reports_a_model_that_fails_to_load(registry: Registry, tmp_path: Path) -> None:
    broken = tmp_path / "broken.keras"
    with zipfile.ZipFile(broken, "w") as z:
        z.writestr("config.json", "{not valid")
    with pytest.raises(EndpointError, match="ended before it was ready"):
        start_endpoint(registry, broken, ServingConfig(runtime="keras"), ready_timeout_s=120)
    run = registry.list_runs(kind="serve")[0]
    assert run.status == "failed" and run.error
    with pytest.raises(ModelFormatError):
        start_endpoint(registry, tmp_path / "model.h5", ServingConfig())
    refused = registry.list_runs(kind="serve")[0]
    assert refused.status == "failed" and ".h5" in refused.error and refused.pid is None  # nothing was started


def test_ceiling_endpoint(registry: Registry) -> None:
    handle = start_endpoint(registry, None, ServingConfig(), ceiling=True)
    try:
        r = request(handle.port, "POST", "/v1/models/anything:predict", {"instances": [[1.0]]})
        assert r.status == 200 and len(r.json["predictions"][0]) == 10
        assert registry.get_run(handle.run_id).summary["runtime"] == "ceiling"
    finally:
        assert stop_endpoint(registry, handle.run_id) == "stopped"


@pytest.mark.integration
@pytest.mark.slow
def test_metrics_of_two_workers_answer_for_both(registry: Registry, trained_model: Path) -> None:
    handle = start_endpoint(registry, trained_model, ServingConfig(runtime="tflite", workers=2), name="digits")
    try:
        rows = load_samples(trained_model)[:1]
        sent = 24
        for _ in range(sent):  # fresh connections: the kernel hands them to either worker
            assert request(handle.port, "POST", "/v1/models/digits:predict", {"instances": rows}).status == 200
        time.sleep(1.5)  # > the workers' publishing interval
        for _ in range(4):  # whichever worker takes the scrape answers for both
            snap = parse_metrics(request(handle.port, "GET", "/metrics").body.decode())
            assert snap.requests_by_code.get("200") == sent
        # Both workers served: each one's own published figures count some of the requests.
        pids = registry.get_run(handle.run_id).summary["worker_pids"]
        served = [_worker_figures(pid).requests_by_code.get("200", 0) for pid in pids]
        assert sum(served) == sent and all(n > 0 for n in served), served
    finally:
        stop_endpoint(registry, handle.run_id)


def _worker_figures(pid: int) -> Any:
    """What worker ``pid`` published into the folder its parent shares (agent/serving/metrics.py)."""
    env = dict(item.split(b"=", 1) for item in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") if b"=" in item)
    folder = Path(env[SHARED_DIR_ENV.encode()].decode())
    return parse_metrics((folder / f"worker-{pid}.prom").read_text())
