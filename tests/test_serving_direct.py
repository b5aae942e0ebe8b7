"""The direct predict route: the protocol hands a complete, small ``:predict`` POST to the app
without an ASGI task, and its answer leaves in one write.

The endpoint app (with a small echoing runtime) is driven through asyncio's protocol
interface (data_received on a recording transport) twice with the same requests: once
through the protocol with the direct route and once through the same protocol without
it (every request an ASGI task). The bytes on the wire must be identical, whatever
the request: a prediction, bad input the route leaves to the app, a body the route
cannot take, pipelining, HTTP/1.0, ``Connection: close``, a graceful shutdown while the
request is queued.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import uvicorn
from test_serving_protocol import RecordingTransport
from uvicorn.server import ServerState

from agent.serving.app import ServingApp, create_app
from agent.serving.config import ServingConfig
from agent.serving.metrics import parse_metrics
from agent.serving.protocol import protocol_class

N_FEATURES = 4
CONFIG = ServingConfig(max_batch_size=1, batch_timeout_ms=0)


class EchoRuntime:
    """Answers each row with its first feature, three times; held while ``gate`` is clear."""

    name = "echo"
    n_features = N_FEATURES

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.gate.set()

    def predict(self, x: np.ndarray) -> np.ndarray:
        if not self.gate.wait(30):
            raise TimeoutError("gate never opened")
        return np.repeat(x[:, :1], 3, axis=1)


def post(path: str, body: bytes | dict, *headers: str, version: str = "1.1") -> bytes:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    head = [f"POST {path} HTTP/{version}", "host: a", "content-type: application/json",
            f"content-length: {len(data)}", *headers]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + data


PREDICT = "/v1/models/m:predict"
ROW = post(PREDICT, {"instances": [[1.5, 0, 0, 0]]})
COLUMNAR = post("/v1/models/m/versions/1:predict", {"inputs": [[2.5, 0, 0, 0], [3.5, 1, 1, 1]]})
BAD_JSON = post(PREDICT, b'{"instances": [[1, 2')
WRONG_WIDTH = post(PREDICT, {"instances": [[1, 2]]})
NOT_FINITE = post(PREDICT, b'{"instances": [[1, 2, 3, NaN]]}')
TEXT = post(PREDICT, b"1,2,3,4").replace(b"application/json", b"text/plain")
CLOSE = post(PREDICT, {"instances": [[4.5, 0, 0, 0]]}, "connection: close")
HTTP10 = post(PREDICT, {"instances": [[5.5, 0, 0, 0]]}, version="1.0")
CONTINUE = post(PREDICT, {"instances": [[6.5, 0, 0, 0]]}, "expect: 100-continue")
CHUNKED = (b"POST " + PREDICT.encode() + b" HTTP/1.1\r\nhost: a\r\ncontent-type: application/json\r\n"
           b"transfer-encoding: chunked\r\n\r\n1c\r\n" + b'{"instances": [[7.5,0,0,0]]}' + b"\r\n0\r\n\r\n")
GET = b"GET " + PREDICT.encode() + b" HTTP/1.1\r\nhost: a\r\n\r\n"
STATUS = b"GET /v1/models/m HTTP/1.1\r\nhost: a\r\n\r\n"


def drive(direct: bool, requests: list[bytes], *, runtime: EchoRuntime | None = None,
          while_held: Callable[[Any], None] | None = None) -> tuple[list[bytes], bool, dict[str, float]]:
    """Each item of ``requests`` fed in one read after the previous answers; returns the writes, whether
    the connection was closed, and the predict answers the app's metrics counted, by code.
    With ``while_held``, the last request is fed with ``runtime`` held (its gate clear),
    ``while_held(protocol)`` runs, then the gate opens."""

    async def run() -> tuple[list[bytes], bool, dict[str, float]]:
        app: ServingApp = create_app(None, "m", CONFIG, runtime=runtime or EchoRuntime())
        await app.startup()
        try:
            config = uvicorn.Config(app, lifespan="off", log_level="critical", server_header=False,
                                    date_header=False)
            config.load()
            protocol = protocol_class(CONFIG, app.admission, direct=app.direct if direct else None)
            proto = protocol(config=config, server_state=ServerState(), app_state={},
                             _loop=asyncio.get_running_loop())
            transport = RecordingTransport()
            proto.connection_made(transport)
            for i, req in enumerate(requests):
                held = while_held is not None and i == len(requests) - 1
                if held:
                    runtime.gate.clear()  # type: ignore[union-attr]
                proto.data_received(req)
                if held:
                    for _ in range(50):
                        await asyncio.sleep(0.01)
                    while_held(proto)
                    runtime.gate.set()  # type: ignore[union-attr]
                for _ in range(500):  # bounded: the batch thread answers within a few loop turns
                    await asyncio.sleep(0.002)
                    cycle = proto.cycle
                    if transport.closed or (not proto.pipeline and (cycle is None or cycle.response_complete)):
                        break
            for _ in range(5):
                await asyncio.sleep(0.002)
            proto.connection_lost(None)
            counted = parse_metrics(app.metrics.exposition().decode()).requests_by_code
            return transport.writes, transport.closed, counted
        finally:
            await app.shutdown()

    return asyncio.run(run())


@pytest.mark.parametrize("requests", [
    [ROW, COLUMNAR, ROW],
    [BAD_JSON, ROW, WRONG_WIDTH, NOT_FINITE, TEXT, ROW],
    [GET, STATUS, ROW],
    [CLOSE],
    [HTTP10],
    [CONTINUE, ROW],
    [CHUNKED, ROW],
    [ROW + COLUMNAR + ROW],  # pipelined: three requests in one read
    [ROW[:40], ROW[40:] + ROW],  # a head split across reads, then a body completed with another request
], ids=["predict", "bad-input", "other-routes", "close", "http10", "100-continue", "chunked", "pipelined", "split"])
def test_direct_route_sends_the_same_bytes_as_the_asgi_path(requests: list[bytes]) -> None:
    via_asgi, asgi_closed, asgi_counted = drive(False, requests)
    direct, direct_closed, direct_counted = drive(True, requests)
    assert b"".join(direct) == b"".join(via_asgi)
    assert direct_closed == asgi_closed
    assert direct_counted == asgi_counted
    assert len(direct) <= len(via_asgi)


def test_a_prediction_leaves_in_one_write_and_is_counted() -> None:
    writes, closed, counted = drive(True, [ROW, COLUMNAR, CLOSE])
    assert len(writes) == 3 and closed  # the ASGI path writes head and body apart: 6
    for w, want in zip(writes, ([[1.5] * 3], [[2.5] * 3, [3.5] * 3], [[4.5] * 3]), strict=True):
        head, _, body = w.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"content-type: application/json" in head
        assert json.loads(body) in ({"predictions": want}, {"outputs": want})
    assert b"connection: close" in writes[-1]
    assert counted == {"200": 3.0}
    # Bad input goes through the app (two writes: head, then body) with its own message.
    writes, _, counted = drive(True, [WRONG_WIDTH])
    assert writes[0].startswith(b"HTTP/1.1 400 ") and b"error" in b"".join(writes) and counted == {"400": 1.0}


def test_a_graceful_shutdown_closes_the_connection_after_the_queued_answer() -> None:
    results = [drive(direct, [ROW, ROW], runtime=EchoRuntime(), while_held=lambda proto: proto.shutdown())
               for direct in (False, True)]
    (via_asgi, asgi_closed, _), (direct_writes, direct_closed, counted) = results
    assert b"".join(direct_writes) == b"".join(via_asgi)
    assert direct_closed and asgi_closed
    assert b"".join(direct_writes).count(b"HTTP/1.1 200 OK") == 2
    assert direct_writes[-1].count(b"connection: close") == 1 and counted == {"200": 2.0}
