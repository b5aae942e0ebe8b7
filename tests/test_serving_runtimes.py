"""Every runtime gives Keras' predictions within its stated tolerance; conversions are cached."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from agent.export import ModelFormatError, load_model, load_samples, model_fingerprint, tflite_cache_path
from agent.serving.runtimes import make_runtime

# float32 runtimes compute the same function in a different order/engine.
FLOAT_ATOL = 1e-5
# Dynamic-range quantization stores weights in int8: outputs move a little,
# the predicted class almost never does.
INT8_ATOL = 0.05
INT8_MIN_ARGMAX_AGREEMENT = 0.95


@pytest.fixture(scope="module")
def model_copy(trained_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private copy of the bundle, so the conversion cache starts empty here."""
    folder = tmp_path_factory.mktemp("runtime-bundle")
    for f in trained_model.parent.iterdir():
        if f.is_file() and f.suffix != ".tflite":  # (not the tensorboard/ folder)
            shutil.copy(f, folder / f.name)
    return folder / trained_model.name


@pytest.fixture(scope="module")
def reference(model_copy: Path) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(load_samples(model_copy), dtype=np.float32)
    return x, np.asarray(load_model(model_copy)(x, training=False))


@pytest.mark.parametrize("name", ["keras", "tf-function", "xla", "tflite"])
def test_float_runtimes_match_keras(name: str, model_copy: Path, reference: tuple[np.ndarray, np.ndarray]) -> None:
    x, expected = reference
    rt = make_runtime(name, model_copy)
    assert rt.name == name and rt.n_features == 64
    for rows in (1, 7, len(x)):  # several batch shapes through one runtime
        y = rt.predict(x[:rows])
        assert y.shape == (rows, 10) and y.dtype == np.float32
        np.testing.assert_allclose(y, expected[:rows], atol=FLOAT_ATOL)


def test_int8_runtime_agrees_with_keras(model_copy: Path, reference: tuple[np.ndarray, np.ndarray]) -> None:
    x, expected = reference
    y = make_runtime("tflite-int8", model_copy).predict(x)
    assert np.abs(y - expected).max() < INT8_ATOL
    assert (y.argmax(1) == expected.argmax(1)).mean() >= INT8_MIN_ARGMAX_AGREEMENT


def test_tflite_conversions_are_cached_beside_the_model_and_keyed_on_its_content(model_copy: Path) -> None:
    make_runtime("tflite", model_copy)
    cached = tflite_cache_path(model_copy)
    assert cached.parent == model_copy.parent and cached.is_file()
    stamp = cached.stat().st_mtime_ns
    make_runtime("tflite", model_copy)
    assert cached.stat().st_mtime_ns == stamp  # reused, not converted again
    # A different model file (retrained: new bytes) maps to a different cache file.
    other = model_copy.with_name("other.keras")
    shutil.copy(model_copy, other)
    with open(other, "ab") as f:
        f.write(b"\0")  # zip readers ignore trailing bytes; the hash does not
    assert model_fingerprint(other) != model_fingerprint(model_copy)
    assert model_fingerprint(model_copy) in cached.name
    assert model_fingerprint(other) in tflite_cache_path(other).name


def test_tflite_interpreter_per_thread(model_copy: Path, reference: tuple[np.ndarray, np.ndarray]) -> None:
    from concurrent.futures import ThreadPoolExecutor

    x, expected = reference
    rt = make_runtime("tflite", model_copy)
    with ThreadPoolExecutor(4) as pool:
        outs = list(pool.map(lambda n: rt.predict(x[:n]), [3, 5, 8, 13] * 5))
    for y in outs:
        np.testing.assert_allclose(y, expected[: len(y)], atol=FLOAT_ATOL)


@pytest.mark.parametrize("filename", ["model.h5", "model.pkl"])
def test_refused_formats(tmp_path: Path, filename: str) -> None:
    bad = tmp_path / filename
    bad.write_bytes(b"\x89HDF\r\n")
    with pytest.raises(ModelFormatError, match="refused"):
        make_runtime("keras", bad)


def test_unknown_runtime(trained_model: Path) -> None:
    with pytest.raises(ValueError, match="runtime must be one of keras, tf-function"):
        make_runtime("onnx", trained_model)


def test_graph_runtimes_call_one_concrete_function_without_retracing(model_copy: Path,
                                                                     reference: tuple[np.ndarray, np.ndarray]) -> None:
    from agent.export import load_servable, serving_function
    from agent.serving.runtimes import direct_call

    x, expected = reference
    servable = load_servable(model_copy)
    fn = serving_function(servable)
    call = direct_call(fn, servable.signature)
    assert call.__name__ == "direct"  # this TensorFlow's flat call agreed with the public one
    for rows in (1, 5, len(x)):
        np.testing.assert_allclose(np.asarray(call(x[:rows])[0]), expected[:rows], atol=FLOAT_ATOL)
    assert fn.experimental_get_tracing_count() == 1  # one trace, whatever the batch sizes
