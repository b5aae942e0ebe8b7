"""The endpoint under overload and abuse, with real servers.

- a flood far above capacity with a small queue bound: the batcher keeps running
  full batches and most requests are served (wrk drives it from its own process);
- slow and incomplete requests are closed after the receive time limit;
- oversized heads are refused with 431 while the server keeps serving, and a
  dripping endless header does not grow its memory;
- connections over the limit get 503, and file descriptors return to baseline.

The limits are checked on a ``--ceiling`` server process (same protocol, no
model: it starts in a second), so its file descriptors and memory are its own.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psutil
import pytest
from serving_helpers import raw_exchange, read_response, request, running_server

from agent.export import load_samples
from agent.serving.app import create_app
from agent.serving.config import ServingConfig
from agent.serving.metrics import parse_metrics, snapshot_delta

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
PREDICT = "/v1/models/digits:predict"
RECEIVE_MS = 600
MAX_HEADER_BYTES = 4096
MAX_HEADERS = 20
MAX_CONNECTIONS = 24
WAIT_S = 10.0  # bound on every wait below


def _wait_until(cond: object, what: str, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


# -- a flood with a small queue bound -------------------------------------------------------------


@pytest.mark.skipif(shutil.which("wrk") is None, reason="needs wrk (apt-get install wrk) to flood the server")
def test_flood_far_above_capacity_keeps_the_batcher_running_full_batches(trained_model: Path) -> None:
    config = ServingConfig(runtime="tflite", max_batch_size=8, batch_timeout_ms=2, max_enqueued_batches=2)
    row = np.asarray(load_samples(trained_model), dtype=np.float32)[0].tolist()
    body = json.dumps({"instances": [row]})
    script = ('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
              f"wrk.body = '{body}'\n")
    with running_server(create_app(trained_model, "digits", config)) as port, \
            tempfile.NamedTemporaryFile("w", suffix=".lua") as lua:
        lua.write(script)
        lua.flush()
        before = parse_metrics(request(port, "GET", "/metrics").body.decode(), at=time.monotonic())
        # 256 connections against a queue of 16 rows: 16x what the queue holds.
        out = subprocess.run(["wrk", "-t1", "-c256", "-d3s", "--timeout", "10s", "-s", lua.name,
                              f"http://127.0.0.1:{port}{PREDICT}"], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        d = snapshot_delta(before, parse_metrics(request(port, "GET", "/metrics").body.decode(), at=time.monotonic()))
        # Once the flood is over the server serves again (what wrk left in the queue drains first).
        _wait_until(lambda: request(port, "POST", PREDICT, {"instances": [row]}).status == 200,
                    "a request to be served after the flood")
    assert d.ok > 1000, d.requests_by_code
    # Goodput held: most requests were served, not refused (before admission moved to the
    # request head, 503s outnumbered 200s about twenty to one here).
    assert d.shed_503 <= 0.25 * d.ok, d.requests_by_code
    assert d.server_errors == 0 and d.timeouts_504 == 0, d.requests_by_code
    # Every 200 is a row the model computed, in batches that were nearly full.
    assert d.mean_batch_size is not None and d.mean_batch_size * d.batches == pytest.approx(d.ok, abs=8)
    assert d.mean_batch_size >= 0.75 * config.max_batch_size


# -- connection limits on a ceiling server process ------------------------------------------------


@pytest.fixture(scope="module")
def limited() -> Iterator[tuple[int, psutil.Process]]:
    """A ``--ceiling`` server with small limits; yields (port, its process)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent.serving", "--ceiling", "--port", "0", "--receive-timeout-ms", str(RECEIVE_MS),
         "--max-header-bytes", str(MAX_HEADER_BYTES), "--max-headers", str(MAX_HEADERS),
         "--max-connections", str(MAX_CONNECTIONS)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("ready: "), line
        yield int(line.strip().rsplit(":", 1)[1]), psutil.Process(proc.pid)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)


def _settled_fds(server: psutil.Process) -> int:
    """The server's open file count once it has been stable for a moment."""
    last, stable_since = server.num_fds(), time.monotonic()
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() - stable_since < 0.5 and time.monotonic() < deadline:
        time.sleep(0.05)
        n = server.num_fds()
        if n != last:
            last, stable_since = n, time.monotonic()
    return last


