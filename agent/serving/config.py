"""Serving parameters: the knobs a user tunes, validated once at the boundary.

The batching names follow TensorFlow Serving's ``BatchingParameters`` so users
who know TF Serving recognise them. A ``ServingConfig`` is plain data: the CLI
builds one from flags (or a JSON file exported by a tuning sweep), the process
helper passes it to a job, and the registry stores its ``to_dict()``.
"""

from __future__ import annotations

import itertools
import json
import os
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from runs.configs import known_fields, plain_dict

RUNTIMES = ("keras", "tf-function", "xla", "tflite", "tflite-int8")

# Inclusive ranges for the integer knobs: wide enough for any real setting,
# narrow enough that a typo (an extra zero or three) is caught at start-up.
MAX_BATCH_SIZE_LIMIT = 8192
MAX_BATCH_TIMEOUT_MS = 10_000.0
MAX_BATCH_THREADS = 64
MAX_ENQUEUED_BATCHES_LIMIT = 100_000
MAX_WORKERS = 32
MAX_TF_THREADS = 256
MAX_REQUEST_TIMEOUT_MS = 600_000.0
MIN_BODY_BYTES = 1024
MAX_BODY_BYTES_LIMIT = 1 << 30
MAX_INSTANCES_LIMIT = 1_000_000
MIN_RECEIVE_TIMEOUT_MS = 100.0
MAX_RECEIVE_TIMEOUT_MS = 600_000.0
MIN_HEADER_BYTES = 1024
MAX_HEADER_BYTES_LIMIT = 1 << 20
MAX_HEADERS_LIMIT = 10_000
MAX_CONNECTIONS_LIMIT = 1_000_000


