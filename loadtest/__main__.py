"""``python -m loadtest``: a headless swarm with SLO gates, for people and for CI.

    python -m loadtest --serve model.keras --users 32 --spawn-rate 32 --run-time 20s \\
        --slo 'p95<=50ms' --slo 'fail_ratio<=0.01' --report-dir reports/
    python -m loadtest --host http://127.0.0.1:8501 --samples samples.json --shape rate --target-rps 500 ...
    python -m loadtest --serve saved_model_dir/ --payload-dist normal --payload-low -1 --payload-high 1 ...

Payloads: --samples FILE (.json in TF Serving request format, .npy, .npz, .csv), else
the samples.json beside the served model, else rows generated from the model's
signature (read from the endpoint's /metadata), with --n-features N for all-zero rows.

The run is recorded as a ``loadtest`` run (the same job the Load test page starts,
run here in the foreground); ``--serve`` starts the endpoint as a ``serve`` job
through the job contract and stops it at the end. SIGTERM, SIGINT (Ctrl-C) and
SIGHUP stop the swarm: the partial results are kept, copied to ``--report-dir``,
and the endpoint is stopped; a kill -9 leaves no process behind either.

Exit codes: 0 every gate passed, 1 a gate failed or the run did not complete,
2 bad usage (one line on stderr, no traceback), including a model the endpoint refused.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from loadtest import payload, runner, shapes, slo
from loadtest.runner import LoadTestConfig, LoadTestResult
from runs import jobs, lifecycle
from runs.configs import int_list
from runs.registry import Registry

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
# Serving flags forwarded to the serve job (validated there): CLI dest -> ServingConfig field.
SERVING_FLAGS = {
    "runtime": "runtime",
    "max_batch_size": "max_batch_size",
    "batch_timeout_ms": "batch_timeout_ms",
    "max_enqueued_batches": "max_enqueued_batches",
    "num_batch_threads": "num_batch_threads",
    "workers": "workers",
    "request_timeout_ms": "request_timeout_ms",
    "allowed_batch_sizes": "allowed_batch_sizes",
    "intra_op_threads": "intra_op_threads",
    "inter_op_threads": "inter_op_threads",
}
ENDPOINT_READY_TIMEOUT_S = 120.0
PERCENTILE_KEYS = ("p50_ms", "p90_ms", "p95_ms", "p99_ms")


class UsageError(Exception):
    """Bad command line or configuration: exit 2 with one line."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see --help)")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="python -m loadtest",
        description="Run a headless Locust swarm against a TF Serving-compatible endpoint and judge SLO gates.",
    )
    target = p.add_argument_group("target (one of)")
    ex = target.add_mutually_exclusive_group(required=True)
    ex.add_argument("--serve", metavar="PATH", help="start the embedded endpoint on this model (a .keras file or a "
                    "SavedModel directory) for the run")
    ex.add_argument("--host", metavar="URL", help="swarm an endpoint that is already running, e.g. http://127.0.0.1:8600")
    target.add_argument("--model-name", default="model", help="model name in /v1/models/NAME:predict (default: model)")
    target.add_argument("--protocol", default="tfserving", choices=payload.PROTOCOLS,
                        help="tfserving: TF Serving's REST API (POST /v1/models/NAME:predict); v2: the Open Inference "
                        "Protocol of Triton, KServe, MLServer (POST /v2/models/NAME/infer, inputs named and typed "
                        "from GET /v2/models/NAME or --signature) (default: tfserving)")
    target.add_argument(
        "--samples",
        default="",
        help="payload rows: .json (TF Serving request format), .npy, .npz (one array per input name) or .csv "
        "(default with --serve: the samples.json beside the model; without one, rows generated from the signature)",
    )
    target.add_argument("--n-features", type=int, default=0, help="without samples: send rows of this many zeros")
    gen = p.add_argument_group("generated payloads (without --samples: from the model's signature)")
    gen.add_argument("--signature", default="", help="signature.json with the model's inputs (default: read them "
                     "from the endpoint's /v1/models/NAME/metadata)")
    gen.add_argument("--payload-dist", default="uniform", choices=payload.DISTRIBUTIONS,
                     help="distribution of float inputs (default: uniform; normal is centred on the range, "
                     "sd a quarter of it, clipped to it)")
    gen.add_argument("--payload-low", type=float, default=0.0, help="lowest float value (default: 0)")
    gen.add_argument("--payload-high", type=float, default=1.0, help="highest float value (default: 1)")
    gen.add_argument("--vocab-size", type=int, default=payload.DEFAULT_VOCAB_SIZE,
                     help=f"integer inputs (token ids) are drawn from 0..N-1 (default: {payload.DEFAULT_VOCAB_SIZE})")

    load = p.add_argument_group("load")
    load.add_argument("-u", "--users", type=int, default=10, help="concurrent users (base users for steps/spike)")
    load.add_argument("-r", "--spawn-rate", type=float, default=10.0, help="users started per second (default: 10)")
    load.add_argument("-t", "--run-time", default="20s", help="run time like 20s, 1m30s (default: 20s)")
    shapes.add_shape_arguments(load)
    load.add_argument("--instances-per-request", type=int, default=1, help="feature rows per request (default: 1)")
    load.add_argument(
        "--processes",
        type=int,
        default=0,
        help="Locust worker processes on this machine (Locust's --processes; -1 = one per core); "
        "use when the summary says the load generator saturated",
    )
    load.add_argument("--master", action="store_true",
                      help="distributed: run Locust as a master for --expect-workers N workers started separately")
    load.add_argument("--expect-workers", type=int, default=0, metavar="N",
                      help="distributed: run Locust as a master that starts once N workers have connected; start "
                           "each with the command this prints (other machines: --master-bind-host 0.0.0.0)")
    load.add_argument("--master-bind-host", default="127.0.0.1",
                      help="distributed: address the master listens on for workers (default: 127.0.0.1)")
    load.add_argument("--master-bind-port", type=int, default=5557,
                      help="distributed: port the master listens on for workers (default: 5557)")
    load.add_argument("--timeout", type=float, default=10.0, help="client timeout per request in seconds")
    load.add_argument(
        "--stop-timeout", type=float, default=2.0, help="seconds users may finish their request at the end"
    )

    gates = p.add_argument_group("gates and reports")
    gates.add_argument(
        "--slo",
        action="append",
        default=[],
        help="gate like 'p95<=50ms', 'p99<=100ms', 'fail_ratio<=0.01', 'rps>=500' (repeatable); "
        f"metrics: {', '.join(slo.METRICS)}",
    )
    gates.add_argument("--report-dir", type=Path, help="copy the CSV/JSON/HTML reports and summary.json here")
    gates.add_argument("--name", help="name of the run in the registry")

    serving = p.add_argument_group("embedded endpoint (with --serve; see python -m agent.serving --help)")
    serving.add_argument("--runtime", help="model runtime: keras, tf-function, xla, tflite, tflite-int8")
    serving.add_argument("--max-batch-size", type=int, help="largest batch the batcher forms")
    serving.add_argument("--batch-timeout-ms", type=float, help="longest wait for a batch to fill")
    serving.add_argument("--max-enqueued-batches", type=int, help="queue bound in batches; beyond it requests get 503")
    serving.add_argument("--num-batch-threads", type=int, help="batches executed in parallel")
    serving.add_argument("--workers", type=int, help="server worker processes")
    serving.add_argument("--request-timeout-ms", type=float, help="server-side deadline per request (504 after)")
    serving.add_argument(
        "--allowed-batch-sizes", type=int_list, metavar="N,N,...", help="pad batches up to these sizes (e.g. 8,16,32)"
    )
    serving.add_argument("--intra-op-threads", type=int, help="threads inside one TF/TFLite op (0 = library default)")
    serving.add_argument("--inter-op-threads", type=int, help="TF threads across independent ops (0 = default)")
    serving.add_argument("--serving-config", type=Path, help="ServingConfig JSON file (flags above override it)")
    return p


