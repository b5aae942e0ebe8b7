"""Swarms and sweeps of an endpoint started separately, in either protocol (issue 14).

The endpoint is a ``serve`` job (its own process); the swarm only gets its URL and
model name, and builds its payloads from the target's own metadata.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.serving.config import ServingConfig
from agent.serving.process import EndpointHandle, start_endpoint, stop_endpoint
from loadtest import payload
from loadtest.__main__ import main as loadtest_main
from loadtest.runner import load_result
from runs.registry import Registry

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory: pytest.TempPathFactory, trained_model: Path) -> Iterator[EndpointHandle]:
    reg = Registry(tmp_path_factory.mktemp("endpoint-state"))
    handle = start_endpoint(reg, trained_model, ServingConfig(runtime="tflite"), name="digits", ready_timeout_s=120)
    try:
        yield handle
    finally:
        stop_endpoint(reg, handle.run_id)
        reg.close()


@pytest.mark.parametrize("protocol", ["v2", "tfserving"])
def test_loadtest_cli_swarms_a_separate_endpoint_from_its_metadata(
    home: Path, endpoint: EndpointHandle, protocol: str, capsys: pytest.CaptureFixture[str],
) -> None:
    code = loadtest_main(["--host", endpoint.url, "--protocol", protocol, "--model-name", "digits",
                          "--run-time", "5s", "-u", "2", "-r", "2", "--slo", "fail_ratio<=0.01"])
    out = capsys.readouterr().out
    assert code == 0, out
    reg = Registry(home)
    (run,) = reg.list_runs(kind="loadtest")
    assert run.config["protocol"] == protocol
    result = load_result(reg, run.id)
    assert result.summary["requests"] > 0 and result.summary["failures"] == 0
    # Every request went to the protocol's own inference path.
    stats = Path(result.reports["csv"]).read_text()
    assert payload.request_path("digits", protocol) in stats, stats[:300]
    reg.close()


def test_unreadable_metadata_is_one_line_naming_the_flag(
    home: Path, endpoint: EndpointHandle, capsys: pytest.CaptureFixture[str],
) -> None:
    code = loadtest_main(["--host", endpoint.url, "--protocol", "v2", "--model-name", "nope",
                          "--run-time", "2s"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "cannot read the model's signature from" in err and "/v2/models/nope" in err
    assert "give --signature FILE" in err


# -- payload units (no server) -----------------------------------------------------------------


def test_v2_metadata_bodies_and_checks() -> None:
    inputs = payload.signature_from_v2_metadata({"name": "m", "inputs": [
        {"name": "tokens", "datatype": "INT32", "shape": [-1, 3]},
        {"name": "dense", "datatype": "FP32", "shape": [-1, 2]}]})
    assert inputs == (payload.InputSpec("tokens", (3,), "int32"), payload.InputSpec("dense", (2,), "float32"))
    rows = [{"tokens": [1, 2, 3], "dense": [0.5, 0.25]}, {"tokens": [4, 5, 6], "dense": [1.0, 2.0]}]
    bodies = payload.build_v2_bodies(rows, 2, inputs)
    doc = json.loads(bodies[0])
    assert doc == {"inputs": [
        {"name": "tokens", "shape": [2, 3], "datatype": "INT32", "data": [1, 2, 3, 4, 5, 6]},
        {"name": "dense", "shape": [2, 2], "datatype": "FP32", "data": [0.5, 0.25, 1.0, 2.0]}]}
    with pytest.raises(ValueError, match="needs \\(3,\\)"):
        payload.build_v2_bodies([{"tokens": [1, 2], "dense": [0.0, 0.0]}], 1, inputs)
    with pytest.raises(ValueError, match="objects keyed by input name"):
        payload.build_v2_bodies([[1, 2, 3]], 1, inputs)
    with pytest.raises(ValueError, match="usable 'inputs'"):
        payload.signature_from_v2_metadata({"inputs": [{"name": "x", "datatype": "STRING?", "shape": [-1]}]})
    assert payload.request_path("m", "v2") == "/v2/models/m/infer"
    assert payload.request_path("m", "v2", 3) == "/v2/models/m/versions/3/infer"
    ok = json.dumps({"outputs": [{"name": "y", "shape": [2, 10], "datatype": "FP32", "data": [0] * 20}]})
    assert payload.check_response(200, ok, 2, protocol="v2") is None
    assert payload.check_response(200, ok, 3, protocol="v2") == "200 with 2 output rows, expected 3"
    assert payload.check_response(200, '{"predictions": [[1]]}', 1, protocol="v2") == "200 without an 'outputs' list"
    assert payload.check_response(400, '{"error": "bad"}', 1, protocol="v2") == "400 bad"
    with pytest.raises(ValueError, match="protocol must be one of tfserving, v2"):
        payload.request_path("m", "grpc")
