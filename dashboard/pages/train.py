"""Train page: pick data and model knobs, start a training job, watch it live, read the results."""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

import streamlit as st

from agent.data import (
    BUILTIN_DATASETS,
    MAX_CSV_BYTES,
    MAX_SEQ_LENGTH,
    MIN_SEQ_LENGTH,
    MISSING_POLICIES,
    SYNTHETIC_ACTIVATIONS,
    CsvError,
)
from agent.model import (
    ACTIVATIONS,
    BIAS_INITS,
    FAMILIES,
    MAX_LAYERS,
    MAX_RNN_LAYERS,
    OPTIMIZERS,
    POOLINGS,
    RNN_CELLS,
    RNN_INPUTS,
    TAPE_ACTIVATIONS,
    TARGET_METRICS,
    TRAIN_MODES,
    WEIGHT_INITS,
)
from dashboard import charts, ui, widgets
from dashboard.state import get_registry, init_defaults
from runs.jobs import python_module_argv, reap, start_job
from runs.registry import Registry, Run

LIVE_REFRESH_S = 1.0  # how often the live panel re-reads the registry while a job runs
UPLOAD_FILENAME = "data.csv"
MAX_DOWNLOAD_BYTES = 200 * 1024 * 1024
LEARNING_RATES = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
BATCH_SIZES = (8, 16, 32, 64, 128, 256, 512)
KERNEL_SIZES = (1, 3, 5, 7)
RNN_UNITS = (8, 16, 32, 64, 128, 256)
EMBED_DIMS = (4, 8, 16, 32, 64)
K = "train."  # widget key prefix for this page
BUILTIN_TASKS = widgets.BUILTIN_TASKS
FAMILY_LABELS = {"mlp": "MLP", "cnn": "CNN", "rnn": "RNN"}
MODE_LABELS = {"fit": "Keras fit", "tape": "GradientTape loop"}
STOP_LABELS = {"epochs": "all epochs run", "target": "target reached", "patience": "early stopping (patience)",
               "request": "stopped by request"}

D = widgets.TrainForm()
init_defaults({
    K + "dataset": D.dataset, K + "missing": D.csv_missing, K + "task": "infer",
    K + "synthetic_activation": D.synthetic_activation, K + "noise": D.noise,
    K + "layers": D.layers, K + "units": D.units, K + "activation": D.activation, K + "dropout": D.dropout,
    K + "optimizer": D.optimizer, K + "lr": D.learning_rate, K + "batch_size": D.batch_size,
    K + "epochs": D.epochs, K + "patience": D.patience, K + "seed": D.seed,
    K + "family": D.family, K + "filters": D.filters, K + "kernel_size": D.kernel_size, K + "pooling": D.pooling,
    K + "image_shape": D.image_shape, K + "seq_length": D.seq_length,
    K + "rnn_cell": D.rnn_cell, K + "rnn_layers": D.rnn_layers, K + "rnn_units": D.rnn_units,
    K + "rnn_input": D.rnn_input, K + "embed_dim": D.embed_dim,
    K + "weight_init": D.weight_init, K + "init_stddev": D.init_stddev, K + "bias_init": D.bias_init,
    K + "bias_value": D.bias_value, K + "use_target": D.use_target, K + "target_value": D.target,
    K + "target_metric": D.target_metric, K + "mode": D.mode,
})

registry = get_registry()


def _csv_image_shape() -> str:
    """The CSV image shape box's text while the CNN is picked ('' otherwise: the MLP takes flat rows)."""
    return st.session_state[K + "image_shape"] if st.session_state[K + "family"] == "cnn" else ""


@st.cache_data(show_spinner=False, max_entries=8)
def _preview(digest: str, _data: bytes):
    """Cached by the content digest (a leading underscore keeps the bytes themselves out of the cache key)."""
    from agent.data import preview_csv

    return preview_csv(_data)


