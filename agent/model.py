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
FAMILIES = ("mlp", "cnn", "rnn")
POOLINGS = ("max", "avg", "none")
# Initialisers (Keras names). What each is for is the Train page's help text.
WEIGHT_INITS = ("glorot_uniform", "glorot_normal", "he_uniform", "he_normal", "lecun_normal", "random_normal",
                "zeros")
BIAS_INITS = ("zeros", "constant", "random_normal")
RNN_CELLS = ("gru", "lstm", "simple_rnn")
RNN_INPUTS = ("embedding", "dense")
MAX_RNN_LAYERS = 2
MAX_EMBED_DIM = 512
# An embedding input takes token ids 0..vocab-1; the vocabulary is read off the training data, else this.
DEFAULT_VOCAB = 64
MAX_VOCAB = 100_000
# Recurrent layers over at most this many steps are unrolled: a static graph that TFLite converts (its converter
# refuses the TensorList ops of a symbolic loop) and that runs faster on CPU for short sequences.
MAX_UNROLL_STEPS = 200
# "fit": Keras model.fit; "tape": the hand-written GradientTape loop of one Dense layer f(Wx + b) (agent/tape.py).
TRAIN_MODES = ("fit", "tape")
TAPE_ACTIVATIONS = ("linear", "relu", "tanh", "sigmoid")  # the f of the tape loop (those of the synthetic data)
# What a target can watch; metrics with "accuracy" in the name are reached from below, the rest from above.
TARGET_METRICS = ("loss", "val_loss", "accuracy", "val_accuracy", "mae", "val_mae")
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
    # Initialisers of every Dense/Conv2D/recurrent kernel and bias (recurrent kernels stay orthogonal).
    weight_init: str = "glorot_uniform"
    bias_init: str = "zeros"
    init_stddev: float = 0.05  # stddev of random_normal (weights and biases)
    bias_value: float = 0.0  # the bias of bias_init "constant"
    # Stop as soon as target_metric reaches target (<= for losses/mae, >= for accuracy); None = off.
    target: float | None = None
    target_metric: str = "loss"
    rnn_cell: str = "gru"  # rnn: gru | lstm | simple_rnn
    rnn_units: tuple[int, ...] = (32,)  # rnn: units of each recurrent layer (1 or 2 layers)
    rnn_input: str = "embedding"  # rnn: embedding (integer tokens) or dense (one float per time step)
    embed_dim: int = 16  # rnn: embedding width
    mode: str = "fit"  # fit | tape

    def __post_init__(self) -> None:
        hidden = tuple(self.hidden)
        object.__setattr__(self, "hidden", hidden)
        filters = tuple(self.filters)
        object.__setattr__(self, "filters", filters)
        rnn_units = tuple(self.rnn_units)
        object.__setattr__(self, "rnn_units", rnn_units)
        _choice("family", self.family, FAMILIES)
        _choice("weight_init", self.weight_init, WEIGHT_INITS)
        _choice("bias_init", self.bias_init, BIAS_INITS)
        _number("init_stddev", self.init_stddev, 1e-6, 10.0)
        _number("bias_value", self.bias_value, -100.0, 100.0)
        _choice("target_metric", self.target_metric, TARGET_METRICS)
        if self.target is not None:
            hi = 1.0 if "accuracy" in self.target_metric else 1e12
            _number("target", self.target, 0.0, hi)
        _choice("rnn_cell", self.rnn_cell, RNN_CELLS)
        _choice("rnn_input", self.rnn_input, RNN_INPUTS)
        _integer("embed_dim", self.embed_dim, 1, MAX_EMBED_DIM)
        if not 1 <= len(rnn_units) <= MAX_RNN_LAYERS:
            raise ValueError(f"rnn_units: 1 or {MAX_RNN_LAYERS} recurrent layers; got {len(rnn_units)}")
        for n in rnn_units:
            if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_UNITS:
                raise ValueError(f"rnn_units: each recurrent layer needs 1..{MAX_UNITS} units; got {n!r}")
        _choice("mode", self.mode, TRAIN_MODES)
        if self.mode == "tape" and (self.family != "mlp" or hidden):
            raise ValueError("mode tape trains one Dense layer f(Wx + b): it needs family mlp and no hidden layers")
        if self.mode == "tape" and self.output_activation not in TAPE_ACTIVATIONS:
            raise ValueError(f"mode tape: f (the output activation) must be one of {', '.join(TAPE_ACTIVATIONS)};"
                             f" got {self.output_activation!r}")
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
        if self.family == "rnn":
            head = f" + {dense}" if self.hidden else ""
            inp = f"emb{self.embed_dim}" if self.rnn_input == "embedding" else "dense"
            return f"{self.rnn_cell} {','.join(str(u) for u in self.rnn_units)} {inp}{head}"
        if self.mode == "tape":
            return f"tape loop f(Wx + b), f={self.output_activation}"
        if self.family == "cnn":
            head = f" + {dense}" if self.hidden else ""
            return f"cnn {','.join(str(f) for f in self.filters)} k{self.kernel_size} {self.pooling}{head}"
        return f"{dense} mlp" if self.hidden else "linear (no hidden layer)"


