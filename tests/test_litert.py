"""The tflite runtimes on LiteRT's interpreter when it is installed, on tf.lite otherwise: the same predictions."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from agent.export import load_model, load_samples
from agent.serving import runtimes
from agent.serving.runtimes import make_runtime

pytest.importorskip("ai_edge_litert", reason="the optional ai-edge-litert package is not installed")

FLOAT_ATOL = 1e-5  # as tests/test_serving_runtimes.py: float32 engines differ only in summation order
INT8_ATOL = 0.05


@pytest.fixture(scope="module")
def bundle(trained_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("litert-bundle")
    for f in trained_model.parent.iterdir():
        if f.is_file() and f.suffix != ".tflite":  # (not the tensorboard/ folder)
            shutil.copy(f, folder / f.name)
    return folder / trained_model.name


def predictions(name: str, bundle: Path, x: np.ndarray) -> tuple[str, np.ndarray]:
    rt = make_runtime(name, bundle)
    return rt.interpreter_name, np.concatenate([rt.predict(x[:1]), rt.predict(x[1:])])


@pytest.mark.parametrize(("name", "atol"), [("tflite", FLOAT_ATOL), ("tflite-int8", INT8_ATOL)])
def test_litert_is_used_and_predicts_as_tf_lite(name: str, atol: float, bundle: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    x = np.asarray(load_samples(bundle), dtype=np.float32)
    keras_y = np.asarray(load_model(bundle)(x, training=False))
    runtimes.interpreter_class.cache_clear()
    used, litert_y = predictions(name, bundle, x)
    assert used == "litert"
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)  # as if LiteRT were not installed
    runtimes.interpreter_class.cache_clear()
    try:
        used, tf_y = predictions(name, bundle, x)
    finally:
        runtimes.interpreter_class.cache_clear()
    assert used == "tf.lite"
    np.testing.assert_allclose(litert_y, tf_y, atol=FLOAT_ATOL)  # one flatbuffer, two interpreters
    np.testing.assert_allclose(litert_y, keras_y, atol=atol)
