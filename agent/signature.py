"""A served model's signature: its named inputs and outputs, their shapes and dtypes.

One frozen dataclass read from the model (a Keras model or a SavedModel's
``serving_default`` function) and used everywhere the model's shape matters: the
endpoint's metadata, the request codec, the runtimes, and the payloads written
beside a model for load tests (``signature.json``, read by ``loadtest`` without
importing this package).

Shapes exclude the batch dimension and must be fixed: TuneSwarm batches rows, so
every row of an input must have the same shape. Numeric dtypes only.

On the way through the batcher every request is one float32 matrix: each input
flattened to ``size`` columns and the inputs side by side (``pack``); the runtime
splits it back (``unpack``). Integer inputs (token ids) survive this exactly up to
2**24, which the codec enforces. A batcher that sees one matrix per request needs
no knowledge of named inputs.

Pure module: no TensorFlow import; ``from_keras`` and ``from_tf_function`` only
read attributes of objects the caller already loaded.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

SIGNATURE_FILENAME = "signature.json"
FLOAT_DTYPES = ("float16", "float32", "float64", "bfloat16")
INT_DTYPES = ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64")
# Integers carried in the float32 batch matrix are exact up to here.
MAX_EXACT_INT = 1 << 24
# TF Serving's DataType enum names, as its JSON metadata shows them.
TF_DTYPE_NAMES = {
    "float16": "DT_HALF", "float32": "DT_FLOAT", "float64": "DT_DOUBLE", "bfloat16": "DT_BFLOAT16",
    "int8": "DT_INT8", "int16": "DT_INT16", "int32": "DT_INT32", "int64": "DT_INT64",
    "uint8": "DT_UINT8", "uint16": "DT_UINT16", "uint32": "DT_UINT32", "uint64": "DT_UINT64",
}
DTYPES_FROM_TF = {v: k for k, v in TF_DTYPE_NAMES.items()}


class SignatureError(ValueError):
    """A model whose inputs or outputs TuneSwarm cannot serve, with the reason."""


@dataclass(frozen=True)
class TensorSpec:
    """One named tensor: ``shape`` without the batch dimension, ``dtype`` a numpy name."""

    name: str
    shape: tuple[int, ...]
    dtype: str

    @property
    def size(self) -> int:
        """Numbers per row (columns in the packed matrix)."""
        return math.prod(self.shape)

    @property
    def is_int(self) -> bool:
        return self.dtype in INT_DTYPES

    def describe(self) -> str:
        """``'tokens' N x 50 int32``: how error messages name what is expected."""
        return f"{self.name!r} N x {' x '.join(map(str, self.shape)) or '(scalar)'} {self.dtype}"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TensorSpec:
        return cls(str(d["name"]), tuple(int(v) for v in d["shape"]), str(d["dtype"]))


@dataclass(frozen=True)
class Signature:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def __post_init__(self) -> None:
        if not self.inputs:
            raise SignatureError("the model has no inputs")
        for kind, specs in (("input", self.inputs), ("output", self.outputs)):
            names = [s.name for s in specs]
            if len(set(names)) != len(names):
                raise SignatureError(f"{kind} names repeat ({', '.join(names)}); expected distinct names")
            for s in specs:
                if s.dtype not in FLOAT_DTYPES + INT_DTYPES:
                    raise SignatureError(f"{kind} {s.name!r} has dtype {s.dtype}; TuneSwarm serves numeric "
                                         "tensors (float or int)")
                if any(d <= 0 for d in s.shape):
                    raise SignatureError(f"{kind} {s.name!r} has shape {_shape_text(s.shape)}; expected a fixed "
                                         "shape (every dimension but the batch known and positive)")

    # -- packing (see the module docstring) ------------------------------------------------------

    @property
    def input_width(self) -> int:
        return sum(s.size for s in self.inputs)

    @property
    def single_input(self) -> TensorSpec | None:
        return self.inputs[0] if len(self.inputs) == 1 else None

    def unpack(self, x: np.ndarray) -> list[np.ndarray]:
        """The packed float32 (N, input_width) matrix -> one array per input, in its shape and dtype."""
        n = len(x)
        arrays = []
        at = 0
        for s in self.inputs:
            part = x[:, at : at + s.size].reshape((n, *s.shape))
            arrays.append(part if s.dtype == "float32" else part.astype(s.dtype))
            at += s.size
        return arrays

    def pack_outputs(self, outputs: Sequence[Any]) -> np.ndarray:
        """The model's outputs (in ``self.outputs`` order) as one float32 (N, total) matrix;
        a single output is returned as it is (no copy)."""
        if len(outputs) == 1:
            return np.asarray(outputs[0])
        arrays = [np.asarray(o) for o in outputs]
        n = len(arrays[0])
        return np.concatenate([a.reshape(n, -1).astype(np.float32, copy=False) for a in arrays], axis=1)

    def split_outputs(self, y: np.ndarray) -> list[np.ndarray]:
        """Inverse of ``pack_outputs``: one array per output, in its shape (and integer dtype)."""
        if len(self.outputs) == 1:
            return [y]
        n = len(y)
        parts = []
        at = 0
        for s in self.outputs:
            part = y[:, at : at + s.size].reshape((n, *s.shape))
            parts.append(part.astype(s.dtype) if s.is_int else part)
            at += s.size
        return parts

    # -- documents -------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {"inputs": [s.to_dict() for s in self.inputs], "outputs": [s.to_dict() for s in self.outputs]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Signature:
        return cls(tuple(TensorSpec.from_dict(s) for s in d["inputs"]),
                   tuple(TensorSpec.from_dict(s) for s in d["outputs"]))

    def write(self, folder: str | Path) -> Path:
        """``signature.json`` in ``folder`` (what the load tester reads without importing agent)."""
        path = Path(folder) / SIGNATURE_FILENAME
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2))
        tmp.replace(path)
        return path

    def metadata(self, name: str, version: str, signature_name: str = "serving_default") -> dict[str, Any]:
        """GetModelMetadataResponse as TF Serving renders it in JSON."""

        def tensor(spec: TensorSpec, tensor_name: str) -> dict[str, Any]:
            return {
                "dtype": TF_DTYPE_NAMES[spec.dtype],
                "tensor_shape": {"dim": [{"size": str(d), "name": ""} for d in (-1, *spec.shape)],
                                 "unknown_rank": False},
                "name": tensor_name,
            }

        inputs = {s.name: tensor(s, f"{signature_name}_{s.name}:0") for s in self.inputs}
        outputs = {s.name: tensor(s, f"StatefulPartitionedCall:{i}") for i, s in enumerate(self.outputs)}
        return {
            "model_spec": {"name": name, "signature_name": "", "version": version},
            "metadata": {"signature_def": {"signature_def": {signature_name: {
                "inputs": inputs, "outputs": outputs, "method_name": "tensorflow/serving/predict"}}}},
        }

    # -- reading models --------------------------------------------------------------------------

    @classmethod
    def flat(cls, n_features: int, output_dim: int | None = None, input_name: str = "features",
             output_name: str = "predictions") -> Signature:
        """One float32 vector in (and, when known, one out): the tabular models TuneSwarm trains."""
        outputs = () if output_dim is None else (TensorSpec(output_name, (output_dim,), "float32"),)
        return cls((TensorSpec(input_name, (n_features,), "float32"),), outputs)

    @classmethod
    def from_keras(cls, model: Any) -> Signature:
        """From a built Keras 3 model: its ``inputs`` (names, shapes, dtypes) and outputs
        (named by ``output_names``, the output layers' names)."""
        inputs = tuple(_spec("input", t.name, t.shape, t.dtype) for t in _flat(model.inputs))
        outs = _flat(model.outputs)
        names = list(getattr(model, "output_names", None) or [])
        if len(names) != len(outs):
            names = [f"output_{i}" for i in range(len(outs))]
        outputs = tuple(_spec("output", n, t.shape, t.dtype) for n, t in zip(names, outs, strict=True))
        return cls(inputs, outputs)

    @classmethod
    def from_tf_function(cls, fn: Any) -> Signature:
        """From a SavedModel signature (a ConcreteFunction with keyword inputs and dict outputs)."""
        args, kwargs = fn.structured_input_signature
        if args:
            raise SignatureError("the serving_default signature takes positional inputs; expected named inputs")
        inputs = tuple(_spec("input", name, s.shape, s.dtype.name) for name, s in sorted(kwargs.items()))
        outs = fn.structured_outputs
        if not isinstance(outs, Mapping):
            raise SignatureError("the serving_default signature does not return named outputs")
        outputs = tuple(_spec("output", name, s.shape, s.dtype.name) for name, s in sorted(outs.items()))
        return cls(inputs, outputs)


def read_signature(folder: str | Path) -> Signature | None:
    path = Path(folder) / SIGNATURE_FILENAME
    if not path.is_file():
        return None
    return Signature.from_dict(json.loads(path.read_text()))


def _flat(tensors: Any) -> list[Any]:
    if isinstance(tensors, Mapping):
        return list(tensors.values())
    if isinstance(tensors, (list, tuple)):
        return list(tensors)
    return [tensors]


def _spec(kind: str, name: str, shape: Any, dtype: Any) -> TensorSpec:
    dims = list(shape) if shape is not None else None
    if dims is None or not dims:
        raise SignatureError(f"{kind} {name!r} has unknown rank or no batch dimension; expected (batch, ...)")
    rest = dims[1:]
    if any(d is None for d in rest):
        raise SignatureError(f"{kind} {name!r} has shape {_shape_text(dims)}; TuneSwarm serves fixed shapes "
                             "(only the batch dimension may be None)")
    dtype_name = str(getattr(dtype, "name", dtype))
    return TensorSpec(str(name).split(":")[0], tuple(int(d) for d in rest), dtype_name)


def _shape_text(shape: Sequence[Any]) -> str:
    return "(" + ", ".join("None" if d is None else str(d) for d in shape) + ")"
