"""The founding example's hand-written loop, eager vs ``tf.function``, vs ``model.fit``, side by side.

All three train the same single neuron ``o = f(Wx + b)`` from the same initial W
and b on the same synthetic ``y = f(Wx + b)`` data with plain gradient descent
(MSE, one learning rate, the same batch size and epochs, rows reshuffled every
epoch). For each it prints samples per CPU-second of this process (far less
disturbed by other work on a shared machine than wall time), samples per wall
second, and the final MSE on the whole training set; ratios are against fit.
Tracing and fit's set-up are excluded: each variant runs one untimed warm-up
epoch, then its weights are reset and the timed epochs run. Runs alternate
(eager, tf.function, fit, eager, ...) so drift in machine load hits all three.

    python bench/training_loop.py [--epochs 5] [--repeats 3] [--batch-size 32] [--activation relu]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from agent.data import make_synthetic
from agent.model import TAPE_ACTIVATIONS
from agent.tape import TapeLoop

VARIANTS = ("eager loop", "tf.function loop", "model.fit")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=5, help="timed epochs per run (default: 5)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each variant (default: 3)")
    parser.add_argument("--batch-size", type=int, default=32, help="rows per gradient step (default: 32)")
    parser.add_argument("--samples", type=int, default=4000, help="training rows (default: 4000)")
    parser.add_argument("--features", type=int, default=8, help="inputs of the neuron (default: 8)")
    parser.add_argument("--activation", choices=TAPE_ACTIVATIONS, default="relu", help="f (default: relu)")
    parser.add_argument("--lr", type=float, default=0.05, help="learning rate (default: 0.05)")
    args = parser.parse_args()

    import keras
    import tensorflow as tf

    data = make_synthetic(n_samples=args.samples, n_features=args.features, activation=args.activation, seed=0)
    x, y = data.x, data.y.reshape(-1, 1)
    keras.utils.set_random_seed(0)
    inputs = keras.Input((args.features,))
    dense = keras.layers.Dense(1, activation=args.activation)
    model = keras.Model(inputs, dense(inputs))
    model.compile(optimizer=keras.optimizers.SGD(args.lr), loss="mse")
    start = [np.asarray(v) for v in model.get_weights()]
    w, b = tf.Variable(start[0]), tf.Variable(start[1])
    loops = {name: TapeLoop(w, b, activation=args.activation, learning_rate=args.lr, compiled=compiled)
             for name, compiled in (("eager loop", False), ("tf.function loop", True))}

    def reset() -> None:
        w.assign(start[0])
        b.assign(start[1])
        model.set_weights(start)

    def run(name: str, epochs: int, seed: int) -> float:
        """Train ``epochs`` from the start weights; returns the final full-data MSE."""
        reset()
        if name == "model.fit":
            model.fit(x, y, epochs=epochs, batch_size=args.batch_size, shuffle=True, verbose=0)
            return float(model.evaluate(x, y, verbose=0, batch_size=4096))
        loop = loops[name]
        loop.fit(x, y, epochs=epochs, batch_size=args.batch_size, seed=seed)
        return loop.loss(x, y)

    initial = loops["tf.function loop"].loss(x, y)
    for name in VARIANTS:
        run(name, 1, seed=0)  # warm-up: traces graphs and builds fit's train function, untimed
    results: dict[str, list[tuple[float, float, float]]] = {name: [] for name in VARIANTS}
    samples = len(x) * args.epochs
    for rep in range(args.repeats):
        for name in VARIANTS:
            t0, c0 = time.perf_counter(), time.process_time()
            final = run(name, args.epochs, seed=rep)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            results[name].append((samples / cpu, samples / wall, final))

    print(f"single neuron y = {args.activation}(Wx + b): {len(x)} rows x {args.features} features, "
          f"batch {args.batch_size}, lr {args.lr:g}, {args.epochs} epochs, median of {args.repeats} runs; "
          f"initial MSE {initial:.4g}")
    ref_cpu = statistics.median(r[0] for r in results["model.fit"])
    header = f"{'variant':<18} {'samples/CPU-s':>14} {'samples/s':>10} {'vs fit (CPU)':>12} {'final MSE':>11}"
    print(header)
    print("-" * len(header))
    for name in VARIANTS:
        cpu_rate = statistics.median(r[0] for r in results[name])
        wall_rate = statistics.median(r[1] for r in results[name])
        final = statistics.median(r[2] for r in results[name])
        print(f"{name:<18} {cpu_rate:>14,.0f} {wall_rate:>10,.0f} {cpu_rate / ref_cpu:>11.2f}x {final:>11.3g}")


if __name__ == "__main__":
    main()
