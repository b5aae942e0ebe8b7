"""The job supervisor (launch side of the job contract): start, stop, wait for and reap jobs.

Every job kind is listed once in :data:`JOB_KINDS`; its package's ``start(registry,
config)`` calls :func:`start`, which records the frozen config in a new run and
launches ``python -m <module> --run-id ID``. The child runs inside
``runs.lifecycle.job_context``. See runs/README.md.

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

from runs import lifecycle
from runs.registry import Registry, Run, State

STOP_GRACE_S = 15.0
POLL_INTERVAL_S = 0.05
LOG_FILENAME = "job.log"
PROJECT_ROOT = Path(__file__).resolve().parent.parent

# Popen handles of jobs this process started, so finished children are reaped
# (no zombies) and their exit codes are known.
_CHILDREN: dict[str, subprocess.Popen[bytes]] = {}


@dataclass(frozen=True)
class JobKind:
    """One kind of job: the registry kind its runs have, the module run as ``python -m MODULE --run-id ID``,
    and the frozen config class (``module:Class``) whose ``to_dict()`` is stored as the run's config."""

    name: str
    registry_kind: str
    module: str
    config_class: str


# The one table of job kinds. ``runs`` imports none of these packages (they depend on it);
# each package's ``start()`` passes its kind's name and its config as a dict.
JOB_KINDS: dict[str, JobKind] = {
    k.name: k
    for k in (
        JobKind("train", "train", "agent.training", "agent.training:TrainJob"),
        JobKind("serve", "serve", "agent.serving", "agent.serving.process:ServeJob"),
        JobKind("swarm", "loadtest", "loadtest.runner", "loadtest.runner:LoadTestConfig"),
        JobKind("sweep", "sweep", "tuning", "tuning.sweep:SweepSpec"),
        JobKind("model_sweep", "sweep", "tuning", "tuning.model_sweep:ModelSweepSpec"),
    )
}


def job_kind(name: str) -> JobKind:
    try:
        return JOB_KINDS[name]
    except KeyError:
        raise ValueError(f"unknown job kind {name!r}; expected one of {', '.join(JOB_KINDS)}") from None


def create(
    registry: Registry,
    kind: str,
    config: Mapping[str, object],
    *,
    name: str | None = None,
    parent_id: str | None = None,
) -> str:
    """Record a pending run of ``kind`` holding ``config``; returns its id (nothing runs yet).

    A CLI then runs the job in the foreground (``job_context`` records its pid);
    :func:`launch` runs it as a child process.
    """
    spec = job_kind(kind)
    return registry.create_run(spec.registry_kind, config, name=name, parent_id=parent_id)


def launch(registry: Registry, run_id: str) -> JobHandle:
    """Start the job process of a created run: ``python -m <module> --run-id ID``."""
    run = registry.get_run(run_id)
    # Kinds sharing a registry kind (the two sweeps) share their module too.
    module = next(k.module for k in JOB_KINDS.values() if k.registry_kind == run.kind)
    try:
        return start_job(registry, run_id, python_module_argv(module, "--run-id", run_id))
    except OSError as exc:
        registry.finish_if_active(run_id, State.FAILED, lifecycle.one_line_error(exc))
        raise


