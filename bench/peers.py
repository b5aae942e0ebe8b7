"""Capacity on one core, side by side with other serving stacks (issue 17).

    .venv/bin/python bench/peers.py [--model PATH.keras] [--seconds 6] [--rounds 3] [--peer-python PATH]

In one run, each server pinned to core 0 and ``wrk -t1 -c32`` pinned to core 1,
one digits row per request, the 128x128 digits model, batching up to 32 rows
waiting at most 2 ms wherever there is batching:

  vanilla ceiling   uvicorn's own httptools protocol, raw ASGI, a fixed answer:
                    the HTTP stack's ceiling as uvicorn ships it
  endpoint ceiling  the same handler on the endpoint's protocol as it serves
                    (agent/serving/protocol.py: admission, limits), ``--ceiling``
  one-write ceiling the same with the protocol's one write per response on
  TuneSwarm         the endpoint, default config, per runtime (tflite, tf-function)
  mosec             mosec (Rust HTTP front, one Python worker), per runtime
  LitServe          LitServe (fast_queue), tflite

The peers serve the same model file through TuneSwarm's own runtimes
(bench/peer_servers.py), so only the serving stack differs. They are optional:
``pip install -r bench/requirements.txt`` (into ``--peer-python``'s environment,
which also needs the project's requirements); a peer that does not import is
skipped with a message. Servers start afresh for each measurement and the
scenarios run interleaved for ``--rounds`` (this machine is shared and noisy): the
table shows each scenario's median round of requests/s, and the ratios are
paired (taken within each round, whose measurements run back to back; median over
rounds). "CPU us/req" is the server process tree's own CPU per request and
"busy" the share of its core it used (below 90% the server was not saturated:
the core was shared, or the stack stalls between batches).

Every ratio is printed twice: of requests/s (what the issue's target counts) and
of the capacity of one core (1 s / CPU per request, from each server's process
tree). On a shared machine the second is the steadier: the scheduler gives a
multi-threaded server (mosec's Rust front) a larger share of a contended core
than a single-threaded one, which moves requests/s but not CPU per request.

Printed ratios: TuneSwarm / mosec per runtime (the issue's target: >= 2.0),
every server / the vanilla ceiling, the endpoint ceiling / the vanilla ceiling
(what the endpoint's protocol costs), the one-write ceiling / the endpoint
ceiling (what one write per response buys), and TuneSwarm / the endpoint
ceiling (how close the endpoint comes to its own stack). Exit code 0 when
TuneSwarm is >= 2.0x mosec on every runtime measured with mosec, 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.serving.config import DEFAULT_CONFIG
from bench.peer_servers import PEER_PATHS
from bench.serving import (
    MODEL_NAME,
    READY_TIMEOUT_S,
    ROOT,
    SATURATED_BUSY,
    SERVER_CORE,
    Scenario,
    request_bodies,
    start_server,
    stop_server,
    train_digits,
)
from bench.wrk import CLIENT_CORE, LoadStats, drive_wrk

PEER_TARGET = 2.0
RUNTIMES = ("tflite", "tf-function")
ENDPOINT_PATH = f"/v1/models/{MODEL_NAME}:predict"
PEER_MODULES = {"mosec": "mosec", "litserve": "litserve"}
POLL_S = 0.25


@dataclass(frozen=True)
class Server:
    label: str
    kind: str  # "vanilla-ceiling", "ceiling", "endpoint", "mosec", "litserve"
    runtime: str  # "-" for the ceilings

    @property
    def key(self) -> str:
        return f"{self.label} {self.runtime}"


@dataclass(frozen=True)
class Measured:
    server: Server
    stats: LoadStats

    @property
    def rps(self) -> float:
        return self.stats.requests / self.stats.seconds if self.stats.seconds else 0.0

    @property
    def cpu_us(self) -> float:
        return 1e6 * self.stats.cpu_s / self.stats.requests if self.stats.requests else float("inf")

    @property
    def busy(self) -> float:
        return self.stats.cpu_s / self.stats.seconds if self.stats.seconds else 0.0


def plan(peers: Sequence[str]) -> list[Server]:
    out = [Server("vanilla ceiling", "vanilla-ceiling", "-"), Server("endpoint ceiling", "ceiling", "-"),
           Server("one-write ceiling", "one-write-ceiling", "-")]
    out += [Server("TuneSwarm", "endpoint", rt) for rt in RUNTIMES]
    if "mosec" in peers:
        out += [Server("mosec 0.9.8", "mosec", rt) for rt in RUNTIMES]
    if "litserve" in peers:
        out.append(Server("LitServe 0.2.19", "litserve", "tflite"))
    return out


def available_peers(python: str) -> tuple[list[str], list[str]]:
    """(peers that import under ``python``, one message per peer that does not)."""
    found, missing = [], []
    for name, module in PEER_MODULES.items():
        out = subprocess.run([python, "-c", f"import {module}"], capture_output=True, text=True, timeout=120,
                             check=False)
        if out.returncode == 0:
            found.append(name)
        else:
            missing.append(f"skipped {name}: not importable by {python} "
                           f"(pip install -r bench/requirements.txt): {out.stderr.strip().splitlines()[-1:]}")
    return found, missing


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pin() -> None:  # every process and thread the server starts inherits this affinity
    os.sched_setaffinity(0, {SERVER_CORE})


def start_peer(server: Server, model: Path, python: str, body: bytes) -> tuple[subprocess.Popen[str], int, str]:
    """Start a server of bench/peer_servers.py and wait (bounded) until it answers a predict."""
    port = free_port()
    argv = [python, str(ROOT / "bench" / "peer_servers.py"), server.kind, server.runtime, str(model), str(port)]
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True,
                            preexec_fn=_pin, start_new_session=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"})
    path = PEER_PATHS.get(server.kind, ENDPOINT_PATH)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{server.key}: exited with code {proc.returncode} before it answered")
        try:
            req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body,
                                         headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=5) as resp:
                if resp.status == 200 and b"predictions" in resp.read():
                    return proc, port, path
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(POLL_S)
    stop_server(proc)
    raise RuntimeError(f"{server.key}: not answering after {READY_TIMEOUT_S:.0f}s")


def measure(server: Server, model: Path, bodies: Sequence[bytes], clients: int, seconds: float, wrk: str,
            python: str) -> Measured:
    if server.kind in ("ceiling", "endpoint"):
        config = DEFAULT_CONFIG.with_changes(runtime=server.runtime if server.kind == "endpoint" else "tflite")
        proc, port = start_server(Scenario(server.key, server.runtime, config, server=server.kind), model)
        path = ENDPOINT_PATH
    else:
        proc, port, path = start_peer(server, model, python, bodies[0])
    try:
        stats = drive_wrk(wrk, port, path, bodies, clients, seconds, proc.pid)
    finally:
        stop_server(proc)
    return Measured(server, stats)


def median_round(rounds: Sequence[Measured]) -> Measured:
    ordered = sorted(rounds, key=lambda m: m.rps)
    return ordered[len(ordered) // 2]


def paired(num: Sequence[Measured], den: Sequence[Measured]) -> float:
    """Median over rounds of num/den requests/s, each taken within one round."""
    ratios = [n.rps / d.rps for n, d in zip(num, den, strict=True) if d.rps]
    return float(np.median(ratios)) if ratios else float("nan")


def paired_per_core(num: Sequence[Measured], den: Sequence[Measured]) -> float:
    """Median over rounds of num/den capacity of one core (1 / CPU per request), each within one round:
    what each would serve with the whole core, whatever share of it the shared machine gave it."""
    ratios = [d.cpu_us / n.cpu_us for n, d in zip(num, den, strict=True) if n.stats.requests and d.stats.requests]
    return float(np.median(ratios)) if ratios else float("nan")


HEADER = (f"{'server':<20}{'runtime':<13}{'req/s':>9}{'x ceiling':>10}{'CPU us/req':>11}{'1-core cap/s':>13}"
          f"{'x ceiling':>10}{'busy':>6}{'p99 ms':>8}{'errors':>7}")


def row(m: Measured, ceiling: float | None = None, ceiling_core: float | None = None) -> str:
    vs = f"{ceiling:.2f}" if ceiling is not None else "-"
    vs_core = f"{ceiling_core:.2f}" if ceiling_core is not None else "-"
    return (f"{m.server.label:<20}{m.server.runtime:<13}{m.rps:>9,.0f}{vs:>10}{m.cpu_us:>11.1f}"
            f"{1e6 / m.cpu_us:>13,.0f}{vs_core:>10}{m.busy:>6.0%}{m.stats.p99_ms:>8.2f}{m.stats.errors:>7}")


def report(per: dict[Server, list[Measured]]) -> int:
    by_key = {(s.kind, s.runtime): rs for s, rs in per.items()}
    vanilla = by_key[("vanilla-ceiling", "-")]
    own = by_key.get(("ceiling", "-"), vanilla)
    one_write = by_key.get(("one-write-ceiling", "-"))
    print(f"\n== median round per server; 'x ceiling' = paired ratio to the vanilla uvicorn ceiling, of req/s "
          f"and of the capacity of one core (1 s / CPU per request); busy < {SATURATED_BUSY:.0%}: the server "
          "did not have its whole core, and its req/s reads low ==")
    print(HEADER)
    for rs in per.values():
        print(row(median_round(rs), paired(rs, vanilla), paired_per_core(rs, vanilla)))
    print()
    print(f"{'ratio (paired, median over rounds)':<44}{'req/s':>7}{'per core':>10}")

    def line(name: str, num: Sequence[Measured], den: Sequence[Measured], target: str = "") -> None:
        print(f"{name:<44}{paired(num, den):>7.2f}{paired_per_core(num, den):>10.2f}   {target}".rstrip())

    line("endpoint ceiling / vanilla ceiling", own, vanilla, "(what the endpoint's protocol costs)")
    if one_write is not None:
        line("one-write ceiling / endpoint ceiling", one_write, own, "(what one write per response buys)")
    ok = True
    for rt in RUNTIMES:
        ours = by_key.get(("endpoint", rt))
        if ours is None:
            continue
        line(f"TuneSwarm {rt} / endpoint ceiling", ours, own)
        theirs = by_key.get(("mosec", rt))
        if theirs is not None:
            good = paired(ours, theirs) >= PEER_TARGET
            ok = ok and good
            line(f"TuneSwarm {rt} / mosec {rt}", ours, theirs,
                 f"target >= {PEER_TARGET:.1f} (req/s)  {'OK' if good else 'MISSED'}")
        lit = by_key.get(("litserve", rt))
        if lit is not None:
            line(f"TuneSwarm {rt} / LitServe {rt}", ours, lit)
    return 0 if ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python bench/peers.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, help="a trained .keras model (default: train digits 128x128 now)")
    p.add_argument("--seconds", type=float, default=6.0, help="measured seconds per server per round (default: 6)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians and paired ratios (default: 3)")
    p.add_argument("--clients", type=int, default=32, help="wrk connections (default: 32)")
    p.add_argument("--peer-python", default=sys.executable,
                   help="the Python that runs the peers (default: this one); it needs the project's "
                        "requirements and bench/requirements.txt")
    p.add_argument("--no-peers", action="store_true", help="measure the ceilings and TuneSwarm only")
    p.add_argument("--only", default="", help="comma-separated server kinds to measure (vanilla-ceiling, "
                   "ceiling, one-write-ceiling, endpoint, mosec, litserve; default: all; the vanilla ceiling is "
                   "always measured)")
    args = p.parse_args(argv)
    if args.rounds < 1 or args.seconds <= 0 or args.clients < 1:
        p.error("--rounds, --seconds and --clients must be positive")
    if len(os.sched_getaffinity(0)) < 2:
        p.error("needs two cores (one for the servers, one for wrk)")
    wrk = shutil.which("wrk")
    if wrk is None:
        p.error("needs wrk (apt-get install wrk): a Python client cannot saturate these servers")
    os.sched_setaffinity(0, {CLIENT_CORE})
    peers: list[str] = []
    if not args.no_peers:
        peers, missing = available_peers(args.peer_python)
        for line in missing:
            print(line, flush=True)
    servers = plan(peers)
    if args.only:
        kinds = {k.strip() for k in args.only.split(",")} | {"vanilla-ceiling"}
        servers = [s for s in servers if s.kind in kinds]
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-peers-") as tmp:
        os.environ["TUNESWARM_HOME"] = str(Path(tmp) / "state")  # the endpoints' serve runs stay out of the user's
        model = args.model or train_digits(Path(tmp) / "state")
        bodies = request_bodies(model)
        print(f"model {model}  wrk -t1 -c{args.clients} on core {CLIENT_CORE}, servers on core {SERVER_CORE}  "
              f"{args.seconds:g}s x {args.rounds} rounds  batching {DEFAULT_CONFIG.max_batch_size} rows / "
              f"{DEFAULT_CONFIG.batch_timeout_ms:g} ms  load {' '.join(f'{x:.2f}' for x in os.getloadavg())}",
              flush=True)
        per: dict[Server, list[Measured]] = {s: [] for s in servers}
        for rnd in range(args.rounds):
            print(f"-- round {rnd + 1}/{args.rounds}", flush=True)
            for s in servers:
                m = measure(s, model, bodies, args.clients, args.seconds, wrk, args.peer_python)
                per[s].append(m)
                print(row(m), flush=True)
    code = report(per)
    print(f"took {time.monotonic() - started:.0f}s  load {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return code


if __name__ == "__main__":
    sys.exit(main())
