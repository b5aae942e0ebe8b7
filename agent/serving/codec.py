"""Predict request decoding and response encoding (TensorFlow Serving REST format).

Pure functions over bytes and numpy arrays, so every bad input can be tested
without a server. Accepted request bodies (TF Serving's ``api_rest``):

- row format     ``{"instances": [[f1, ..., fn], ...]}`` or, with the input named,
                 ``{"instances": [{"features": [f1, ..., fn]}, ...]}``
- columnar       ``{"inputs": [[f1, ..., fn], ...]}`` or ``{"inputs": {"features": [[...], ...]}}``
- optionally     ``"signature_name": "serving_default"``

Answers are ``{"predictions": [[...], ...]}`` (row) or ``{"outputs": [[...], ...]}``
(columnar); the served models have one output, which TF Serving returns unnamed.

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

import warnings
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import orjson

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
    """Turns parsed ``instances`` rows into the model's float32 input.

    ``batch`` converts many requests' rows in one numpy call and returns None when
    anything is off (wrong type, shape or a non-finite value); the caller then
    runs ``request`` on each request alone, which raises the RequestError that
    request earns. Both apply the rules of ``to_matrix`` to rows that
    ``decode_predict`` handed on unconverted, which it only does for bodies with
    no booleans and at most ``max_instances`` rows (so ``batch`` need not check those).
    """

    __slots__ = ("max_instances", "n_features")

    def __init__(self, n_features: int, max_instances: int) -> None:
        self.n_features = n_features
        self.max_instances = max_instances

    def batch(self, rows: list) -> np.ndarray | None:
        try:
            arr = np.asarray(rows)
        except (ValueError, TypeError):
            return None
        if arr.dtype.kind not in NUMERIC_KINDS or arr.ndim != 2 or arr.shape[1] != self.n_features:
            return None
        x = arr.astype(np.float32, order="C", copy=False)
        return x if np.isfinite(x).all() else None

    def request(self, rows: list) -> np.ndarray:
        return to_matrix(rows, self.n_features, self.max_instances, "instances")


def decode_predict(body: bytes, n_features: int, max_instances: int, input_name: str = "features") -> PredictRequest:
    """Parse and validate a predict body; raise RequestError(400, ...) for anything wrong."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        if not body or body.isspace():  # checked only here: orjson refuses these too
            raise RequestError(400, "empty request body; expected a JSON object with 'instances' or 'inputs'") from None
        raise RequestError(400, f"invalid JSON ({exc}); expected a JSON object with 'instances' or 'inputs' "
                           "(NaN and Infinity are not JSON)") from None
    if type(doc) is dict and len(doc) == 1:
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
    signature = doc.get("signature_name", SIGNATURE_NAME)
    if signature != SIGNATURE_NAME:
        raise RequestError(400, f"unknown signature_name {signature!r}; this model has {SIGNATURE_NAME!r}")
    has_instances = "instances" in doc
    has_inputs = "inputs" in doc
    if has_instances and has_inputs:
        raise RequestError(400, "request has both 'instances' and 'inputs'; send one of them")
    if has_instances:
        value = _unwrap_instances(doc["instances"], input_name)
        where = "instances"
    elif has_inputs:
        value = _unwrap_inputs(doc["inputs"], input_name)
        where = "inputs"
    else:
        keys = ", ".join(sorted(doc)) or "none"
        raise RequestError(400, f"missing 'instances' or 'inputs' (keys found: {keys}); expected "
                           '{"instances": [[...], ...]} or {"inputs": [[...], ...]}')
    x = to_matrix(value, n_features, max_instances, where)
    if (b"true" in body or b"false" in body) and _has_bool(value):
        raise RequestError(400, f"booleans in '{where}'; expected numbers only")
    return PredictRequest(x=x, columnar=has_inputs)


def _unwrap_instances(instances: object, input_name: str) -> object:
    if not isinstance(instances, list):
        raise RequestError(400, f"'instances' is a JSON {_json_type(instances)}; expected a list of rows")
    if instances and isinstance(instances[0], dict):
        # Named-input row format: one object per instance. A per-row (not per-number) step.
        try:
            rows = [inst[input_name] for inst in instances]
        except (KeyError, TypeError):
            raise RequestError(400, f"every instance object must have the key {input_name!r}; expected "
                               f'[{{"{input_name}": [...]}}, ...]') from None
        if any(len(inst) != 1 for inst in instances):
            raise RequestError(400, f"instance objects must hold only {input_name!r} (the model's one input)")
        return rows
    return instances


def _unwrap_inputs(inputs: object, input_name: str) -> object:
    if isinstance(inputs, dict):
        if set(inputs) != {input_name}:
            names = ", ".join(sorted(map(str, inputs))) or "none"
            raise RequestError(400, f"'inputs' names {names}; this model has one input named {input_name!r}")
        return inputs[input_name]
    return inputs


def to_matrix(value: object, n_features: int, max_instances: int, where: str = "instances") -> np.ndarray:
    """Nested lists -> float32 (rows, n_features), with whole-array checks only."""
    if not isinstance(value, list):
        raise RequestError(400, f"'{where}' is a JSON {_json_type(value)}; expected a list of rows "
                           f"of {n_features} numbers")
    if not value:
        raise RequestError(400, f"'{where}' is empty; expected at least one row of {n_features} numbers")
    if len(value) > max_instances:
        raise RequestError(400, f"too many instances in one request ({len(value)}); the limit is {max_instances}")
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError):
        # numpy refuses inhomogeneous nesting outright.
        raise RequestError(400, f"ragged rows in '{where}'; expected every row to have {n_features} "
                           "numbers") from None
    if arr.dtype.kind not in NUMERIC_KINDS:
        if arr.dtype.kind in "US":
            raise RequestError(400, f"strings in '{where}'; expected numbers only")
        if arr.dtype.kind == "b":
            raise RequestError(400, f"booleans in '{where}'; expected numbers only")
        raise RequestError(400, f"ragged rows or non-numeric values (null, objects) in '{where}'; "
                           f"expected every row to be a list of {n_features} numbers")
    if arr.ndim != 2 or arr.shape[1] != n_features:
        got = "x".join(map(str, arr.shape))
        raise RequestError(400, f"wrong shape in '{where}': got {got}; expected rows of {n_features} features "
                           f"(shape N x {n_features})")
    x = arr.astype(np.float32, order="C", copy=False)  # out-of-range values become inf: refused below
    if not np.isfinite(x).all():
        raise RequestError(400, f"non-finite value (NaN, Infinity or out of float32 range) in '{where}'; "
                           "expected finite numbers")
    return x


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
