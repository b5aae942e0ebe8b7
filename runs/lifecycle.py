"""The child side of the job contract: one context manager every job runs inside.

``with job_context(registry, run_id) as job:`` (see runs/README.md)

- marks the run ``running`` with this process's pid and start time, so the reaper
  can tell a live job from a dead one whoever started it (a page or a terminal);
- turns SIGTERM, SIGINT and SIGHUP into one graceful stop: ``job.stopping`` becomes
  true and the registry's stop flag is set (by a watcher thread, never inside the
  signal handler, which may interrupt a registry write), so code that polls
  ``registry.stop_requested(run_id)`` sees a signal exactly like the Stop button;
- records the outcome: ``completed`` (the body returned), ``stopped`` (a stop was
  asked for, or :class:`JobStopped` was raised) or ``failed`` with one line from
  :func:`one_line_error`; whatever the body recorded itself first is kept;
- makes its children die with it: on exit it ends every descendant still alive,
  children it starts through ``runs.jobs`` get ``PR_SET_PDEATHSIG`` (a kill -9 of
  this process sends them SIGTERM), and when it was itself started by a job its
  watcher stops it if that parent disappears;
- backstop: a job that has not finished ``HARD_STOP_S`` after a stop was asked for
  records ``stopped``, kills its descendants and exits.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import psutil

from runs import tracking
from runs.registry import Registry, State

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
WATCH_INTERVAL_S = 0.1
NUDGE_INTERVAL_S = 1.0
HARD_STOP_S = 30.0  # after a stop request: past this, the job is killed (its outcome recorded first)
CHILD_GRACE_S = 5.0  # children left at exit get SIGTERM, then SIGKILL after this
PARENT_ENV = "TUNESWARM_PARENT_PID"  # set by runs.jobs for a job started by another job (or a CLI)
RUN_ENV = "TUNESWARM_RUN_ID"  # every process of a run carries its id (found by scanning /proc)
EXIT_STOPPED = 1
ERROR_LINE_MAX = 300
PR_SET_PDEATHSIG = 1
# Loaded here, not in the forked child: a preexec_fn must not take the loader's lock.
try:
    _LIBC: Any = ctypes.CDLL(None, use_errno=True)
except OSError:
    _LIBC = None
# Start-up chatter that is never the reason a job failed (TensorFlow/absl/XLA log prefixes).
NOISE_PREFIXES = ("I0000", "W0000", "E0000", "WARNING: All log messages before absl", "oneDNN custom operations",
                  "To enable the following instructions", "This TensorFlow binary is optimized")


class JobFailed(Exception):
    """A job's own failure whose message is already the one line to record (no type name added)."""


class JobStopped(BaseException):
    """Raised inside a job to unwind on a stop request (a BaseException so ``except Exception`` keeps out)."""


