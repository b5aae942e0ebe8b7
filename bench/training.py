"""Throughput of training with metric streaming (and TensorBoard event files) vs plain ``model.fit``, side by side.

Prints samples/s of each and their ratio (target: streaming >= 0.95x plain fit; streaming
plus the TensorBoard callback a training run adds by default, too),
both by wall clock and by this process's CPU time (samples per CPU-second), the
second being far less disturbed by other work on a shared machine. Runs
alternate (plain, streamed, plain, ...) so drift in machine load hits both.

    python bench/training.py [--epochs 5] [--repeats 3] [--batch-size 64]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.data import load_builtin, split
from agent.model import ModelConfig, build_model
from agent.training import make_streamer, make_tensorboard
from runs.registry import Registry


def fit_samples_per_s(config: ModelConfig, splits, spec, callbacks_factory) -> tuple[float, float]:
    """(samples per wall second, samples per CPU second of this process) of one timed fit."""
    model = build_model(config, spec, splits.train.x)
    # One warm-up epoch so graph tracing is not timed.
    model.fit(splits.train.x, splits.train.y, batch_size=config.batch_size, epochs=1, verbose=0)
    callbacks = callbacks_factory()
    t0, c0 = time.perf_counter(), time.process_time()
    model.fit(
        splits.train.x, splits.train.y, validation_data=(splits.val.x, splits.val.y),
        batch_size=config.batch_size, epochs=config.epochs, verbose=0, callbacks=callbacks,
    )
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    samples = len(splits.train.y) * config.epochs
    return samples / elapsed, samples / cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=5, help="epochs per timed fit")
    parser.add_argument("--repeats", type=int, default=3, help="timed fits of each kind")
    parser.add_argument("--batch-size", type=int, default=64, help="training batch size")
    args = parser.parse_args()

    dataset = load_builtin("digits")
    splits = split(dataset, seed=0)
    spec = dataset.spec()
    config = ModelConfig(hidden=(128, 128), epochs=args.epochs, batch_size=args.batch_size)
    with tempfile.TemporaryDirectory() as home:
        registry = Registry(home)
        plain: list[tuple[float, float]] = []
        streamed: list[tuple[float, float]] = []
        boarded: list[tuple[float, float]] = []
        for i in range(args.repeats):
            plain.append(fit_samples_per_s(config, splits, spec, list))
            run_id = registry.create_run("train", status="running")
            streamer = make_streamer(registry, run_id, len(splits.train.y))
            streamed.append(fit_samples_per_s(config, splits, spec, lambda s=streamer: [s]))
            board = make_tensorboard(Path(home) / f"tb{i}")
            if board is not None:
                run_id = registry.create_run("train", status="running")
                streamer = make_streamer(registry, run_id, len(splits.train.y))
                boarded.append(fit_samples_per_s(config, splits, spec, lambda s=streamer, b=board: [s, b]))
            print(f"repeat {i + 1}: plain {plain[-1][0]:,.0f} samples/s ({plain[-1][1]:,.0f}/CPU-s), "
                  f"streamed {streamed[-1][0]:,.0f} samples/s ({streamed[-1][1]:,.0f}/CPU-s)"
                  + (f", + tensorboard {boarded[-1][0]:,.0f} ({boarded[-1][1]:,.0f}/CPU-s)" if boarded else ""))
        print()
        print(f"{'median of ' + str(args.repeats):28}{'samples/s':>14}{'samples/CPU-s':>16}")
        medians = {}
        variants = [("plain model.fit", plain), ("fit + registry streaming", streamed)]
        if boarded:
            variants.append(("streaming + tensorboard", boarded))
        for label, rows in variants:
            medians[label] = (statistics.median(r[0] for r in rows), statistics.median(r[1] for r in rows))
            print(f"{label:28}{medians[label][0]:>14,.0f}{medians[label][1]:>16,.0f}")
        (pw, pc), (sw, sc) = medians["plain model.fit"], medians["fit + registry streaming"]
        print(f"{'ratio streamed / plain':28}{sw / pw:>14.3f}{sc / pc:>16.3f}   (target >= 0.95)")
        if boarded:
            bw, bc = medians["streaming + tensorboard"]
            print(f"{'ratio + tensorboard / plain':28}{bw / pw:>14.3f}{bc / pc:>16.3f}   (target >= 0.95)")


if __name__ == "__main__":
    main()
