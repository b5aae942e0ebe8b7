"""One write per response: the bounded protocol with ``one_write`` sends what uvicorn's own sends,
in fewer writes.

Both protocols are driven through asyncio's protocol interface (data_received on a
recording transport) with the same requests and the same apps: the bytes on the wire
must be identical, and a complete response must leave in one write.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from agent.serving.config import ServingConfig
from agent.serving.protocol import protocol_class


class RecordingTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: Any) -> None:
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 40000), "sockname": ("127.0.0.1", 8600)}.get(name, default)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def fixed(scope: dict, receive: Any, send: Any) -> None:
    await receive()
    body = b'{"predictions": [[0.1]]}'
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]})
    await send({"type": "http.response.body", "body": body})


async def streamed(scope: dict, receive: Any, send: Any) -> None:
    await receive()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    for part in (b"one,", b"two,", b""):
        await send({"type": "http.response.body", "body": part, "more_body": part != b""})


async def error_no_length(scope: dict, receive: Any, send: Any) -> None:
    await receive()
    await send({"type": "http.response.start", "status": 404, "headers": []})
    await send({"type": "http.response.body", "body": b"nope"})


async def crashes(scope: dict, receive: Any, send: Any) -> None:
    await receive()
    raise RuntimeError("app bug")


GET = b"GET /x HTTP/1.1\r\nhost: a\r\n\r\n"
HEAD = b"HEAD /x HTTP/1.1\r\nhost: a\r\n\r\n"
POST = b"POST /x HTTP/1.1\r\nhost: a\r\ncontent-length: 2\r\n\r\n{}"
CLOSE = b"GET /x HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n"
HTTP10 = b"GET /x HTTP/1.0\r\nhost: a\r\n\r\n"


def serve(protocol: type[HttpToolsProtocol], app: Any, requests: list[bytes]) -> tuple[list[bytes], bool]:
    """Each request sent after the previous answer; (writes, closed)."""

    async def run() -> tuple[list[bytes], bool]:
        config = uvicorn.Config(app, http=protocol, lifespan="off", log_level="critical", server_header=False,
                                date_header=False)
        proto = protocol(config=config, server_state=ServerState(), app_state={}, _loop=asyncio.get_running_loop())
        transport = RecordingTransport()
        proto.connection_made(transport)
        for req in requests:
            proto.data_received(req)
            for _ in range(20):  # the app's task runs in a few loop turns
                await asyncio.sleep(0)
        proto.connection_lost(None)
        return transport.writes, transport.closed

    return asyncio.run(run())


ONE_WRITE = protocol_class(ServingConfig(), None, one_write=True)


@pytest.mark.parametrize(("app", "requests"), [
    (fixed, [GET, POST, GET]),
    (fixed, [HEAD, GET]),
    (fixed, [CLOSE]),
    (fixed, [HTTP10]),
    (streamed, [GET, GET]),
    (streamed, [HEAD]),
    (error_no_length, [GET, GET]),
    (crashes, [POST]),
])
@pytest.mark.parametrize("protocol", [ONE_WRITE, protocol_class(ServingConfig(), None)], ids=["one-write", "endpoint"])
def test_bounded_protocols_send_the_same_bytes_as_uvicorns(app: Any, requests: list[bytes], protocol: Any) -> None:
    vanilla, vanilla_closed = serve(HttpToolsProtocol, app, requests)
    ours, ours_closed = serve(protocol, app, requests)
    assert b"".join(ours) == b"".join(vanilla)
    assert ours_closed == vanilla_closed
    assert len(ours) <= len(vanilla)


def test_a_complete_response_leaves_in_one_write() -> None:
    vanilla, _ = serve(HttpToolsProtocol, fixed, [GET, POST, CLOSE])
    ours, closed = serve(ONE_WRITE, fixed, [GET, POST, CLOSE])
    assert len(vanilla) == 6  # uvicorn: head, then body, per response
    assert len(ours) == 3
    assert all(w.startswith(b"HTTP/1.1 200 OK\r\n") and w.endswith(b'[[0.1]]}') for w in ours)
    assert closed


def test_a_streamed_response_writes_its_head_at_its_first_chunk() -> None:
    ours, _ = serve(ONE_WRITE, streamed, [GET])
    assert ours[0].startswith(b"HTTP/1.1 200 OK\r\n")
    assert ours[0].endswith(b"\r\n\r\n")  # the head alone: the first body message had more to come
    assert b"".join(ours).endswith(b"4\r\none,\r\n4\r\ntwo,\r\n0\r\n\r\n")
