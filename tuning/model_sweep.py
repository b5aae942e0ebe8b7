"""The model sweep: which width/depth, activation and learning rate are worth what they cost.

Each point is trained briefly (a child ``train`` run), then served and hit
with one short Locust step at a fixed load (``measure_model``, one code path for
both searches). The result row holds validation accuracy (or loss) next to p99
latency and throughput, and the Pareto front over (accuracy up, p99 down,
capacity up) names the models worth shipping; the rest are dominated.

Two searches: ``grid`` tries every combination of a small discrete space, and
finished rows live in the run summary so a restarted job skips them; ``optuna``
(``tuning.model_search``) samples a space that may hold ranges (``LO..HI``) with
TPE or NSGA-II under a trial and a time budget, prunes on validation loss, and
resumes from its own study storage.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from agent.serving.config import RUNTIMES
from runs import jobs, lifecycle
from runs.configs import known_fields, plain_dict
from runs.registry import Registry, State
from tuning.pareto import MODEL_OBJECTIVES, pareto_mask

MODEL_PARAMS = ("hidden", "width", "depth", "activation", "learning_rate", "runtime", "family", "rnn_cell",
                "weight_init", "bias_init")
# Grid parameters that are ModelConfig fields of the same name, taken as given.
_CONFIG_PARAMS = ("activation", "learning_rate", "family", "rnn_cell", "weight_init", "bias_init")
MAX_MODELS = 32
SEARCHES = ("grid", "optuna")
MAX_TRIALS = 200
# Parameters a search may sample from a range LO..HI, and how: (type, log scale).
RANGE_PARAMS: dict[str, tuple[type, bool]] = {"learning_rate": (float, True), "width": (int, True),
                                              "depth": (int, False)}
# width/depth stand for hidden = [width] * depth; the one missing takes this value.
DEFAULT_WIDTH, DEFAULT_DEPTH = 32, 1
# What an Optuna search optimises: (metric, sense) pairs; one -> TPE, two -> NSGA-II.
SEARCH_OBJECTIVES: dict[str, tuple[tuple[str, str], ...]] = {
    "accuracy": (("val_accuracy", "max"),),
    "loss": (("val_loss", "min"),),
    "accuracy+p99": (("val_accuracy", "max"), ("p99_ms", "min")),
    "accuracy+cpu": (("val_accuracy", "max"), ("cpu_ms_per_request", "min")),
}
DEFAULT_OBJECTIVE = "accuracy+p99"
DEFAULT_TRIALS = 16
DEFAULT_GRID: dict[str, list[Any]] = {"hidden": [[32], [128, 128]], "activation": ["relu", "tanh"]}


def parse_hidden(text: str) -> list[int]:
    """``64x64`` -> [64, 64]; ``0`` or ``none`` -> [] (no hidden layer)."""
    text = text.strip().lower()
    if text in ("0", "none", ""):
        return []
    try:
        units = [int(u) for u in text.split("x")]
    except ValueError:
        raise ValueError(f"hidden takes layer sizes joined by x, like 64x64; got {text!r}") from None
    return units


def _parse_range(name: str, raw: str) -> list[float]:
    kind, log = RANGE_PARAMS[name]
    lo_text, _, hi_text = raw.partition("..")
    try:
        lo, hi = kind(lo_text.strip()), kind(hi_text.strip())
    except ValueError:
        raise ValueError(f"--train-grid {name}=LO..HI takes two {kind.__name__}s; got {raw!r}") from None
    if not lo < hi or (log and lo <= 0) or lo < 0:
        raise ValueError(f"--train-grid {name}=LO..HI needs {'0 < ' if log else '0 <= '}LO < HI; got {raw!r}")
    return [lo, hi]


def parse_space(specs: Iterable[str]) -> tuple[dict[str, list[Any]], dict[str, list[float]]]:
    """``NAME=V1,V2`` (a list) and ``NAME=LO..HI`` (a range) flags -> (grid, ranges); the default grid when empty.

    Lists are the grid's (and Optuna's categorical choices); ranges, only for
    learning_rate (log-uniform), width (log-uniform integer) and depth (integer),
    need the Optuna search.
    """
    grid: dict[str, list[Any]] = {}
    ranges: dict[str, list[float]] = {}
    for spec in specs:
        name, sep, raw = spec.partition("=")
        name = name.strip()
        if not sep or name not in MODEL_PARAMS:
            raise ValueError(f"--train-grid takes NAME=V1,V2 with NAME one of {', '.join(MODEL_PARAMS)}; got {spec!r}")
        if name in grid or name in ranges:
            raise ValueError(f"--train-grid {name} is given twice")
        if ".." in raw:
            if name not in RANGE_PARAMS:
                raise ValueError(f"--train-grid {name} takes a list V1,V2; ranges LO..HI are for "
                                 f"{', '.join(RANGE_PARAMS)}")
            ranges[name] = _parse_range(name, raw)
            continue
        parts = [v.strip() for v in raw.split(",") if v.strip()]
        if not parts:
            raise ValueError(f"--train-grid {name}: give at least one value")
        if name == "hidden":
            grid[name] = [parse_hidden(v) for v in parts]
        elif name in RANGE_PARAMS:
            kind = RANGE_PARAMS[name][0]
            try:
                grid[name] = [kind(v) for v in parts]
            except ValueError:
                raise ValueError(f"--train-grid {name} takes {kind.__name__}s; got {raw!r}") from None
        else:
            grid[name] = parts
    if not grid and not ranges:
        grid = {k: list(v) for k, v in DEFAULT_GRID.items()}
    return grid, ranges


def train_grid(specs: Iterable[str]) -> dict[str, list[Any]]:
    """``["hidden=32,64x64", "learning_rate=0.001,0.01"]`` -> the model grid (defaults when empty)."""
    grid, ranges = parse_space(specs)
    if ranges:
        raise ValueError(f"ranges ({', '.join(f'{k}=LO..HI' for k in ranges)}) need the Optuna search; "
                         "the grid takes lists")
    return grid


@dataclass(frozen=True)
class ModelSweepSpec:
    dataset: str = "digits"
    grid: dict[str, list[Any]] = field(default_factory=lambda: {k: list(v) for k, v in DEFAULT_GRID.items()})
    epochs: int = 3
    users: int = 16
    step_s: float = 6.0
    slos: tuple[str, ...] = ("p99<=100ms", "fail_ratio<=0.01")
    seed: int = 0
    base: dict[str, Any] = field(default_factory=dict)  # serving config for the knobs the grid leaves alone
    search: str = "grid"
    ranges: dict[str, list[float]] = field(default_factory=dict)  # NAME -> [LO, HI], Optuna only
    n_trials: int = DEFAULT_TRIALS  # Optuna: finished (complete or pruned) trials to reach
    timeout_s: float = 0.0  # Optuna: stop starting trials once finished ones took this long (0 = no limit)
    objective: str = DEFAULT_OBJECTIVE  # Optuna: a key of SEARCH_OBJECTIVES

    def __post_init__(self) -> None:
        from agent.data import BUILTIN_DATASETS
        from agent.model import ModelConfig
        from tuning.recommend import Constraints

        object.__setattr__(self, "slos", tuple(self.slos))
        if self.dataset not in BUILTIN_DATASETS:
            raise ValueError(f"dataset must be one of {', '.join(BUILTIN_DATASETS)}; got {self.dataset!r}")
        object.__setattr__(self, "ranges", {k: [float(v) for v in lohi] for k, lohi in self.ranges.items()})
        unknown = sorted((set(self.grid) | set(self.ranges)) - set(MODEL_PARAMS))
        if unknown:
            raise ValueError(f"unknown model grid parameter(s) {', '.join(unknown)}; known: {', '.join(MODEL_PARAMS)}")
        if self.search not in SEARCHES:
            raise ValueError(f"search must be one of {', '.join(SEARCHES)}; got {self.search!r}")
        if self.objective not in SEARCH_OBJECTIVES:
            raise ValueError(f"objective must be one of {', '.join(SEARCH_OBJECTIVES)}; got {self.objective!r}")
        for name, lohi in self.ranges.items():
            if name not in RANGE_PARAMS or len(lohi) != 2 or not lohi[0] < lohi[1]:
                raise ValueError(f"range {name}: give [LO, HI] with LO < HI for one of {', '.join(RANGE_PARAMS)}")
        both = sorted(set(self.grid) & set(self.ranges))
        if both:
            raise ValueError(f"{', '.join(both)}: give a list or a range, not both")
        if "hidden" in self.grid and ({"width", "depth"} & (set(self.grid) | set(self.ranges))):
            raise ValueError("give hidden (layer sizes) or width/depth, not both")
        if self.search == "grid":
            if self.ranges:
                raise ValueError(f"ranges ({', '.join(self.ranges)}) need the Optuna search; the grid takes lists")
            if self.size > MAX_MODELS:
                raise ValueError(f"the model grid has {self.size} models; at most {MAX_MODELS}")
        else:
            if not 1 <= self.n_trials <= MAX_TRIALS:
                raise ValueError(f"n_trials must be 1..{MAX_TRIALS}; got {self.n_trials}")
            if self.timeout_s < 0:
                raise ValueError(f"timeout_s must be >= 0 (0 = no time limit); got {self.timeout_s:g}")
        for runtime in self.grid.get("runtime", []):
            if runtime not in RUNTIMES:
                raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}; got {runtime!r}")
        if not 1 <= self.epochs <= 100:
            raise ValueError(f"epochs must be 1..100 for a sweep; got {self.epochs}")
        if not 1 <= self.users <= 10_000:
            raise ValueError(f"users must be 1..10000; got {self.users}")
        for combo in self.combos() if self.search == "grid" else self.corners():
            ModelConfig(**self.model_kwargs(combo))  # validates every grid point (or each choice) up front
        Constraints.parse(self.slos)

    def corners(self) -> list[dict[str, Any]]:
        """Points that between them hold every categorical choice and both ends of every range (to validate)."""
        first = {k: v[0] for k, v in self.grid.items()}
        lows = {k: RANGE_PARAMS[k][0](lo) for k, (lo, _) in self.ranges.items()}
        highs = {k: RANGE_PARAMS[k][0](hi) for k, (_, hi) in self.ranges.items()}
        points = [{**first, **lows}, {**first, **highs}]
        for name, values in self.grid.items():
            points += [{**first, **lows, name: v} for v in values[1:]]
        return points

    @property
    def size(self) -> int:
        """Points the search will measure: the grid's size, or the Optuna trial budget."""
        if self.search == "optuna":
            return self.n_trials
        n = 1
        for values in self.grid.values():
            n *= len(values)
        return n

    def combos(self) -> list[dict[str, Any]]:
        names = list(self.grid)
        return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*self.grid.values())]

    def model_kwargs(self, combo: Mapping[str, Any]) -> dict[str, Any]:
        kw: dict[str, Any] = {"epochs": self.epochs, "seed": self.seed}
        if "hidden" in combo:
            kw["hidden"] = tuple(combo["hidden"])
        elif "width" in combo or "depth" in combo:
            kw["hidden"] = hidden_of(combo)
        for name in _CONFIG_PARAMS:
            if name in combo:
                kw[name] = combo[name]
        return kw

    def to_dict(self) -> dict[str, Any]:
        return plain_dict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModelSweepSpec:
        return cls(**known_fields(cls, d, "model sweep spec"))