@st.cache_data(show_spinner=False, max_entries=8)
def _csv_check(digest: str, _data: bytes, target: str, missing: str, task: str | None,
               image_shape: str = "") -> tuple[str | None, str]:
    """Load the CSV the way training will (as images when a shape is given); (error, description)."""
    from agent.data import load_csv, parse_image_shape, with_image_shape

    try:
        ds = load_csv(_data, target, missing=missing, task=task)
        shape = parse_image_shape(image_shape)
        if shape:
            ds = with_image_shape(ds, shape)
    except (CsvError, ValueError) as exc:
        return str(exc).splitlines()[0], ""
    notes = "; ".join(ds.notes)
    images = f" = {'×'.join(map(str, ds.input_shape))} images" if ds.input_shape else ""
    return None, f"{ds.task}, {len(ds.y)} rows, {ds.n_features} features{images}" + (f"; {notes}" if notes else "")


def start_training(registry: Registry, form: widgets.TrainForm, csv_bytes: bytes | None = None,
                   csv_name: str | None = None) -> str:
    """Record a train run (saving an uploaded CSV into its folder) and start its job; returns the run id."""
    config = widgets.model_config(form)
    name = f"train {Path(csv_name).stem if csv_bytes is not None and csv_name else form.dataset}"
    placeholder = widgets.data_source(form if form.dataset != "csv" else widgets.DEFAULT_TRAIN)
    run_id = registry.create_run("train", {"model": config.to_dict(), "data": placeholder.to_dict()}, name=name)
    try:
        csv_path = None
        if form.dataset == "csv":
            csv_path = registry.artifacts_dir(run_id) / UPLOAD_FILENAME
            csv_path.write_bytes(csv_bytes or b"")
        source = widgets.data_source(form, csv_path)
        registry.update_config(run_id, {"data": source.to_dict()})
        argv = python_module_argv("agent.training", *widgets.training_args(config, source, run_id))
        start_job(registry, run_id, argv)
    except Exception as exc:
        registry.finish_if_active(run_id, "failed", f"could not start training: {exc}")
        raise
    return run_id


def _launch(form: widgets.TrainForm, csv_bytes: bytes | None = None, csv_name: str | None = None) -> None:
    try:
        run_id = start_training(registry, form, csv_bytes, csv_name)
    except (ValueError, OSError) as exc:
        st.error(f"Could not start training: {exc}")
        return
    ui.show_next(K + "view", run_id)
    st.rerun()


st.title(":material/model_training: Train")
st.caption("Train a Keras MLP, CNN or RNN (or the hand-written GradientTape loop) as a background job. "
           "Everything is recorded in the run registry, "
           "so the run stays visible after a reload or in another tab.")

train_runs = registry.list_runs(kind="train")
if not registry.list_runs(limit=1):
    with st.container(border=True):
        st.subheader(":material/rocket_launch: First run")
        st.markdown(
            "The registry is empty. Start with the default model: a 64-unit MLP on the **digits** dataset "
            f"(8×8 images, 10 classes), up to {widgets.DEFAULT_TRAIN.epochs} epochs with early stopping — "
            "well under a minute here. Then serve it and swarm it from the other pages."
        )
        if st.button("Train the default model", key=K + "first_run", type="primary", icon=":material/rocket_launch:",
                     help="Starts training the default model: digits, one hidden layer of 64 relu units, adam, "
                          "early stopping on val_loss"):
            _launch(widgets.DEFAULT_TRAIN)

# -- the form ---------------------------------------------------------------------------

