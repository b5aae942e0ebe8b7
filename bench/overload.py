"""Overload benchmark: goodput and 503s against offered load, server pinned to one core.

    .venv/bin/python bench/overload.py [--model PATH.keras] [--seconds 6] [--connections 32,128,512]

In one run, for a small queue bound (``--max-enqueued-batches 2``) and for the
default config, with the server on core 0 and wrk on core 1 (bench/serving.py's
helpers start both):

- closed loop: wrk with more and more keep-alive connections, from the count that
  saturates the server (32) to 16x it (512);
- open loop: wrk pacing each of 512 connections (Lua ``delay``) to offer 2x and 5x
  the goodput measured at 32 connections; the rate wrk actually offered (requests
  it got answers to, per second) is printed, and a point below 90% of the target
  is marked. A paced keep-alive connection cannot send its next request before its
  answer, and the endpoint does not read a connection whose request it cannot
  queue (README, "Under overload"), so far above capacity such a generator offers
  what the server takes plus what it sheds, not the target.

Per point, from the server's own ``/metrics`` (what the server controls; client
latencies at 512 connections are bounded below by connections / throughput):
goodput (200s/s), 503s/s, batches/s, the same per second of server CPU (what a
whole core delivers, whatever share of it the server got on a shared machine;
the closed-loop points run interleaved for ``--rounds`` and the median round by
that figure is shown), the admitted requests' mean queue wait
against its bound (max_enqueued_batches x mean batch compute + batch_timeout_ms),
p99 of admitted answers and of 503s inside the server, and the server's CPU
share. wrk's own p99 over all answers is printed too.

Reference: the ceiling handler (``--ceiling``: reads the body, answers a fixed
body, no model or batching) on the same server stack (uvicorn + the bounded
protocol), at the saturating connections and at 16x, at the start of each round of
the small queue bound's points: its answers per second of server CPU at 16x / at
saturation (median of the per-round ratios) is what the stack itself (uvicorn,
uvloop, the kernel's TCP) keeps when the connections multiply, whatever the
endpoint does.

Checks (printed, exit 1 when one fails), for the small queue bound at 16x the
saturating connections: goodput per core >= min(0.9, the ceiling's ratio) x that at
saturation (the issue's 0.9 is printed beside it); batches per core the same, scaled
by how much fuller batches are at 16x (a full batch serves more rows, so fewer
batches are needed for the same goodput); mean queue wait <= 2x its bound, 503 p99
<= admitted p99.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.serving.config import DEFAULT_CONFIG, ServingConfig
from bench.serving import (
    MODEL_NAME,
    SATURATED_BUSY,
    Scenario,
    request_bodies,
    start_server,
    stop_server,
    train_digits,
)
from bench.wrk import CLIENT_CORE, parse_wrk, wrk_script
from runs.metrics_scrape import SnapshotDelta, scrape, server_cpu_seconds, snapshot_delta

SATURATING = 32
OPEN_LOOP_CONNECTIONS = 512
OPEN_LOOP_FACTORS = (2, 5)
GOODPUT_RATIO = 0.9
BATCH_RATIO = 0.9
QUEUE_WAIT_FACTOR = 2.0
SHORT_QUEUE = DEFAULT_CONFIG.with_changes(max_enqueued_batches=2)
WRK_TIMEOUT = "10s"
# Each open-loop connection waits this long between requests (ms), set from the target rate.
DELAY_LUA = "\nlocal pause_ms = %(delay)s\ndelay = function() return pause_ms end\n"


@dataclass(frozen=True)
class Point:
    config: str
    load: str  # "32 conn" or "open 2x"
    target_rps: float | None  # open loop: the rate asked for
    offered_rps: float  # requests/s wrk sent (answered)
    delta: SnapshotDelta
    busy: float
    client_p99_ms: float

    @property
    def goodput(self) -> float:
        return self.delta.ok / self.delta.seconds

    @property
    def shed_rps(self) -> float:
        return self.delta.shed_503 / self.delta.seconds

    @property
    def mean_batch(self) -> float:
        return self.delta.ok / self.delta.batches if self.delta.batches else 0.0

    @property
    def batches_per_s(self) -> float:
        return self.delta.batches / self.delta.seconds

    @property
    def cpu_s(self) -> float:
        return self.busy * self.delta.seconds

    @property
    def goodput_per_core(self) -> float:
        """200s per second of server CPU: the goodput of a whole core, whatever share of it the
        server got on a shared machine (DESIGN.md: capacity follows from CPU per request)."""
        return self.delta.ok / self.cpu_s if self.cpu_s else 0.0

    @property
    def batches_per_core(self) -> float:
        return self.delta.batches / self.cpu_s if self.cpu_s else 0.0

    def wait_bound_s(self, cfg: ServingConfig) -> float | None:
        compute = self.delta.mean_compute_s
        if compute is None:
            return None
        return cfg.max_enqueued_batches * compute + cfg.batch_timeout_ms / 1000.0


def run_wrk(port: int, connections: int, seconds: float, script: str) -> tuple[int, float, float]:
    """(answers, seconds, p99 ms over all answers) of one wrk run on the client core."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(script)
    try:
        out = subprocess.run(["taskset", "-c", str(CLIENT_CORE), "wrk", "-t1", f"-c{connections}",
                              f"-d{max(1, round(seconds))}s", "--timeout", WRK_TIMEOUT, "--latency", "-s", f.name,
                              f"http://127.0.0.1:{port}/v1/models/{MODEL_NAME}:predict"],
                             capture_output=True, text=True, timeout=seconds + 60, check=False)
    finally:
        os.unlink(f.name)
    if out.returncode != 0:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stderr.strip()[:300]}")
    requests, secs, _p50, p99, _errors = parse_wrk(out.stdout)
    return requests, secs, p99


