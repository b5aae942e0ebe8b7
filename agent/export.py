"""Model bundles on disk: the ``.keras`` file, its metadata and sample requests.

A bundle is a folder (a training run's artifact folder) holding

- ``model.keras``   the Keras v3 archive (loaded only with ``safe_mode=True``)
- ``metadata.json`` data spec (feature names, class labels, task), model config,
                    test metrics, parameter count, input/output names
- ``samples.json``  real feature rows from the test split, so load tests send
                    payloads that match the served features

Two model formats are served: a Keras v3 ``.keras`` archive (loaded with
``safe_mode=True``) and a TensorFlow SavedModel directory (served through its
``serving_default`` signature; a SavedModel is a graph of TF ops, so loading it
runs no Python from the file). HDF5 (``.h5``) and pickled files can run arbitrary
code or bypass safe mode, so they are refused by name and by content.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from agent.data import DataSpec
from agent.signature import Signature
from runs.configs import atomic_write_text

if TYPE_CHECKING:
    import keras

MODEL_FILENAME = "model.keras"
METADATA_FILENAME = "metadata.json"
SAMPLES_FILENAME = "samples.json"
MAX_SAMPLES = 256
INPUT_NAME = "features"
REFUSED_SUFFIXES = (".h5", ".hdf5", ".pkl", ".pickle", ".joblib", ".pb", ".npy")
SAVED_MODEL_FILES = ("saved_model.pb", "saved_model.pbtxt")
SERVING_SIGNATURE = "serving_default"


class ModelFormatError(ValueError):
    """A model file that TuneSwarm refuses to load, with the reason."""


@dataclass(frozen=True)
class ModelMetadata:
    spec: DataSpec
    config: dict[str, Any]
    metrics: dict[str, Any]
    param_count: int
    output_name: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": 1,
            "data": self.spec.to_dict(),
            "config": self.config,
            "metrics": self.metrics,
            "param_count": self.param_count,
            "input_name": INPUT_NAME,
            "output_name": self.output_name,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelMetadata:
        return cls(
            spec=DataSpec.from_dict(d["data"]),
            config=dict(d.get("config", {})),
            metrics=dict(d.get("metrics", {})),
            param_count=int(d.get("param_count", 0)),
            output_name=str(d.get("output_name", "predictions")),
        )


def save_bundle(
    folder: Path,
    model: keras.Model,
    metadata: ModelMetadata,
    samples_x: np.ndarray,
    samples_y: np.ndarray | None = None,
) -> Path:
    """Write model, metadata and samples into ``folder``; returns the model path."""
    folder.mkdir(parents=True, exist_ok=True)
    model_path = folder / MODEL_FILENAME
    tmp_model = folder / (MODEL_FILENAME + ".tmp.keras")
    model.save(tmp_model)
    os.replace(tmp_model, model_path)
    atomic_write_text(folder / METADATA_FILENAME, json.dumps(metadata.to_dict(), indent=2, default=_plain))
    rows = samples_x[:MAX_SAMPLES]
    samples: dict[str, Any] = {"instances": rows.astype(float).tolist()}
    if samples_y is not None:
        samples["targets"] = samples_y[:MAX_SAMPLES].tolist()
    atomic_write_text(folder / SAMPLES_FILENAME, json.dumps(samples))
    return model_path


def _plain(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def is_saved_model(path: str | os.PathLike[str]) -> bool:
    p = Path(path)
    return p.is_dir() and any((p / f).is_file() for f in SAVED_MODEL_FILES)


def check_model_path(path: str | os.PathLike[str]) -> Path:
    """Validate that ``path`` is a Keras v3 archive or a SavedModel directory; raise ModelFormatError if not."""
    p = Path(path)
    if p.is_dir():
        if not is_saved_model(p):
            raise ModelFormatError(f"{p}: a directory without saved_model.pb; expected a SavedModel directory "
                                   "or a .keras file")
        return p
    suffix = p.suffix.lower()
    if suffix in REFUSED_SUFFIXES:
        raise ModelFormatError(
            f"{p.name}: {suffix} files are refused (they can run code when loaded); save the model as .keras "
            "or as a SavedModel directory"
        )
    if suffix != ".keras":
        raise ModelFormatError(f"{p.name}: expected a .keras model file or a SavedModel directory; "
                               f"got {suffix or 'no extension'}")
    if not p.is_file():
        raise ModelFormatError(f"{p}: no such model file")
    if not zipfile.is_zipfile(p):
        raise ModelFormatError(f"{p.name}: not a Keras v3 archive (a .keras file is a zip archive)")
    with zipfile.ZipFile(p) as z:
        names = set(z.namelist())
    if "config.json" not in names:
        raise ModelFormatError(f"{p.name}: not a Keras v3 archive (config.json missing)")
    return p


def load_model(path: str | os.PathLike[str]) -> keras.Model:
    """Load a ``.keras`` model with ``safe_mode=True`` (no arbitrary code from the file)."""
    import keras

    p = check_model_path(path)
    if p.is_dir():
        raise ModelFormatError(f"{p.name}: a SavedModel directory, not a .keras file; load it with load_servable")
    return keras.saving.load_model(p, compile=False, safe_mode=True)


@dataclass(frozen=True)
class Servable:
    """A loaded model behind one calling convention: ``call(list of input arrays, in
    ``signature.inputs`` order) -> list of outputs (in ``signature.outputs`` order)``.

    ``model`` is the Keras model (a ``.keras`` file) or the loaded SavedModel object,
    which must stay referenced while its signature function is used.
    """

    path: Path
    signature: Signature
    model: Any
    call: Callable[[list[Any]], list[Any]]
    keras_model: bool


def load_servable(path: str | os.PathLike[str]) -> Servable:
    """Load either format and read its signature (raises ModelFormatError / SignatureError)."""
    p = check_model_path(path)
    if p.is_dir():
        return _load_saved_model(p)
    model = load_model(p)
    signature = Signature.from_keras(model)
    names = [s.name for s in signature.inputs]
    single = len(names) == 1
    # Keras 3 functional models take a dict keyed by input name; a lone input is passed as is.
    output_names = [s.name for s in signature.outputs]

    def call(arrays: list[Any]) -> list[Any]:
        out = model(arrays[0] if single else dict(zip(names, arrays, strict=True)), training=False)
        return _output_list(out, output_names)

    return Servable(p, signature, model, call, keras_model=True)


def keras_batch_call(servable: Servable) -> Callable[[list[Any]], list[Any]]:
    """``servable.call`` through Keras' own ``predict_on_batch`` (its compiled predict step,
    numpy out) instead of an eager model call: same outputs, a fraction of the Python."""
    model = servable.model
    names = [s.name for s in servable.signature.inputs]
    single = len(names) == 1
    output_names = [s.name for s in servable.signature.outputs]

    def call(arrays: list[Any]) -> list[Any]:
        out = model.predict_on_batch(arrays[0] if single else dict(zip(names, arrays, strict=True)))
        return _output_list(out, output_names)

    return call


def _load_saved_model(p: Path) -> Servable:
    import tensorflow as tf

    try:
        loaded = tf.saved_model.load(str(p))
    except Exception as exc:  # a corrupt or foreign directory: one line, not TF's traceback
        raise ModelFormatError(f"{p.name}: cannot load the SavedModel ({first_line(exc)})") from None
    fn = getattr(loaded, "signatures", {}).get(SERVING_SIGNATURE)
    if fn is None:
        found = ", ".join(getattr(loaded, "signatures", {}).keys()) or "none"
        raise ModelFormatError(f"{p.name}: the SavedModel has no {SERVING_SIGNATURE!r} signature (found: {found})")
    signature = Signature.from_tf_function(fn)
    names = [s.name for s in signature.inputs]
    output_names = [s.name for s in signature.outputs]

    def call(arrays: list[Any]) -> list[Any]:
        out = fn(**dict(zip(names, arrays, strict=True)))
        return [out[n] for n in output_names]

    return Servable(p, signature, loaded, call, keras_model=False)


def _output_list(out: Any, names: list[str]) -> list[Any]:
    if isinstance(out, dict):
        return [out[n] for n in names]
    if isinstance(out, (list, tuple)):
        return list(out)
    return [out]


def first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:200] if lines else type(exc).__name__


def load_metadata(model_path: str | os.PathLike[str]) -> ModelMetadata | None:
    """Metadata saved beside ``model_path``, or None for a bare ``.keras`` file."""
    meta = Path(model_path).with_name(METADATA_FILENAME)
    if not meta.is_file():
        return None
    return ModelMetadata.from_dict(json.loads(meta.read_text()))


def load_samples(model_path: str | os.PathLike[str]) -> list[Any] | None:
    """Sample instances saved beside ``model_path`` (a ``.keras`` file or a SavedModel directory),
    or None: feature rows, nested rows for shaped inputs, objects keyed by input name for several."""
    path = Path(model_path).with_name(SAMPLES_FILENAME)
    if not path.is_file():
        return None
    return json.loads(path.read_text())["instances"]


# -- compiled forms for serving ---------------------------------------------------------------------
#
# Conversions are slow (seconds) and deterministic, so each is done once and
# cached beside the model, named after a hash of the model file: a retrained
# model (new bytes) gets new files instead of being served from a stale copy.

FINGERPRINT_CHARS = 16
TFLITE_VARIANTS = ("float32", "int8")


def model_fingerprint(model_path: str | os.PathLike[str]) -> str:
    """Short content hash of the model file, or of every file of a SavedModel directory
    (keys the conversion cache)."""
    import hashlib

    p = Path(model_path)
    files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    h = hashlib.sha256()
    for file in files:
        if p.is_dir():
            h.update(str(file.relative_to(p)).encode() + b"\0")
        with open(file, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:FINGERPRINT_CHARS]


def tflite_cache_path(model_path: str | os.PathLike[str], variant: str = "float32") -> Path:
    """Where the TFLite conversion of ``model_path`` is cached (beside the file or directory)."""
    if variant not in TFLITE_VARIANTS:
        raise ValueError(f"TFLite variant must be one of {', '.join(TFLITE_VARIANTS)}; got {variant!r}")
    p = Path(model_path)
    suffix = ".tflite" if variant == "float32" else ".int8.tflite"
    stem = p.name if p.is_dir() else p.stem
    return p.with_name(f"{stem}.{model_fingerprint(p)}{suffix}")


def convert_to_tflite(
    model_path: str | os.PathLike[str],
    variant: str = "float32",
    model: keras.Model | None = None,
) -> Path:
    """TFLite flatbuffer for the model (``int8`` = dynamic-range quantized weights); cached.

    A SavedModel is converted through its ``serving_default`` signature, so the
    flatbuffer's signature keeps the input and output names. A ``.keras`` model with
    one input and one output is converted from the Keras model directly (as it
    always was: its cached conversions stay valid); one with several inputs or
    outputs is exported to a SavedModel first for the same reason.
    Returns the cached file's path. ``model`` may be passed when already loaded.
    """
    import contextlib
    import shutil
    import sys

    import tensorflow as tf

    target = tflite_cache_path(model_path, variant)
    if target.is_file():
        return target
    p = Path(model_path)
    tmp_dir: str | None = None
    # The converter prints the SavedModel it writes on the way to stdout; keep stdout
    # for the programs' own output (the endpoint's ready line).
    try:
        with contextlib.redirect_stdout(sys.stderr):
            if p.is_dir():
                converter = tf.lite.TFLiteConverter.from_saved_model(str(p), signature_keys=[SERVING_SIGNATURE])
            else:
                if model is None:
                    model = load_model(p)
                if len(model.inputs) == 1 and len(model.outputs) == 1:
                    converter = tf.lite.TFLiteConverter.from_keras_model(model)
                else:
                    tmp_dir = tempfile.mkdtemp(prefix="tuneswarm-export-", dir=p.parent)
                    model.export(tmp_dir, verbose=False)
                    converter = tf.lite.TFLiteConverter.from_saved_model(tmp_dir,
                                                                         signature_keys=[SERVING_SIGNATURE])
            if variant == "int8":
                converter.optimizations = [tf.lite.Optimize.DEFAULT]
            flatbuffer = converter.convert()
    finally:
        if tmp_dir is not None:
            shutil.rmtree(tmp_dir, ignore_errors=True)
    tmp = target.with_name(target.name + f".{os.getpid()}.tmp")
    tmp.write_bytes(flatbuffer)
    os.replace(tmp, target)  # atomic: concurrent workers never read a partial file
    return target


def serving_function(servable: Servable, jit_compile: bool = False) -> Any:
    """A ``tf.function`` over the model with a fixed signature (``[None, *shape]`` per input).

    The fixed signature means one trace for every batch size; with ``jit_compile``
    XLA still compiles once per distinct batch shape, which is why the endpoint pads
    batches to ``allowed_batch_sizes``. Takes and returns lists, in signature order.
    """
    import tensorflow as tf

    specs = [tf.TensorSpec([None, *s.shape], tf.as_dtype(s.dtype), name=s.name) for s in servable.signature.inputs]
    call = servable.call

    @tf.function(input_signature=specs, jit_compile=jit_compile, reduce_retracing=True)
    def serve(*xs: Any) -> Any:
        return call(list(xs))

    return serve
