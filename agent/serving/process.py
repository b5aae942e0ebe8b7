"""The ``serve`` job kind: an endpoint as a registry job (what pages, the load-test CLI and tuning start).

:func:`start` records a :class:`ServeJob` and launches ``python -m agent.serving
--run-id ID`` (own process group, output in the run's ``job.log``); the job puts
URL, port and pid in the run's summary once the model is warm, and its start-up stage
in the run's progress as it goes. :func:`start_endpoint` also waits for that;
:func:`replace_endpoint` (a restart) returns at once, keeping the port by default.
``python -m agent.serving --model ...`` records the same run and serves in the foreground.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from agent.serving.config import DEFAULT_CONFIG, ServingConfig
from runs import jobs
from runs.configs import known_fields
from runs.registry import Registry, State

READY_TIMEOUT_S = 120.0
PORT_WAIT_S = 40.0  # > the old endpoint's graceful shutdown (20 s) and its kill grace


class EndpointError(RuntimeError):
    """An endpoint that could not be started (the message carries the job's one-line reason)."""


@dataclass(frozen=True)
class ServeJob:
    """The frozen config of a ``serve`` run."""

    model_path: str | None  # None with ceiling
    name: str = "model"
    host: str = "127.0.0.1"
    port: int = 0
    ceiling: bool = False
    serving: ServingConfig = field(default_factory=lambda: DEFAULT_CONFIG)
    log_level: str = "warning"
    # A restart keeping its URL: how long the new endpoint waits for the old one to let go of ``port``.
    port_wait_s: float = 0.0

    def __post_init__(self) -> None:
        if not self.ceiling and not self.model_path:
            raise ValueError("model_path is required unless ceiling=True")
        if not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise ValueError(f"port must be an integer in 0..65535 (0: a free one); got {self.port!r}")

    def to_dict(self) -> dict[str, Any]:
        return {"model_path": None if self.ceiling else str(self.model_path), "name": self.name, "host": self.host,
                "port": self.port, "ceiling": self.ceiling, "serving": self.serving.to_dict(),
                "log_level": self.log_level, "port_wait_s": self.port_wait_s}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ServeJob:
        values = known_fields(cls, d, "serve job config")
        values["serving"] = ServingConfig.from_dict(dict(values.get("serving") or {}))
        return cls(**values)

    @property
    def label(self) -> str:
        return f"serve {'ceiling' if self.ceiling else self.name} ({self.serving.runtime})"


@dataclass(frozen=True)
class EndpointHandle:
    run_id: str
    url: str  # http://127.0.0.1:PORT
    port: int
    pid: int
    name: str

    @property
    def predict_url(self) -> str:
        return f"{self.url}/v1/models/{self.name}:predict"

    @property
    def metrics_url(self) -> str:
        return f"{self.url}/metrics"


def start(registry: Registry, job: ServeJob, *, name: str | None = None, parent_id: str | None = None) -> str:
    """Record ``job`` as a new ``serve`` run and launch it; returns the run id at once (not yet ready).

    A refused model (.h5, not a Keras archive or SavedModel, or a runtime that cannot
    take its format) raises ModelFormatError/RuntimeRefusedError before any process
    starts; the run is recorded ``failed`` with the reason.
    """
    run_id = jobs.create(registry, "serve", job.to_dict(), name=name or job.label, parent_id=parent_id)
    if not job.ceiling:
        from agent.export import check_model_path
        from agent.serving.runtimes import check_runtime_format

        try:
            check_runtime_format(job.serving.runtime, check_model_path(job.model_path))
        except ValueError as exc:  # both refusals are ValueErrors with a one-line reason
            registry.finish_if_active(run_id, State.FAILED, str(exc))
            raise
    jobs.launch(registry, run_id)
    return run_id


def handle_of(run: Any) -> EndpointHandle:
    """The handle of a ready ``serve`` run."""
    s = run.summary
    return EndpointHandle(run.id, str(s["url"]), int(s["port"]), int(s.get("pid") or run.pid), str(s.get("name")))


def start_endpoint(
    registry: Registry,
    model_path: str | os.PathLike[str] | None,
    config: ServingConfig,
    name: str = "model",
    port: int = 0,
    *,
    ceiling: bool = False,
    ready_timeout_s: float = READY_TIMEOUT_S,
    run_name: str | None = None,
    parent_id: str | None = None,
    host: str = "127.0.0.1",
    log_level: str = "warning",
) -> EndpointHandle:
    """Start a ``serve`` job and wait (bounded) until it is ready.

    Raises EndpointError (with the job's one-line reason) if the process ends or
    is not ready within ``ready_timeout_s`` (it is then stopped).
    """
    job = ServeJob(None if ceiling else str(Path(model_path)) if model_path is not None else None, name, host, port,
                   ceiling, config, log_level)
    run_id = start(registry, job, name=run_name, parent_id=parent_id)
    try:
        return handle_of(jobs.wait_ready(registry, run_id, ready_timeout_s))
    except jobs.JobNotReady as exc:
        raise EndpointError(str(exc)) from None
    except BaseException:
        jobs.stop_job(registry, run_id)  # e.g. a stop request reached the job waiting for it
        raise


def stop_endpoint(registry: Registry, run_id: str, grace_s: float = 30.0) -> str:
    """SIGTERM the endpoint's process group (SIGKILL after ``grace_s``); returns the final status."""
    return jobs.stop_job(registry, run_id, grace_s=grace_s)


def endpoint_port(run: Any) -> int:
    """The port an endpoint run listens on (or asked for), 0 when unknown."""
    port = run.summary.get("port") or (run.progress or {}).get("port") or run.config.get("port")
    return int(port or 0)


def replace_endpoint(registry: Registry, old: Any, job: ServeJob, *, keep_port: bool = True,
                     name: str | None = None) -> str:
    """Start ``job`` in place of the endpoint run ``old``; returns the new run id at once (not yet ready).

    The old endpoint is stopped on a background thread (graceful: in-flight requests
    finish); with ``keep_port`` the new one asks for the old one's port and waits
    (bounded by ``PORT_WAIT_S``) until it is free, so clients keep the same URL;
    otherwise it takes a free port. The page that asked returns at once and follows
    the new run's stages from the registry.
    """
    port = endpoint_port(old) if keep_port else 0
    job = replace(job, port=port, port_wait_s=PORT_WAIT_S if port else 0.0)
    registry.request_stop(old.id)  # seen at once by anything watching the old run
    threading.Thread(target=stop_endpoint, args=(registry, old.id), name=f"stop-{old.id}", daemon=True).start()
    return start(registry, job, name=name)


def restart_endpoint(registry: Registry, model_path: str, config: ServingConfig, name: str = "model",
                     *, keep_port: bool = True) -> str:
    """Replace the user's endpoint of ``model_path`` (not one a sweep or swarm owns) by one with ``config``.

    Returns the new run id at once (see :func:`replace_endpoint`); with no such endpoint
    running, starts one on a free port.
    """
    job = ServeJob(str(model_path), name, serving=config)
    mine = [serve for serve in registry.list_runs(kind="serve", status=("pending", "running"))
            if serve.parent_id is None and serve.config.get("model_path") == str(model_path)]
    if not mine:
        return start(registry, job)
    for extra in mine[1:]:
        threading.Thread(target=stop_endpoint, args=(registry, extra.id), daemon=True).start()
    return replace_endpoint(registry, mine[0], job, keep_port=keep_port)
