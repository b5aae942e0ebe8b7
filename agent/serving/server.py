"""Running the endpoint: socket, uvicorn, worker processes, registry bookkeeping.

The listening socket is bound here rather than by uvicorn so that ``--port 0``
yields a known port before anything prints "ready". With ``--workers N`` each of
the N worker processes (its own uvicorn, batcher and runtime) listens on a socket
of its own bound to that port with ``SO_REUSEPORT``, and the kernel hashes every
new connection to one of them. One listening socket shared by all workers would
hand each connection to whichever worker woke first, and an idle worker wins
nearly every race: connections, and so batches, pile onto one worker. The
parent holds the port meanwhile with a bound socket that does not listen (a
socket that does not listen is given no connections).
"""

from __future__ import annotations

import json
import logging
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from agent.serving.config import ServingConfig
from agent.serving.metrics import SHARED_DIR_ENV
from runs.lifecycle import die_with_parent

log = logging.getLogger("agent.serving")

READY_PREFIX = "ready: "
LISTEN_BACKLOG = 2048
GRACEFUL_SHUTDOWN_S = 20  # in-flight requests get this long after SIGTERM
WORKER_READY_TIMEOUT_S = 300.0
WORKER_STOP_TIMEOUT_S = GRACEFUL_SHUTDOWN_S + 10.0
POLL_S = 0.1
BIND_RETRY_S = 0.1
KEEP_ALIVE_S = 5  # uvicorn's timeout_keep_alive: an idle keep-alive connection closes after this long


@dataclass(frozen=True)
class ServeOptions:
    model_path: str | None  # None with ceiling
    name: str
    host: str
    port: int
    config: ServingConfig
    ceiling: bool = False
    log_level: str = "warning"


