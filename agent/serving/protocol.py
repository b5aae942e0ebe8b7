"""The endpoint's HTTP protocol: uvicorn's httptools protocol with the limits it lacks.

uvicorn's httptools protocol enforces ``timeout_keep_alive`` (idle time between
requests) and ``limit_concurrency``, and nothing else: a connection that never
sends a byte, or sends half a request line and stalls, is held forever; headers
have no size or count limit (``h11_max_incomplete_event_size`` exists for h11
only). This subclass, passed to uvicorn as its ``http`` protocol class, adds:

- a time limit for receiving a whole request, headers and body
  (``receive_timeout_ms``), counted from the connection's start for its first
  request and from the first byte for later ones; past it the request is answered
  408 (or the connection simply closed when a response is already under way);
- a head limit: more than ``max_header_bytes`` of request target + header fields,
  or more than ``max_headers`` header fields, is answered 431 and the connection
  closed; reads that fall inside an unfinished head are counted as they arrive,
  so a client dripping an endless header makes the server hold at most about the
  limit plus two socket reads;
- a connection limit: beyond ``max_connections`` open connections, a new
  connection's request is answered 503 + ``Connection: close``. Unlike uvicorn's
  ``limit_concurrency`` (which refuses every request on every connection once the
  count is reached, so a connection flood stops all traffic), the connections
  already being served keep being served;
- admission before parsing (see ``Admission``): when the batch queue is full, a
  predict request is answered 503 from its head alone, without an ASGI task and
  without reading its body into the app; the connection is then not read again
  until the queue has room (or ``RETRY_AFTER_S`` passed), so a client that
  retries at once cannot keep the event loop answering 503s while the batcher
  waits for it.

- a direct route (see ``DirectRoute``): a complete, small POST to one of the app's
  predict paths is handed to the app's handler from the protocol itself, without
  an ASGI task, scope messages or ``send`` calls, and its answer goes out in one
  write. Anything the handler does not take (an error to answer, a large or
  chunked body, ``Expect: 100-continue``) runs as an ASGI task as before, so every
  answer but the common one is the app's own;

and, optionally (``protocol_class(..., one_write=True)``), one write per response
(``one_write_send``): uvicorn writes a response's status line and headers when the app
sends ``http.response.start`` and its body in a second ``transport.write``, two ``send``
syscalls per response; with ``one_write`` the head is held until the body arrives and,
when that body is complete (``more_body`` false, a ``content-length`` response), both go
out in one write. Streaming, chunked and HEAD responses write the held head first and
then behave exactly as uvicorn's own. It is off in the endpoint: measured side by side
on a quiet core (bench/peers.py), the ceiling handler cost ~9% more CPU per request with
it than without (26.0 against 23.8 us), the Python that holds the head costing more than
the syscall it saves; README, "One write per response".

The per-request additions on the hot path are a few attribute updates and, while
admission is on, one ``call_soon``; the head is measured exactly only when it
spanned reads or came in a read larger than the limit (a small request arrives
in one small read); the timers are one per connection, re-armed lazily.
"""

from __future__ import annotations

import collections
import json
import logging
import resource
import time
from collections.abc import Callable
from types import MethodType
from typing import Any, Protocol

from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol, RequestResponseCycle

from agent.serving.config import ServingConfig

log = logging.getLogger("agent.serving")

RETRY_AFTER_S = 1  # a shed connection is read again at the latest after this long
FD_HEADROOM = 64  # file descriptors kept for the model, logs and the listening socket under RLIMIT_NOFILE


