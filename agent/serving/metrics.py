"""Endpoint metrics: what ``/metrics`` exposes, and pure helpers to read it back.

Each app owns its own ``CollectorRegistry`` (not prometheus_client's global one),
so several apps in one process (tests) never share counters. The exposition
answers "where does the time go?":

- ``tuneswarm_requests_total{model,code}``          requests by HTTP status
- ``tuneswarm_request_latency_seconds{model}``      end-to-end latency in the server (503s apart)
- ``tuneswarm_shed_latency_seconds{model}``         the same for 503 answers (shed, not ready)
- ``tuneswarm_queue_wait_seconds{model}``           time a request waited for a batch
- ``tuneswarm_compute_seconds{model}``              model execution time per batch
- ``tuneswarm_batch_size_rows{model}``              realised batch size (rows, before padding)
- ``tuneswarm_padded_rows_total{model}``            rows of zero padding computed
- ``tuneswarm_queue_depth_rows{model}``             rows waiting now (and ``..._requests``)
- ``tuneswarm_batches_in_flight{model}``            model executions running now
- ``tuneswarm_shed_total{model}``                   requests refused because the queue was full

plus the process collector (``process_cpu_seconds_total`` ...). With
``--workers N`` each worker has its own registry, and the parent gives them one
folder (``$TUNESWARM_METRICS_DIR``): each worker writes its exposition there
every ``SHARE_INTERVAL_S`` and on every scrape, and the worker that takes a
scrape answers with the sum over all workers (:func:`merge_expositions`), the
others' figures at most that old. prometheus-client's own multiprocess mode would
need its metric classes on the hot path; these histograms are cheaper.

Reading scrapes back (``parse_metrics``, ``snapshot_delta``, ``server_cpu_seconds``)
lives in the leaf module ``runs.metrics_scrape``, which the load-test side uses
without importing ``agent``; the names are re-exported here for the endpoint's side.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from runs.configs import atomic_write_text
from runs.metrics_scrape import (  # noqa: F401 (re-exported: the endpoint side reads its scrapes with these)
    PREFIX,
    HistogramValue,
    ServerSnapshot,
    SnapshotDelta,
    histogram_quantile,
    parse_metrics,
    server_cpu_seconds,
    snapshot_delta,
)

LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075,
    0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)
COMPUTE_BUCKETS = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0,
)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)


SHARED_DIR_ENV = "TUNESWARM_METRICS_DIR"  # set by a --workers parent for its workers: /metrics sums them
SHARE_INTERVAL_S = 0.5  # how often a worker publishes its figures for the others' scrapes
# Samples that are not summed over workers: the earliest start, the largest limit.
_MERGE_MIN = frozenset({"process_start_time_seconds"})
_MERGE_MAX = frozenset({"process_max_fds"})

FOLD_AT = 4096  # observations kept raw before they are folded into bucket counts


class FastHistogram:
    """A histogram whose ``observe`` is a list append; buckets are counted in bulk.

    prometheus_client's Histogram takes a lock and bisects on every observation,
    which is a visible share of the endpoint's CPU per request. Here raw values are
    appended and folded into bucket counts with numpy when a scrape comes (or every
    FOLD_AT values). All calls happen on the server's event loop thread.
    """

    __slots__ = ("bounds", "counts", "pending", "total")

    def __init__(self, bounds: Iterable[float]) -> None:
        self.bounds = np.asarray([*bounds, math.inf], dtype=np.float64)
        self.counts = np.zeros(len(self.bounds), dtype=np.int64)
        self.pending: list[float] = []
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.pending.append(value)
        if len(self.pending) >= FOLD_AT:
            self.fold()

    def observe_many(self, values: list[float]) -> None:
        self.pending += values
        if len(self.pending) >= FOLD_AT:
            self.fold()

    def fold(self) -> None:
        if not self.pending:
            return
        values = np.asarray(self.pending, dtype=np.float64)
        self.pending.clear()
        # "le" buckets are inclusive: a value equal to a bound belongs to that bucket.
        idx = np.searchsorted(self.bounds, values, side="left")
        self.counts += np.bincount(idx, minlength=len(self.bounds))
        self.total += float(values.sum())

    def family(self, name: str, documentation: str, model: str) -> HistogramMetricFamily:
        self.fold()
        cumulative = np.cumsum(self.counts)
        buckets = [(floatToGoString(le), float(c)) for le, c in zip(self.bounds, cumulative, strict=True)]
        fam = HistogramMetricFamily(name, documentation, labels=["model"])
        fam.add_metric([model], buckets, sum_value=self.total)
        return fam


class ServingMetrics:
    """The metrics of one app; also the batcher's ``BatchObserver``.

    The hot path (``request_done``, ``queue_waits``, ``batch_done``) only appends
    and increments plain Python values; ``collect`` builds the exposition when
    ``/metrics`` is scraped.
    """

    def __init__(self, model: str, *, process_metrics: bool = True) -> None:
        self.model = model
        self.by_code: dict[int, int] = {}
        self.latency = FastHistogram(LATENCY_BUCKETS)
        self.shed_latency = FastHistogram(LATENCY_BUCKETS)
        self.waits = FastHistogram(LATENCY_BUCKETS)
        self.compute = FastHistogram(COMPUTE_BUCKETS)
        self.batch_sizes = FastHistogram(BATCH_SIZE_BUCKETS)
        self.padded_rows = 0
        self.shed_total = 0
        self._gauges: dict[str, Callable[[], float]] = {}
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)
        if process_metrics:
            ProcessCollector(registry=self.registry)
        # A worker of --workers N: publish into, and answer scrapes from, the folder the parent shares.
        self.shared_dir: str | None = os.environ.get(SHARED_DIR_ENV) or None

    # -- hot path ----------------------------------------------------------------------------------

    def request_done(self, code: int, seconds: float) -> None:
        by_code = self.by_code
        by_code[code] = by_code.get(code, 0) + 1
        # 503s apart: a flood of instant refusals would otherwise hide the admitted requests' latency.
        (self.shed_latency if code == 503 else self.latency).observe(seconds)

    def shed(self) -> None:
        self.shed_total += 1

    def shed_answered(self, seconds: float) -> None:
        """A request the server's protocol refused from its head (the app never saw it)."""
        self.shed_total += 1
        self.request_done(503, seconds)

    def queue_waits(self, seconds: list[float]) -> None:
        self.waits.observe_many(seconds)

    def batch_done(self, rows: int, padded_rows: int, compute_s: float) -> None:
        self.batch_sizes.observe(rows)
        self.compute.observe(compute_s)
        if padded_rows > rows:
            self.padded_rows += padded_rows - rows

    def watch_queue(self, rows: Callable[[], float], requests: Callable[[], float],
                    in_flight: Callable[[], float]) -> None:
        """Gauges read at scrape time (nothing to update per request)."""
        self._gauges = {"queue_depth_rows": rows, "queue_depth_requests": requests, "batches_in_flight": in_flight}

    # -- exposition ------------------------------------------------------------------------------

    def collect(self) -> Iterator[Metric]:
        m = self.model
        requests = CounterMetricFamily(f"{PREFIX}_requests", "Requests answered, by HTTP status code",
                                       labels=["model", "code"])
        for code, n in sorted(self.by_code.items()):
            requests.add_metric([m, str(code)], n)
        yield requests
        yield self.latency.family(f"{PREFIX}_request_latency_seconds",
                                  "End-to-end request latency inside the server (read body to response sent)", m)
        yield self.shed_latency.family(f"{PREFIX}_shed_latency_seconds",
                                       "Latency inside the server of 503 answers (queue full or not ready)", m)
        yield self.waits.family(f"{PREFIX}_queue_wait_seconds",
                                      "Time a request waited in the batch queue before its first rows ran", m)
        yield self.compute.family(f"{PREFIX}_compute_seconds", "Model execution time per batch", m)
        yield self.batch_sizes.family(f"{PREFIX}_batch_size_rows", "Realised batch size in rows (before padding)", m)
        yield _counter(f"{PREFIX}_padded_rows", "Zero rows added to pad batches to allowed sizes", m, self.padded_rows)
        yield _counter(f"{PREFIX}_shed", "Requests refused at once because the queue was full (503)", m,
                       self.shed_total)
        docs = {"queue_depth_rows": "Rows waiting in the batch queue",
                "queue_depth_requests": "Requests waiting in the batch queue",
                "batches_in_flight": "Model executions running now"}
        for key, doc in docs.items():
            fn = self._gauges.get(key)
            g = GaugeMetricFamily(f"{PREFIX}_{key}", doc, labels=["model"])
            g.add_metric([m], float(fn()) if fn is not None else 0.0)
            yield g

    def exposition(self) -> bytes:
        """This process's figures; in a worker of ``--workers N``, the sum over all workers."""
        own = generate_latest(self.registry)
        if self.shared_dir is None:
            return own
        self.publish(own)
        return merge_expositions(read_shared(self.shared_dir))

    def publish(self, text: bytes | None = None) -> None:
        """Write this worker's exposition into the shared folder (atomically: readers never see half)."""
        if self.shared_dir is not None:
            atomic_write_text(Path(self.shared_dir) / f"worker-{os.getpid()}.prom",
                              generate_latest(self.registry) if text is None else text)