def hidden_of(combo: Mapping[str, Any]) -> tuple[int, ...]:
    """The hidden layers a point stands for: its ``hidden``, or ``[width] * depth``."""
    if "hidden" in combo:
        return tuple(int(u) for u in combo["hidden"])
    return (int(combo.get("width", DEFAULT_WIDTH)),) * int(combo.get("depth", DEFAULT_DEPTH))


def combo_key(combo: Mapping[str, Any]) -> str:
    return ",".join(f"{k}={'x'.join(map(str, v)) if isinstance(v, list | tuple) else v}" for k, v in
                    sorted(combo.items()))


def combo_label(combo: Mapping[str, Any]) -> str:
    parts = []
    if {"hidden", "width", "depth"} & set(combo):
        # No hidden layer is a linear model for an mlp, but an rnn still has its recurrent layers.
        parts.append("x".join(map(str, hidden_of(combo))) or ("no dense" if combo.get("family") == "rnn"
                                                               else "linear"))
    if "activation" in combo:
        parts.append(str(combo["activation"]))
    if "learning_rate" in combo:
        parts.append(f"lr{combo['learning_rate']:.3g}")
    for name in ("family", "rnn_cell", "weight_init", "bias_init", "runtime"):
        if name in combo:
            parts.append(f"bias {combo[name]}" if name == "bias_init" else str(combo[name]))
    return " ".join(parts) or "default"


