"""The founding description's worked example as code: one layer ``o = f(Wx + b)`` trained by hand.

Forward pass, mean squared error, ``tf.GradientTape`` for ``dW`` and ``db``, then
plain gradient descent ``W -= lr * dW``, ``b -= lr * db`` with ``assign_sub`` —
optionally compiled with ``tf.function``. :class:`TapeLoop` (and :func:`tape_fit`)
runs it over shuffled mini-batches for a number of epochs. It works on any pair of variables: bare
``tf.Variable``s (tests, ``bench/training_loop.py``) or the kernel and bias of a
Keras Dense layer, which is how ``agent.training`` records a ``mode="tape"`` run
and saves a servable model.

This module imports TensorFlow when its functions run, not at import.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from agent.model import TAPE_ACTIVATIONS


@dataclass(frozen=True)
class EpochLogs:
    """One epoch of the loop: mean batch loss and MAE (as Keras' fit reports them), and validation's."""

    loss: float
    mae: float
    val_loss: float | None = None
    val_mae: float | None = None

    def as_logs(self) -> dict[str, float]:
        logs = {"loss": self.loss, "mae": self.mae}
        if self.val_loss is not None and self.val_mae is not None:
            logs.update(val_loss=self.val_loss, val_mae=self.val_mae)
        return logs


def activation_fn(name: str) -> Callable[[Any], Any]:
    import tensorflow as tf

    fns = {"linear": tf.identity, "relu": tf.nn.relu, "tanh": tf.tanh, "sigmoid": tf.sigmoid}
    if name not in fns:
        raise ValueError(f"the tape loop's f must be one of {', '.join(TAPE_ACTIVATIONS)}; got {name!r}")
    return fns[name]


def make_step(w: Any, b: Any, *, activation: str, learning_rate: float,
              compiled: bool = True) -> Callable[[Any, Any], tuple[Any, Any]]:
    """One gradient-descent step on a batch ``(x, y)``; returns (batch MSE, batch MAE).

    ``compiled`` wraps it in ``tf.function`` with a batch dimension of None, so a
    short last batch does not trace a second graph.
    """
    import tensorflow as tf

    f = activation_fn(activation)
    lr = tf.constant(learning_rate, tf.float32)

    def step(x: Any, y: Any) -> tuple[Any, Any]:
        with tf.GradientTape() as tape:
            o = f(tf.matmul(x, w) + b)  # forward: o = f(Wx + b)
            loss = tf.reduce_mean(tf.square(y - o))  # mean squared error
        dw, db = tape.gradient(loss, [w, b])
        w.assign_sub(lr * dw)  # W -= lr * dW
        b.assign_sub(lr * db)  # b -= lr * db
        return loss, tf.reduce_mean(tf.abs(y - o))

    if not compiled:
        return step
    n_in, n_out = int(w.shape[0]), int(w.shape[1])
    return tf.function(step, input_signature=[tf.TensorSpec([None, n_in], tf.float32),
                                              tf.TensorSpec([None, n_out], tf.float32)])


def make_forward(w: Any, b: Any, *, activation: str, compiled: bool = True) -> Callable[[Any], Any]:
    import tensorflow as tf

    f = activation_fn(activation)

    def forward(x: Any) -> Any:
        return f(tf.matmul(x, w) + b)

    if not compiled:
        return forward
    return tf.function(forward, input_signature=[tf.TensorSpec([None, int(w.shape[0])], tf.float32)])


def mse(forward: Callable[[Any], Any], x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(MSE, MAE) of ``forward`` on the whole of ``x``."""
    err = np.asarray(forward(_2d(x))) - _2d(y)
    return float(np.mean(err**2)), float(np.mean(np.abs(err)))


def _2d(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, np.float32)
    return a.reshape(len(a), -1)


class TapeLoop:
    """The loop's compiled parts, built once for a pair of variables: ``fit`` can then run many times
    without tracing again (what ``bench/training_loop.py`` times)."""

    def __init__(self, w: Any, b: Any, *, activation: str = "linear", learning_rate: float = 0.1,
                 compiled: bool = True) -> None:
        self.w, self.b = w, b
        self.step = make_step(w, b, activation=activation, learning_rate=learning_rate, compiled=compiled)
        self.forward = make_forward(w, b, activation=activation, compiled=compiled)

    def loss(self, x: np.ndarray, y: np.ndarray) -> float:
        """MSE of the current W and b on the whole of ``x``."""
        return mse(self.forward, x, y)[0]

    def fit(
        self,
        x: np.ndarray,
        y: np.ndarray,
        *,
        epochs: int = 10,
        batch_size: int = 32,
        seed: int = 0,
        validation: tuple[np.ndarray, np.ndarray] | None = None,
        on_batch_end: Callable[[int], bool] | None = None,
        on_epoch_end: Callable[[int, EpochLogs], bool] | None = None,
    ) -> list[EpochLogs]:
        """Train W and b in place on ``y = f(xW + b)``; one EpochLogs per epoch run.

        Rows are reshuffled every epoch (numpy, seeded). ``on_batch_end(batch)`` and
        ``on_epoch_end(epoch, logs)`` return True to stop: the first ends the epoch
        (and the run) after that batch, the second ends the run after that epoch.
        """
        import tensorflow as tf

        x, y = _2d(x), _2d(y)
        if len(x) != len(y):
            raise ValueError(f"x has {len(x)} rows but y has {len(y)}")
        if x.shape[1] != int(self.w.shape[0]) or y.shape[1] != int(self.w.shape[1]):
            raise ValueError(f"W is {tuple(self.w.shape)} but the data maps {x.shape[1]} inputs to {y.shape[1]}"
                             " outputs")
        rng = np.random.default_rng(seed)
        history: list[EpochLogs] = []
        for epoch in range(epochs):
            order = rng.permutation(len(x))
            losses, maes, sizes = [], [], []
            stop = False
            for batch, start in enumerate(range(0, len(x), batch_size)):
                idx = order[start:start + batch_size]
                loss, mae = self.step(tf.constant(x[idx]), tf.constant(y[idx]))
                losses.append(float(loss))
                maes.append(float(mae))
                sizes.append(len(idx))
                if on_batch_end is not None and on_batch_end(batch):
                    stop = True
                    break
            logs = EpochLogs(float(np.average(losses, weights=sizes)), float(np.average(maes, weights=sizes)))
            if validation is not None:
                val_loss, val_mae = mse(self.forward, *validation)
                logs = EpochLogs(logs.loss, logs.mae, val_loss, val_mae)
            history.append(logs)
            if on_epoch_end is not None and on_epoch_end(epoch, logs):
                stop = True
            if stop:
                break
        return history


def tape_fit(
    x: np.ndarray,
    y: np.ndarray,
    w: Any,
    b: Any,
    *,
    activation: str = "linear",
    learning_rate: float = 0.1,
    compiled: bool = True,
    **fit_kwargs: Any,
) -> list[EpochLogs]:
    """Train ``w`` (n_in x n_out) and ``b`` (n_out) in place: ``TapeLoop(...).fit(x, y, **fit_kwargs)``."""
    loop = TapeLoop(w, b, activation=activation, learning_rate=learning_rate, compiled=compiled)
    return loop.fit(x, y, **fit_kwargs)
