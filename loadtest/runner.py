"""Headless Locust runs as registry jobs, with live stats, CPU accounting and server-side scrapes.

The ``swarm`` job kind: :func:`start` records a ``loadtest`` run and launches
``python -m loadtest.runner --run-id ID``; ``python -m loadtest`` runs the same
job in the foreground. Inside ``runs.lifecycle.job_context`` the job starts
``locust --headless`` as its child in the same process group (so stopping the job
ends Locust and its ``--processes`` workers too; a kill -9 of the job sends Locust
SIGTERM through PDEATHSIG), then once a second:

- reads the new complete lines of ``<prefix>_stats_history.csv`` and writes them
  to the registry as frames (users, rps, fail_per_s, p50..p99, avg);
- samples Locust's CPU (all its processes) with psutil: ``locust_cpu_pct``;
- scrapes the target's ``/metrics`` when it is our endpoint, so the server's own
  split of latency (queue wait vs compute), batch size and shed rate sit on
  the same time axis (``server_*``).

When Locust exits (run time over, stopped, or crashed) it reads the final CSVs,
writes the summary (see :func:`loadtest.results.summarize`), judges the SLO gates
and sets the run's status. A stop keeps whatever was measured until then.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psutil

from loadtest import preflight, results, shapes, slo
from loadtest.payload import MAX_INSTANCES_PER_REQUEST, check_protocol, predict_path
from loadtest.probes import CpuMeter, HistoryTail, ServerScraper, load_generator_cores, server_cpu_seconds
from runs import jobs, lifecycle
from runs.configs import known_fields, plain_dict
from runs.registry import Registry, State

LOCUSTFILE = Path(__file__).resolve().with_name("locustfile.py")
STARTUP_GRACE_S = 30.0  # Locust's import and start-up, bounded
EXIT_GRACE_S = 8.0  # after asking Locust to stop, how long it may take to write its reports
STOP_GRACE_S = 15.0
OWN_SIGNAL_WAIT_S = 1.0
MAX_PROCESSES = 64
LOCUST_LOG = "locust.log"
REPORT_PREFIX = "locust"
WORKERS_MAX_WAIT_S = 120.0  # a master gives up when its workers have not all connected by then


def worker_command(config: LoadTestConfig, master_host: str | None = None) -> list[str]:
    """The command to run on each worker machine for a distributed run of ``config``."""
    return [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--worker",
            "--master-host", master_host or config.master_bind_host, "--master-port", str(config.master_bind_port)]


@dataclass(frozen=True)
class LoadTestConfig:
    """Everything one swarm needs; validated on construction (ValueError names the field)."""

    host: str
    model_name: str = "model"
    users: int = 10
    spawn_rate: float = 10.0
    run_time_s: float = 20.0
    shape: str = "constant"
    step_users: int = 5
    step_time_s: float = 5.0
    max_users: int = 50
    spike_users: int = 50
    spike_at_s: float = 5.0
    spike_duration_s: float = 5.0
    target_rps: float = 0.0
    instances_per_request: int = 1
    processes: int = 0  # 0: one Locust process; N > 0: Locust's --processes N (one worker per core); -1: all cores
    timeout_s: float = 10.0
    samples_path: str = ""
    n_features: int = 0  # without samples: rows of zeros of this width (for external targets)
    slos: tuple[str, ...] = ()
    stop_timeout_s: float = 2.0
    scrape_server: bool = True  # read the target's /metrics each second if it is a TuneSwarm endpoint
    protocol: str = "tfserving"  # or "v2": the Open Inference Protocol (loadtest.payload.PROTOCOLS)
    signature_path: str = ""  # v2 without readable metadata: the inputs' names and dtypes (signature.json)
    # Distributed: Locust runs as a master that waits for this many workers started elsewhere
    # (``locust -f loadtest/locustfile.py --worker --master-host H --master-port P``); 0: not distributed.
    expect_workers: int = 0
    master_bind_host: str = "127.0.0.1"
    master_bind_port: int = 5557

    def __post_init__(self) -> None:
        parts = urlsplit(self.host) if isinstance(self.host, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"host must be an http(s) URL like http://127.0.0.1:8600, got {self.host!r}")
        object.__setattr__(self, "host", self.host.rstrip("/"))
        try:
            predict_path(self.model_name)
        except ValueError as exc:
            raise ValueError(f"model_name: {exc}") from None
        try:
            check_protocol(self.protocol)
        except ValueError as exc:
            raise ValueError(f"protocol: {exc}") from None
        self.shape_spec()  # validates users, spawn_rate, run_time_s and the shape parameters
        if not isinstance(self.instances_per_request, int) or not (
            1 <= self.instances_per_request <= MAX_INSTANCES_PER_REQUEST
        ):
            raise ValueError(
                f"instances_per_request must be an integer in [1, {MAX_INSTANCES_PER_REQUEST}], "
                f"got {self.instances_per_request!r}"
            )
        if not isinstance(self.processes, int) or not -1 <= self.processes <= MAX_PROCESSES:
            raise ValueError(
                f"processes must be -1 (all cores), 0 (one process) or 1..{MAX_PROCESSES}, got {self.processes!r}"
            )
        for name in ("timeout_s", "stop_timeout_s"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a number >= 0 seconds, got {value!r}")
        if self.timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0 seconds, got {self.timeout_s!r}")
        if not isinstance(self.n_features, int) or self.n_features < 0:
            raise ValueError(f"n_features must be an integer >= 0, got {self.n_features!r}")
        if not self.samples_path and self.n_features == 0:
            raise ValueError("samples_path must name a samples.json (or model.keras) unless n_features > 0")
        if self.samples_path:
            if not Path(self.samples_path).exists():
                raise ValueError(f"samples_path {self.samples_path!r} does not exist")
            # Locust runs in the run's artifact folder: a relative path would point elsewhere there.
            object.__setattr__(self, "samples_path", str(Path(self.samples_path).resolve()))
        if not isinstance(self.expect_workers, int) or not 0 <= self.expect_workers <= MAX_PROCESSES:
            raise ValueError(f"expect_workers must be 0..{MAX_PROCESSES}; got {self.expect_workers!r}")
        if self.expect_workers and self.processes:
            raise ValueError("expect_workers (a master for workers started elsewhere) and processes (local workers) "
                             "exclude each other; use one")
        if not isinstance(self.master_bind_port, int) or not 1 <= self.master_bind_port <= 65535:
            raise ValueError(f"master_bind_port must be a TCP port 1..65535; got {self.master_bind_port!r}")
        if self.signature_path:
            if not Path(self.signature_path).is_file():
                raise ValueError(f"signature_path {self.signature_path!r} does not exist")
            object.__setattr__(self, "signature_path", str(Path(self.signature_path).resolve()))
        if isinstance(self.slos, str):
            raise ValueError("slos must be a list of expressions like ['p95<=50ms'], not one string")
        object.__setattr__(self, "slos", tuple(self.slos))
        for expr in self.slos:
            try:
                slo.parse_slo(expr)
            except ValueError as exc:
                raise ValueError(f"slos: {exc}") from None

    def shape_spec(self) -> shapes.ShapeSpec:
        return shapes.ShapeSpec(
            kind=self.shape,
            users=self.users,
            spawn_rate=self.spawn_rate,
            run_time_s=self.run_time_s,
            step_users=self.step_users,
            step_time_s=self.step_time_s,
            max_users=self.max_users,
            spike_users=self.spike_users,
            spike_at_s=self.spike_at_s,
            spike_duration_s=self.spike_duration_s,
            target_rps=self.target_rps,
        )

    def parsed_slos(self) -> tuple[slo.Slo, ...]:
        return slo.parse_slos(self.slos)

    def to_dict(self) -> dict[str, Any]:
        return plain_dict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LoadTestConfig:
        return cls(**known_fields(cls, d, "load-test config"))

    def with_changes(self, **changes: Any) -> LoadTestConfig:
        return LoadTestConfig.from_dict({**self.to_dict(), **changes})


@dataclass(frozen=True)
class LoadTestResult:
    """A finished (or stopped) run as the CLI and tuning read it back from the registry."""

    run_id: str
    status: str
    error: str | None
    summary: dict[str, Any]
    gates: tuple[slo.GateResult, ...] = ()
    reports: dict[str, str] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        """Completed and every gate held."""
        return self.status == "completed" and all(g.passed for g in self.gates)

    @property
    def verdict(self) -> str:
        return str(self.summary.get("verdict") or self.error or self.status)


# -- public API: start / stop / run ------------------------------------------------------------


def create(
    registry: Registry,
    config: LoadTestConfig,
    *,
    serve_run_id: str | None = None,
    name: str | None = None,
    parent_id: str | None = None,
) -> str:
    """Record a pending ``loadtest`` run of ``config`` (run it with :func:`execute` or launch it).

    ``serve_run_id`` names the ``serve`` run of the target when it is our own
    endpoint (its process's CPU time is then measured too).
    """
    run_config = {**config.to_dict(), "serve_run_id": serve_run_id}
    run_name = name or f"swarm {config.shape} {config.host}"
    run_id = jobs.create(registry, "swarm", run_config, name=run_name, parent_id=parent_id)
    registry.update_summary(run_id, {"target": config.host, "offered_rps": shapes.offered_rps(config.shape_spec())})
    return run_id


def start(registry: Registry, config: LoadTestConfig, **options: str | None) -> str:
    """:func:`create` (same options) and launch its job; returns the run id at once."""
    run_id = create(registry, config, **options)
    jobs.launch(registry, run_id)
    return run_id


start_loadtest = start  # the name pages and tuning know


def stop_loadtest(registry: Registry, run_id: str, grace_s: float = STOP_GRACE_S) -> str:
    """Stop a run and Locust's whole process group; partial results stay. Returns the final status."""
    return jobs.stop_job(registry, run_id, grace_s=grace_s)


def wait_timeout_s(config: LoadTestConfig) -> float:
    """How long a run may take before it counts as hung."""
    workers_wait = WORKERS_MAX_WAIT_S if config.expect_workers else 0.0
    return config.run_time_s + config.stop_timeout_s + STARTUP_GRACE_S + EXIT_GRACE_S + 30.0 + workers_wait


def run_loadtest(
    registry: Registry,
    config: LoadTestConfig,
    *,
    serve_run_id: str | None = None,
    name: str | None = None,
    parent_id: str | None = None,
) -> LoadTestResult:
    """Start a run, wait for it (bounded), and return its result; a Ctrl-C stops it cleanly."""
    run_id = start_loadtest(registry, config, serve_run_id=serve_run_id, name=name, parent_id=parent_id)
    try:
        jobs.wait_job(registry, run_id, wait_timeout_s(config))
    except TimeoutError:
        stop_loadtest(registry, run_id)
        registry.finish_if_active(run_id, State.FAILED,
                                  f"load test did not finish within {wait_timeout_s(config):.0f}s")
    except BaseException:
        stop_loadtest(registry, run_id)
        raise
    return load_result(registry, run_id)


def load_result(registry: Registry, run_id: str) -> LoadTestResult:
    """The result of a recorded run (any status), with its gates as recorded."""
    run = registry.get_run(run_id)
    summary = dict(run.summary)
    gates = tuple(
        slo.GateResult(**{k: g[k] for k in ("expr", "metric", "op", "limit", "measured", "passed")})
        for g in summary.get("slo") or ()
    )
    return LoadTestResult(
        run_id=run_id,
        status=run.status,
        error=run.error,
        summary=summary,
        gates=gates,
        reports=dict(summary.get("reports") or {}),
    )


# -- inside the job -----------------------------------------------------------------------------


def locust_argv(config: LoadTestConfig, prefix: Path) -> list[str]:
    """The ``locust`` command line for a config; reports go to ``prefix``_*."""
    argv = [
        sys.executable, "-m", "locust",
        "-f", str(LOCUSTFILE),
        "--headless",
        "--only-summary",
        "--host", config.host,
        "-u", str(config.users),
        "-r", f"{config.spawn_rate:g}",
        "-t", f"{math.ceil(config.run_time_s)}s",
        "--stop-timeout", f"{config.stop_timeout_s:g}",
        "--csv", str(prefix),
        "--csv-full-history",
        "--json-file", str(prefix),
        "--html", f"{prefix}.html",
        "--model-name", config.model_name,
        "--instances-per-request", str(config.instances_per_request),
        "--request-timeout", f"{config.timeout_s:g}",
        "--shape", config.shape,
        "--step-users", str(config.step_users),
        "--step-time", f"{config.step_time_s:g}",
        "--max-users", str(config.max_users),
        "--spike-users", str(config.spike_users),
        "--spike-at", f"{config.spike_at_s:g}",
        "--spike-duration", f"{config.spike_duration_s:g}",
        "--target-rps", f"{config.target_rps:g}",
    ]  # fmt: skip
    if config.samples_path:
        argv += ["--samples", str(config.samples_path)]
    else:
        argv += ["--n-features", str(config.n_features)]
    if config.processes:
        argv += ["--processes", str(config.processes)]
    if config.protocol != "tfserving":
        argv += ["--protocol", config.protocol]
    if config.signature_path:
        argv += ["--signature", config.signature_path]
    if config.expect_workers:
        argv += ["--master", "--master-bind-host", config.master_bind_host,
                 "--master-bind-port", str(config.master_bind_port), "--expect-workers", str(config.expect_workers),
                 "--expect-workers-max-wait", f"{WORKERS_MAX_WAIT_S:g}"]
    if config.expect_workers or config.processes:
        argv += ["--topology-file", f"{prefix}_topology.json"]
    return argv


def _terminate(proc: subprocess.Popen[bytes], grace_s: float, *, signal_first: bool = True) -> None:
    """SIGTERM Locust (it writes its reports on SIGTERM), then SIGKILL it and its workers.

    ``signal_first=False``: the signal that stopped the job may have reached Locust too (Ctrl-C
    reaches the whole terminal group); a second one could cut its report writing, so it gets a
    moment to stop on its own before it is sent SIGTERM.
    """
    if proc.poll() is None and not signal_first:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=OWN_SIGNAL_WAIT_S)
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace_s)
    try:
        children = psutil.Process(proc.pid).children(recursive=True)
    except psutil.Error:
        children = []
    if proc.poll() is None:
        proc.kill()
    for child in children:
        with contextlib.suppress(psutil.Error):
            child.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5.0)


