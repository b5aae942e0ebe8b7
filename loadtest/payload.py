"""Request bodies and response checks for swarms (no Locust here).

Two protocols (``PROTOCOLS``): TF Serving's REST ``:predict`` (``{"instances": [...]}``)
and the Open Inference Protocol (KServe v2, ``/v2/models/NAME/infer`` with named,
typed tensors), so the same swarm can measure TF Serving, Triton, KServe, MLServer
or the embedded endpoint.

Bodies are built once, before the swarm starts, so the load generator spends its
CPU sending requests rather than encoding them. The rows come from a samples file
(the ``samples.json`` shipped beside a trained model, or the user's ``.json``,
``.npy``, ``.npz`` or ``.csv``) or are generated from the model's signature (read
from the endpoint's metadata or a ``signature.json``, never by importing agent).
"""

from __future__ import annotations

import errno
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

try:  # orjson parses answers several times faster: the load generator's CPU is the scarce resource
    from orjson import loads as _loads
except ImportError:  # pragma: no cover - orjson is in requirements.txt
    _loads = json.loads

from loadtest.results import REASON_DEADLINE, REASON_REFUSED, REASON_SHED, REASON_TIMEOUT

SAMPLES_FILENAME = "samples.json"
SAMPLE_SUFFIXES = (".json", ".npy", ".npz", ".csv")
MAX_SAMPLES_BYTES = 50 * 1024 * 1024
MAX_INSTANCES_PER_REQUEST = 4096
DISTINCT_BODIES = 64  # enough variety that the server cannot cache one answer, few enough to build instantly
MAX_REASON_CHARS = 160


PROTOCOLS = ("tfserving", "v2")
# numpy dtype name -> Open Inference Protocol datatype (its "Tensor Data Types" table).
V2_DATATYPES = {
    "uint8": "UINT8", "uint16": "UINT16", "uint32": "UINT32", "uint64": "UINT64",
    "int8": "INT8", "int16": "INT16", "int32": "INT32", "int64": "INT64",
    "float16": "FP16", "float32": "FP32", "float64": "FP64", "bfloat16": "BF16",
}
_DTYPES_FROM_V2 = {v: k for k, v in V2_DATATYPES.items()}


def predict_path(model_name: str, version: int | None = None) -> str:
    """The TF Serving REST path for predictions."""
    if not model_name or "/" in model_name or ":" in model_name:
        raise ValueError(f"model name must be a non-empty name without '/' or ':', got {model_name!r}")
    version_part = f"/versions/{version}" if version is not None else ""
    return f"/v1/models/{model_name}{version_part}:predict"


def check_protocol(protocol: str) -> str:
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}; got {protocol!r}")
    return protocol


def request_path(model_name: str, protocol: str = "tfserving", version: int | None = None) -> str:
    """The inference path for a protocol: ``/v1/models/NAME:predict`` or ``/v2/models/NAME/infer``."""
    path = predict_path(model_name, version)  # validates the name
    if check_protocol(protocol) == "v2":
        return f"/v2/models/{model_name}{f'/versions/{version}' if version is not None else ''}/infer"
    return path


def metadata_path(model_name: str, protocol: str = "tfserving") -> str:
    return f"/v2/models/{model_name}" if check_protocol(protocol) == "v2" else f"/v1/models/{model_name}/metadata"


def resolve_samples_path(path: str | os.PathLike[str]) -> Path:
    """A samples file itself, or the ``samples.json`` beside a ``model.keras`` or a SavedModel
    directory (or inside a bundle folder)."""
    p = Path(path)
    if p.is_dir():
        p = p.with_name(SAMPLES_FILENAME) if (p / "saved_model.pb").is_file() else p / SAMPLES_FILENAME
    elif p.suffix == ".keras":
        p = p.with_name(SAMPLES_FILENAME)
    if not p.is_file():
        raise ValueError(f"samples file {p} not found: expected a samples file ({', '.join(SAMPLE_SUFFIXES)}) "
                         "or a model with a samples.json beside it")
    return p


def resolve_samples_path_or_none(path: str | os.PathLike[str]) -> Path | None:
    try:
        return resolve_samples_path(path)
    except ValueError:
        return None


