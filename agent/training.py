"""Training: ``train()`` runs Keras ``fit`` and streams its progress into the run registry.

Run as a job with ``python -m agent.training ...`` (see ``--help``); the dashboard
and the model sweep start it through ``runs.jobs``.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
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
from runs.registry import Registry

if TYPE_CHECKING:
    import keras

PROGRESS_INTERVAL_S = 0.25  # how often batch progress is written for progress bars
STOP_POLL_INTERVAL_S = 0.05  # how often the registry's stop flag is read between batches
# Which rule ended a run (summary "stop": {"rule", "epoch", "detail"}).
STOP_RULES = ("epochs", "target", "patience", "request")


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
            self.stop_signalled = False  # set from the SIGTERM handler
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
            if self.stop_signalled or (
                now - self._last_stop_poll >= STOP_POLL_INTERVAL_S and self._poll_stop(now)
            ):
                self.stopped_early_by_request = True
                self.model.stop_training = True

        def _poll_stop(self, now: float) -> bool:
            self._last_stop_poll = now
            return registry.stop_requested(run_id)

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
) -> TrainResult:
    """Train a model for ``run_id`` (created if None) and save its bundle.

    Errors are recorded on the run (status ``failed`` with the message) and re-raised.
    """
    if run_id is None:
        run_id = registry.create_run(
            "train", {"model": config.to_dict(), "data": source.to_dict()},
            name=f"train {(source.csv_path and Path(source.csv_path).stem) or source.dataset}",
            status="running",
        )
    else:
        registry.set_status(run_id, "running")
    try:
        return _train(config, source, registry, run_id, extra_callbacks or [], on_streamer)
    except BaseException as exc:
        registry.finish_if_active(run_id, "failed", _one_line(exc))
        raise


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def _train(
    config: ModelConfig,
    source: DataSource,
    registry: Registry,
    run_id: str,
    extra_callbacks: list[keras.callbacks.Callback],
    on_streamer: Callable[[keras.callbacks.Callback], None] | None,
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
    folder = registry.artifacts_dir(run_id)
    meta = ModelMetadata(
        spec=spec,
        config=config.to_dict(),
        metrics=metrics,
        param_count=param_count,
        output_name=model.output_names[0] if getattr(model, "output_names", None) else "predictions",
    )
    model_path = save_bundle(folder, model, meta, test_x, splits.test.y)
    status = "stopped" if stopped else "completed"
    stop = stop_record(len(streamer.history), requested=stopped, target_stop=target_stop, early_stop=early_stop,
                       config=config)
    registry.update_summary(
        run_id,
        {"test_metrics": metrics, "param_count": param_count, "model_path": str(model_path),
         "epochs_run": len(streamer.history), "stop": stop},
    )
    registry.set_status(run_id, status, "stopped by request" if stopped else None)
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
    run.add_argument("--run-id", help="record into this existing run (set by the job supervisor)")
    run.add_argument("--home", help="state directory (default: $TUNESWARM_HOME or .tuneswarm/)")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
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
        if args.csv or source.image_shape:
            source.load()  # fail fast, before any run is recorded, on a bad file or image shape
    except ValueError as exc:
        parser.exit(2, f"{parser.prog}: error: {exc}\n")

    registry = Registry(args.home)
    run_id = args.run_id
    if run_id is not None:
        try:
            registry.get_run(run_id)
        except KeyError as exc:
            parser.exit(2, f"{parser.prog}: error: {exc.args[0]}\n")
    else:
        run_id = registry.create_run(
            "train", {"model": config.to_dict(), "data": source.to_dict()},
            name=f"train {Path(args.csv).stem if args.csv else args.dataset}", status="running",
        )

    holder: dict[str, Any] = {}

    def on_sigterm(signum: int, frame: Any) -> None:
        # Finish the current batch, then save the model and metrics so far.
        if "streamer" in holder:
            holder["streamer"].stop_signalled = True

    signal.signal(signal.SIGTERM, on_sigterm)

    def printer() -> keras.callbacks.Callback:
        import keras

        class Print(keras.callbacks.Callback):
            def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
                logs = logs or {}
                parts = " ".join(f"{k}={float(v):.4f}" for k, v in logs.items() if k != "learning_rate")
                print(f"epoch {epoch + 1}/{self.params.get('epochs')} {parts}", flush=True)

        return Print()

    print(f"run {run_id}: training {config.summary} on {source.csv_path or source.dataset}",
          flush=True)
    try:
        result = train(config, source, registry, run_id, extra_callbacks=[printer()],
                       on_streamer=lambda s: holder.__setitem__("streamer", s))
    except Exception as exc:
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return 1
    scalars = {k: v for k, v in result.metrics.items() if isinstance(v, float)}
    print(f"{result.status} after {result.epochs_run} epochs; params={result.param_count}; "
          + " ".join(f"{k}={v:.4f}" for k, v in scalars.items()))
    print(f"model: {result.model_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
