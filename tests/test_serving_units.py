"""Unit tests for the endpoint's pure parts: config validation, request codec, dynamic batcher."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path

import numpy as np
import orjson
import pytest

from agent.serving.batcher import Batcher, DeadlineExceededError, QueueFullError
from agent.serving.codec import (
    OutputEncoder,
    PredictRequest,
    RequestError,
    RowChecker,
    decode_predict,
    encode_predict,
    json_rows,
)
from agent.serving.config import NO_BATCHING, RUNTIMES, ServingConfig
from agent.signature import Signature, TensorSpec

N = 4  # features in the codec tests


# -- config -------------------------------------------------------------------------------------


def test_config_defaults_round_trip(tmp_path: Path) -> None:
    cfg = ServingConfig(runtime="keras", max_batch_size=16, allowed_batch_sizes=(4, 16))
    assert ServingConfig.from_dict(cfg.to_dict()) == cfg
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(cfg.to_dict()))
    assert ServingConfig.from_json_file(path) == cfg
    assert NO_BATCHING.max_batch_size == 1 and NO_BATCHING.batch_timeout_ms == 0
    # Padding: explicit sizes win; XLA pads to powers of two by itself; others do not pad.
    assert ServingConfig(max_batch_size=8, allowed_batch_sizes=(3, 8)).padding_sizes == (3, 8)
    assert ServingConfig(runtime="xla", max_batch_size=24).padding_sizes == (1, 2, 4, 8, 16, 24)
    assert ServingConfig(runtime="xla", max_batch_size=1).padding_sizes == (1,)
    assert ServingConfig(runtime="tflite", max_batch_size=24).padding_sizes == ()
    assert ServingConfig(runtime="tflite", max_batch_size=24).warmup_batch_sizes == (1, 24)
    assert set(RUNTIMES) == {"keras", "tf-function", "xla", "tflite", "tflite-int8"}


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"runtime": "onnx"}, "runtime must be one of"),
        ({"max_batch_size": 0}, "max_batch_size must be in [1, 8192]"),
        ({"max_batch_size": 2.5}, "max_batch_size must be an integer"),
        ({"batch_timeout_ms": -1}, "batch_timeout_ms must be in [0, 10000]"),
        ({"batch_timeout_ms": float("nan")}, "batch_timeout_ms"),
        ({"max_batch_size": 8, "allowed_batch_sizes": (2, 4)}, "must end with max_batch_size (8)"),
        ({"max_batch_size": 8, "allowed_batch_sizes": (4, 2, 8)}, "strictly increasing"),
        ({"max_batch_size": 8, "allowed_batch_sizes": (4, 16)}, "allowed_batch_sizes entry must be in [1, 8]"),
        ({"num_batch_threads": -1}, "num_batch_threads must be in [0, 64]"),
        ({"max_enqueued_batches": 0}, "max_enqueued_batches"),
        ({"workers": 0}, "workers must be in [1, 32]"),
        ({"intra_op_threads": -1}, "intra_op_threads"),
        ({"request_timeout_ms": -5}, "request_timeout_ms"),
        ({"max_body_bytes": 10}, "max_body_bytes must be in [1024"),
        ({"max_instances": 0}, "max_instances"),
        ({"workers": True}, "workers must be an integer"),
        ({"receive_timeout_ms": 10}, "receive_timeout_ms must be in [100, 600000]"),
        ({"max_header_bytes": 100}, "max_header_bytes must be in [1024"),
        ({"max_headers": 0}, "max_headers must be in [1, 10000]"),
        ({"max_connections": 0}, "max_connections must be in [1, 1000000]"),
    ],
)
def test_config_validation_names_field_and_range(changes: dict, needle: str) -> None:
    with pytest.raises(ValueError) as err:
        ServingConfig(**changes)
    assert needle in str(err.value)


def test_config_from_dict_unknown_keys_and_bad_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown serving config key\(s\) batch_size; expected some of runtime"):
        ServingConfig.from_dict({"batch_size": 3})
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        ServingConfig.from_json_file(bad)
    with pytest.raises(ValueError, match="cannot read"):
        ServingConfig.from_json_file(tmp_path / "missing.json")


# -- codec --------------------------------------------------------------------------------------


def _decode(body: bytes | str, max_instances: int = 10) -> PredictRequest:
    if isinstance(body, str):
        body = body.encode()
    return decode_predict(body, N, max_instances)


def _matrix(req: PredictRequest, max_instances: int = 10) -> np.ndarray:
    """The model input a request becomes: fast-path rows are converted as the batcher would alone."""
    if isinstance(req.x, list):
        return RowChecker(N, max_instances).request(req.x)
    return req.x


def _decode_checked(body: bytes | str, max_instances: int = 10) -> np.ndarray:
    """Decode and convert: raises the RequestError the client is answered with, whether
    decode_predict finds the fault or (for the fast path's parsed rows) RowChecker.request."""
    return _matrix(_decode(body, max_instances), max_instances)


def test_codec_row_and_columnar_forms() -> None:
    rows = [[1, 2, 3, 4], [5.5, 6, 7, 8]]
    expected = np.array(rows, dtype=np.float32)
    for body, columnar, parsed in [
        ({"instances": rows}, False, True),  # the common body: rows handed on unconverted
        ({"instances": [{"features": r} for r in rows]}, False, False),
        ({"inputs": rows}, True, False),
        ({"inputs": {"features": rows}}, True, False),
        ({"signature_name": "serving_default", "instances": rows}, False, False),
    ]:
        req = _decode(orjson.dumps(body))
        assert req.columnar is columnar
        if parsed:
            assert type(req.x) is list and req.x == rows
        else:
            assert isinstance(req.x, np.ndarray)
        x = _matrix(req)
        assert x.dtype == np.float32 and x.flags.c_contiguous
        np.testing.assert_array_equal(x, expected)


BAD_BODIES: list[tuple[str, str | None]] = [
    ("", "empty request body"),
    ("{", "invalid JSON"),
    ('{"instances": [[NaN, 1, 2, 3]]}', "invalid JSON"),
    ('{"instances": [[Infinity, 1, 2, 3]]}', "invalid JSON"),
    ('{"instances": [[1e39, 1, 2, 3]]}', "non-finite value"),
    ("[1, 2]", "request body is a JSON array"),
    ('{"rows": [[1, 2, 3, 4]]}', "missing 'instances' or 'inputs' (keys found: rows)"),
    ('{"instances": [[1,2,3,4]], "inputs": [[1,2,3,4]]}', "both 'instances' and 'inputs'"),
    ('{"instances": []}', "'instances' is empty"),
    ('{"instances": {"a": 1}}', "'instances' is a JSON object"),
    ('{"instances": [[1, 2, 3]]}', "wrong shape in 'instances': got 1x3; expected rows of 4 features"),
    ('{"instances": [1, 2, 3, 4]}', "wrong shape in 'instances': got 4"),
    ('{"instances": [[1, 2, 3, 4], [1, 2]]}', "ragged rows"),
    ('{"instances": [[1, 2, 3, "4"]]}', "strings in 'instances'"),
    ('{"instances": [[1, 2, 3, null]]}', "non-numeric values"),
    ('{"instances": [[true, false, true, true]]}', "booleans"),
    ('{"instances": [{"pixels": [1, 2, 3, 4]}]}', "must have the key 'features'"),
    ('{"inputs": {"pixels": [[1, 2, 3, 4]]}}', "this model has one input named 'features'"),
    ('{"signature_name": "classify", "instances": [[1, 2, 3, 4]]}', "unknown signature_name 'classify'"),
    ('{"instances": [[1, 2, 3, 4]], "x": 1}', None),
]


@pytest.mark.parametrize(("body", "needle"), BAD_BODIES)
def test_codec_bad_inputs_are_400_with_reason(body: str, needle: str | None) -> None:
    if needle is None:  # extra keys are ignored, as TF Serving does
        assert _decode_checked(body).shape == (1, N)
        return
    with pytest.raises(RequestError) as err:
        _decode_checked(body)
    assert err.value.status == 400
    assert needle in err.value.message


def _bad_row_bodies() -> list[str]:
    """The bad bodies that are just ``{"instances": [...rows...]}`` with no booleans (decode_predict
    refuses those itself) and no instance objects: wrong feature count, 1-D, ragged, strings, null,
    1e39. Such parsed rows can reach the batcher, which must fail them alone (batcher tests below)."""
    found = []
    for body, needle in BAD_BODIES:
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            continue
        rows = doc.get("instances") if type(doc) is dict and list(doc) == ["instances"] else None
        if needle is None or type(rows) is not list or not rows or "true" in body or "{" in body[1:]:
            continue
        found.append(body)
    return found


BAD_ROW_BODIES = _bad_row_bodies()


def test_codec_bad_row_bodies_cover_the_fast_path_faults() -> None:
    assert len(BAD_ROW_BODIES) == 6
    fast = 0
    for body in BAD_ROW_BODIES:
        rows = orjson.loads(body)["instances"]
        with pytest.raises(RequestError):
            RowChecker(N, 10).request(rows)
        try:
            req = _decode(body)
        except RequestError:
            continue  # refused by decode_predict itself (null has an "l"; 1-D rows are not lists)
        # Handed on unconverted: the batcher's checks are what refuse it.
        assert type(req.x) is list and req.x == rows and req.columnar is False
        fast += 1
    assert fast == 4  # 1e39, 1x3, ragged, strings


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ('{"instances": [[true, 1.5, 2, 3]]}', "instances"),
        ('{"instances": [[1.5, 2, 3, 4], [1, 2, 3, false]]}', "instances"),
        ('{"instances": [{"features": [true, 1.5, 2, 3]}]}', "instances"),
        ('{"inputs": [[true, 1.5, 2, 3]]}', "inputs"),
        ('{"inputs": {"features": [[false, 1.5, 2, 3]]}}', "inputs"),
    ],
)
def test_codec_mixed_booleans_are_refused(body: str, where: str) -> None:
    # numpy would silently turn booleans mixed with numbers into 1.0/0.0.
    with pytest.raises(RequestError) as err:
        _decode(body)
    assert err.value.status == 400
    assert err.value.message == f"booleans in '{where}'; expected numbers only"