def load_samples_file(path: str | os.PathLike[str]) -> list[Any]:
    """Instances (rows, or objects keyed by input name) from a user's samples file.

    - ``.json``: a TF Serving request (``{"instances": [...]}`` or columnar
      ``{"inputs": [...]}`` / ``{"inputs": {"a": [...], ...}}``), or a bare list of rows
    - ``.npy``: one array, one row per first-axis entry (a one-input model)
    - ``.npz``: one array per input name (row objects keyed by those names);
      a single unnamed array (``arr_0``) is treated like ``.npy``
    - ``.csv``: numeric rows of a flat input; a first line that is not numbers is a header

    Every row must have the same shape (per input); numbers only.
    """
    p = resolve_samples_path(path)
    if p.stat().st_size > MAX_SAMPLES_BYTES:
        raise ValueError(f"samples file {p} is larger than {MAX_SAMPLES_BYTES // (1024 * 1024)} MB")
    suffix = p.suffix.lower()
    if suffix == ".npy":
        rows: Any = _npy_rows(p)
    elif suffix == ".npz":
        rows = _npz_rows(p)
    elif suffix == ".csv":
        rows = _csv_rows(p)
    else:
        rows = _json_rows(p)
    if not isinstance(rows, list) or not rows:
        raise ValueError(f"samples file {p} must hold a non-empty list of instances (feature rows)")
    _check_instances(p, rows)
    return rows


def _json_rows(p: Path) -> Any:
    try:
        data = json.loads(p.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"samples file {p} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        return data
    if "inputs" in data and "instances" not in data:
        inputs = data["inputs"]
        if isinstance(inputs, dict):  # columnar with named inputs -> one object per row
            return _columns_to_rows(p, {str(k): v for k, v in inputs.items()})
        return inputs
    return data.get("instances")


def _columns_to_rows(p: Path, columns: dict[str, Any]) -> list[dict[str, Any]]:
    counts = {k: len(v) if isinstance(v, list) else -1 for k, v in columns.items()}
    if not columns or len(set(counts.values())) != 1 or -1 in counts.values():
        raise ValueError(f"samples file {p}: named inputs must be lists with the same number of rows; got {counts}")
    n = next(iter(counts.values()))
    return [{k: v[i] for k, v in columns.items()} for i in range(n)]


def _npy_rows(p: Path) -> list[Any]:
    import numpy as np

    try:
        arr = np.load(p, allow_pickle=False)  # never unpickle a user's file
    except (OSError, ValueError) as exc:
        raise ValueError(f"samples file {p} is not a numeric .npy array: {exc}") from None
    return _array_rows(p, arr, "the array")


def _npz_rows(p: Path) -> list[Any]:
    import numpy as np

    try:
        with np.load(p, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError) as exc:
        raise ValueError(f"samples file {p} is not a numeric .npz archive: {exc}") from None
    if not arrays:
        raise ValueError(f"samples file {p} holds no arrays; expected one array per model input")
    if list(arrays) == ["arr_0"]:
        return _array_rows(p, arrays["arr_0"], "arr_0")
    return _columns_to_rows(p, {k: _array_rows(p, a, k) for k, a in arrays.items()})


def _array_rows(p: Path, arr: Any, what: str) -> list[Any]:
    import numpy as np

    if arr.dtype.kind not in "iuf" or arr.ndim < 1:
        raise ValueError(f"samples file {p}: {what} must be a numeric array of rows; got {arr.dtype} "
                         f"of shape {arr.shape}")
    if arr.dtype.kind == "f" and not bool(np.isfinite(arr).all()):
        raise ValueError(f"samples file {p}: {what} holds NaN or infinity; expected finite numbers")
    return arr.tolist()


def _csv_rows(p: Path) -> list[list[float]]:
    import csv

    rows: list[list[float]] = []
    with p.open(newline="") as f:
        for i, record in enumerate(csv.reader(f)):
            if not record or all(not c.strip() for c in record):
                continue
            try:
                rows.append([float(c) for c in record])
            except ValueError:
                if i == 0:
                    continue  # a header line
                raise ValueError(f"samples file {p}: line {i + 1} is not all numbers") from None
    return rows


def _check_instances(p: Path, rows: list[Any]) -> None:
    """Every instance a numeric row (of the first one's shape) or an object of such rows."""
    import numpy as np

    first = rows[0]
    if isinstance(first, dict):
        keys = set(first)
        bad = next((i for i, r in enumerate(rows) if not isinstance(r, dict) or set(r) != keys), None)
        if bad is not None:
            raise ValueError(f"samples file {p}: instance {bad} must be an object with the keys "
                             f"{', '.join(sorted(keys))}")
        for key in sorted(keys):
            _check_instances(p, [r[key] for r in rows])
        return
    if _has_bool(rows):
        raise ValueError(f"samples file {p}: booleans in the instances; expected numbers")
    try:
        arr = np.asarray(rows)
    except (ValueError, TypeError):
        arr = None
    if arr is None or arr.dtype.kind not in "iuf":
        bad = next((i for i, r in enumerate(rows) if np.shape(r) != np.shape(first)), 0)
        raise ValueError(f"samples file {p}: instance {bad} must be a list of numbers like instance 0 "
                         f"(shape {np.shape(first)})")


def _has_bool(value: Any) -> bool:
    if type(value) is bool:
        return True
    return type(value) is list and any(_has_bool(v) for v in value)


# -- payloads generated from a model's signature ----------------------------------------------------
#
# The signature comes from the endpoint's metadata (GET /v1/models/NAME/metadata, TF
# Serving's format) or from the signature.json written beside an imported model: not
# from agent, which this package must not import.

DISTRIBUTIONS = ("uniform", "normal", "zeros")
DEFAULT_VOCAB_SIZE = 2  # integer inputs: ids 0..vocab-1 (0 and 1 are valid for any embedding)
GENERATED_ROWS = 256
GENERATED_DIRNAME = "payloads"  # generated samples files, under the state directory
INT_DTYPES = frozenset({"int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"})
_TF_DTYPES = {"DT_HALF": "float16", "DT_FLOAT": "float32", "DT_DOUBLE": "float64", "DT_BFLOAT16": "bfloat16",
              "DT_INT8": "int8", "DT_INT16": "int16", "DT_INT32": "int32", "DT_INT64": "int64",
              "DT_UINT8": "uint8", "DT_UINT16": "uint16", "DT_UINT32": "uint32", "DT_UINT64": "uint64"}


@dataclass(frozen=True)
class InputSpec:
    name: str
    shape: tuple[int, ...]  # without the batch dimension
    dtype: str


@dataclass(frozen=True)
class PayloadSpec:
    """How to generate rows: a distribution over [low, high] for floats, ids below vocab_size for ints."""

    distribution: str = "uniform"
    low: float = 0.0
    high: float = 1.0
    vocab_size: int = DEFAULT_VOCAB_SIZE
    seed: int = 0

    def __post_init__(self) -> None:
        if self.distribution not in DISTRIBUTIONS:
            raise ValueError(f"payload distribution must be one of {', '.join(DISTRIBUTIONS)}; "
                             f"got {self.distribution!r}")
        if not (math.isfinite(self.low) and math.isfinite(self.high)) or self.low > self.high:
            raise ValueError(f"payload range must be finite with low <= high; got {self.low}..{self.high}")
        if not isinstance(self.vocab_size, int) or self.vocab_size < 1:
            raise ValueError(f"vocab size must be an integer >= 1; got {self.vocab_size!r}")


def signature_from_metadata(doc: Any) -> tuple[InputSpec, ...]:
    """The inputs of ``serving_default`` in a TF Serving GetModelMetadata JSON answer."""
    try:
        sig = doc["metadata"]["signature_def"]["signature_def"]["serving_default"]
        inputs = sig["inputs"]
        specs = []
        for name in sorted(inputs):
            t = inputs[name]
            dims = [int(d["size"]) for d in t["tensor_shape"]["dim"]]
            dtype = _TF_DTYPES[t["dtype"]]
            if not dims or any(d < 1 for d in dims[1:]):
                raise ValueError(f"input {name!r} has shape {dims}; payloads need fixed shapes (batch first)")
            specs.append(InputSpec(name, tuple(dims[1:]), dtype))
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, ValueError) and "payloads need" in str(exc):
            raise
        raise ValueError(f"model metadata without a usable 'serving_default' input signature ({exc!r})") from None
    if not specs:
        raise ValueError("model metadata lists no inputs")
    return tuple(specs)


