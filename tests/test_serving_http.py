"""The endpoint over real HTTP (uvicorn + uvloop + httptools on a free port).

Request and response shapes follow TensorFlow Serving's REST API documentation
(api_rest: model status, model metadata, predict in row and columnar format,
errors as {"error": ...}).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from serving_helpers import Response, raw_exchange, request, running_server

from agent.export import load_model, load_samples
from agent.serving.app import create_app
from agent.serving.config import ServingConfig
from agent.serving.metrics import parse_metrics, snapshot_delta

pytestmark = pytest.mark.integration

MAX_INSTANCES = 50
MAX_BODY = 64 * 1024
PREDICT = "/v1/models/digits:predict"


@pytest.fixture(scope="module")
def samples(trained_model: Path) -> np.ndarray:
    return np.asarray(load_samples(trained_model), dtype=np.float32)


@pytest.fixture(scope="module")
def keras_predictions(trained_model: Path, samples: np.ndarray) -> np.ndarray:
    return np.asarray(load_model(trained_model)(samples[:16], training=False))


@pytest.fixture(scope="module")
def server(trained_model: Path) -> Iterator[int]:
    config = ServingConfig(runtime="tflite", max_batch_size=16, batch_timeout_ms=1, allowed_batch_sizes=(4, 16),
                           max_instances=MAX_INSTANCES, max_body_bytes=MAX_BODY)
    with running_server(create_app(trained_model, "digits", config)) as port:
        yield port


def _ok(port: int, rows: np.ndarray) -> np.ndarray:
    r = request(port, "POST", PREDICT, {"instances": rows.tolist()})
    assert r.status == 200, r.body
    return np.asarray(r.json["predictions"], dtype=np.float32)


# -- the API as TF Serving documents it ----------------------------------------------------------


def test_model_status(server: int) -> None:
    for path in ("/v1/models/digits", "/v1/models/digits/versions/1"):
        r = request(server, "GET", path)
        assert r.status == 200
        assert r.headers["content-type"] == "application/json"
        assert r.json == {"model_version_status": [
            {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]}


def test_model_metadata(server: int) -> None:
    r = request(server, "GET", "/v1/models/digits/metadata")
    assert r.status == 200
    doc = r.json
    assert doc["model_spec"] == {"name": "digits", "signature_name": "", "version": "1"}
    sig = doc["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert sig["method_name"] == "tensorflow/serving/predict"
    features = sig["inputs"]["features"]
    assert features["dtype"] == "DT_FLOAT"
    assert [d["size"] for d in features["tensor_shape"]["dim"]] == ["-1", "64"]
    out = next(iter(sig["outputs"].values()))
    assert [d["size"] for d in out["tensor_shape"]["dim"]] == ["-1", "10"]


def test_predict_row_and_columnar_formats_match_keras(
    server: int, samples: np.ndarray, keras_predictions: np.ndarray
) -> None:
    rows = samples[:16].tolist()
    forms = {
        "row": ({"instances": rows}, "predictions"),
        "row, named input": ({"instances": [{"features": r} for r in rows]}, "predictions"),
        "columnar": ({"inputs": rows}, "outputs"),
        "columnar, named input": ({"inputs": {"features": rows}}, "outputs"),
        "with signature_name": ({"signature_name": "serving_default", "instances": rows}, "predictions"),
    }
    for label, (body, key) in forms.items():
        for path in (PREDICT, "/v1/models/digits/versions/1:predict"):
            r = request(server, "POST", path, body)
            assert r.status == 200, (label, r.body)
            assert list(r.json) == [key], label
            y = np.asarray(r.json[key], dtype=np.float32)
            np.testing.assert_allclose(y, keras_predictions, atol=1e-5, err_msg=label)
    # curl -d (TF Serving's documented example) sends a form content type with the JSON body.
    r = request(server, "POST", PREDICT, {"instances": rows[:1]},
                headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status == 200


def test_more_rows_than_max_batch_size_are_split_and_reassembled(server: int, samples: np.ndarray) -> None:
    rows = samples[:40]  # max_batch_size is 16: three batches
    y = _ok(server, rows)
    assert y.shape == (40, 10)
    np.testing.assert_allclose(y[:16], _ok(server, rows[:16]), atol=1e-6)
    np.testing.assert_allclose(y[32:], _ok(server, rows[32:]), atol=1e-6)


def test_health_and_readiness(server: int) -> None:
    assert request(server, "GET", "/healthz").json == {"status": "ok"}
    r = request(server, "GET", "/readyz")
    assert r.status == 200 and r.json["status"] == "ready" and r.json["runtime"] == "tflite"


# -- bad input: the right status, a message naming the problem, and the next request served --------


ROW = [0.0] * 64
BAD_REQUESTS = [
    # (label, method, path, body, headers, status, message fragment)
    ("invalid JSON", "POST", PREDICT, '{"instances": [[0, 1', None, 400, "invalid JSON"),
    ("empty body", "POST", PREDICT, "", None, 400, "empty request body"),
    ("missing instances", "POST", PREDICT, '{"rows": [[1]]}', None, 400, "missing 'instances' or 'inputs'"),
    ("wrong feature count", "POST", PREDICT, json.dumps({"instances": [[1.0] * 63]}), None, 400,
     "expected rows of 64 features"),
    ("ragged rows", "POST", PREDICT, json.dumps({"instances": [ROW, ROW[:10]]}), None, 400, "ragged rows"),
    ("strings", "POST", PREDICT, json.dumps({"instances": [[*ROW[:63], "x"]]}), None, 400, "strings in 'instances'"),
    ("NaN", "POST", PREDICT, '{"instances": [[NaN' + ", 0" * 63 + "]]}", None, 400, "NaN and Infinity are not JSON"),
    ("Infinity", "POST", PREDICT, '{"instances": [[Infinity' + ", 0" * 63 + "]]}", None, 400, "invalid JSON"),
    ("overflow to inf", "POST", PREDICT, '{"instances": [[1e300' + ", 0" * 63 + "]]}", None, 400, "non-finite"),
    ("too many instances", "POST", PREDICT, json.dumps({"instances": [ROW] * (MAX_INSTANCES + 1)}), None, 400,
     f"the limit is {MAX_INSTANCES}"),
    ("not JSON content type", "POST", PREDICT, json.dumps({"instances": [ROW]}), {"Content-Type": "text/plain"},
     415, "'text/plain' is not JSON"),
    ("unknown signature", "POST", PREDICT, json.dumps({"signature_name": "x", "instances": [ROW]}), None, 400,
     "unknown signature_name 'x'"),
    ("unknown model", "POST", "/v1/models/nope:predict", json.dumps({"instances": [ROW]}), None, 404,
     "model 'nope' not found; this server serves 'digits'"),
    ("unknown version", "POST", "/v1/models/digits/versions/7:predict", json.dumps({"instances": [ROW]}), None,
     404, "version '7' of model 'digits' not found"),
    ("unknown version status", "GET", "/v1/models/digits/versions/2", None, None, 404, "version '2'"),
    ("unknown path", "GET", "/v2/whatever", None, None, 404, "unknown path '/v2/whatever'"),
    ("unknown verb", "POST", "/v1/models/digits:explain", json.dumps({"instances": [ROW]}), None, 404,
     "unknown verb ':explain'"),
    ("classify", "POST", "/v1/models/digits:classify", json.dumps({"examples": [{}]}), None, 400,
     "no classify or regress signature"),
    ("GET on predict", "GET", PREDICT, None, None, 405, "GET not allowed"),
    ("POST on metadata", "POST", "/v1/models/digits/metadata", "{}", None, 405, "POST not allowed"),
    ("DELETE on status", "DELETE", "/v1/models/digits", None, None, 405, "DELETE not allowed"),
    ("body over the limit", "POST", PREDICT, json.dumps({"instances": [ROW] * 1000}), None, 413,
     f"exceeds the limit of {MAX_BODY} bytes"),
]


@pytest.mark.parametrize(("label", "method", "path", "body", "headers", "status", "fragment"), BAD_REQUESTS,
                         ids=[b[0] for b in BAD_REQUESTS])
def test_bad_input_gets_status_and_message_then_next_request_is_served(
    server: int, samples: np.ndarray, label: str, method: str, path: str, body: str | None,
    headers: dict | None, status: int, fragment: str,
) -> None:
    r = request(server, method, path, body, headers)
    assert r.status == status, (label, r.body)
    assert r.headers["content-type"] == "application/json"
    assert set(r.json) == {"error"}
    assert fragment in r.json["error"], r.json["error"]
    if status == 405:
        assert r.headers["allow"] in ("GET", "POST")
    assert _ok(server, samples[:2]).shape == (2, 10)


def test_oversized_content_length_is_refused_before_the_body_is_sent(server: int) -> None:
    # Only the headers go out: a server that waited for the body would never answer.
    head = (f"POST {PREDICT} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {MAX_BODY * 100}\r\n\r\n").encode()
    answer = raw_exchange(server, head)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"exceeds the limit" in answer


def test_chunked_body_over_the_limit_is_cut_off(server: int, samples: np.ndarray) -> None:
    import http.client

    def chunks() -> Iterator[bytes]:
        yield b'{"instances": ['
        for _ in range(MAX_BODY // 100):  # well past the limit in total, no Content-Length
            yield json.dumps(ROW).encode() + b","
        yield json.dumps(ROW).encode() + b"]}"

    conn = http.client.HTTPConnection("127.0.0.1", server, timeout=30)
    try:
        conn.request("POST", PREDICT, body=chunks(), headers={"Content-Type": "application/json"},
                     encode_chunked=True)
        resp = conn.getresponse()
        assert resp.status == 413
        assert "exceeds the limit" in json.loads(resp.read())["error"]
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server may close while we are still sending; the status check below still runs
    finally:
        conn.close()
    assert _ok(server, samples[:1]).shape == (1, 10)


# -- metrics -------------------------------------------------------------------------------------


def _scrape(port: int) -> Response:
    r = request(port, "GET", "/metrics")
    assert r.status == 200
    assert r.headers["content-type"].startswith("text/plain")
    return r


def test_metrics_parse_and_counters_match_requests_sent(server: int, samples: np.ndarray) -> None:
    before = parse_metrics(_scrape(server).body.decode(), at=time.monotonic())
    sizes = [1, 3, 7, 2, 5]
    for n in sizes:
        _ok(server, samples[:n])
    for _ in range(3):
        assert request(server, "POST", PREDICT, {"instances": [[1.0]]}).status == 400
    assert request(server, "GET", "/v1/models/other").status == 404
    text = _scrape(server).body.decode()
    after = parse_metrics(text, at=time.monotonic())
    d = snapshot_delta(before, after)
    # Scrapes and probes are not counted as traffic: exactly the requests sent show up.
    assert d.requests_by_code == {"200": len(sizes), "400": 3, "404": 1}
    assert d.ok == len(sizes) and d.client_errors == 4 and d.shed_503 == 0
    assert after.latency.count - before.latency.count == len(sizes) + 4
    # Predictions queue, and so do the 3 rows of the wrong width: rows of the common body
    # are checked with their batch. Refused rows never reach the model.
    assert after.queue_wait.count - before.queue_wait.count == len(sizes) + 3
    assert after.batch_size.sum - before.batch_size.sum == sum(sizes)  # rows, before padding
    assert d.batches >= 1 and d.mean_compute_s is not None and d.mean_compute_s > 0
    assert d.mean_batch_size is not None and 1 <= d.mean_batch_size <= 16
    assert d.requests_per_s is not None and d.requests_per_s > 0
    assert d.p50_latency_s is not None and d.p99_latency_s is not None and d.p50_latency_s <= d.p99_latency_s
    assert after.queue_depth_rows == 0 and after.batches_in_flight == 0
    for family in ("tuneswarm_request_latency_seconds_bucket", "tuneswarm_queue_wait_seconds_bucket",
                   "tuneswarm_compute_seconds_bucket", "tuneswarm_batch_size_rows_bucket",
                   "tuneswarm_queue_depth_rows", "tuneswarm_shed_total", "process_cpu_seconds_total"):
        assert family in text


# -- overload: a bounded queue sheds the surplus at once -----------------------------------------


class GatedRuntime:
    """A runtime whose model is held until the test releases it (the one stand-in allowed here)."""

    name = "gated"
    n_features = 64

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.gate.set()  # open for warm-up
        self.entered = threading.Event()

    def predict(self, x: np.ndarray) -> np.ndarray:
        self.entered.set()
        if not self.gate.wait(60):
            raise TimeoutError("gate never opened")
        return np.repeat(x[:, :1], 10, axis=1)


def test_overload_sheds_exactly_the_surplus_with_retry_after() -> None:
    bound = 5
    runtime = GatedRuntime()
    config = ServingConfig(max_batch_size=1, batch_timeout_ms=0, max_enqueued_batches=bound)
    app = create_app(None, "digits", config, runtime=runtime)
    with running_server(app) as port, ThreadPoolExecutor(bound + 11) as pool:
        runtime.gate.clear()
        runtime.entered.clear()
        first = pool.submit(request, port, "POST", PREDICT, {"instances": [[1.0] * 64]})
        assert runtime.entered.wait(30)  # the first request holds the one batch thread
        results = [pool.submit(request, port, "POST", PREDICT, {"instances": [[float(i)] * 64]})
                   for i in range(bound + 10)]
        # All 10 surplus requests are answered while the model is still held: shed at once.
        shed = []
        deadline = time.monotonic() + 30
        while len(shed) < 10 and time.monotonic() < deadline:
            shed = [f for f in results if f.done()]
            time.sleep(0.01)
        assert len(shed) == 10
        assert not first.done()
        for f in shed:
            r = f.result()
            assert r.status == 503
            assert r.headers["retry-after"] == "1"
            assert "queue full" in r.json["error"]
        depth = parse_metrics(request(port, "GET", "/metrics").body.decode())
        assert depth.queue_depth_rows == bound and depth.shed == 10
        runtime.gate.set()
        assert first.result(timeout=30).status == 200
        served = [(i, f.result(timeout=30)) for i, f in enumerate(results) if f not in shed]
        assert len(served) == bound
        for i, r in served:  # each got its own row back (the gated model echoes the first feature)
            assert r.status == 200 and r.json == {"predictions": [[float(i)] * 10]}
        assert request(port, "POST", PREDICT, {"instances": [[2.0] * 64]}).json == {"predictions": [[2.0] * 10]}


def test_request_deadline_answers_504() -> None:
    runtime = GatedRuntime()
    config = ServingConfig(max_batch_size=1, batch_timeout_ms=0, request_timeout_ms=100)
    with running_server(create_app(None, "digits", config, runtime=runtime)) as port:
        runtime.gate.clear()
        with ThreadPoolExecutor(2) as pool:
            held = pool.submit(request, port, "POST", PREDICT, {"instances": [[1.0] * 64]})
            waiting = pool.submit(request, port, "POST", PREDICT, {"instances": [[2.0] * 64]})
            for f in (held, waiting):  # both answered while the model is still held
                r = f.result(timeout=30)
                assert r.status == 504 and "deadline of 100 ms passed" in r.json["error"]
            assert not runtime.gate.is_set()
            runtime.gate.set()
        assert request(port, "POST", PREDICT, {"instances": [[3.0] * 64]}).status == 200


def test_server_fault_is_a_json_500_not_a_crash() -> None:
    class Broken(GatedRuntime):
        fail = False

        def predict(self, x: np.ndarray) -> np.ndarray:
            if self.fail:
                raise RuntimeError("kernel exploded")
            return super().predict(x)

    runtime = Broken()
    with running_server(create_app(None, "digits", ServingConfig(), runtime=runtime)) as port:
        runtime.fail = True
        r = request(port, "POST", PREDICT, {"instances": [[1.0] * 64]})
        assert r.status == 500 and "internal server error" in r.json["error"]
        runtime.fail = False
        assert request(port, "POST", PREDICT, {"instances": [[1.0] * 64]}).status == 200
