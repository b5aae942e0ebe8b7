"""Reading a TuneSwarm endpoint's ``/metrics`` back: scrape, parse, and the difference of two scrapes.

A leaf module (no import of ``agent`` or ``loadtest``) so both sides use the same
code: the load-test runner and tuning measure the server with it, the Serve page
charts it, the benchmarks compute CPU per request from it. ``agent.serving.metrics``
writes what this reads.
"""

from __future__ import annotations

import math
import time
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import psutil
from prometheus_client.parser import text_string_to_metric_families

PREFIX = "tuneswarm"
SCRAPE_TIMEOUT_S = 10.0
MAX_SCRAPE_BYTES = 2_000_000
# Scrapes go straight to the local endpoint, never through a proxy from the environment.
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def fetch_metrics_text(url: str, timeout_s: float = SCRAPE_TIMEOUT_S) -> str:
    """The Prometheus text at ``url`` (an http(s) ``.../metrics`` URL); OSError if unreachable."""
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"expected an http(s) URL for /metrics; got {url!r}")
    with _NO_PROXY.open(url, timeout=timeout_s) as resp:
        return resp.read(MAX_SCRAPE_BYTES).decode("utf-8", errors="replace")


def scrape(base_url: str, timeout_s: float = SCRAPE_TIMEOUT_S, at: float | None = None) -> ServerSnapshot:
    """One parsed scrape of ``base_url``/metrics, stamped with ``at`` (default: time.monotonic()).

    Raises OSError (unreachable) or ValueError (not Prometheus text, or not a TuneSwarm endpoint).
    """
    text = fetch_metrics_text(f"{base_url.rstrip('/')}/metrics", timeout_s)
    if f"{PREFIX}_" not in text:
        raise ValueError(f"{base_url} serves no {PREFIX}_ metrics (not a TuneSwarm endpoint)")
    return parse_metrics(text, at=time.monotonic() if at is None else at)


@dataclass(frozen=True)
class HistogramValue:
    count: float = 0.0
    sum: float = 0.0
    buckets: tuple[tuple[float, float], ...] = ()  # (upper bound, cumulative count), +Inf last

    @property
    def mean(self) -> float | None:
        return self.sum / self.count if self.count else None


@dataclass(frozen=True)
class ServerSnapshot:
    """One scrape of ``/metrics``, summed over models. ``at`` is the scrape time (s)."""

    at: float = 0.0
    requests_by_code: dict[str, float] = field(default_factory=dict)
    latency: HistogramValue = HistogramValue()
    shed_latency: HistogramValue = HistogramValue()
    queue_wait: HistogramValue = HistogramValue()
    compute: HistogramValue = HistogramValue()
    batch_size: HistogramValue = HistogramValue()
    padded_rows: float = 0.0
    shed: float = 0.0
    queue_depth_rows: float = 0.0
    queue_depth_requests: float = 0.0
    batches_in_flight: float = 0.0
    process_cpu_seconds: float | None = None

    @property
    def requests(self) -> float:
        return sum(self.requests_by_code.values())


@dataclass(frozen=True)
class SnapshotDelta:
    """What happened between two scrapes."""

    seconds: float
    requests: float
    requests_by_code: dict[str, float]
    ok: float  # 2xx
    shed_503: float
    timeouts_504: float
    client_errors: float  # 4xx
    server_errors: float  # 5xx other than 503/504
    requests_per_s: float | None
    mean_latency_s: float | None
    p50_latency_s: float | None
    p99_latency_s: float | None  # of answers other than 503
    p99_shed_latency_s: float | None  # of 503 answers
    mean_queue_wait_s: float | None
    mean_compute_s: float | None  # per batch
    batches: float
    mean_batch_size: float | None
    cpu_seconds: float | None
    cpu_per_request_s: float | None