def signature_from_file(path: str | os.PathLike[str]) -> tuple[InputSpec, ...]:
    """The inputs from a ``signature.json`` (``{"inputs": [{"name", "shape", "dtype"}, ...], ...}``)."""
    try:
        doc = json.loads(Path(path).read_text())
        return tuple(InputSpec(str(i["name"]), tuple(int(d) for d in i["shape"]), str(i["dtype"]))
                     for i in doc["inputs"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"signature file {path}: expected {{'inputs': [{{name, shape, dtype}}, ...]}} "
                         f"({exc})") from None


def signature_from_v2_metadata(doc: Any) -> tuple[InputSpec, ...]:
    """The inputs in an Open Inference Protocol model metadata answer (``GET /v2/models/NAME``)."""
    try:
        specs = []
        for t in doc["inputs"]:
            dims = [int(d) for d in t["shape"]]
            dtype = _DTYPES_FROM_V2[t["datatype"]]
            if not dims or any(d < 1 for d in dims[1:]):
                raise ValueError(f"input {t['name']!r} has shape {dims}; payloads need fixed shapes (batch first)")
            specs.append(InputSpec(str(t["name"]), tuple(dims[1:]), dtype))
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, ValueError) and "payloads need" in str(exc):
            raise
        raise ValueError(f"v2 model metadata without usable 'inputs' (name, datatype, shape) ({exc!r})") from None
    if not specs:
        raise ValueError("model metadata lists no inputs")
    return tuple(specs)


