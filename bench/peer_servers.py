"""The servers bench/peers.py compares TuneSwarm with, each serving the digits model.

    python bench/peer_servers.py KIND RUNTIME MODEL PORT

KIND is ``vanilla-ceiling`` (uvicorn's own httptools protocol, raw ASGI, the
endpoint's fixed ceiling answer), ``one-write-ceiling`` (the same on the endpoint's
protocol with one write per response), ``mosec`` or ``litserve``
(polled for readiness by the bench). The peers load the model through TuneSwarm's
own runtimes (agent/serving/runtimes.py), so every server runs the same model file
through the same engine and differs only in the serving stack around it; they batch
up to BATCH_ROWS rows waiting at most BATCH_WAIT_MS, like the endpoint's default
config. This file runs under ``--peer-python`` (which needs the project's
requirements plus bench/requirements.txt) and imports a peer only when serving it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.serving.config import DEFAULT_CONFIG  # noqa: E402

BATCH_ROWS = DEFAULT_CONFIG.max_batch_size
BATCH_WAIT_MS = DEFAULT_CONFIG.batch_timeout_ms
PEER_PATHS = {"mosec": "/inference", "litserve": "/predict"}
RUNTIME_ENV = "PEER_RUNTIME"
MODEL_ENV = "PEER_MODEL"


def _runtime() -> Any:
    from agent.serving.runtimes import make_runtime

    return make_runtime(os.environ[RUNTIME_ENV], os.environ[MODEL_ENV])


def serve_ceiling(port: int, *, one_write: bool) -> None:
    """The endpoint's ceiling handler on uvicorn exactly as shipped (its own httptools protocol),
    or with ``one_write`` on the endpoint's protocol writing each response in one write."""
    import uvicorn

    from agent.serving.app import create_ceiling_app
    from agent.serving.config import ServingConfig
    from agent.serving.protocol import protocol_class
    from agent.serving.server import KEEP_ALIVE_S, READY_PREFIX, bind_socket, url_for

    sock = bind_socket("127.0.0.1", port)
    url = url_for("127.0.0.1", sock.getsockname()[1])
    app = create_ceiling_app(on_ready=lambda _app: print(f"{READY_PREFIX}{url}", flush=True))
    http: Any = protocol_class(ServingConfig(), None, one_write=True) if one_write else "httptools"
    config = uvicorn.Config(app, loop="uvloop", http=http, timeout_keep_alive=KEEP_ALIVE_S, lifespan="on",
                            access_log=False, log_level="warning", server_header=False)
    uvicorn.Server(config).run(sockets=[sock])


def serve_mosec(port: int) -> None:
    from mosec import Server, Worker

    class Predict(Worker):
        def __init__(self) -> None:
            super().__init__()
            self.predict = _runtime().predict

        def deserialize(self, data: bytes) -> Any:
            return orjson.loads(data)["instances"][0]

        def forward(self, data: list) -> list:
            return self.predict(np.asarray(data, dtype=np.float32)).tolist()

        def serialize(self, data: Any) -> bytes:
            return orjson.dumps({"predictions": [data]})

    # mosec reads its own flags from sys.argv.
    sys.argv = [sys.argv[0], "--address", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    server = Server()
    server.append_worker(Predict, num=1, max_batch_size=BATCH_ROWS, max_wait_time=round(BATCH_WAIT_MS),
                         start_method="fork")
    server.run()


def serve_litserve(port: int) -> None:
    import litserve as ls

    api = _lit_api_class()(max_batch_size=BATCH_ROWS, batch_timeout=BATCH_WAIT_MS / 1000.0,
                           api_path=PEER_PATHS["litserve"])
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=1, fast_queue=True)
    server.run(host="127.0.0.1", port=port, num_api_servers=1, log_level="warning", generate_client_file=False)


def _lit_api_class() -> type:
    """LitServe pickles its API into spawned processes: the class must be importable from this module."""
    return LitPredict


try:  # LitServe is optional: the class exists only where it imports
    import litserve as _ls
except ImportError:
    _ls = None

if _ls is not None:

    class LitPredict(_ls.LitAPI):
        def setup(self, device: str) -> None:
            self.model = _runtime().predict

        def decode_request(self, request, **kwargs: Any) -> Any:  # unannotated: LitServe reads types as query params
            return request["instances"][0]

        def batch(self, inputs: list) -> np.ndarray:
            return np.asarray(inputs, dtype=np.float32)

        def predict(self, x: np.ndarray, **kwargs: Any) -> Any:
            return self.model(x)

        def unbatch(self, output: np.ndarray) -> list:
            return list(output)

        def encode_response(self, output: np.ndarray, **kwargs: Any) -> Any:
            return {"predictions": [output.tolist()]}


def main(argv: list[str]) -> int:
    kind, runtime, model, port = argv
    os.environ[RUNTIME_ENV] = runtime
    os.environ[MODEL_ENV] = model
    servers = {"vanilla-ceiling": lambda p: serve_ceiling(p, one_write=False),
               "one-write-ceiling": lambda p: serve_ceiling(p, one_write=True),
               "mosec": serve_mosec, "litserve": serve_litserve}
    servers[kind](int(port))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
