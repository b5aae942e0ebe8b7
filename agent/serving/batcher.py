"""The dynamic batcher: many small requests become few model executions.

It lives on the server's event loop and is testable without HTTP
(``await batcher.submit(x)``). Rows, not requests, are the unit:

- a request may carry many rows; a batch takes rows from the head of the queue
  up to ``max_batch_size`` (a large request may span several batches) and each
  request gets back exactly its own rows' outputs;
- a partial batch waits at most ``batch_timeout_ms`` after its oldest row arrived;
- a batch is formed only when one of the ``num_batch_threads`` executors is free,
  so while the model is busy rows pile up and the next batch is bigger (batching
  adapts to load on its own);
- batches are zero-padded up to the next of ``allowed_batch_sizes`` so compiled
  runtimes see a few fixed shapes;
- the queue holds at most ``max_enqueued_batches * max_batch_size`` waiting rows;
  a submit that would exceed it fails at once with ``QueueFullError`` (never waits);
- a request whose deadline passes is failed with ``DeadlineExceededError``; its
  rows still waiting are dropped from the queue;
- a full batch is handed to a free batch thread right where it becomes full
  (in ``enqueue``, or when a batch finishes), not on a later turn of the event
  loop: when the loop is busy (answering many connections), batch formation and
  dispatch do not wait behind it;
- ``full`` says whether even a one-row request would be refused, so a server can
  shed a request before reading its body; ``on_room`` hears when rows leave the queue;
- a request may come as a float32 matrix or as parsed rows (nested lists) that a
  ``RowConverter`` turns into one: a whole batch in one call when every row is
  good, else request by request, so a bad request fails alone with its own error
  and the rest of its batch runs.

Model executions run in a thread pool (TensorFlow and TFLite release the GIL
while computing), so the event loop keeps accepting and parsing requests.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple, Protocol

import numpy as np

from agent.serving.config import ServingConfig

log = logging.getLogger(__name__)

RETRY_AFTER_S = 1  # what a shed client is told to wait before retrying


class QueueFullError(Exception):
    """The queue bound would be exceeded: shed the request (503 + Retry-After)."""

    def __init__(self, message: str, retry_after_s: int = RETRY_AFTER_S) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class DeadlineExceededError(Exception):
    """The request's deadline passed before its outputs were ready (504)."""


class BatcherClosedError(QueueFullError):
    """The batcher is shutting down and takes no new work (503)."""


class BatchObserver(Protocol):
    """Where the batcher reports what it did (the metrics module implements it)."""

    def queue_waits(self, seconds: list[float]) -> None:
        """How long each request that just went into a batch waited (one call per batch)."""
        ...

    def batch_done(self, rows: int, padded_rows: int, compute_s: float) -> None: ...


class RowConverter(Protocol):
    """Turns parsed rows (nested lists) into the model's float32 input."""

    def batch(self, rows: list) -> np.ndarray | None:
        """Many requests' rows at once; None when any of them is bad."""
        ...

    def request(self, rows: list) -> np.ndarray:
        """One request's rows; raises the exception that request is answered with."""
        ...


class _NullObserver:
    def queue_waits(self, seconds: list[float]) -> None:
        pass

    def batch_done(self, rows: int, padded_rows: int, compute_s: float) -> None:
        pass


class _Pending:
    """One submitted request while its rows wait and run."""

    __slots__ = ("dead", "enqueued", "future", "n", "offset", "out", "remaining", "x")

    def __init__(self, x: np.ndarray | list, future: asyncio.Future[np.ndarray], enqueued: float) -> None:
        self.x = x
        self.n = len(x)
        self.future = future
        self.enqueued = enqueued
        self.offset = 0  # rows already taken into batches
        self.remaining = self.n  # rows whose outputs are not back yet
        self.out: np.ndarray | list | None = None  # assembled output when split across batches
        self.dead = False  # failed (deadline or bad rows): drop rows still queued, ignore late outputs


# One request's share of a batch: (request, start, stop, batch_start) = its rows
# start:stop sit at batch_start in the batch. A plain tuple: one is built per
# request per batch, on the hot path.
_Slice = tuple[_Pending, int, int, int]


class _Outcome(NamedTuple):
    """What a batch thread hands back to the event loop."""

    slices: list[_Slice]  # the slices that ran (positions in the batch)
    y: np.ndarray | Sequence | None  # outputs (as ``Batcher.outputs`` made them); None: no valid request
    compute_s: float
    padded: int  # rows computed, padding included
    failed: list[tuple[_Pending, Exception]]  # requests whose rows could not be converted


PredictFn = Callable[[np.ndarray], np.ndarray]