def fetch_signature(host: str, model_name: str, timeout_s: float = 10.0,
                    protocol: str = "tfserving") -> tuple[InputSpec, ...]:
    """The inputs from the endpoint's metadata: TF Serving's ``/v1/models/NAME/metadata`` or the
    Open Inference Protocol's ``/v2/models/NAME`` (TF Serving, Triton, KServe, MLServer, ours)."""
    import urllib.error
    import urllib.request

    url = f"{host.rstrip('/')}{metadata_path(model_name, protocol)}"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            doc = json.loads(resp.read(MAX_SAMPLES_BYTES))
        return signature_from_v2_metadata(doc) if protocol == "v2" else signature_from_metadata(doc)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        other = "v2" if protocol == "tfserving" else "tfserving"
        needs = "--signature FILE" if protocol == "v2" else "--samples FILE or --signature FILE"
        raise ValueError(f"cannot read the model's signature from {url} ({exc}); give {needs}, or "
                         f"--protocol {other} if the target speaks that") from None


def generate_instances(inputs: Sequence[InputSpec], spec: PayloadSpec,
                       count: int = GENERATED_ROWS) -> list[Any]:
    """``count`` instances for these inputs: rows for one input, objects keyed by input name for several.

    Floats (rounded to 6 digits: shorter bodies, still distinct) follow the
    distribution over [low, high] (normal: centred, sd a quarter of the range,
    clipped to it); integers are uniform ids in [0, vocab_size).
    """
    import numpy as np

    rng = np.random.default_rng(spec.seed)
    columns = {}
    for inp in inputs:
        shape = (count, *inp.shape)
        if inp.dtype in INT_DTYPES:
            arr: Any = rng.integers(0, spec.vocab_size, size=shape) if spec.distribution != "zeros" \
                else np.zeros(shape, dtype=np.int64)
        elif spec.distribution == "zeros":
            arr = np.zeros(shape)
        elif spec.distribution == "normal":
            mid, sd = (spec.low + spec.high) / 2, (spec.high - spec.low) / 4
            arr = np.clip(rng.normal(mid, sd, size=shape), spec.low, spec.high).round(6)
        else:
            arr = rng.uniform(spec.low, spec.high, size=shape).round(6)
        columns[inp.name] = arr.tolist()
    if len(inputs) == 1:
        return columns[inputs[0].name]
    return [{name: col[i] for name, col in columns.items()} for i in range(count)]


def save_generated(folder: str | os.PathLike[str], instances: Sequence[Any]) -> Path:
    """Generated instances as a samples file in ``folder``, named after its content: the same rows
    (same signature and PayloadSpec) are written once and shared by every run that asks for them."""
    import hashlib

    text = json.dumps({"instances": list(instances)}, separators=(",", ":"))
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"generated-{hashlib.sha256(text.encode()).hexdigest()[:16]}.json"
    if not path.is_file():
        write_instances(path, instances)
    return path


def write_instances(path: str | os.PathLike[str], instances: Sequence[Any]) -> Path:
    """A samples file in TF Serving request format (what ``--samples`` reads back)."""
    p = Path(path)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(json.dumps({"instances": list(instances)}, separators=(",", ":")))
    tmp.replace(p)
    return p


def generated_payload_file(folder: str | os.PathLike[str], inputs: Sequence[InputSpec], spec: PayloadSpec) -> Path:
    """Rows generated for ``inputs``, written once into ``folder`` (named by their content) as a samples file."""
    return save_generated(folder, generate_instances(inputs, spec))


def build_bodies(rows: Sequence[Any], instances_per_request: int) -> list[bytes]:
    """Encoded ``{"instances": [...]}`` bodies cycling through ``rows``, ``instances_per_request`` rows each."""
    if not rows:
        raise ValueError("need at least one feature row to build requests")
    if not 1 <= instances_per_request <= MAX_INSTANCES_PER_REQUEST:
        raise ValueError(
            f"instances_per_request must be in [1, {MAX_INSTANCES_PER_REQUEST}], got {instances_per_request}"
        )
    count = min(DISTINCT_BODIES, max(1, len(rows)))
    bodies = []
    for b in range(count):
        start = b * instances_per_request
        chosen = [rows[(start + i) % len(rows)] for i in range(instances_per_request)]
        bodies.append(json.dumps({"instances": chosen}, separators=(",", ":")).encode())
    return bodies


