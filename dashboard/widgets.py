"""Widget values -> validated configs, as pure functions (no Streamlit here).

Each page collects its slider values into a small frozen ``*Form`` dataclass;
the functions below turn a form into the config objects the jobs take, and list
what is wrong with it as one-line problems the page shows inline (instead of a
traceback from a constructor). Tests drive these without a UI.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.data import BUILTIN_DATASETS, DataSource
from agent.model import MAX_LAYERS, MAX_UNITS, ModelConfig

# Mirrors of the endpoint's and Locust runner's choices, so this module stays
# importable (and fast) without importing their packages.
RUNTIMES = ("keras", "tf-function", "xla", "tflite", "tflite-int8")
SHAPES = ("constant", "steps", "spike", "rate")
SHAPE_HELP = {
    "constant": "a fixed number of users for the whole run (closed loop)",
    "steps": "a ladder: start at the user count, add users every step duration, up to the top",
    "spike": "baseline users, then a short spike to the spike user count, then back",
    "rate": "open loop: a fixed offered request rate whatever the latency (shows overload honestly)",
}
MAX_USERS = 5000
MAX_RUN_TIME_S = 3600
MAX_PROCESSES = 16
MAX_INSTANCES_PER_REQUEST = 1024
DEFAULT_SLOS = "p95<=100ms\nfail_ratio<=0.01"
_URL_RE = re.compile(r"^https?://[^\s/:]+(:\d{1,5})?(/\S*)?$")
_LOCAL_HOSTS = ("127.0.0.1", "localhost", "[::1]")


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
}

# The one-click first run: small enough to finish in seconds on 2 cores.
DEFAULT_TRAIN = TrainForm(dataset="digits", layers=1, units=64, epochs=15, patience=3)


def train_problems(form: TrainForm, *, n_rows: int | None = None, has_csv: bool = False) -> list[str]:
    """One line per thing wrong with ``form``; empty when training may start."""
    problems: list[str] = []
    if form.dataset == "csv":
        if not has_csv:
            problems.append("upload a CSV file, or pick a built-in dataset")
        elif not form.csv_target:
            problems.append("choose the target column of the CSV file")
    elif form.dataset not in BUILTIN_DATASETS:
        problems.append(f"dataset must be one of {', '.join(BUILTIN_DATASETS)} or csv; got {form.dataset!r}")
    if not 0 <= form.layers <= MAX_LAYERS:
        problems.append(f"hidden layers must be 0..{MAX_LAYERS}; got {form.layers}")
    if form.layers and not 1 <= form.units <= MAX_UNITS:
        problems.append(f"units per layer must be 1..{MAX_UNITS}; got {form.units}")
    if not 0.0 <= form.dropout <= 0.9:
        problems.append(f"dropout must be in [0, 0.9]; got {form.dropout}")
    if form.dropout > 0 and form.layers == 0:
        problems.append("dropout has no effect without hidden layers")
    if not (math.isfinite(form.learning_rate) and 1e-6 <= form.learning_rate <= 10):
        problems.append(f"learning rate must be in [1e-6, 10]; got {form.learning_rate:g}")
    if form.batch_size < 1:
        problems.append(f"batch size must be >= 1; got {form.batch_size}")
    elif n_rows is not None and form.batch_size > n_rows:
        problems.append(
            f"batch size {form.batch_size} is larger than the {n_rows} rows of the dataset: "
            "every epoch is a single step"
        )
    if form.epochs < 1:
        problems.append(f"epochs must be >= 1; got {form.epochs}")
    if form.patience < 0:
        problems.append(f"early-stopping patience must be >= 0; got {form.patience}")
    elif form.patience >= form.epochs and form.patience > 0:
        problems.append(
            f"early-stopping patience {form.patience} >= epochs {form.epochs}: it can never stop training early"
        )
    if form.optimizer == "sgd" and form.learning_rate > 1:
        problems.append(f"learning rate {form.learning_rate:g} with SGD diverges almost surely; try 0.01-0.1")
    return problems


def blocking(problems: Sequence[str]) -> list[str]:
    """The problems that make a config impossible (the rest are advice)."""
    advisory = ("has no effect", "can never stop", "diverges almost surely", "every epoch is a single step",
                "adds that much latency")
    return [p for p in problems if not any(a in p for a in advisory)]


def model_config(form: TrainForm) -> ModelConfig:
    return ModelConfig(
        hidden=form.hidden, activation=form.activation, dropout=float(form.dropout),
        optimizer=form.optimizer, learning_rate=float(form.learning_rate), batch_size=int(form.batch_size),
        epochs=int(form.epochs), patience=int(form.patience), seed=int(form.seed),
    )


def data_source(form: TrainForm, csv_path: str | Path | None = None) -> DataSource:
    if form.dataset == "csv":
        if csv_path is None:
            raise ValueError("a CSV dataset needs an uploaded file")
        return DataSource(dataset="csv", csv_path=str(csv_path), target=form.csv_target,
                          task=form.csv_task, missing=form.csv_missing, seed=form.seed)
    return DataSource(dataset=form.dataset, synthetic_activation=form.synthetic_activation,
                      noise=float(form.noise), seed=form.seed)


def training_args(config: ModelConfig, source: DataSource, run_id: str) -> list[str]:
    """Arguments of ``python -m agent.training`` reproducing ``config`` and ``source``."""
    args = ["--run-id", run_id]
    if source.csv_path:
        args += ["--csv", source.csv_path, "--target", str(source.target), "--missing", source.missing]
        if source.task:
            args += ["--task", source.task]
    else:
        args += ["--dataset", source.dataset, "--synthetic-activation", source.synthetic_activation,
                 "--noise", repr(float(source.noise))]
    args += [
        "--hidden", ",".join(str(u) for u in config.hidden) or "none",
        "--activation", config.activation,
        "--output-activation", config.output_activation,
        "--dropout", repr(float(config.dropout)),
        "--optimizer", config.optimizer,
        "--lr", repr(float(config.learning_rate)),
        "--momentum", repr(float(config.momentum)),
        "--batch-size", str(config.batch_size),
        "--epochs", str(config.epochs),
        "--patience", str(config.patience),
        "--seed", str(config.seed),
    ]
    return args


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


def serve_problems(form: ServeForm) -> list[str]:
    problems: list[str] = []
    if form.runtime not in RUNTIMES:
        problems.append(f"runtime must be one of {', '.join(RUNTIMES)}; got {form.runtime!r}")
    if form.max_batch_size < 1:
        problems.append(f"max batch size must be >= 1; got {form.max_batch_size}")
    if form.batch_timeout_ms < 0 or not math.isfinite(form.batch_timeout_ms):
        problems.append(f"batch timeout must be >= 0 ms; got {form.batch_timeout_ms}")
    elif form.max_batch_size == 1 and form.batch_timeout_ms > 0:
        problems.append(
            "batch timeout has no effect with max batch size 1 (every batch is full at once); set it to 0"
        )
    if form.max_enqueued_batches < 1:
        problems.append(f"queue bound (max enqueued batches) must be >= 1; got {form.max_enqueued_batches}")
    if form.num_batch_threads < 1:
        problems.append(f"batch threads must be >= 1; got {form.num_batch_threads}")
    if form.workers < 1:
        problems.append(f"workers must be >= 1; got {form.workers}")
    if form.batch_timeout_ms > 100:
        problems.append(f"batch timeout {form.batch_timeout_ms:g} ms adds that much latency to a lone request")
    return problems


def _construct(cls: type, values: dict[str, Any]) -> Any:
    """Build a dataclass from the values it knows (tolerates a field we do not set)."""
    names = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set(values)
    return cls(**{k: v for k, v in values.items() if k in names})


def serving_config(form: ServeForm) -> Any:
    """The endpoint's ``ServingConfig`` for ``form`` (imported here: it is not needed at page load)."""
    from agent.serving.config import ServingConfig

    return _construct(ServingConfig, {
        "runtime": form.runtime,
        "max_batch_size": int(form.max_batch_size),
        "batch_timeout_ms": float(form.batch_timeout_ms),
        "max_enqueued_batches": int(form.max_enqueued_batches),
        "num_batch_threads": int(form.num_batch_threads),
        "workers": int(form.workers),
    })


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