class Batcher:
    """Dynamic batcher over ``predict`` (called from ``num_batch_threads`` threads)."""

    def __init__(
        self,
        predict: PredictFn,
        config: ServingConfig,
        observer: BatchObserver | None = None,
        rows: RowConverter | None = None,
    ) -> None:
        self._predict = predict
        self._rows = rows
        self._max_batch = config.max_batch_size
        self._timeout_s = config.batch_timeout_ms / 1000.0
        self._allowed = config.padding_sizes
        self._capacity = config.queue_capacity_rows
        # 0 batch threads: run each batch on the event loop itself (no thread hand-off).
        self._inline = config.num_batch_threads == 0
        self._threads = max(1, config.num_batch_threads)
        self.observer: BatchObserver = observer or _NullObserver()
        # Turns a batch's outputs into what each request gets a slice of (the endpoint
        # sets its JSON row encoder: one encoding call per batch). None: array views.
        self.outputs: Callable[[np.ndarray], Sequence] | None = None
        self._queue: collections.deque[_Pending] = collections.deque()
        self._queued_rows = 0
        self._in_flight_batches = 0
        # Batch threads take (slices, rows) jobs from here; None tells one to exit.
        self._jobs: queue.SimpleQueue[tuple[list[_Slice], int] | None] = queue.SimpleQueue()
        self._workers: list[threading.Thread] = []
        self._free = self._threads  # batch threads not running a batch
        self._idle: asyncio.Event | None = None  # set when every batch thread is free
        # Called with the rows of queue room that appeared when a batch took rows (admission).
        self.on_room: Callable[[int], None] | None = None
        self._wakeup: asyncio.Event | None = None
        self._dispatcher: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing = False

    # -- state for metrics and tests ------------------------------------------------------------

    @property
    def queued_rows(self) -> int:
        return self._queued_rows

    @property
    def queued_requests(self) -> int:
        return sum(1 for p in self._queue if not p.dead)

    @property
    def in_flight_batches(self) -> int:
        return self._in_flight_batches

    @property
    def full(self) -> bool:
        """Whether a one-row request would be refused now (so any request would be)."""
        return self._queued_rows >= self._capacity

    # -- life cycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        if not self._inline:
            self._workers = [threading.Thread(target=self._work, name=f"batch-{i}", daemon=True)
                             for i in range(self._threads)]
            for t in self._workers:
                t.start()
        self._idle = asyncio.Event()
        self._idle.set()
        self._wakeup = asyncio.Event()
        self._dispatcher = asyncio.create_task(self._dispatch(), name="batcher")

    async def close(self, timeout_s: float = 30.0) -> None:
        """Stop taking work, run what is queued, wait (bounded) for running batches."""
        if self._dispatcher is None:
            return
        self._closing = True
        assert self._wakeup is not None and self._idle is not None
        self._wakeup.set()
        try:
            await asyncio.wait_for(asyncio.shield(self._dispatcher), timeout_s)
            await asyncio.wait_for(self._idle.wait(), timeout_s)  # every batch finished
        except TimeoutError:
            log.warning("batcher: batches still running after %.0fs at shutdown", timeout_s)
            self._dispatcher.cancel()
        for item in self._queue:
            if not item.future.done():
                item.future.set_exception(BatcherClosedError("the server is shutting down"))
        self._queue.clear()
        self._queued_rows = 0
        for _ in self._workers:
            self._jobs.put(None)  # a thread still inside a batch exits once it returns
        self._workers = []
        self._dispatcher = None

    # -- requests -------------------------------------------------------------------------------

    async def submit(self, x: np.ndarray | list, timeout_s: float | None = None) -> np.ndarray:
        """Outputs for the rows of ``x``; raises QueueFullError, DeadlineExceededError or
        (for parsed rows) the RowConverter's error."""
        return await self.enqueue(x, timeout_s)

    def enqueue(self, x: np.ndarray | list, timeout_s: float | None = None) -> asyncio.Future[np.ndarray]:
        """Queue the rows of ``x`` at once and return the future of their outputs.

        Raises QueueFullError right here when the queue bound would be exceeded
        (the caller answers 503 without waiting). The future fails with
        DeadlineExceededError when ``timeout_s`` passes first.
        """
        if self._closing or self._dispatcher is None:
            raise BatcherClosedError("the server is shutting down; not accepting requests")
        if type(x) is list and self._rows is None:
            raise TypeError("parsed rows need a batcher built with a RowConverter")
        n = len(x)
        # A request larger than the whole bound is still taken when the queue is
        # empty, or it could never be served.
        if self._queued_rows and self._queued_rows + n > self._capacity:
            raise QueueFullError(
                f"queue full ({self._queued_rows} rows waiting, bound {self._capacity}); retry later"
            )
        loop = self._loop
        assert loop is not None and self._wakeup is not None
        item = _Pending(x, loop.create_future(), time.perf_counter())
        if timeout_s:
            handle = loop.call_later(timeout_s, self._expire, item, timeout_s)
            item.future.add_done_callback(lambda _f: handle.cancel())
        was_empty = not self._queue
        self._queue.append(item)
        self._queued_rows += n
        if self._queued_rows >= self._max_batch:
            if self._free and not self._inline:
                self._launch()  # a full batch and a free thread: no reason to wait for the dispatcher's turn
            else:
                self._wakeup.set()
        elif was_empty:
            self._wakeup.set()
        return item.future

    def _expire(self, item: _Pending, timeout_s: float) -> None:
        self._fail(item, DeadlineExceededError(
            f"request deadline of {timeout_s * 1000:.0f} ms passed before the model answered"))

    # -- batching -------------------------------------------------------------------------------

    async def _dispatch(self) -> None:
        """Runs partial batches when their timeout passes, and full ones nobody launched yet."""
        assert self._wakeup is not None and self._loop is not None
        loop = self._loop
        while True:
            self._drop_dead_head()
            if not self._queue or not self._free:
                if self._closing and not self._queue:
                    return
                # Nothing to run, or every thread busy: _finish / enqueue set the event.
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            if self._queued_rows < self._max_batch and self._timeout_s > 0 and not self._closing:
                wait = self._queue[0].enqueued + self._timeout_s - time.perf_counter()
                if wait > 0:
                    # Sleep until the partial batch times out or fills up (submit sets the event).
                    self._wakeup.clear()
                    timer = loop.call_later(wait, self._wakeup.set)
                    await self._wakeup.wait()
                    timer.cancel()
                    continue
            if self._inline:
                slices, rows = self._take_batch()
                if not slices:
                    continue
                self._free -= 1
                self._in_flight_batches += 1
                try:
                    outcome = self._execute(slices, rows)
                except Exception as exc:
                    self._finish(slices, None, exc)
                else:
                    self._finish(slices, outcome, None)
                await asyncio.sleep(0)  # let the loop read and parse new requests between batches
                continue
            self._launch()

    def _launch(self) -> None:
        """Take a batch from the queue and hand it to a free batch thread (on the loop, synchronously)."""
        assert self._idle is not None
        slices, rows = self._take_batch()
        if not slices:
            return
        self._free -= 1
        self._idle.clear()
        self._in_flight_batches += 1
        self._jobs.put((slices, rows))

    def _work(self) -> None:
        """A batch thread: run jobs, hand each result back with one call into the loop.

        A plain queue and ``call_soon_threadsafe`` rather than an executor: a
        concurrent future, its lock and an asyncio future chained to it per batch
        are work the event loop's core pays for on every batch.
        """
        loop = self._loop
        assert loop is not None
        while True:
            job = self._jobs.get()
            if job is None:
                return
            slices, rows = job
            try:
                outcome = self._execute(slices, rows)
            except Exception as exc:
                args: tuple[object, ...] = (slices, None, exc)
            else:
                args = (slices, outcome, None)
            try:
                loop.call_soon_threadsafe(self._finish, *args)
            except RuntimeError:
                return  # the loop is closed: the server is gone

    def _drop_dead_head(self) -> None:
        q = self._queue
        while q and q[0].offset >= q[0].n:
            q.popleft()

    def _take_batch(self) -> tuple[list[_Slice], int]:
        now = time.perf_counter()
        slices: list[_Slice] = []
        rows = 0
        max_batch = self._max_batch
        waits: list[float] = []
        q = self._queue
        while q and rows < max_batch:
            item = q[0]
            offset = item.offset
            n = item.n
            if offset >= n:  # dead or fully taken
                q.popleft()
                continue
            if offset == 0:
                waits.append(now - item.enqueued)
            take = n - offset
            if take > max_batch - rows:
                take = max_batch - rows
            slices.append((item, offset, offset + take, rows))
            item.offset = offset + take
            rows += take
            if offset + take >= n:
                q.popleft()
        self._queued_rows -= rows
        if waits:
            self.observer.queue_waits(waits)
        if self.on_room is not None and rows:
            self.on_room(rows)
        return slices, rows

    def _padded_size(self, rows: int) -> int:
        if not self._allowed:
            return rows
        return self._allowed[bisect.bisect_left(self._allowed, rows)]

    def _execute(self, slices: list[_Slice], rows: int) -> _Outcome:
        """Runs in a batch thread: build the input matrix, pad, predict."""
        failed: list[tuple[_Pending, Exception]] = []
        x = self._parsed_matrix(slices, rows)
        if x is None:
            slices, rows, failed = self._convert_each(slices)
            if not slices:
                return _Outcome(slices, None, 0.0, 0, failed)
            x = self._matrix(slices, rows)
        t0 = time.perf_counter()
        y = np.asarray(self._predict(x))
        compute = time.perf_counter() - t0
        outputs = self.outputs
        return _Outcome(slices, y if outputs is None else outputs(y), compute, len(x), failed)

    def _parsed_matrix(self, slices: list[_Slice], rows: int) -> np.ndarray | None:
        """The common batch in one numpy call: every slice is a whole request of parsed rows.

        None when the batch is anything else or any of its rows fail the checks
        (then each request is converted on its own).
        """
        checker = self._rows
        if checker is None:
            return None
        parsed: list = []
        for item, start, stop, _ in slices:
            x = item.x
            if type(x) is not list or start or stop != item.n:
                return None
            parsed += x
        m = checker.batch(parsed)
        if m is None:
            return None
        padded = self._padded_size(rows)
        if padded == rows:
            return m
        x = np.zeros((padded, m.shape[1]), dtype=np.float32)
        x[:rows] = m
        return x

    def _convert_each(self, slices: list[_Slice]) -> tuple[list[_Slice], int, list[tuple[_Pending, Exception]]]:
        """Convert each request's parsed rows alone; one that fails is left out of the batch."""
        kept: list[_Slice] = []
        failed: list[tuple[_Pending, Exception]] = []
        rows = 0
        for item, start, stop, _ in slices:
            if type(item.x) is list:
                assert self._rows is not None  # enqueue takes parsed rows only with a RowConverter
                try:
                    item.x = self._rows.request(item.x)  # the whole request: its later slices reuse it
                except Exception as exc:
                    failed.append((item, exc))
                    continue
            kept.append((item, start, stop, rows))
            rows += stop - start
        return kept, rows, failed

    def _matrix(self, slices: list[_Slice], rows: int) -> np.ndarray:
        """The input matrix from slices of float32 arrays, zero-padded to an allowed size."""
        padded = self._padded_size(rows)
        item, start, stop, _ = slices[0]
        if len(slices) == 1 and padded == rows and start == 0 and stop == item.n:
            return item.x  # one whole request: no copy
        if padded == rows and all(s[1] == 0 and s[2] == s[0].n for s in slices):
            return np.concatenate([s[0].x for s in slices])  # whole requests, no padding: one C call
        x = np.zeros((padded, item.x.shape[1]), dtype=np.float32)
        for it, a, b, at in slices:
            x[at : at + (b - a)] = it.x[a:b]
        return x

    def _fail(self, item: _Pending, error: BaseException) -> None:
        """Fail one request: its rows still queued leave the queue, late outputs are ignored."""
        if item.future.done():
            return
        item.dead = True
        self._queued_rows -= item.n - item.offset
        item.offset = item.n
        item.future.set_exception(error)

    def _finish(self, taken: list[_Slice], outcome: _Outcome | None, exc: BaseException | None) -> None:
        """Back on the event loop: hand each request its rows (or its error, or the batch's)."""
        assert self._idle is not None and self._wakeup is not None
        self._in_flight_batches -= 1
        self._free += 1
        if self._free == self._threads:
            self._idle.set()
        if outcome is not None:
            for item, error in outcome.failed:  # first: their rows still queued must not go into the next batch
                self._fail(item, error)
        # The next full batch goes to the thread before this one's requests are answered, so
        # the model runs while the loop writes responses; anything else is the dispatcher's
        # (a partial batch's timeout, closing).
        if self._queued_rows >= self._max_batch and not self._inline and not self._closing:
            self._launch()
        else:
            self._wakeup.set()
        self._deliver(taken, outcome, exc)

    def _deliver(self, taken: list[_Slice], outcome: _Outcome | None, exc: BaseException | None) -> None:
        if exc is not None:
            log.error("batch of %d request(s) failed: %r", len(taken), exc)
            for s in taken:
                if not s[0].future.done():
                    s[0].future.set_exception(exc)
            return
        assert outcome is not None
        y = outcome.y
        if y is None:
            return
        slices = outcome.slices
        self.observer.batch_done(sum(b - a for _, a, b, _ in slices), outcome.padded, outcome.compute_s)
        for item, start, stop, at in slices:
            future = item.future
            if future.done():
                continue  # deadline passed while it ran
            if start == 0 and stop == item.n:
                future.set_result(y[at : at + stop])  # a view: the request's own rows
                continue
            if item.out is None:
                item.out = [None] * item.n if type(y) is list else np.empty((item.n, *y.shape[1:]), dtype=y.dtype)
            item.out[start:stop] = y[at : at + (stop - start)]
            item.remaining -= stop - start
            if item.remaining == 0:
                future.set_result(item.out)