def read_shared(folder: str | os.PathLike[str]) -> list[bytes]:
    """Every worker's last published exposition in ``folder``."""
    texts = []
    for path in sorted(Path(folder).glob("worker-*.prom")):
        try:
            texts.append(path.read_bytes())
        except FileNotFoundError:
            continue  # replaced between listing and reading
    return texts


def merge_expositions(texts: Sequence[bytes]) -> bytes:
    """Several Prometheus text expositions of the same metrics as one: each sample summed over them.

    Counters, histogram buckets, sums and counts, queue gauges and process CPU, memory
    and open files add up; the start time is the earliest and the fd limit the largest.
    A labelled sample only one worker has (a status code only it answered) is kept as is.
    """
    families: dict[str, dict[str, object]] = {}
    for text in texts:
        family: dict[str, object] | None = None
        for line in text.decode().splitlines():
            if line.startswith("# "):
                parts = line.split(" ", 3)
                if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                    family = families.setdefault(parts[2], {"HELP": None, "TYPE": None, "samples": {}})
                    if family[parts[1]] is None:
                        family[parts[1]] = line
                continue
            if not line.strip() or family is None:
                continue
            key, _, value = line.rpartition(" ")
            samples = family["samples"]
            assert isinstance(samples, dict)
            name = key.split("{", 1)[0]
            v = float(value)
            if key not in samples:
                samples[key] = v
            elif name in _MERGE_MIN:
                samples[key] = min(samples[key], v)
            elif name in _MERGE_MAX:
                samples[key] = max(samples[key], v)
            else:
                samples[key] += v
    out: list[str] = []
    for family in families.values():
        out += [str(family[k]) for k in ("HELP", "TYPE") if family[k] is not None]
        samples = family["samples"]
        assert isinstance(samples, dict)
        out += [f"{key} {floatToGoString(v)}" for key, v in samples.items()]
    return ("\n".join(out) + "\n").encode()


def _counter(name: str, doc: str, model: str, value: float) -> CounterMetricFamily:
    c = CounterMetricFamily(name, doc, labels=["model"])
    c.add_metric([model], value)
    return c
