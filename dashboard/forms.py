"""Widget values -> validated configs, as pure functions (no Streamlit here).

Each page collects its widget values into a small frozen ``*Form`` dataclass;
the functions below turn a form into the config objects the jobs take, and check
it first. The real configs (``ModelConfig``/``DataSource``, ``ServingConfig``,
``LoadTestConfig``, ``loadtest.slo``) are the only judges of ranges and choices:
a check builds them and reports their own one-line ``ValueError`` message, so the
UI accepts exactly what a job would. A check adds only what a config cannot know
(no file uploaded yet, only local targets) and non-blocking advice (settings that
are valid but pointless or unwise). Tests drive these without a UI.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from agent.data import BUILTIN_IMAGE_SHAPES, DataSource, parse_image_shape
from agent.model import ModelConfig, check_target, image_shape_for, parse_filters
from agent.serving.config import ServingConfig
from loadtest.payload import (
    GENERATED_DIRNAME,
    PayloadSpec,
    fetch_signature,
    generate_instances,
    predict_path,
    save_generated,
)
from loadtest.runner import LoadTestConfig
from loadtest.slo import parse_slo

SHAPE_HELP = {
    "constant": "a fixed number of users for the whole run (closed loop)",
    "steps": "a ladder: start at the user count, add users every step duration, up to the top",
    "spike": "baseline users, then a short spike to the spike user count, then back",
    "rate": "open loop: a fixed offered request rate whatever the latency (shows overload honestly)",
}
# Extents of the Load test page's number inputs: narrower than what LoadTestConfig accepts, on purpose
# (a swarm from this 2-core dashboard beyond them measures the load generator, not the server).
MAX_USERS = 5000
MAX_RUN_TIME_S = 3600
MAX_PROCESSES = 16
MAX_INSTANCES_PER_REQUEST = 1024
DEFAULT_SLOS = "p95<=100ms\nfail_ratio<=0.01"
# Swarms may only be aimed at this machine (LoadTestConfig itself takes any http(s) URL).
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
# A batch timeout above this is flagged: every lone request waits that long for company.
SLOW_BATCH_TIMEOUT_MS = 100.0
# An SGD learning rate above this diverges on these data sets.
SGD_MAX_SANE_LR = 1.0
# Where the Train page will save an upload; stands in for it while checking a CSV form (nothing reads it).
CSV_PLACEHOLDER = "upload.csv"
# Stands in for a missing target while checking the rest of a Load test form.
HOST_PLACEHOLDER = "http://127.0.0.1"
SIGNATURE_TIMEOUT_S = 3.0  # reading a local endpoint's metadata for generated payloads, during a page run


@dataclass(frozen=True)
class Check:
    """What a form check found: ``errors`` keep Start disabled, ``advice`` is shown but does not block."""

    errors: tuple[str, ...] = ()
    advice: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.errors


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _config_error(build: Callable[[], Any]) -> list[str]:
    """The one-line reason ``build()`` (a config constructor) refuses its values; empty if it accepts them."""
    try:
        build()
    except ValueError as exc:
        return [_first_line(exc)]
    return []


# -- training ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainForm:
    """What the Train page's widgets hold."""

    dataset: str = "digits"  # a built-in name, or "csv"
    csv_target: str | None = None
    csv_missing: str = "reject"
    csv_task: str | None = None  # None = infer from the target column
    synthetic_activation: str = "tanh"
    noise: float = 0.0
    layers: int = 2
    units: int = 64
    activation: str = "relu"
    dropout: float = 0.0
    optimizer: str = "adam"
    learning_rate: float = 1e-3
    batch_size: int = 64
    epochs: int = 20
    patience: int = 0
    seed: int = 0
    family: str = "mlp"  # mlp | cnn
    filters: str = "16,32"  # cnn: filters per conv block, comma-separated
    kernel_size: int = 3
    pooling: str = "max"
    image_shape: str = ""  # "H,W,C" for a CSV of image pixels (digits' is built in)
    seq_length: int = 12  # the generated sequences' length
    rnn_cell: str = "gru"
    rnn_layers: int = 1
    rnn_units: int = 32
    rnn_input: str = "embedding"
    embed_dim: int = 16
    weight_init: str = "glorot_uniform"
    init_stddev: float = 0.05
    bias_init: str = "zeros"
    bias_value: float = 0.0
    use_target: bool = False
    target: float = 0.1
    target_metric: str = "val_loss"
    mode: str = "fit"  # fit | tape

    @property
    def hidden(self) -> tuple[int, ...]:
        return (int(self.units),) * int(self.layers)


