"""Runtimes: the engines that execute a model on a batch (a tuning knob).

- ``keras``        the Keras model called directly (eager; most Python per batch)
- ``tf-function``  a ``tf.function`` graph with a fixed ``[None, n_features]`` signature
- ``xla``          the same graph compiled with XLA (``jit_compile=True``); one
                   compilation per distinct batch shape, hence ``allowed_batch_sizes``
- ``tflite``       the TFLite interpreter (float32) on a converted flatbuffer
- ``tflite-int8``  TFLite with dynamic-range quantized weights (int8 weights,
                   float activations): smaller, usually faster, slightly less exact

Every runtime is built once at start-up (conversions are cached beside the
model, see ``agent.export``) and exposes ``predict(x) -> y`` for float32 rows.
``predict`` is called from the batcher's threads: the TF runtimes are safe to
call concurrently; TFLite interpreters are not, so there is one per thread.
This module's job is TensorFlow, so it imports it (lazily, inside the builders,
so importing ``agent.serving`` stays cheap).
"""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from agent import export
from agent.serving.config import RUNTIMES, ServingConfig


class Runtime(Protocol):
    name: str
    n_features: int

    def predict(self, x: np.ndarray) -> np.ndarray: ...


class TensorFlowRuntime:
    """keras / tf-function / xla: one callable shared by all batch threads."""

    def __init__(self, name: str, n_features: int, fn: Callable[[Any], Any]) -> None:
        self.name = name
        self.n_features = n_features
        self._fn = fn

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self._fn(x))


class TFLiteRuntime:
    """TFLite interpreter, one per calling thread (interpreters are not thread-safe)."""

    def __init__(self, name: str, flatbuffer: bytes, num_threads: int | None) -> None:
        self.name = name
        self._flatbuffer = flatbuffer
        self._num_threads = num_threads
        self._local = threading.local()
        probe = self._interpreter()
        self.n_features = int(probe.get_input_details()[0]["shape_signature"][-1])

    def _interpreter(self) -> Any:
        import tensorflow as tf

        with warnings.catch_warnings():
            # tf.lite.Interpreter still works in TF 2.21 but warns that LiteRT
            # (ai_edge_litert) will replace it.
            warnings.simplefilter("ignore", UserWarning)
            interp = tf.lite.Interpreter(model_content=self._flatbuffer, num_threads=self._num_threads)
        interp.allocate_tensors()
        state = self._local
        state.interp = interp
        state.inp = interp.get_input_details()[0]["index"]
        state.out = interp.get_output_details()[0]["index"]
        state.rows = int(interp.get_input_details()[0]["shape"][0])
        return interp

    def predict(self, x: np.ndarray) -> np.ndarray:
        state = self._local
        interp = getattr(state, "interp", None) or self._interpreter()
        rows = len(x)
        if rows != state.rows:
            # Re-allocation only happens when the batch shape changes; padding to
            # allowed_batch_sizes keeps the shapes to a few.
            interp.resize_tensor_input(state.inp, [rows, x.shape[1]], strict=False)
            interp.allocate_tensors()
            state.rows = rows
        interp.set_tensor(state.inp, x)
        interp.invoke()
        # get_tensor copies, so the result stays valid after the next invoke.
        return interp.get_tensor(state.out)


def configure_tf_threads(intra_op: int, inter_op: int) -> None:
    """Set TensorFlow's thread pools (0 = TF's default); only possible before TF starts work."""
    import tensorflow as tf

    try:
        if intra_op:
            tf.config.threading.set_intra_op_parallelism_threads(intra_op)
        if inter_op:
            tf.config.threading.set_inter_op_parallelism_threads(inter_op)
    except RuntimeError:
        pass  # TF already initialised in this process (tests building several runtimes)


def make_runtime(name: str, model_path: str | os.PathLike[str], config: ServingConfig | None = None) -> Runtime:
    """Build runtime ``name`` for the ``.keras`` model at ``model_path`` (refuses other formats)."""
    if name not in RUNTIMES:
        raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}; got {name!r}")
    config = config or ServingConfig(runtime=name)
    path = export.check_model_path(model_path)
    configure_tf_threads(config.intra_op_threads, config.inter_op_threads)
    if name in ("tflite", "tflite-int8"):
        variant = "int8" if name == "tflite-int8" else "float32"
        flat = export.convert_to_tflite(path, variant)
        return TFLiteRuntime(name, Path(flat).read_bytes(), config.intra_op_threads or None)
    model = export.load_model(path)
    n_features = _n_features(model, path)
    if name == "keras":

        def call(x: np.ndarray) -> Any:
            return model(x, training=False)

        return TensorFlowRuntime(name, n_features, call)
    fn = export.serving_function(model, n_features, jit_compile=(name == "xla"))
    return TensorFlowRuntime(name, n_features, fn)


def _n_features(model: Any, path: Path) -> int:
    meta = export.load_metadata(path)
    if meta is not None:
        return meta.spec.n_features
    return int(model.input_shape[-1])