def parse_slo_lines(text: str) -> tuple[list[str], list[str]]:
    """Split the SLO box (one per line or comma-separated) into expressions and one-line problems."""
    from loadtest.slo import parse_slo

    exprs = [line.strip() for line in text.replace(",", "\n").splitlines() if line.strip()]
    problems: list[str] = []
    for expr in exprs:
        try:
            parse_slo(expr)
        except ValueError as exc:
            problems.append(str(exc).splitlines()[0])
    return exprs, problems


def slo_limits_ms(exprs: Sequence[str]) -> dict[str, float]:
    """Latency SLO limits by frame metric (``p95_ms``: 50.0), for drawing them on the latency chart."""
    from loadtest.slo import parse_slo

    limits: dict[str, float] = {}
    for expr in exprs:
        try:
            gate = parse_slo(expr)
        except ValueError:
            continue
        if gate.op in ("<=", "<") and gate.summary_key.endswith("_ms") and gate.summary_key.startswith("p"):
            limits[gate.summary_key] = gate.limit
    return limits


def load_problems(form: LoadForm) -> list[str]:
    problems: list[str] = []
    host = form.host.strip()
    if not host:
        problems.append("choose a target: start an endpoint on the Serve page, or type a URL")
    elif not _URL_RE.match(host):
        problems.append(f"target URL must look like http://127.0.0.1:8600; got {host!r}")
    else:
        netloc = host.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)[0]
        if netloc not in _LOCAL_HOSTS:
            problems.append(f"only local targets (127.0.0.1, localhost) may be load-tested here; got {netloc}")
    if not form.model_name.strip():
        problems.append("model name must not be empty (it is the {name} in /v1/models/{name}:predict)")
    if not 1 <= form.users <= MAX_USERS:
        problems.append(f"users must be 1..{MAX_USERS}; got {form.users}")
    if not form.spawn_rate > 0:
        problems.append(f"spawn rate must be > 0 users/s; got {form.spawn_rate:g}")
    if not 1 <= form.run_time_s <= MAX_RUN_TIME_S:
        problems.append(f"duration must be 1..{MAX_RUN_TIME_S} s; got {form.run_time_s}")
    if form.shape not in SHAPES:
        problems.append(f"shape must be one of {', '.join(SHAPES)}; got {form.shape!r}")
    if form.shape == "steps":
        if form.step_users < 1:
            problems.append(f"users per step must be >= 1; got {form.step_users}")
        if form.max_users < form.users:
            problems.append(f"the ladder's top ({form.max_users} users) is below its start ({form.users} users)")
        if form.step_time_s <= 0:
            problems.append(f"step duration must be > 0 s; got {form.step_time_s:g}")
        elif form.step_time_s >= form.run_time_s:
            problems.append("step duration is not shorter than the run: the ladder never climbs")
    if form.shape == "spike":
        if form.spike_users < 1:
            problems.append(f"spike users must be >= 1; got {form.spike_users}")
        if form.spike_duration_s <= 0:
            problems.append(f"spike duration must be > 0 s; got {form.spike_duration_s:g}")
        if form.spike_at_s + form.spike_duration_s > form.run_time_s:
            problems.append("the spike ends after the run does; lengthen the run or move the spike earlier")
    if form.shape == "rate" and not form.target_rps > 0:
        problems.append(f"target rate must be > 0 requests/s; got {form.target_rps:g}")
    if not 1 <= form.instances_per_request <= MAX_INSTANCES_PER_REQUEST:
        problems.append(
            f"instances per request must be 1..{MAX_INSTANCES_PER_REQUEST}; got {form.instances_per_request}"
        )
    if not 1 <= form.processes <= MAX_PROCESSES:
        problems.append(f"Locust processes must be 1..{MAX_PROCESSES}; got {form.processes}")
    if form.timeout_s <= 0:
        problems.append(f"request timeout must be > 0 s; got {form.timeout_s:g}")
    if form.spawn_rate > 0 and form.shape == "constant" and form.users / form.spawn_rate > form.run_time_s:
        problems.append(
            f"spawning {form.users} users at {form.spawn_rate:g}/s takes longer than the {form.run_time_s} s run"
        )
    problems += parse_slo_lines(form.slos)[1]
    return problems


