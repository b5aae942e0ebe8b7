"""The job supervisor: long work runs as child processes whose state lives in the registry.

A job is started in its own session (so its own process group): stopping it signals
the whole group, which takes down anything the job itself started (Locust workers,
endpoint workers) and leaves no orphans. The registry records the pid and the
process start time, so a later supervisor (a restarted Streamlit, another tab)
can tell "still running" from "gone" even when the pid has been reused.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

from runs.registry import Registry, Run

STOP_GRACE_S = 15.0
POLL_INTERVAL_S = 0.05
LOG_FILENAME = "job.log"
PROJECT_ROOT = Path(__file__).resolve().parent.parent

# Popen handles of jobs this process started, so finished children are reaped
# (no zombies) and their exit codes are known.
_CHILDREN: dict[str, subprocess.Popen[bytes]] = {}


@dataclass(frozen=True)
class JobHandle:
    run_id: str
    pid: int
    log_path: Path


def python_module_argv(module: str, *args: str) -> list[str]:
    """argv for ``python -m module args`` with this interpreter."""
    return [sys.executable, "-m", module, *args]


def start_job(
    registry: Registry,
    run_id: str,
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
) -> JobHandle:
    """Start ``argv`` as the process of ``run_id``, in a new process group.

    Output goes to ``job.log`` in the run's artifact folder. The child inherits
    ``TUNESWARM_HOME`` so it writes to the same registry.
    """
    if not argv:
        raise ValueError("argv must name a program to run")
    log_path = registry.artifacts_dir(run_id) / LOG_FILENAME
    log_path.parent.mkdir(parents=True, exist_ok=True)
    child_env = dict(os.environ)
    child_env.update(env or {})
    child_env["TUNESWARM_HOME"] = str(registry.home)
    child_env.setdefault("PYTHONUNBUFFERED", "1")
    # Children import project packages by name whatever their working directory.
    child_env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(PROJECT_ROOT), child_env.get("PYTHONPATH", "")) if p
    )
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=child_env,
            cwd=cwd or PROJECT_ROOT,
            start_new_session=True,
        )
    _CHILDREN[run_id] = proc
    registry.mark_started(run_id, proc.pid, _process_start_time(proc.pid))
    return JobHandle(run_id=run_id, pid=proc.pid, log_path=log_path)


def _process_start_time(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def is_alive(run: Run) -> bool:
    """True if the run's recorded process still exists (and is the same process)."""
    if run.pid is None:
        return False
    child = _CHILDREN.get(run.id)
    if child is not None:
        return child.poll() is None
    try:
        proc = psutil.Process(run.pid)
        if run.pid_started is not None and abs(proc.create_time() - run.pid_started) > 1.0:
            return False  # pid reused by an unrelated process
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def reap(registry: Registry) -> list[str]:
    """Mark active runs whose process is gone; returns the ids that changed.

    A child of this process that exited without recording an outcome is
    ``failed`` (with its exit code); a process that vanished while another
    supervisor owned it (Streamlit restarted, machine rebooted) is
    ``interrupted``.
    """
    changed: list[str] = []
    for run in registry.list_runs(status=("pending", "running")):
        if run.pid is None:
            continue  # created but not started yet (or a run without a process)
        if is_alive(run):
            continue
        child = _CHILDREN.pop(run.id, None)
        if child is not None:
            code = child.wait()
            if code == 0:
                status, reason = "completed", None
            else:
                status, reason = "failed", f"process exited with code {code}{_log_tail(registry, run.id)}"
        else:
            status, reason = "interrupted", f"process {run.pid} is gone (supervisor restarted?)"
        if registry.finish_if_active(run.id, status, reason):
            changed.append(run.id)
    return changed


def _log_tail(registry: Registry, run_id: str, lines: int = 3) -> str:
    path = registry.artifacts_dir(run_id) / LOG_FILENAME
    try:
        tail = path.read_text(errors="replace").strip().splitlines()[-lines:]
    except OSError:
        return ""
    return (": " + " | ".join(t.strip() for t in tail)) if tail else ""


def _signal_group(pid: int, sig: signal.Signals) -> bool:
    try:
        os.killpg(pid, sig)  # the job leads its own session, so pgid == pid
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return False


def _group_alive(pid: int) -> bool:
    """True while any process of the group led by ``pid`` exists."""
    child = next((c for c in _CHILDREN.values() if c.pid == pid), None)
    if child is not None:
        child.poll()  # reap our own exited leader, or it lingers in the group as a zombie
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_job(registry: Registry, run_id: str, grace_s: float = STOP_GRACE_S) -> str:
    """Stop a job: ask politely (registry flag + SIGTERM), then SIGKILL its group.

    Returns the run's final status. A job that handled the request records its
    own outcome (e.g. ``stopped`` with partial results saved); one that had to be
    killed is recorded as ``stopped`` here.
    """
    registry.request_stop(run_id)
    run = registry.get_run(run_id)
    if run.pid is not None and (run.id in _CHILDREN or is_alive(run)):
        _signal_group(run.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and _group_alive(run.pid):
            time.sleep(POLL_INTERVAL_S)
        if _group_alive(run.pid):
            _signal_group(run.pid, signal.SIGKILL)
            kill_deadline = time.monotonic() + 5.0
            while time.monotonic() < kill_deadline and _group_alive(run.pid):
                time.sleep(POLL_INTERVAL_S)
    child = _CHILDREN.pop(run_id, None)
    if child is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=5.0)
    registry.finish_if_active(run_id, "stopped", "stopped by request")
    return registry.get_run(run_id).status


def wait_job(registry: Registry, run_id: str, timeout_s: float) -> Run:
    """Wait (bounded) until the run leaves the active states; returns the run."""
    deadline = time.monotonic() + timeout_s
    while True:
        reap(registry)
        run = registry.get_run(run_id)
        if not run.active:
            return run
        if time.monotonic() >= deadline:
            raise TimeoutError(f"run {run_id} still {run.status} after {timeout_s:.0f}s")
        time.sleep(0.1)


def running_jobs(registry: Registry) -> list[Run]:
    """Active runs whose process is alive, after reaping the dead ones."""
    reap(registry)
    return [r for r in registry.list_runs(status=("pending", "running")) if is_alive(r)]