data_col, model_col = st.columns(2, gap="large")
csv_bytes: bytes | None = None
csv_name: str | None = None
n_rows: int | None = None
csv_error: str | None = None
with data_col:
    st.subheader("Data")
    dataset = st.selectbox(
        "Dataset", (*BUILTIN_DATASETS, "csv"), key=K + "dataset",
        format_func=lambda d: "upload a CSV file…" if d == "csv" else d,
        help="dataset: a built-in set bundled offline (digits, iris, wine, breast_cancer are classification; "
             "diabetes and synthetic are regression) or your own CSV file",
    )
    target = None
    if dataset in widgets.BUILTIN_INFO:
        st.caption(widgets.BUILTIN_INFO[dataset])
    if dataset == "csv":
        upload = st.file_uploader(
            "CSV file", type=["csv"], key=K + "upload", max_upload_size=MAX_CSV_BYTES // (1024 * 1024),
            help=f"csv: a UTF-8 CSV with a header row, up to {MAX_CSV_BYTES // (1024 * 1024)} MB; "
                 "one column is the target, the rest are features (text columns are one-hot encoded)",
        )
        if upload is not None:
            csv_bytes, csv_name = upload.getvalue(), upload.name
            digest = hashlib.sha256(csv_bytes).hexdigest()
            try:
                preview = _preview(digest, csv_bytes)
            except (CsvError, ValueError) as exc:
                csv_error = str(exc).splitlines()[0]
                st.error(csv_error)
            else:
                n_rows = preview.n_rows
                target = st.selectbox(
                    "Target column", preview.columns, index=len(preview.columns) - 1, key=K + "target",
                    help="target: the column the model predicts; text or few integer values -> classification, "
                         "other numbers -> regression",
                )
                st.dataframe(preview.head, height=210, hide_index=True)
                st.caption(f"{preview.n_rows} rows × {len(preview.columns)} columns; "
                           f"{preview.rows_with_missing} rows with missing values")
                st.selectbox(
                    "Missing values", MISSING_POLICIES, key=K + "missing",
                    help="missing: what to do with rows that have empty feature cells — reject the file, "
                         "drop those rows, or fill numeric columns with their mean",
                )
                st.selectbox(
                    "Task", ("infer", "classification", "regression"), key=K + "task",
                    help="task: inferred from the target column unless you override it",
                )
                task = None if st.session_state[K + "task"] == "infer" else st.session_state[K + "task"]
                if st.session_state[K + "family"] == "cnn":
                    st.text_input(
                        "Image shape H,W,C", key=K + "image_shape", placeholder="e.g. 28,28,1",
                        help="image_shape: each row's feature columns are the pixels of an H×W×C image in "
                             "row-major order (H*W*C must equal the feature count); the CNN's input shape",
                    )
                csv_error, described = _csv_check(digest, csv_bytes, target, st.session_state[K + "missing"], task,
                                                  _csv_image_shape())
                if csv_error:
                    st.error(csv_error)
                else:
                    st.success(described, icon=":material/check_circle:")
    elif dataset == "synthetic":
        st.selectbox("Synthetic activation f", SYNTHETIC_ACTIVATIONS, key=K + "synthetic_activation",
                     help="synthetic_activation: the target is y = f(Wx + b) (+ noise); a model with no hidden "
                          "layer and this output activation fits it exactly")
        st.slider("Noise σ", 0.0, 1.0, step=0.05, key=K + "noise",
                  help="noise: standard deviation of Gaussian noise added to y; the floor the loss can reach")
    elif dataset == "sequences":
        st.slider("Sequence length", MIN_SEQ_LENGTH, 60, key=K + "seq_length",
                  help=f"seq_length: tokens per sequence ({MIN_SEQ_LENGTH}-{MAX_SEQ_LENGTH} from the CLI); each "
                       "holds one token 1 and one token 2 among filler, and the label says whether 1 comes first. "
                       "Longer sequences mean a longer memory and more compute per request")

