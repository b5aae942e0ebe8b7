"""Training: ``train()`` runs Keras ``fit`` and streams its progress into the run registry.

The ``train`` job kind: :func:`start` records a :class:`TrainJob` and launches
``python -m agent.training --run-id ID`` (what the Train page does); the CLI with
flags records the same config and runs the same job in the foreground.
"""

from __future__ import annotations

import argparse
import os
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
from agent.model import ACTIVATIONS, FAMILIES, OPTIMIZERS, POOLINGS, ModelConfig, image_shape_for, parse_filters
from runs import jobs, lifecycle
from runs.configs import atomic_write_text
from runs.registry import Registry, State

if TYPE_CHECKING:
    import keras

PROGRESS_INTERVAL_S = 0.25  # how often batch progress is written for progress bars
STOP_POLL_INTERVAL_S = 0.05  # how often the registry's stop flag is read between batches


@dataclass(frozen=True)
class TrainJob:
    """The frozen config of a ``train`` run: the model and the data it learns from."""

    model: ModelConfig
    data: DataSource

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model.to_dict(), "data": self.data.to_dict()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainJob:
        if "model" not in d:
            raise ValueError("a train run's config needs a 'model' (a ModelConfig dict)")
        return cls(ModelConfig.from_dict(dict(d["model"])), DataSource(**dict(d.get("data") or {})))

    @property
    def label(self) -> str:
        return f"train {(self.data.csv_path and Path(self.data.csv_path).stem) or self.data.dataset}"


UPLOAD_FILENAME = "data.csv"


def start(registry: Registry, job: TrainJob, *, name: str | None = None, parent_id: str | None = None,
          upload: bytes | None = None) -> str:
    """Record ``job`` as a new ``train`` run and launch its process; returns the run id at once.

    ``upload``: the bytes of an uploaded CSV, saved with the run (deleted with it) and
    trained on in place of ``job.data.csv_path``.
    """
    run_id = jobs.create(registry, "train", job.to_dict(), name=name or job.label, parent_id=parent_id)
    if upload is not None:
        try:
            path = atomic_write_text(registry.artifacts_dir(run_id) / UPLOAD_FILENAME, upload)
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
        train(job.model, job.data, registry, run_id, extra_callbacks=extra_callbacks)
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
    """Train a model for ``run_id`` (created if None) in this process and save its bundle.

    The run records this process's pid, so a reaper marks it ``interrupted`` if
    the process is killed (e.g. a model sweep training in-process). Errors are
    recorded on the run (status ``failed`` with one line) and re-raised.
    """
    if run_id is None:
        job = TrainJob(config, source)
        run_id = jobs.create(registry, "train", job.to_dict(), name=job.label)
    if lifecycle.current() is None or lifecycle.current().run_id != run_id:  # type: ignore[union-attr]
        registry.mark_started(run_id, os.getpid(), lifecycle.process_start_time(os.getpid()))
    try:
        return _train(config, source, registry, run_id, extra_callbacks or [], on_streamer)
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
    model = build_model(config, spec, train_x)
    streamer = make_streamer(registry, run_id, len(splits.train.y))
    if on_streamer:
        on_streamer(streamer)
    callbacks = [streamer, *extra_callbacks]
    if config.patience > 0:
        callbacks.append(
            keras.callbacks.EarlyStopping(monitor="val_loss", patience=config.patience, restore_best_weights=True)
        )
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
    registry.update_summary(
        run_id,
        {"test_metrics": metrics, "param_count": param_count, "model_path": str(model_path),
         "epochs_run": len(streamer.history)},
    )
    if stopped:
        reason = ctx.reason if (ctx := lifecycle.current()) is not None and ctx.signalled else "stopped by request"
        registry.finish_if_active(run_id, State.STOPPED, reason)
    else:
        registry.finish_if_active(run_id, State.COMPLETED)
    status = registry.get_run(run_id).status
    return TrainResult(run_id, status, len(streamer.history), metrics, param_count, model_path, streamer.history)


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


def _image_shape(text: str) -> tuple[int, ...]:
    try:
        return parse_image_shape(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    d = ModelConfig()
    p = argparse.ArgumentParser(
        prog="python -m agent.training",
        description="Train a Keras MLP or CNN on a built-in dataset or a CSV file, streaming metrics into the run "
                    "registry.",
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
    model = p.add_argument_group("model")
    model.add_argument("--family", choices=FAMILIES, default=d.family,
                       help="mlp: Dense layers on the features; cnn: conv blocks on images, then the Dense layers "
                            "(default: mlp)")
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
    run = p.add_argument_group("run")
    run.add_argument("--run-id", help="run the train job recorded in this registry run (what start() launches); "
                     "the other flags are then ignored")
    run.add_argument("--home", help="state directory (default: $TUNESWARM_HOME or .tuneswarm/)")
    return p


def job_from_args(args: argparse.Namespace) -> TrainJob:
    """The :class:`TrainJob` the flags describe (ValueError names a bad value)."""
    config = ModelConfig(
        hidden=args.hidden, activation=args.activation, output_activation=args.output_activation,
        dropout=args.dropout, optimizer=args.optimizer, learning_rate=args.lr, momentum=args.momentum,
        batch_size=args.batch_size, epochs=args.epochs, patience=args.patience, seed=args.seed,
        family=args.family, filters=args.filters, kernel_size=args.kernel_size, pooling=args.pooling,
    )
    source = DataSource(
        dataset=args.dataset if not args.csv else "csv", csv_path=args.csv, target=args.target,
        task=args.task, missing=args.missing, synthetic_activation=args.synthetic_activation,
        noise=args.noise, seed=args.seed,
        image_shape=image_shape_for(config, "csv" if args.csv else args.dataset, args.image_shape),
    )
    if config.family == "cnn" and not source.image_shape:
        raise ValueError("--family cnn needs image-shaped data: give --image-shape H,W,C")
    return TrainJob(config, source)


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
    return lifecycle.exit_code(status)


if __name__ == "__main__":
    sys.exit(main())
