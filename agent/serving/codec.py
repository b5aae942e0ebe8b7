"""Predict request decoding and response encoding (TensorFlow Serving REST format).

Pure functions over bytes and numpy arrays, so every bad input can be tested
without a server. Accepted request bodies (TF Serving's ``api_rest``):

- row format     ``{"instances": [[f1, ..., fn], ...]}`` or, with the input named,
                 ``{"instances": [{"features": [f1, ..., fn]}, ...]}``
- columnar       ``{"inputs": [[f1, ..., fn], ...]}`` or ``{"inputs": {"features": [[...], ...]}}``
- optionally     ``"signature_name": "serving_default"``

For a model with several inputs (``agent.signature``), rows are objects keyed by
input name (``{"instances": [{"a": [...], "b": [...]}, ...]}``) and columns an object
of named arrays (``{"inputs": {"a": [[...], ...], "b": [[...], ...]}}``); every
input is checked against its shape and dtype, and the request becomes one packed
float32 matrix.

Answers are ``{"predictions": [[...], ...]}`` (row) or ``{"outputs": [[...], ...]}``
(columnar) for one output, which TF Serving returns unnamed; several outputs come
keyed by name (``OutputEncoder``).

The hot path does no per-number Python work: orjson parses, numpy converts the
nested lists in C, and the checks are whole-array shape/dtype/finite tests. For
the common body (``{"instances": [[...], ...]}``) even those run once per batch
rather than once per request: ``decode_predict`` hands the parsed rows on
unconverted and ``RowChecker.batch`` converts and checks a whole batch of them in
one numpy call; only when that fails is each request checked on its own
(``RowChecker.request``), so a bad request gets exactly the answer it would get
alone and the others in its batch are served.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import orjson

from agent.signature import MAX_EXACT_INT, Signature, TensorSpec

SIGNATURE_NAME = "serving_default"
# numpy dtype kinds accepted as numbers: signed/unsigned integers and floats.
# Booleans, strings and objects (ragged rows, nulls) are refused.
NUMERIC_KINDS = frozenset("iuf")

# A value beyond float32's range becomes inf in the cast and the request is refused
# with a 400; numpy's warning about it would only be noise in the server log.
# (A filter rather than np.errstate around the cast: cheaper on every request.)
warnings.filterwarnings("ignore", message="overflow encountered in cast", category=RuntimeWarning,
                        module=__name__)


class RequestError(Exception):
    """A client mistake: answered with ``status`` and ``{"error": message}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class PredictRequest(NamedTuple):
    """A decoded predict request (a NamedTuple: immutable and cheap to build per request)."""

    # float32 (rows, n_features), C-contiguous; or, for the common row body, the
    # parsed rows as nested lists, converted and checked with their batch (RowChecker).
    x: np.ndarray | list
    columnar: bool  # answer with "outputs" instead of "predictions"


class RowChecker:
    """Turns parsed ``instances`` rows into the model's packed float32 input.

    ``batch`` converts many requests' rows in one numpy call and returns None when
    anything is off (wrong type, shape or a non-finite value); the caller then
    runs ``request`` on each request alone, which raises the RequestError that
    request earns. Both apply the rules of ``to_matrix`` to rows that
    ``decode_predict`` handed on unconverted, which it only does for bodies with
    no booleans and at most ``max_instances`` rows (so ``batch`` need not check those),
    and only for models with one input (of any fixed shape and numeric dtype).
    """

    __slots__ = ("_flat_float", "max_instances", "n_features", "spec")

    def __init__(self, n_features: int | TensorSpec, max_instances: int) -> None:
        self.spec = _flat_spec(n_features) if isinstance(n_features, int) else n_features
        self.n_features = self.spec.size
        self.max_instances = max_instances
        # The common case (a float vector per row) keeps its own two-line check.
        self._flat_float = len(self.spec.shape) == 1 and not self.spec.is_int

    def batch(self, rows: list) -> np.ndarray | None:
        try:
            arr = np.asarray(rows)
        except (ValueError, TypeError):
            return None
        if self._flat_float:
            if arr.dtype.kind not in NUMERIC_KINDS or arr.ndim != 2 or arr.shape[1] != self.n_features:
                return None
            x = arr.astype(np.float32, order="C", copy=False)
            return x if np.isfinite(x).all() else None
        try:
            return _checked(arr, self.spec, "instances", single=True)
        except RequestError:
            return None

    def request(self, rows: list) -> np.ndarray:
        return to_matrix(rows, self.spec, self.max_instances, "instances")