def test_codec_too_many_instances() -> None:
    body = orjson.dumps({"instances": [[0, 0, 0, 0]] * 11})
    with pytest.raises(RequestError, match=r"too many instances in one request \(11\); the limit is 10"):
        _decode(body)


def test_codec_encode() -> None:
    y = np.array([[0.25, 0.75]], dtype=np.float32)
    assert orjson.loads(encode_predict(json_rows(y), columnar=False)) == {"predictions": [[0.25, 0.75]]}
    assert orjson.loads(encode_predict(json_rows(y), columnar=True)) == {"outputs": [[0.25, 0.75]]}


def _dumps(row: np.ndarray | np.floating) -> bytes:
    """One output row encoded alone, as a request's JSON would hold it."""
    if isinstance(row, np.ndarray):
        row = np.ascontiguousarray(row)
    return orjson.dumps(row, option=orjson.OPT_SERIALIZE_NUMPY)


@pytest.mark.parametrize(
    "y",
    [
        np.array([[0.1, -1e-7, 2.5], [3.4e38, 1.5, -0.0], [7, 8, 9]], dtype=np.float32),  # n x k
        np.array([[0.25], [-1e-7], [3.4e38]], dtype=np.float32),  # n x 1
        np.array([0.25, -1e-7, 3.4e38, 5], dtype=np.float32),  # 1-D: one number per row
        np.array([[1.5]], dtype=np.float32),  # one row, one column
        np.arange(12, dtype=np.float32).reshape(3, 4).T,  # not C-contiguous
        np.zeros((0, 3), dtype=np.float32),  # no rows
        np.zeros((2, 0), dtype=np.float32),  # rows without outputs
    ],
    ids=["nxk", "nx1", "1d", "1x1", "transposed", "0xk", "nx0"],
)
def test_codec_json_rows_edge_cases_round_trip(y: np.ndarray) -> None:
    rows = json_rows(y)
    assert type(rows) is list and len(rows) == len(y)
    for text, row in zip(rows, y, strict=True):
        assert type(text) is bytes
        assert text == _dumps(row)  # the same text as encoding the row alone
        np.testing.assert_allclose(np.asarray(orjson.loads(text), dtype=np.float32), row)
    for columnar, key in [(False, "predictions"), (True, "outputs")]:
        doc = orjson.loads(encode_predict(rows, columnar))
        assert list(doc) == [key]
        assert len(doc[key]) == len(y)
        np.testing.assert_allclose(np.asarray(doc[key], dtype=np.float32).reshape(y.shape), y)
        if y.ndim == 1:
            assert all(type(v) is float for v in doc[key])  # scalars, not one-element lists


