"""Training: ``train()`` runs Keras ``fit`` and streams its progress into the run registry.

The ``train`` job kind: :func:`start` records a :class:`TrainJob` and launches
``python -m agent.training --run-id ID`` (what the Train page does); the CLI with
flags records the same config and runs the same job in the foreground.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from agent.data import (
    BUILTIN_DATASETS,
    MISSING_POLICIES,
    SYNTHETIC_ACTIVATIONS,
    DataSource,
    Splits,
    parse_image_shape,
    split,
)
from agent.model import (
    ACTIVATIONS,
    BIAS_INITS,
    FAMILIES,
    OPTIMIZERS,
    POOLINGS,
    RNN_CELLS,
    RNN_INPUTS,
    TARGET_METRICS,
    TRAIN_MODES,
    WEIGHT_INITS,
    ModelConfig,
    check_target,
    image_shape_for,
    parse_filters,
    parse_units,
    target_reached,
)
from runs import jobs, lifecycle
from runs.configs import atomic_write_text
from runs.registry import Registry, State

if TYPE_CHECKING:
    import keras

PROGRESS_INTERVAL_S = 0.25  # how often batch progress is written for progress bars
STOP_POLL_INTERVAL_S = 0.05  # how often the registry's stop flag is read between batches
# Which rule ended a run (summary "stop": {"rule", "epoch", "detail"}).
STOP_RULES = ("epochs", "target", "patience", "request")
TENSORBOARD_DIR = "tensorboard"  # event files in the run's artifacts: `tensorboard --logdir <artifacts>/tensorboard`
TENSORBOARD_MISSING = ("TensorBoard is not installed, so no event files were written: "
                       "pip install tensorboard (or 'tuneswarm[tensorboard]')")


@dataclass(frozen=True)
class TrainJob:
    """The frozen config of a ``train`` run: the model, the data it learns from, and what it logs."""

    model: ModelConfig
    data: DataSource
    tensorboard: bool = True  # write TensorBoard event files beside the artifacts (not part of the model)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model.to_dict(), "data": self.data.to_dict(), "tensorboard": self.tensorboard}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainJob:
        if "model" not in d:
            raise ValueError("a train run's config needs a 'model' (a ModelConfig dict)")
        tensorboard = d.get("tensorboard", True)
        if not isinstance(tensorboard, bool):
            raise ValueError(f"a train run's 'tensorboard' must be true or false, got {tensorboard!r}")
        return cls(ModelConfig.from_dict(dict(d["model"])), DataSource(**dict(d.get("data") or {})), tensorboard)

    @property
    def label(self) -> str:
        return f"train {(self.data.csv_path and Path(self.data.csv_path).stem) or self.data.dataset}"


UPLOAD_FILENAME = "data.csv"


def upload_filename(original: str | None) -> str:
    """The run's copy of an upload keeps the file's own name (the dataset is named after it), made path-safe."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(original or "").stem).strip("._")[:60]
    return f"{stem}.csv" if stem else UPLOAD_FILENAME


def start(registry: Registry, job: TrainJob, *, name: str | None = None, parent_id: str | None = None,
          upload: bytes | None = None, upload_name: str | None = None) -> str:
    """Record ``job`` as a new ``train`` run and launch its process; returns the run id at once.

    ``upload``: the bytes of an uploaded CSV, saved with the run (deleted with it) under
    ``upload_name`` (the file's own name) and trained on in place of ``job.data.csv_path``.
    """
    run_id = jobs.create(registry, "train", job.to_dict(), name=name or job.label, parent_id=parent_id)
    if upload is not None:
        try:
            path = atomic_write_text(registry.artifacts_dir(run_id) / upload_filename(upload_name), upload)
            data = replace(job.data, dataset="csv", csv_path=str(path))
            registry.update_config(run_id, {"data": data.to_dict()})
        except (OSError, ValueError) as exc:
            registry.finish_if_active(run_id, State.FAILED, lifecycle.one_line_error(exc))
            raise
    jobs.launch(registry, run_id)
    return run_id