# What each built-in set is, shown under the picker (static: no dataset load before first paint).
BUILTIN_INFO = {
    "digits": "classification · 1,797 rows · 64 features (8×8 pixel intensities) · 10 classes",
    "iris": "classification · 150 rows · 4 features (petal/sepal sizes) · 3 classes",
    "wine": "classification · 178 rows · 13 features (chemical analysis) · 3 classes",
    "breast_cancer": "classification · 569 rows · 30 features (cell nuclei) · 2 classes",
    "diabetes": "regression · 442 rows · 10 features · disease progression after one year",
    "synthetic": "regression · 2,000 rows · 8 features · y = f(Wx + b) + noise from one neuron",
    "sequences": "classification · 2,000 rows · one token sequence per row (ids 0-9) · does token 1 come before "
                 "token 2? (for the RNN)",
}
# What each initialiser is for (the Train page's help; README says the same).
WEIGHT_INIT_HELP = {
    "glorot_uniform": "Keras' default; keeps activation variance steady for tanh/sigmoid/linear layers",
    "glorot_normal": "the same scale as glorot_uniform, drawn from a truncated normal",
    "he_uniform": "twice Glorot's variance: the match for relu-family layers (half the units are zero)",
    "he_normal": "He's scale from a truncated normal; the usual pick for deep relu stacks",
    "lecun_normal": "the scale selu needs to self-normalise",
    "random_normal": "the seed's own tf.random.normal with the stddev you set: too large explodes, too small "
                     "vanishes",
    "zeros": "every weight 0: units stay identical and (with relu) nothing learns; a check that the knob "
             "reaches the layers",
}
BIAS_INIT_HELP = {
    "zeros": "the usual start (the seed's example)",
    "constant": "every bias the value you set, e.g. 0.01 keeps relu units alive at the start",
    "random_normal": "biases from a normal with the stddev set above",
}

# What the Train page shows for the CNN knobs of a built-in image set.
IMAGE_INFO = {name: "×".join(str(n) for n in shape) for name, shape in BUILTIN_IMAGE_SHAPES.items()}

# Task of each built-in dataset (a CSV's is known once it is loaded).
BUILTIN_TASKS = {"diabetes": "regression", "synthetic": "regression", "digits": "classification",
                 "iris": "classification", "wine": "classification", "breast_cancer": "classification",
                 "sequences": "classification"}

# The one-click first run: small enough to finish in seconds on 2 cores.
# It is also what the Train page's form starts from, so the first-run card and the form agree.
DEFAULT_TRAIN = TrainForm(dataset="digits", layers=1, units=64, epochs=15, patience=3)


def describe_model(form: TrainForm) -> str:
    """What a form trains, in words (the first-run card's promise is built from the form's own defaults)."""
    layers = int(form.layers)
    hidden = (f"{layers} hidden layer{'s' if layers != 1 else ''} of {form.units} {form.activation} units"
              if layers else "no hidden layer")
    stopping = (f"early stopping after {form.patience} epoch{'s' if form.patience != 1 else ''} without "
                "val_loss improving" if form.patience else "no early stopping")
    return (f"a {form.family.upper()} with {hidden} on **{form.dataset}**, {form.optimizer} at learning rate "
            f"{form.learning_rate:g}, up to {form.epochs} epochs with {stopping}")


