"""The tuning acceptance run: sweep the digits model, then confirm the winner against batching off.

    .venv/bin/python bench/tuning_sweep.py [--users 1,16,64] [--step-s 8] [--slo 'p95<=50ms']

1. Trains the digits model (hidden layers from --hidden, default 2048,2048) in a
   temporary state directory. The width matters on a 2-core machine where
   Locust shares the cores with the server: with 128x128 the endpoint's
   unbatched capacity (~4k req/s per core) is above what one Locust core can
   offer, so both configs measure Locust's limit and no tuning can show. With
   2048x2048 (4.3M parameters, still small) each unbatched request streams the
   16 MB weight matrix on its own, as a real model's would, and batching's gain
   is within the load generator's reach.
2. Sweeps 6 serving configs (max_batch_size 1,8,32 x batch_timeout_ms 0,1; the
   tflite runtime) up a 3-level concurrency ladder with the early-stop rule, as
   ``python -m tuning`` does, and prints the table and the recommendation.
3. Re-measures, in a separate confirmation run, the untuned default (batching
   off: max_batch_size=1, timeout 0) and the recommended config, taking turns
   (A, B, A, B) so background load hits both alike, and prints both capacities
   within SLO (best round each) and their ratio.

Targets: the sweep takes at most 10 minutes on a 2-core machine, and the
recommended config's confirmed capacity within SLO is at least 2x batching off's.
The load generator (Locust) runs on the same cores as the server; rows where it
saturated are flagged in the table ("Locust saturated" = the number is Locust's).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from agent.serving.config import NO_BATCHING
from runs.registry import Registry
from tuning.ladder import parse_levels
from tuning.points import Point
from tuning.recommend import format_table
from tuning.sweep import SweepSpec, confirm, create_sweep, load_points, run_sweep

SWEEP_BUDGET_S = 600.0
TARGET_RATIO = 2.0
GRID = {"max_batch_size": [1, 8, 32], "batch_timeout_ms": [0.0, 1.0]}


def _print_point(p: Point) -> None:
    p95 = "n/a" if p.p95_ms is None else f"{p.p95_ms:6.1f} ms"
    cpu = "n/a" if p.cpu_ms_per_request is None else f"{p.cpu_ms_per_request * 1000:5.0f} µs"
    flag = "  (Locust saturated)" if p.saturated else ""
    print(f"  {p.label:<12} {p.load_text:>10} {p.rps:8.1f} req/s  p95 {p95}  CPU/req {cpu}{flag}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", default="1,16,64", help="concurrency ladder (default: 1,16,64)")
    parser.add_argument("--step-s", type=float, default=8.0, help="seconds per load step (default: 8)")
    parser.add_argument("--slo", action="append", default=None,
                        help="constraint(s) (default: p95<=50ms and fail_ratio<=0.01)")
    parser.add_argument("--epochs", type=int, default=10, help="training epochs (default: 10)")
    parser.add_argument("--hidden", default="2048,2048",
                        help="hidden layer sizes of the digits model (default: 2048,2048)")
    parser.add_argument("--processes", type=int, default=0,
                        help="Locust processes per step (0: one; 2: one per core) (default: 0)")
    parser.add_argument("--rounds", type=int, default=2,
                        help="confirmation rounds; the two configs take turns, each keeps its best round (default: 2)")
    args = parser.parse_args()
    slos = tuple(args.slo or ("p95<=50ms", "fail_ratio<=0.01"))
    users = parse_levels(args.users)

    with tempfile.TemporaryDirectory(prefix="tuneswarm-bench-") as tmp:
        os.environ["TUNESWARM_HOME"] = tmp  # child jobs write to the same temporary registry
        registry = Registry(tmp)
        from agent.data import DataSource
        from agent.model import ModelConfig
        from agent.training import train

        t0 = time.monotonic()
        hidden = tuple(int(u) for u in args.hidden.split(","))
        trained = train(ModelConfig(hidden=hidden, epochs=args.epochs, seed=0), DataSource("digits"), registry)
        print(f"trained digits {'x'.join(map(str, hidden))} in {time.monotonic() - t0:.0f}s: test accuracy "
              f"{trained.metrics.get('accuracy', float('nan')):.3f}, {trained.param_count} params", flush=True)

        spec = SweepSpec(model_path=str(trained.model_path), space=GRID, users=users, slos=slos,
                         step_s=args.step_s, base=NO_BATCHING.to_dict(), processes=args.processes)
        run_id = create_sweep(registry, spec, name="bench sweep")
        print(f"\nsweep: {len(GRID['max_batch_size']) * len(GRID['batch_timeout_ms'])} configs x up to "
              f"{len(users)} load levels {list(users)}, {args.step_s:g}s steps, SLO {' and '.join(slos)}", flush=True)
        t1 = time.monotonic()
        status = run_sweep(registry, run_id, on_point=_print_point)
        sweep_s = time.monotonic() - t1
        run = registry.get_run(run_id)
        points = load_points(registry, run_id)
        print()
        print(format_table(points, spec.constraints()))
        rec = run.summary.get("recommendation") or {}
        print()
        for line in rec.get("explanation", []):
            print(line)
        if status != "completed" or not rec.get("met"):
            print(f"\nFAIL: sweep {status}; no recommendation")
            return 1
        best = rec["best"]
        baseline = {"max_batch_size": 1, "batch_timeout_ms": 0.0}
        print(f"\nconfirmation run: batching off vs {best['label']}, same ladder, {args.rounds} alternating "
              f"round(s), best round each", flush=True)
        t2 = time.monotonic()
        confirm_id, confirmed = confirm(registry, spec, [baseline, best["params"]], name="bench confirmation",
                                        rounds=args.rounds, on_point=_print_point)
        confirm_s = time.monotonic() - t2
        by_id = {r.config_id: r for r in confirmed.ranking}
        cap_best = by_id.get(best["config_id"])
        cap_base = confirmed.baseline
        best_rps = cap_best.capacity_rps if cap_best else None
        base_rps = cap_base.capacity_rps if cap_base else None
        print()
        print(format_table(load_points(registry, confirm_id), spec.constraints()))
        print("\n== tuning sweep acceptance ==")
        print(f"sweep time               {sweep_s:6.0f} s  ({len(points)} points; budget {SWEEP_BUDGET_S:.0f} s)")
        print(f"confirmation time        {confirm_s:6.0f} s")
        print(f"sweep capacities         recommended {best['capacity_rps']:.0f} req/s, batching off "
              f"{(rec.get('baseline') or {}).get('capacity_rps') or 0:.0f} req/s")
        print(f"confirmed capacity       recommended ({best['label']}) {best_rps or 0:.0f} req/s within SLO")
        print(f"confirmed capacity       batching off (b1 t0ms) {base_rps or 0:.0f} req/s within SLO")
        ratio = (best_rps / base_rps) if best_rps and base_rps else None
        print(f"ratio                    {ratio:.2f}x (target >= {TARGET_RATIO:g}x)" if ratio else
              "ratio                    n/a")
        if cap_best and cap_best.capacity_point and cap_base and cap_base.capacity_point:
            a, b = cap_base.capacity_point, cap_best.capacity_point
            if a.cpu_ms_per_request and b.cpu_ms_per_request:
                print(f"server CPU per request   {a.cpu_ms_per_request * 1000:.0f} µs -> "
                      f"{b.cpu_ms_per_request * 1000:.0f} µs ({a.cpu_ms_per_request / b.cpu_ms_per_request:.2f}x less)")
        ok = ratio is not None and ratio >= TARGET_RATIO and sweep_s <= SWEEP_BUDGET_S
        print("PASS" if ok else "FAIL")
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
