"""The Open Inference Protocol (KServe v2) on the endpoint, checked with Triton's own client.

``tritonclient.http.InferenceServerClient`` against a real uvicorn server: health,
readiness, metadata and inference (binary tensors, as the client sends by default,
and JSON tensors), with outputs equal to the v1 (TF Serving) API's for the same rows;
each v1 bad input in v2 form gets the same status and a message naming the fault.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import orjson
import pytest
from serving_helpers import request, running_server

from agent.export import load_samples
from agent.serving.app import create_app
from agent.serving.codec import RequestError
from agent.serving.config import ServingConfig
from agent.serving.metrics import parse_metrics, snapshot_delta
from agent.serving.v2 import decode_infer, encode_infer
from agent.signature import Signature, TensorSpec

httpclient = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException  # noqa: E402

MAX_INSTANCES = 50
MAX_BODY = 64 * 1024
INFER = "/v2/models/digits/infer"


@pytest.fixture(scope="module")
def samples(trained_model: Path) -> np.ndarray:
    return np.asarray(load_samples(trained_model), dtype=np.float32)


@pytest.fixture(scope="module")
def server(trained_model: Path) -> Iterator[int]:
    config = ServingConfig(runtime="tflite", max_batch_size=16, batch_timeout_ms=1, allowed_batch_sizes=(4, 16),
                           max_instances=MAX_INSTANCES, max_body_bytes=MAX_BODY)
    with running_server(create_app(trained_model, "digits", config)) as port:
        yield port


@pytest.fixture(scope="module")
def client(server: int) -> Iterator[object]:
    c = httpclient.InferenceServerClient(f"127.0.0.1:{server}")
    yield c
    c.close()


def _v1(port: int, rows: np.ndarray) -> np.ndarray:
    r = request(port, "POST", "/v1/models/digits:predict", {"instances": rows.tolist()})
    assert r.status == 200, r.body
    return np.asarray(r.json["predictions"], dtype=np.float32)


def test_health_readiness_and_metadata_through_tritonclient(client: object) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("digits")
    assert client.is_model_ready("digits", "1")
    assert not client.is_model_ready("nope")
    assert not client.is_model_ready("digits", "7")
    meta = client.get_model_metadata("digits")
    assert meta["name"] == "digits" and meta["versions"] == ["1"] and meta["platform"] == "tuneswarm_tflite"
    assert meta["inputs"] == [{"name": "features", "datatype": "FP32", "shape": [-1, 64]}]
    assert len(meta["outputs"]) == 1
    assert meta["outputs"][0]["datatype"] == "FP32" and meta["outputs"][0]["shape"] == [-1, 10]
    assert client.get_model_metadata("digits", "1") == meta
    assert "binary_tensor_data" in client.get_server_metadata()["extensions"]


@pytest.mark.parametrize("binary_in", [True, False], ids=["binary-in", "json-in"])
@pytest.mark.parametrize("binary_out", [True, False, None], ids=["binary-out", "json-out", "default-out"])
def test_infer_equals_the_v1_api_for_the_same_rows(
    server: int, client: object, samples: np.ndarray, binary_in: bool, binary_out: bool | None,
) -> None:
    rows = samples[:7]
    x = httpclient.InferInput("features", list(rows.shape), "FP32")
    x.set_data_from_numpy(rows, binary_data=binary_in)
    out_name = client.get_model_metadata("digits")["outputs"][0]["name"]
    outputs = None if binary_out is None else [httpclient.InferRequestedOutput(out_name, binary_data=binary_out)]
    result = client.infer("digits", [x], outputs=outputs, request_id="r-1",
                          model_version="1" if binary_in else "")
    y = result.as_numpy(out_name)
    assert y.shape == (7, 10) and y.dtype == np.float32
    np.testing.assert_array_equal(y, _v1(server, rows))
    response = result.get_response()
    assert response["model_name"] == "digits" and response["model_version"] == "1" and response["id"] == "r-1"


def test_nested_json_data_and_raw_http(server: int, samples: np.ndarray) -> None:
    rows = samples[:3]
    body = {"inputs": [{"name": "features", "shape": [3, 64], "datatype": "FP32", "data": rows.tolist()}]}
    r = request(server, "POST", INFER, body)
    assert r.status == 200 and r.headers["content-type"] == "application/json"
    (out,) = r.json["outputs"]
    assert out["shape"] == [3, 10] and out["datatype"] == "FP32"
    np.testing.assert_array_equal(np.asarray(out["data"], dtype=np.float32), _v1(server, rows))


ROW = [0.0] * 64


def _body(data: object = None, shape: object = None, datatype: str = "FP32", name: str = "features",
          **extra: object) -> str:
    tensor = {"name": name, "shape": [1, 64] if shape is None else shape, "datatype": datatype,
              "data": ROW if data is None else data}
    return json.dumps({"inputs": [tensor], **extra})


# The v1 API's bad inputs (tests/test_serving_http.py BAD_REQUESTS), in v2 form: same status.
BAD_V2 = [
    ("invalid JSON", "POST", INFER, '{"inputs": [{"name"', None, 400, "invalid JSON"),
    ("empty body", "POST", INFER, "", None, 400, "empty request body"),
    ("missing inputs", "POST", INFER, '{"rows": [[1]]}', None, 400, "missing 'inputs'"),
    ("wrong feature count", "POST", INFER, _body([1.0] * 63, [1, 63]), None, 400, "expected [N, 64]"),
    ("values do not fill the shape", "POST", INFER, _body([1.0] * 63), None, 400, "has 63 values"),
    ("ragged rows", "POST", INFER, _body([ROW, ROW[:10]], [2, 64]), None, 400, "ragged rows"),
    ("strings", "POST", INFER, _body([*ROW[:63], "x"]), None, 400, "strings in input 'features'"),
    ("booleans", "POST", INFER, _body([*ROW[:63], True]), None, 400, "booleans in input 'features'"),
    ("NaN", "POST", INFER, _body().replace("[0.0,", "[NaN,", 1), None, 400, "NaN and Infinity are not JSON"),
    ("overflow to inf", "POST", INFER, _body([1e300, *ROW[1:]]), None, 400, "non-finite"),
    ("too many instances", "POST", INFER, _body(ROW * (MAX_INSTANCES + 1), [MAX_INSTANCES + 1, 64]), None, 400,
     f"the limit is {MAX_INSTANCES}"),
    ("wrong datatype", "POST", INFER, _body(datatype="FP64"), None, 400, "datatype 'FP64'; expected 'FP32'"),
    ("unknown input", "POST", INFER, _body(name="pixels"), None, 400, "this model's inputs are 'features'"),
    ("unknown output", "POST", INFER, _body(outputs=[{"name": "nope"}]), None, 400, "unknown output 'nope'"),
    ("not JSON content type", "POST", INFER, _body(), {"Content-Type": "text/plain"}, 415, "'text/plain' is not JSON"),
    ("unknown model", "POST", "/v2/models/nope/infer", _body(), None, 404,
     "model 'nope' not found; this server serves 'digits'"),
    ("unknown version", "POST", "/v2/models/digits/versions/7/infer", _body(), None, 404,
     "version '7' of model 'digits' not found"),
    ("unknown version metadata", "GET", "/v2/models/digits/versions/2", None, None, 404, "version '2'"),
    ("unknown path", "GET", "/v2/whatever", None, None, 404, "unknown path '/v2/whatever'"),
    ("GET on infer", "GET", INFER, None, None, 405, "GET not allowed"),
    ("POST on metadata", "POST", "/v2/models/digits", "{}", None, 405, "POST not allowed"),
    ("DELETE on live", "DELETE", "/v2/health/live", None, None, 405, "DELETE not allowed"),
    ("body over the limit", "POST", INFER, _body(ROW * 1000, [1000, 64]), None, 413,
     f"exceeds the limit of {MAX_BODY} bytes"),
    ("binary size mismatch", "POST", INFER,
     json.dumps({"inputs": [{"name": "features", "shape": [1, 64], "datatype": "FP32",
                             "parameters": {"binary_data_size": 10}}]}) + "0123456789",
     {"Inference-Header-Content-Length": "96"}, 400, "binary_data_size 10; expected 256 bytes"),
]


@pytest.mark.parametrize(("label", "method", "path", "body", "headers", "status", "fragment"), BAD_V2,
                         ids=[b[0] for b in BAD_V2])
def test_bad_v2_input_gets_the_v1_status_and_a_message_then_the_next_is_served(
    server: int, samples: np.ndarray, label: str, method: str, path: str, body: str | None,
    headers: dict | None, status: int, fragment: str,
) -> None:
    if label == "binary size mismatch":  # the header length is the JSON's, whatever json.dumps made
        headers = {"Inference-Header-Content-Length": str(len(body) - 10)}
    r = request(server, method, path, body, headers)
    assert r.status == status, (label, r.body)
    assert r.headers["content-type"] == "application/json"
    assert set(r.json) == {"error"}
    assert fragment in r.json["error"], r.json["error"]
    assert _v1(server, samples[:1]).shape == (1, 10)


def test_tritonclient_sees_status_and_message_of_a_bad_request(client: object) -> None:
    x = httpclient.InferInput("features", [1, 63], "FP32")
    x.set_data_from_numpy(np.zeros((1, 63), dtype=np.float32))
    with pytest.raises(InferenceServerException) as err:
        client.infer("digits", [x])
    assert err.value.status() == "400" and "expected [N, 64]" in err.value.message()


def test_prometheus_alias_counts_v2_requests_and_classify_is_a_400(server: int, samples: np.ndarray) -> None:
    def scrape(path: str) -> object:
        r = request(server, "GET", path)
        assert r.status == 200 and r.headers["content-type"].startswith("text/plain")
        return parse_metrics(r.body.decode())

    before = scrape("/monitoring/prometheus/metrics")
    assert request(server, "GET", "/v2/health/ready").status == 200  # probes are not traffic
    for n in (1, 4):
        body = {"inputs": [{"name": "features", "shape": [n, 64], "datatype": "FP32",
                            "data": samples[:n].ravel().tolist()}]}
        assert request(server, "POST", INFER, body).status == 200
    r = request(server, "POST", "/v1/models/digits:classify", {"examples": [{}]})
    assert r.status == 400 and "classify is not supported" in r.json["error"] and ":predict" in r.json["error"]
    assert request(server, "POST", "/v1/models/digits:regress", {"examples": [{}]}).status == 400
    d = snapshot_delta(before, scrape("/metrics"))
    assert d.requests_by_code == {"200": 2, "400": 2}


# -- units: several inputs and outputs, binary both ways (no server) -------------------------------

SIG = Signature((TensorSpec("tokens", (3,), "int32"), TensorSpec("dense", (2, 2), "float32")),
                (TensorSpec("score", (1,), "float32"), TensorSpec("label", (1,), "int64")))


def test_decode_several_inputs_json_and_binary_pack_as_v1_does() -> None:
    tokens = np.array([[1, 2, 3], [4, 5, 6]], dtype=np.int32)
    dense = np.arange(8, dtype=np.float32).reshape(2, 2, 2)
    doc = {"id": "a", "inputs": [
        {"name": "dense", "shape": [2, 2, 2], "datatype": "FP32", "parameters": {"binary_data_size": 32}},
        {"name": "tokens", "shape": [2, 3], "datatype": "INT32", "data": tokens.ravel().tolist()}],
        "outputs": [{"name": "label", "parameters": {"binary_data": True}}, {"name": "score"}]}
    head = orjson.dumps(doc)
    req = decode_infer(head + dense.tobytes(), SIG, 10, header_length=len(head))
    np.testing.assert_array_equal(req.x, np.concatenate([tokens, dense.reshape(2, 4)], axis=1).astype(np.float32))
    assert req.id == "a" and [(o.index, o.binary) for o in req.outputs] == [(1, True), (0, False)]
    body, json_len = encode_infer(req, [(b"[0.5]", b"[7]"), (b"[0.25]", b"[9]")], SIG, "m", "1")
    out = orjson.loads(body[:json_len])
    assert out["outputs"][0] == {"name": "label", "datatype": "INT64", "shape": [2, 1],
                                 "parameters": {"binary_data_size": 16}}
    assert out["outputs"][1] == {"name": "score", "datatype": "FP32", "shape": [2, 1], "data": [[0.5], [0.25]]}
    np.testing.assert_array_equal(np.frombuffer(body[json_len:], dtype="<i8"), [7, 9])


@pytest.mark.parametrize(("doc", "needle"), [
    ({"inputs": [{"name": "tokens", "shape": [1, 3], "datatype": "INT32", "data": [1, 2, 3]}]},
     "this model's inputs are 'tokens', 'dense'"),
    ({"inputs": [{"name": "tokens", "shape": [1, 3], "datatype": "INT32", "data": [1, 2.5, 3]},
                 {"name": "dense", "shape": [1, 2, 2], "datatype": "FP32", "data": [0, 0, 0, 0]}]},
     "non-integer numbers in input 'tokens'"),
    ({"inputs": [{"name": "tokens", "shape": [1, 3], "datatype": "INT32", "data": [1, 2, 3]},
                 {"name": "dense", "shape": [2, 2, 2], "datatype": "FP32", "data": [0] * 8}]},
     "different batch sizes"),
    ({"inputs": [{"name": "tokens", "shape": [1, 3], "datatype": "INT32", "data": [1, 2, 1 << 25]},
                 {"name": "dense", "shape": [1, 2, 2], "datatype": "FP32", "data": [0, 0, 0, 0]}]},
     "integer out of range"),
    ({"inputs": [{"name": "tokens", "shape": [1, 3], "datatype": "INT32"},
                 {"name": "dense", "shape": [1, 2, 2], "datatype": "FP32", "data": [0, 0, 0, 0]}]},
     "has no 'data'"),
    ({"inputs": [{"name": "tokens", "shape": "1x3", "datatype": "INT32", "data": [1, 2, 3]},
                 {"name": "dense", "shape": [1, 2, 2], "datatype": "FP32", "data": [0, 0, 0, 0]}]},
     "expected a list of sizes"),
    ({"inputs": {"tokens": [1, 2, 3]}}, "non-empty list of tensor objects"),
    ([1, 2], "request body is a JSON array"),
])
def test_decode_bad_requests_are_400_with_reason(doc: object, needle: str) -> None:
    with pytest.raises(RequestError) as err:
        decode_infer(orjson.dumps(doc), SIG, 10)
    assert err.value.status == 400 and needle in err.value.message, err.value.message


def test_v2_overload_is_shed_like_predict_with_retry_after() -> None:
    """/v2/.../infer goes through the same bounded queue and admission as :predict."""
    import time

    from test_serving_http import GatedRuntime

    bound = 4
    runtime = GatedRuntime()
    app = create_app(None, "digits", ServingConfig(max_batch_size=1, batch_timeout_ms=0, max_enqueued_batches=bound),
                     runtime=runtime)

    def body(i: float) -> dict:
        return {"inputs": [{"name": "features", "shape": [1, 64], "datatype": "FP32", "data": [i] * 64}]}

    with running_server(app) as port, ThreadPoolExecutor(bound + 8) as pool:
        runtime.gate.clear()
        runtime.entered.clear()
        first = pool.submit(request, port, "POST", "/v2/models/digits/versions/1/infer", body(1.0))
        assert runtime.entered.wait(30)
        results = [pool.submit(request, port, "POST", INFER, body(float(i))) for i in range(bound + 6)]
        deadline = time.monotonic() + 30
        shed = []
        while len(shed) < 6 and time.monotonic() < deadline:
            shed = [f for f in results if f.done()]
            time.sleep(0.01)
        assert len(shed) == 6 and not first.done()
        for f in shed:
            r = f.result()
            assert r.status == 503 and r.headers["retry-after"] == "1" and "queue full" in r.json["error"]
        runtime.gate.set()
        assert first.result(timeout=30).status == 200
        served = [(i, f.result(timeout=30)) for i, f in enumerate(results) if f not in shed]
        assert len(served) == bound
        for i, r in served:  # the gated model echoes the first feature into all 10 outputs
            assert r.status == 200 and r.json["outputs"][0]["data"] == [[float(i)] * 10]
        assert parse_metrics(request(port, "GET", "/metrics").body.decode()).shed == 6


def test_concurrent_v2_requests_each_get_their_own_rows(server: int, samples: np.ndarray) -> None:
    def one(i: int) -> np.ndarray:
        body = {"inputs": [{"name": "features", "shape": [1, 64], "datatype": "FP32",
                            "data": samples[i].tolist()}]}
        r = request(server, "POST", INFER, body)
        assert r.status == 200
        return np.asarray(r.json["outputs"][0]["data"], dtype=np.float32)

    with ThreadPoolExecutor(8) as pool:
        got = np.concatenate(list(pool.map(one, range(16))))
    np.testing.assert_array_equal(got, _v1(server, samples[:16]))