def parse_metrics(text: str, at: float = 0.0) -> ServerSnapshot:
    """Parse Prometheus text from ``/metrics`` (raises ValueError on malformed text)."""
    by_code: dict[str, float] = {}
    hists: dict[str, dict[str, object]] = {}
    scalars: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            name, labels, value = s.name, s.labels, float(s.value)
            if name == f"{PREFIX}_requests_total":
                code = labels.get("code", "")
                by_code[code] = by_code.get(code, 0.0) + value
            elif family.type == "histogram" and family.name.startswith(PREFIX):
                h = hists.setdefault(family.name, {"count": 0.0, "sum": 0.0, "buckets": {}})
                if name.endswith("_bucket"):
                    le = float(labels["le"])
                    buckets = h["buckets"]
                    assert isinstance(buckets, dict)
                    buckets[le] = buckets.get(le, 0.0) + value
                elif name.endswith("_count"):
                    h["count"] = float(h["count"]) + value  # type: ignore[arg-type]
                elif name.endswith("_sum"):
                    h["sum"] = float(h["sum"]) + value  # type: ignore[arg-type]
            elif not name.endswith("_created"):
                scalars[name] = scalars.get(name, 0.0) + value

    def hist(short: str) -> HistogramValue:
        h = hists.get(f"{PREFIX}_{short}")
        if h is None:
            return HistogramValue()
        buckets = h["buckets"]
        assert isinstance(buckets, dict)
        return HistogramValue(float(h["count"]), float(h["sum"]),  # type: ignore[arg-type]
                              tuple(sorted(buckets.items())))

    return ServerSnapshot(
        at=at,
        requests_by_code=by_code,
        latency=hist("request_latency_seconds"),
        shed_latency=hist("shed_latency_seconds"),
        queue_wait=hist("queue_wait_seconds"),
        compute=hist("compute_seconds"),
        batch_size=hist("batch_size_rows"),
        padded_rows=scalars.get(f"{PREFIX}_padded_rows_total", 0.0),
        shed=scalars.get(f"{PREFIX}_shed_total", 0.0),
        queue_depth_rows=scalars.get(f"{PREFIX}_queue_depth_rows", 0.0),
        queue_depth_requests=scalars.get(f"{PREFIX}_queue_depth_requests", 0.0),
        batches_in_flight=scalars.get(f"{PREFIX}_batches_in_flight", 0.0),
        process_cpu_seconds=scalars.get("process_cpu_seconds_total"),
    )


def snapshot_delta(a: ServerSnapshot, b: ServerSnapshot) -> SnapshotDelta:
    """Rates and means between scrape ``a`` and a later scrape ``b`` (counters only grow)."""
    seconds = b.at - a.at
    codes = {c: b.requests_by_code.get(c, 0.0) - a.requests_by_code.get(c, 0.0)
             for c in set(a.requests_by_code) | set(b.requests_by_code)}
    codes = {c: v for c, v in codes.items() if v}
    requests = sum(codes.values())

    def count(pred: Callable[[int], bool]) -> float:
        return sum(v for c, v in codes.items() if c.isdigit() and pred(int(c)))

    lat_buckets = _bucket_delta(a.latency.buckets, b.latency.buckets)
    batches = b.batch_size.count - a.batch_size.count
    cpu = None
    if a.process_cpu_seconds is not None and b.process_cpu_seconds is not None:
        cpu = b.process_cpu_seconds - a.process_cpu_seconds
    return SnapshotDelta(
        seconds=seconds,
        requests=requests,
        requests_by_code=codes,
        ok=count(lambda c: 200 <= c < 300),
        shed_503=count(lambda c: c == 503),
        timeouts_504=count(lambda c: c == 504),
        client_errors=count(lambda c: 400 <= c < 500),
        server_errors=count(lambda c: c >= 500 and c not in (503, 504)),
        requests_per_s=requests / seconds if seconds > 0 else None,
        mean_latency_s=_mean_delta(a.latency, b.latency),
        p50_latency_s=histogram_quantile(0.5, lat_buckets),
        p99_latency_s=histogram_quantile(0.99, lat_buckets),
        p99_shed_latency_s=histogram_quantile(0.99, _bucket_delta(a.shed_latency.buckets, b.shed_latency.buckets)),
        mean_queue_wait_s=_mean_delta(a.queue_wait, b.queue_wait),
        mean_compute_s=_mean_delta(a.compute, b.compute),
        batches=batches,
        mean_batch_size=_mean_delta(a.batch_size, b.batch_size),
        cpu_seconds=cpu,
        cpu_per_request_s=(cpu / requests) if cpu is not None and requests > 0 else None,
    )


def _mean_delta(a: HistogramValue, b: HistogramValue) -> float | None:
    n = b.count - a.count
    return (b.sum - a.sum) / n if n > 0 else None


def _bucket_delta(a: Iterable[tuple[float, float]], b: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    before = dict(a)
    return [(le, c - before.get(le, 0.0)) for le, c in b]


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """Quantile estimate from cumulative buckets, interpolating linearly inside a bucket
    (Prometheus' ``histogram_quantile``); None when there are no observations."""
    if not buckets:
        return None
    total = buckets[-1][1]
    if total <= 0:
        return None
    rank = q * total
    prev_le, prev_c = 0.0, 0.0
    for le, c in buckets:
        if c >= rank:
            if math.isinf(le):
                return prev_le  # beyond the last finite bound: report that bound
            if c == prev_c:
                return le
            return prev_le + (le - prev_le) * (rank - prev_c) / (c - prev_c)
        prev_le, prev_c = le, c
    return prev_le


def server_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` and all its live descendants."""
    proc = psutil.Process(pid)
    total = 0.0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            t = p.cpu_times()
        except psutil.Error:
            continue  # exited between listing and reading
        total += t.user + t.system
    return total