# -- batcher ------------------------------------------------------------------------------------


class RecordingModel:
    """y = x @ W (so every output row can be checked); records the batch shapes it saw."""

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.w = np.arange(N * 3, dtype=np.float32).reshape(N, 3)
        self.shapes: list[int] = []
        self.inputs: list[np.ndarray] = []  # copies of the batches it ran
        self.gate = gate
        self.lock = threading.Lock()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self.gate is not None:
            assert self.gate.wait(10)
        with self.lock:
            self.shapes.append(len(x))
            self.inputs.append(np.array(x))
        return x @ self.w


class Recorder:
    def __init__(self) -> None:
        self.waits: list[float] = []
        self.wait_calls = 0
        self.batches: list[tuple[int, int]] = []

    def queue_waits(self, seconds: list[float]) -> None:
        assert seconds and all(s >= 0 for s in seconds)  # only called for a batch with new requests
        self.wait_calls += 1
        self.waits += seconds

    def batch_done(self, rows: int, padded_rows: int, compute_s: float) -> None:
        self.batches.append((rows, padded_rows))


def _rows(n: int, start: int = 0) -> np.ndarray:
    return np.arange(start, start + n * N, dtype=np.float32).reshape(n, N)


def test_batcher_splits_results_back_per_request() -> None:
    model = RecordingModel()
    rec = Recorder()
    cfg = ServingConfig(max_batch_size=8, batch_timeout_ms=50, allowed_batch_sizes=(4, 8))

    async def main() -> list[np.ndarray]:
        b = Batcher(model, cfg, rec)
        await b.start()
        try:
            sizes = [1, 3, 5, 2, 12]  # 23 rows; the 12-row request spans batches
            xs = [_rows(n, 100 * i) for i, n in enumerate(sizes)]
            outs = await asyncio.gather(*(b.submit(x) for x in xs))
            for x, y in zip(xs, outs, strict=True):
                np.testing.assert_allclose(y, x @ model.w)
            return outs
        finally:
            await b.close()

    asyncio.run(main())
    assert sum(r for r, _ in rec.batches) == 23
    assert all(r <= 8 for r, _ in rec.batches)
    assert all(p in (4, 8) and p >= r for r, p in rec.batches)  # padded to allowed sizes
    assert set(model.shapes) <= {4, 8}
    assert len(rec.waits) == 5  # one queue wait per request
    assert rec.wait_calls <= len(rec.batches)  # reported once per batch, not once per request
    assert len(rec.batches) < 5  # rows of several requests shared batches