def _read_text(path: Path, limit: int = 20_000_000) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return fh.read(limit)
    except OSError:
        return ""


class SwarmJob:
    """One load-test run inside its job: a small state machine over Locust's life.

    ``running`` (Locust swarming; one tick per second samples CPU, the server and
    the history file) -> ``stopping`` (stop requested, or the run overran) ->
    ``finished`` (summary, gates and status recorded).
    """

    def __init__(self, registry: Registry, run_id: str) -> None:
        self.registry = registry
        self.run_id = run_id
        run_config = dict(registry.get_run(run_id).config)
        self.serve_run_id: str | None = run_config.pop("serve_run_id", None)
        self.config = LoadTestConfig.from_dict(run_config)
        out_dir = registry.artifacts_dir(run_id)
        self.out_dir = out_dir
        self.prefix = out_dir / REPORT_PREFIX
        self.log_path = out_dir / LOCUST_LOG
        self.state = "starting"
        self.stop_reason: str | None = None
        self.history: list[results.HistoryRow] = []
        self.cpu_samples: list[float] = []
        self.server_frames: list[dict[str, float | None]] = []
        self._previous_rows: dict[str, results.HistoryRow] = {}
        self._held: list[results.HistoryRow] = []
        self._last_written_step = -1

    # -- life cycle -------------------------------------------------------------------------

    def execute(self) -> str:
        """Run the swarm inside ``job_context``; returns the final status."""
        with lifecycle.job_context(self.registry, self.run_id) as ctx:
            self._execute(ctx)
        return self.registry.get_run(self.run_id).status

    def _execute(self, ctx: lifecycle.JobContext) -> None:
        """Run Locust to its end (or a stop) and record everything; a dead target ends the run at once."""
        unreachable = preflight.probe_target(self.config.host)
        if unreachable is not None:
            # Recorded once, as the run's error and its verdict (pages and the CLI show it once).
            summary: dict[str, Any] = {"verdict": unreachable, "requests": 0, "failures": 0,
                                       "target_unreachable": True}
            summary["slo"] = [g.to_dict() for g in slo.evaluate(self.config.parsed_slos(), summary)]
            self.registry.update_summary(self.run_id, summary)
            ctx.finish(State.FAILED, unreachable)
            self.state = "finished"
            return
        server_pid = self.registry.get_run(self.serve_run_id).pid if self.serve_run_id else None
        server_cpu_start = server_cpu_seconds(server_pid)
        self.start_wall = time.time()
        self.start_ts = int(self.start_wall)
        with open(self.log_path, "wb") as log:
            # Same process group as this job: stopping the job's group ends Locust and its workers too.
            self.proc = subprocess.Popen(
                locust_argv(self.config, self.prefix),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.out_dir,
                preexec_fn=lifecycle.die_with_parent,
            )
        self.state = "running"
        self.tail = HistoryTail(Path(f"{self.prefix}_stats_history.csv"))
        self.cpu = CpuMeter(self.proc.pid, load_generator_cores(self.config.processes))
        self.scraper = ServerScraper(self.config.host) if self.config.scrape_server else None
        deadline = time.monotonic() + wait_timeout_s(self.config) - 10.0
        tick = 0
        while self.proc.poll() is None:
            # Sample in the middle of each whole second since start, so every step gets one sample
            # however long the previous tick took.
            tick = max(tick + 1, int(time.time() - self.start_ts))
            time.sleep(max(0.0, self.start_ts + tick + 0.5 - time.time()))
            self._sample(step=tick)
            self._drain()
            if self.state == "running" and ctx.stopping:
                self.state, self.stop_reason = "stopping", "stopped"
                _terminate(self.proc, EXIT_GRACE_S, signal_first=not ctx.signalled)
            elif self.state == "running" and time.monotonic() > deadline:
                self.state, self.stop_reason = "stopping", "overran"
                _terminate(self.proc, EXIT_GRACE_S)
        _terminate(self.proc, EXIT_GRACE_S)  # reaps it; kills --processes workers a crash left behind
        server_cpu_end = server_cpu_seconds(server_pid)
        self._drain(final=True)
        summary = self._summary()
        if server_cpu_start is not None and server_cpu_end is not None and summary["requests"]:
            summary.setdefault("server", {})["cpu_ms_per_request"] = (
                1000.0 * (server_cpu_end - server_cpu_start) / summary["requests"]
            )
        self.registry.update_summary(self.run_id, summary)
        stopped = self.stop_reason == "stopped"
        status, error = _outcome(stopped, self.proc.returncode, summary, _read_text(self.log_path))
        if self.stop_reason == "overran":
            status, error = "failed", f"Locust did not finish within {wait_timeout_s(self.config):.0f}s; stopped"
        ctx.finish(status, error)
        self.state = "finished"

    # -- per tick ---------------------------------------------------------------------------

    def _sample(self, step: int) -> None:
        """Locust's CPU and the server's own figures for this second."""
        values: dict[str, float | None] = {}
        pct = self.cpu.sample()
        if pct is not None:
            values["locust_cpu_pct"] = pct
            if self.history and self.history[-1].users > 0:
                self.cpu_samples.append(pct)  # judge saturation on the seconds with users only
        if self.scraper is not None:
            frame = self.scraper.sample()
            if frame is not None:
                values.update(frame)
                self.server_frames.append(frame)
        if values:
            self.registry.log_metrics(self.run_id, step, values)

    def _drain(self, final: bool = False) -> None:
        """Write the history rows Locust completed since the last tick as registry frames."""
        rows = self._held + self.tail.read()
        # Locust writes a second's endpoint rows, then its Aggregated row; a read can end between
        # them, so rows after the last Aggregated one wait for the rest of their second.
        last_agg = max((i for i, r in enumerate(rows) if r.aggregated), default=-1)
        if final:
            self._held = []
        else:
            rows, self._held = rows[: last_agg + 1], rows[last_agg + 1 :]
        if not rows:
            return
        # The previous rows are replayed only to seed per-second differences; their steps are written already.
        frames = results.frames_from_history(
            [*self._previous_rows.values(), *rows], self.start_ts, locust_rates=self.config.processes != 0
        )
        for row in rows:
            self._previous_rows[row.name] = row
        self.history.extend(rows)
        fresh = [(step, frame) for step, frame in frames if step > self._last_written_step]
        if not fresh:
            return
        self.registry.log_metric_rows(self.run_id, fresh)
        self._last_written_step = fresh[-1][0]
        agg = next((r for r in reversed(rows) if r.aggregated), None)
        if agg is not None:
            self.registry.set_progress(
                self.run_id,
                {
                    "elapsed_s": round(time.time() - self.start_wall, 1),
                    "run_time_s": self.config.run_time_s,
                    "users": agg.users,
                    "rps": fresh[-1][1].get("rps"),
                    "requests": agg.total_requests,
                    "failures": agg.total_failures,
                },
            )

    # -- at the end -------------------------------------------------------------------------

    def _summary(self) -> dict[str, Any]:
        prefix = self.prefix
        summary = results.summarize(
            stats=results.parse_stats_csv(_read_text(Path(f"{prefix}_stats.csv"))),
            history=self.history,
            failures_by_reason=results.parse_failures_csv(_read_text(Path(f"{prefix}_failures.csv"))),
            cpu_samples=self.cpu_samples,
            log_text=_read_text(self.log_path),
            offered_rps=shapes.offered_rps(self.config.shape_spec()),
            users=self.config.shape_spec().users,
            target=self.config.host,
            server_frames=self.server_frames,
        )
        reports = {
            "csv": f"{prefix}_stats.csv",
            "history_csv": f"{prefix}_stats_history.csv",
            "failures_csv": f"{prefix}_failures.csv",
            "json": f"{prefix}.json",
            "html": f"{prefix}.html",  # Locust writes it at a normal end, not when stopped by a signal
            "log": str(self.log_path),
        }
        summary["reports"] = {k: v for k, v in reports.items() if Path(v).is_file()}
        topology = _read_text(Path(f"{prefix}_topology.json"))
        if topology:
            import json

            summary["topology"] = json.loads(topology)
        gates = slo.evaluate(self.config.parsed_slos(), summary)
        summary["slo"] = [g.to_dict() for g in gates]
        summary["slo_passed"] = all(g.passed for g in gates)
        summary["verdict"] = results.verdict(summary)  # now over the gates too: PASS only when every one held
        summary["exit_code"] = self.proc.returncode
        return summary


