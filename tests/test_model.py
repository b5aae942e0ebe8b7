"""ModelConfig validation and build_model, including the single-neuron y = f(Wx + b) case."""

from __future__ import annotations

import numpy as np
import pytest

from agent.data import make_synthetic, split
from agent.model import ModelConfig, build_model


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("hidden", (0,), r"hidden: each layer needs 1\.\.4096 units"),
        ("hidden", (8,) * 9, "hidden: at most 8 layers"),
        ("hidden", (8.5,), "hidden: each layer needs"),
        ("activation", "softmaxx", "activation must be one of relu, gelu"),
        ("output_activation", "nope", "output_activation must be one of"),
        ("dropout", 0.95, r"dropout must be a number in \[0, 0.9\]"),
        ("dropout", -0.1, "dropout must be a number"),
        ("optimizer", "adagrad", "optimizer must be one of adam, sgd, rmsprop"),
        ("learning_rate", 0.0, r"learning_rate must be a number in \[1e-06, 10\]"),
        ("learning_rate", float("nan"), "learning_rate must be a number"),
        ("momentum", 1.5, "momentum must be a number"),
        ("batch_size", 0, r"batch_size must be an integer in \[1, 65536\]"),
        ("batch_size", 32.0, "batch_size must be an integer"),
        ("epochs", 0, r"epochs must be an integer in \[1, 10000\]"),
        ("patience", -1, "patience must be an integer"),
        ("seed", -5, "seed must be an integer"),
        ("epochs", True, "epochs must be an integer"),
    ],
)
def test_each_bad_field_names_itself_and_its_range(field: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ModelConfig(**{field: value})


def test_round_trip_and_unknown_fields() -> None:
    cfg = ModelConfig(hidden=(16, 8), activation="gelu", optimizer="sgd")
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown model config key\\(s\\) units"):
        ModelConfig.from_dict({"units": 3})


def test_build_classifier_structure() -> None:
    ds = make_synthetic(n_samples=50, n_features=4)  # regression data, used only for shapes below
    spec = ds.spec()
    model = build_model(ModelConfig(hidden=(8, 4), dropout=0.2), spec, ds.x)
    names = [layer.name for layer in model.layers]
    assert names[:2] == ["features", "normalize"]
    assert "dropout_0" in names and model.output_shape == (None, 1)
    # The normalization layer was adapted on the training features.
    mean = np.asarray(model.get_layer("normalize").mean).reshape(-1)
    np.testing.assert_allclose(mean, ds.x.mean(axis=0), atol=1e-4)


def test_zero_hidden_layers_learns_the_single_neuron_to_near_zero_loss() -> None:
    # The seed's own example: y = tanh(Wx + b), one dense layer with that activation,
    # MSE loss, plain gradient descent.
    ds = make_synthetic(n_samples=1000, n_features=5, activation="tanh", noise=0.0, seed=2)
    s = split(ds, seed=2)
    cfg = ModelConfig(hidden=(), output_activation="tanh", optimizer="sgd", momentum=0.0,
                      learning_rate=0.5, batch_size=32, epochs=40, seed=2)
    model = build_model(cfg, ds.spec(), s.train.x)
    initial = float(model.evaluate(s.test.x, s.test.y, verbose=0)[0])
    model.fit(s.train.x, s.train.y, batch_size=cfg.batch_size, epochs=cfg.epochs, verbose=0)
    final = float(model.evaluate(s.test.x, s.test.y, verbose=0)[0])
    assert len(model.layers) == 3  # input, normalize, the one dense neuron
    assert final < 1e-4 < initial