def test_batcher_threads_run_whole_requests_together_and_exit_on_close() -> None:
    model = RecordingModel()
    cfg = ServingConfig(max_batch_size=16, batch_timeout_ms=50, num_batch_threads=2)
    seen_threads: set[str] = set()

    def predict(x: np.ndarray) -> np.ndarray:
        seen_threads.add(threading.current_thread().name)
        return model(x)

    async def main() -> None:
        b = Batcher(predict, cfg, None)
        await b.start()
        try:
            xs = [_rows(n, 100 * i) for i, n in enumerate([1, 2, 3, 4, 6])]  # 16 rows, no padding
            outs = await asyncio.gather(*(b.submit(x) for x in xs))
            for x, y in zip(xs, outs, strict=True):
                np.testing.assert_allclose(y, x @ model.w)
        finally:
            await b.close()

    # close() tells the threads to exit without joining them: an earlier test's may still be leaving.
    assert _batch_threads_gone(), "batch threads of an earlier test outlived its close()"
    asyncio.run(main())
    assert model.shapes == [16]  # five whole requests assembled into one batch
    assert seen_threads and all(name.startswith("batch-") for name in seen_threads)
    assert _batch_threads_gone(), "batch threads outlived close()"


def _batch_threads_gone(timeout_s: float = 5.0) -> bool:
    """True once no batch thread is alive (waiting at most timeout_s for them to exit)."""
    deadline = time.monotonic() + timeout_s
    while any(t.name.startswith("batch-") for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.01)
    return not any(t.name.startswith("batch-") for t in threading.enumerate())


def test_batcher_inline_mode_runs_batches_on_the_loop() -> None:
    model = RecordingModel()
    cfg = ServingConfig(max_batch_size=4, batch_timeout_ms=5, num_batch_threads=0)
    seen_threads = set()

    def predict(x: np.ndarray) -> np.ndarray:
        seen_threads.add(threading.get_ident())
        return model(x)

    async def main() -> None:
        b = Batcher(predict, cfg, None)
        await b.start()
        try:
            xs = [_rows(n, 10 * i) for i, n in enumerate([1, 2, 3, 6])]
            outs = await asyncio.gather(*(b.submit(x) for x in xs))
            for x, y in zip(xs, outs, strict=True):
                np.testing.assert_allclose(y, x @ model.w)
        finally:
            await b.close()

    asyncio.run(main())
    assert seen_threads == {threading.get_ident()}  # no batch thread: ran on the loop's thread
    assert sum(model.shapes) == 12 and max(model.shapes) <= 4


def test_batcher_no_batching_baseline() -> None:
    model = RecordingModel()

    async def main() -> None:
        b = Batcher(model, NO_BATCHING, None)
        await b.start()
        try:
            xs = [_rows(1, i) for i in range(6)]
            outs = await asyncio.gather(*(b.submit(x) for x in xs))
            for x, y in zip(xs, outs, strict=True):
                np.testing.assert_allclose(y, x @ model.w)
            # A multi-row request still works: one row per execution.
            y = await b.submit(_rows(3))
            np.testing.assert_allclose(y, _rows(3) @ model.w)
        finally:
            await b.close()

    asyncio.run(main())
    assert model.shapes == [1] * 9


def test_batcher_sheds_at_once_when_queue_full_and_serves_the_rest() -> None:
    gate = threading.Event()
    model = RecordingModel(gate)
    cfg = ServingConfig(max_batch_size=1, batch_timeout_ms=0, max_enqueued_batches=3)

    async def main() -> tuple[list, int]:
        b = Batcher(model, cfg, None)
        await b.start()
        try:
            first = asyncio.ensure_future(b.submit(_rows(1)))  # taken into the (blocked) batch thread
            while b.in_flight_batches == 0:
                await asyncio.sleep(0.001)
            tasks = [asyncio.ensure_future(b.submit(_rows(1, i))) for i in range(5)]
            await asyncio.sleep(0.05)
            shed = [t for t in tasks if t.done()]
            for t in shed:
                assert isinstance(t.exception(), QueueFullError)
            queued = b.queued_rows
            gate.set()
            results = await asyncio.gather(first, *tasks, return_exceptions=True)
            return results, queued
        finally:
            gate.set()
            await b.close()

    results, queued = asyncio.run(main())
    assert queued == 3
    assert sum(isinstance(r, QueueFullError) for r in results) == 2
    assert sum(isinstance(r, np.ndarray) for r in results) == 4