@functools.lru_cache(maxsize=64)
def _flat_spec(n_features: int, input_name: str = "features") -> TensorSpec:
    return TensorSpec(input_name, (n_features,), "float32")


@functools.lru_cache(maxsize=64)
def _flat_signature(n_features: int, input_name: str = "features") -> Signature:
    return Signature((_flat_spec(n_features, input_name),), ())


def decode_predict(body: bytes, signature: Signature | int, max_instances: int,
                   input_name: str = "features") -> PredictRequest:
    """Parse and validate a predict body; raise RequestError(400, ...) for anything wrong.

    ``signature`` is the model's (an int ``n`` stands for one float input ``input_name``
    of shape ``(n,)``). The result's ``x`` is the packed float32 matrix of
    ``agent.signature`` (or, for the common body of a one-input model, the parsed rows).
    """
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        if not body or body.isspace():  # checked only here: orjson refuses these too
            raise RequestError(400, "empty request body; expected a JSON object with 'instances' or 'inputs'") from None
        raise RequestError(400, f"invalid JSON ({exc}); expected a JSON object with 'instances' or 'inputs' "
                           "(NaN and Infinity are not JSON)") from None
    if type(signature) is int:
        signature = _flat_signature(signature, input_name)
    inputs = signature.inputs
    if type(doc) is dict and len(doc) == 1 and len(inputs) == 1:
        # The common body, {"instances": [[...], ...]}: no signature, no named inputs to
        # unwrap. Its rows are converted and checked with their batch (RowChecker). A
        # body with true or false takes the full path, as numpy would turn booleans
        # mixed with numbers into 1.0/0.0 without a word: "u" and "l" appear in
        # neither the key nor a JSON number, and a one-byte search is the cheapest test.
        value = doc.get("instances")
        if (type(value) is list and value and type(value[0]) is list and len(value) <= max_instances
                and b"u" not in body and b"l" not in body):
            return PredictRequest(value, False)
    if not isinstance(doc, dict):
        raise RequestError(400, f"request body is a JSON {_json_type(doc)}; expected an object with "
                           "'instances' or 'inputs'")
    signature_name = doc.get("signature_name", SIGNATURE_NAME)
    if signature_name != SIGNATURE_NAME:
        raise RequestError(400, f"unknown signature_name {signature_name!r}; this model has {SIGNATURE_NAME!r}")
    has_instances = "instances" in doc
    has_inputs = "inputs" in doc
    if has_instances and has_inputs:
        raise RequestError(400, "request has both 'instances' and 'inputs'; send one of them")
    if has_instances:
        columns = _unwrap_instances(doc["instances"], inputs)
        where = "instances"
    elif has_inputs:
        columns = _unwrap_inputs(doc["inputs"], inputs)
        where = "inputs"
    else:
        keys = ", ".join(sorted(doc)) or "none"
        raise RequestError(400, f"missing 'instances' or 'inputs' (keys found: {keys}); expected "
                           '{"instances": [[...], ...]} or {"inputs": [[...], ...]}')
    single = len(inputs) == 1
    arrays = [to_matrix(value, spec, max_instances, where, single=single)
              for value, spec in zip(columns, inputs, strict=True)]
    if (b"true" in body or b"false" in body) and any(_has_bool(v) for v in columns):
        raise RequestError(400, f"booleans in '{where}'; expected numbers only")
    if single:
        return PredictRequest(x=arrays[0], columnar=has_inputs)
    counts = {spec.name: len(a) for spec, a in zip(inputs, arrays, strict=True)}
    if len(set(counts.values())) > 1:
        found = ", ".join(f"{k}: {v}" for k, v in counts.items())
        raise RequestError(400, f"inputs in '{where}' have different numbers of rows ({found}); expected the same")
    return PredictRequest(x=np.concatenate(arrays, axis=1), columnar=has_inputs)


def _names(inputs: Sequence[TensorSpec]) -> str:
    return ", ".join(repr(s.name) for s in inputs)


