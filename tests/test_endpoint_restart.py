"""Endpoint start-up stages and restarts that keep their port (real sockets, real serve jobs)."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest

from agent.serving.config import ServingConfig
from agent.serving.process import ServeJob, replace_endpoint, start_endpoint, stop_endpoint
from agent.serving.server import bind_socket_waiting
from runs import jobs
from runs.registry import Registry


def test_binding_waits_for_a_port_to_be_released() -> None:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    port = holder.getsockname()[1]
    waited: list[bool] = []
    threading.Timer(0.5, holder.close).start()  # the old endpoint lets go of the port
    t0 = time.monotonic()
    sock = bind_socket_waiting("127.0.0.1", port, wait_s=10, on_wait=lambda: waited.append(True))
    try:
        assert sock.getsockname()[1] == port and waited == [True]
        assert 0.4 < time.monotonic() - t0 < 5
    finally:
        sock.close()


def test_a_port_held_too_long_is_a_clear_error() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        with pytest.raises(OSError, match=rf"port {port} is still taken after 1 s .*restart with a new port"):
            bind_socket_waiting("127.0.0.1", port, wait_s=1)
        with pytest.raises(OSError, match="in use"):  # no wait asked for: the bind error as it is
            bind_socket_waiting("127.0.0.1", port, wait_s=0)


@pytest.mark.integration
@pytest.mark.slow
def test_stages_are_recorded_and_a_restart_keeps_the_port(registry: Registry, trained_model: Path) -> None:
    old = start_endpoint(registry, trained_model, ServingConfig(runtime="tflite"), name="digits")
    try:
        progress = registry.get_run(old.run_id).progress
        assert progress["stages"] == ["starting", "loading TensorFlow and the model", "converting", "warming up",
                                      "ready"]
        assert progress["url"] == old.url
        t0 = time.monotonic()
        new_id = replace_endpoint(registry, registry.get_run(old.run_id),
                                  ServeJob(str(trained_model), "digits", serving=ServingConfig(runtime="keras")))
        assert time.monotonic() - t0 < 3  # returns at once; the job does the waiting
        new = jobs.wait_ready(registry, new_id, 120)
        assert new.summary["url"] == old.url and new.summary["runtime"] == "keras"
        assert jobs.wait_job(registry, old.run_id, 30).status == "stopped"
    finally:
        for run in registry.list_runs(kind="serve", status=("pending", "running")):
            stop_endpoint(registry, run.id, grace_s=10)


@pytest.mark.integration
def test_a_restart_on_a_new_port_moves_and_one_without_keeps_it(registry: Registry) -> None:
    first = start_endpoint(registry, None, ServingConfig(), ceiling=True)
    ceiling = ServeJob(None, ceiling=True)
    try:
        moved = jobs.wait_ready(registry, replace_endpoint(registry, registry.get_run(first.run_id), ceiling,
                                                           keep_port=False), 60)
        assert moved.summary["port"] != first.port
        kept = jobs.wait_ready(registry, replace_endpoint(registry, moved, ceiling), 60)
        assert kept.summary["url"] == moved.summary["url"]
        assert kept.config["port_wait_s"] > 0 and moved.config["port_wait_s"] == 0
    finally:
        for run in registry.list_runs(kind="serve", status=("pending", "running")):
            stop_endpoint(registry, run.id, grace_s=10)


PARENT = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
print(child.pid, flush=True)
time.sleep(60)  # never reaps it: once it exits, it stays a zombie of this process
"""


@pytest.mark.integration
def test_stopping_a_job_another_process_launched_does_not_wait_on_its_zombie(registry: Registry) -> None:
    """The dashboard launches endpoints and reaps them only on its next page run: a stop from elsewhere (a CLI,
    a test's teardown) must see the exited job as gone, not wait out the grace period and the kill."""
    import subprocess
    import sys

    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True,
                              start_new_session=True)
    try:
        assert parent.stdout is not None
        pid = int(parent.stdout.readline())
        run_id = registry.create_run("serve", {}, name="launched elsewhere", status="running")
        registry.mark_started(run_id, pid, None)
        t0 = time.monotonic()
        assert jobs.stop_job(registry, run_id, grace_s=10) == "stopped"
        assert time.monotonic() - t0 < 5
    finally:
        parent.kill()
        parent.wait(timeout=10)