def train_check(form: TrainForm, *, n_rows: int | None = None, has_csv: bool = False,
                csv_error: str | None = None) -> Check:
    """Errors from building ``ModelConfig`` and ``DataSource`` (plus a missing upload or target), and advice.

    ``n_rows`` is the dataset's row count when known (an uploaded CSV); ``has_csv``
    says whether a file has been uploaded; ``csv_error`` is the file's own error (shown
    where the file is): nothing about its target is added, that error says it all.
    """
    errors = _config_error(lambda: model_config(form))
    if form.dataset == "csv" and not has_csv:
        errors.append("upload a CSV file, or pick a built-in dataset")
    elif form.dataset == "csv" and csv_error:
        pass
    elif form.dataset == "csv" and not form.csv_target:
        errors.append("choose the target column of the CSV file")
    else:
        errors += _config_error(lambda: data_source(form, CSV_PLACEHOLDER))
    if form.family == "cnn" and not errors and not _image_shape(form):
        errors.append("a CNN needs image-shaped data: pick digits (8×8×1) or a CSV with an image shape H,W,C")
    task = BUILTIN_TASKS.get(form.dataset) if form.dataset != "csv" else form.csv_task
    if form.mode == "tape" and not errors and task == "classification":
        errors.append("the tape loop fits y = f(Wx + b) with MSE: pick a regression set (synthetic, diabetes)")
    if form.use_target and not errors and task is not None:
        errors += _config_error(lambda: check_target(model_config(form), task))
    advice: list[str] = []
    if form.dropout > 0 and form.layers == 0:
        advice.append("dropout has no effect without hidden layers; add a layer or set dropout to 0")
    if n_rows is not None and form.batch_size > n_rows:
        advice.append(f"batch size {form.batch_size} is larger than the {n_rows} rows of the dataset: "
                      "every epoch is a single step")
    if 0 < form.epochs <= form.patience:
        advice.append(f"early-stopping patience {form.patience} >= epochs {form.epochs}: "
                      "it can never stop training early")
    if form.optimizer == "sgd" and form.learning_rate > SGD_MAX_SANE_LR:
        advice.append(f"learning rate {form.learning_rate:g} with SGD diverges almost surely; try 0.01-0.1")
    return Check(tuple(errors), tuple(advice))


def model_config(form: TrainForm) -> ModelConfig:
    family = "mlp" if form.mode == "tape" else form.family  # the loop is one Dense layer
    cnn, rnn, d = family == "cnn", family == "rnn", ModelConfig
    return ModelConfig(
        hidden=() if form.mode == "tape" else form.hidden, activation=form.activation, dropout=float(form.dropout),
        optimizer=form.optimizer, learning_rate=float(form.learning_rate), batch_size=int(form.batch_size),
        epochs=int(form.epochs), patience=int(form.patience), seed=int(form.seed), family=family,
        # An MLP keeps the default conv fields, so its stored config does not depend on hidden widgets.
        filters=parse_filters(form.filters) if cnn else ModelConfig.filters,
        kernel_size=int(form.kernel_size) if cnn else ModelConfig.kernel_size,
        pooling=form.pooling if cnn else ModelConfig.pooling,
        rnn_cell=form.rnn_cell if rnn else d.rnn_cell,
        rnn_units=(int(form.rnn_units),) * int(form.rnn_layers) if rnn else d.rnn_units,
        rnn_input=form.rnn_input if rnn else d.rnn_input,
        embed_dim=int(form.embed_dim) if rnn else d.embed_dim,
        weight_init=form.weight_init, bias_init=form.bias_init,
        init_stddev=float(form.init_stddev) if "random_normal" in (form.weight_init, form.bias_init) else d.init_stddev,
        bias_value=float(form.bias_value) if form.bias_init == "constant" else d.bias_value,
        target=float(form.target) if form.use_target else None,
        target_metric=form.target_metric if form.use_target else d.target_metric,
        mode=form.mode,
        # The tape loop is the seed's single neuron: its f is the output activation, the hidden one's stand-in.
        output_activation=form.activation if form.mode == "tape" else d.output_activation,
    )


def _image_shape(form: TrainForm) -> tuple[int, ...]:
    """The image shape training will use: the CSV's given one, or digits' 8x8x1 for a CNN."""
    given = parse_image_shape(form.image_shape) if form.dataset == "csv" else ()
    family = "mlp" if form.mode == "tape" else form.family
    return image_shape_for(ModelConfig(family=family), form.dataset, given)


def data_source(form: TrainForm, csv_path: str | Path | None = None) -> DataSource:
    if form.dataset == "csv":
        if csv_path is None:
            raise ValueError("a CSV dataset needs an uploaded file")
        return DataSource(dataset="csv", csv_path=str(csv_path), target=form.csv_target,
                          task=form.csv_task, missing=form.csv_missing, seed=form.seed,
                          image_shape=_image_shape(form))
    return DataSource(dataset=form.dataset, synthetic_activation=form.synthetic_activation,
                      noise=float(form.noise), seed=form.seed, image_shape=_image_shape(form),
                      seq_length=int(form.seq_length) if form.dataset == "sequences" else DataSource.seq_length)


