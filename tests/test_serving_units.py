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
from agent.serving.codec import RequestError, decode_predict, encode_predict
from agent.serving.config import NO_BATCHING, RUNTIMES, ServingConfig

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
    ],
)
def test_config_validation_names_field_and_range(changes: dict, needle: str) -> None:
    with pytest.raises(ValueError) as err:
        ServingConfig(**changes)
    assert needle in str(err.value)


def test_config_from_dict_unknown_keys_and_bad_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown serving config key\(s\) batch_size; known keys: runtime"):
        ServingConfig.from_dict({"batch_size": 3})
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        ServingConfig.from_json_file(bad)
    with pytest.raises(ValueError, match="cannot read"):
        ServingConfig.from_json_file(tmp_path / "missing.json")


# -- codec --------------------------------------------------------------------------------------


def _decode(body: bytes | str, max_instances: int = 10):
    if isinstance(body, str):
        body = body.encode()
    return decode_predict(body, N, max_instances)


def test_codec_row_and_columnar_forms() -> None:
    rows = [[1, 2, 3, 4], [5.5, 6, 7, 8]]
    expected = np.array(rows, dtype=np.float32)
    for body, columnar in [
        ({"instances": rows}, False),
        ({"instances": [{"features": r} for r in rows]}, False),
        ({"inputs": rows}, True),
        ({"inputs": {"features": rows}}, True),
        ({"signature_name": "serving_default", "instances": rows}, False),
    ]:
        req = _decode(orjson.dumps(body))
        assert req.columnar is columnar
        assert req.x.dtype == np.float32 and req.x.flags.c_contiguous
        np.testing.assert_array_equal(req.x, expected)


@pytest.mark.parametrize(
    ("body", "needle"),
    [
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
    ],
)
def test_codec_bad_inputs_are_400_with_reason(body: str, needle: str | None) -> None:
    if needle is None:  # extra keys are ignored, as TF Serving does
        assert _decode(body).x.shape == (1, N)
        return
    with pytest.raises(RequestError) as err:
        _decode(body)
    assert err.value.status == 400
    assert needle in err.value.message


def test_codec_too_many_instances() -> None:
    body = orjson.dumps({"instances": [[0, 0, 0, 0]] * 11})
    with pytest.raises(RequestError, match=r"too many instances in one request \(11\); the limit is 10"):
        _decode(body)


def test_codec_encode() -> None:
    y = np.array([[0.25, 0.75]], dtype=np.float32)
    assert orjson.loads(encode_predict(y, columnar=False)) == {"predictions": [[0.25, 0.75]]}
    assert orjson.loads(encode_predict(y, columnar=True)) == {"outputs": [[0.25, 0.75]]}


# -- batcher ------------------------------------------------------------------------------------


class RecordingModel:
    """y = x @ W (so every output row can be checked); records the batch shapes it saw."""

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.w = np.arange(N * 3, dtype=np.float32).reshape(N, 3)
        self.shapes: list[int] = []
        self.gate = gate
        self.lock = threading.Lock()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self.gate is not None:
            assert self.gate.wait(10)
        with self.lock:
            self.shapes.append(len(x))
        return x @ self.w


class Recorder:
    def __init__(self) -> None:
        self.waits: list[float] = []
        self.batches: list[tuple[int, int]] = []

    def queue_wait(self, seconds: float) -> None:
        self.waits.append(seconds)

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

    assert not any(t.name.startswith("batch-") for t in threading.enumerate())
    asyncio.run(main())
    assert model.shapes == [16]  # five whole requests assembled into one batch
    assert seen_threads and all(name.startswith("batch-") for name in seen_threads)
    deadline = time.monotonic() + 5
    while any(t.name.startswith("batch-") for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not any(t.name.startswith("batch-") for t in threading.enumerate()), "batch threads outlived close()"


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