def _unwrap_instances(instances: object, inputs: Sequence[TensorSpec]) -> list[object]:
    """Row format -> one value (a list of rows) per input, in signature order."""
    if not isinstance(instances, list):
        raise RequestError(400, f"'instances' is a JSON {_json_type(instances)}; expected a list of rows")
    if instances and isinstance(instances[0], dict):
        # Named-input row format: one object per instance. A per-row (not per-number) step.
        names = [s.name for s in inputs]
        try:
            columns: list[object] = [[inst[name] for inst in instances] for name in names]
        except (KeyError, TypeError):
            example = ", ".join(f'"{n}": [...]' for n in names)
            key = f"key {names[0]!r}" if len(names) == 1 else f"keys {_names(inputs)}"
            raise RequestError(400, f"every instance object must have the {key}; expected "
                               f"[{{{example}}}, ...]") from None
        if any(len(inst) != len(names) for inst in instances):
            if len(names) == 1:
                raise RequestError(400, f"instance objects must hold only {names[0]!r} (the model's one input)")
            raise RequestError(400, f"instance objects must hold only the model's inputs ({_names(inputs)})")
        return columns
    if len(inputs) > 1:
        raise RequestError(400, f"this model has {len(inputs)} inputs ({_names(inputs)}); send each instance "
                           "as an object keyed by input name")
    return [instances]


def _unwrap_inputs(value: object, inputs: Sequence[TensorSpec]) -> list[object]:
    """Columnar format -> one value per input, in signature order."""
    if isinstance(value, dict):
        if set(value) != {s.name for s in inputs}:
            names = ", ".join(sorted(map(str, value))) or "none"
            if len(inputs) == 1:
                raise RequestError(400, f"'inputs' names {names}; this model has one input named {inputs[0].name!r}")
            raise RequestError(400, f"'inputs' names {names}; this model's inputs are {_names(inputs)}")
        return [value[s.name] for s in inputs]
    if len(inputs) > 1:
        raise RequestError(400, f"this model has {len(inputs)} inputs ({_names(inputs)}); send 'inputs' as an "
                           "object of named arrays")
    return [value]


def to_matrix(value: object, spec: TensorSpec | int, max_instances: int, where: str = "instances",
              single: bool = True) -> np.ndarray:
    """One input's nested lists -> float32 (rows, size), with whole-array checks only.

    ``spec`` is the input (an int ``n``: one float input of shape ``(n,)``); with
    ``single`` False the messages name the input, as the model has several.
    """
    if isinstance(spec, int):
        spec = _flat_spec(spec)
    loc = f"'{where}'" if single else f"input {spec.name!r} of '{where}'"
    if not isinstance(value, list):
        raise RequestError(400, f"{loc} is a JSON {_json_type(value)}; expected a list of {_rows_text(spec)}")
    if not value:
        raise RequestError(400, f"{loc} is empty; expected at least one of {_rows_text(spec)}")
    if len(value) > max_instances:
        raise RequestError(400, f"too many instances in one request ({len(value)}); the limit is {max_instances}")
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError):
        # numpy refuses inhomogeneous nesting outright.
        raise RequestError(400, f"ragged rows in {loc}; expected {_rows_text(spec)}") from None
    return _checked(arr, spec, where, single)


def _checked(arr: np.ndarray, spec: TensorSpec, where: str, single: bool) -> np.ndarray:
    loc = f"'{where}'" if single else f"input {spec.name!r} of '{where}'"
    kind = arr.dtype.kind
    if kind not in NUMERIC_KINDS:
        if kind in "US":
            raise RequestError(400, f"strings in {loc}; expected numbers only")
        if kind == "b":
            raise RequestError(400, f"booleans in {loc}; expected numbers only")
        raise RequestError(400, f"ragged rows or non-numeric values (null, objects) in {loc}; "
                           f"expected {_rows_text(spec)}")
    if arr.shape[1:] != spec.shape or arr.ndim != len(spec.shape) + 1:
        got = "x".join(map(str, arr.shape))
        raise RequestError(400, f"wrong shape in {loc}: got {got}; expected {_rows_text(spec)} "
                           f"(input {spec.describe()})")
    n = len(arr)
    if spec.is_int:
        if kind == "f":
            raise RequestError(400, f"non-integer numbers in {loc}; expected integers (input {spec.describe()})")
        info = np.iinfo(spec.dtype)
        low, high = max(int(info.min), -MAX_EXACT_INT), min(int(info.max), MAX_EXACT_INT)
        if arr.size and (int(arr.min()) < low or int(arr.max()) > high):
            raise RequestError(400, f"integer out of range in {loc}: got {int(arr.min())}..{int(arr.max())}; "
                               f"expected {low}..{high} (input {spec.describe()})")
        return arr.reshape(n, -1).astype(np.float32, order="C")
    x = arr.astype(np.float32, order="C", copy=False)  # out-of-range values become inf: refused below
    if not np.isfinite(x).all():
        raise RequestError(400, f"non-finite value (NaN, Infinity or out of float32 range) in {loc}; "
                           "expected finite numbers")
    return x if x.ndim == 2 else x.reshape(n, -1)


