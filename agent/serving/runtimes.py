"""Runtimes: the engines that execute a model on a batch (a tuning knob).

- ``keras``        Keras' own batch inference, ``model.predict_on_batch`` (Keras compiles
                   its predict step into a graph on the first call; calling the model
                   eagerly cost ~6x more per batch, all of it Python around the layers)
- ``tf-function``  a ``tf.function`` graph with a fixed ``[None, *shape]`` signature per input
- ``xla``          the same graph compiled with XLA (``jit_compile=True``); one
                   compilation per distinct batch shape, hence ``allowed_batch_sizes``

``tf-function`` and ``xla`` call their one concrete function directly (``direct_call``):
no argument binding or trace lookup per batch, one tensor conversion per input.
- ``tflite``       the TFLite interpreter (float32) on a converted flatbuffer: LiteRT's
                   (``ai_edge_litert``) when installed, else TensorFlow's deprecated ``tf.lite``
- ``tflite-int8``  TFLite with dynamic-range quantized weights (int8 weights,
                   float activations): smaller, usually faster, slightly less exact

Every runtime is built once at start-up (conversions are cached beside the
model, see ``agent.export``) and exposes ``predict(x) -> y`` for the packed float32
batch matrix of ``agent.signature`` (one float input: the rows themselves). A
``.keras`` file runs under every runtime; a SavedModel (its ``serving_default``
signature) under all but ``keras``.
``predict`` is called from the batcher's threads: the TF runtimes are safe to
call concurrently; TFLite interpreters are not, so there is one per thread.
This module's job is TensorFlow, so it imports it (lazily, inside the builders,
so importing ``agent.serving`` stays cheap).
"""

from __future__ import annotations

import functools
import os
import re
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from agent import export
from agent.serving.config import RUNTIMES, ServingConfig
from agent.signature import Signature


class Runtime(Protocol):
    name: str
    n_features: int  # columns of the packed input matrix (agent.signature)
    signature: Signature

    def predict(self, x: np.ndarray) -> np.ndarray: ...


class RuntimeRefusedError(ValueError):
    """This runtime cannot run this model; said at start, with the reason, never on a request."""


class TensorFlowRuntime:
    """keras / tf-function / xla: one callable shared by all batch threads.

    ``fn`` takes the inputs (in signature order) as positional arrays and returns the
    outputs as a list in signature order.
    """

    def __init__(self, name: str, signature: Signature, fn: Callable[..., Any]) -> None:
        self.name = name
        self.signature = signature
        self.n_features = signature.input_width
        self._fn = fn
        # One float32 vector input: the packed batch matrix is that input as it is.
        self._whole = (len(signature.inputs) == 1 and len(signature.inputs[0].shape) == 1
                       and signature.inputs[0].dtype == "float32")
        self._single_output = len(signature.outputs) == 1

    def predict(self, x: np.ndarray) -> np.ndarray:
        outs = self._fn(x) if self._whole else self._fn(*self.signature.unpack(x))
        if self._single_output:
            return np.asarray(outs[0])
        return self.signature.pack_outputs([np.asarray(o) for o in outs])


def direct_call(fn: Any, signature: Signature) -> Callable[..., list[Any]]:
    """``fn`` (a ``tf.function`` with a fixed input signature) as a call of its one concrete
    function, returning the outputs as a flat list in signature order.

    Calling the ``tf.function`` binds the arguments and looks its trace up on every batch
    (~40% of a 128x128 MLP's batch of 32 here); the concrete function skips the lookup, and
    its flat call (``_call_flat``, what its own ``__call__`` ends in) skips the binding too.
    That call is TensorFlow's private API: it is checked once here against the public
    call on a probe batch, and the public call is used whenever it is missing or disagrees.
    """
    import tensorflow as tf

    specs = [tf.TensorSpec([None, *s.shape], tf.as_dtype(s.dtype)) for s in signature.inputs]
    concrete = fn.get_concrete_function(*specs)

    def public(*xs: Any) -> list[Any]:
        return tf.nest.flatten(concrete(*xs))

    flat = getattr(concrete, "_call_flat", None)
    if flat is None:
        return public
    captured = list(concrete.captured_inputs)
    convert = tf.convert_to_tensor

    def direct(*xs: Any) -> list[Any]:
        return flat([convert(a) for a in xs], captured)

    probe = [np.linspace(0.0, 1.0, s.size, dtype=np.float32).reshape((1, *s.shape)).astype(s.dtype)
             for s in signature.inputs]
    try:
        got, want = direct(*probe), public(*probe)
        if len(got) == len(want) and all(np.allclose(np.asarray(g), np.asarray(w))
                                         for g, w in zip(got, want, strict=True)):
            return direct
    except Exception:  # a TF version whose private call differs: the public one is correct
        pass
    return public