# -- serving ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ServeForm:
    """What the Serve page's widgets hold (names follow TF Serving's BatchingParameters)."""

    runtime: str = "tflite"
    max_batch_size: int = 32
    batch_timeout_ms: float = 2.0
    max_enqueued_batches: int = 64
    num_batch_threads: int = 1
    workers: int = 1
    model_name: str = "model"  # the {name} in /v1/models/{name}:predict (not part of ServingConfig)


def serve_check(form: ServeForm) -> Check:
    """Errors from building ``ServingConfig`` and from the model name's URL rule, and advice.

    The name is not part of ``ServingConfig``; ``predict_path`` holds the TF Serving
    URL rule (non-empty, no '/' or ':') that the endpoint applies to it as well.
    """
    errors = _config_error(lambda: serving_config(form))
    errors += _config_error(lambda: predict_path(form.model_name.strip()))
    advice: list[str] = []
    if form.max_batch_size == 1 and form.batch_timeout_ms > 0:
        advice.append("batch timeout has no effect with max batch size 1 (every batch is full at once); set it to 0")
    if form.batch_timeout_ms > SLOW_BATCH_TIMEOUT_MS:
        advice.append(f"batch timeout {form.batch_timeout_ms:g} ms adds that much latency to a lone request")
    return Check(tuple(errors), tuple(advice))


def serving_config(form: ServeForm) -> ServingConfig:
    """The endpoint's ``ServingConfig`` for ``form`` (raises ValueError with its one-line reason)."""
    return ServingConfig(
        runtime=form.runtime,
        max_batch_size=int(form.max_batch_size),
        batch_timeout_ms=float(form.batch_timeout_ms),
        max_enqueued_batches=int(form.max_enqueued_batches),
        num_batch_threads=int(form.num_batch_threads),
        workers=int(form.workers),
    )


# -- load tests -------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadForm:
    """What the Load test page's widgets hold (field names follow ``loadtest.runner.LoadTestConfig``)."""

    host: str = ""
    model_name: str = "model"
    users: int = 16
    spawn_rate: float = 16.0
    run_time_s: int = 20
    shape: str = "constant"
    step_users: int = 4
    step_time_s: float = 5.0
    max_users: int = 32
    spike_users: int = 64
    spike_at_s: float = 5.0
    spike_duration_s: float = 5.0
    target_rps: float = 200.0
    instances_per_request: int = 1
    processes: int = 1
    timeout_s: float = 5.0
    slos: str = ""
    protocol: str = "tfserving"  # or "v2" (Open Inference Protocol)
    expect_workers: int = 0  # > 0: Locust as a master waiting for this many workers started elsewhere


def slo_exprs(text: str) -> list[str]:
    """The expressions in the SLO box (one per line, or comma-separated)."""
    return [line.strip() for line in text.replace(",", "\n").splitlines() if line.strip()]


def parse_slo_lines(text: str) -> tuple[list[str], list[str]]:
    """The SLO box's expressions that ``parse_slo`` accepts, and its one-line error for each one it refuses."""
    good: list[str] = []
    errors: list[str] = []
    for expr in slo_exprs(text):
        try:
            parse_slo(expr)
        except ValueError as exc:
            errors.append(_first_line(exc))
        else:
            good.append(expr)
    return good, errors


def slo_limits_ms(exprs: Sequence[str]) -> dict[str, float]:
    """Latency SLO limits by frame metric (``p95_ms``: 50.0), for drawing them on the latency chart."""
    limits: dict[str, float] = {}
    for expr in exprs:
        try:
            gate = parse_slo(expr)
        except ValueError:
            continue
        if gate.op in ("<=", "<") and gate.summary_key.endswith("_ms") and gate.summary_key.startswith("p"):
            limits[gate.summary_key] = gate.limit
    return limits


def _remote_host_error(host: str) -> str | None:
    parts = urlsplit(host)
    if parts.scheme in ("http", "https") and parts.hostname and parts.hostname not in LOCAL_HOSTS:
        return f"only local targets ({', '.join(LOCAL_HOSTS)}) may be load-tested here; got {parts.hostname}"
    return None