def _closed_by_server(s: socket.socket, timeout: float) -> tuple[bool, bytes]:
    """(whether the server closed ``s`` within ``timeout``, what it sent before)."""
    s.settimeout(timeout)
    got = b""
    try:
        while chunk := s.recv(65536):
            got += chunk
    except TimeoutError:
        return False, got
    except ConnectionResetError:
        pass
    return True, got


def test_idle_and_stalled_connections_are_closed_after_the_receive_limit(
    limited: tuple[int, psutil.Process],
) -> None:
    port, server = limited
    baseline = _settled_fds(server)
    partial = [b"", b"POST /v1/models/x:predict HT",  # nothing, half a request line
               b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789"]  # a tenth of the body
    socks = []
    for i in range(3 * 5):
        s = socket.create_connection(("127.0.0.1", port))
        if partial[i % 3]:
            s.sendall(partial[i % 3])
        socks.append((i % 3, s))
    _wait_until(lambda: server.num_fds() >= baseline + len(socks), "the server to hold the connections")
    t0 = time.monotonic()
    try:
        for kind, s in socks:
            closed, got = _closed_by_server(s, RECEIVE_MS / 1000 + 3.0)
            assert closed, f"connection {kind} still open {time.monotonic() - t0:.1f}s later"
            if kind:  # something was sent: it is told why
                assert got.startswith(b"HTTP/1.1 408 "), got[:80]
                assert b'"error"' in got and b"within 600 ms" in got
    finally:
        for _, s in socks:
            s.close()
    assert time.monotonic() - t0 < RECEIVE_MS / 1000 + 2.0
    assert _settled_fds(server) == baseline


def test_oversized_heads_get_431_and_the_server_keeps_serving(limited: tuple[int, psutil.Process]) -> None:
    port, server = limited
    big = raw_exchange(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (2 * MAX_HEADER_BYTES)
                       + b"\r\n\r\n")
    assert big.startswith(b"HTTP/1.1 431 "), big[:80]
    assert b"exceed 4096 bytes" in big
    many = b"".join(b"X-H%d: v\r\n" % i for i in range(MAX_HEADERS + 5))
    refused = raw_exchange(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n")
    assert refused.startswith(b"HTTP/1.1 431 ") and b"more than 20 header fields" in refused, refused[:120]
    # An endless header dripped in 64 KiB pieces: cut off near the limit, memory does not follow it.
    rss = server.memory_info().rss
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nX-Endless: ")
        with pytest.raises(OSError):  # reset or broken pipe once the server has closed it
            for _ in range(50 * 16):  # up to 50 MB
                s.sendall(b"a" * 65536)
                sent += 65536
    assert sent < 16 * 1024 * 1024  # what the kernel buffers took before the close, not 50 MB
    assert server.memory_info().rss - rss < 16 * 1024 * 1024
    assert request(port, "GET", "/healthz").status == 200


def test_connections_over_the_limit_get_503_and_fds_return_to_baseline(
    limited: tuple[int, psutil.Process],
) -> None:
    port, server = limited
    baseline = _settled_fds(server)
    socks = []
    try:
        for _ in range(MAX_CONNECTIONS + 8):  # each sends its request at once (the receive limit is short)
            socks.append(socket.create_connection(("127.0.0.1", port), timeout=5))
            socks[-1].sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        answers = [read_response(s) for s in socks]
        codes = [a[9:12] for a in answers]
        assert codes.count(b"200") == MAX_CONNECTIONS and codes.count(b"503") == 8, codes
        assert all(b"too many connections (limit 24)" in a for a in answers if a[9:12] == b"503")
        # The refused ones are closed by the server; the served ones stay open (keep-alive).
        for s, code in zip(socks, codes, strict=True):
            if code == b"503":
                assert _closed_by_server(s, 3.0)[0]
        socks[0].sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(socks[0]).startswith(b"HTTP/1.1 200 ")
    finally:
        for s in socks:
            s.close()
    assert _settled_fds(server) == baseline
    assert request(port, "GET", "/healthz").status == 200