def _rows_text(spec: TensorSpec) -> str:
    if len(spec.shape) == 1 and not spec.is_int:
        return f"rows of {spec.shape[0]} features"
    return f"rows of shape {' x '.join(map(str, spec.shape)) or '()'} ({spec.dtype})"


def json_rows(y: np.ndarray) -> list[bytes]:
    """Each row of a batch's outputs as JSON text.

    One orjson call for the whole batch, split at the row boundaries, instead of
    one call per request: the batcher runs this once per batch.
    """
    y = np.ascontiguousarray(y)
    if y.ndim == 2 and y.shape[0] and y.shape[1]:
        # [[r0],[r1],...] -> "r0", "r1", ...: numbers never contain "],[".
        inner = orjson.dumps(y, option=orjson.OPT_SERIALIZE_NUMPY)[2:-2].split(b"],[")
        return [b"[" + r + b"]" for r in inner]
    return [orjson.dumps(r, option=orjson.OPT_SERIALIZE_NUMPY) for r in y]


def encode_predict(rows: Sequence[bytes], columnar: bool) -> bytes:
    """``{"predictions": [...]}`` or ``{"outputs": [...]}`` from the rows' JSON texts (``json_rows``)."""
    return (b'{"outputs":[' if columnar else b'{"predictions":[') + b",".join(rows) + b"]}"


class OutputEncoder:
    """A batch's outputs -> per-request JSON, for the model's one or several outputs.

    ``rows`` runs once per batch (the batcher's ``outputs`` hook) and gives each row
    its JSON text: bytes for one output, a tuple of texts (one per output) for
    several. ``encode`` builds a request's answer from its rows, as TF Serving does:
    one output unnamed (``{"predictions": [row, ...]}`` / ``{"outputs": [row, ...]}``),
    several as objects keyed by output name (``{"predictions": [{"a": .., "b": ..}, ...]}``)
    or, columnar, ``{"outputs": {"a": [...], "b": [...]}}``.
    """

    __slots__ = ("_keys", "signature")

    def __init__(self, signature: Signature) -> None:
        self.signature = signature
        self._keys = [orjson.dumps(s.name) + b":" for s in signature.outputs]

    def rows(self, y: np.ndarray) -> list:
        if len(self._keys) <= 1:
            return json_rows(y)
        return list(zip(*(json_rows(part) for part in self.signature.split_outputs(y)), strict=True))

    def encode(self, rows: Sequence, columnar: bool) -> bytes:
        keys = self._keys
        if len(keys) <= 1:
            return encode_predict(rows, columnar)
        if columnar:
            parts = [k + b"[" + b",".join(r[i] for r in rows) + b"]" for i, k in enumerate(keys)]
            return b'{"outputs":{' + b",".join(parts) + b"}}"
        objects = [b"{" + b",".join(k + v for k, v in zip(keys, r, strict=True)) + b"}" for r in rows]
        return b'{"predictions":[' + b",".join(objects) + b"]}"


def encode_error(message: str) -> bytes:
    return orjson.dumps({"error": message})


def encode_json(doc: object) -> bytes:
    return orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)


def _has_bool(value: object) -> bool:
    """True when nested lists hold a boolean anywhere (only run on bodies with true/false)."""
    if type(value) is bool:
        return True
    return type(value) is list and any(_has_bool(v) for v in value)


def _json_type(value: object) -> str:
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if value is None:
        return "null"
    return "number"