def test_batcher_deadline_fails_waiting_request() -> None:
    gate = threading.Event()
    model = RecordingModel(gate)
    cfg = ServingConfig(max_batch_size=1, batch_timeout_ms=0)

    async def main() -> list:
        b = Batcher(model, cfg, None)
        await b.start()
        try:
            first = asyncio.ensure_future(b.submit(_rows(1)))
            late = asyncio.ensure_future(b.submit(_rows(1), timeout_s=0.05))
            done = await asyncio.gather(late, return_exceptions=True)
            assert b.queued_rows == 0  # the expired request left the queue
            gate.set()
            return [*done, await first]
        finally:
            gate.set()
            await b.close()

    results = asyncio.run(main())
    assert isinstance(results[0], DeadlineExceededError)
    assert isinstance(results[1], np.ndarray)
    assert model.shapes == [1]  # the expired row never ran


def test_batcher_model_error_fails_only_that_batch() -> None:
    calls = []

    def flaky(x: np.ndarray) -> np.ndarray:
        calls.append(len(x))
        if len(calls) == 1:
            raise RuntimeError("boom")
        return x

    async def main() -> list:
        b = Batcher(flaky, NO_BATCHING, None)
        await b.start()
        try:
            r1 = await asyncio.gather(b.submit(_rows(1)), return_exceptions=True)
            r2 = await b.submit(_rows(1))
            return [*r1, r2]
        finally:
            await b.close()

    r = asyncio.run(main())
    assert isinstance(r[0], RuntimeError)
    np.testing.assert_array_equal(r[1], _rows(1))


# -- batcher with parsed rows (the fast path's nested lists) -----------------------------------------


class CountingChecker(RowChecker):
    """A RowChecker that counts how it is used (called from the batch threads)."""

    def __init__(self, n_features: int, max_instances: int) -> None:
        super().__init__(n_features, max_instances)
        self.batch_calls: list[int] = []  # rows per batch() call
        self.request_calls: list[int] = []  # rows per request() call
        self.lock = threading.Lock()

    def batch(self, rows: list) -> np.ndarray | None:
        with self.lock:
            self.batch_calls.append(len(rows))
        return super().batch(rows)

    def request(self, rows: list) -> np.ndarray:
        with self.lock:
            self.request_calls.append(len(rows))
        return super().request(rows)


def _parsed(n: int, start: int = 0) -> list:
    """n rows as orjson would parse them: nested lists of ints and floats."""
    return [[int(v) if i % 2 else float(v) for i, v in enumerate(row)] for row in _rows(n, start).tolist()]


async def _gather(*futures: asyncio.Future, return_exceptions: bool = False) -> list:
    """asyncio.gather with a generous bound: a future the batcher forgets fails the test, not hangs it."""
    return await asyncio.wait_for(asyncio.gather(*futures, return_exceptions=return_exceptions), 10)


def _expected(rows: list | np.ndarray, model: RecordingModel) -> np.ndarray:
    return np.asarray(rows, dtype=np.float32) @ model.w


@pytest.mark.parametrize("body", BAD_ROW_BODIES)
def test_batcher_bad_parsed_request_fails_alone_and_the_batch_runs(body: str) -> None:
    bad = orjson.loads(body)["instances"]
    with pytest.raises(RequestError) as alone:
        RowChecker(N, 10).request(bad)
    model = RecordingModel()
    checker = CountingChecker(N, 10)
    cfg = ServingConfig(max_batch_size=8, batch_timeout_ms=50)
    goods: list[list | np.ndarray] = [_parsed(1, 0), _parsed(2, 100), _rows(1, 200)]  # parsed, parsed, array
    assert sum(map(len, goods)) + len(bad) <= 8  # all of them fit one batch

    async def main() -> list:
        b = Batcher(model, cfg, None, rows=checker)
        await b.start()
        try:
            # Enqueued before the dispatcher runs: they share one batch, the bad one in the middle.
            futures = [b.enqueue(goods[0]), b.enqueue(bad), b.enqueue(goods[1]), b.enqueue(goods[2])]
            results = await _gather(*futures, return_exceptions=True)
            assert b.queued_rows == 0
            return results
        finally:
            await b.close()

    results = asyncio.run(main())
    error = results.pop(1)
    assert type(error) is RequestError
    assert (error.status, error.message) == (alone.value.status, alone.value.message)
    for good, y in zip(goods, results, strict=True):
        assert isinstance(y, np.ndarray), y
        np.testing.assert_array_equal(y, _expected(good, model))
    # One execution, of the good rows only, in request order.
    assert model.shapes == [4]
    np.testing.assert_array_equal(model.inputs[0], np.concatenate([np.asarray(g, dtype=np.float32) for g in goods]))
    # The batch had an array in it, so each parsed request was converted alone.
    assert checker.batch_calls == []
    assert sorted(checker.request_calls) == sorted([1, len(bad), 2])