def execute(registry: Registry, run_id: str, *, extra_callbacks: list[keras.callbacks.Callback] | None = None) -> str:
    """The job: train the run's recorded config inside ``job_context``; returns the final status."""
    job = TrainJob.from_dict(registry.get_run(run_id).config)
    with lifecycle.job_context(registry, run_id):
        train(job.model, job.data, registry, run_id, extra_callbacks=extra_callbacks, tensorboard=job.tensorboard)
    return registry.get_run(run_id).status


@dataclass(frozen=True)
class TrainResult:
    run_id: str
    status: str  # completed | stopped
    epochs_run: int
    metrics: dict[str, Any]
    param_count: int
    model_path: Path
    history: list[dict[str, float]] = field(default_factory=list)
    stop: dict[str, Any] = field(default_factory=dict)  # which rule ended the run: see stop_record


def _learning_rate(model: keras.Model) -> float:
    import keras

    return float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))


def make_streamer(registry: Registry, run_id: str, n_train: int) -> keras.callbacks.Callback:
    """The callback that streams epoch metrics and batch progress into the registry.

    Built by a factory so importing this module does not import Keras.
    """
    import keras

    class RegistryStreamer(keras.callbacks.Callback):
        """Per epoch: one metrics row. Per batch: progress (throttled) and the stop check."""

        def __init__(self) -> None:
            super().__init__()
            self.stopped_early_by_request = False

        def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
            self.epochs = int(self.params.get("epochs") or 0)
            self.steps = int(self.params.get("steps") or 0)
            self.history: list[dict[str, float]] = []
            self._epoch = 0
            self._epoch_t0 = time.perf_counter()
            self._last_progress = 0.0
            self._last_stop_poll = 0.0

        def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            self._epoch = epoch
            self._epoch_t0 = time.perf_counter()
            self._write_progress(batch=0)

        def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
            now = time.monotonic()
            if now - self._last_progress >= PROGRESS_INTERVAL_S:
                self._write_progress(batch=batch + 1)
            # A signal reaches this flag too: job_context turns it into the registry's stop flag.
            if now - self._last_stop_poll >= STOP_POLL_INTERVAL_S and self._poll_stop(now):
                self.stopped_early_by_request = True
                self.model.stop_training = True

        def _poll_stop(self, now: float) -> bool:
            self._last_stop_poll = now
            # The job this training runs in (itself, or a model sweep training in-process) may be stopping too.
            ctx = lifecycle.current()
            return registry.stop_requested(run_id) or (ctx is not None and ctx.stopping)

        def _write_progress(self, batch: int) -> None:
            self._last_progress = time.monotonic()
            registry.set_progress(
                run_id,
                {"epoch": self._epoch + 1, "epochs": self.epochs, "batch": batch, "batches": self.steps},
            )

        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            logs = logs or {}
            elapsed = time.perf_counter() - self._epoch_t0
            row = {k: float(v) for k, v in logs.items() if np.isscalar(v) or np.ndim(v) == 0}
            row.pop("learning_rate", None)
            row["lr"] = _learning_rate(self.model)
            row["epoch_time_s"] = elapsed
            row["samples_per_s"] = n_train / elapsed if elapsed > 0 else 0.0
            registry.log_metrics(run_id, epoch + 1, row)
            self.history.append({"epoch": epoch + 1, **row})
            self._write_progress(batch=self.steps)

        def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
            self._write_progress(batch=self.steps)

    return RegistryStreamer()


def make_tensorboard(logdir: Path) -> keras.callbacks.Callback | None:
    """Keras' TensorBoard callback writing per-epoch scalars to ``logdir`` (train/ and validation/);
    None when the optional ``tensorboard`` package is missing (tf.summary needs it)."""
    if importlib.util.find_spec("tensorboard") is None:
        return None
    import keras

    # Per epoch only, no graph, no profiler: the curves, at no measurable cost to training.
    return keras.callbacks.TensorBoard(str(logdir), histogram_freq=0, write_graph=False, write_images=False,
                                       update_freq="epoch", profile_batch=0)