def _raw_response(status: bytes, body: bytes, extra: bytes = b"", *, close: bool) -> bytes:
    return (b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\n" + extra
            + (b"connection: close\r\n" if close else b"")
            + b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


def _error_body(message: str) -> bytes:
    return json.dumps({"error": message}).encode()


class QueuedRows(Protocol):
    """The batch queue as admission sees it (the batcher)."""

    @property
    def queued_rows(self) -> int: ...


class Admission:
    """What the protocol needs to refuse a predict request from its head alone.

    The app enables it once the model is ready, with the batch queue's depth (rows)
    and bound, the raw predict paths and ``on_shed`` (records a shed in the app's
    metrics). The queue counts as full when even a one-row request would not fit,
    so the answer is the same whatever the body holds.

    Connections are parked (not read) while the queue is full: one that was just
    shed, and one that was just answered (its next request would only be shed).
    When rows leave the queue (the batcher calls ``room``), parked connections are
    read again, oldest first, one per free row; each holds a reservation for its
    row until its next request's head arrives, so a reading connection cannot take
    the room promised to a parked one and be shed in its place. Each request let through
    counts one row "in transit" from its head until its ASGI task's first step has
    run (the app reads, parses and queues a body that has arrived without yielding),
    so requests read in the same turn of the loop cannot overfill the queue. A connection parked
    longer than RETRY_AFTER_S is read again anyway (and shed if there is still no room).
    """

    def __init__(self) -> None:
        self.enabled = False
        self.paths: frozenset[bytes] = frozenset()
        self.on_shed: Callable[[float], None] = lambda seconds: None
        self.response = b""
        self.reserved = 0  # rows promised to connections read again, whose requests are not in yet
        self.in_transit = 0  # requests let through whose ASGI task has not had its first step yet
        self._queue: QueuedRows | None = None
        self._capacity = 0
        self._parked: collections.deque[tuple[float, BoundedHttpToolsProtocol]] = collections.deque()
        self._sweep_timer: Any = None

    def enable(self, queue: QueuedRows, capacity_rows: int, paths: frozenset[bytes], message: str,
               on_shed: Callable[[float], None]) -> None:
        self.response = _raw_response(b"503 Service Unavailable", _error_body(message),
                                      b"retry-after: %d\r\n" % RETRY_AFTER_S, close=False)
        self.paths = paths
        self.on_shed = on_shed
        self._queue = queue
        self._capacity = capacity_rows
        self.enabled = True

    def full(self) -> bool:
        assert self._queue is not None
        return self._queue.queued_rows + self.reserved + self.in_transit >= self._capacity

    def arrived(self) -> None:
        """A request let through has had its first step (queued, refused or waiting for its body)."""
        self.in_transit -= 1

    def is_predict(self, url: bytes) -> bool:
        return url.partition(b"?")[0] in self.paths

    def park(self, proto: BoundedHttpToolsProtocol) -> None:
        proto.transport.pause_reading()
        self._parked.append((time.monotonic(), proto))
        if self._sweep_timer is None:
            self._sweep_timer = proto.loop.call_later(RETRY_AFTER_S, self._sweep, proto.loop)

    def _sweep(self, loop: Any) -> None:
        """While connections are parked, look every RETRY_AFTER_S even without traffic: nothing
        parked waits longer than that because the queue drained with no batch to call ``room``."""
        self._sweep_timer = None
        self.room()
        if self._parked:
            self._sweep_timer = loop.call_later(RETRY_AFTER_S, self._sweep, loop)

    def room(self, rows: int = 0) -> None:
        """Rows left the queue (the batcher's ``on_room``; ``rows`` is informative): read parked
        connections again, one per free row (reserved), plus any parked longer than RETRY_AFTER_S."""
        parked = self._parked
        if not parked:
            return
        if self._queue is None:
            return
        free = self._capacity - self._queue.queued_rows - self.reserved - self.in_transit
        stale = time.monotonic() - RETRY_AFTER_S
        while parked and (free > 0 or parked[0][0] < stale):
            _, proto = parked.popleft()
            if proto.transport.is_closing():
                continue
            if free > 0:
                proto.reserved = True
                self.reserved += 1
                free -= 1
            proto.transport.resume_reading()

    def release(self, proto: BoundedHttpToolsProtocol, *, unused: bool = False) -> None:
        """The reservation of ``proto`` ends: its request head arrived (and takes the row),
        or it closed ``unused`` (the row goes to the next parked connection)."""
        proto.reserved = False
        self.reserved -= 1
        if unused:
            self.room()

    @property
    def parked(self) -> int:
        return len(self._parked)


# A reply to a direct request: (token, status, body, extra header lines) -> None; the token is
# what the handler was given, and the body is always JSON with an exact content-length.
Reply = Callable[[Any, int, bytes, bytes], None]


class DirectHandler(Protocol):
    def __call__(self, scope: dict[str, Any], body: bytes, content_type: bytes, reply: Reply, token: Any) -> bool:
        """Take the request (True: ``reply(token, ...)`` will be called exactly once, later or now)
        or leave it (False: nothing was done, and it runs as an ASGI task)."""
        ...


class DirectRoute:
    """Predict requests the protocol hands to the app without an ASGI task.

    An ASGI request costs a task, its coroutine chain (proxy-headers middleware, the
    app, ``receive``), two ``send`` messages and two writes; a batched request's
    own work is smaller than that. For a POST to one of ``paths`` whose body is
    complete, no larger than the protocol's read-pausing mark and announced by a
    ``content-length``, the protocol calls ``handler`` with the body once it has
    arrived; the handler queues the rows and later calls ``reply``, which writes
    the whole response at once. The handler leaves the request (returns False)
    whenever it would answer anything but a prediction (bad input, not ready,
    queue full), and the request then runs through the app as any other.
    The app enables it once its model is ready.
    """

    def __init__(self) -> None:
        self.paths: frozenset[str] = frozenset()
        self.handler: DirectHandler | None = None

    def enable(self, paths: frozenset[str], handler: DirectHandler) -> None:
        self.paths = paths
        self.handler = handler


def _noop() -> None:
    pass


_default_headers: list[Any] = [None, b""]  # uvicorn's default header list (it replaces it each second), as bytes


def _default_header_lines(headers: list[tuple[bytes, bytes]]) -> bytes:
    if headers is not _default_headers[0]:
        _default_headers[1] = b"".join(n + b": " + v + b"\r\n" for n, v in headers)
        _default_headers[0] = headers
    return _default_headers[1]  # type: ignore[no-any-return]


class _Event:
    def set(self) -> None:
        pass


class _Answered:
    """Stands in as the cycle of a request the protocol answered from its head: complete,
    so uvicorn's own callbacks skip the rest of that request (its body) as after any response."""

    response_started = True
    response_complete = True
    more_body = False
    message_event = _Event()


ANSWERED = _Answered()


class _Capture:
    """Stands in for the transport while uvicorn's own code builds a response head."""

    __slots__ = ("data",)

    def __init__(self) -> None:
        self.data = b""

    def write(self, data: bytes) -> None:
        self.data += data


async def one_write_send(cycle: RequestResponseCycle, message: Any) -> None:
    """``cycle.send`` with the response head held back until the body: a complete body goes out
    with it in one ``transport.write`` (one syscall instead of two).

    The head is still built by uvicorn's ``send`` (status line, default headers, header
    checks, keep-alive and framing decisions), written into a ``_Capture``; only the write
    is deferred. Anything but a complete body of a ``content-length`` response to a non-HEAD
    request (a streamed or chunked body, a HEAD answer, a body whose length does not match)
    writes the held head first and goes through uvicorn's ``send`` unchanged, so its errors
    and framing are uvicorn's. If the app ends without a body, uvicorn closes the connection
    as it does after any incomplete response. Bound to each cycle as its ``send`` attribute
    (``BoundedHttpToolsProtocol._start_asgi_task``) rather than by changing its class, which
    would cost every later attribute access on the cycle its fast path.
    """
    held = cycle._held  # type: ignore[attr-defined]
    if held is None:
        if message["type"] == "http.response.start" and not cycle.response_started:
            transport = cycle.transport
            capture = cycle.transport = _Capture()  # type: ignore[assignment]
            try:
                await _uvicorn_send(cycle, message)
            finally:
                cycle.transport = transport
            if capture.data:
                cycle._held = capture.data  # type: ignore[attr-defined]
            return
        await _uvicorn_send(cycle, message)
        return
    if (message["type"] == "http.response.body" and not message.get("more_body", False)
            and cycle.chunked_encoding is False and cycle.scope["method"] != "HEAD"):
        body = message.get("body", b"")
        if len(body) == cycle.expected_content_length:
            if cycle.flow.write_paused and not cycle.disconnected:
                await cycle.flow.drain()
            cycle._held = None  # type: ignore[attr-defined]
            if cycle.disconnected:
                return
            cycle.expected_content_length = 0
            cycle.transport.write(held + body)
            cycle.response_complete = True
            cycle.message_event.set()
            if not cycle.keep_alive:
                cycle.transport.close()
            cycle.on_response()
            return
    cycle._held = None  # type: ignore[attr-defined]
    if not cycle.disconnected:
        cycle.transport.write(held)
    await _uvicorn_send(cycle, message)


_uvicorn_send = RequestResponseCycle.send


_Base = HttpToolsProtocol  # its methods called directly on the hot path: cheaper than super()


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol plus the limits above. :func:`protocol_class` makes one
    with its limits set; uvicorn builds an instance per connection."""

    limits: ServingConfig = ServingConfig()
    admission: Admission | None = None
    direct: DirectRoute | None = None
    max_connections: int = ServingConfig().max_connections  # limits.max_connections, within the open-file limit

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        limits = self.limits
        self._receive_s = limits.receive_timeout_ms / 1000.0
        self._max_head = limits.max_header_bytes
        self._max_headers = limits.max_headers
        self._max_connections = self.max_connections
        self._admission = self.admission
        self._rx_since = 0.0  # loop time the request being received began (the connect, for the first)
        self._rx_timer: Any = None
        self._begun = False  # a request has begun on this connection
        self._in_head = False
        self._head_reads = 0  # bytes of the reads that fell wholly inside the head being received
        self._big_read = False  # the last read that started outside a head was larger than the head limit
        self._over_limit = False
        self.reserved = False  # holds a row of queue room (Admission.room)
        self._direct = self.direct
        self._direct_pending: tuple[RequestResponseCycle, Any, bytes] | None = None  # waits for its body

    # -- connection ------------------------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._over_limit = len(self.connections) > self._max_connections
        self._rx_since = self.loop.time()
        self._rx_timer = self.loop.call_later(self._receive_s, self._check_receive)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.reserved and self._admission is not None:
            self._admission.release(self, unused=True)
        if self._rx_timer is not None:
            self._rx_timer.cancel()
            self._rx_timer = None
        super().connection_lost(exc)

    def _receiving(self) -> bool:
        """A request is being received: nothing yet on a new connection, a head, or a body the
        app is still waiting for."""
        cycle = self.cycle
        return (not self._begun or self._in_head
                or (cycle is not None and cycle.more_body and not cycle.response_complete))

    def _check_receive(self) -> None:
        """The receive timer (one per connection, re-armed lazily): close a connection whose
        request is not complete in time."""
        self._rx_timer = None
        if self.transport.is_closing():
            return
        now = self.loop.time()
        if self._receiving():
            late = now - self._rx_since
            if late >= self._receive_s:
                if self.cycle is None or not self.cycle.response_started:
                    self.transport.write(self._with_defaults(_raw_response(
                        b"408 Request Timeout",
                        _error_body(f"request not received completely within {self._receive_s * 1000:.0f} ms; "
                                    "send the whole request at once"), close=True)))
                self.transport.close()
                return
            self._rx_timer = self.loop.call_later(self._receive_s - late, self._check_receive)
            return
        self._rx_timer = self.loop.call_later(self._receive_s, self._check_receive)

    # -- reading ---------------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            _Base.data_received(self, data)
            if self._in_head:  # the whole read fell inside the head: count it as it comes
                self._head_reads += len(data)
                if self._head_reads > self._max_head and not self.transport.is_closing():
                    self._refuse_head()
            return
        self._big_read = len(data) > self._max_head
        _Base.data_received(self, data)
        if self._in_head and self._big_read and not self.transport.is_closing():
            # A head began in this large read and is not complete: what was parsed of it so far.
            self._head_reads = self._head_size()
            if self._head_reads > self._max_head:
                self._refuse_head()

    def on_message_begin(self) -> None:
        _Base.on_message_begin(self)
        if self._begun:
            self._rx_since = self.loop.time()
        else:
            self._begun = True  # the first request's time counts from the connect
        self._in_head = True
        self._head_reads = 0

    def _head_size(self) -> int:
        return len(self.url) + sum(len(n) + len(v) for n, v in self.headers)

    def _head_over_limits(self) -> str | None:
        """What is wrong with the complete head just parsed, if anything."""
        if len(self.headers) > self._max_headers:
            return f"more than {self._max_headers} header fields"
        # Only a head that spanned reads, or came in a read larger than the limit, can exceed it.
        if (self._head_reads or self._big_read) and self._head_size() > self._max_head:
            return self._head_limit_text
        return None

    @property
    def _head_limit_text(self) -> str:
        return f"request line and headers exceed {self._max_head} bytes"

    def on_headers_complete(self) -> None:
        self._in_head = False
        idle = self.cycle is None or self.cycle.response_complete  # no response under way on this connection
        if len(self.headers) > self._max_headers or self._head_reads or self._big_read:
            what = self._head_over_limits()
            if what is not None:
                if idle:
                    self._answer_from_head(self._head_refusal(what))
                self.cycle = ANSWERED  # type: ignore[assignment]
                self.transport.close()
                return
        if self._over_limit and idle:
            self._answer_from_head(self._with_defaults(_raw_response(
                b"503 Service Unavailable",
                _error_body(f"too many connections (limit {self._max_connections}); retry later"),
                b"retry-after: %d\r\n" % RETRY_AFTER_S, close=True)))
            self.transport.close()
            return
        adm = self._admission
        if self.reserved and adm is not None:
            adm.release(self)  # this request takes the row reserved for it (or is shed like any other)
        if adm is not None and idle and adm.enabled:
            if adm.full() and self.parser.get_method() == b"POST" and adm.is_predict(self.url):
                t0 = time.perf_counter()
                self._answer_from_head(adm.response)
                adm.on_shed(time.perf_counter() - t0)
                if not self.parser.should_keep_alive():
                    self.transport.close()
                else:
                    # As after any response: an idle keep-alive connection closes after timeout_keep_alive.
                    self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive,
                                                                        self.timeout_keep_alive_handler)
                    adm.park(self)  # what arrived of this request is still parsed (and skipped)
                return
            # Any request counts while in transit (a probe or scrape only briefly): cheaper than
            # telling predict requests apart on every request.
            _Base.on_headers_complete(self)  # schedules the request's ASGI task
            adm.in_transit += 1
            self.loop.call_soon(adm.arrived)  # runs after that task's first step
            return
        _Base.on_headers_complete(self)

    # -- the direct route -------------------------------------------------------------------------

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        route = self._direct
        if route is not None and route.handler is not None and cycle.scope["path"] in route.paths \
                and cycle.scope["method"] == "POST" and not cycle.waiting_for_100_continue:
            length = -1
            content_type = b""
            for name, value in cycle.scope["headers"]:
                if name == b"content-length":
                    length = int(value) if value.isdigit() else -1
                elif name == b"content-type":
                    content_type = value
            # Beyond the mark uvicorn stops reading until the app asks for the body: only the app can.
            if 0 <= length <= HIGH_WATER_LIMIT:
                if cycle.more_body:
                    self._direct_pending = (cycle, app, content_type)
                else:
                    self._run_direct(cycle, app, content_type)
                return
        _Base._start_asgi_task(self, cycle, app)

    def on_message_complete(self) -> None:
        _Base.on_message_complete(self)
        pending = self._direct_pending
        if pending is not None and pending[0] is self.cycle:
            self._direct_pending = None
            self._run_direct(*pending)

    def _run_direct(self, cycle: RequestResponseCycle, app: Any, content_type: bytes) -> None:
        handler = self._direct.handler  # type: ignore[union-attr]
        try:
            taken = handler(cycle.scope, bytes(cycle.body), content_type, self._reply, cycle)  # type: ignore[misc]
        except Exception:
            log.exception("the direct predict route failed; serving the request through the app")
            taken = False
        if not taken:
            _Base._start_asgi_task(self, cycle, app)

    def _reply(self, cycle: RequestResponseCycle, status: int, body: bytes, extra: bytes) -> None:
        """Write a direct request's whole response in one write, then finish it as uvicorn's
        ``send`` does (close when not keep-alive, start the next pipelined request)."""
        if cycle.response_complete:
            return
        cycle.response_started = cycle.response_complete = True
        if not cycle.disconnected:
            keep_alive = cycle.keep_alive  # cleared by a graceful shutdown while the request was queued
            cycle.transport.write(
                STATUS_LINE[status] + _default_header_lines(self.server_state.default_headers)
                + b"content-type: application/json\r\n" + extra
                + b"content-length: %d\r\n" % len(body) + (b"\r\n" if keep_alive else b"connection: close\r\n\r\n")
                + body)
            if not keep_alive:
                cycle.transport.close()
        cycle.message_event.set()
        on_response, cycle.on_response = cycle.on_response, _noop  # as uvicorn does once an app returns
        on_response()

    def on_response_complete(self) -> None:
        _Base.on_response_complete(self)
        # A predict connection just answered while the queue is full would only send a
        # request to be shed: read it again when there is room (FIFO with the shed ones).
        adm = self._admission
        if (adm is not None and adm.enabled and adm.full() and not self.pipeline
                and not self.transport.is_closing() and adm.is_predict(self.url)):
            adm.park(self)

    def _answer_from_head(self, response: bytes) -> None:
        """Answer the request being parsed without the app; the rest of it (its body) is skipped."""
        self.cycle = ANSWERED  # type: ignore[assignment]
        self.transport.write(response)

    # -- refusals --------------------------------------------------------------------------------

    def _head_refusal(self, what: str) -> bytes:
        return self._with_defaults(_raw_response(b"431 Request Header Fields Too Large",
                                                 _error_body(f"{what}; send a smaller head"), close=True))

    def _refuse_head(self) -> None:
        if self.cycle is None or self.cycle.response_complete:
            self.transport.write(self._head_refusal(self._head_limit_text))
        self.transport.close()

    def _with_defaults(self, response: bytes) -> bytes:
        """``response`` with the server's default headers (Date) after its status line."""
        head, _, rest = response.partition(b"\r\n")
        defaults = b"".join(n + b": " + v + b"\r\n" for n, v in self.server_state.default_headers)
        return head + b"\r\n" + defaults + rest


def connection_limit(configured: int) -> int:
    """``configured``, lowered to fit the process's open-file limit with FD_HEADROOM to spare:
    past that limit accept() fails for everyone, before any connection could be refused."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return configured
    return max(1, min(configured, soft - FD_HEADROOM))


class OneWriteHttpToolsProtocol(BoundedHttpToolsProtocol):
    """The bounded protocol writing each complete response in one write (``one_write_send``)."""

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        # uvicorn builds the cycle; its task's first step (which reads ``cycle.send``) runs
        # later, so the cycle can still take the one-write ``send`` here.
        cycle._held = None  # type: ignore[attr-defined]
        cycle.send = MethodType(one_write_send, cycle)  # type: ignore[method-assign]
        BoundedHttpToolsProtocol._start_asgi_task(self, cycle, app)


def protocol_class(limits: ServingConfig, admission: Admission | None, *, direct: DirectRoute | None = None,
                   one_write: bool = False) -> type[BoundedHttpToolsProtocol]:
    """The ``http`` protocol class for ``uvicorn.Config`` (which takes a class there): the
    bounded protocol with these limits, this admission and this direct route (writing each
    complete ASGI response in one write with ``one_write``)."""
    base = OneWriteHttpToolsProtocol if one_write else BoundedHttpToolsProtocol
    return type("BoundedHttpToolsProtocol", (base,),
                {"limits": limits, "admission": admission, "direct": direct,
                 "max_connections": connection_limit(limits.max_connections)})
