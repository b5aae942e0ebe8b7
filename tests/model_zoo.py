"""Tiny models of the shapes users bring, built and saved without any download.

- ``cnn``        a ``.keras`` CNN on one (8, 8, 1) image input
- ``two_input``  a ``.keras`` model with a float vector and an int32 token sequence (Embedding)
- ``saved``      a SavedModel directory (Keras' ``model.export``) with one (50,) input
- ``two_output`` a ``.keras`` model with two named outputs (class probabilities and a value)

Each comes with random weights (seeded) and a function that makes valid inputs, so
tests can compare the endpoint's answers with the model's own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

VOCAB = 20


@dataclass(frozen=True)
class ZooModel:
    name: str
    path: Path  # the .keras file or SavedModel directory
    inputs: dict[str, tuple[tuple[int, ...], str]]  # name -> (shape, dtype)
    outputs: dict[str, tuple[int, ...]]  # name -> shape
    reference: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]  # the model's own answers

    def make_inputs(self, n: int, seed: int = 0) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(seed)
        out = {}
        for name, (shape, dtype) in self.inputs.items():
            if dtype.startswith("int"):
                out[name] = rng.integers(0, VOCAB, size=(n, *shape)).astype(dtype)
            else:
                out[name] = rng.uniform(-1, 1, size=(n, *shape)).astype(dtype)
        return out


def build_zoo(folder: Path) -> dict[str, ZooModel]:
    import keras

    keras.utils.set_random_seed(7)
    zoo: dict[str, ZooModel] = {}

    zoo["cnn"] = _keras_entry("cnn", cnn_model(), folder / "cnn" / "cnn.keras")

    vec = keras.Input((6,), name="vec")
    tokens = keras.Input((5,), name="tokens", dtype="int32")
    emb = keras.layers.Flatten(name="emb_flat")(keras.layers.Embedding(VOCAB, 3, name="emb")(tokens))
    h = keras.layers.Concatenate(name="cat")([vec, emb])
    two_in = keras.Model({"vec": vec, "tokens": tokens}, keras.layers.Dense(2, name="score")(h), name="two_in")
    zoo["two_input"] = _keras_entry("two_input", two_in, folder / "two_input" / "two_input.keras")

    x = keras.Input((50,), name="x")
    sm = keras.Model(x, keras.layers.Dense(4, activation="tanh", name="y")(keras.layers.Dense(8, name="d")(x)))
    saved_dir = folder / "saved" / "saved_model"
    saved_dir.parent.mkdir(parents=True)
    sm.export(str(saved_dir), verbose=False)
    zoo["saved"] = _saved_entry("saved", saved_dir)

    f = keras.Input((4,), name="f")
    h = keras.layers.Dense(8, activation="relu", name="h")(f)
    two_out = keras.Model(f, {"probs": keras.layers.Dense(3, activation="softmax", name="probs")(h),
                              "value": keras.layers.Dense(1, name="value")(h)}, name="two_out")
    zoo["two_output"] = _keras_entry("two_output", two_out, folder / "two_output" / "two_output.keras")
    return zoo


def cnn_model() -> Any:
    """A tiny CNN on one (8, 8, 1) image (conv, pool, dense softmax over 3 classes)."""
    import keras

    img = keras.Input((8, 8, 1), name="image")
    h = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(img)
    h = keras.layers.MaxPooling2D(name="pool")(h)
    h = keras.layers.Flatten(name="flat")(h)
    return keras.Model(img, keras.layers.Dense(3, activation="softmax", name="probs")(h), name="cnn")


def _keras_entry(name: str, model: Any, path: Path) -> ZooModel:
    import keras

    path.parent.mkdir(parents=True)
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True, compile=False)
    inputs = {t.name: (tuple(t.shape[1:]), str(t.dtype)) for t in loaded.inputs}
    names = list(loaded.output_names)
    outputs = {n: tuple(t.shape[1:]) for n, t in zip(names, loaded.outputs, strict=True)}
    single = len(inputs) == 1

    def reference(x: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        y = loaded(next(iter(x.values())) if single else x, training=False)
        if isinstance(y, dict):
            return {k: np.asarray(v) for k, v in y.items()}
        return {names[0]: np.asarray(y)}

    return ZooModel(name, path, inputs, outputs, reference)


def _saved_entry(name: str, path: Path) -> ZooModel:
    import tensorflow as tf

    loaded = tf.saved_model.load(str(path))
    fn = loaded.signatures["serving_default"]
    _, kwargs = fn.structured_input_signature
    inputs = {k: (tuple(s.shape[1:]), s.dtype.name) for k, s in kwargs.items()}
    outputs = {k: tuple(s.shape[1:]) for k, s in fn.structured_outputs.items()}

    def reference(x: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {k: np.asarray(v) for k, v in fn(**{k: tf.constant(v) for k, v in x.items()}).items()}

    return ZooModel(name, path, inputs, outputs, reference)