def make_target_stop(metric: str, target: float) -> keras.callbacks.Callback:
    """The callback that ends training at the end of the first epoch whose ``metric`` reaches ``target``."""
    import keras

    class TargetStop(keras.callbacks.Callback):
        """One job: watch one metric per epoch, stop once it reaches the target, remember when."""

        def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
            self.reached_epoch = 0  # 1-based; 0 = not reached
            self.value: float | None = None

        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            logs = logs or {}
            if metric not in logs:
                raise ValueError(f"target metric {metric} is not logged by this run; it logs "
                                 f"{', '.join(sorted(logs))}")
            value = float(logs[metric])
            if target_reached(metric, value, target):
                self.reached_epoch, self.value = epoch + 1, value
                self.model.stop_training = True

    return TargetStop()


def stop_record(epochs_run: int, *, requested: bool, target_stop: Any = None, early_stop: Any = None,
                config: ModelConfig) -> dict[str, Any]:
    """Which rule ended the run and at which (1-based) epoch, for the run summary."""
    if requested:
        return {"rule": "request", "epoch": epochs_run, "detail": "stopped by request"}
    if target_stop is not None and target_stop.reached_epoch:
        op = ">=" if "accuracy" in config.target_metric else "<="
        return {"rule": "target", "epoch": target_stop.reached_epoch,
                "detail": f"{config.target_metric} {target_stop.value:.4g} {op} target {config.target:g}"}
    if early_stop is not None and getattr(early_stop, "stopped_epoch", 0) > 0:
        return {"rule": "patience", "epoch": early_stop.stopped_epoch + 1,
                "detail": f"val_loss did not improve for {config.patience} epochs (best weights kept)"}
    return {"rule": "epochs", "epoch": epochs_run, "detail": f"ran all {config.epochs} epochs"}


def evaluate(model: keras.Model, task: str, x: np.ndarray, y: np.ndarray, n_classes: int = 0) -> dict[str, Any]:
    """Test-set metrics computed with scikit-learn."""
    from sklearn import metrics as skm

    pred = model.predict(x, verbose=0, batch_size=1024)
    if task == "classification":
        labels = np.argmax(pred, axis=1)
        precision, recall, f1, _ = skm.precision_recall_fscore_support(
            y, labels, average="macro", zero_division=0
        )
        return {
            "accuracy": float(skm.accuracy_score(y, labels)),
            "precision": float(precision),
            "recall": float(recall),
            "f1": float(f1),
            "confusion_matrix": skm.confusion_matrix(y, labels, labels=list(range(n_classes))).tolist(),
        }
    flat = pred.reshape(-1)
    return {
        "mse": float(skm.mean_squared_error(y, flat)),
        "mae": float(skm.mean_absolute_error(y, flat)),
        "r2": float(skm.r2_score(y, flat)),
    }


def train(
    config: ModelConfig,
    source: DataSource,
    registry: Registry,
    run_id: str | None = None,
    *,
    extra_callbacks: list[keras.callbacks.Callback] | None = None,
    on_streamer: Callable[[keras.callbacks.Callback], None] | None = None,
    tensorboard: bool = True,
) -> TrainResult:
    """Train a model for ``run_id`` (created if None) in this process and save its bundle.

    ``tensorboard``: also write TensorBoard event files to ``<artifacts>/tensorboard``.

    The run records this process's pid, so a reaper marks it ``interrupted`` if
    the process is killed (e.g. a model sweep training in-process). Errors are
    recorded on the run (status ``failed`` with one line) and re-raised.
    """
    if run_id is None:
        job = TrainJob(config, source, tensorboard)
        run_id = jobs.create(registry, "train", job.to_dict(), name=job.label)
    if lifecycle.current() is None or lifecycle.current().run_id != run_id:  # type: ignore[union-attr]
        registry.mark_started(run_id, os.getpid(), lifecycle.process_start_time(os.getpid()))
    try:
        return _train(config, source, registry, run_id, extra_callbacks or [], on_streamer, tensorboard)
    except BaseException as exc:
        registry.finish_if_active(run_id, State.FAILED, lifecycle.one_line_error(exc))
        raise