with model_col:
    st.subheader("Model")
    mode = st.radio(
        "Training loop", TRAIN_MODES, key=K + "mode", horizontal=True, format_func=MODE_LABELS.__getitem__,
        help="mode: Keras fit (any model), or the founding example written out by hand — one Dense layer "
             "o = f(Wx + b), MSE, tf.GradientTape, W -= lr·dW and b -= lr·db with assign_sub, compiled with "
             "tf.function. The loop needs a regression set (synthetic is y = f(Wx + b)); it is plain gradient "
             "descent (the optimizer is ignored) and f is the activation below",
    )
    family = st.radio(
        "Family", FAMILIES, key=K + "family", horizontal=True, format_func=FAMILY_LABELS.__getitem__,
        disabled=mode == "tape",
        help="family: MLP = Dense layers on the feature rows; CNN = convolution blocks on images (digits as 8×8×1, "
             "or a CSV of pixels with an image shape), then the Dense layers below; RNN = each row read as a "
             "sequence (the sequences set, or a CSV whose columns are the time steps) by 1-2 recurrent layers, "
             "then the Dense layers. A CNN or RNN costs more compute per request, so batching pays off "
             "differently when it is served",
    )
    if mode == "tape":
        family = "mlp"  # the loop is one Dense layer whatever the radio says
        st.caption("Tape loop: one Dense layer o = f(Wx + b) on the normalised features; f is the activation "
                   f"below ({', '.join(TAPE_ACTIVATIONS)}); the family and hidden layers do not apply.")
    if family == "cnn":
        k1, k2, k3 = st.columns(3)
        k1.text_input("Filters per block", key=K + "filters",
                      help="filters: one conv block per entry (Conv2D, pooling, dropout), e.g. 16,32 = two blocks "
                           "of 16 then 32 filters")
        k2.select_slider("Kernel size", KERNEL_SIZES, key=K + "kernel_size",
                         help="kernel_size: side of each square convolution kernel (3 = 3×3)")
        k3.selectbox("Pooling", POOLINGS, key=K + "pooling",
                     help="pooling: 2×2 max or average pooling after each conv block halves the image; none keeps "
                          "its size (more compute per request)")
        if dataset in widgets.IMAGE_INFO:
            st.caption(f"{dataset} as {widgets.IMAGE_INFO[dataset]} images; the Dense layers below follow "
                       "the conv blocks")
    if family == "rnn":
        r1, r2, r3 = st.columns(3)
        r1.selectbox("Recurrent cell", RNN_CELLS, key=K + "rnn_cell",
                     help="rnn_cell: GRU (gated, cheaper than LSTM), LSTM (gated with a cell state), SimpleRNN "
                          "(no gates: cheapest, forgets fastest)")
        r2.slider("Recurrent layers", 1, MAX_RNN_LAYERS, key=K + "rnn_layers",
                  help="rnn layers: 1 or 2 stacked recurrent layers (the first returns its whole sequence)")
        r3.select_slider("Recurrent units", RNN_UNITS, key=K + "rnn_units",
                         help="rnn_units: state size of each recurrent layer; compute per request grows with "
                              "units² × sequence length")
        r1.radio("Sequence input", RNN_INPUTS, key=K + "rnn_input",
                 help="rnn_input: embedding = each value is an integer token id looked up in a learned table "
                      "(values are rounded and clipped inside the model, so served float rows work); dense = each "
                      "value is one real-valued time step")
        if st.session_state[K + "rnn_input"] == "embedding":
            r2.select_slider("Embedding width", EMBED_DIMS, key=K + "embed_dim",
                             help="embed_dim: size of each token's learned vector")
        st.caption("Dropout below also applies to each recurrent layer's inputs.")
    c1, c2 = st.columns(2)
    c1.slider("Hidden layers", 0, MAX_LAYERS, key=K + "layers",
              help="hidden: number of Dense layers (after the conv blocks for a CNN); 0 is a linear/logistic model. "
                   "More layers = more capacity and more compute per request when served")
    c2.select_slider("Units per layer", (8, 16, 32, 64, 128, 256, 512, 1024), key=K + "units",
                     help="hidden units per layer: parameter count and serving cost grow with units²")
    c1.selectbox("Activation", ACTIVATIONS, key=K + "activation",
                 help="activation: the hidden layers' non-linearity")
    c2.slider("Dropout", 0.0, 0.9, step=0.05, key=K + "dropout",
              help="dropout: fraction of units dropped after each hidden layer while training (regularisation)")
    c1.selectbox("Optimizer", OPTIMIZERS, key=K + "optimizer", help="optimizer: the gradient-descent variant")
    c2.select_slider("Learning rate", LEARNING_RATES, key=K + "lr", format_func=lambda v: f"{v:g}",
                     help="learning_rate: step size; too high diverges (loss goes up), too low crawls")
    c1.select_slider("Batch size", BATCH_SIZES, key=K + "batch_size",
                     help="batch_size: rows per gradient step; larger = faster epochs but fewer, smoother steps")
    c2.number_input("Epochs", 1, 1000, step=1, key=K + "epochs",
                    help="epochs: maximum passes over the training split")
    c1.number_input("Early-stopping patience", 0, 100, step=1, key=K + "patience",
                    help="patience: stop after this many epochs without val_loss improving (best weights kept); "
                         "0 turns early stopping off")
    c2.number_input("Seed", 0, 2**31 - 1, step=1, key=K + "seed",
                    help="seed: fixes the split, initial weights and shuffling so runs are reproducible")
    with st.expander("Initialisation and stopping", expanded=False):
        i1, i2 = st.columns(2)
        weight_init = i1.selectbox(
            "Weight initialiser", WEIGHT_INITS, key=K + "weight_init",
            help="weight_init: how every kernel starts (Dense, Conv2D, recurrent inputs) — "
                 + "; ".join(f"{k}: {v}" for k, v in widgets.WEIGHT_INIT_HELP.items()))
        bias_init = i2.selectbox(
            "Bias initialiser", BIAS_INITS, key=K + "bias_init",
            help="bias_init: how every bias starts — "
                 + "; ".join(f"{k}: {v}" for k, v in widgets.BIAS_INIT_HELP.items()))
        if "random_normal" in (weight_init, bias_init):
            i1.number_input("Random normal stddev", 0.0001, 10.0, step=0.01, format="%.4f", key=K + "init_stddev",
                            help="init_stddev: standard deviation of the random_normal initialisers (the seed's "
                                 "tf.random.normal)")
        if bias_init == "constant":
            i2.number_input("Bias value", -10.0, 10.0, step=0.01, key=K + "bias_value",
                            help="bias_value: the constant every bias starts at")
        use_target = st.checkbox(
            "Stop at a target", key=K + "use_target",
            help="target: end training as soon as the metric below reaches the value at the end of an epoch "
                 "(at or below for losses and MAE, at or above for accuracy) — the founding description's 'until "
                 "the error reaches a preset threshold'. Early-stopping patience still applies beside it")
        if use_target:
            t1, t2 = st.columns(2)
            t1.selectbox("Target metric", TARGET_METRICS, key=K + "target_metric",
                         help="target_metric: loss/val_loss for any task, accuracy for classification, mae for "
                              "regression (val_ = on the validation split)")
            t2.number_input("Target value", 0.0, 1e6, step=0.01, format="%.4f", key=K + "target_value",
                            help="target: the value that ends training once reached")