def config_from_args(args: argparse.Namespace, host: str, registry: Registry | None = None) -> LoadTestConfig:
    """The load test the flags describe; with a ``registry`` (the target is up), payloads
    missing a samples file are generated from the model's signature and saved under it."""
    samples = args.samples
    if not samples and args.serve and not args.n_features:
        beside = payload.resolve_samples_path_or_none(args.serve)
        samples = str(beside) if beside is not None else ""
    if not samples and not args.n_features:
        samples = generated_samples(args, host, registry) if registry is not None else ""
        if registry is None:  # validating before the target is up: any samples path will do
            return _config(args, host, "", 1)
    return _config(args, host, samples, args.n_features)


def generated_samples(args: argparse.Namespace, host: str, registry: Registry) -> str:
    """Rows generated from the signature (file or endpoint metadata), written once under the state folder."""
    try:
        spec = payload.PayloadSpec(args.payload_dist, args.payload_low, args.payload_high, args.vocab_size)
        inputs = (payload.signature_from_file(args.signature) if args.signature
                  else payload.fetch_signature(host, args.model_name, protocol=args.protocol))
        return str(payload.generated_payload_file(registry.home / payload.GENERATED_DIRNAME, inputs, spec))
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _config(args: argparse.Namespace, host: str, samples: str, n_features: int) -> LoadTestConfig:
    if args.master and args.expect_workers < 1:
        raise UsageError("--master needs --expect-workers N (how many workers to wait for)")
    try:
        run_time_s = shapes.parse_duration(args.run_time)
        return LoadTestConfig(
            host=host,
            model_name=args.model_name,
            users=args.users,
            spawn_rate=args.spawn_rate,
            run_time_s=run_time_s,
            shape=args.shape,
            step_users=args.step_users,
            step_time_s=args.step_time,
            max_users=args.max_users,
            spike_users=args.spike_users,
            spike_at_s=args.spike_at,
            spike_duration_s=args.spike_duration,
            target_rps=args.target_rps,
            instances_per_request=args.instances_per_request,
            processes=args.processes,
            timeout_s=args.timeout,
            samples_path=samples,
            n_features=n_features,
            slos=tuple(args.slo),
            stop_timeout_s=args.stop_timeout,
            protocol=args.protocol,
            signature_path=args.signature if args.protocol == "v2" else "",
            expect_workers=args.expect_workers,
            master_bind_host=args.master_bind_host,
            master_bind_port=args.master_bind_port,
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def serving_config_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The serving config (a dict) from --serving-config and the serving flags.

    The serve job validates it (loadtest does not import the endpoint's code); a bad
    value ends that job before it is ready, which is reported as bad usage.
    """
    base: dict[str, Any] = {}
    if args.serving_config:
        try:
            base = json.loads(Path(args.serving_config).read_text())
        except (OSError, ValueError) as exc:
            raise UsageError(f"--serving-config {args.serving_config}: {exc}") from None
        if not isinstance(base, dict):
            raise UsageError(f"--serving-config {args.serving_config}: expected a JSON object")
    changes = {f: getattr(args, dest) for dest, f in SERVING_FLAGS.items() if getattr(args, dest) is not None}
    if "allowed_batch_sizes" in changes:
        changes["allowed_batch_sizes"] = list(changes["allowed_batch_sizes"])
    return {**base, **changes}


def _fmt(value: Any, unit: str = "", digits: int = 1) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}f}{unit}"
    return f"{value}{unit}"


def format_summary(result: LoadTestResult) -> str:
    """The human summary table, gates and reports."""
    s = result.summary
    rows = [
        ("run", f"{result.run_id} ({result.status})"),
        ("target", s.get("target")),
        ("requests", s.get("requests")),
        ("failures", f"{s.get('failures')} ({_fmt(100.0 * (s.get('fail_ratio') or 0.0), '%', 2)})"),
        ("throughput", _fmt(s.get("rps"), " req/s")),
        ("offered", _fmt(s.get("offered_rps"), " req/s") if s.get("offered_rps") else "closed loop"),
        ("latency p50/p90/p95/p99", " / ".join(_fmt(s.get(k), " ms") for k in PERCENTILE_KEYS)),
        ("latency avg / max", f"{_fmt(s.get('avg_ms'), ' ms')} / {_fmt(s.get('max_ms'), ' ms')}"),
        ("shed (503)", s.get("shed")),
        ("Locust CPU", f"{_fmt(s.get('locust_cpu_pct'), '%', 0)} (saturated: {_fmt(bool(s.get('saturated')))})"),
    ]
    server = s.get("server") or {}
    if server:
        rows.append(
            (
                "server queue / compute",
                f"{_fmt(server.get('queue_ms'), ' ms', 2)} / {_fmt(server.get('compute_ms'), ' ms', 2)} "
                f"(batch {_fmt(server.get('batch_size'), '', 1)})",
            )
        )
        if server.get("cpu_ms_per_request") is not None:
            rows.append(("server CPU per request", _fmt(server.get("cpu_ms_per_request"), " ms", 3)))
    topology = s.get("topology") or {}
    for w in topology.get("workers", []):
        busy = " (saturated: this worker measured Locust, not the target)" if w["cpu_pct_max"] >= 90 else ""
        rows.append((f"  worker {w['id'][-12:]}", f"{w['requests']} requests, {w['failures']} failed, "
                                                   f"peak CPU {w['cpu_pct_max']:.0f}%{busy}"))
    for reason, count in (s.get("failures_by_reason") or {}).items():
        rows.append((f"  failure: {reason}", count))
    width = max(len(k) for k, _ in rows)
    lines = [f"{k:<{width}}  {v}" for k, v in rows]
    lines.append(f"verdict: {result.verdict}")
    if result.error and result.error != result.verdict:
        lines.append(f"error: {result.error}")
    if result.gates:
        lines.append("gates:")
        lines.extend("  " + slo.format_gate(g) for g in result.gates)
    return "\n".join(lines)


def write_reports(result: LoadTestResult, report_dir: Path) -> list[Path]:
    """Copy Locust's reports and the summary into ``report_dir``."""
    report_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for src in result.reports.values():
        p = Path(src)
        if p.is_file():
            written.append(Path(shutil.copy2(p, report_dir / p.name)))
    summary_path = report_dir / "summary.json"
    summary_path.write_text(
        json.dumps({"run_id": result.run_id, "status": result.status, "error": result.error, **result.summary},
                   indent=2, default=str)
    )
    written.append(summary_path)
    return written


def run(args: argparse.Namespace, registry: Registry) -> LoadTestResult:
    """Start the endpoint if asked, run the swarm in the foreground, and always stop the endpoint."""
    if args.host:
        return _swarm(registry, config_from_args(args, args.host, registry), None, args.name)
    model = Path(args.serve)
    if not model.exists():
        raise UsageError(f"--serve {model}: no such model (expected a .keras file or a SavedModel directory)")
    # Validate the load test before paying for the endpoint's start-up.
    config_from_args(args, "http://127.0.0.1:1")
    serve = {"model_path": str(model.resolve()), "name": args.model_name, "port": 0,
             "serving": serving_config_from_args(args)}
    serve_id = jobs.start(registry, "serve", serve, name=f"serve {model.parent.name}/{model.name} for a swarm")
    try:
        try:
            ready = jobs.wait_ready(registry, serve_id, ENDPOINT_READY_TIMEOUT_S)
        except jobs.JobNotReady as exc:
            raise UsageError(f"--serve {model}: {exc}") from None
        return _swarm(registry, config_from_args(args, str(ready.summary["url"]), registry), serve_id, args.name)
    finally:
        jobs.stop_job(registry, serve_id)


def _swarm(registry: Registry, config: LoadTestConfig, serve_id: str | None, name: str | None) -> LoadTestResult:
    run_id = runner.create(registry, config, serve_run_id=serve_id, name=name)
    print(f"run {run_id}: {config.users} users on {config.host} for {config.run_time_s:g}s "
          f"(results in {registry.artifacts_dir(run_id)})", flush=True)
    if config.expect_workers:
        print(f"waiting for {config.expect_workers} workers; on each worker machine run: "
              f"{' '.join(runner.worker_command(config))}", flush=True)
    try:
        runner.execute(registry, run_id)
    except Exception as exc:  # recorded on the run as failed, with this line
        print(f"python -m loadtest: error: {lifecycle.one_line_error(exc)}", file=sys.stderr)
    return runner.load_result(registry, run_id)


def main(argv: Sequence[str] | None = None) -> int:
    with lifecycle.foreground():  # what this command starts (the endpoint, Locust) dies with it
        return _main(argv)


def _main(argv: Sequence[str] | None) -> int:
    try:
        args = build_parser().parse_args(argv)
        for expr in args.slo:
            slo.parse_slo(expr)  # a malformed gate is bad usage, before anything starts
        registry = Registry()
        result = run(args, registry)
    except UsageError as exc:
        print(f"python -m loadtest: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ValueError as exc:
        print(f"python -m loadtest: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except RuntimeError as exc:  # e.g. the endpoint did not become ready in time
        print(f"python -m loadtest: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:  # a signal before the swarm started: the endpoint was stopped on the way out
        print("python -m loadtest: interrupted before the swarm started", file=sys.stderr)
        return EXIT_FAILED
    print(format_summary(result))
    if result.status == "stopped":
        print(f"stopped: the partial results are kept in {registry.artifacts_dir(result.run_id)}")
    if args.report_dir:
        paths = write_reports(result, args.report_dir)
        print(f"reports: {', '.join(str(p) for p in paths)}")
    return EXIT_OK if result.passed else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