def _train(
    config: ModelConfig,
    source: DataSource,
    registry: Registry,
    run_id: str,
    extra_callbacks: list[keras.callbacks.Callback],
    on_streamer: Callable[[keras.callbacks.Callback], None] | None,
    tensorboard: bool = True,
) -> TrainResult:
    import keras

    from agent.export import ModelMetadata, save_bundle
    from agent.model import build_model

    dataset = source.load()
    splits: Splits = split(dataset, seed=config.seed)
    spec = dataset.spec()
    registry.update_summary(run_id, {"data": {"name": dataset.name, "task": dataset.task,
                                              "n_features": dataset.n_features,
                                              "input_shape": list(spec.model_input_shape),
                                              "classes": list(dataset.class_labels),
                                              "sizes": splits.sizes, "notes": list(dataset.notes)}})
    # Image data is split as flat rows and shaped (n, H, W, C) for the model here.
    train_x, val_x, test_x = (spec.shape_rows(s.x) for s in (splits.train, splits.val, splits.test))
    check_target(config, dataset.task)
    model = build_model(config, spec, train_x)
    streamer = make_streamer(registry, run_id, len(splits.train.y))
    if on_streamer:
        on_streamer(streamer)
    callbacks = [streamer, *extra_callbacks]
    folder = registry.artifacts_dir(run_id)
    if tensorboard:
        board = make_tensorboard(folder / TENSORBOARD_DIR)
        if board is None:
            registry.update_summary(run_id, {"tensorboard": {"note": TENSORBOARD_MISSING}})
        else:
            callbacks.append(board)
            registry.update_summary(run_id, {"tensorboard": {"logdir": str(folder / TENSORBOARD_DIR)}})
    target_stop = early_stop = None
    if config.target is not None:
        target_stop = make_target_stop(config.target_metric, config.target)
        callbacks.append(target_stop)
    if config.patience > 0:
        early_stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=config.patience,
                                                   restore_best_weights=True)
        callbacks.append(early_stop)
    if config.mode == "tape":
        _tape_train(config, model, dataset.task, (train_x, splits.train.y), (val_x, splits.val.y), callbacks)
    else:
        model.fit(
            train_x,
            splits.train.y,
            validation_data=(val_x, splits.val.y),
            batch_size=config.batch_size,
            epochs=config.epochs,
            shuffle=True,
            verbose=0,
            callbacks=callbacks,
        )
    stopped = streamer.stopped_early_by_request
    metrics = evaluate(model, dataset.task, test_x, splits.test.y, dataset.n_classes)
    param_count = int(model.count_params())
    meta = ModelMetadata(
        spec=spec,
        config=config.to_dict(),
        metrics=metrics,
        param_count=param_count,
        output_name=model.output_names[0] if getattr(model, "output_names", None) else "predictions",
    )
    model_path = save_bundle(folder, model, meta, test_x, splits.test.y)
    stop = stop_record(len(streamer.history), requested=stopped, target_stop=target_stop, early_stop=early_stop,
                       config=config)
    registry.update_summary(
        run_id,
        {"test_metrics": metrics, "param_count": param_count, "model_path": str(model_path),
         "epochs_run": len(streamer.history), "stop": stop},
    )
    if stopped:
        reason = ctx.reason if (ctx := lifecycle.current()) is not None and ctx.signalled else "stopped by request"
        registry.finish_if_active(run_id, State.STOPPED, reason)
    else:
        registry.finish_if_active(run_id, State.COMPLETED)
    status = registry.get_run(run_id).status
    return TrainResult(run_id, status, len(streamer.history), metrics, param_count, model_path, streamer.history,
                       stop)