@pytest.mark.parametrize("body", BAD_ROW_BODIES)
def test_batcher_bad_parsed_request_among_parsed_ones_fails_alone(body: str) -> None:
    # Only parsed requests: the whole-batch conversion is tried, refuses, and each is converted alone.
    bad = orjson.loads(body)["instances"]
    with pytest.raises(RequestError) as alone:
        RowChecker(N, 10).request(bad)
    model = RecordingModel()
    checker = CountingChecker(N, 10)
    cfg = ServingConfig(max_batch_size=8, batch_timeout_ms=50, allowed_batch_sizes=(4, 8))
    goods = [_parsed(2, 0), _parsed(1, 100)]

    async def main() -> list:
        b = Batcher(model, cfg, None, rows=checker)
        await b.start()
        try:
            futures = [b.enqueue(bad), b.enqueue(goods[0]), b.enqueue(goods[1])]
            return await _gather(*futures, return_exceptions=True)
        finally:
            await b.close()

    error, *ys = asyncio.run(main())
    assert type(error) is RequestError
    assert (error.status, error.message) == (alone.value.status, alone.value.message)
    for good, y in zip(goods, ys, strict=True):
        np.testing.assert_array_equal(y, _expected(good, model))
    assert model.shapes == [4]  # 3 good rows padded to 4
    np.testing.assert_array_equal(model.inputs[0][:3], np.asarray(goods[0] + goods[1], dtype=np.float32))
    assert not model.inputs[0][3:].any()
    assert checker.batch_calls == [len(bad) + 3]
    assert sorted(checker.request_calls) == sorted([len(bad), 2, 1])


def test_batcher_bad_parsed_request_spanning_batches_drops_its_queued_rows() -> None:
    model = RecordingModel()
    rec = Recorder()
    checker = CountingChecker(N, 10)
    cfg = ServingConfig(max_batch_size=4, batch_timeout_ms=50)
    bad = [*_parsed(5), [1, 2, 3, "4"]]  # 6 rows: its first 4 fill the first batch
    good = _parsed(3, 100)

    async def main() -> list:
        b = Batcher(model, cfg, rec, rows=checker)
        await b.start()
        try:
            results = await _gather(b.enqueue(bad), b.enqueue(good), return_exceptions=True)
            assert b.queued_rows == 0 and b.queued_requests == 0
            return results
        finally:
            await b.close()

    error, y = asyncio.run(main())
    assert isinstance(error, RequestError) and error.message == "strings in 'instances'; expected numbers only"
    np.testing.assert_array_equal(y, _expected(good, model))
    assert model.shapes == [3]  # the bad request's rows never ran, not even its last two
    assert rec.batches == [(3, 3)]


def test_batcher_converts_all_good_parsed_batch_in_one_call() -> None:
    model = RecordingModel()
    checker = CountingChecker(N, 10)
    cfg = ServingConfig(max_batch_size=8, batch_timeout_ms=50, allowed_batch_sizes=(4, 8))
    xs = [_parsed(1, 0), _parsed(3, 100), _parsed(2, 200)]  # 6 rows, padded to 8

    async def main() -> list:
        b = Batcher(model, cfg, None, rows=checker)
        await b.start()
        try:
            return await _gather(*[b.enqueue(x) for x in xs])
        finally:
            await b.close()

    outs = asyncio.run(main())
    for x, y in zip(xs, outs, strict=True):
        assert isinstance(y, np.ndarray) and y.shape == (len(x), 3)
        np.testing.assert_array_equal(y, _expected(x, model))
    assert checker.batch_calls == [6]  # one conversion for the whole batch
    assert checker.request_calls == []
    assert model.shapes == [8]
    np.testing.assert_array_equal(model.inputs[0][:6], np.asarray(xs[0] + xs[1] + xs[2], dtype=np.float32))
    assert model.inputs[0].dtype == np.float32 and not model.inputs[0][6:].any()


def test_batcher_parsed_request_larger_than_a_batch() -> None:
    model = RecordingModel()
    rec = Recorder()
    checker = CountingChecker(N, 10)
    cfg = ServingConfig(max_batch_size=4, batch_timeout_ms=50)
    big, small = _parsed(10, 0), _parsed(3, 500)  # batches: big 0:4 | big 4:8 | big 8:10 + small 0:2 | small 2:3

    async def main() -> list:
        b = Batcher(model, cfg, rec, rows=checker)
        await b.start()
        try:
            return await _gather(b.enqueue(big), b.enqueue(small))
        finally:
            await b.close()

    y_big, y_small = asyncio.run(main())
    assert isinstance(y_big, np.ndarray) and y_big.shape == (10, 3)
    np.testing.assert_array_equal(y_big, _expected(big, model))
    np.testing.assert_array_equal(y_small, _expected(small, model))
    assert model.shapes == [4, 4, 4, 1]
    np.testing.assert_array_equal(np.concatenate(model.inputs), np.asarray(big + small, dtype=np.float32))
    assert sorted(checker.request_calls) == [3, 10]  # each converted once, its later slices reuse it
    assert rec.batches == [(4, 4), (4, 4), (4, 4), (1, 1)]


