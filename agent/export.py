"""Model bundles on disk: the ``.keras`` file, its metadata and sample requests.

A bundle is a folder (a training run's artifact folder) holding

- ``model.keras``   the Keras v3 archive (loaded only with ``safe_mode=True``)
- ``metadata.json`` data spec (feature names, class labels, task), model config,
                    test metrics, parameter count, input/output names
- ``samples.json``  real feature rows from the test split, so load tests send
                    payloads that match the served features

Only the ``.keras`` format is accepted: HDF5 (``.h5``) and pickled files can run
arbitrary code or bypass safe mode, so they are refused by name and by content.
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from agent.data import DataSpec
from runs.configs import atomic_write_text

if TYPE_CHECKING:
    import keras

MODEL_FILENAME = "model.keras"
METADATA_FILENAME = "metadata.json"
SAMPLES_FILENAME = "samples.json"
MAX_SAMPLES = 256
INPUT_NAME = "features"
REFUSED_SUFFIXES = (".h5", ".hdf5", ".pkl", ".pickle", ".joblib", ".pb", ".npy")


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


def check_model_path(path: str | os.PathLike[str]) -> Path:
    """Validate that ``path`` is an existing Keras v3 archive; raise ModelFormatError if not."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix in REFUSED_SUFFIXES:
        raise ModelFormatError(
            f"{p.name}: {suffix} files are refused (they can run code when loaded); save the model as .keras"
        )
    if suffix != ".keras":
        raise ModelFormatError(f"{p.name}: expected a .keras model file; got {suffix or 'no extension'}")
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
    return keras.saving.load_model(p, compile=False, safe_mode=True)


def load_metadata(model_path: str | os.PathLike[str]) -> ModelMetadata | None:
    """Metadata saved beside ``model_path``, or None for a bare ``.keras`` file."""
    meta = Path(model_path).with_name(METADATA_FILENAME)
    if not meta.is_file():
        return None
    return ModelMetadata.from_dict(json.loads(meta.read_text()))


def load_samples(model_path: str | os.PathLike[str]) -> list[list[float]] | None:
    """Sample feature rows saved beside ``model_path``, or None."""
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
    """Short content hash of the model file (keys the conversion cache)."""
    import hashlib

    h = hashlib.sha256()
    with open(model_path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:FINGERPRINT_CHARS]


def tflite_cache_path(model_path: str | os.PathLike[str], variant: str = "float32") -> Path:
    """Where the TFLite conversion of ``model_path`` is cached."""
    if variant not in TFLITE_VARIANTS:
        raise ValueError(f"TFLite variant must be one of {', '.join(TFLITE_VARIANTS)}; got {variant!r}")
    p = Path(model_path)
    suffix = ".tflite" if variant == "float32" else ".int8.tflite"
    return p.with_name(f"{p.stem}.{model_fingerprint(p)}{suffix}")


def convert_to_tflite(
    model_path: str | os.PathLike[str],
    variant: str = "float32",
    model: keras.Model | None = None,
) -> Path:
    """TFLite flatbuffer for the model (``int8`` = dynamic-range quantized weights); cached.

    Returns the cached file's path. ``model`` may be passed when already loaded.
    """
    import contextlib
    import sys

    import tensorflow as tf

    target = tflite_cache_path(model_path, variant)
    if target.is_file():
        return target
    if model is None:
        model = load_model(model_path)
    # The converter prints the SavedModel it writes on the way to stdout; keep stdout
    # for the programs' own output (the endpoint's ready line).
    with contextlib.redirect_stdout(sys.stderr):
        converter = tf.lite.TFLiteConverter.from_keras_model(model)
        if variant == "int8":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        flatbuffer = converter.convert()
    tmp = target.with_name(target.name + f".{os.getpid()}.tmp")
    tmp.write_bytes(flatbuffer)
    os.replace(tmp, target)  # atomic: concurrent workers never read a partial file
    return target


def serving_function(model: keras.Model, n_features: int, jit_compile: bool = False) -> Any:
    """A ``tf.function`` over the model with a fixed ``[None, n_features]`` float32 signature.

    The fixed signature means one trace for every batch size; with ``jit_compile``
    XLA still compiles once per distinct batch shape, which is why the endpoint pads
    batches to ``allowed_batch_sizes``.
    """
    import tensorflow as tf

    spec = tf.TensorSpec([None, n_features], tf.float32, name=INPUT_NAME)

    @tf.function(input_signature=[spec], jit_compile=jit_compile, reduce_retracing=True)
    def serve(x: Any) -> Any:
        return model(x, training=False)

    return serve