ss = st.session_state
form = widgets.TrainForm(
    dataset=ss[K + "dataset"], csv_target=target, csv_missing=ss[K + "missing"],
    csv_task=None if ss[K + "task"] == "infer" else ss[K + "task"],
    synthetic_activation=ss[K + "synthetic_activation"], noise=float(ss[K + "noise"]),
    layers=int(ss[K + "layers"]), units=int(ss[K + "units"]), activation=ss[K + "activation"],
    dropout=float(ss[K + "dropout"]), optimizer=ss[K + "optimizer"], learning_rate=float(ss[K + "lr"]),
    batch_size=int(ss[K + "batch_size"]), epochs=int(ss[K + "epochs"]), patience=int(ss[K + "patience"]),
    seed=int(ss[K + "seed"]), family=ss[K + "family"], filters=ss[K + "filters"],
    kernel_size=int(ss[K + "kernel_size"]), pooling=ss[K + "pooling"], image_shape=_csv_image_shape(),
    seq_length=int(ss[K + "seq_length"]), rnn_cell=ss[K + "rnn_cell"], rnn_layers=int(ss[K + "rnn_layers"]),
    rnn_units=int(ss[K + "rnn_units"]), rnn_input=ss[K + "rnn_input"], embed_dim=int(ss[K + "embed_dim"]),
    weight_init=ss[K + "weight_init"], init_stddev=float(ss[K + "init_stddev"]), bias_init=ss[K + "bias_init"],
    bias_value=float(ss[K + "bias_value"]), use_target=bool(ss[K + "use_target"]), target=float(ss[K + "target_value"]),
    target_metric=ss[K + "target_metric"], mode=ss[K + "mode"],
)
check = widgets.train_check(form, n_rows=n_rows, has_csv=csv_bytes is not None)
ui.show_check(check)
config_ok = check.ok and not csv_error  # the CSV's own error is already shown above, under the upload
if config_ok:
    with st.expander("Config to train", expanded=False):
        st.json({"model": widgets.model_config(form).to_dict(),
                 "data": {"dataset": form.dataset, "target": form.csv_target,
                          "image_shape": list(widgets.data_source(form, "upload.csv").image_shape)}})