def _tape_train(config: ModelConfig, model: keras.Model, task: str, train: tuple[np.ndarray, np.ndarray],
                val: tuple[np.ndarray, np.ndarray], callbacks: list[keras.callbacks.Callback]) -> None:
    """Train the model's one Dense layer with the hand-written loop of agent.tape, driving the same callbacks.

    The loop updates the layer's own kernel and bias on inputs passed through the
    model's Normalization layer, so the model saved and served afterwards is
    exactly what the loop trained; the callbacks (registry streaming, stop flag,
    target, patience) see the same events and logs as under ``fit``.
    """
    import keras

    from agent.tape import tape_fit

    if task != "regression":
        raise ValueError("mode tape fits y = f(Wx + b) with MSE: it needs a regression dataset (e.g. synthetic)")
    dense = model.get_layer("prediction")
    normalize = model.get_layer("normalize")
    x, xv = (np.asarray(normalize(a)) for a in (train[0], val[0]))
    steps = -(-len(x) // config.batch_size)
    cbs = keras.callbacks.CallbackList(callbacks, model=model, epochs=config.epochs, steps=steps, verbose=0)
    model.stop_training = False
    cbs.on_train_begin()

    def on_batch_end(batch: int) -> bool:
        cbs.on_train_batch_end(batch, {})
        return bool(model.stop_training)

    def on_epoch_end(epoch: int, logs: Any) -> bool:
        cbs.on_epoch_end(epoch, {**logs.as_logs(), "learning_rate": config.learning_rate})
        if not model.stop_training and epoch + 1 < config.epochs:
            cbs.on_epoch_begin(epoch + 1)
        return bool(model.stop_training)

    cbs.on_epoch_begin(0)
    tape_fit(x, train[1], dense.kernel, dense.bias, activation=config.output_activation,
             learning_rate=config.learning_rate, epochs=config.epochs, batch_size=config.batch_size,
             seed=config.seed, validation=(xv, val[1]), on_batch_end=on_batch_end, on_epoch_end=on_epoch_end)
    cbs.on_train_end()


# -- CLI ----------------------------------------------------------------------------------


def _hidden(text: str) -> tuple[int, ...]:
    text = text.strip()
    if text in ("", "0", "none"):
        return ()
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated layer sizes like 128,64 (or 'none'); got {text!r}"
        ) from None