def build_v2_bodies(rows: Sequence[Any], instances_per_request: int, inputs: Sequence[InputSpec]) -> list[bytes]:
    """Open Inference Protocol bodies (one tensor per input, flat row-major ``data``) cycling through
    ``rows`` (rows for one input, objects keyed by input name for several), like ``build_bodies``."""
    import numpy as np

    if not rows:
        raise ValueError("need at least one feature row to build requests")
    if not 1 <= instances_per_request <= MAX_INSTANCES_PER_REQUEST:
        raise ValueError(
            f"instances_per_request must be in [1, {MAX_INSTANCES_PER_REQUEST}], got {instances_per_request}"
        )
    named = isinstance(rows[0], dict)
    if not named and len(inputs) != 1:
        raise ValueError(f"the target has {len(inputs)} inputs ({', '.join(i.name for i in inputs)}); "
                         "samples must be objects keyed by input name")
    count = min(DISTINCT_BODIES, max(1, len(rows)))
    bodies = []
    for b in range(count):
        start = b * instances_per_request
        chosen = [rows[(start + i) % len(rows)] for i in range(instances_per_request)]
        tensors = []
        for inp in inputs:
            try:
                values = [r[inp.name] for r in chosen] if named else chosen
            except KeyError:
                raise ValueError(f"samples have no input {inp.name!r}; the target's inputs are "
                                 f"{', '.join(i.name for i in inputs)}") from None
            arr = np.asarray(values)
            if arr.shape[1:] != inp.shape:
                raise ValueError(f"samples rows have shape {arr.shape[1:]}; the target's input {inp.name!r} "
                                 f"needs {inp.shape}")
            tensors.append({"name": inp.name, "shape": list(arr.shape), "datatype": V2_DATATYPES[inp.dtype],
                            "data": arr.ravel().tolist()})
        bodies.append(json.dumps({"inputs": tensors}, separators=(",", ":")).encode())
    return bodies


def _error_text(body: bytes | str) -> str:
    if isinstance(body, bytes):
        body = body.decode("utf-8", errors="replace")
    try:
        data = json.loads(body)
    except ValueError:
        return body.strip()[:MAX_REASON_CHARS]
    if isinstance(data, dict) and "error" in data:
        return str(data["error"])[:MAX_REASON_CHARS]
    return body.strip()[:MAX_REASON_CHARS]


def classify_error(error: BaseException | None) -> str:
    """A short reason for a request that got no HTTP answer."""
    if error is None:
        return "no response"
    if isinstance(error, ConnectionRefusedError) or getattr(error, "errno", None) == errno.ECONNREFUSED:
        return REASON_REFUSED
    name = type(error).__name__.lower()
    if isinstance(error, TimeoutError) or "timeout" in name or "timed out" in str(error).lower():
        return REASON_TIMEOUT
    if isinstance(error, ConnectionResetError) or getattr(error, "errno", None) == errno.ECONNRESET:
        return "connection reset"
    return f"{type(error).__name__}: {error}"[:MAX_REASON_CHARS]


def check_response(
    status: int | None, body: bytes | str | None, expected_predictions: int, error: BaseException | None = None,
    protocol: str = "tfserving",
) -> str | None:
    """None if the answer is a good prediction, else the failure reason Locust records.

    Reasons are stable strings (``503 shed``, ``504 deadline``, ``400 <error>``,
    ``connection refused``, ``timeout``) so reports can count them.
    """
    if not status:
        return classify_error(error)
    body = body or b""
    if status == 503:
        return REASON_SHED
    if status == 504:
        return REASON_DEADLINE
    if status != 200:
        return f"{status} {_error_text(body)}".strip()
    try:
        data: Any = _loads(body)
    except ValueError:
        return "200 with a body that is not JSON"
    if protocol == "v2":
        outputs = data.get("outputs") if isinstance(data, dict) else None
        if not isinstance(outputs, list) or not outputs or not isinstance(outputs[0], dict):
            return "200 without an 'outputs' list"
        shape = outputs[0].get("shape")
        rows = shape[0] if isinstance(shape, list) and shape else None
        if rows != expected_predictions:
            return f"200 with {rows} output rows, expected {expected_predictions}"
        return None
    preds = data.get("predictions") if isinstance(data, dict) else None
    if not isinstance(preds, list):
        return "200 without a 'predictions' list"
    if len(preds) != expected_predictions:
        return f"200 with {len(preds)} predictions, expected {expected_predictions}"
    return None