def measure_point(cfg_label: str, port: int, pid: int, load: str, connections: int, seconds: float,
                  script: str, target: float | None) -> Point:
    url = f"http://127.0.0.1:{port}"
    before = scrape(url)
    cpu0 = server_cpu_seconds(pid)
    requests, secs, p99 = run_wrk(port, connections, seconds, script)
    cpu1 = server_cpu_seconds(pid)
    delta = snapshot_delta(before, scrape(url))
    return Point(cfg_label, load, target, requests / secs if secs else 0.0, delta,
                 (cpu1 - cpu0) / delta.seconds if delta.seconds else 0.0, p99)


def median_point(rounds: Sequence[Point]) -> Point:
    """The round with the median goodput per core (its other figures come with it)."""
    ordered = sorted(rounds, key=lambda p: p.goodput_per_core)
    return ordered[len(ordered) // 2]


@dataclass(frozen=True)
class ConfigRun:
    points: list[Point]  # the median round of each closed-loop point, then the open-loop points
    rounds: dict[int, list[Point]]  # every round of each closed-loop point, by connections
    ceiling: dict[int, list[CeilingPoint]]  # the reference's rounds, run in the same rounds (may be empty)


def paired(rounds: dict[int, list[Point]], num: int, den: int, figure: str) -> float:
    """Median over rounds of ``figure`` at ``num`` connections / at ``den``, each ratio within one
    round (the two points ran back to back, so a busy phase of the machine hits both)."""
    ratios = sorted(getattr(a, figure) / getattr(b, figure) for a, b in zip(rounds[num], rounds[den], strict=True)
                    if getattr(b, figure))
    return ratios[len(ratios) // 2] if ratios else 0.0


def run_config(label: str, cfg: ServingConfig, model: Path, bodies: Sequence[bytes], conns: Sequence[int],
               seconds: float, rounds: int, ceiling: tuple[int, int] | None = None) -> ConfigRun:
    """Closed-loop points interleaved over ``rounds`` (the median round of each is kept), then
    the open-loop points at multiples of the capacity measured at SATURATING connections.
    ``ceiling`` (pid, port): the reference server, measured at SATURATING and the most
    connections at the start of each round, so its ratio is taken under the same load."""
    proc, port = start_server(Scenario(label, cfg.runtime, cfg), model)
    base = wrk_script(f"/v1/models/{MODEL_NAME}:predict", bodies)
    points: list[Point] = []
    ref: dict[int, list[CeilingPoint]] = {c: [] for c in (SATURATING, max(conns))} if ceiling else {}
    try:
        run_wrk(port, SATURATING, 1, base)  # warm-up
        if ceiling:
            run_wrk(ceiling[1], SATURATING, 1, base)
        per: dict[int, list[Point]] = {c: [] for c in conns}
        for _ in range(rounds):
            if ceiling:
                for c in ref:
                    ref[c].append(measure_ceiling(ceiling[1], ceiling[0], c, seconds, base))
            for c in conns:
                per[c].append(measure_point(label, port, proc.pid, f"{c} conn", c, seconds, base, None))
        for c in conns:
            points.append(median_point(per[c]))
            print_row(points[-1], cfg)
        print_ceiling(ref)
        sat = points[0] if points[0].load == f"{SATURATING} conn" else next(
            p for p in points if p.load == f"{SATURATING} conn")
        capacity = sat.goodput_per_core
        for factor in OPEN_LOOP_FACTORS:
            target = factor * capacity
            delay_ms = 1000.0 * OPEN_LOOP_CONNECTIONS / target
            script = base + DELAY_LUA % {"delay": f"{delay_ms:.3f}"}
            p = measure_point(label, port, proc.pid, f"open {factor}x", OPEN_LOOP_CONNECTIONS, seconds, script,
                              target)
            points.append(p)
            print_row(p, cfg)
    finally:
        stop_server(proc)
    return ConfigRun(points, per, ref)


@dataclass(frozen=True)
class CeilingPoint:
    connections: int
    answers: int
    cpu_s: float
    seconds: float

    @property
    def per_core(self) -> float:
        """Answers per second of server CPU."""
        return self.answers / self.cpu_s if self.cpu_s else 0.0


def measure_ceiling(port: int, pid: int, connections: int, seconds: float, script: str) -> CeilingPoint:
    """One point of the ceiling handler (it has no /metrics: answers are wrk's, all 200s)."""
    cpu0 = server_cpu_seconds(pid)
    answers, secs, _p99 = run_wrk(port, connections, seconds, script)
    return CeilingPoint(connections, answers, server_cpu_seconds(pid) - cpu0, secs)


def print_ceiling(per: dict[int, list[CeilingPoint]]) -> None:
    for c, pts in per.items():
        med = sorted(pts, key=lambda p: p.per_core)[len(pts) // 2]
        rate = med.answers / med.seconds
        print(f"{'ceiling':<10}{f'{c} conn':<10}{rate:>10,.0f}{rate:>9,.0f}{'-':>9}{'-':>9}{med.per_core:>10,.0f}"
              f"{'-':>12}{'-':>9}{'-':>9}{'-':>9}{'-':>9}{med.cpu_s / med.seconds:>6.0%}{'-':>9}", flush=True)


def ceiling_ratio(per: dict[int, list[CeilingPoint]], num: int, den: int) -> float:
    """Median over rounds of the ceiling's answers per core at ``num`` / at ``den`` connections."""
    ratios = sorted(a.per_core / b.per_core for a, b in zip(per[num], per[den], strict=True) if b.per_core)
    return ratios[len(ratios) // 2] if ratios else 0.0


HEADER = (f"{'config':<10}{'load':<10}{'offered/s':>10}{'200/s':>9}{'503/s':>9}{'batch/s':>9}{'200/cpu-s':>10}"
          f"{'batch/cpu-s':>12}{'wait ms':>9}{'bound ms':>9}{'p99 200':>9}{'p99 503':>9}{'busy':>6}{'wrk p99':>9}")


def _ms(s: float | None) -> str:
    return "-" if s is None or math.isnan(s) else f"{s * 1000:.2f}"


def print_row(p: Point, cfg: ServingConfig) -> None:
    offered = f"{p.offered_rps:,.0f}"
    if p.target_rps is not None and p.offered_rps < 0.9 * p.target_rps:
        offered += "*"  # wrk could not offer the target rate
    print(f"{p.config:<10}{p.load:<10}{offered:>10}{p.goodput:>9,.0f}{p.shed_rps:>9,.0f}{p.batches_per_s:>9,.0f}"
          f"{p.goodput_per_core:>10,.0f}{p.batches_per_core:>12,.0f}{_ms(p.delta.mean_queue_wait_s):>9}{_ms(p.wait_bound_s(cfg)):>9}{_ms(p.delta.p99_latency_s):>9}"
          f"{_ms(p.delta.p99_shed_latency_s):>9}{p.busy:>6.0%}{p.client_p99_ms:>9.1f}", flush=True)


def checks(run: ConfigRun, cfg: ServingConfig, far: int, stack: float) -> bool:
    """``stack``: the ceiling's answers per core at ``far`` / at SATURATING connections."""
    by_load = {p.load: p for p in run.points}
    flood = by_load[f"{far} conn"]
    ok = True

    def line(name: str, value: float, limit: float, good: bool) -> None:
        nonlocal ok
        ok = ok and good
        print(f"  {name:<58}{value:>10.2f}  limit {limit:>8.2f}  {'OK' if good else 'MISSED'}")

    # The stack's own loss at `far` connections bounds what the endpoint can keep (module docstring).
    target = min(GOODPUT_RATIO, stack)
    g = paired(run.rounds, far, SATURATING, "goodput_per_core")
    line(f"goodput per core {far} conn / {SATURATING} conn (paired)", g, target, g >= target)
    print(f"  (issue's target {GOODPUT_RATIO:g}: {'met' if g >= GOODPUT_RATIO else 'not met'}; the ceiling "
          f"handler on the same stack keeps {stack:.2f}; endpoint / ceiling {g / stack if stack else 0:.2f})")
    fill = paired(run.rounds, SATURATING, far, "mean_batch")  # rows per batch at saturation / at `far`
    b = paired(run.rounds, far, SATURATING, "batches_per_core")
    line(f"batches per core {far} conn / {SATURATING} conn (paired; x{fill:.2f} fill)", b, target * fill,
         b >= target * fill)
    raw = paired(run.rounds, far, SATURATING, "goodput")
    busy = ", ".join(f"{a.busy:.0%}/{b.busy:.0%}" for a, b in zip(run.rounds[far], run.rounds[SATURATING],
                                                                  strict=True))
    print(f"  (goodput per wall-clock second {far} / {SATURATING} conn, paired: {raw:.2f}; server busy "
          f"{far}/{SATURATING} conn by round: {busy})")
    if all(p.busy < SATURATED_BUSY for p in run.rounds[SATURATING]):
        print(f"  note: the server never got {SATURATED_BUSY:.0%} of its core at {SATURATING} connections (other "
              "processes had it): the per-core figures compare unsaturated points")
    bound = flood.wait_bound_s(cfg)
    wait = flood.delta.mean_queue_wait_s
    if bound is not None and wait is not None:
        line(f"mean queue wait at {far} conn, ms (limit {QUEUE_WAIT_FACTOR:g}x bound)", wait * 1000,
             QUEUE_WAIT_FACTOR * bound * 1000, wait <= QUEUE_WAIT_FACTOR * bound)
    p503, p200 = flood.delta.p99_shed_latency_s, flood.delta.p99_latency_s
    if p503 is not None and p200 is not None:
        line(f"p99 of 503s at {far} conn, ms (limit: p99 of 200s)", p503 * 1000, p200 * 1000, p503 <= p200)
    else:
        print(f"  no 503s at {far} conn: nothing to compare")
    return ok


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/overload.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, help="a trained .keras model (default: train digits 128x128 now)")
    p.add_argument("--seconds", type=float, default=6.0, help="measured seconds per point (default: 6)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the closed-loop points; the "
                   "median round of each is shown (default: 3)")
    p.add_argument("--connections", default="32,128,512",
                   help=f"closed-loop connection counts; must include {SATURATING} (default: 32,128,512)")
    args = p.parse_args(argv)
    conns = sorted({int(c) for c in args.connections.split(",") if c.strip()})
    if SATURATING not in conns:
        p.error(f"--connections must include {SATURATING}, the saturating count the others are compared to")
    if shutil.which("wrk") is None:
        p.error("needs wrk (apt-get install wrk): a Python client cannot offer 16x the server's capacity")
    if len(os.sched_getaffinity(0)) < 2:
        p.error("needs two cores (one for the server, one for the load generator)")
    os.sched_setaffinity(0, {CLIENT_CORE})
    configs = [("queue=2", SHORT_QUEUE), ("default", DEFAULT_CONFIG)]
    with tempfile.TemporaryDirectory(prefix="bench-overload-") as tmp:
        os.environ["TUNESWARM_HOME"] = str(Path(tmp) / "state")  # the bench's servers record their runs here
        model = args.model or train_digits(Path(tmp) / "state")
        bodies = request_bodies(model)
        print(f"model {model}  {args.seconds:g}s per point  server on core 0, wrk on core {CLIENT_CORE}  "
              f"load average {os.getloadavg()[0]:.2f}\n"
              "server-side figures from /metrics; wait = admitted requests' mean queue wait, bound = "
              "max_enqueued_batches x mean batch compute + batch_timeout_ms; * = wrk could not offer the target")
        print(HEADER)
        ref_proc, ref_port = start_server(Scenario("ceiling", "-", DEFAULT_CONFIG, server="ceiling"), model)
        try:  # the reference runs in the scored config's rounds
            results = {label: run_config(label, cfg, model, bodies, conns, args.seconds, args.rounds,
                                         (ref_proc.pid, ref_port) if cfg is SHORT_QUEUE else None)
                       for label, cfg in configs}
        finally:
            stop_server(ref_proc)
    ceiling = results["queue=2"].ceiling
    stack = ceiling_ratio(ceiling, max(conns), SATURATING)
    print(f"\nreference: the ceiling handler on the same stack, answers per core {max(conns)} conn / "
          f"{SATURATING} conn (paired in the queue=2 rounds, median of {args.rounds}): {stack:.2f}  (rounds: "
          + ", ".join(f"{a.per_core / b.per_core:.2f}" for a, b in zip(ceiling[max(conns)], ceiling[SATURATING],
                                                                       strict=True) if b.per_core) + ")")
    ok = True
    for label, cfg in configs:
        scored = cfg is SHORT_QUEUE
        print(f"\nchecks, {label} (max_enqueued_batches {cfg.max_enqueued_batches})"
              + ("" if scored else f", not scored: its queue holds {cfg.queue_capacity_rows} rows, more than "
                 f"{max(conns)} connections ever send, so nothing is shed and the queue wait is what "
                 "connections / throughput makes it") + ":")
        good = checks(results[label], cfg, max(conns), stack)
        if scored:
            ok = ok and good
    print(f"\nload average after: {os.getloadavg()[0]:.2f}  at {time.strftime('%H:%M:%S')}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
