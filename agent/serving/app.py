"""The HTTP endpoint: a raw ASGI app speaking TensorFlow Serving's REST API.

A hand-written ASGI app rather than a framework: the handlers are a few lines
each, and CPU per request is what users tune here, so the app adds as little as
possible on top of uvicorn (see ``create_ceiling_app``, the reference it is
measured against). Routes (DESIGN.md section 3):

- ``POST /v1/models/{name}[/versions/{v}]:predict``   predictions
- ``GET  /v1/models/{name}[/versions/{v}]``           model status
- ``GET  /v1/models/{name}[/versions/{v}]/metadata``  signature
- ``GET  /healthz`` (alive) ``GET /readyz`` (model loaded and warmed) ``GET /metrics``
  (also at ``/monitoring/prometheus/metrics``, TF Serving's path)

and beside them the Open Inference Protocol (KServe v2, ``agent.serving.v2``), same
batcher, limits, metrics and errors:

- ``GET  /v2``, ``/v2/health/live``, ``/v2/health/ready``
- ``GET  /v2/models/{name}[/versions/{v}]`` (metadata) and ``.../ready``
- ``POST /v2/models/{name}[/versions/{v}]/infer`` (JSON tensors; binary tensor extension)

A ``:predict`` request that will get a prediction (a complete JSON body of at most
64 KiB that decodes, while the queue has room) does not run as an ASGI task: the
server's protocol hands it to ``direct_predict`` (``DirectRoute`` in
agent/serving/protocol.py) and writes the answer in one piece. Every other request,
and every answer to bad input, goes through the ASGI app below, so both paths answer
with the same bytes (tests/test_serving_direct.py).

Every error is ``{"error": "..."}`` with a 4xx for client mistakes, 503 +
Retry-After when shedding load, 504 past a request deadline; an unexpected fault
in the server is logged and answered 500 with a JSON error, never a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np

from agent.serving.batcher import RETRY_AFTER_S, Batcher, DeadlineExceededError, QueueFullError
from agent.serving.codec import (
    SIGNATURE_NAME,
    OutputEncoder,
    RequestError,
    RowChecker,
    decode_predict,
    encode_error,
    encode_json,
)
from agent.serving.config import ServingConfig
from agent.serving.metrics import SHARE_INTERVAL_S, ServingMetrics
from agent.serving.protocol import Admission, DirectRoute, Reply
from agent.serving.v2 import HEADER_LENGTH, decode_infer, encode_infer, model_metadata
from agent.signature import Signature, TensorSpec

log = logging.getLogger("agent.serving")

MODEL_VERSION = "1"  # one model per endpoint; TF Serving clients may address it as version 1
SHUTDOWN_BATCH_WAIT_S = 30.0
ACCEPTED_CONTENT_TYPES = (
    b"application/json",
    # curl -d (TF Serving's documented examples) sends this type with a JSON body.
    b"application/x-www-form-urlencoded",
)
JSON_CONTENT_TYPE = (b"content-type", b"application/json")
JSON_HEADERS = [JSON_CONTENT_TYPE]
METRICS_CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"
MODEL_PATH_RE = re.compile(
    r"^/v1/models/(?P<name>[^/:]+)"
    r"(?:/versions/(?P<version>[^/:]+)|/labels/(?P<label>[^/:]+))?"
    r"(?P<tail>:[A-Za-z]+|/metadata)?$"
)
V2_MODEL_PATH_RE = re.compile(
    r"^/v2/models/(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+))?(?P<tail>/ready|/infer)?$"
)
METRICS_PATHS = ("/metrics", "/monitoring/prometheus/metrics")  # ours, TF Serving's
# Probes and scrapes are not traffic: counting them would show an idle endpoint as busy.
UNCOUNTED_PATHS = frozenset({"/healthz", "/readyz", *METRICS_PATHS, "/v2/health/live", "/v2/health/ready"})
# TF Serving's other verbs: this server has no classify/regress signature (it answers 400 as TF Serving does).
OTHER_TF_VERBS = frozenset({":classify", ":regress"})
SERVER_NAME = "tuneswarm"
V2_EXTENSIONS = ["binary_tensor_data"]
CLIENT_GONE = 499  # nginx's code for a client that closed the connection before its answer (never sent)
PATHS_HELP = ("/v1/models/{name}[/versions/{v}][:predict|/metadata], /v2/models/{name}[/versions/{v}]"
              "[/ready|/infer], /v2/health/live|ready, /healthz, /readyz or /metrics")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class ServingApp:
    """ASGI app for one model. Build it with :func:`create_app`."""

    def __init__(
        self,
        model_path: str | os.PathLike[str] | None,
        name: str,
        config: ServingConfig,
        runtime: Any = None,
        on_ready: Callable[[ServingApp], None] | None = None,
        on_stage: Callable[..., None] | None = None,
    ) -> None:
        self.model_path = model_path
        self.on_stage = on_stage  # hears the start-up's stages (loading, converting, warming up)
        self.name = name
        self.config = config
        self.runtime = runtime
        self.metrics = ServingMetrics(name)
        self.ready = False
        self.startup_error: str | None = None
        self.n_features = 0
        self.output_dim = 0
        self.output_name = "predictions"
        self.signature: Signature | None = None  # set at start-up, from the runtime
        self.encoder: OutputEncoder | None = None
        self.on_ready = on_ready
        self.batcher: Batcher | None = None
        self._publisher: asyncio.Task[None] | None = None  # --workers N: shares this worker's metrics
        self._timeout_s = config.request_timeout_ms / 1000.0 or None
        self._max_body = config.max_body_bytes
        self._fast_predict = {f"/v1/models/{name}:predict", f"/v1/models/{name}/versions/{MODEL_VERSION}:predict"}
        # Admitted (and shed from the head) exactly like :predict.
        self._infer_paths = {f"/v2/models/{name}/infer", f"/v2/models/{name}/versions/{MODEL_VERSION}/infer"}
        # The server's protocol refuses predict requests from their head while the queue is full,
        # and hands the common one to ``direct_predict`` without an ASGI task.
        self.admission = Admission()
        self.direct = DirectRoute()

    # -- ASGI entry ------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            t0 = time.perf_counter()
            try:
                if scope["path"] in self._fast_predict:  # the hot path skips routing
                    code = await self._predict(scope, receive, send)
                else:
                    code = await self._http(scope, receive, send)
            except Exception:
                log.exception("unexpected error serving %s %s", scope.get("method"), scope.get("path"))
                code = 500
                # The response may have started already or the client be gone.
                with contextlib.suppress(Exception):
                    await respond(send, 500, encode_error("internal server error; see the server log"))
            if scope["path"] not in UNCOUNTED_PATHS:
                self.metrics.request_done(code, time.perf_counter() - t0)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> int:
        path: str = scope["path"]
        if path == "/healthz":
            return await self._get_only(scope, send, lambda: (200, encode_json({"status": "ok"})))
        if path == "/readyz":
            return await self._get_only(scope, send, self._readiness)
        if path in METRICS_PATHS:
            if scope["method"] not in ("GET", "HEAD"):
                return await _error(send, 405, f"{scope['method']} not allowed on {path}; use GET", allow=b"GET")
            await respond(send, 200, self.metrics.exposition(), [(b"content-type", METRICS_CONTENT_TYPE)])
            return 200
        if path.startswith("/v2"):
            return await self._v2(scope, receive, send)
        m = MODEL_PATH_RE.match(path)
        if m is None:
            return await _error(send, 404, f"unknown path {path!r}; expected {PATHS_HELP}")
        if m["name"] != self.name:
            return await _error(send, 404, f"model {m['name']!r} not found; this server serves {self.name!r}")
        if m["label"] is not None:
            return await _error(send, 404, f"version label {m['label']!r} of model {self.name!r} not found; "
                                f"address it as /versions/{MODEL_VERSION} or without a version")
        if m["version"] is not None and m["version"] != MODEL_VERSION:
            return await _error(send, 404, f"version {m['version']!r} of model {self.name!r} not found; "
                                f"available: {MODEL_VERSION}")
        tail = m["tail"]
        if tail == ":predict":
            return await self._predict(scope, receive, send)
        if tail is None:
            return await self._get_only(scope, send, self._status)
        if tail == "/metadata":
            return await self._get_only(scope, send, self._metadata)
        if tail in OTHER_TF_VERBS:
            return await _error(send, 400, f"{tail[1:]} is not supported: model {self.name!r} has only the "
                                f"{SIGNATURE_NAME!r} predict signature (no classify or regress signature); "
                                "use :predict")
        return await _error(send, 404, f"unknown verb {tail!r}; this server answers :predict")

    async def _get_only(self, scope: Scope, send: Send, handler: Callable[[], tuple[int, bytes]]) -> int:
        if scope["method"] not in ("GET", "HEAD"):
            return await _error(send, 405, f"{scope['method']} not allowed on {scope['path']}; use GET", allow=b"GET")
        code, body = handler()
        await respond(send, code, body)
        return code

    # -- handlers --------------------------------------------------------------------------------

    def _readiness(self) -> tuple[int, bytes]:
        if self.ready:
            return 200, encode_json({"status": "ready", "model": self.name, "runtime": self.runtime_name})
        reason = self.startup_error or "model is loading and warming up"
        return 503, encode_error(f"not ready: {reason}")

    @property
    def _shed_message(self) -> str:
        return f"queue full ({self.config.queue_capacity_rows} rows waiting); retry later"

    @property
    def runtime_name(self) -> str:
        return str(getattr(self.runtime, "name", self.config.runtime))

    def _status(self) -> tuple[int, bytes]:
        state = "AVAILABLE" if self.ready else ("END" if self.startup_error else "LOADING")
        status = {"error_code": "OK", "error_message": ""}
        if self.startup_error:
            status = {"error_code": "UNKNOWN", "error_message": self.startup_error}
        return 200, encode_json({"model_version_status": [{"version": MODEL_VERSION, "state": state,
                                                           "status": status}]})

    def _metadata(self) -> tuple[int, bytes]:
        if not self.ready:
            return 503, encode_error("model is loading; metadata is available once /readyz is 200")
        assert self.signature is not None
        return 200, encode_json(self.signature.metadata(self.name, MODEL_VERSION, SIGNATURE_NAME))

    async def _request_body(self, scope: Scope, receive: Receive, send: Send,
                            binary: bool = False) -> bytes | int:
        """The checks every inference request passes before its body is decoded (method, type,
        size, readiness, shedding), then the body; an int is the status already answered.
        ``binary``: a body may carry tensor bytes after its JSON header (v2's extension)."""
        if scope["method"] != "POST":
            return await _error(send, 405, f"{scope['method']} not allowed on {scope['path']}; use POST",
                                allow=b"POST")
        content_type = b""
        length = -1
        for key, value in scope["headers"]:
            if key == b"content-type":
                content_type = value
            elif key == b"content-length":
                length = int(value) if value.isdigit() else -1
        if (content_type and content_type != b"application/json" and not _is_json_type(content_type)
                and not (binary and content_type.split(b";", 1)[0].strip() == b"application/octet-stream")):
            return await _error(send, 415, f"content-type {content_type.decode('latin-1')!r} is not JSON; "
                                "send application/json")
        if length > self._max_body:
            return await _error(send, 413, f"body of {length} bytes exceeds the limit of {self._max_body} bytes")
        batcher = self.batcher
        if not self.ready or batcher is None:
            return await _error(send, 503, "model is loading; retry when /readyz is 200", retry_after=b"1")
        if batcher.full:  # shed before reading the body (the bounded protocol usually did already)
            self.metrics.shed()
            return await _error(send, 503, self._shed_message, retry_after=b"%d" % RETRY_AFTER_S)
        try:
            body = await read_body(receive, self._max_body)
        except ClientDisconnectedError:
            return CLIENT_GONE
        if body is None:
            return await _error(send, 413, f"body exceeds the limit of {self._max_body} bytes")
        return body

    async def _batch(self, send: Send, x: np.ndarray | list) -> list | int:
        """The rows' outputs through the batcher; an int is the status already answered."""
        try:
            return await self.batcher.enqueue(x, self._timeout_s)  # type: ignore[union-attr]
        except (RequestError, QueueFullError, DeadlineExceededError) as exc:
            code, message, retry_after = self._batch_failure(exc)
            return await _error(send, code, message, retry_after=retry_after)

    def _batch_failure(self, exc: Exception) -> tuple[int, str, bytes | None]:
        """How a request whose rows the batcher refused or failed is answered: status, message,
        Retry-After. Anything but the batcher's own errors is a fault of the server (500)."""
        if isinstance(exc, RequestError):
            return exc.status, exc.message, None
        if isinstance(exc, QueueFullError):
            self.metrics.shed()
            return 503, str(exc), str(exc.retry_after_s).encode()
        if isinstance(exc, DeadlineExceededError):
            return 504, str(exc), None
        log.error("unexpected error serving a predict request: %r", exc)
        return 500, "internal server error; see the server log", None

    def direct_predict(self, scope: Scope, body: bytes, content_type: bytes, reply: Reply, token: Any) -> bool:
        """The protocol's direct route (``DirectRoute``) for ``:predict``: queue the rows and
        answer from the batch's callback, without an ASGI task.

        Takes only a request that will get a prediction or the batcher's own answer (504 past
        its deadline, 400 for rows a batch's conversion refuses, 503 while shutting down);
        anything the checks of :meth:`_predict` would answer (type, size, readiness, a full
        queue, a body that does not decode) is left to the ASGI path, which answers it.
        """
        batcher = self.batcher
        if (not self.ready or batcher is None or batcher.full or len(body) > self._max_body
                or (content_type and content_type != b"application/json" and not _is_json_type(content_type))):
            return False
        t0 = time.perf_counter()
        try:
            req = decode_predict(body, self.signature, self.config.max_instances)  # type: ignore[arg-type]
            future = batcher.enqueue(req.x, self._timeout_s)
        except (RequestError, QueueFullError):
            return False
        future.add_done_callback(functools.partial(self._direct_done, req.columnar, t0, reply, token))
        return True

    def _direct_done(self, columnar: bool, t0: float, reply: Reply, token: Any, future: asyncio.Future) -> None:
        try:
            exc = future.exception()
            if exc is None:
                code, body, extra = 200, self.encoder.encode(future.result(), columnar), b""  # type: ignore[union-attr]
            else:
                code, message, retry_after = self._batch_failure(exc)  # type: ignore[arg-type]
                body = encode_error(message)
                extra = b"" if retry_after is None else b"retry-after: " + retry_after + b"\r\n"
        except Exception:
            log.exception("unexpected error answering a predict request")
            code, body, extra = 500, encode_error("internal server error; see the server log"), b""
        reply(token, code, body, extra)
        self.metrics.request_done(code, time.perf_counter() - t0)

    async def _predict(self, scope: Scope, receive: Receive, send: Send) -> int:
        body = await self._request_body(scope, receive, send)
        if type(body) is int:
            return body
        try:
            req = decode_predict(body, self.signature, self.config.max_instances)  # type: ignore[arg-type]
        except RequestError as exc:
            return await _error(send, exc.status, exc.message)
        rows = await self._batch(send, req.x)
        if type(rows) is int:
            return rows
        body = self.encoder.encode(rows, req.columnar)  # type: ignore[union-attr]
        await send({"type": "http.response.start", "status": 200,
                    "headers": [JSON_CONTENT_TYPE, (b"content-length", b"%d" % len(body))]})
        await send({"type": "http.response.body", "body": body})
        return 200

    # -- Open Inference Protocol (KServe v2) -----------------------------------------------------

    async def _v2(self, scope: Scope, receive: Receive, send: Send) -> int:
        path: str = scope["path"]
        if path == "/v2":
            return await self._get_only(scope, send, lambda: (200, encode_json(
                {"name": SERVER_NAME, "version": "1", "extensions": V2_EXTENSIONS})))
        if path == "/v2/health/live":
            return await self._get_only(scope, send, lambda: (200, encode_json({"live": True})))
        if path == "/v2/health/ready":
            return await self._get_only(scope, send, self._v2_ready)
        m = V2_MODEL_PATH_RE.match(path)
        if m is None:
            return await _error(send, 404, f"unknown path {path!r}; expected {PATHS_HELP}")
        if m["name"] != self.name:
            return await _error(send, 404, f"model {m['name']!r} not found; this server serves {self.name!r}")
        if m["version"] is not None and m["version"] != MODEL_VERSION:
            return await _error(send, 404, f"version {m['version']!r} of model {self.name!r} not found; "
                                f"available: {MODEL_VERSION}")
        tail = m["tail"]
        if tail == "/infer":
            return await self._infer(scope, receive, send)
        if tail == "/ready":
            return await self._get_only(scope, send, self._v2_ready)
        return await self._get_only(scope, send, self._v2_metadata)

    def _v2_ready(self) -> tuple[int, bytes]:
        # The protocol answers "not ready" with a 4xx (not v1's 503): clients test for 200.
        if self.ready:
            return 200, encode_json({"ready": True})
        return 400, encode_error(f"not ready: {self.startup_error or 'model is loading and warming up'}")

    def _v2_metadata(self) -> tuple[int, bytes]:
        if not self.ready:
            return 503, encode_error("model is loading; metadata is available once /v2/health/ready is 200")
        assert self.signature is not None
        return 200, encode_json(model_metadata(self.signature, self.name, MODEL_VERSION,
                                               f"{SERVER_NAME}_{self.runtime_name}"))

    async def _infer(self, scope: Scope, receive: Receive, send: Send) -> int:
        body = await self._request_body(scope, receive, send, binary=True)
        if type(body) is int:
            return body
        header_length: int | None = None
        for key, value in scope["headers"]:
            if key == HEADER_LENGTH:
                if not value.isdigit():
                    return await _error(send, 400, f"Inference-Header-Content-Length {value.decode('latin-1')!r} "
                                        "is not a number; expected the JSON header's length in bytes")
                header_length = int(value)
        try:
            req = decode_infer(body, self.signature, self.config.max_instances, header_length)  # type: ignore[arg-type]
        except RequestError as exc:
            return await _error(send, exc.status, exc.message)
        rows = await self._batch(send, req.x)
        if type(rows) is int:
            return rows
        body, json_length = encode_infer(req, rows, self.signature, self.name, MODEL_VERSION)  # type: ignore[arg-type]
        headers = [JSON_CONTENT_TYPE] if json_length is None else [
            (b"content-type", b"application/octet-stream"), (HEADER_LENGTH, b"%d" % json_length)]
        await respond(send, 200, body, headers)
        return 200

    # -- life cycle ------------------------------------------------------------------------------

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    self.startup_error = _one_line(exc)
                    log.error("start-up failed: %s", self.startup_error)
                    await send({"type": "lifespan.startup.failed", "message": self.startup_error})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def startup(self) -> None:
        """Load the model (unless a runtime was given), warm every batch size, then go ready."""
        if self.runtime is None:
            from agent.serving.runtimes import make_runtime

            if self.model_path is None:
                raise ValueError("no model path and no runtime given")
            self.runtime = await asyncio.to_thread(make_runtime, self.config.runtime, self.model_path, self.config,
                                                   self.on_stage)
        self.n_features = int(self.runtime.n_features)
        signature: Signature | None = getattr(self.runtime, "signature", None)
        if signature is not None and self.model_path is not None and len(signature.outputs) == 1:
            from agent.export import load_metadata

            meta = load_metadata(self.model_path)
            if meta is not None:  # a trained bundle records its output's name
                out = signature.outputs[0]
                signature = Signature(signature.inputs, (TensorSpec(meta.output_name, out.shape, out.dtype),))
        single = signature.single_input if signature is not None else None
        rows = RowChecker(single if single is not None else self.n_features, self.config.max_instances)
        batcher = Batcher(self.runtime.predict, self.config, rows=rows)
        await batcher.start()
        self.batcher = batcher
        # Warm-up goes through the batcher so the batch threads build their
        # interpreters / traces before the first real request.
        if self.on_stage is not None:
            sizes = self.config.warmup_batch_sizes
            self.on_stage("warming up", f"{len(sizes)} batch sizes up to {max(sizes, default=1)}")
        for size in self.config.warmup_batch_sizes:
            y = await batcher.submit(np.zeros((size, self.n_features), dtype=np.float32))
            self.output_dim = int(np.prod(y.shape[1:])) if y.ndim > 1 else 1
        if signature is None:  # a runtime given without one: a float vector in, as the warm-up shows out
            signature = Signature.flat(self.n_features, self.output_dim, output_name=self.output_name)
        self.signature = signature
        self.output_name = signature.outputs[0].name if signature.outputs else self.output_name
        encoder = self.encoder = OutputEncoder(signature)
        batcher.observer = self.metrics  # warm-up batches are not traffic
        batcher.outputs = encoder.rows  # requests get their rows' JSON, encoded once per batch
        if self.metrics.shared_dir is not None:
            self._publisher = asyncio.create_task(self._publish_metrics())
        # The model, TensorFlow and the imports are long-lived: move them out of the
        # garbage collector's view so its collections only scan per-request garbage.
        gc.collect()
        gc.freeze()
        self.metrics.watch_queue(lambda: batcher.queued_rows, lambda: batcher.queued_requests,
                                 lambda: batcher.in_flight_batches)
        batcher.on_room = self.admission.room
        self.admission.enable(batcher, self.config.queue_capacity_rows,
                              frozenset(p.encode() for p in self._fast_predict | self._infer_paths),
                              self._shed_message,
                              self.metrics.shed_answered)
        self.direct.enable(frozenset(self._fast_predict), self.direct_predict)
        self.ready = True
        if self.on_ready is not None:
            self.on_ready(self)

    async def shutdown(self) -> None:
        self.ready = False
        if self._publisher is not None:
            self._publisher.cancel()
        if self.batcher is not None:
            await self.batcher.close(SHUTDOWN_BATCH_WAIT_S)

    async def _publish_metrics(self) -> None:
        """A worker of --workers N: keep its figures in the shared folder fresh for the others' scrapes."""
        while True:
            try:
                self.metrics.publish()
            except OSError as exc:  # a full disk must not take the worker down; the scrape says less
                log.warning("could not publish metrics: %s", exc)
            await asyncio.sleep(SHARE_INTERVAL_S)


def create_app(
    model_path: str | os.PathLike[str] | None,
    name: str,
    config: ServingConfig,
    *,
    runtime: Any = None,
    on_ready: Callable[[ServingApp], None] | None = None,
    on_stage: Callable[..., None] | None = None,
) -> ServingApp:
    """The endpoint app. The model is loaded in the ASGI lifespan (not here).

    ``runtime`` (anything with ``name``, ``n_features``, ``predict(x)`` and optionally
    ``signature``; without one it serves a float vector of ``n_features``) replaces
    building one from ``model_path``/``config.runtime``; ``on_ready`` is called
    once the model is warmed and ``/readyz`` answers 200; ``on_stage(stage, detail)``
    as each slow start-up stage begins.
    """
    if not name or "/" in name or ":" in name:
        raise ValueError(f"model name must be non-empty without '/' or ':'; got {name!r}")
    return ServingApp(model_path, name, config, runtime=runtime, on_ready=on_ready, on_stage=on_stage)


# -- the ceiling: same stack, fixed answer ---------------------------------------------------------

CEILING_BODY = encode_json({"predictions": [[0.1] * 10]})


class CeilingApp:
    """The performance reference: reads the request body and answers a fixed
    predict-shaped body on the same server stack, with no model or batching."""

    name = "ceiling"

    def __init__(self, on_ready: Callable[[CeilingApp], None] | None = None) -> None:
        self.ready = False
        self.on_ready = on_ready
        self.runtime_name = "ceiling"

    def answer(self, body: bytes) -> bytes:
        """The response body for a POST (a subclass may do work here; bench/serving.py does)."""
        return CEILING_BODY

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            if scope["method"] == "POST":
                try:
                    body = await read_body(receive, 1 << 30)
                except ClientDisconnectedError:
                    return
                await respond(send, 200, self.answer(body or b""))
            else:
                await respond(send, 200, encode_json({"status": "ok"}))
        elif scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    self.ready = True
                    if self.on_ready is not None:
                        self.on_ready(self)
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return


def create_ceiling_app(on_ready: Callable[[CeilingApp], None] | None = None) -> CeilingApp:
    return CeilingApp(on_ready)


# -- helpers -------------------------------------------------------------------------------------


def _is_json_type(content_type: bytes) -> bool:
    media = content_type.split(b";", 1)[0].strip().lower()
    return media in ACCEPTED_CONTENT_TYPES or media.endswith(b"+json")


class ClientDisconnectedError(Exception):
    """The client closed the connection (or the server closed it: receive time limit) mid-body."""


async def read_body(receive: Receive, limit: int) -> bytes | None:
    """The request body, or None once more than ``limit`` bytes arrived (chunked uploads);
    raises ClientDisconnectedError when the connection closed before the body was complete."""
    message = await receive()
    if message["type"] == "http.disconnect":
        raise ClientDisconnectedError
    body = message.get("body", b"")
    if not message.get("more_body", False):
        return body if len(body) <= limit else None
    chunks = [body]
    size = len(body)
    while message.get("more_body", False):
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnectedError
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


async def respond(send: Send, code: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    """Send a whole response; an explicit length keeps it in one piece (no chunked framing)."""
    hdrs = [*(headers or JSON_HEADERS), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": code, "headers": hdrs})
    await send({"type": "http.response.body", "body": body})


async def _error(send: Send, code: int, message: str, *, allow: bytes | None = None,
                 retry_after: bytes | None = None) -> int:
    headers = list(JSON_HEADERS)
    if allow is not None:
        headers.append((b"allow", allow))
    if retry_after is not None:
        headers.append((b"retry-after", retry_after))
    await respond(send, code, encode_error(message), headers)
    return code


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")
