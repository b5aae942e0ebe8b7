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
from dashboard import charts, forms, ui
from dashboard.state import KEPT_PREFIX, get_registry, init_defaults
from runs.registry import Registry, Run

LIVE_REFRESH_S = 1.0  # how often the live panel re-reads the registry while a job runs
MAX_DOWNLOAD_BYTES = 200 * 1024 * 1024
LEARNING_RATES = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
BATCH_SIZES = (8, 16, 32, 64, 128, 256, 512)
KERNEL_SIZES = (1, 3, 5, 7)
RNN_UNITS = (8, 16, 32, 64, 128, 256)
EMBED_DIMS = (4, 8, 16, 32, 64)
KEY_PREFIX = "train."  # widget key prefix for this page
key = ui.widget_keys(KEY_PREFIX)  # key("x") -> the page's widget key for x
BUILTIN_TASKS = forms.BUILTIN_TASKS
FAMILY_LABELS = {"mlp": "MLP", "cnn": "CNN", "rnn": "RNN"}
MODE_LABELS = {"fit": "Keras fit", "tape": "GradientTape loop"}
STOP_LABELS = {"epochs": "all epochs run", "target": "target reached", "patience": "early stopping (patience)",
               "request": "stopped by request"}

DEFAULTS = forms.DEFAULT_TRAIN  # the form starts where the first-run card promises
# Widget name -> the TrainForm field it starts from.
FORM_FIELDS = {
    "dataset": "dataset", "missing": "csv_missing", "synthetic_activation": "synthetic_activation", "noise": "noise",
    "layers": "layers", "units": "units", "activation": "activation", "dropout": "dropout", "optimizer": "optimizer",
    "lr": "learning_rate", "batch_size": "batch_size", "epochs": "epochs", "patience": "patience", "seed": "seed",
    "family": "family", "filters": "filters", "kernel_size": "kernel_size", "pooling": "pooling",
    "image_shape": "image_shape", "seq_length": "seq_length", "rnn_cell": "rnn_cell", "rnn_layers": "rnn_layers",
    "rnn_units": "rnn_units", "rnn_input": "rnn_input", "embed_dim": "embed_dim", "weight_init": "weight_init",
    "init_stddev": "init_stddev", "bias_init": "bias_init", "bias_value": "bias_value", "use_target": "use_target",
    "target_value": "target", "target_metric": "target_metric", "mode": "mode",
}
init_defaults({key(widget): getattr(DEFAULTS, field) for widget, field in FORM_FIELDS.items()} | {key("task"): "infer"})

registry = get_registry()
KEPT_UPLOAD = key("kept_upload")  # (file name, bytes) of the last upload: the uploader itself forgets it off-page


def _keep_upload() -> None:
    """Uploader callback: keep (or, when the user removes the file, forget) the upload beyond this page."""
    upload = st.session_state.get(key("upload"))
    if upload is None:
        st.session_state.pop(KEPT_UPLOAD, None)
    else:
        st.session_state[KEPT_UPLOAD] = (upload.name, upload.getvalue())


def _csv_image_shape() -> str:
    """The CSV image shape box's text while the CNN is picked ('' otherwise: the MLP takes flat rows)."""
    return st.session_state[key("image_shape")] if st.session_state[key("family")] == "cnn" else ""


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


def start_training(registry: Registry, form: forms.TrainForm, csv_bytes: bytes | None = None,
                   csv_name: str | None = None) -> str:
    """Start the train job through its start() (an uploaded CSV is saved with the run); returns the run id."""
    from agent.training import TrainJob, start

    upload = (csv_bytes or b"") if form.dataset == "csv" else None
    # The real path is the run's own copy of the upload; start() puts it in the config.
    job = TrainJob(forms.model_config(form), forms.data_source(form, "upload.csv" if upload is not None else None))
    name = f"train {Path(csv_name).stem if csv_bytes is not None and csv_name else form.dataset}"
    return start(registry, job, name=name, upload=upload, upload_name=csv_name)