def start(registry: Registry, kind: str, config: Mapping[str, object], **options: str | None) -> str:
    """:func:`create` (same ``name``/``parent_id`` options) then :func:`launch`; returns the run id at once."""
    run_id = create(registry, kind, config, **options)
    launch(registry, run_id)
    return run_id


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
    ``TUNESWARM_HOME`` so it writes to the same registry. Started by a process
    that is itself a job (or a CLI running one), the child is tied to it: it gets
    SIGTERM when its parent dies. Started by anything else (the dashboard), it is
    not: jobs outlive a restart of the Streamlit server.
    """
    if not argv:
        raise ValueError("argv must name a program to run")
    log_path = registry.artifacts_dir(run_id) / LOG_FILENAME
    log_path.parent.mkdir(parents=True, exist_ok=True)
    child_env = dict(os.environ)
    child_env.update(env or {})
    child_env["TUNESWARM_HOME"] = str(registry.home)
    child_env.setdefault("PYTHONUNBUFFERED", "1")
    child_env[lifecycle.RUN_ENV] = run_id
    attached = lifecycle.ties_children()
    if attached:
        child_env[lifecycle.PARENT_ENV] = str(os.getpid())
    else:
        child_env.pop(lifecycle.PARENT_ENV, None)
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
            preexec_fn=lifecycle.die_with_parent if attached else None,
        )
    _CHILDREN[run_id] = proc
    # The child records itself too; one that already ended (a quick failure) keeps its outcome.
    with contextlib.suppress(ValueError):
        registry.mark_started(run_id, proc.pid, lifecycle.process_start_time(proc.pid))
    return JobHandle(run_id=run_id, pid=proc.pid, log_path=log_path)


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
    ``failed`` (with its exit code and the last useful line of its log), or
    ``interrupted`` if a signal killed it; a process that vanished while another
    supervisor owned it, or a CLI run's process that is gone, is ``interrupted``.
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
                status, reason = State.COMPLETED, None
            elif code < 0:  # killed by a signal before it could record anything (kill -9, OOM killer)
                status, reason = State.INTERRUPTED, f"process {run.pid} was killed by {_signal_name(-code)}"
            else:
                status, reason = State.FAILED, lifecycle.one_line_error(
                    f"process exited with code {code}", log_tail(registry, run.id)
                )
        else:
            status, reason = State.INTERRUPTED, f"process {run.pid} is gone (killed, or its machine restarted)"
        if registry.finish_if_active(run.id, status, reason):
            changed.append(run.id)
    return changed


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def log_tail(registry: Registry, run_id: str, lines: int = 3) -> str:
    """The last useful lines of a job's log (TensorFlow start-up noise left out), joined by `` | ``."""
    path = registry.artifacts_dir(run_id) / LOG_FILENAME
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return " | ".join(lifecycle.useful_lines(text)[-lines:])


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
    # A group left with only zombies of some other live process is over: that parent (e.g. the
    # dashboard that launched the job, when another process stops it) reaps them only later, and no
    # signal reaches them. Orphaned zombies (parent: init) are reaped at once, so they are waited for.
    return any(_live_member(proc, pid) for proc in psutil.process_iter())


def _live_member(proc: psutil.Process, pgid: int) -> bool:
    try:
        if os.getpgid(proc.pid) != pgid:
            return False
        return proc.status() != psutil.STATUS_ZOMBIE or proc.ppid() == 1
    except (OSError, psutil.Error):
        return False


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
    registry.finish_if_active(run_id, State.STOPPED, "stopped by request")
    return registry.get_run(run_id).status


def wait_job(registry: Registry, run_id: str, timeout_s: float) -> Run:
    """Wait (bounded) until the run leaves the active states; returns the run.

    Inside a job, raises ``lifecycle.JobStopped`` when that job is asked to stop.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        lifecycle.check_stop()  # a job waiting on a child job unwinds when it is asked to stop
        reap(registry)
        run = registry.get_run(run_id)
        if not run.active:
            return run
        if time.monotonic() >= deadline:
            raise TimeoutError(f"run {run_id} still {run.status} after {timeout_s:.0f}s")
        time.sleep(0.1)


class JobNotReady(RuntimeError):
    """A job that ended (or timed out) before it published ``ready_at``; the message says why."""


def wait_ready(registry: Registry, run_id: str, timeout_s: float) -> Run:
    """Wait (bounded) until a service job (an endpoint) has ``ready_at`` in its summary; returns the run.

    Raises :class:`JobNotReady` with the job's one-line error if it ended first,
    or after stopping it if it was not ready in time. Inside a job, a stop
    request raises ``lifecycle.JobStopped`` (the caller stops the service).
    """
    deadline = time.monotonic() + timeout_s
    while True:
        run = registry.get_run(run_id)
        if run.summary.get("ready_at") and run.active:
            return run
        lifecycle.check_stop()
        reap(registry)
        run = registry.get_run(run_id)
        if not run.active:
            reason = run.error or log_tail(registry, run_id) or "no output"
            raise JobNotReady(f"{run.kind} job {run_id} ended before it was ready ({run.status}): {reason}")
        if time.monotonic() >= deadline:
            stop_job(registry, run_id)
            raise JobNotReady(f"{run.kind} job {run_id} not ready after {timeout_s:.0f}s: {log_tail(registry, run_id)}")
        time.sleep(POLL_INTERVAL_S)


def running_jobs(registry: Registry) -> list[Run]:
    """Active runs whose process is alive, after reaping the dead ones."""
    reap(registry)
    return [r for r in registry.list_runs(status=("pending", "running")) if is_alive(r)]
