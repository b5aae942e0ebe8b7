"""The job supervisor with real child processes and process groups."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

from runs import jobs
from runs.registry import Registry

pytestmark = pytest.mark.integration  # every test here starts real child processes

# A job that starts a grandchild in the same process group, then sleeps.
SPAWNING_JOB = textwrap.dedent(
    """
    import subprocess, sys, time
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    print("grandchild", child.pid, flush=True)
    time.sleep(120)
    """
)


def _wait_for(predicate, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def test_job_that_exits_cleanly_is_completed(registry: Registry) -> None:
    run_id = registry.create_run("train")
    jobs.start_job(registry, run_id, [sys.executable, "-c", "print('hello')"])
    run = jobs.wait_job(registry, run_id, timeout_s=30)
    assert run.status == "completed"
    assert "hello" in (registry.artifacts_dir(run_id) / jobs.LOG_FILENAME).read_text()


def test_job_that_crashes_is_failed_with_exit_code_and_log_tail(registry: Registry) -> None:
    run_id = registry.create_run("train")
    jobs.start_job(registry, run_id, [sys.executable, "-c", "import sys; print('boom happened'); sys.exit(3)"])
    run = jobs.wait_job(registry, run_id, timeout_s=30)
    assert run.status == "failed"
    assert "code 3" in run.error and "boom happened" in run.error


def test_stop_ends_the_whole_process_group(registry: Registry) -> None:
    run_id = registry.create_run("loadtest")
    handle = jobs.start_job(registry, run_id, [sys.executable, "-c", SPAWNING_JOB])
    log = handle.log_path
    _wait_for(lambda: "grandchild" in log.read_text())
    grandchild = int(log.read_text().split()[1])
    assert psutil.pid_exists(grandchild)

    status = jobs.stop_job(registry, run_id, grace_s=5)

    assert status == "stopped"
    assert not psutil.pid_exists(grandchild) or psutil.Process(grandchild).status() == psutil.STATUS_ZOMBIE
    with pytest.raises(ProcessLookupError):
        os.killpg(handle.pid, 0)
    assert registry.get_run(run_id).stop_requested


def test_stop_escalates_to_sigkill_when_sigterm_is_ignored(registry: Registry) -> None:
    run_id = registry.create_run("serve")
    code = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
        " print('up', flush=True); time.sleep(120)"
    )
    handle = jobs.start_job(registry, run_id, [sys.executable, "-c", code])
    _wait_for(lambda: "up" in handle.log_path.read_text())
    t0 = time.monotonic()
    assert jobs.stop_job(registry, run_id, grace_s=1.0) == "stopped"
    assert time.monotonic() - t0 < 10
    with pytest.raises(ProcessLookupError):
        os.killpg(handle.pid, 0)


def test_job_killed_while_supervisor_was_away_is_interrupted(registry: Registry) -> None:
    # A process this supervisor did not start (as after a Streamlit restart).
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True)
    try:
        run_id = registry.create_run("train")
        registry.mark_started(run_id, proc.pid, psutil.Process(proc.pid).create_time())
        assert jobs.reap(Registry(registry.home)) == []  # alive: left alone
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)

        changed = jobs.reap(Registry(registry.home))  # "the next supervisor start"

        assert changed == [run_id]
        run = registry.get_run(run_id)
        assert run.status == "interrupted" and str(proc.pid) in run.error
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def test_reused_pid_is_not_mistaken_for_the_job(registry: Registry) -> None:
    run_id = registry.create_run("train")
    # Our own pid is alive, but with a different start time it is another process.
    registry.mark_started(run_id, os.getpid(), pid_started=1.0)
    assert jobs.reap(registry) == [run_id]
    assert registry.get_run(run_id).status == "interrupted"


def test_running_jobs_lists_live_jobs_only(registry: Registry) -> None:
    live = registry.create_run("serve")
    jobs.start_job(registry, live, [sys.executable, "-c", "import time; time.sleep(60)"])
    done = registry.create_run("train")
    jobs.start_job(registry, done, [sys.executable, "-c", "pass"])
    jobs.wait_job(registry, done, timeout_s=30)
    try:
        assert [r.id for r in jobs.running_jobs(registry)] == [live]
    finally:
        jobs.stop_job(registry, live, grace_s=5)
    assert jobs.running_jobs(registry) == []


def test_wait_job_is_bounded(registry: Registry) -> None:
    run_id = registry.create_run("serve")
    jobs.start_job(registry, run_id, [sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with pytest.raises(TimeoutError, match="still running"):
            jobs.wait_job(registry, run_id, timeout_s=0.5)
    finally:
        jobs.stop_job(registry, run_id, grace_s=5)


def test_empty_argv_is_refused(registry: Registry) -> None:
    with pytest.raises(ValueError, match="argv must name a program"):
        jobs.start_job(registry, registry.create_run("train"), [])
