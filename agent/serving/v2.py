"""Open Inference Protocol (KServe v2 / Triton HTTP) request decoding and response encoding.

Pure functions over bytes and numpy arrays, beside ``codec`` (TF Serving's format),
so every bad input is testable without a server and gets the same checks and
messages as a v1 predict (``codec._checked``: dtype kind, shape, finiteness,
integer range). Follows KServe's ``open_inference_rest.yaml``:

- request  ``{"id"?, "parameters"?, "inputs": [{"name", "shape", "datatype", "data"}, ...],
  "outputs"?: [{"name", "parameters"?}]}``; ``data`` flat or nested, row-major;
- response ``{"model_name", "model_version", "id"?, "outputs": [{"name", "shape", "datatype", "data"}]}``.

The binary tensor data extension is supported both ways: an input with
``parameters.binary_data_size`` takes its bytes (little-endian, row-major) from
after the JSON header, whose length the ``Inference-Header-Content-Length``
header gives; outputs asked for with ``parameters.binary_data`` (or the request's
``binary_data_output``) come back as raw bytes after the JSON in the same way.
That is what ``tritonclient``'s defaults send and ask for.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import orjson

from agent.serving.codec import RequestError, _checked, _has_bool, _json_type
from agent.signature import Signature, TensorSpec

# numpy dtype name -> the protocol's datatype name (the spec's "Tensor Data Types").
V2_DATATYPES = {
    "bool": "BOOL", "uint8": "UINT8", "uint16": "UINT16", "uint32": "UINT32", "uint64": "UINT64",
    "int8": "INT8", "int16": "INT16", "int32": "INT32", "int64": "INT64",
    "float16": "FP16", "float32": "FP32", "float64": "FP64", "bfloat16": "BF16",
}
DTYPES_FROM_V2 = {v: k for k, v in V2_DATATYPES.items()}
HEADER_LENGTH = b"inference-header-content-length"
INFER_EXAMPLE = '{"inputs": [{"name": ..., "shape": [N, ...], "datatype": ..., "data": [...]}]}'


class OutputWanted(NamedTuple):
    index: int  # position in the signature's outputs
    binary: bool


class InferRequest(NamedTuple):
    x: np.ndarray  # the packed float32 (rows, input_width) matrix of agent.signature
    id: str | None
    outputs: tuple[OutputWanted, ...]


def model_metadata(signature: Signature, name: str, version: str, platform: str) -> dict[str, Any]:
    """The model metadata response: tensors with their datatype and shape, -1 for the batch."""

    def tensor(spec: TensorSpec) -> dict[str, Any]:
        return {"name": spec.name, "datatype": V2_DATATYPES[spec.dtype], "shape": [-1, *spec.shape]}

    return {"name": name, "versions": [version], "platform": platform,
            "inputs": [tensor(s) for s in signature.inputs], "outputs": [tensor(s) for s in signature.outputs]}


def decode_infer(body: bytes, signature: Signature, max_instances: int,
                 header_length: int | None = None) -> InferRequest:
    """Parse and validate an inference request; raise RequestError(400, ...) for anything wrong.

    ``header_length`` is the ``Inference-Header-Content-Length`` header (binary extension):
    the JSON is the body's first ``header_length`` bytes, tensor bytes follow.
    """
    if header_length is None:
        head, binary = body, b""
    else:
        if not 0 < header_length <= len(body):
            raise RequestError(400, f"Inference-Header-Content-Length {header_length} does not fit the body of "
                               f"{len(body)} bytes; expected the length of the JSON header")
        head, binary = body[:header_length], memoryview(body)[header_length:]
    try:
        doc = orjson.loads(head)
    except orjson.JSONDecodeError as exc:
        if not head or head.isspace():
            raise RequestError(400, f"empty request body; expected a JSON object like {INFER_EXAMPLE}") from None
        raise RequestError(400, f"invalid JSON ({exc}); expected a JSON object with 'inputs' "
                           "(NaN and Infinity are not JSON)") from None
    if not isinstance(doc, dict):
        raise RequestError(400, f"request body is a JSON {_json_type(doc)}; expected an object with 'inputs'")
    tensors = doc.get("inputs")
    if tensors is None:
        keys = ", ".join(sorted(doc)) or "none"
        raise RequestError(400, f"missing 'inputs' (keys found: {keys}); expected {INFER_EXAMPLE}")
    if not isinstance(tensors, list) or not tensors or not all(isinstance(t, dict) for t in tensors):
        raise RequestError(400, f"'inputs' must be a non-empty list of tensor objects; expected {INFER_EXAMPLE}")
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise RequestError(400, f"'id' is a JSON {_json_type(request_id)}; expected a string")
    specs = {s.name: s for s in signature.inputs}
    names = [t.get("name") for t in tensors]
    if sorted(map(str, names)) != sorted(specs) or len(set(names)) != len(names):
        got = ", ".join(map(repr, names))
        want = ", ".join(repr(s.name) for s in signature.inputs)
        raise RequestError(400, f"'inputs' names {got}; this model's inputs are {want} (each once)")
    check_bools = b"true" in head or b"false" in head
    by_name: dict[str, np.ndarray] = {}
    offset = 0
    for t in tensors:
        spec = specs[t["name"]]
        arr, offset = _tensor(t, spec, binary, offset, max_instances, check_bools)
        by_name[spec.name] = _checked(arr, spec, "inputs", single=False)
    arrays = [by_name[s.name] for s in signature.inputs]
    counts = {len(a) for a in arrays}
    if len(counts) > 1:
        found = ", ".join(f"{s.name}: {len(a)}" for s, a in zip(signature.inputs, arrays, strict=True))
        raise RequestError(400, f"inputs have different batch sizes ({found}); expected the same")
    x = arrays[0] if len(arrays) == 1 else np.concatenate(arrays, axis=1)
    return InferRequest(x, request_id, _outputs_wanted(doc, signature))


def _tensor(t: dict, spec: TensorSpec, binary: Any, offset: int, max_instances: int,
            check_bools: bool) -> tuple[np.ndarray, int]:
    name = spec.name
    want_type = V2_DATATYPES[spec.dtype]
    if t.get("datatype") != want_type:
        raise RequestError(400, f"input {name!r} has datatype {t.get('datatype')!r}; expected {want_type!r}")
    shape = t.get("shape")
    if (not isinstance(shape, list) or not shape
            or not all(type(d) is int and d >= 0 for d in shape)):
        raise RequestError(400, f"input {name!r} has shape {shape!r}; expected a list of sizes "
                           f"[N, {', '.join(map(str, spec.shape))}]")
    if shape[0] == 0:
        raise RequestError(400, f"input {name!r} is empty; expected at least one row")
    if shape[0] > max_instances:
        raise RequestError(400, f"too many instances in one request ({shape[0]}); the limit is {max_instances}")
    if tuple(shape[1:]) != spec.shape:
        raise RequestError(400, f"wrong shape for input {name!r}: got {shape}; expected [N, "
                           f"{', '.join(map(str, spec.shape))}] (input {spec.describe()})")
    count = math.prod(shape)
    params = t.get("parameters") or {}
    size = params.get("binary_data_size") if isinstance(params, dict) else None
    if size is not None:
        if spec.dtype == "bfloat16":
            raise RequestError(400, f"input {name!r}: binary BF16 data is not supported; send it as JSON 'data'")
        dtype = np.dtype(spec.dtype).newbyteorder("<")
        if type(size) is not int or size != count * dtype.itemsize or offset + size > len(binary):
            raise RequestError(400, f"input {name!r} has binary_data_size {size!r}; expected {count * dtype.itemsize} "
                               f"bytes ({count} x {want_type}) present after the JSON header")
        arr = np.frombuffer(binary[offset:offset + size], dtype=dtype).reshape(shape)
        return arr.astype(dtype.newbyteorder("="), copy=False), offset + size
    if "data" not in t:
        raise RequestError(400, f"input {name!r} has no 'data' (nor parameters.binary_data_size); "
                           "expected its values, flat or nested")
    data = t["data"]
    if not isinstance(data, list):
        raise RequestError(400, f"'data' of input {name!r} is a JSON {_json_type(data)}; expected a list")
    try:
        arr = np.asarray(data)
    except (ValueError, TypeError):
        raise RequestError(400, f"ragged rows in 'data' of input {name!r}; expected {count} values in "
                           f"row-major order, flat or nested as {shape}") from None
    if check_bools and _has_bool(data):
        raise RequestError(400, f"booleans in input {name!r}; expected numbers only")
    if arr.dtype.kind == "O":
        raise RequestError(400, f"ragged rows or non-numeric values (null, objects) in 'data' of input {name!r}; "
                           "expected numbers only")
    if arr.size != count:
        raise RequestError(400, f"input {name!r} has {arr.size} values; its shape {shape} needs {count}")
    return arr.reshape(shape), offset


def _outputs_wanted(doc: dict, signature: Signature) -> tuple[OutputWanted, ...]:
    params = doc.get("parameters")
    binary_all = bool(params.get("binary_data_output", False)) if isinstance(params, dict) else False
    wanted = doc.get("outputs")
    if wanted is None:
        return tuple(OutputWanted(i, binary_all) for i in range(len(signature.outputs)))
    index = {s.name: i for i, s in enumerate(signature.outputs)}
    if not isinstance(wanted, list) or not all(isinstance(o, dict) for o in wanted):
        raise RequestError(400, "'outputs' must be a list of objects like {\"name\": ...}")
    result = []
    for o in wanted:
        if o.get("name") not in index:
            have = ", ".join(repr(s.name) for s in signature.outputs)
            raise RequestError(400, f"unknown output {o.get('name')!r}; this model's outputs are {have}")
        p = o.get("parameters")
        binary = bool(p.get("binary_data", binary_all)) if isinstance(p, dict) else binary_all
        result.append(OutputWanted(index[o["name"]], binary))
    return tuple(result)


def encode_infer(req: InferRequest, rows: Sequence, signature: Signature, name: str,
                 version: str) -> tuple[bytes, int | None]:
    """The response body from a request's rows (as ``OutputEncoder.rows`` made them: JSON text per
    row, a tuple of texts with several outputs); the second value is the JSON header's length
    when binary outputs follow it (the ``Inference-Header-Content-Length`` header), else None."""
    single = len(signature.outputs) <= 1
    n = len(rows)
    outputs = []
    blobs = []
    for want in req.outputs:
        spec = signature.outputs[want.index]
        texts = rows if single else [r[want.index] for r in rows]
        data = b"[" + b",".join(texts) + b"]"  # nested, row-major: the v1 answer's own numbers
        tensor: dict[str, Any] = {"name": spec.name, "datatype": V2_DATATYPES[spec.dtype],
                                  "shape": [n, *spec.shape]}
        if want.binary:
            blob = np.asarray(orjson.loads(data), dtype=np.dtype(spec.dtype).newbyteorder("<")).tobytes()
            tensor["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            tensor["data"] = orjson.Fragment(data)
        outputs.append(tensor)
    doc: dict[str, Any] = {"model_name": name, "model_version": version}
    if req.id is not None:
        doc["id"] = req.id
    doc["outputs"] = outputs
    head = orjson.dumps(doc)
    if not blobs:
        return head, None
    return head + b"".join(blobs), len(head)