class TFLiteRuntime:
    """TFLite interpreter, one per calling thread (interpreters are not thread-safe).

    Tensors are found by name through the flatbuffer's ``serving_default`` signature,
    so a model's several inputs and outputs land where they belong; a flatbuffer
    converted from a one-input one-output Keras model is used by position.
    """

    def __init__(self, name: str, flatbuffer: bytes, num_threads: int | None, signature: Signature) -> None:
        self.name = name
        self.signature = signature
        self.n_features = signature.input_width
        self._flatbuffer = flatbuffer
        self._num_threads = num_threads
        self._local = threading.local()
        self._interpreter()  # a flatbuffer that does not fit the signature is refused here, at start

    @property
    def interpreter_name(self) -> str:
        return interpreter_class()[0]

    def _interpreter(self) -> Any:
        _, interpreter = interpreter_class()
        with warnings.catch_warnings():
            # tf.lite.Interpreter still works in TF 2.21 but warns, on every construction (one per
            # thread), that LiteRT replaces it; the README says so once instead.
            warnings.simplefilter("ignore", UserWarning)
            interp = interpreter(model_content=self._flatbuffer, num_threads=self._num_threads)
        interp.allocate_tensors()
        state = self._local
        state.interp = interp
        state.inputs, state.outputs = _tensor_indices(interp, self.signature)
        state.rows = int(interp.get_input_details()[0]["shape"][0])
        return interp

    def predict(self, x: np.ndarray) -> np.ndarray:
        state = self._local
        interp = getattr(state, "interp", None) or self._interpreter()
        rows = len(x)
        sig = self.signature
        if rows != state.rows:
            # Re-allocation only happens when the batch shape changes; padding to
            # allowed_batch_sizes keeps the shapes to a few.
            for (index, _dtype), spec in zip(state.inputs, sig.inputs, strict=True):
                interp.resize_tensor_input(index, [rows, *spec.shape], strict=False)
            interp.allocate_tensors()
            state.rows = rows
        if len(state.inputs) == 1 and x.ndim == 2 and len(sig.inputs[0].shape) == 1 and x.dtype == state.inputs[0][1]:
            interp.set_tensor(state.inputs[0][0], x)  # the common case: the batch matrix is the input
        else:
            for (index, dtype), arr in zip(state.inputs, sig.unpack(x), strict=True):
                interp.set_tensor(index, np.ascontiguousarray(arr, dtype=dtype))
        interp.invoke()
        # get_tensor copies, so the result stays valid after the next invoke.
        if len(state.outputs) == 1:
            return interp.get_tensor(state.outputs[0])
        return sig.pack_outputs([interp.get_tensor(i) for i in state.outputs])


@functools.cache
def interpreter_class() -> tuple[str, Any]:
    """``("litert", ai_edge_litert's Interpreter)`` when LiteRT is installed, else ``("tf.lite", tf.lite.Interpreter)``.

    Both read the same flatbuffers through the same API; LiteRT is where TFLite lives on.
    """
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        import tensorflow as tf

        return "tf.lite", tf.lite.Interpreter
    return "litert", Interpreter


def _tensor_indices(interp: Any, signature: Signature) -> tuple[list[tuple[int, Any]], list[int]]:
    """(index, dtype) of each input and index of each output, in signature order."""
    if len(signature.inputs) == 1 and len(signature.outputs) <= 1:
        inp = interp.get_input_details()[0]
        return [(inp["index"], inp["dtype"])], [interp.get_output_details()[0]["index"]]
    runner = interp.get_signature_runner(export.SERVING_SIGNATURE)
    ins = runner.get_input_details()
    outs = runner.get_output_details()
    missing = [s.name for s in signature.inputs if s.name not in ins]
    if missing:
        raise RuntimeRefusedError(f"the TFLite conversion has no input named {', '.join(missing)} "
                                  f"(it has {', '.join(sorted(ins))})")
    out_names = [s.name for s in signature.outputs]
    if not set(out_names) <= set(outs):
        # Keras' export names a list of outputs output_0, output_1, ... in model order.
        out_names = [f"output_{i}" for i in range(len(out_names))]
        if not set(out_names) <= set(outs):
            raise RuntimeRefusedError(f"the TFLite conversion's outputs ({', '.join(sorted(outs))}) do not "
                                      "match the model's")
    return ([(ins[s.name]["index"], ins[s.name]["dtype"]) for s in signature.inputs],
            [outs[n]["index"] for n in out_names])


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


