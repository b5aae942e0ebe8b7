"""ModelConfig (validated, frozen) and build_model: config + data spec -> keras.Model."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from agent.data import BUILTIN_IMAGE_SHAPES, DataSpec
from runs.configs import known_fields, plain_dict

if TYPE_CHECKING:
    import keras
    import numpy as np

ACTIVATIONS = ("relu", "gelu", "tanh", "sigmoid", "elu", "selu", "swish", "linear")
OPTIMIZERS = ("adam", "sgd", "rmsprop")
FAMILIES = ("mlp", "cnn")
POOLINGS = ("max", "avg", "none")
MAX_LAYERS = 8
MAX_UNITS = 4096
MAX_CONV_BLOCKS = 6
MAX_FILTERS = 1024
MAX_KERNEL_SIZE = 11


@dataclass(frozen=True)
class ModelConfig:
    """Everything that decides how a model is built and trained.

    ``family`` ``mlp`` is a Dense stack on the features; ``cnn`` puts conv blocks
    (one per entry of ``filters``: Conv2D with ``kernel_size`` and ``activation``,
    then ``pooling`` and ``dropout``) in front of that Dense stack, on image-shaped
    data (a :class:`DataSpec` with an ``input_shape`` of (H, W, C)). The conv
    fields are ignored by the MLP.

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
    family: str = "mlp"
    filters: tuple[int, ...] = (16, 32)  # cnn: filters of each conv block
    kernel_size: int = 3  # cnn: square kernel side
    pooling: str = "max"  # cnn: 2x2 pooling after each conv block, or none

    def __post_init__(self) -> None:
        hidden = tuple(self.hidden)
        object.__setattr__(self, "hidden", hidden)
        filters = tuple(self.filters)
        object.__setattr__(self, "filters", filters)
        _choice("family", self.family, FAMILIES)
        _choice("pooling", self.pooling, POOLINGS)
        _integer("kernel_size", self.kernel_size, 1, MAX_KERNEL_SIZE)
        if len(filters) > MAX_CONV_BLOCKS:
            raise ValueError(f"filters: at most {MAX_CONV_BLOCKS} conv blocks; got {len(filters)}")
        if self.family == "cnn" and not filters:
            raise ValueError("filters: a cnn needs at least one conv block, e.g. 16,32")
        for n in filters:
            if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_FILTERS:
                raise ValueError(f"filters: each conv block needs 1..{MAX_FILTERS} filters; got {n!r}")
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

    @property
    def summary(self) -> str:
        """A short human description: '128x128 mlp', 'cnn 16,32 k3 max + 64'."""
        dense = "x".join(str(u) for u in self.hidden) or "no hidden layer"
        if self.family == "cnn":
            head = f" + {dense}" if self.hidden else ""
            return f"cnn {','.join(str(f) for f in self.filters)} k{self.kernel_size} {self.pooling}{head}"
        return f"{dense} mlp" if self.hidden else "linear (no hidden layer)"


def parse_filters(text: str) -> tuple[int, ...]:
    """'16,32' (or '16x32') -> (16, 32): the filters of each conv block."""
    try:
        return tuple(int(part) for part in text.strip().replace("x", ",").split(","))
    except ValueError:
        raise ValueError(f"filters must be comma-separated integers like 16,32; got {text!r}") from None


def image_shape_for(config: ModelConfig, dataset: str, given: tuple[int, ...] = ()) -> tuple[int, ...]:
    """The image shape to train ``config`` on: the one given, else a cnn's built-in default (digits: 8x8x1)."""
    if given:
        return tuple(given)
    return BUILTIN_IMAGE_SHAPES.get(dataset, ()) if config.family == "cnn" else ()


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
    """Input -> Normalization -> [conv blocks -> Flatten] -> Dense stack -> task head, compiled.

    The input has the data's ``model_input_shape``: ``(n_features,)`` for tabular
    rows, ``(H, W, C)`` for images. The Normalization layer (per feature, or per
    channel for images) is adapted on ``train_x`` when given, so the model takes
    raw values and serving needs no separate preprocessing step.
    """
    import keras

    shape = spec.model_input_shape
    if config.family == "cnn" and len(shape) != 3:
        raise ValueError(
            f"a cnn needs image-shaped data (H, W, C); {spec.name} has input shape {shape}:"
            " give an image shape (e.g. 8,8,1 for digits)"
        )
    keras.utils.set_random_seed(config.seed)
    inputs = keras.Input(shape=shape, name="features", dtype="float32")
    norm = keras.layers.Normalization(name="normalize")
    if train_x is not None:
        norm.adapt(train_x)
    x = norm(inputs)
    if config.family == "cnn":
        x = _conv_blocks(config, x)
    if len(shape) > 1:
        x = keras.layers.Flatten(name="flatten")(x)
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
    model = keras.Model(inputs, outputs, name=f"{spec.name}_{config.family}")
    model.compile(optimizer=make_optimizer(config), loss=loss, metrics=metrics)
    return model


def _conv_blocks(config: ModelConfig, x: keras.KerasTensor) -> keras.KerasTensor:
    """Conv2D ('same' padding) -> 2x2 pooling -> dropout, once per entry of ``filters``.

    Pooling uses 'same' padding too, so a small image (digits are 8x8) shrinks to
    1x1 at worst instead of failing when there are more blocks than halvings.
    """
    import keras

    pool = {"max": keras.layers.MaxPooling2D, "avg": keras.layers.AveragePooling2D}.get(config.pooling)
    for i, n in enumerate(config.filters):
        x = keras.layers.Conv2D(n, config.kernel_size, padding="same", activation=config.activation,
                                name=f"conv_{i}")(x)
        if pool is not None:
            x = pool(pool_size=2, padding="same", name=f"pool_{i}")(x)
        if config.dropout > 0:
            x = keras.layers.Dropout(config.dropout, seed=config.seed + 100 + i, name=f"conv_dropout_{i}")(x)
    return x