@pytest.mark.parametrize("threads", [1, 0])
def test_batcher_outputs_json_rows(threads: int) -> None:
    model = RecordingModel()
    cfg = ServingConfig(max_batch_size=4, batch_timeout_ms=50, num_batch_threads=threads, allowed_batch_sizes=(2, 4))
    # Batches: a + b + c[0:1] | c[1:5] | c[5:6] (padded to 2): c spans three batches.
    xs: list[list | np.ndarray] = [_parsed(1, 0), _rows(2, 100), _parsed(6, 200), _parsed(1, 900)]

    async def main() -> list:
        b = Batcher(model, cfg, None, rows=RowChecker(N, 10))
        b.outputs = json_rows
        await b.start()
        try:
            return await _gather(*[b.enqueue(x) for x in xs])
        finally:
            await b.close()

    outs = asyncio.run(main())
    assert model.shapes == [4, 4, 2]
    for x, rows in zip(xs, outs, strict=True):
        expected = _expected(x, model)
        assert type(rows) is list and len(rows) == len(x)
        for text, row in zip(rows, expected, strict=True):
            assert type(text) is bytes
            assert text == _dumps(row)
            np.testing.assert_allclose(orjson.loads(text), row)
        doc = orjson.loads(encode_predict(rows, columnar=False))
        np.testing.assert_allclose(np.asarray(doc["predictions"], dtype=np.float32), expected)


def test_batcher_without_row_converter_refuses_parsed_rows() -> None:
    model = RecordingModel()

    async def main() -> None:
        b = Batcher(model, ServingConfig(max_batch_size=4, batch_timeout_ms=50), None)
        await b.start()
        try:
            with pytest.raises(TypeError, match="RowConverter"):
                b.enqueue(_parsed(1))
            assert b.queued_rows == 0 and b.queued_requests == 0
            y = await b.submit(_rows(1))  # arrays still work
            np.testing.assert_array_equal(y, _rows(1) @ model.w)
        finally:
            await b.close()

    asyncio.run(main())
    assert model.shapes == [1]


class HoldingChecker(CountingChecker):
    """Holds the first request() call until the checker is called again (or 5 s pass), so a
    second batch thread reaches the same parsed request while it is still unconverted."""

    def __init__(self, n_features: int, max_instances: int) -> None:
        super().__init__(n_features, max_instances)
        self.second_call = threading.Event()
        self.holding = False

    def batch(self, rows: list) -> np.ndarray | None:
        self.second_call.set()
        return super().batch(rows)

    def request(self, rows: list) -> np.ndarray:
        with self.lock:
            first, self.holding = not self.holding, True
        if first:
            self.second_call.wait(5)
        else:
            self.second_call.set()
        return super().request(rows)


def test_batcher_parsed_request_sliced_across_parallel_batch_threads() -> None:
    model = RecordingModel()
    checker = HoldingChecker(N, 10)
    cfg = ServingConfig(max_batch_size=4, batch_timeout_ms=0, num_batch_threads=2)
    big = _parsed(6, 0)  # rows 0:4 in one thread's batch, 4:6 in the other's, both still parsed lists

    async def main() -> np.ndarray:
        b = Batcher(model, cfg, None, rows=checker)
        await b.start()
        try:
            return await _gather(b.enqueue(big))
        finally:
            await b.close()

    (y,) = asyncio.run(main())
    assert checker.second_call.is_set()  # the two batches did overlap
    np.testing.assert_array_equal(y, _expected(big, model))
    assert sorted(model.shapes) == [2, 4]
    assert checker.batch_calls == []  # a slice of a request is never converted as a whole batch
    assert checker.request_calls == [6, 6]  # each thread converted the whole request


# -- signatures: shaped, integer and several inputs; several outputs ------------------------------

SIG = Signature((TensorSpec("tokens", (3,), "int32"), TensorSpec("image", (2, 2, 1), "float32")),
                (TensorSpec("probs", (2,), "float32"), TensorSpec("label", (), "int64")))


def test_codec_packs_named_inputs_in_both_formats_and_unpacks_them() -> None:
    tokens, image = [[1, 2, 3], [4, 5, 6]], [[[[0.5]] * 2] * 2, [[[1.5]] * 2] * 2]
    row = {"instances": [{"tokens": t, "image": i} for t, i in zip(tokens, image, strict=True)]}
    col = {"inputs": {"image": image, "tokens": tokens}}
    for body, columnar in [(row, False), (col, True)]:
        req = decode_predict(orjson.dumps(body), SIG, 10)
        assert req.columnar is columnar and req.x.dtype == np.float32 and req.x.shape == (2, 3 + 4)
        t, i = SIG.unpack(req.x)
        assert t.dtype == np.int32 and t.tolist() == tokens and i.shape == (2, 2, 2, 1) and i.tolist() == image