def useful_lines(text: str) -> list[str]:
    """The lines of a log or message that can explain a failure (no blank lines, no TF start-up noise)."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or _is_noise(line):
            continue
        out.append(line)
    return out


def _is_noise(line: str) -> bool:
    if line.startswith(NOISE_PREFIXES):
        return True
    # absl/glog lines: "I1203 14:05:01.123 ..." style and "2026-... I tensorflow/..." style
    head = line[:1]
    return head in "IW" and len(line) > 5 and line[1:5].isdigit() and " " in line[:25]


def one_line_error(error: BaseException | str, log_text: str = "") -> str:
    """The one-line reason recorded on a failed run: ``Type: first useful line`` (bounded length).

    With ``log_text`` (a job's output) and a bare message, the log's last useful
    line is appended, so "exited with code 1" says why.
    """
    if isinstance(error, JobFailed):
        lines = useful_lines(str(error))
        text = lines[0] if lines else "failed"
    elif isinstance(error, BaseException):
        lines = useful_lines(str(error))
        text = f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
    else:
        lines = useful_lines(error)
        text = lines[0] if lines else "failed"
    tail = useful_lines(log_text)
    if tail and tail[-1] not in text:
        text = f"{text}: {tail[-1]}"
    return text if len(text) <= ERROR_LINE_MAX else text[: ERROR_LINE_MAX - 1] + "…"


def process_start_time(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def die_with_parent() -> None:
    """``preexec_fn`` for a child that must not outlive the process starting it (Linux).

    PR_SET_PDEATHSIG fires when the *thread* that forked the child exits, so jobs
    start their children from their main thread. If the parent died before the
    prctl took effect, the child exits at once.
    """
    parent = os.getppid()
    if _LIBC is not None:
        with contextlib.suppress(AttributeError):
            _LIBC.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    if os.getppid() != parent:
        os._exit(EXIT_STOPPED)


@dataclass
class JobContext:
    """What a job body sees: the stop flag and a way to record its own outcome."""

    registry: Registry
    run_id: str
    signalled: bool = False
    reason: str = "stopped by request"
    stop_since: float | None = None
    # Called by the watcher thread about once a second while a stop is pending, for job bodies that
    # block somewhere the flag is not polled (a server loop: the endpoint signals itself to shut down).
    on_stop: list[Callable[[], None]] = field(default_factory=list)

    @property
    def stopping(self) -> bool:
        """True once a stop was asked for (signal, parent gone, or the registry's flag)."""
        return self.signalled or self.registry.stop_requested(self.run_id)

    def check(self) -> None:
        """Raise :class:`JobStopped` if a stop was asked for (call between units of work)."""
        if self.stopping:
            raise JobStopped(self.reason)

    def ask_stop(self, reason: str) -> None:
        if not self.signalled:
            self.reason = reason
            self.stop_since = time.monotonic()
            self.signalled = True

    def finish(self, status: str, error: str | None = None) -> bool:
        """Record the outcome now (first recorded wins); True if it was recorded."""
        return self.registry.finish_if_active(self.run_id, status, error)


_CURRENT: list[JobContext] = []
_FOREGROUND: list[bool] = []


@contextlib.contextmanager
def foreground() -> Iterator[None]:
    """Run a command from a terminal (or CI) whose children die with it: ``with foreground(): ...``.

    Jobs it starts through ``runs.jobs`` get PDEATHSIG, and outside a job's own
    context SIGTERM and SIGHUP raise KeyboardInterrupt like Ctrl-C does, so the
    command's ``finally`` blocks stop what it started.
    """
    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        previous = {sig: signal.signal(sig, _raise_interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    _FOREGROUND.append(True)
    try:
        yield
    finally:
        _FOREGROUND.pop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def ties_children() -> bool:
    """True when children started now must die with this process (inside a job, or a foreground command)."""
    return bool(_CURRENT or _FOREGROUND)


def current() -> JobContext | None:
    """The job this process is running, if any (children it starts are then tied to it)."""
    return _CURRENT[-1] if _CURRENT else None


def check_stop() -> None:
    """Raise :class:`JobStopped` if this process runs a job that was asked to stop (no-op otherwise)."""
    ctx = current()
    if ctx is not None:
        ctx.check()


@contextlib.contextmanager
def job_context(registry: Registry, run_id: str) -> Iterator[JobContext]:
    """Run a job's body: state, signals, outcome and children handled as described in the module doc."""
    run = registry.get_run(run_id)  # KeyError for an unknown id
    if not run.active:
        raise ValueError(f"run {run_id} is already {run.status}; start a new run (or resume a sweep)")
    ctx = JobContext(registry, run_id)
    registry.mark_started(run_id, os.getpid(), process_start_time(os.getpid()))
    # Only what the job itself starts dies with it (a test or a CLI running the job in-process may
    # have children of its own, e.g. a fixture's endpoint).
    before = _descendant_pids()
    previous = _install_handlers(ctx)
    done = threading.Event()
    watcher = threading.Thread(target=_watch, args=(ctx, done), name=f"job-watch-{run_id}", daemon=True)
    _CURRENT.append(ctx)
    watcher.start()
    try:
        yield ctx
    except JobStopped:
        ctx.finish(State.STOPPED, ctx.reason)
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt) or ctx.signalled:
            ctx.finish(State.STOPPED, ctx.reason)
        else:
            ctx.finish(State.FAILED, one_line_error(exc))
        raise
    else:
        if ctx.stopping:
            ctx.finish(State.STOPPED, ctx.reason)
        else:
            ctx.finish(State.COMPLETED)
    finally:
        done.set()
        watcher.join(timeout=2.0)  # before the handlers go: a late nudge must not meet SIGTERM's default
        _CURRENT.remove(ctx)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        end_descendants(spare=before)
        # With MLFLOW_TRACKING_URI set, the finished run (a sweep with its points) goes to MLflow too.
        tracking.export_if_tracked(registry, run_id)


def _descendant_pids() -> set[int]:
    try:
        return {p.pid for p in psutil.Process().children(recursive=True)}
    except psutil.Error:
        return set()


def _install_handlers(ctx: JobContext) -> dict[int, Any]:
    if threading.current_thread() is not threading.main_thread():
        return {}  # only the main thread may set handlers; the registry flag still works

    def on_signal(signum: int, frame: Any) -> None:
        # A signal is a stop request like the Stop button (SIGINT: Ctrl-C; SIGTERM: CI, docker stop).
        ctx.ask_stop("stopped by request")

    return {sig: signal.signal(sig, on_signal) for sig in STOP_SIGNALS}


def _watch(ctx: JobContext, done: threading.Event) -> None:
    """Hand signals to the registry, notice a vanished parent, and enforce the hard stop."""
    parent = _expected_parent()
    flagged = False
    last_nudge = 0.0
    while not done.wait(WATCH_INTERVAL_S):
        if parent is not None and os.getppid() != parent:
            ctx.ask_stop("stopped: the process that started this job is gone")
        if ctx.signalled and not flagged:
            with contextlib.suppress(Exception):
                ctx.registry.request_stop(ctx.run_id)
                flagged = True
        if ctx.stop_since is None and not flagged:
            with contextlib.suppress(Exception):
                if ctx.registry.stop_requested(ctx.run_id):
                    ctx.stop_since = time.monotonic()
        if ctx.stop_since is not None and ctx.on_stop and time.monotonic() - last_nudge >= NUDGE_INTERVAL_S:
            last_nudge = time.monotonic()
            for callback in ctx.on_stop:
                with contextlib.suppress(Exception):
                    callback()
        if ctx.stop_since is not None and time.monotonic() - ctx.stop_since > HARD_STOP_S:
            with contextlib.suppress(Exception):
                ctx.finish(State.STOPPED, f"{ctx.reason}; did not finish within {HARD_STOP_S:.0f}s, killed")
            end_descendants(grace_s=1.0)
            os._exit(EXIT_STOPPED)


def _expected_parent() -> int | None:
    value = os.environ.get(PARENT_ENV)
    if not value or not value.isdigit():
        return None
    return int(value)


def end_descendants(grace_s: float = CHILD_GRACE_S, *, spare: set[int] = frozenset(),  # type: ignore[assignment]
                    sig: signal.Signals = signal.SIGTERM) -> None:
    """SIGTERM every live descendant of this process (but ``spare``), SIGKILL the ones left after ``grace_s``."""
    try:
        procs = [p for p in psutil.Process().children(recursive=True) if p.pid not in spare]
    except psutil.Error:
        return
    if not procs:
        return
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.send_signal(sig)
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(alive, timeout=2.0)


def exit_code(status: str) -> int:
    """The process exit code for a job's final status: 0 completed, 1 anything else."""
    return 0 if status == State.COMPLETED else EXIT_STOPPED


def run_job(registry: Registry, run_id: str, body: Callable[[JobContext], Any]) -> str:
    """Run ``body`` inside :func:`job_context`; returns the run's final status (errors are recorded, not raised)."""
    with contextlib.suppress(Exception), job_context(registry, run_id) as ctx:
        body(ctx)
    return registry.get_run(run_id).status