def _launch(form: forms.TrainForm, csv_bytes: bytes | None = None, csv_name: str | None = None) -> None:
    try:
        run_id = start_training(registry, form, csv_bytes, csv_name)
    except (ValueError, OSError) as exc:
        st.error(f"Could not start training: {exc}")
        return
    ui.show_next(key("view"), run_id)
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
            f"The registry is empty. Start with the form's defaults: {forms.describe_model(forms.DEFAULT_TRAIN)} — "
            "well under a minute here. Then serve it and swarm it from the other pages."
        )
        if st.button("Train the default model", key=key("first_run"), type="primary", icon=":material/rocket_launch:",
                     help=f"Starts training {forms.describe_model(forms.DEFAULT_TRAIN).replace('**', '')} "
                          "(the form below starts from the same settings)"):
            _launch(forms.DEFAULT_TRAIN)

# -- the form ---------------------------------------------------------------------------

data_col, model_col = st.columns(2, gap="large")
csv_bytes: bytes | None = None
csv_name: str | None = None
n_rows: int | None = None
csv_error: str | None = None
with data_col:
    st.subheader("Data")
    dataset = st.selectbox(
        "Dataset", (*BUILTIN_DATASETS, "csv"), key=key("dataset"),
        format_func=lambda d: "upload a CSV file…" if d == "csv" else d,
        help="dataset: a built-in set bundled offline (digits, iris, wine, breast_cancer are classification; "
             "diabetes and synthetic are regression) or your own CSV file",
    )
    target = None
    if dataset in forms.BUILTIN_INFO:
        st.caption(forms.BUILTIN_INFO[dataset])
    if dataset == "csv":
        upload = st.file_uploader(
            "CSV file", type=["csv"], key=key("upload"), max_upload_size=MAX_CSV_BYTES // (1024 * 1024),
            on_change=_keep_upload,
            help=f"csv: a UTF-8 CSV with a header row, up to {MAX_CSV_BYTES // (1024 * 1024)} MB; "
                 "one column is the target, the rest are features (text columns are one-hot encoded)",
        )
        if upload is not None:
            st.session_state[KEPT_UPLOAD] = (upload.name, upload.getvalue())
        kept = st.session_state.get(KEPT_UPLOAD)
        if kept is not None:
            csv_name, csv_bytes = kept
            if upload is None:  # the uploader forgot the file when the page was left; this session did not
                st.caption(f"Using **{csv_name}** (uploaded earlier); upload another file to replace it.")
            digest = hashlib.sha256(csv_bytes).hexdigest()
            try:
                preview = _preview(digest, csv_bytes)
            except (CsvError, ValueError) as exc:
                csv_error = str(exc).splitlines()[0]
                st.error(csv_error)
            else:
                n_rows = preview.n_rows
                if st.session_state.get(key("target")) not in preview.columns:
                    st.session_state[key("target")] = st.session_state.get(KEPT_PREFIX + key("target"))
                if st.session_state.get(key("target")) not in preview.columns:
                    st.session_state[key("target")] = preview.columns[-1]  # a file's last column, by convention
                st.session_state[KEPT_PREFIX + key("target")] = st.session_state[key("target")]
                target = st.selectbox(
                    "Target column", preview.columns, key=key("target"),
                    help="target: the column the model predicts; text or few integer values -> classification, "
                         "other numbers -> regression",
                )
                st.dataframe(preview.head, height=210, hide_index=True)
                st.caption(f"{preview.n_rows} rows × {len(preview.columns)} columns; "
                           f"{preview.rows_with_missing} rows with missing values")
                st.selectbox(
                    "Missing values", MISSING_POLICIES, key=key("missing"),
                    help="missing: what to do with rows that have empty feature cells — reject the file, "
                         "drop those rows, or fill numeric columns with their mean",
                )
                st.selectbox(
                    "Task", ("infer", "classification", "regression"), key=key("task"),
                    help="task: inferred from the target column unless you override it",
                )
                task = None if st.session_state[key("task")] == "infer" else st.session_state[key("task")]
                if st.session_state[key("family")] == "cnn":
                    st.text_input(
                        "Image shape H,W,C", key=key("image_shape"), placeholder="e.g. 28,28,1",
                        help="image_shape: each row's feature columns are the pixels of an H×W×C image in "
                             "row-major order (H*W*C must equal the feature count); the CNN's input shape",
                    )
                csv_error, described = _csv_check(digest, csv_bytes, target, st.session_state[key("missing")], task,
                                                  _csv_image_shape())
                if csv_error:
                    st.error(csv_error)
                else:
                    st.success(described, icon=":material/check_circle:")
    elif dataset == "synthetic":
        st.selectbox("Synthetic activation f", SYNTHETIC_ACTIVATIONS, key=key("synthetic_activation"),
                     help="synthetic_activation: the target is y = f(Wx + b) (+ noise). The GradientTape loop "
                          "(Training loop above) fits o = f(Wx + b) with its activation set to this f, so it can "
                          "fit it exactly; a Keras model has a linear output and approximates f with its hidden "
                          "layers")
        st.slider("Noise σ", 0.0, 1.0, step=0.05, key=key("noise"),
                  help="noise: standard deviation of Gaussian noise added to y; the floor the loss can reach")
    elif dataset == "sequences":
        st.slider("Sequence length", MIN_SEQ_LENGTH, 60, key=key("seq_length"),
                  help=f"seq_length: tokens per sequence ({MIN_SEQ_LENGTH}-{MAX_SEQ_LENGTH} from the CLI); each "
                       "holds one token 1 and one token 2 among filler, and the label says whether 1 comes first. "
                       "Longer sequences mean a longer memory and more compute per request")