def loadtest_config(form: LoadForm, *, samples_path: str | Path | None = None, n_features: int = 0) -> Any:
    """The runner's ``LoadTestConfig`` (raises ValueError with its one-line reason)."""
    from loadtest.runner import LoadTestConfig

    return _construct(LoadTestConfig, {
        "host": form.host.strip().rstrip("/"),
        "model_name": form.model_name.strip(),
        "users": int(form.users),
        "spawn_rate": float(form.spawn_rate),
        "run_time_s": float(form.run_time_s),
        "shape": form.shape,
        "step_users": int(form.step_users),
        "step_time_s": float(form.step_time_s),
        "max_users": max(int(form.max_users), int(form.users)),
        "spike_users": int(form.spike_users),
        "spike_at_s": float(form.spike_at_s),
        "spike_duration_s": float(form.spike_duration_s),
        "target_rps": float(form.target_rps) if form.shape == "rate" else 0.0,
        "instances_per_request": int(form.instances_per_request),
        # The runner's 0 means "one Locust process"; N > 1 asks Locust for N worker processes.
        "processes": 0 if form.processes <= 1 else int(form.processes),
        "timeout_s": float(form.timeout_s),
        "samples_path": str(samples_path) if samples_path else "",
        "n_features": 0 if samples_path else int(n_features),
        "slos": tuple(parse_slo_lines(form.slos)[0]),
    })