def load_check(form: LoadForm, *, samples_path: str | Path | None = None, n_features: int = 0) -> Check:
    """Errors from building ``LoadTestConfig`` and parsing each SLO line, the local-only rule, and advice.

    Every bad SLO line is reported (``parse_slo`` on each); the config is then
    built from the lines that parse, so its own message is about another field
    and never repeats an SLO error. An empty target is reported as such, and the
    rest of the form is still checked against a stand-in local host.
    """
    host = form.host.strip()
    errors: list[str] = []
    if not host:
        errors.append("choose a target: start an endpoint on the Serve page, or type a URL")
    elif (remote := _remote_host_error(host)) is not None:
        errors.append(remote)
    good, slo_errors = parse_slo_lines(form.slos)
    checked = replace(form, host=host or HOST_PLACEHOLDER, slos="\n".join(good))
    errors += _config_error(lambda: loadtest_config(checked, samples_path=samples_path, n_features=n_features))
    errors += slo_errors
    advice: list[str] = []
    if form.shape == "constant" and form.spawn_rate > 0 and form.users / form.spawn_rate > form.run_time_s:
        advice.append(f"spawning {form.users} users at {form.spawn_rate:g}/s takes longer than the "
                      f"{form.run_time_s} s run; raise the spawn rate or lengthen the run")
    if form.shape == "steps" and form.step_time_s >= form.run_time_s:
        advice.append(f"step duration {form.step_time_s:g} s is not shorter than the {form.run_time_s} s run: "
                      "the ladder never climbs")
    if form.shape == "spike" and form.spike_at_s + form.spike_duration_s > form.run_time_s:
        advice.append("the spike ends after the run does; lengthen the run or move the spike earlier")
    return Check(tuple(errors), tuple(advice))


def loadtest_config(form: LoadForm, *, samples_path: str | Path | None = None,
                    n_features: int = 0) -> LoadTestConfig:
    """The runner's ``LoadTestConfig`` (raises ValueError with its one-line reason)."""
    return LoadTestConfig(
        host=form.host.strip().rstrip("/"),
        model_name=form.model_name.strip(),
        users=int(form.users),
        spawn_rate=float(form.spawn_rate),
        run_time_s=float(form.run_time_s),
        shape=form.shape,
        step_users=int(form.step_users),
        step_time_s=float(form.step_time_s),
        # Only the steps shape reads max_users (and LoadTestConfig checks it against users there);
        # the other shapes record it raised to the user count so the stored config stays consistent.
        max_users=int(form.max_users) if form.shape == "steps" else max(int(form.max_users), int(form.users)),
        spike_users=int(form.spike_users),
        spike_at_s=float(form.spike_at_s),
        spike_duration_s=float(form.spike_duration_s),
        target_rps=float(form.target_rps) if form.shape == "rate" else 0.0,
        instances_per_request=int(form.instances_per_request),
        # The form counts Locust processes (1 = one); the runner's 0 means one process and N > 1 asks
        # Locust for N worker processes, so only 1 is translated and every other value is the runner's to judge.
        processes=0 if form.processes == 1 else int(form.processes),
        timeout_s=float(form.timeout_s),
        samples_path=str(samples_path) if samples_path else "",
        n_features=0 if samples_path else int(n_features),
        slos=tuple(slo_exprs(form.slos)),
        protocol=form.protocol,
        expect_workers=int(form.expect_workers),
    )


def generated_samples_path(host: str, model_name: str, spec: PayloadSpec, state_dir: str | Path) -> Path:
    """Rows generated from the target's signature (its ``/v1/models/NAME/metadata``), saved under the
    state directory as ``python -m loadtest --payload-dist ...`` saves them; ValueError with a one-line reason."""
    host = host.strip().rstrip("/")
    if not host:
        raise ValueError("choose a target first: its metadata gives the inputs to generate rows for")
    if (remote := _remote_host_error(host)) is not None:
        raise ValueError(remote)
    inputs = fetch_signature(host, model_name.strip(), timeout_s=SIGNATURE_TIMEOUT_S)
    return save_generated(Path(state_dir) / GENERATED_DIRNAME, generate_instances(inputs, spec))