def target_reached(metric: str, value: float, target: float) -> bool:
    """Accuracy is reached from below (>=), losses and errors from above (<=)."""
    return value >= target if "accuracy" in metric else value <= target


def check_target(config: ModelConfig, task: str) -> None:
    """Refuse a target metric this task never logs (accuracy for regression, mae for classification)."""
    if config.target is None:
        return
    metric = config.target_metric
    needs = "classification" if "accuracy" in metric else "regression" if "mae" in metric else task
    if needs != task:
        raise ValueError(f"target metric {metric} is logged for {needs} only; this is {task}: pick loss or val_loss")


def parse_units(text: str, what: str = "filters") -> tuple[int, ...]:
    """'16,32' (or '16x32') -> (16, 32): filters of conv blocks or units of recurrent layers."""
    try:
        return tuple(int(part) for part in text.strip().replace("x", ",").split(","))
    except ValueError:
        raise ValueError(f"{what} must be comma-separated integers like 16,32; got {text!r}") from None


def parse_filters(text: str) -> tuple[int, ...]:
    """'16,32' (or '16x32') -> (16, 32): the filters of each conv block."""
    return parse_units(text, "filters")


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


def kernel_initializer(config: ModelConfig) -> keras.initializers.Initializer:
    """A fresh weight initialiser for one layer (unseeded: keras.utils.set_random_seed makes it reproducible,
    and a seeded instance would give every layer of one shape the same weights)."""
    import keras

    if config.weight_init == "random_normal":
        return keras.initializers.RandomNormal(stddev=config.init_stddev)
    return keras.initializers.get(config.weight_init)


def bias_initializer(config: ModelConfig) -> keras.initializers.Initializer:
    import keras

    if config.bias_init == "constant":
        return keras.initializers.Constant(config.bias_value)
    if config.bias_init == "random_normal":
        return keras.initializers.RandomNormal(stddev=config.init_stddev)
    return keras.initializers.Zeros()


def _inits(config: ModelConfig) -> dict[str, Any]:
    return {"kernel_initializer": kernel_initializer(config), "bias_initializer": bias_initializer(config)}


def vocab_size(train_x: np.ndarray | None) -> int:
    """Token ids run 0..max seen in the training data; without data, DEFAULT_VOCAB."""
    if train_x is None or not len(train_x):
        return DEFAULT_VOCAB
    top = round(float(train_x.max()))
    if top < 0 or top >= MAX_VOCAB:
        raise ValueError(f"an embedding input takes token ids 0..{MAX_VOCAB - 1}; the data holds {top}:"
                         " use --rnn-input dense for real-valued sequences")
    return top + 1