def bind_socket(host: str, port: int, *, reuse_port: bool = False, listen: bool = True) -> socket.socket:
    """A TCP socket bound to host:port (port 0 = a free port), listening unless ``listen`` is False.

    ``reuse_port`` sets ``SO_REUSEPORT``: other sockets of this user that set it too
    may bind the same port, and the kernel spreads connections among those that listen.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    if listen:
        sock.listen(LISTEN_BACKLOG)
    return sock


def reserve_shared_port(host: str, port: int) -> socket.socket:
    """Hold host:port for worker processes that each listen on it with ``SO_REUSEPORT``.

    The port is first taken without ``SO_REUSEPORT``, which fails while anything else
    holds it (another endpoint's workers included, which would otherwise share it
    with ours), then held by a bound socket that sets the option and does not listen.
    """
    probe = bind_socket(host, port, listen=False)
    port = probe.getsockname()[1]
    probe.close()
    return bind_socket(host, port, reuse_port=True, listen=False)


def bind_socket_waiting(host: str, port: int, wait_s: float,
                        on_wait: Callable[[], None] | None = None, *, shared: bool = False) -> socket.socket:
    """:func:`bind_socket` (``shared``: :func:`reserve_shared_port`), retrying for up to ``wait_s``
    while the port is still in use.

    A restart that keeps its URL starts the new endpoint while the old one is still
    shutting down (in-flight requests finish first); the new one takes the port as
    soon as the old process lets go of it. ``on_wait`` is called once, when waiting begins.
    """
    deadline = time.monotonic() + max(0.0, wait_s)
    waited = False
    while True:
        try:
            return reserve_shared_port(host, port) if shared else bind_socket(host, port)
        except OSError as exc:
            if port == 0 or "in use" not in str(exc).lower() or time.monotonic() >= deadline:
                if waited:
                    raise OSError(f"port {port} is still taken after {wait_s:.0f} s (the old endpoint did not "
                                  "release it, or another program holds it); restart with a new port") from None
                raise
            if not waited and on_wait is not None:
                on_wait()
            waited = True
            time.sleep(BIND_RETRY_S)


def url_for(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


def build_app(opts: ServeOptions, on_ready: Callable[[Any], None], on_stage: Callable[..., None] | None = None) -> Any:
    from agent.serving.app import create_app, create_ceiling_app

    if opts.ceiling:
        return create_ceiling_app(on_ready=on_ready)
    return create_app(opts.model_path, opts.name, opts.config, on_ready=on_ready, on_stage=on_stage)


def uvicorn_config(app: Any, log_level: str, limits: ServingConfig | None = None,
                   graceful_s: float = GRACEFUL_SHUTDOWN_S) -> Any:
    """The ``uvicorn.Config`` the endpoint runs with (tests serve with it too).

    The protocol is uvicorn's httptools one with the connection limits of ``limits``
    (default: the default config's) and, when the app has them, its admission and
    direct route (agent/serving/protocol.py); ``timeout_keep_alive`` is uvicorn's own.
    """
    import uvicorn

    from agent.serving.protocol import protocol_class

    return uvicorn.Config(
        app,
        loop="uvloop",
        http=protocol_class(limits or ServingConfig(), getattr(app, "admission", None),
                            direct=getattr(app, "direct", None)),
        timeout_keep_alive=KEEP_ALIVE_S,
        lifespan="on",
        access_log=False,
        log_level=log_level,
        server_header=False,
        timeout_graceful_shutdown=graceful_s,
        backlog=LISTEN_BACKLOG,
    )


def run_uvicorn(app: Any, sock: socket.socket, log_level: str, limits: ServingConfig | None = None) -> None:
    """Serve ``app`` on ``sock`` until SIGTERM/SIGINT (graceful: in-flight requests finish)."""
    import uvicorn

    config = uvicorn_config(app, log_level, limits)
    # uvicorn re-raises the signal that stopped it once it has shut down, to hand
    # it to the previous handler; a no-op handler makes that an orderly exit 0.
    previous = {s: signal.signal(s, _ignore_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _ignore_signal(signum: int, frame: Any) -> None:
    pass


def serve_single(opts: ServeOptions, sock: socket.socket, on_ready: Callable[[Any], None],
                 on_stage: Callable[..., None] | None = None) -> str | None:
    """Serve in this process; returns the start-up error (None after a clean shutdown)."""
    app = build_app(opts, on_ready, on_stage)
    try:
        run_uvicorn(app, sock, opts.log_level, opts.config)
    except SystemExit:
        # uvicorn exits with its own code 3 when the app's start-up fails; the caller decides the code.
        if getattr(app, "startup_error", None) is None:
            raise
    return getattr(app, "startup_error", None)


# -- worker processes ------------------------------------------------------------------------------


def worker_argv(opts: ServeOptions, index: int) -> list[str]:
    argv = [sys.executable, "-m", "agent.serving", "--worker-index", str(index),
            "--name", opts.name, "--host", opts.host, "--port", str(opts.port),
            "--config-json", json.dumps(opts.config.to_dict()), "--log-level", opts.log_level]
    if opts.ceiling:
        argv.append("--ceiling")
    else:
        assert opts.model_path is not None
        argv += ["--model", opts.model_path]
    return argv


def serve_workers(opts: ServeOptions, on_ready: Callable[[list[int]], None]) -> str | None:
    """Run ``config.workers`` worker processes on ``opts.port`` and supervise them.

    The caller holds the port with :func:`reserve_shared_port`; each worker listens
    on it with a socket of its own. Returns None after a clean shutdown
    (SIGTERM/SIGINT forwarded, all workers exited 0) or an error message.
    """
    procs: list[subprocess.Popen[bytes]] = []
    stopping = {"flag": False}

    def stop(signum: int, frame: Any) -> None:
        stopping["flag"] = True

    old = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    # One folder the workers publish their metrics into, so a scrape of any of them answers for all.
    shared = tempfile.mkdtemp(prefix="tuneswarm-metrics-")
    env = {**os.environ, SHARED_DIR_ENV: shared}
    try:
        for i in range(opts.config.workers):
            procs.append(subprocess.Popen(worker_argv(opts, i), stdout=subprocess.PIPE, env=env,
                                          preexec_fn=die_with_parent))  # a kill -9 of this parent ends them
        error = _wait_workers_ready(procs, stopping)
        if error is None and not stopping["flag"]:
            on_ready([p.pid for p in procs])
            while not stopping["flag"]:
                dead = [p for p in procs if p.poll() is not None]
                if dead:
                    error = f"worker {dead[0].pid} exited with code {dead[0].returncode}"
                    break
                time.sleep(POLL_S)
        codes = _stop_workers(procs)
        if error is None and any(c != 0 for c in codes):
            error = f"worker exit codes {codes}"
        return error
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        shutil.rmtree(shared, ignore_errors=True)


def _wait_workers_ready(procs: Sequence[subprocess.Popen[bytes]], stopping: dict[str, bool]) -> str | None:
    sel = selectors.DefaultSelector()
    for p in procs:
        assert p.stdout is not None
        sel.register(p.stdout, selectors.EVENT_READ, p)
    pending = set(range(len(procs)))
    buffers: dict[int, bytes] = {}
    deadline = time.monotonic() + WORKER_READY_TIMEOUT_S
    try:
        while pending and not stopping["flag"]:
            if time.monotonic() > deadline:
                return f"workers not ready after {WORKER_READY_TIMEOUT_S:.0f}s"
            for key, _ in sel.select(POLL_S):
                proc = key.data
                idx = procs.index(proc)
                chunk = os.read(key.fd, 4096)
                if not chunk:
                    sel.unregister(key.fileobj)
                    proc.wait()
                    return f"worker {proc.pid} exited with code {proc.returncode} before it was ready"
                buffers[idx] = buffers.get(idx, b"") + chunk
                if READY_PREFIX.encode() in buffers[idx]:
                    pending.discard(idx)
        return None
    finally:
        sel.close()


def _stop_workers(procs: Sequence[subprocess.Popen[bytes]]) -> list[int]:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + WORKER_STOP_TIMEOUT_S
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    return [p.returncode for p in procs]