@pytest.mark.parametrize(("body", "needle"), [
    ({"instances": [[1, 2, 3]]}, "this model has 2 inputs ('tokens', 'image'); send each instance as an object"),
    ({"inputs": [[1, 2, 3]]}, "send 'inputs' as an object of named arrays"),
    ({"inputs": {"tokens": [[1, 2, 3]]}}, "'inputs' names tokens; this model's inputs are 'tokens', 'image'"),
    ({"instances": [{"tokens": [1, 2, 3]}]}, "every instance object must have the keys 'tokens', 'image'"),
    ({"inputs": {"tokens": [[1, 2, 3]], "image": [[[[0]] * 2] * 2] * 2}}, "different numbers of rows"),
    ({"inputs": {"tokens": [[1.5, 2, 3]], "image": [[[[0]] * 2] * 2]}},
     "non-integer numbers in input 'tokens' of 'inputs'; expected integers (input 'tokens' N x 3 int32)"),
    ({"inputs": {"tokens": [[1, 2, 2**25]], "image": [[[[0]] * 2] * 2]}}, "integer out of range"),
    ({"inputs": {"tokens": [[1, 2, 3]], "image": [[[0, 0], [0, 0]]]}},
     "wrong shape in input 'image' of 'inputs': got 1x2x2; expected rows of shape 2 x 2 x 1 (float32) "
     "(input 'image' N x 2 x 2 x 1 float32)"),
])
def test_codec_signature_errors_name_the_input_shape_and_dtype(body: dict, needle: str) -> None:
    with pytest.raises(RequestError) as err:
        decode_predict(orjson.dumps(body), SIG, 10)
    assert err.value.status == 400 and needle in err.value.message


def test_row_checker_fast_path_for_one_shaped_or_integer_input() -> None:
    image = TensorSpec("image", (2, 2, 1), "float32")
    rows = [[[[1], [2]], [[3], [4]]]]
    assert RowChecker(image, 10).batch(rows).tolist() == [[1.0, 2.0, 3.0, 4.0]]
    assert RowChecker(image, 10).batch([[1, 2, 3, 4]]) is None  # flat rows for a shaped input: per request
    with pytest.raises(RequestError, match=r"wrong shape in 'instances': got 1x4; expected rows of shape 2 x 2 x 1"):
        RowChecker(image, 10).request([[1, 2, 3, 4]])
    ids = TensorSpec("ids", (2,), "int32")
    assert RowChecker(ids, 10).batch([[1, 2]]).tolist() == [[1.0, 2.0]]
    assert RowChecker(ids, 10).batch([[1.5, 2]]) is None


def test_output_encoder_names_several_outputs_as_tf_serving_does() -> None:
    enc = OutputEncoder(SIG)
    y = SIG.pack_outputs([np.array([[0.25, 0.75], [0.5, 0.5]], dtype=np.float32), np.array([1, 0])])
    rows = enc.rows(y)
    assert orjson.loads(enc.encode(rows, columnar=False)) == {
        "predictions": [{"probs": [0.25, 0.75], "label": 1}, {"probs": [0.5, 0.5], "label": 0}]}
    assert orjson.loads(enc.encode(rows[1:], columnar=True)) == {"outputs": {"probs": [[0.5, 0.5]], "label": [0]}}
    meta = SIG.metadata("m", "1")["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert meta["inputs"]["tokens"]["dtype"] == "DT_INT32" and meta["outputs"]["label"]["dtype"] == "DT_INT64"
    assert [d["size"] for d in meta["inputs"]["image"]["tensor_shape"]["dim"]] == ["-1", "2", "2", "1"]


def test_connection_limit_stays_within_the_open_file_limit() -> None:
    import resource

    from agent.serving.protocol import FD_HEADROOM, connection_limit

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert connection_limit(10) == 10
    if soft != resource.RLIM_INFINITY:
        assert connection_limit(soft * 2) == soft - FD_HEADROOM


def test_metrics_of_several_workers_merge_into_one_exposition() -> None:
    import psutil
    from prometheus_client.parser import text_string_to_metric_families

    from agent.serving.metrics import ServingMetrics, merge_expositions, parse_metrics

    a, b = ServingMetrics("m"), ServingMetrics("m")
    for m, codes in ((a, [200, 200, 400]), (b, [200, 503])):
        for code in codes:
            m.request_done(code, 0.004)
    a.batch_done(rows=2, padded_rows=0, compute_s=0.001)
    b.batch_done(rows=8, padded_rows=0, compute_s=0.002)
    merged = merge_expositions([a.exposition(), b.exposition()])
    families = {f.name: f for f in text_string_to_metric_families(merged.decode())}  # valid text format
    snap = parse_metrics(merged.decode())
    assert snap.requests_by_code == {"200": 3.0, "400": 1.0, "503": 1.0}  # a code only one worker saw is kept
    assert snap.batch_size.count == 2 and snap.batch_size.sum == 10.0
    assert snap.latency.count == 4 and snap.shed_latency.count == 1
    starts = [s.value for s in families["process_start_time_seconds"].samples]
    assert starts == [pytest.approx(psutil.Process().create_time(), abs=2)]  # the earliest start, not a sum
    cpu = parse_metrics(a.exposition().decode()).process_cpu_seconds
    assert snap.process_cpu_seconds >= cpu  # the two workers' CPU add up