def build_model(config: ModelConfig, spec: DataSpec, train_x: np.ndarray | None = None) -> keras.Model:
    """Input -> Normalization -> [conv blocks -> Flatten | recurrent layers] -> Dense stack -> task head, compiled.

    The input has the data's ``model_input_shape``: ``(n_features,)`` for tabular
    rows, ``(H, W, C)`` for images. The Normalization layer (per feature, or per
    channel for images) is adapted on ``train_x`` when given, so the model takes
    raw values and serving needs no separate preprocessing step.

    An rnn reads a row of ``n_features`` values as a sequence of that length. It
    still takes float rows (what the endpoint serves today): with an embedding
    input, a Discretization layer inside the model rounds each value to the
    nearest token id and clips it into the vocabulary, so a served float never
    indexes outside the embedding table.
    """
    import keras

    shape = spec.model_input_shape
    if config.family == "cnn" and len(shape) != 3:
        raise ValueError(
            f"a cnn needs image-shaped data (H, W, C); {spec.name} has input shape {shape}:"
            " give an image shape (e.g. 8,8,1 for digits)"
        )
    if config.family == "rnn" and len(shape) != 1:
        raise ValueError(f"an rnn reads each row as a sequence of values; {spec.name} has input shape {shape}:"
                         " drop the image shape")
    keras.utils.set_random_seed(config.seed)
    inputs = keras.Input(shape=shape, name="features", dtype="float32")
    if config.family == "rnn":
        x = _recurrent(config, inputs, shape[0], train_x)
    else:
        norm = keras.layers.Normalization(name="normalize")
        if train_x is not None:
            norm.adapt(train_x)
        x = norm(inputs)
    if config.family == "cnn":
        x = _conv_blocks(config, x)
    if len(shape) > 1:
        x = keras.layers.Flatten(name="flatten")(x)
    for i, units in enumerate(config.hidden):
        x = keras.layers.Dense(units, activation=config.activation, name=f"dense_{i}", **_inits(config))(x)
        if config.dropout > 0:
            x = keras.layers.Dropout(config.dropout, seed=config.seed + i, name=f"dropout_{i}")(x)
    if spec.task == "classification":
        if spec.n_classes < 2:
            raise ValueError(f"classification needs at least 2 class labels; got {spec.n_classes}")
        outputs = keras.layers.Dense(spec.n_classes, activation="softmax", name="probabilities",
                                     **_inits(config))(x)
        loss, metrics = "sparse_categorical_crossentropy", ["accuracy"]
    else:
        outputs = keras.layers.Dense(1, activation=config.output_activation, name="prediction", **_inits(config))(x)
        loss, metrics = "mse", ["mae"]
    model = keras.Model(inputs, outputs, name=f"{spec.name}_{config.family}")
    model.compile(optimizer=make_optimizer(config), loss=loss, metrics=metrics)
    return model


def _recurrent(config: ModelConfig, inputs: keras.KerasTensor, length: int,
               train_x: np.ndarray | None) -> keras.KerasTensor:
    """Tokens -> Embedding, or values -> (length, 1) steps; then 1-2 recurrent layers (the last returns its state)."""
    import keras

    if config.rnn_input == "embedding":
        vocab = vocab_size(train_x)
        # Built-in layers only (safe_mode loading): value v -> bucket round(v) clipped to 0..vocab-1.
        tokens = keras.layers.Discretization(bin_boundaries=[i + 0.5 for i in range(vocab - 1)],
                                             name="tokens")(inputs)
        x = keras.layers.Embedding(vocab, config.embed_dim, name="embed")(tokens)
    else:
        norm = keras.layers.Normalization(axis=None, name="normalize")  # one mean/var over all steps
        if train_x is not None:
            norm.adapt(train_x)
        x = keras.layers.Reshape((length, 1), name="steps")(norm(inputs))
    cell = {"gru": keras.layers.GRU, "lstm": keras.layers.LSTM, "simple_rnn": keras.layers.SimpleRNN}[config.rnn_cell]
    last = len(config.rnn_units) - 1
    for i, units in enumerate(config.rnn_units):
        x = cell(units, return_sequences=i < last, dropout=config.dropout, unroll=length <= MAX_UNROLL_STEPS,
                 name=f"{config.rnn_cell}_{i}", **_inits(config))(x)
    return x


def _conv_blocks(config: ModelConfig, x: keras.KerasTensor) -> keras.KerasTensor:
    """Conv2D ('same' padding) -> 2x2 pooling -> dropout, once per entry of ``filters``.

    Pooling uses 'same' padding too, so a small image (digits are 8x8) shrinks to
    1x1 at worst instead of failing when there are more blocks than halvings.
    """
    import keras

    pool = {"max": keras.layers.MaxPooling2D, "avg": keras.layers.AveragePooling2D}.get(config.pooling)
    for i, n in enumerate(config.filters):
        x = keras.layers.Conv2D(n, config.kernel_size, padding="same", activation=config.activation,
                                name=f"conv_{i}", **_inits(config))(x)
        if pool is not None:
            x = pool(pool_size=2, padding="same", name=f"pool_{i}")(x)
        if config.dropout > 0:
            x = keras.layers.Dropout(config.dropout, seed=config.seed + 100 + i, name=f"conv_dropout_{i}")(x)
    return x
