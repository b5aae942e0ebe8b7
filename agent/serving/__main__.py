"""CLI: serve a model over TensorFlow Serving's REST API.

    python -m agent.serving --model PATH.keras --name digits --port 8600 --runtime tflite \\
        --max-batch-size 64 --batch-timeout-ms 2 --max-enqueued-batches 64 --workers 1

Prints exactly one line ``ready: http://HOST:PORT`` once the model is loaded and
warmed (``--port 0`` picks a free port). SIGTERM/SIGINT stop it gracefully:
no new connections, in-flight requests finish (bounded), exit 0. Exit 2 on bad
usage or a model file that is refused; 1 when serving fails.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import sys
import time
from typing import Any, NoReturn

from agent.serving.config import DEFAULT_CONFIG, RUNTIMES, ServingConfig
from agent.serving.server import READY_PREFIX, ServeOptions, bind_socket, serve_single, serve_workers, url_for

DEFAULT_PORT = 8600
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line, no usage block: the caller (a job log, a test) reads the reason.
        self.exit(2, f"error: {message} (see --help)\n")


def _positive_sizes(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 8,16,32; got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    d = DEFAULT_CONFIG
    p = _Parser(prog="python -m agent.serving", description=__doc__,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="path to the .keras model file to serve (required unless --ceiling)")
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
    g.add_argument("--allowed-batch-sizes", type=_positive_sizes, metavar="N,N,...",
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
    p.add_argument("--run-id", help="registry run to record into (status, URL and pid in its summary)")
    p.add_argument("--log-level", choices=LOG_LEVELS, default="warning", help="server log level (default: warning)")
    # Internal: how a --workers parent starts its workers.
    p.add_argument("--inherit-fd", type=int, help=argparse.SUPPRESS)
    p.add_argument("--worker-index", type=int, default=0, help=argparse.SUPPRESS)
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
    try:
        config = config_from_args(args)
        model_path = _check_model(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.inherit_fd is not None:
        return _worker(args, config, model_path)
    try:
        sock = bind_socket(args.host, args.port)
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    port = sock.getsockname()[1]
    url = url_for(args.host, port)
    opts = ServeOptions(model_path, args.name, args.host, port, config, args.ceiling, args.log_level)
    recorder = _RunRecorder(args.run_id, url, port, args, config)

    def announce(pids: Any = None) -> None:
        recorder.ready(pids)
        print(f"{READY_PREFIX}{url}", flush=True)

    try:
        if config.workers > 1:
            error = serve_workers(opts, sock, announce)
        else:
            error = serve_single(opts, sock, lambda app: announce())
        if error is None and not recorder.was_ready:
            error = "stopped before the model was ready"
    except Exception as exc:  # a fault of the server itself: record it, no traceback to the user
        logging.getLogger("agent.serving").exception("serving failed")
        error = f"{type(exc).__name__}: {exc}"
    finally:
        sock.close()
    recorder.finish(error)
    if error is not None:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


def _check_model(args: argparse.Namespace) -> str | None:
    if args.ceiling:
        return None
    if not args.model:
        raise ValueError("--model PATH.keras is required (or --ceiling for the reference handler)")
    from agent.export import check_model_path

    return str(check_model_path(args.model))  # ModelFormatError is a ValueError


def _worker(args: argparse.Namespace, config: ServingConfig, model_path: str | None) -> int:
    """A worker of a --workers parent: serve on the inherited socket, report ready on stdout."""
    sock = socket.socket(fileno=args.inherit_fd)
    opts = ServeOptions(model_path, args.name, args.host, 0, config.with_changes(workers=1), args.ceiling,
                        args.log_level)
    error = serve_single(opts, sock, lambda app: print(f"{READY_PREFIX}worker {args.worker_index}", flush=True))
    if error is not None:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


class _RunRecorder:
    """Keeps a registry run in step with the server (when --run-id is given)."""

    def __init__(self, run_id: str | None, url: str, port: int, args: argparse.Namespace,
                 config: ServingConfig) -> None:
        self.run_id = run_id
        self.was_ready = False
        self._summary = {"url": url, "port": port, "name": args.name,
                         "runtime": "ceiling" if args.ceiling else config.runtime, "config": config.to_dict()}
        self._registry = None
        if run_id is not None:
            from runs.registry import Registry

            self._registry = Registry()
            self._registry.get_run(run_id)  # KeyError early for a wrong id
            self._registry.set_status(run_id, "running")

    def ready(self, pids: Any = None) -> None:
        self.was_ready = True
        if self._registry is None or self.run_id is None:
            return
        summary = dict(self._summary, pid=os.getpid(), ready_at=time.time())
        if pids:
            summary["worker_pids"] = list(pids)
        self._registry.update_summary(self.run_id, summary)

    def finish(self, error: str | None) -> None:
        if self._registry is None or self.run_id is None:
            return
        if error is None:
            # A shutdown that the supervisor asked for is a stop, not the end of the work.
            if self._registry.stop_requested(self.run_id):
                self._registry.finish_if_active(self.run_id, "stopped", "stopped by request")
            else:
                self._registry.finish_if_active(self.run_id, "completed")
        else:
            self._registry.finish_if_active(self.run_id, "failed", error)
        self._registry.close()


if __name__ == "__main__":
    sys.exit(main())
