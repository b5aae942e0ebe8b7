"""How many requests/s one Locust core drives with FastHttpUser, against the endpoint's ceiling handler.

    .venv/bin/python bench/locust_capacity.py [--users 8,32,64] [--run-time 8] [--processes 1,2]

The ceiling handler (``python -m agent.serving --ceiling``) answers every
``:predict`` with a fixed body on the endpoint's HTTP stack, so it is about the
cheapest server we can point Locust at. The server is pinned to one core and
Locust (this process and its children) to another, so neither steals the
other's CPU. For each user count it prints Locust's requests/s, the CPU Locust
used (percent of its one core), requests/s per fully used Locust core, and the
server's CPU per request measured in the same run, which gives the server's
capacity on one core for comparison.

With ``--processes 1,2`` each user count is run with one Locust process and then
with Locust's master and 2 worker processes (``--processes 2``), side by side in
the same run, and the last column gives the ratio to the one-process row. Pinning
is then off (the workers need a core each), so on a 2-core machine the server and
Locust share the cores: read the ratio, not the absolute figures.

Read it as: when a test needs more requests/s than "req/s per Locust core",
add ``--processes`` (or workers on other machines); when Locust CPU reaches
~90% the run measured Locust, not the server.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.serving.config import ServingConfig
from agent.serving.process import start_endpoint, stop_endpoint
from loadtest.runner import LoadTestConfig, run_loadtest
from runs.registry import Registry

SERVER_CORE, LOCUST_CORE = 0, 1


def _pin_tree(pid: int, core: int) -> None:
    proc = psutil.Process(pid)
    for p in [proc, *proc.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            p.cpu_affinity([core])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", default="8,32,64", help="comma-separated user counts to try (default: 8,32,64)")
    parser.add_argument("--run-time", type=float, default=8.0, help="seconds per run (default: 8)")
    parser.add_argument("--processes", default="1",
                        help="comma-separated Locust process counts to compare, e.g. 1,2 (default: 1)")
    args = parser.parse_args()
    users = [int(u) for u in args.users.split(",") if u.strip()]
    process_counts = [int(p) for p in args.processes.split(",") if p.strip()]
    pinned = process_counts == [1] and (os.cpu_count() or 1) >= 2 and hasattr(os, "sched_setaffinity")

    with tempfile.TemporaryDirectory() as tmp:
        registry = Registry(tmp)
        handle = start_endpoint(registry, None, ServingConfig(), ceiling=True, ready_timeout_s=60)
        try:
            if pinned:
                _pin_tree(handle.pid, SERVER_CORE)
                os.sched_setaffinity(0, {LOCUST_CORE})  # Locust jobs started from here inherit it
            print(f"ceiling handler at {handle.url}; server on core {SERVER_CORE}, Locust on core {LOCUST_CORE}"
                  if pinned else f"ceiling handler at {handle.url}; not pinned (fewer than 2 cores, or several "
                  "Locust processes)")
            print(f"{'procs':>5} {'users':>5} {'req/s':>9} {'Locust CPU':>10} {'req/s per Locust core':>22} "
                  f"{'server CPU/req':>15} {'server req/s per core':>22} {'ratio L/S':>9}  saturated  vs 1 proc")
            one: dict[int, float] = {}
            for u, procs in ((u, p) for u in users for p in process_counts):
                config = LoadTestConfig(host=handle.url, users=u, spawn_rate=u, run_time_s=args.run_time,
                                        n_features=64, stop_timeout_s=1, processes=0 if procs == 1 else procs)
                result = run_loadtest(registry, config, serve_run_id=handle.run_id)
                s = result.summary
                # Steady part only: the summary's rps includes the ramp; the per-second frames do not.
                frames = [r for r in registry.metric_rows(result.run_id) if r.get("users") == u]
                frames = frames[1:-1] or frames
                rps = sum(r.get("rps") or 0 for r in frames) / len(frames) if frames else 0.0
                if not rps or len(process_counts) > 1:
                    # A master's per-second frames lack the rate: compare whole-run means, for every row alike.
                    rps = float(s.get("rps") or 0)
                cpu_vals = [r["locust_cpu_pct"] for r in frames if r.get("locust_cpu_pct") is not None]
                cpu = sum(cpu_vals) / len(cpu_vals) if cpu_vals else (s.get("locust_cpu_pct") or 0.0)
                per_core = rps / (cpu / 100.0) if cpu > 0 else float("nan")
                server_ms = (s.get("server") or {}).get("cpu_ms_per_request")
                server_cap = 1000.0 / server_ms if server_ms else float("nan")
                server_txt = f"{server_ms:.3f} ms" if server_ms else "n/a"
                if procs == 1:
                    one[u] = rps
                vs = f"{rps / one[u]:.2f}x" if one.get(u) else "-"
                print(f"{procs:>5} {u:>5} {rps:>9.0f} {cpu:>9.0f}% {per_core:>22.0f} {server_txt:>15} "
                      f"{server_cap:>22.0f} {per_core / server_cap:>9.2f}  {'yes' if s.get('saturated') else 'no':>9}"
                      f"  {vs}")
        finally:
            stop_endpoint(registry, handle.run_id)
            registry.close()
    print("req/s per Locust core = steady req/s / Locust CPU share; ratio L/S < 1 means one Locust core "
          "cannot saturate one server core: use --processes.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