@dataclass(frozen=True)
class ServingConfig:
    """How the endpoint runs a model.

    runtime              which engine executes the model (see RUNTIMES)
    max_batch_size       most rows in one model execution
    batch_timeout_ms     how long a partial batch waits for more rows (0 = run at once)
    allowed_batch_sizes  batch sizes to pad up to (empty = no padding); the last must
                         equal max_batch_size so every batch fits one of them
    num_batch_threads    model executions that may run in parallel, each in its own thread;
                         0 runs every batch on the event loop itself (no thread hand-off:
                         cheapest for tiny models, but the loop waits while the model runs)
    max_enqueued_batches queue bound, in batches of max_batch_size rows; a request that
                         would overflow it is refused at once with 503
    workers              server processes sharing the port, each with its own batcher
    intra_op_threads     TensorFlow/TFLite threads inside one op (0 = library default)
    inter_op_threads     TensorFlow threads across independent ops (0 = library default)
    request_timeout_ms   per-request deadline, answered 504 when passed (0 = none)
    max_body_bytes       largest request body accepted (413 beyond it)
    max_instances        most rows in one request (400 beyond it)
    receive_timeout_ms   time to receive a whole request, head and body (408 and close beyond it;
                         for a new connection counted from the connect)
    max_header_bytes     largest request line + headers (431 and close beyond it)
    max_headers          most header fields in one request (431 and close beyond it)
    max_connections      open connections per server process; a request on a connection
                         beyond it gets 503 and the connection is closed
    """

    runtime: str = "tflite"
    max_batch_size: int = 32
    batch_timeout_ms: float = 2.0
    allowed_batch_sizes: tuple[int, ...] = ()
    num_batch_threads: int = 1
    max_enqueued_batches: int = 64
    workers: int = 1
    intra_op_threads: int = 1
    inter_op_threads: int = 1
    request_timeout_ms: float = 0.0
    max_body_bytes: int = 4 * 1024 * 1024
    max_instances: int = 1024
    receive_timeout_ms: float = 5000.0
    max_header_bytes: int = 32 * 1024
    max_headers: int = 100
    max_connections: int = 1000

    def __post_init__(self) -> None:
        if self.runtime not in RUNTIMES:
            raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}; got {self.runtime!r}")
        _check_int("max_batch_size", self.max_batch_size, 1, MAX_BATCH_SIZE_LIMIT)
        _check_number("batch_timeout_ms", self.batch_timeout_ms, 0.0, MAX_BATCH_TIMEOUT_MS)
        sizes = self.allowed_batch_sizes
        if not isinstance(sizes, tuple):
            object.__setattr__(self, "allowed_batch_sizes", tuple(sizes))
            sizes = self.allowed_batch_sizes
        for s in sizes:
            _check_int("allowed_batch_sizes entry", s, 1, self.max_batch_size)
        if sizes:
            if any(b <= a for a, b in itertools.pairwise(sizes)):
                raise ValueError(f"allowed_batch_sizes must be strictly increasing; got {list(sizes)}")
            if sizes[-1] != self.max_batch_size:
                raise ValueError(
                    f"allowed_batch_sizes must end with max_batch_size ({self.max_batch_size}) so every batch "
                    f"fits one of them; got {list(sizes)}"
                )
        _check_int("num_batch_threads", self.num_batch_threads, 0, MAX_BATCH_THREADS)
        _check_int("max_enqueued_batches", self.max_enqueued_batches, 1, MAX_ENQUEUED_BATCHES_LIMIT)
        _check_int("workers", self.workers, 1, MAX_WORKERS)
        _check_int("intra_op_threads", self.intra_op_threads, 0, MAX_TF_THREADS)
        _check_int("inter_op_threads", self.inter_op_threads, 0, MAX_TF_THREADS)
        _check_number("request_timeout_ms", self.request_timeout_ms, 0.0, MAX_REQUEST_TIMEOUT_MS)
        _check_int("max_body_bytes", self.max_body_bytes, MIN_BODY_BYTES, MAX_BODY_BYTES_LIMIT)
        _check_int("max_instances", self.max_instances, 1, MAX_INSTANCES_LIMIT)
        _check_number("receive_timeout_ms", self.receive_timeout_ms, MIN_RECEIVE_TIMEOUT_MS, MAX_RECEIVE_TIMEOUT_MS)
        _check_int("max_header_bytes", self.max_header_bytes, MIN_HEADER_BYTES, MAX_HEADER_BYTES_LIMIT)
        _check_int("max_headers", self.max_headers, 1, MAX_HEADERS_LIMIT)
        _check_int("max_connections", self.max_connections, 1, MAX_CONNECTIONS_LIMIT)

    @property
    def queue_capacity_rows(self) -> int:
        """Rows that may wait in the queue before new requests are shed."""
        return self.max_enqueued_batches * self.max_batch_size

    @property
    def padding_sizes(self) -> tuple[int, ...]:
        """Batch sizes batches are padded up to (empty = no padding).

        ``allowed_batch_sizes`` when given. Without them, XLA still gets padding to
        powers of two (and max_batch_size): it compiles once per distinct batch
        shape, and unpadded batches of every size from 1 to max_batch_size would
        each trigger a compilation while serving.
        """
        if self.allowed_batch_sizes:
            return self.allowed_batch_sizes
        if self.runtime == "xla":
            powers = [1 << i for i in range(self.max_batch_size.bit_length()) if (1 << i) < self.max_batch_size]
            return (*powers, self.max_batch_size)
        return ()

    @property
    def warmup_batch_sizes(self) -> tuple[int, ...]:
        """Batch sizes run once before the endpoint reports ready."""
        return self.padding_sizes or tuple(sorted({1, self.max_batch_size}))

    def with_changes(self, **changes: Any) -> ServingConfig:
        """A validated copy with some fields replaced."""
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return plain_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ServingConfig:
        values = known_fields(cls, d, "serving config")
        sizes = values.get("allowed_batch_sizes", ())
        if not isinstance(sizes, tuple):
            raise ValueError(f"allowed_batch_sizes must be a list of integers; got {sizes!r}")
        return cls(**values)

    @classmethod
    def from_json_file(cls, path: str | os.PathLike[str]) -> ServingConfig:
        p = Path(path)
        try:
            data = json.loads(p.read_text())
        except OSError as exc:
            raise ValueError(f"{p}: cannot read serving config ({exc.strerror or exc})") from None
        except json.JSONDecodeError as exc:
            raise ValueError(f"{p}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
        return cls.from_dict(data)


def field_names() -> tuple[str, ...]:
    return tuple(f.name for f in fields(ServingConfig))


def _check_int(name: str, value: Any, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer in [{lo}, {hi}]; got {value!r}")
    if not lo <= value <= hi:
        raise ValueError(f"{name} must be in [{lo}, {hi}]; got {value}")


def _check_number(name: str, value: Any, lo: float, hi: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number in [{lo:g}, {hi:g}]; got {value!r}")
    if not lo <= value <= hi:  # also false for NaN
        raise ValueError(f"{name} must be in [{lo:g}, {hi:g}]; got {value}")


DEFAULT_CONFIG = ServingConfig()
# The "no batching" baseline: every request runs alone, at once.
NO_BATCHING = ServingConfig(max_batch_size=1, batch_timeout_ms=0.0, allowed_batch_sizes=())
