"""CLI: serve a model over TensorFlow Serving's REST API.

    python -m agent.serving --model PATH --name digits --port 8600 --runtime tflite \\
        --max-batch-size 64 --batch-timeout-ms 2 --max-enqueued-batches 64 --workers 1

Prints exactly one line ``ready: http://HOST:PORT`` once the model is loaded and
warmed (``--port 0`` picks a free port). Recorded as a ``serve`` run in the
registry. SIGTERM/SIGINT/SIGHUP stop it gracefully: no new connections, in-flight
requests finish (bounded), the run ends ``stopped``, exit 0. Exit 2 on bad usage
or a model that is refused (PATH is a .keras file or a SavedModel directory;
anything else, or a runtime that cannot take the format, is refused; the run ends
``failed``); 1 when serving fails.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from typing import Any, NoReturn

from agent.serving.config import DEFAULT_CONFIG, RUNTIMES, ServingConfig
from agent.serving.process import ServeJob
from agent.serving.server import (
    READY_PREFIX,
    ServeOptions,
    bind_socket,
    bind_socket_waiting,
    serve_single,
    serve_workers,
    url_for,
)
from runs import jobs, lifecycle
from runs.configs import int_list
from runs.registry import Registry, State

DEFAULT_PORT = 8600
EXIT_FAILED, EXIT_USAGE = 1, 2
# A start-up error of these types means the model file itself was refused (safe mode, bad archive).
REFUSED_PREFIXES = ("ModelFormatError:", "ValueError:")
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line, no usage block: the caller (a job log, a test) reads the reason.
        self.exit(2, f"error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    d = DEFAULT_CONFIG
    p = _Parser(prog="python -m agent.serving", description=__doc__,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="the model to serve: a .keras file (loaded in safe mode) or a TensorFlow "
                   "SavedModel directory (its serving_default signature) (required unless --ceiling)")
    p.add_argument("--name", default="model", help="model name in the URL /v1/models/NAME (default: model)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port to bind; 0 picks a free one "
                   f"(default: {DEFAULT_PORT})")
    p.add_argument("--config", metavar="FILE.json", help="serving config JSON (e.g. exported by a tuning sweep); "
                   "flags given explicitly override its values")
    g = p.add_argument_group("serving parameters (defaults: the default batching config)")
    g.add_argument("--runtime", choices=RUNTIMES, help=f"engine that runs the model (default: {d.runtime})")
    g.add_argument("--max-batch-size", type=int, help=f"most rows per model execution (default: {d.max_batch_size})")
    g.add_argument("--batch-timeout-ms", type=float, help="how long a partial batch waits for more rows, ms "
                   f"(default: {d.batch_timeout_ms:g}; 0 runs at once)")
    g.add_argument("--allowed-batch-sizes", type=int_list, metavar="N,N,...",
                   help="pad batches up to these sizes; the last must equal --max-batch-size (default: no padding, "
                   "except xla: powers of two)")
    g.add_argument("--num-batch-threads", type=int, help="model executions in parallel; 0 runs batches on the "
                   "event loop (no threads) "
                   f"(default: {d.num_batch_threads})")
    g.add_argument("--max-enqueued-batches", type=int, help="queue bound in batches; beyond it requests get 503 "
                   f"at once (default: {d.max_enqueued_batches})")
    g.add_argument("--workers", type=int, help=f"server processes sharing the port (default: {d.workers}); "
                   "each has its own batcher and /metrics")
    g.add_argument("--intra-op-threads", type=int, help="threads inside one TF/TFLite op; 0 = library default "
                   f"(default: {d.intra_op_threads})")
    g.add_argument("--inter-op-threads", type=int, help="TF threads across independent ops; 0 = library default "
                   f"(default: {d.inter_op_threads})")
    g.add_argument("--request-timeout-ms", type=float, help="per-request deadline, answered 504; 0 = none "
                   f"(default: {d.request_timeout_ms:g})")
    g.add_argument("--max-body-bytes", type=int, help=f"largest request body, 413 beyond (default: {d.max_body_bytes})")
    g.add_argument("--max-instances", type=int, help=f"most rows per request, 400 beyond (default: {d.max_instances})")
    lim = p.add_argument_group("connection limits (what uvicorn's httptools protocol does not bound itself)")
    lim.add_argument("--receive-timeout-ms", type=float, help="time to receive a whole request, head and body; "
                     f"408 and close beyond it (default: {d.receive_timeout_ms:g})")
    lim.add_argument("--max-header-bytes", type=int, help="largest request line + headers; 431 and close beyond "
                     f"(default: {d.max_header_bytes})")
    lim.add_argument("--max-headers", type=int, help=f"most header fields per request; 431 and close beyond "
                     f"(default: {d.max_headers})")
    lim.add_argument("--max-connections", type=int, help="open connections per server process; requests on "
                     f"connections beyond it get 503 and close (default: {d.max_connections})")
    p.add_argument("--ceiling", action="store_true", help="serve the minimal fixed-answer handler instead of a "
                   "model (the performance reference; no --model needed)")
    p.add_argument("--run-id", help="serve the endpoint recorded in this registry run (started by its start()); "
                   "the other flags are then ignored")
    p.add_argument("--log-level", choices=LOG_LEVELS, default="warning", help="server log level (default: warning)")
    # Internal: how a --workers parent starts its workers.
    p.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)
    p.add_argument("--config-json", help=argparse.SUPPRESS)
    return p


FLAG_FIELDS = ("runtime", "max_batch_size", "batch_timeout_ms", "allowed_batch_sizes", "num_batch_threads",
               "max_enqueued_batches", "workers", "intra_op_threads", "inter_op_threads", "request_timeout_ms",
               "max_body_bytes", "max_instances", "receive_timeout_ms", "max_header_bytes", "max_headers",
               "max_connections")


def config_from_args(args: argparse.Namespace) -> ServingConfig:
    """The config file (or defaults) with explicitly given flags on top."""
    if args.config_json:
        base = ServingConfig.from_dict(json.loads(args.config_json))
    elif args.config:
        base = ServingConfig.from_json_file(args.config)
    else:
        base = DEFAULT_CONFIG
    values = base.to_dict()
    for f in FLAG_FIELDS:
        v = getattr(args, f)
        if v is not None:
            values[f] = v
    return ServingConfig.from_dict(values)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.worker_index is not None:
        try:
            config = config_from_args(args)
            return _worker(args, config, _check_model(args, config.runtime))
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_USAGE
    registry = Registry()
    if args.run_id is not None:
        try:
            job = ServeJob.from_dict(registry.get_run(args.run_id).config)
        except KeyError as exc:
            print(f"error: {exc.args[0]}", file=sys.stderr)
            return EXIT_USAGE
        except ValueError as exc:
            registry.finish_if_active(args.run_id, State.FAILED, lifecycle.one_line_error(exc))
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        run_id = args.run_id
    else:
        try:
            if not args.ceiling and not args.model:
                raise ValueError("--model PATH.keras is required (or --ceiling for the reference handler)")
            # The model file itself is checked inside the job, so a refused one is recorded as a failed run.
            job = ServeJob(None if args.ceiling else args.model, args.name, args.host, args.port, args.ceiling,
                           config_from_args(args), args.log_level)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        # The same run a page's start() records, served here in the foreground.
        run_id = jobs.create(registry, "serve", job.to_dict(), name=job.label)
    return serve_job(registry, run_id, job)


def serve_job(registry: Registry, run_id: str, job: ServeJob) -> int:
    """Serve ``job`` as run ``run_id`` until stopped; returns the exit code.

    0 after a stop (an endpoint has no natural end: it serves until asked to stop),
    2 for a model or address that is refused (the run is ``failed``), 1 for any
    other failure.
    """
    try:
        with lifecycle.job_context(registry, run_id) as ctx:
            # Stops that arrive where uvicorn does not listen (SIGHUP, the registry flag, a vanished
            # parent) become the SIGTERM it shuts down on gracefully.
            ctx.on_stop.append(lambda: os.kill(os.getpid(), signal.SIGTERM))
            _serve(registry, run_id, job, ctx)
    except ValueError as exc:
        print(f"error: {_strip_type(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as exc:
        print(f"error: {lifecycle.one_line_error(exc)}", file=sys.stderr)
        return EXIT_FAILED
    return 0


def _serve(registry: Registry, run_id: str, job: ServeJob, ctx: lifecycle.JobContext) -> None:
    where: dict[str, Any] = {}
    seen: list[str] = []

    def stage(name: str, detail: str | None = None) -> None:
        """Record what the start-up is doing now (``progress["stage"]``, and the stages so far), so a page
        can show it while it waits."""
        seen.append(name)
        registry.set_progress(run_id, {"stage": name, "detail": detail, "stages": list(seen), **where,
                                       "at": time.time()})

    stage("starting")
    model_path = None
    if not job.ceiling:
        from agent.export import check_model_path
        from agent.serving.runtimes import check_runtime_format

        # ModelFormatError is a ValueError: exit 2, as is a runtime that cannot take the format.
        path = check_model_path(job.model_path)
        check_runtime_format(job.serving.runtime, path)
        model_path = str(path)
    try:
        sock = bind_socket_waiting(job.host, job.port, job.port_wait_s,
                                   on_wait=lambda: stage("waiting for the port", f"{job.port}, until the old "
                                                         "endpoint has released it"),
                                   shared=job.serving.workers > 1)
    except OSError as exc:
        raise ValueError(str(exc)) from None
    port = sock.getsockname()[1]
    url = url_for(job.host, port)
    where.update(port=port, url=url)
    opts = ServeOptions(model_path, job.name, job.host, port, job.serving, job.ceiling, job.log_level)
    summary = {"url": url, "port": port, "name": job.name,
               "runtime": "ceiling" if job.ceiling else job.serving.runtime, "config": job.serving.to_dict()}
    ready = {"flag": False}

    def announce(pids: Any = None) -> None:
        ready["flag"] = True
        registry.update_summary(run_id, dict(summary, pid=os.getpid(), ready_at=time.time(),
                                             **({"worker_pids": list(pids)} if pids else {})))
        stage("ready")
        print(f"{READY_PREFIX}{url}", flush=True)

    try:
        if ctx.stopping:
            return
        if job.serving.workers > 1:
            stage("loading TensorFlow and the model", f"in {job.serving.workers} worker processes")
            error = serve_workers(opts, announce)  # sock holds the port while the workers listen on it
        else:
            error = serve_single(opts, sock, lambda app: announce(), on_stage=stage)
    finally:
        sock.close()
    if error is not None:
        if error.startswith(REFUSED_PREFIXES):
            raise ValueError(_strip_type(error))  # the model file was refused at load: bad input, exit 2
        raise lifecycle.JobFailed(error)
    if not ready["flag"] and not ctx.stopping:
        raise lifecycle.JobFailed("the server ended before the model was ready")
    ctx.finish(State.STOPPED, ctx.reason)


def _strip_type(text: str) -> str:
    for prefix in REFUSED_PREFIXES:
        if text.startswith(prefix):
            return text[len(prefix):].strip()
    return text


def _check_model(args: argparse.Namespace, runtime: str) -> str | None:
    if args.ceiling:
        return None
    if not args.model:
        raise ValueError("--model PATH.keras is required (or --ceiling for the reference handler)")
    from agent.export import check_model_path
    from agent.serving.runtimes import check_runtime_format

    path = check_model_path(args.model)  # ModelFormatError is a ValueError
    check_runtime_format(runtime, path)  # so is RuntimeRefusedError
    return str(path)


def _worker(args: argparse.Namespace, config: ServingConfig, model_path: str | None) -> int:
    """A worker of a --workers parent: listen on the parent's port beside the other workers
    (``SO_REUSEPORT``), serve, report ready on stdout."""
    try:
        sock = bind_socket(args.host, args.port, reuse_port=True)
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    opts = ServeOptions(model_path, args.name, args.host, 0, config.with_changes(workers=1), args.ceiling,
                        args.log_level)
    error = serve_single(opts, sock, lambda app: print(f"{READY_PREFIX}worker {args.worker_index}", flush=True))
    if error is not None:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