def _filters(text: str) -> tuple[int, ...]:
    try:
        return parse_filters(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _rnn_units(text: str) -> tuple[int, ...]:
    try:
        return parse_units(text, "rnn units")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _image_shape(text: str) -> tuple[int, ...]:
    try:
        return parse_image_shape(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    d = ModelConfig()
    p = argparse.ArgumentParser(
        prog="python -m agent.training",
        description="Train a Keras MLP, CNN or RNN (or the hand-written GradientTape loop) on a built-in dataset "
                    "or a CSV file, streaming metrics into the run registry.",
    )
    data = p.add_argument_group("data")
    data.add_argument("--dataset", default="digits", choices=BUILTIN_DATASETS,
                      help="built-in dataset (scikit-learn's bundled sets or synthetic y=f(Wx+b)); default: digits")
    data.add_argument("--csv", metavar="FILE", help="train on this CSV file instead of a built-in dataset")
    data.add_argument("--target", metavar="COL", help="target column of --csv")
    data.add_argument("--task", choices=("classification", "regression"),
                      help="override the task inferred from the CSV target")
    data.add_argument("--missing", choices=MISSING_POLICIES, default="reject",
                      help="rows with missing feature values: reject the file (default), drop them, or fill_mean")
    data.add_argument("--synthetic-activation", choices=SYNTHETIC_ACTIVATIONS, default="tanh",
                      help="activation f of the synthetic set y = f(Wx + b); default: tanh")
    data.add_argument("--noise", type=float, default=0.0, help="noise std-dev added to the synthetic target")
    data.add_argument("--image-shape", type=_image_shape, default=(), metavar="H,W,C",
                      help="view each row as an H x W x C image (row-major pixels; H*W*C must equal the feature "
                           "count); default: none, except 8,8,1 for digits with --family cnn")
    data.add_argument("--seq-length", type=int, default=DataSource.seq_length,
                      help="tokens per row of the generated 'sequences' set (does token 1 come before token 2?); "
                           "default: 12")
    model = p.add_argument_group("model")
    model.add_argument("--family", choices=FAMILIES, default=d.family,
                       help="mlp: Dense layers on the features; cnn: conv blocks on images, then the Dense layers; "
                            "rnn: each row read as a sequence by 1-2 recurrent layers, then the Dense layers "
                            "(default: mlp)")
    model.add_argument("--rnn-cell", choices=RNN_CELLS, default=d.rnn_cell,
                       help="rnn: recurrent layer type; default: gru")
    model.add_argument("--rnn-units", type=_rnn_units, default=d.rnn_units, metavar="N[,N]",
                       help="rnn: units of each recurrent layer, one or two layers, e.g. 32 or 64,32; default: 32")
    model.add_argument("--rnn-input", choices=RNN_INPUTS, default=d.rnn_input,
                       help="rnn: embedding (values are integer token ids, rounded and clipped inside the model) or "
                            "dense (one real value per time step); default: embedding")
    model.add_argument("--embed-dim", type=int, default=d.embed_dim, help="rnn: embedding width; default: 16")
    model.add_argument("--filters", type=_filters, default=d.filters, metavar="N,N",
                       help="cnn: filters of each conv block, e.g. 16,32 (two blocks); default: 16,32")
    model.add_argument("--kernel-size", type=int, default=d.kernel_size,
                       help="cnn: square convolution kernel side; default: 3")
    model.add_argument("--pooling", choices=POOLINGS, default=d.pooling,
                       help="cnn: 2x2 pooling after each conv block (max, avg) or none; default: max")
    model.add_argument("--hidden", type=_hidden, default=d.hidden, metavar="N,N",
                       help="hidden layer sizes, e.g. 128,64; 'none' for no hidden layer; default: 128,128")
    model.add_argument("--activation", choices=ACTIVATIONS, default=d.activation, help="hidden layer activation")
    model.add_argument("--output-activation", choices=ACTIVATIONS, default=d.output_activation,
                       help="regression head activation (classification heads are softmax)")
    model.add_argument("--dropout", type=float, default=d.dropout, help="dropout rate after each hidden layer")
    model.add_argument("--optimizer", choices=OPTIMIZERS, default=d.optimizer, help="optimizer")
    model.add_argument("--lr", type=float, default=d.learning_rate, help="learning rate")
    model.add_argument("--momentum", type=float, default=d.momentum, help="momentum (sgd only)")
    model.add_argument("--batch-size", type=int, default=d.batch_size, help="training batch size")
    model.add_argument("--epochs", type=int, default=d.epochs, help="maximum number of epochs")
    model.add_argument("--patience", type=int, default=d.patience,
                       help="early-stopping patience in epochs on val_loss; 0 turns it off")
    model.add_argument("--seed", type=int, default=d.seed, help="seed for the split, weights and shuffling")
    model.add_argument("--weight-init", choices=WEIGHT_INITS, default=d.weight_init,
                       help="initialiser of every kernel (Dense, Conv2D, recurrent input kernels); default: "
                            "glorot_uniform")
    model.add_argument("--init-stddev", type=float, default=d.init_stddev,
                       help="stddev of the random_normal weight and bias initialisers; default: 0.05")
    model.add_argument("--bias-init", choices=BIAS_INITS, default=d.bias_init,
                       help="initialiser of every bias; default: zeros")
    model.add_argument("--bias-value", type=float, default=d.bias_value,
                       help="the value of --bias-init constant; default: 0")
    model.add_argument("--stop-at", type=float, default=None, metavar="VALUE",
                       help="target: stop as soon as --stop-metric reaches VALUE at the end of an epoch "
                            "(<= for losses and mae, >= for accuracy), beside --patience; default: off")
    model.add_argument("--stop-metric", choices=TARGET_METRICS, default=d.target_metric,
                       help="the metric --stop-at watches; default: loss")
    model.add_argument("--mode", choices=TRAIN_MODES, default=d.mode,
                       help="fit: Keras model.fit; tape: the hand-written loop o = f(Wx + b), MSE, GradientTape, "
                            "W -= lr*dW with tf.function (needs --hidden none and a regression set; plain gradient "
                            "descent, --optimizer ignored); default: fit")
    run = p.add_argument_group("run")
    run.add_argument("--run-id", help="run the train job recorded in this registry run (what start() launches); "
                     "the other flags are then ignored")
    run.add_argument("--tensorboard", action=argparse.BooleanOptionalAction, default=True,
                     help="write TensorBoard event files (per-epoch loss and metrics) to the run's "
                          "artifacts/<run-id>/tensorboard (needs the tensorboard package); default: on")
    run.add_argument("--home", help="state directory (default: $TUNESWARM_HOME or .tuneswarm/)")
    return p


def job_from_args(args: argparse.Namespace) -> TrainJob:
    """The :class:`TrainJob` the flags describe (ValueError names a bad value)."""
    config = ModelConfig(
        hidden=args.hidden, activation=args.activation, output_activation=args.output_activation,
        dropout=args.dropout, optimizer=args.optimizer, learning_rate=args.lr, momentum=args.momentum,
        batch_size=args.batch_size, epochs=args.epochs, patience=args.patience, seed=args.seed,
        family=args.family, filters=args.filters, kernel_size=args.kernel_size, pooling=args.pooling,
        weight_init=args.weight_init, init_stddev=args.init_stddev, bias_init=args.bias_init,
        bias_value=args.bias_value, target=args.stop_at, target_metric=args.stop_metric,
        rnn_cell=args.rnn_cell, rnn_units=args.rnn_units, rnn_input=args.rnn_input, embed_dim=args.embed_dim,
        mode=args.mode,
    )
    source = DataSource(
        dataset=args.dataset if not args.csv else "csv", csv_path=args.csv, target=args.target,
        task=args.task, missing=args.missing, synthetic_activation=args.synthetic_activation,
        noise=args.noise, seed=args.seed, seq_length=args.seq_length,
        image_shape=image_shape_for(config, "csv" if args.csv else args.dataset, args.image_shape),
    )
    if config.family == "cnn" and not source.image_shape:
        raise ValueError("--family cnn needs image-shaped data: give --image-shape H,W,C")
    return TrainJob(config, source, args.tensorboard)


def _printer() -> keras.callbacks.Callback:
    import keras

    class Print(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            logs = logs or {}
            parts = " ".join(f"{k}={float(v):.4f}" for k, v in logs.items() if k != "learning_rate")
            print(f"epoch {epoch + 1}/{self.params.get('epochs')} {parts}", flush=True)

    return Print()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.home:
        os.environ["TUNESWARM_HOME"] = args.home  # children of this job use the same registry

    registry = Registry(args.home)
    if args.run_id is not None:
        try:
            job = TrainJob.from_dict(registry.get_run(args.run_id).config)
        except KeyError as exc:
            parser.exit(2, f"{parser.prog}: error: {exc.args[0]}\n")
        except ValueError as exc:
            registry.finish_if_active(args.run_id, State.FAILED, lifecycle.one_line_error(exc))
            parser.exit(2, f"{parser.prog}: error: {exc}\n")
        run_id = args.run_id
    else:
        try:
            job = job_from_args(args)
            if args.csv or job.data.image_shape:
                job.data.load()  # fail fast, before any run is recorded, on a bad file or image shape
        except ValueError as exc:
            parser.exit(2, f"{parser.prog}: error: {exc}\n")
        # The same run a page's start() records, run here in the foreground.
        run_id = jobs.create(registry, "train", job.to_dict(), name=job.label)

    print(f"run {run_id}: training {job.model.summary} on {job.data.csv_path or job.data.dataset}",
          flush=True)
    try:
        status = execute(registry, run_id, extra_callbacks=[_printer()])
    except Exception as exc:
        print(f"error: {lifecycle.one_line_error(exc)}", file=sys.stderr)
        return 1
    run = registry.get_run(run_id)
    scalars = {k: v for k, v in (run.summary.get("test_metrics") or {}).items() if isinstance(v, float)}
    print(f"{status} after {run.summary.get('epochs_run', 0)} epochs; params={run.summary.get('param_count')}; "
          + " ".join(f"{k}={v:.4f}" for k, v in scalars.items()))
    if run.summary.get("model_path"):
        print(f"model: {run.summary['model_path']}")
    board = run.summary.get("tensorboard") or {}
    if board.get("logdir"):
        print(f"tensorboard: tensorboard --logdir {board['logdir']}")
    elif board.get("note"):
        print(f"note: {board['note']}")
    return lifecycle.exit_code(status)


if __name__ == "__main__":
    sys.exit(main())