active_train = [r for r in train_runs if r.active]
if st.button("Train", key=K + "start", type="primary", icon=":material/play_arrow:", disabled=not config_ok,
             help="Start a training job with these settings (runs in its own process; you can leave the page)"):
    _launch(form, csv_bytes, csv_name)
if active_train:
    st.caption(f"{len(active_train)} training job(s) running; starting another runs it alongside.")

# -- a run: live while active, results after ---------------------------------------------

st.divider()


def _live(run_id: str) -> None:
    reap(registry)
    run = registry.get_run(run_id)
    if not run.active:
        st.rerun()  # switch the whole page to the results view (and this timer off)
    ui.status_line(run)
    _progress(run)
    _curves(registry, run)
    ui.stop_button(registry, run, key=K + "stop")


def _progress(run: Run) -> None:
    p = run.progress or {}
    epoch, epochs = int(p.get("epoch") or 0), int(p.get("epochs") or run.config.get("model", {}).get("epochs") or 1)
    batch, batches = int(p.get("batch") or 0), int(p.get("batches") or 0)
    frac = ((max(epoch - 1, 0) + (batch / batches if batches else 0)) / epochs) if epochs else 0.0
    label = f"epoch {epoch}/{epochs}" + (f", batch {batch}/{batches}" if batches else "") if epoch else "starting…"
    st.progress(min(max(frac, 0.0), 1.0), text=label)


def _curves(registry: Registry, run: Run) -> None:
    series = registry.metric_series(run.id)
    last = {name: pts[-1][1] for name, pts in series.items() if pts}
    quality = charts.quality_metric_names(series, _task(run))
    m = st.columns(4)
    m[0].metric("loss", _num(last.get("loss")), help="training loss of the last finished epoch")
    m[1].metric("val loss", _num(last.get("val_loss")), help="validation loss of the last finished epoch")
    m[2].metric(charts.LABELS[quality[1]], _num(last.get(quality[1])), help="validation quality metric")
    m[3].metric("samples/s", _num(last.get("samples_per_s"), ".0f"), help="training throughput of the last epoch")
    c1, c2 = st.columns(2)
    c1.plotly_chart(charts.loss_figure(series), key=K + "loss_chart", config={"displaylogo": False})
    c2.plotly_chart(charts.accuracy_figure(series, _task(run)), key=K + "acc_chart", config={"displaylogo": False})


def _task(run: Run) -> str | None:
    """The run's task, known before its first epoch (the job records it once the data is loaded)."""
    task = (run.summary.get("data") or {}).get("task")
    if task:
        return task
    dataset = (run.config.get("data") or {}).get("dataset")
    return BUILTIN_TASKS.get(dataset) if dataset else None


