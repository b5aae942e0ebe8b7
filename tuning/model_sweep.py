"""The model sweep: which width/depth, activation and learning rate are worth what they cost.

Each grid point is trained briefly (a child ``train`` run), then served and hit
with one short Locust step at a fixed load. The result row holds validation
accuracy (or loss) next to p99 latency and throughput, and the Pareto front over
(accuracy up, p99 down, capacity up) names the models worth shipping; the rest
are dominated. Like the serving sweep, finished rows live in the run summary, so
a restarted job skips them.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from agent.serving.config import RUNTIMES
from runs import jobs, lifecycle
from runs.configs import known_fields, plain_dict
from runs.registry import Registry, State
from tuning.pareto import MODEL_OBJECTIVES, pareto_mask

MODEL_PARAMS = ("hidden", "activation", "learning_rate", "runtime", "family", "rnn_cell", "weight_init", "bias_init")
# Grid parameters that are ModelConfig fields of the same name, taken as given.
_CONFIG_PARAMS = ("activation", "learning_rate", "family", "rnn_cell", "weight_init", "bias_init")
MAX_MODELS = 32
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


def train_grid(specs: Iterable[str]) -> dict[str, list[Any]]:
    """``["hidden=32,64x64", "learning_rate=0.001,0.01"]`` -> the model grid (defaults when empty)."""
    out: dict[str, list[Any]] = {}
    for spec in specs:
        name, sep, raw = spec.partition("=")
        name = name.strip()
        if not sep or name not in MODEL_PARAMS:
            raise ValueError(f"--train-grid takes NAME=V1,V2 with NAME one of {', '.join(MODEL_PARAMS)}; got {spec!r}")
        parts = [v.strip() for v in raw.split(",") if v.strip()]
        if not parts:
            raise ValueError(f"--train-grid {name}: give at least one value")
        if name == "hidden":
            out[name] = [parse_hidden(v) for v in parts]
        elif name == "learning_rate":
            try:
                out[name] = [float(v) for v in parts]
            except ValueError:
                raise ValueError(f"--train-grid learning_rate takes numbers; got {raw!r}") from None
        else:
            out[name] = parts
    return out or {k: list(v) for k, v in DEFAULT_GRID.items()}


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

    def __post_init__(self) -> None:
        from agent.data import BUILTIN_DATASETS
        from agent.model import ModelConfig
        from tuning.recommend import Constraints

        object.__setattr__(self, "slos", tuple(self.slos))
        if self.dataset not in BUILTIN_DATASETS:
            raise ValueError(f"dataset must be one of {', '.join(BUILTIN_DATASETS)}; got {self.dataset!r}")
        unknown = sorted(set(self.grid) - set(MODEL_PARAMS))
        if unknown:
            raise ValueError(f"unknown model grid parameter(s) {', '.join(unknown)}; known: {', '.join(MODEL_PARAMS)}")
        if self.size > MAX_MODELS:
            raise ValueError(f"the model grid has {self.size} models; at most {MAX_MODELS}")
        for runtime in self.grid.get("runtime", []):
            if runtime not in RUNTIMES:
                raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}; got {runtime!r}")
        if not 1 <= self.epochs <= 100:
            raise ValueError(f"epochs must be 1..100 for a sweep; got {self.epochs}")
        if not 1 <= self.users <= 10_000:
            raise ValueError(f"users must be 1..10000; got {self.users}")
        for combo in self.combos():
            ModelConfig(**self.model_kwargs(combo))  # validates every grid point up front
        Constraints.parse(self.slos)

    @property
    def size(self) -> int:
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
        for name in _CONFIG_PARAMS:
            if name in combo:
                kw[name] = combo[name]
        return kw

    def to_dict(self) -> dict[str, Any]:
        return plain_dict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModelSweepSpec:
        return cls(**known_fields(cls, d, "model sweep spec"))


def combo_key(combo: Mapping[str, Any]) -> str:
    return ",".join(f"{k}={'x'.join(map(str, v)) if isinstance(v, list | tuple) else v}" for k, v in
                    sorted(combo.items()))


def combo_label(combo: Mapping[str, Any]) -> str:
    parts = []
    if "hidden" in combo:
        # No hidden layer is a linear model for an mlp, but an rnn still has its recurrent layers.
        parts.append("x".join(map(str, combo["hidden"])) or ("no dense" if combo.get("family") == "rnn" else "linear"))
    if "activation" in combo:
        parts.append(str(combo["activation"]))
    if "learning_rate" in combo:
        parts.append(f"lr{combo['learning_rate']:g}")
    for name in ("family", "rnn_cell", "weight_init", "bias_init", "runtime"):
        if name in combo:
            parts.append(f"bias {combo[name]}" if name == "bias_init" else str(combo[name]))
    return " ".join(parts) or "default"


def with_front(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The rows with ``on_front`` set from Pareto dominance over accuracy, p99 and capacity."""
    mask = pareto_mask(rows, MODEL_OBJECTIVES)
    return [{**r, "on_front": m} for r, m in zip(rows, mask, strict=True)]


