"""What the runner samples each second: Locust's history file, Locust's CPU, the server's /metrics.

Small stateful readers with no Locust import; the runner owns their life.
"""

from __future__ import annotations

import csv
import os
import time
from pathlib import Path

import psutil

from loadtest import results
from runs import metrics_scrape

SCRAPE_TIMEOUT_S = 0.5


class HistoryTail:
    """Reads the complete lines Locust has appended to its history CSV since the last call."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.pending = b""
        self.header: list[str] | None = None

    def read(self) -> list[results.HistoryRow]:
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self.offset)
                chunk = fh.read()
        except FileNotFoundError:
            return []
        self.offset += len(chunk)
        data = self.pending + chunk
        head, sep, rest = data.rpartition(b"\n")
        if not sep:
            self.pending = data
            return []
        self.pending = rest  # a half-written last line waits for its newline
        lines = [ln for ln in head.decode("utf-8", errors="replace").split("\n") if ln.strip()]
        if self.header is None and lines:
            self.header = next(csv.reader([lines[0]]))
            lines = lines[1:]
        if self.header is None:
            return []
        return results.parse_history_lines(self.header, lines)


class CpuMeter:
    """CPU use of a process tree as a percentage of the cores it may use."""

    def __init__(self, root_pid: int, cores: int) -> None:
        self.root_pid = root_pid
        self.cores = max(1, cores)
        self.seen: dict[int, tuple[psutil.Process, float]] = {}
        self.last_wall = time.monotonic()

    def _tree(self) -> list[psutil.Process]:
        try:
            root = psutil.Process(self.root_pid)
            return [root, *root.children(recursive=True)]
        except psutil.Error:
            return []

    def sample(self) -> float | None:
        now = time.monotonic()
        wall = now - self.last_wall
        self.last_wall = now
        used = 0.0
        alive: dict[int, tuple[psutil.Process, float]] = {}
        for proc in self._tree():
            try:
                t = proc.cpu_times()
                total = t.user + t.system
            except psutil.Error:
                continue
            prev = self.seen.get(proc.pid)
            used += total - (prev[1] if prev else 0.0)
            alive[proc.pid] = (proc, total)
        self.seen = alive
        if not alive or wall <= 0:
            return None
        return 100.0 * used / (wall * self.cores)


def load_generator_cores(processes: int) -> int:
    """Cores Locust can keep busy: one per load-generating process."""
    ncpu = os.cpu_count() or 1
    if processes == -1:
        return ncpu
    return max(1, min(processes or 1, ncpu))


class ServerScraper:
    """Per-second server-side figures from a TuneSwarm endpoint's ``/metrics``.

    Other targets (a real TF Serving, anything without ``tuneswarm_`` metrics)
    simply yield nothing. With ``--workers N`` a scrape answers for the worker
    that took the connection, so the figures are a sample, not a total.
    """

    def __init__(self, host: str) -> None:
        self.host = host
        self.previous: metrics_scrape.ServerSnapshot | None = None

    def sample(self) -> dict[str, float | None] | None:
        try:
            snapshot = metrics_scrape.scrape(self.host, timeout_s=SCRAPE_TIMEOUT_S)
        except (OSError, ValueError):  # unreachable, or not our endpoint
            return None
        previous, self.previous = self.previous, snapshot
        if previous is None:
            return None
        try:
            delta = metrics_scrape.snapshot_delta(previous, snapshot)
        except (ValueError, ZeroDivisionError):
            return None
        return server_frame(delta)


def server_frame(delta: metrics_scrape.SnapshotDelta) -> dict[str, float | None]:
    """Registry metrics (``server_*``) from the difference of two scrapes."""

    def ms(seconds: float | None) -> float | None:
        return None if seconds is None else 1000.0 * seconds

    per_s = delta.seconds if delta.seconds and delta.seconds > 0 else None
    return {
        "server_rps": delta.requests_per_s,
        "server_queue_ms": ms(delta.mean_queue_wait_s),
        "server_compute_ms": ms(delta.mean_compute_s),
        "server_batch_size": delta.mean_batch_size,
        "server_shed_per_s": (delta.shed_503 / per_s) if per_s else None,
    }


def server_cpu_seconds(pid: int | None) -> float | None:
    """CPU seconds of the endpoint's process tree, or None when there is none to measure."""
    if pid is None:
        return None
    try:
        return metrics_scrape.server_cpu_seconds(pid)
    except psutil.Error:
        return None