def execute(registry: Registry, run_id: str) -> str:
    """Run the swarm of ``run_id`` (called inside its job); returns the final status."""
    return SwarmJob(registry, run_id).execute()


def _outcome(stopped: bool, exit_code: int | None, summary: Mapping[str, Any], log_text: str) -> tuple[str, str | None]:
    """Final status and error line of a run."""
    if stopped:
        return "stopped", f"stopped by request after {summary.get('requests', 0)} requests"
    if exit_code == 2 and not summary.get("requests"):
        lines = [ln for ln in log_text.strip().splitlines() if ln.strip()]
        return "failed", (lines[-1] if lines else "locust exited with code 2 (bad options)")
    reasons = summary.get("failures_by_reason") or {}
    if results.target_unreachable(summary):
        return "failed", str(summary.get("verdict"))
    if reasons.get(results.REASON_REFUSED):
        return "failed", str(summary.get("verdict"))
    if exit_code not in (0, 1):  # 1 only means "some requests failed"
        return "failed", f"locust exited with code {exit_code}; {summary.get('verdict')}"
    return "completed", None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.runner",
        description="Run the load test recorded as a registry run (launched by loadtest.runner.start).",
    )
    parser.add_argument("--run-id", required=True, help="id of the 'loadtest' run whose config to execute")
    args = parser.parse_args(argv)
    registry = Registry()
    try:
        status = execute(registry, args.run_id)
    except (KeyError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        with contextlib.suppress(KeyError):
            registry.finish_if_active(args.run_id, State.FAILED, lifecycle.one_line_error(exc))
        return 2
    except Exception as exc:  # recorded on the run by job_context
        print(f"error: {lifecycle.one_line_error(exc)}", file=sys.stderr)
        return 1
    return 0 if status in (State.COMPLETED, State.STOPPED) else 1


if __name__ == "__main__":
    sys.exit(main())