def _num(value: float | None, spec: str = ".4f") -> str:
    return "—" if value is None else format(value, spec)


def _results(registry: Registry, run: Run) -> None:
    s = run.summary
    metrics = s.get("test_metrics") or {}
    if metrics:
        st.subheader("Test metrics")
        names = [n for n in ("accuracy", "precision", "recall", "f1", "mse", "mae", "r2") if n in metrics]
        cols = st.columns(len(names) + 2)
        for col, name in zip(cols, names, strict=False):
            col.metric(name.upper() if name in ("mse", "mae") else ("R²" if name == "r2" else name),
                       f"{metrics[name]:.4f}", help=f"{name} on the held-out test split")
        cols[len(names)].metric("parameters", f"{s.get('param_count', 0):,}", help="trainable + non-trainable weights")
        cols[len(names) + 1].metric("epochs run", s.get("epochs_run", "—"),
                                    help="epochs actually run (a target, early stopping or Stop may end sooner)")
    stop = s.get("stop")
    if stop:
        detail = f" — {stop['detail']}" if stop.get("detail") and stop.get("rule") != "epochs" else ""
        st.caption(f"Stopped by: **{STOP_LABELS.get(stop.get('rule'), stop.get('rule'))}** at epoch "
                   f"{stop.get('epoch')}{detail}")
    shape = (s.get("data") or {}).get("input_shape")
    if shape:
        family = (run.config.get("model") or {}).get("family", "mlp").upper()
        if (run.config.get("model") or {}).get("mode") == "tape":
            family = "GradientTape loop f(Wx + b)"
        st.caption(f"{family} · served input shape {' × '.join(str(n) for n in shape)} (one request row)")
    _curves(registry, run)
    if metrics.get("confusion_matrix"):
        labels = (s.get("data") or {}).get("classes") or None
        st.plotly_chart(charts.confusion_matrix_figure(metrics["confusion_matrix"], labels),
                        key=K + "cm_chart", config={"displaylogo": False})
    model_path = Path(s["model_path"]) if s.get("model_path") else None
    if model_path is not None and model_path.is_file() and model_path.stat().st_size <= MAX_DOWNLOAD_BYTES:
        st.download_button("Download model.keras", model_path.read_bytes(), file_name=f"{run.id}.keras",
                           mime="application/zip", key=K + "download", icon=":material/download:",
                           help="The trained Keras v3 archive (load with keras.saving.load_model(..., safe_mode=True))")
    notes = (s.get("data") or {}).get("notes") or []
    if notes:
        st.caption("Data: " + "; ".join(notes))
    if model_path is not None and model_path.is_file():
        _ship(registry, run, model_path)


def _ship(registry: Registry, run: Run, model_path: Path) -> None:
    """The model as a TF Serving bundle with the endpoint's default batching (a sweep on the Tune page
    ships a tuned one)."""
    from agent.tfserving import BUNDLE_DIRNAME

    root = registry.artifacts_dir(run.id) / BUNDLE_DIRNAME

    def write() -> None:
        from agent.tfserving import write_bundle

        write_bundle(root, model_path, source=f"training run {run.id} ({run.name})")

    st.markdown("#### Ship to TensorFlow Serving")
    st.caption("With the endpoint's default batching; a sweep on the **Tune** page ships a tuned one.")
    ui.ship_section(root, write, key=K + f"ship.{run.id}", what="this model")


view = ui.run_view("Training run", train_runs, key=K + "view",
                   help="Which training run to show; running jobs update live",
                   empty_text="No training runs yet. Set the knobs above and press **Train**.",
                   live=_live, results=functools.partial(_results, registry), refresh_s=LIVE_REFRESH_S)
if view is not None:
    with st.expander("Config and log"):
        st.json(view.config, expanded=False)
        log = registry.artifacts_dir(view.id) / "job.log"
        if log.is_file():
            st.code("\n".join(log.read_text(errors="replace").splitlines()[-30:]) or "(empty)", language=None)
