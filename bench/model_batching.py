"""Batching gain at the model: compute per row against batch size, for the digits MLP and the digits CNN.

The endpoint's batching pays off as far as running N rows at once costs less than
N single-row runs. This measures that at the model, side by side in one run, for
the two families the Train page builds, with the two engines that matter when
shipping: a ``tf.function`` graph with a fixed signature (what TF Serving runs
from the SavedModel) and TFLite (TuneSwarm's default runtime). Cells are timed in
interleaved rounds so machine noise hits all of them; TF and TFLite get one
thread each, as the endpoint's defaults.

    python bench/model_batching.py [--rounds 5] [--batch-sizes 1,8,32,128] [--cell-s 0.2]

Prints µs of compute per row and the gain (per-row cost at batch 1 / at batch N).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from agent.data import load_builtin, with_image_shape
from agent.model import ModelConfig, build_model

MODELS = {
    "mlp 128x128": (ModelConfig(hidden=(128, 128)), ()),
    "cnn 16,32 k3 max + 64": (ModelConfig(family="cnn", filters=(16, 32), hidden=(64,)), (8, 8, 1)),
}


def engines(model, shape: tuple[int, ...]) -> dict[str, Callable[[np.ndarray], object]]:
    import tensorflow as tf

    spec = tf.TensorSpec([None, *shape], tf.float32)

    @tf.function(input_signature=[spec], reduce_retracing=True)
    def graph(x):
        return model(x, training=False)

    # The converter prints the SavedModel it writes on the way; keep stdout for the table.
    with warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr):
        warnings.simplefilter("ignore")
        flat = tf.lite.TFLiteConverter.from_keras_model(model).convert()
        interp = tf.lite.Interpreter(model_content=flat, num_threads=1)
    inp = interp.get_input_details()[0]["index"]
    out = interp.get_output_details()[0]["index"]
    state = {"rows": -1}

    def tflite(x: np.ndarray) -> object:
        if len(x) != state["rows"]:
            interp.resize_tensor_input(inp, list(x.shape), strict=False)
            interp.allocate_tensors()
            state["rows"] = len(x)
        interp.set_tensor(inp, x)
        interp.invoke()
        return interp.get_tensor(out)

    return {"tf-graph": lambda x: graph(x).numpy(), "tflite": tflite}


def time_per_row(fn: Callable[[np.ndarray], object], x: np.ndarray, cell_s: float) -> float:
    fn(x)  # the shape's first call (retrace / re-allocate) is not timed
    n, t0 = 0, time.perf_counter()
    while True:
        fn(x)
        n += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= cell_s:
            return elapsed / (n * len(x))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds over every cell (median kept)")
    parser.add_argument("--batch-sizes", default="1,8,32,128", help="batch sizes to time")
    parser.add_argument("--cell-s", type=float, default=0.2, help="seconds per cell per round")
    args = parser.parse_args()
    sizes = [int(s) for s in args.batch_sizes.split(",")]

    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    digits = load_builtin("digits")
    rng = np.random.default_rng(0)
    cells: dict[tuple[str, str, int], list[float]] = {}
    fns: dict[tuple[str, str], Callable[[np.ndarray], object]] = {}
    inputs: dict[tuple[str, int], np.ndarray] = {}
    params: dict[str, int] = {}
    for label, (config, shape) in MODELS.items():
        data = with_image_shape(digits, shape) if shape else digits
        spec = data.spec()
        x_all = spec.shape_rows(data.x)
        model = build_model(config, spec, x_all)
        params[label] = int(model.count_params())
        for engine, fn in engines(model, spec.model_input_shape).items():
            fns[(label, engine)] = fn
        for size in sizes:
            inputs[(label, size)] = np.ascontiguousarray(x_all[rng.choice(len(x_all), size)], np.float32)
    for _ in range(args.rounds):
        for (label, engine), fn in fns.items():
            for size in sizes:
                cells.setdefault((label, engine, size), []).append(
                    time_per_row(fn, inputs[(label, size)], args.cell_s))

    print(f"compute per row (median of {args.rounds} interleaved rounds, 1 thread), µs; gain = per-row cost at "
          "batch 1 / at batch N")
    header = f"{'model':<24}{'params':>8}  {'engine':<9}" + "".join(f"{'b' + str(s):>10}" for s in sizes)
    print(header + "".join(f"{'gain b' + str(s):>10}" for s in sizes[1:]))
    for (label, engine) in fns:
        us = [statistics.median(cells[(label, engine, s)]) * 1e6 for s in sizes]
        gains = [us[0] / u for u in us[1:]]
        print(f"{label:<24}{params[label]:>8}  {engine:<9}" + "".join(f"{u:>10.1f}" for u in us)
              + "".join(f"{g:>9.1f}x" for g in gains))


if __name__ == "__main__":
    main()
