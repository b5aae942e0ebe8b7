"""Starting and stopping endpoints as registry jobs (what the load-test runner,
the dashboard and tuning call).

An endpoint is a ``serve`` run whose process is ``python -m agent.serving ...
--run-id ID`` started by ``runs.jobs``: its own process group, output in the
run's ``job.log``, URL/port/pid in the run's summary once it is ready.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from agent.serving.config import ServingConfig
from runs.jobs import python_module_argv, reap, start_job, stop_job
from runs.registry import Registry

READY_TIMEOUT_S = 120.0
POLL_S = 0.1
CONFIG_FILENAME = "serving_config.json"
LOG_TAIL_LINES = 5


class EndpointError(RuntimeError):
    """An endpoint that could not be started (the message carries the job log's last lines)."""


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


def endpoint_argv(
    model_path: str | os.PathLike[str] | None,
    config_file: Path,
    name: str,
    port: int,
    *,
    ceiling: bool = False,
    run_id: str | None = None,
    host: str = "127.0.0.1",
    log_level: str = "warning",
) -> list[str]:
    """argv of the endpoint CLI."""
    args = ["--name", name, "--host", host, "--port", str(port), "--config", str(config_file),
            "--log-level", log_level]
    if ceiling:
        args.append("--ceiling")
    else:
        if model_path is None:
            raise ValueError("model_path is required unless ceiling=True")
        args += ["--model", str(model_path)]
    if run_id is not None:
        args += ["--run-id", run_id]
    return python_module_argv("agent.serving", *args)


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
    env: dict[str, str] | None = None,
) -> EndpointHandle:
    """Start an endpoint job and wait (bounded) until it is ready.

    Raises EndpointError (with the job log's last lines) if the process dies or is
    not ready within ``ready_timeout_s`` (it is then stopped).
    """
    if model_path is not None and not ceiling:
        from agent.export import check_model_path
        from agent.serving.runtimes import check_runtime_format

        # Refuse .h5 etc., and a runtime that cannot take the format, before starting anything.
        check_runtime_format(config.runtime, check_model_path(model_path))
    run_config = {"model_path": None if ceiling else str(model_path), "name": name, "port": port,
                  "ceiling": ceiling, "serving": config.to_dict()}
    label = run_name or f"serve {'ceiling' if ceiling else name} ({config.runtime})"
    run_id = registry.create_run("serve", run_config, name=label, parent_id=parent_id)
    config_file = registry.artifacts_dir(run_id) / CONFIG_FILENAME
    config_file.write_text(json.dumps(config.to_dict(), indent=2))
    argv = endpoint_argv(model_path, config_file, name, port, ceiling=ceiling, run_id=run_id, host=host,
                         log_level=log_level)
    try:
        job = start_job(registry, run_id, argv, env=env)
    except OSError as exc:
        registry.finish_if_active(run_id, "failed", f"could not start the endpoint: {exc}")
        raise EndpointError(f"could not start the endpoint: {exc}") from None
    deadline = time.monotonic() + ready_timeout_s
    while True:
        run = registry.get_run(run_id)
        url = run.summary.get("url") if run.summary else None
        if url and run.summary.get("ready_at"):
            return EndpointHandle(run_id, str(url), int(run.summary["port"]), job.pid, name)
        reap(registry)
        run = registry.get_run(run_id)
        if not run.active:
            raise EndpointError(f"endpoint exited before it was ready ({run.status}): {_log_tail(job.log_path)}")
        if time.monotonic() >= deadline:
            stop_job(registry, run_id)
            raise EndpointError(f"endpoint not ready after {ready_timeout_s:.0f}s: {_log_tail(job.log_path)}")
        time.sleep(POLL_S)


def stop_endpoint(registry: Registry, run_id: str, grace_s: float = 30.0) -> str:
    """SIGTERM the endpoint's process group (SIGKILL after ``grace_s``); returns the final status."""
    return stop_job(registry, run_id, grace_s=grace_s)


def _log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no job log)"
    # TensorFlow's start-up chatter is not the reason anything failed.
    useful = [t.strip() for t in text if t.strip() and not t.startswith(("I0000", "W0000"))]
    return " | ".join(useful[-lines:]) or "(empty job log)"