def format_models(rows: Sequence[Mapping[str, Any]]) -> str:
    header = f"{'model':<28} {'params':>8} {'val_acc':>8} {'val_loss':>8} {'p99':>8} {'req/s':>8} {'cap':>8}  front"
    lines = [header, "-" * len(header)]
    for r in with_front(rows):
        def f(key: str, fmt: str, r: Mapping[str, Any] = r) -> str:
            v = r.get(key)
            return "-" if v is None else format(v, fmt)
        lines.append(f"{r['label'][:28]:<28} {f('param_count', '8d')} {f('val_accuracy', '8.3f')} "
                     f"{f('val_loss', '8.3f')} {f('p99_ms', '8.1f')} {f('rps', '8.0f')} {f('capacity_rps', '8.0f')}  "
                     f"{'*' if r['on_front'] else ''}")
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
                       name=name or f"model sweep {spec.dataset}: {', '.join(spec.grid)}")


def start(registry: Registry, spec: ModelSweepSpec, *, name: str | None = None) -> str:
    """Record a model sweep and launch its job (``python -m tuning --run-id ID``); returns the run id."""
    run_id = create_model_sweep(registry, spec, name=name)
    jobs.launch(registry, run_id)
    return run_id


def run_model_sweep(registry: Registry, run_id: str) -> str:
    """Train, serve and load-test each grid point not yet measured; returns the final status."""
    from agent.data import DataSource
    from agent.model import ModelConfig, image_shape_for
    from agent.serving.config import DEFAULT_CONFIG, ServingConfig
    from agent.serving.process import start_endpoint, stop_endpoint
    from agent.training import train
    from tuning.recommend import Constraints
    from tuning.sweep import (
        MODEL_NAME,
        StopFlag,
        SweepSpec,
        SweepStopped,
        _warm,
        _warm_body,
        begin_in_process,
        measure_step,
    )

    run = registry.get_run(run_id)
    spec = ModelSweepSpec.from_dict(run.config["spec"])
    constraints = Constraints.parse(spec.slos)
    stop = StopFlag(registry, run_id)
    begin_in_process(registry, run_id)
    rows: list[dict[str, Any]] = list(run.summary.get("models", []))
    done = {r["key"] for r in rows}
    base = ServingConfig.from_dict(spec.base) if spec.base else DEFAULT_CONFIG
    endpoint = None
    try:
        for i, combo in enumerate(spec.combos()):
            key = combo_key(combo)
            if key in done:
                continue
            stop.check()
            label = combo_label(combo)
            registry.set_progress(run_id, {"phase": "training", "model": label, "done": len(rows), "total": spec.size})
            config = ModelConfig(**spec.model_kwargs(combo))
            # A cnn sees digits as 8x8x1 images; an mlp or rnn reads the flat rows.
            source = DataSource(spec.dataset, image_shape=image_shape_for(config, spec.dataset))
            train_id = registry.create_run("train", {"model": config.to_dict(), "data": source.to_dict()},
                                           name=f"{run.name}: {label}", parent_id=run_id)
            result = train(config, source, registry, train_id)
            history = result.history[-1] if result.history else {}
            stop.check()
            registry.set_progress(run_id, {"phase": "load test", "model": label, "done": len(rows), "total": spec.size})
            serving = base.with_changes(runtime=combo["runtime"]) if "runtime" in combo else base
            endpoint = start_endpoint(registry, str(result.model_path), serving, name=MODEL_NAME, parent_id=run_id)
            _warm(endpoint.url, _warm_body(str(result.model_path)))
            step_spec = SweepSpec(model_path=str(result.model_path), space={"runtime": [serving.runtime]},
                                  users=(spec.users,), step_s=spec.step_s, slos=spec.slos, base=serving.to_dict())
            point = measure_step(registry, run_id, step_spec, {"runtime": serving.runtime}, endpoint, spec.users, stop)
            stop_endpoint(registry, endpoint.run_id)
            endpoint = None
            stop.check()
            ok = constraints.meets(point)
            row = {
                "key": key, "label": label, "index": i, **{k: v for k, v in combo.items()},
                "train_run_id": train_id, "model_path": str(result.model_path), "param_count": result.param_count,
                "val_accuracy": history.get("val_accuracy"), "val_loss": history.get("val_loss"),
                "test_accuracy": (result.metrics or {}).get("accuracy"),
                "users": spec.users, "rps": point.rps, "p50_ms": point.p50_ms, "p95_ms": point.p95_ms,
                "p99_ms": point.p99_ms, "fail_ratio": point.fail_ratio, "cpu_ms_per_request": point.cpu_ms_per_request,
                "within_slo": ok, "capacity_rps": point.rps if ok else 0.0, "loadtest_run_id": point.loadtest_run_id,
            }
            rows.append(row)
            done.add(key)
            registry.update_summary(run_id, {"models": rows, "front": [r["key"] for r in with_front(rows)
                                                                         if r["on_front"]]})
        registry.set_progress(run_id, {"phase": "done", "done": len(rows), "total": spec.size})
        registry.finish_if_active(run_id, State.COMPLETED)
    except SweepStopped:
        registry.finish_if_active(run_id, State.STOPPED, "stopped by request")
    except BaseException as exc:
        registry.finish_if_active(run_id, State.FAILED, lifecycle.one_line_error(exc))
        raise
    finally:
        if endpoint is not None:
            stop_endpoint(registry, endpoint.run_id)
    return registry.get_run(run_id).status
