"""Recorded runs into MLflow: a train run's params, per-epoch metrics, test metrics and model; a
swarm's config, summary and per-second series; a sweep as a parent run with one child per point.

Everything is read back from the registry (config, summary, metric series, artifacts), so one
exporter serves every job kind, a finished job (``lifecycle.job_context`` calls
:func:`export_if_tracked` when ``MLFLOW_TRACKING_URI`` is set) and any past run. ``mlflow`` is an
optional dependency, imported only here and only when a run is exported.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runs.registry import Registry

TRACKING_ENV = "MLFLOW_TRACKING_URI"
EXPERIMENT = "tuneswarm"
MISSING = "MLflow is not installed: pip install mlflow (or 'tuneswarm[mlflow]'), or unset MLFLOW_TRACKING_URI"
# MLflow's own limits: params per batch, metrics per batch, characters of a param value.
_PARAMS_PER_BATCH, _METRICS_PER_BATCH, _PARAM_CHARS = 100, 1000, 6000
_STATUS = {"completed": "FINISHED", "failed": "FAILED", "stopped": "KILLED", "interrupted": "KILLED"}
MODEL_FILES = ("model.keras", "metadata.json", "samples.json", "signature.json")


@dataclass(frozen=True)
class Exported:
    """Where a registry run went: the MLflow run id, and its children's by registry run id."""

    mlflow_run_id: str
    children: Mapping[str, str]


def available() -> bool:
    return importlib.util.find_spec("mlflow") is not None


def flatten(values: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """``{"model": {"hidden": [8]}}`` -> ``("model.hidden", [8])``, depth first."""
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            yield from flatten(value, name + ".")
        else:
            yield name, value


def params_of(config: Mapping[str, Any]) -> dict[str, str]:
    """A run's config as MLflow params (strings, long values cut to MLflow's limit)."""
    out = {}
    for name, value in flatten(config):
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        out[name] = text[:_PARAM_CHARS]
    return out


def scalars_of(summary: Mapping[str, Any]) -> dict[str, float]:
    """The finite numbers of a summary, flattened (``test_metrics.accuracy``, ``p99_ms``, ``rps`` ...)."""
    return {name: float(v) for name, v in flatten(summary)
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))}


def _client(uri: str) -> Any:
    if not available():
        raise RuntimeError(MISSING)
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _experiment_id(client: Any) -> str:
    found = client.get_experiment_by_name(EXPERIMENT)
    return found.experiment_id if found is not None else client.create_experiment(EXPERIMENT)


def _log_one(client: Any, experiment_id: str, registry: Registry, run_id: str, parent: str | None) -> str:
    from mlflow.entities import Metric, Param

    run = registry.get_run(run_id)
    tags = {"tuneswarm.run_id": run.id, "tuneswarm.kind": run.kind, "tuneswarm.status": run.status}
    if parent is not None:
        tags["mlflow.parentRunId"] = parent
    start_ms = int((run.started_at or run.created_at) * 1000)
    created = client.create_run(experiment_id, start_time=start_ms, tags=tags, run_name=run.name)
    mlflow_id = created.info.run_id
    params = [Param(k, v) for k, v in params_of(run.config).items()]
    for i in range(0, len(params), _PARAMS_PER_BATCH):
        client.log_batch(mlflow_id, params=params[i:i + _PARAMS_PER_BATCH])
    now_ms = int(time.time() * 1000)
    # The series as recorded: per epoch for training, per second for a swarm, per point for a sweep.
    metrics = [Metric(name, float(value), now_ms, int(step))
               for name, points in registry.metric_series(run_id).items()
               for step, value in points if value is not None and math.isfinite(float(value))]
    metrics += [Metric(f"summary.{name}", value, now_ms, 0) for name, value in scalars_of(run.summary).items()]
    for i in range(0, len(metrics), _METRICS_PER_BATCH):
        client.log_batch(mlflow_id, metrics=metrics[i:i + _METRICS_PER_BATCH])
    client.log_dict(mlflow_id, run.summary, "summary.json")
    if run.error:
        client.set_tag(mlflow_id, "tuneswarm.error", run.error[:_PARAM_CHARS])
    model_path = run.summary.get("model_path")
    if isinstance(model_path, str) and Path(model_path).exists():
        path = Path(model_path)
        files = [path] if path.is_dir() else [path.parent / f for f in MODEL_FILES if (path.parent / f).is_file()]
        for f in files:
            client.log_artifact(mlflow_id, str(f), "model")
    end_ms = int(run.ended_at * 1000) if run.ended_at else None
    client.set_terminated(mlflow_id, status=_STATUS.get(run.status, "FINISHED"), end_time=end_ms)
    return mlflow_id


def export_run(registry: Registry, run_id: str, uri: str) -> Exported:
    """Log one registry run (and, for a sweep, its points as child runs) to the MLflow store at ``uri``.

    Raises RuntimeError (MLflow missing) or KeyError (unknown run).
    """
    client = _client(uri)
    experiment_id = _experiment_id(client)
    parent = _log_one(client, experiment_id, registry, run_id, None)
    children = {r.id: _log_one(client, experiment_id, registry, r.id, parent)
                for r in reversed(registry.list_runs()) if r.parent_id == run_id}
    return Exported(parent, children)


def export_many(registry: Registry, run_ids: list[str], uri: str) -> tuple[list[str], list[str]]:
    """Send several past runs; returns (lines for those sent, one-line errors for those not)."""
    sent, errors = [], []
    for run_id in run_ids:
        try:
            exported = export_run(registry, run_id, uri)
        except Exception as exc:  # one bad run (or a store that refuses) is reported, the others still go
            text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            errors.append(f"{run_id}: {text}")
            if isinstance(exc, RuntimeError) and text == MISSING:
                break
            continue
        extra = f" with {len(exported.children)} child runs" if exported.children else ""
        sent.append(f"{run_id} -> MLflow run {exported.mlflow_run_id}{extra}")
    return sent, errors


def export_if_tracked(registry: Registry, run_id: str) -> None:
    """At a job's end: export it when ``MLFLOW_TRACKING_URI`` is set; record where (or why not) in its summary.

    A sweep's points are logged under their sweep, not on their own. Tracking never fails the job.
    """
    uri = os.environ.get(TRACKING_ENV, "").strip()
    if not uri:
        return
    try:
        if registry.get_run(run_id).parent_id is not None:
            return
        exported = export_run(registry, run_id, uri)
        registry.update_summary(run_id, {"mlflow": {"uri": uri, "run_id": exported.mlflow_run_id}})
    except Exception as exc:  # a tracker that is down or missing must not turn a good run into a failed one
        message = str(exc) if isinstance(exc, RuntimeError) else f"{type(exc).__name__}: {exc}"
        registry.update_summary(run_id, {"mlflow": {"uri": uri, "error": message.splitlines()[0][:500]}})
        print(f"mlflow: {message.splitlines()[0]}", flush=True)
