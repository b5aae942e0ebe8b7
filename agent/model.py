"""ModelConfig (validated, frozen) and build_model: config + data spec -> keras.Model."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from agent.data import DataSpec
from runs.configs import known_fields, plain_dict

if TYPE_CHECKING:
    import keras
    import numpy as np

ACTIVATIONS = ("relu", "gelu", "tanh", "sigmoid", "elu", "selu", "swish", "linear")
OPTIMIZERS = ("adam", "sgd", "rmsprop")
MAX_LAYERS = 8
MAX_UNITS = 4096


@dataclass(frozen=True)
class ModelConfig:
    """Everything that decides how a model is built and trained.

    ``output_activation`` applies to regression heads only (classification heads
    are softmax); with no hidden layers and the synthetic ``y = f(Wx + b)`` data
    it makes the model a single neuron ``f(Wx + b)``.
    """

    hidden: tuple[int, ...] = (128, 128)
    activation: str = "relu"
    output_activation: str = "linear"
    dropout: float = 0.0
    optimizer: str = "adam"
    learning_rate: float = 1e-3
    momentum: float = 0.9
    batch_size: int = 64
    epochs: int = 20
    patience: int = 0  # early-stopping patience in epochs on val_loss; 0 = off
    seed: int = 0

    def __post_init__(self) -> None:
        hidden = tuple(self.hidden)
        object.__setattr__(self, "hidden", hidden)
        if len(hidden) > MAX_LAYERS:
            raise ValueError(f"hidden: at most {MAX_LAYERS} layers; got {len(hidden)}")
        for units in hidden:
            if not isinstance(units, int) or isinstance(units, bool) or not 1 <= units <= MAX_UNITS:
                raise ValueError(f"hidden: each layer needs 1..{MAX_UNITS} units; got {units!r}")
        _choice("activation", self.activation, ACTIVATIONS)
        _choice("output_activation", self.output_activation, ACTIVATIONS)
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _number("dropout", self.dropout, 0.0, 0.9)
        _number("learning_rate", self.learning_rate, 1e-6, 10.0)
        _number("momentum", self.momentum, 0.0, 0.999)
        _integer("batch_size", self.batch_size, 1, 65536)
        _integer("epochs", self.epochs, 1, 10000)
        _integer("patience", self.patience, 0, 1000)
        _integer("seed", self.seed, 0, 2**31 - 1)

    def to_dict(self) -> dict[str, Any]:
        return plain_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        return cls(**known_fields(cls, d, "model config"))


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")


def _number(name: str, value: Any, lo: float, hi: float) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or not lo <= value <= hi:
        raise ValueError(f"{name} must be a number in [{lo:g}, {hi:g}]; got {value!r}")


def _integer(name: str, value: Any, lo: int, hi: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise ValueError(f"{name} must be an integer in [{lo}, {hi}]; got {value!r}")


def make_optimizer(config: ModelConfig) -> keras.optimizers.Optimizer:
    import keras

    if config.optimizer == "adam":
        return keras.optimizers.Adam(learning_rate=config.learning_rate)
    if config.optimizer == "sgd":
        return keras.optimizers.SGD(learning_rate=config.learning_rate, momentum=config.momentum)
    return keras.optimizers.RMSprop(learning_rate=config.learning_rate)


def build_model(config: ModelConfig, spec: DataSpec, train_x: np.ndarray | None = None) -> keras.Model:
    """Input -> Normalization -> Dense stack -> task head, compiled.

    The Normalization layer is adapted on ``train_x`` (when given), so the model
    takes raw features and serving needs no separate preprocessing step.
    """
    import keras

    keras.utils.set_random_seed(config.seed)
    inputs = keras.Input(shape=(spec.n_features,), name="features", dtype="float32")
    norm = keras.layers.Normalization(name="normalize")
    if train_x is not None:
        norm.adapt(train_x)
    x = norm(inputs)
    for i, units in enumerate(config.hidden):
        x = keras.layers.Dense(units, activation=config.activation, name=f"dense_{i}")(x)
        if config.dropout > 0:
            x = keras.layers.Dropout(config.dropout, seed=config.seed + i, name=f"dropout_{i}")(x)
    if spec.task == "classification":
        if spec.n_classes < 2:
            raise ValueError(f"classification needs at least 2 class labels; got {spec.n_classes}")
        outputs = keras.layers.Dense(spec.n_classes, activation="softmax", name="probabilities")(x)
        loss, metrics = "sparse_categorical_crossentropy", ["accuracy"]
    else:
        outputs = keras.layers.Dense(1, activation=config.output_activation, name="prediction")(x)
        loss, metrics = "mse", ["mae"]
    model = keras.Model(inputs, outputs, name=f"{spec.name}_mlp")
    model.compile(optimizer=make_optimizer(config), loss=loss, metrics=metrics)
    return model