# What "converting" means per runtime (the stage line a page shows while an endpoint starts).
CONVERSIONS = {"keras": "wrapping the Keras model", "tf-function": "tracing a tf.function",
               "xla": "tracing a jit-compiled tf.function", "tflite": "to a TFLite flatbuffer",
               "tflite-int8": "to a quantized TFLite flatbuffer"}


def check_runtime_format(name: str, path: Path) -> None:
    """Refuse, before loading anything, a runtime that cannot take this model format."""
    if name == "keras" and path.is_dir():
        raise RuntimeRefusedError(f"runtime 'keras' needs a .keras model; {path.name} is a SavedModel: "
                                  "use tf-function, xla, tflite or tflite-int8")


StageHook = Callable[..., None]  # on_stage(stage, detail=None): what a slow start-up is doing now


def make_runtime(name: str, model_path: str | os.PathLike[str], config: ServingConfig | None = None,
                 on_stage: StageHook | None = None) -> Runtime:
    """Build runtime ``name`` for the ``.keras`` file or SavedModel directory at ``model_path``.

    Refuses other formats (ModelFormatError) and runtimes that cannot run this model
    (RuntimeRefusedError); either way with a one-line reason, before any request.
    The runtime is tried once on a one-row batch of zeros, so a model the runtime
    cannot execute fails here and not on a client's first request. ``on_stage`` hears
    "loading TensorFlow and the model", then "converting" (with what to), as they begin.
    """
    stage = on_stage or (lambda *args, **kwargs: None)
    if name not in RUNTIMES:
        raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}; got {name!r}")
    config = config or ServingConfig(runtime=name)
    path = export.check_model_path(model_path)
    check_runtime_format(name, path)
    stage("loading TensorFlow and the model")
    configure_tf_threads(config.intra_op_threads, config.inter_op_threads)
    servable = export.load_servable(path)
    runtime: Runtime
    try:
        stage("converting", CONVERSIONS[name])
        if name in ("tflite", "tflite-int8"):
            variant = "int8" if name == "tflite-int8" else "float32"
            flat = export.convert_to_tflite(path, variant, model=servable.model if servable.keras_model else None)
            runtime = TFLiteRuntime(name, Path(flat).read_bytes(), config.intra_op_threads or None,
                                    servable.signature)
        elif name == "keras":
            call = export.keras_batch_call(servable)
            runtime = TensorFlowRuntime(name, servable.signature, lambda *xs: call(list(xs)))
        else:
            fn = export.serving_function(servable, jit_compile=(name == "xla"))
            runtime = TensorFlowRuntime(name, servable.signature, direct_call(fn, servable.signature))
        runtime.predict(np.zeros((1, runtime.n_features), dtype=np.float32))
    except (RuntimeRefusedError, export.ModelFormatError):
        raise
    except Exception as exc:  # TF's converter/compiler errors are pages long: one line says why
        raise RuntimeRefusedError(f"runtime {name!r} cannot run {path.name}: {_refusal_reason(name, exc)}") from None
    return runtime


def _refusal_reason(name: str, exc: BaseException) -> str:
    text = str(exc)
    if name.startswith("tflite"):
        ops = sorted(set(re.findall(r"\b(?:tf\.)?(TensorList\w+|Flex\w+)", text)))
        if ops:
            # Recurrent layers with a dynamic batch lower to TensorList ops, which the
            # TFLite builtins lack and this interpreter has no Flex delegate for.
            return (f"the TFLite conversion needs TensorFlow ops this interpreter lacks ({', '.join(ops[:3])}; "
                    "typical of recurrent layers); use tf-function or xla")
    line = export.first_line(exc)
    return line if len(line) <= 200 else line[:197] + "..."