with model_col:
    st.subheader("Model")
    mode = st.radio(
        "Training loop", TRAIN_MODES, key=key("mode"), horizontal=True, format_func=MODE_LABELS.__getitem__,
        help="mode: Keras fit (any model), or the founding example written out by hand — one Dense layer "
             "o = f(Wx + b), MSE, tf.GradientTape, W -= lr·dW and b -= lr·db with assign_sub, compiled with "
             "tf.function. The loop needs a regression set (synthetic is y = f(Wx + b)); it is plain gradient "
             "descent (the optimizer is ignored) and f is the activation below",
    )
    family = st.radio(
        "Family", FAMILIES, key=key("family"), horizontal=True, format_func=FAMILY_LABELS.__getitem__,
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
        k1.text_input("Filters per block", key=key("filters"),
                      help="filters: one conv block per entry (Conv2D, pooling, dropout), e.g. 16,32 = two blocks "
                           "of 16 then 32 filters")
        k2.select_slider("Kernel size", KERNEL_SIZES, key=key("kernel_size"),
                         help="kernel_size: side of each square convolution kernel (3 = 3×3)")
        k3.selectbox("Pooling", POOLINGS, key=key("pooling"),
                     help="pooling: 2×2 max or average pooling after each conv block halves the image; none keeps "
                          "its size (more compute per request)")
        if dataset in forms.IMAGE_INFO:
            st.caption(f"{dataset} as {forms.IMAGE_INFO[dataset]} images; the Dense layers below follow "
                       "the conv blocks")
    if family == "rnn":
        r1, r2, r3 = st.columns(3)
        r1.selectbox("Recurrent cell", RNN_CELLS, key=key("rnn_cell"),
                     help="rnn_cell: GRU (gated, cheaper than LSTM), LSTM (gated with a cell state), SimpleRNN "
                          "(no gates: cheapest, forgets fastest)")
        r2.slider("Recurrent layers", 1, MAX_RNN_LAYERS, key=key("rnn_layers"),
                  help="rnn layers: 1 or 2 stacked recurrent layers (the first returns its whole sequence)")
        r3.select_slider("Recurrent units", RNN_UNITS, key=key("rnn_units"),
                         help="rnn_units: state size of each recurrent layer; compute per request grows with "
                              "units² × sequence length")
        r1.radio("Sequence input", RNN_INPUTS, key=key("rnn_input"),
                 help="rnn_input: embedding = each value is an integer token id looked up in a learned table "
                      "(values are rounded and clipped inside the model, so served float rows work); dense = each "
                      "value is one real-valued time step")
        if st.session_state[key("rnn_input")] == "embedding":
            r2.select_slider("Embedding width", EMBED_DIMS, key=key("embed_dim"),
                             help="embed_dim: size of each token's learned vector")
        st.caption("Dropout below also applies to each recurrent layer's inputs.")
    c1, c2 = st.columns(2)
    no_hidden = mode == "tape" or st.session_state[key("layers")] == 0  # units and activation do not apply
    c1.slider("Hidden layers", 0, MAX_LAYERS, key=key("layers"), disabled=mode == "tape",
              help="hidden: number of Dense layers (after the conv blocks for a CNN); 0 is a linear/logistic model. "
                   "More layers = more capacity and more compute per request when served")
    c2.select_slider("Units per layer", (8, 16, 32, 64, 128, 256, 512, 1024), key=key("units"), disabled=no_hidden,
                     help="hidden units per layer: parameter count and serving cost grow with units² "
                          "(no effect with 0 hidden layers)")
    c1.selectbox("Activation", ACTIVATIONS, key=key("activation"), disabled=no_hidden and mode != "tape",
                 help="activation: the hidden layers' non-linearity (no effect with 0 hidden layers); in the "
                      "tape loop, its f")
    c2.slider("Dropout", 0.0, 0.9, step=0.05, key=key("dropout"),
              help="dropout: fraction of units dropped after each hidden layer while training (regularisation)")
    c1.selectbox("Optimizer", OPTIMIZERS, key=key("optimizer"), help="optimizer: the gradient-descent variant")
    c2.select_slider("Learning rate", LEARNING_RATES, key=key("lr"), format_func=lambda v: f"{v:g}",
                     help="learning_rate: step size; too high diverges (loss goes up), too low crawls")
    c1.select_slider("Batch size", BATCH_SIZES, key=key("batch_size"),
                     help="batch_size: rows per gradient step; larger = faster epochs but fewer, smoother steps")
    c2.number_input("Epochs", 1, 1000, step=1, key=key("epochs"),
                    help="epochs: maximum passes over the training split")
    c1.number_input("Early-stopping patience", 0, 100, step=1, key=key("patience"),
                    help="patience: stop after this many epochs without val_loss improving (best weights kept); "
                         "0 turns early stopping off")
    c2.number_input("Seed", 0, 2**31 - 1, step=1, key=key("seed"),
                    help="seed: fixes the split, initial weights and shuffling so runs are reproducible")
    with st.expander("Initialisation and stopping", expanded=False):
        i1, i2 = st.columns(2)
        weight_init = i1.selectbox(
            "Weight initialiser", WEIGHT_INITS, key=key("weight_init"),
            help="weight_init: how every kernel starts (Dense, Conv2D, recurrent inputs) — "
                 + "; ".join(f"{k}: {v}" for k, v in forms.WEIGHT_INIT_HELP.items()))
        bias_init = i2.selectbox(
            "Bias initialiser", BIAS_INITS, key=key("bias_init"),
            help="bias_init: how every bias starts — "
                 + "; ".join(f"{k}: {v}" for k, v in forms.BIAS_INIT_HELP.items()))
        if "random_normal" in (weight_init, bias_init):
            i1.number_input("Random normal stddev", 0.0001, 10.0, step=0.01, format="%.4f", key=key("init_stddev"),
                            help="init_stddev: standard deviation of the random_normal initialisers (the seed's "
                                 "tf.random.normal)")
        if bias_init == "constant":
            i2.number_input("Bias value", -10.0, 10.0, step=0.01, key=key("bias_value"),
                            help="bias_value: the constant every bias starts at")
        use_target = st.checkbox(
            "Stop at a target", key=key("use_target"),
            help="target: end training as soon as the metric below reaches the value at the end of an epoch "
                 "(at or below for losses and MAE, at or above for accuracy) — the founding description's 'until "
                 "the error reaches a preset threshold'. Early-stopping patience still applies beside it")
        if use_target:
            t1, t2 = st.columns(2)
            t1.selectbox("Target metric", TARGET_METRICS, key=key("target_metric"),
                         help="target_metric: loss/val_loss for any task, accuracy for classification, mae for "
                              "regression (val_ = on the validation split)")
            t2.number_input("Target value", 0.0, 1e6, step=0.01, format="%.4f", key=key("target_value"),
                            help="target: the value that ends training once reached")

state = st.session_state
form = forms.TrainForm(
    dataset=state[key("dataset")], csv_target=target, csv_missing=state[key("missing")],
    csv_task=None if state[key("task")] == "infer" else state[key("task")],
    synthetic_activation=state[key("synthetic_activation")], noise=float(state[key("noise")]),
    layers=int(state[key("layers")]), units=int(state[key("units")]), activation=state[key("activation")],
    dropout=float(state[key("dropout")]), optimizer=state[key("optimizer")], learning_rate=float(state[key("lr")]),
    batch_size=int(state[key("batch_size")]), epochs=int(state[key("epochs")]), patience=int(state[key("patience")]),
    seed=int(state[key("seed")]), family=state[key("family")], filters=state[key("filters")],
    kernel_size=int(state[key("kernel_size")]), pooling=state[key("pooling")], image_shape=_csv_image_shape(),
    seq_length=int(state[key("seq_length")]), rnn_cell=state[key("rnn_cell")],
    rnn_layers=int(state[key("rnn_layers")]), rnn_units=int(state[key("rnn_units")]),
    rnn_input=state[key("rnn_input")], embed_dim=int(state[key("embed_dim")]),
    weight_init=state[key("weight_init")], init_stddev=float(state[key("init_stddev")]),
    bias_init=state[key("bias_init")], bias_value=float(state[key("bias_value")]),
    use_target=bool(state[key("use_target")]), target=float(state[key("target_value")]),
    target_metric=state[key("target_metric")], mode=state[key("mode")],
)
check = forms.train_check(form, n_rows=n_rows, has_csv=csv_bytes is not None, csv_error=csv_error)
ui.show_check(check)
config_ok = check.ok and not csv_error  # the CSV's own error is already shown above, under the upload
if config_ok:
    with st.expander("Config to train", expanded=False):
        st.json({"model": forms.model_config(form).to_dict(),
                 "data": {"dataset": form.dataset, "target": form.csv_target,
                          "image_shape": list(forms.data_source(form, "upload.csv").image_shape)}})

active_train = [r for r in train_runs if r.active]
if st.button("Train", key=key("start"), type="primary", icon=":material/play_arrow:", disabled=not config_ok,
             help="Start a training job with these settings (runs in its own process; you can leave the page)"):
    _launch(form, csv_bytes, csv_name)
if active_train:
    st.caption(f"{len(active_train)} training job(s) running; starting another runs it alongside.")

# -- a run: live while active, results after ---------------------------------------------

st.divider()


def _live(run: Run) -> None:
    ui.status_line(run)
    _progress(run)
    _curves(registry, run)
    ui.stop_button(registry, run, key=key("stop"))


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
    c1.plotly_chart(charts.loss_figure(series), key=key("loss_chart"), config={"displaylogo": False})
    c2.plotly_chart(charts.accuracy_figure(series, _task(run)), key=key("acc_chart"), config={"displaylogo": False})


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
    if s.get("model_path") and Path(s["model_path"]).exists():  # the next steps first, where they are seen
        ui.next_steps([
            ui.NextStep("Serve this model", "serve.py", key("to_serve"), ":material/dns:",
                        help="open the Serve page with this model picked"),
            ui.NextStep("Tune it", "tune.py", key("to_tune"), ":material/tune:",
                        help="open the Tune page with this model picked for a serving sweep"),
        ], run.id, spare=4)
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
                        key=key("cm_chart"), config={"displaylogo": False})
    model_path = Path(s["model_path"]) if s.get("model_path") else None
    if model_path is not None and model_path.is_file() and model_path.stat().st_size <= MAX_DOWNLOAD_BYTES:
        st.download_button("Download model.keras", model_path.read_bytes(), file_name=f"{run.id}.keras",
                           mime="application/zip", key=key("download"), icon=":material/download:",
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
    ui.ship_section(root, write, key=key(f"ship.{run.id}"), what="this model")


view = ui.run_view("Training run", ui.hide_sub_runs(train_runs, key("show_sub_runs")), key=key("view"),
                   help="Which training run to show; running jobs update live",
                   empty_text="No training runs yet. Set the knobs above and press **Train**.",
                   live=_live, results=functools.partial(_results, registry), refresh_s=LIVE_REFRESH_S,
                   registry=registry)
if view is not None:
    with st.expander("Config and log"):
        st.json(view.config, expanded=False)
        log = registry.artifacts_dir(view.id) / "job.log"
        if log.is_file():
            st.code("\n".join(log.read_text(errors="replace").splitlines()[-30:]) or "(empty)", language=None)