def front_objectives(spec: ModelSweepSpec) -> dict[str, str]:
    """The objectives a sweep's front is drawn over.

    The grid weighs accuracy, p99 and capacity; an Optuna search weighs accuracy
    against the serving cost it optimises (p99, or CPU per request for
    ``accuracy+cpu``), also when its sampler optimises accuracy alone.
    """
    if spec.search == "grid":
        return dict(MODEL_OBJECTIVES)
    cost = "cpu_ms_per_request" if spec.objective == "accuracy+cpu" else "p99_ms"
    return {"val_accuracy": "max", cost: "min"}


def with_front(rows: Sequence[Mapping[str, Any]],
               objectives: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """The rows with ``on_front`` set from Pareto dominance (default: accuracy, p99 and capacity).

    Only measured rows compete: a pruned or failed trial was never served, so it
    is neither on the front nor dominating anyone.
    """
    objectives = objectives or MODEL_OBJECTIVES
    measured = [r for r in rows if r.get("state", "complete") == "complete"]
    mask = iter(pareto_mask(measured, objectives)) if measured else iter(())
    return [{**r, "on_front": next(mask) if r.get("state", "complete") == "complete" else False} for r in rows]


def format_models(rows: Sequence[Mapping[str, Any]], objectives: Mapping[str, str] | None = None) -> str:
    trials = any("trial" in r for r in rows)
    lead = f"{'trial':>5} {'state':<8} " if trials else ""
    header = (f"{lead}{'model':<28} {'params':>8} {'val_acc':>8} {'val_loss':>8} {'p99':>8} {'req/s':>8} "
              f"{'cap':>8}  front")
    lines = [header, "-" * len(header)]
    for r in with_front(rows, objectives):
        def f(key: str, fmt: str, r: Mapping[str, Any] = r) -> str:
            v = r.get(key)
            return format("-", f">{fmt[:-1].split('.')[0]}") if v is None else format(v, fmt)
        first = f"{r.get('trial', '-'):>5} {r.get('state', 'complete'):<8} " if trials else ""
        lines.append(f"{first}{r['label'][:28]:<28} {f('param_count', '8d')} {f('val_accuracy', '8.3f')} "
                     f"{f('val_loss', '8.3f')} {f('p99_ms', '8.1f')} {f('rps', '8.0f')} {f('capacity_rps', '8.0f')}  "
                     f"{'*' if r['on_front'] else ''}")
    return "\n".join(lines)


def format_front(rows: Sequence[Mapping[str, Any]], objectives: Mapping[str, str]) -> str:
    """The front, one model a line, from the best on the first objective down."""
    (first, sense), *_ = objectives.items()
    front = [r for r in with_front(rows, objectives) if r["on_front"]]
    front.sort(key=lambda r: float(r.get(first) or 0.0), reverse=sense == "max")
    names = " vs ".join(objectives)
    lines = [f"Pareto front ({names}): {len(front)} of {len(rows)} models"]
    for r in front:
        trial = f"trial {r['trial']}: " if "trial" in r else ""
        lines.append("  " + trial + r["label"] + "  " + "  ".join(
            f"{k} {r[k]:.4g}" for k in objectives if r.get(k) is not None))
    return "\n".join(lines)


TRAIN_START_S = 10.0  # a training job's process start and TensorFlow import, before its first epoch


def estimate_text(spec: ModelSweepSpec) -> str:
    """A lower bound on a model sweep's duration, shown before it starts (epoch times depend on the model)."""
    from tuning.sweep import ENDPOINT_START_S, STEP_OVERHEAD_S

    per_model = TRAIN_START_S + ENDPOINT_START_S + spec.step_s + STEP_OVERHEAD_S
    m, s = divmod(round(spec.size * per_model), 60)
    return (f"at least {f'{m} min {s:02d} s' if m else f'{s} s'}: {spec.size} model{'s' if spec.size != 1 else ''}"
            f" × (training for up to {spec.epochs} epochs, an endpoint start, one {spec.step_s:g} s load step)")


def create_model_sweep(registry: Registry, spec: ModelSweepSpec, *, name: str | None = None) -> str:
    """A pending model sweep run holding ``spec``."""
    return jobs.create(registry, "model_sweep", {"mode": "models", "spec": spec.to_dict()},
                       name=name or _default_name(spec))


def _default_name(spec: ModelSweepSpec) -> str:
    if spec.search == "optuna":
        return f"model search (optuna) {spec.dataset}: {', '.join([*spec.grid, *spec.ranges])}"
    return f"model sweep {spec.dataset}: {', '.join(spec.grid)}"


def start(registry: Registry, spec: ModelSweepSpec, *, name: str | None = None) -> str:
    """Record a model sweep and launch its job (``python -m tuning --run-id ID``); returns the run id."""
    run_id = create_model_sweep(registry, spec, name=name)
    jobs.launch(registry, run_id)
    return run_id


@dataclass(frozen=True)
class SweepContext:
    """What every point of one model sweep shares (built once per job by ``sweep_context``)."""

    registry: Registry
    run_id: str
    name: str
    spec: ModelSweepSpec
    base: Any  # ServingConfig for the knobs the sweep leaves alone
    constraints: Any  # tuning.recommend.Constraints
    stop: Any  # tuning.sweep.StopFlag


def sweep_context(registry: Registry, run_id: str) -> SweepContext:
    from agent.serving.config import DEFAULT_CONFIG, ServingConfig
    from tuning.recommend import Constraints
    from tuning.sweep import StopFlag

    run = registry.get_run(run_id)
    spec = ModelSweepSpec.from_dict(run.config["spec"])
    base = ServingConfig.from_dict(spec.base) if spec.base else DEFAULT_CONFIG
    return SweepContext(registry, run_id, run.name, spec, base, Constraints.parse(spec.slos),
                        StopFlag(registry, run_id))


def measure_model(
    ctx: SweepContext,
    combo: Mapping[str, Any],
    index: int,
    *,
    callbacks: Callable[[str], list[Any]] | None = None,
    pruned: Callable[[], bool] | None = None,
    done: int = 0,
) -> dict[str, Any]:
    """Train one point (a child ``train`` run), serve it and load-test it with one step: its result row.

    The one code path for a point of either search. ``callbacks(train_id)`` adds
    Keras callbacks to the training (the Optuna search's pruning); when
    ``pruned()`` is true after training, the model is not served and the row's
    ``state`` is ``pruned``. Raises ``SweepStopped`` when a stop is asked for.
    """
    from agent.data import DataSource
    from agent.model import ModelConfig, image_shape_for
    from agent.serving.process import start_endpoint, stop_endpoint
    from agent.training import train
    from tuning.sweep import MODEL_NAME, SweepSpec, _warm, _warm_body, measure_step

    registry, run_id, spec = ctx.registry, ctx.run_id, ctx.spec
    label = combo_label(combo)
    registry.set_progress(run_id, {"phase": "training", "model": label, "done": done, "total": spec.size})
    config = ModelConfig(**spec.model_kwargs(combo))
    # A cnn sees digits as 8x8x1 images; an mlp or rnn reads the flat rows.
    source = DataSource(spec.dataset, image_shape=image_shape_for(config, spec.dataset))
    train_id = registry.create_run("train", {"model": config.to_dict(), "data": source.to_dict()},
                                   name=f"{ctx.name}: {label}", parent_id=run_id)
    result = train(config, source, registry, train_id, extra_callbacks=callbacks(train_id) if callbacks else None)
    history = result.history[-1] if result.history else {}
    ctx.stop.check()
    row: dict[str, Any] = {
        "key": combo_key(combo), "label": label, "index": index, **dict(combo),
        "train_run_id": train_id, "model_path": str(result.model_path), "param_count": result.param_count,
        "val_accuracy": history.get("val_accuracy"), "val_loss": history.get("val_loss"),
        "test_accuracy": (result.metrics or {}).get("accuracy"), "epochs_run": len(result.history),
    }
    if pruned is not None and pruned():
        return {**row, "state": "pruned"}
    registry.set_progress(run_id, {"phase": "load test", "model": label, "done": done, "total": spec.size})
    serving = ctx.base.with_changes(runtime=combo["runtime"]) if "runtime" in combo else ctx.base
    endpoint = start_endpoint(registry, str(result.model_path), serving, name=MODEL_NAME, parent_id=run_id)
    try:
        _warm(endpoint.url, _warm_body(str(result.model_path)))
        step_spec = SweepSpec(model_path=str(result.model_path), space={"runtime": [serving.runtime]},
                              users=(spec.users,), step_s=spec.step_s, slos=spec.slos, base=serving.to_dict())
        point = measure_step(registry, run_id, step_spec, {"runtime": serving.runtime}, endpoint, spec.users,
                             ctx.stop)
    finally:
        stop_endpoint(registry, endpoint.run_id)
    ctx.stop.check()
    ok = ctx.constraints.meets(point)
    return {
        **row, "state": "complete",
        "users": spec.users, "rps": point.rps, "p50_ms": point.p50_ms, "p95_ms": point.p95_ms,
        "p99_ms": point.p99_ms, "fail_ratio": point.fail_ratio, "cpu_ms_per_request": point.cpu_ms_per_request,
        "within_slo": ok, "capacity_rps": point.rps if ok else 0.0, "loadtest_run_id": point.loadtest_run_id,
    }


def record_rows(ctx: SweepContext, rows: Sequence[Mapping[str, Any]]) -> None:
    """The sweep's rows and front into its summary (what the page and the CLI read)."""
    front = [r["key"] for r in with_front(rows, front_objectives(ctx.spec)) if r["on_front"]]
    ctx.registry.update_summary(ctx.run_id, {"models": list(rows), "front": front})


def run_model_sweep(registry: Registry, run_id: str) -> str:
    """Run (or resume) the model sweep's search -- every grid point not yet measured, or the Optuna study.

    Returns the final status.
    """
    from tuning.sweep import SweepStopped, begin_in_process

    ctx = sweep_context(registry, run_id)
    begin_in_process(registry, run_id)
    try:
        if ctx.spec.search == "optuna":
            from tuning.model_search import run_search

            run_search(ctx)
        else:
            _run_grid(ctx)
        registry.finish_if_active(run_id, State.COMPLETED)
    except SweepStopped:
        registry.finish_if_active(run_id, State.STOPPED, "stopped by request")
    except BaseException as exc:
        registry.finish_if_active(run_id, State.FAILED, lifecycle.one_line_error(exc))
        raise
    return registry.get_run(run_id).status


def _run_grid(ctx: SweepContext) -> None:
    rows: list[dict[str, Any]] = list(ctx.registry.get_run(ctx.run_id).summary.get("models", []))
    done = {r["key"] for r in rows}
    for i, combo in enumerate(ctx.spec.combos()):
        if combo_key(combo) in done:
            continue
        ctx.stop.check()
        rows.append(measure_model(ctx, combo, i, done=len(rows)))
        done.add(rows[-1]["key"])
        record_rows(ctx, rows)
    ctx.registry.set_progress(ctx.run_id, {"phase": "done", "done": len(rows), "total": ctx.spec.size})
