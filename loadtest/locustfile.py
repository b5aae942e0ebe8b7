"""Locust swarm against a TensorFlow Serving REST ``:predict`` endpoint, or (``--protocol v2``)
an Open Inference Protocol ``/v2/models/NAME/infer`` endpoint (Triton, KServe, MLServer, ours).

Run it with Locust itself (this is the only module that imports locust)::

    locust -f loadtest/locustfile.py --host http://127.0.0.1:8600 --samples model/samples.json \\
        --model-name model --headless -u 32 -r 32 -t 20s [--shape steps --step-users 8 ...]

``--samples`` takes a TF Serving request ``.json``, ``.npy``, ``.npz`` or ``.csv``;
without it (and without ``--n-features``) rows are generated from the model's
signature, read from ``--signature FILE`` or from the target's ``/metadata``
(``--payload-dist``, ``--payload-low``/``--payload-high``, ``--vocab-size``).

or through ``python -m loadtest`` / ``loadtest.runner``, which add reports,
live stats in the run registry and SLO gates. ``--slo`` also works on a plain
Locust run: the gates set Locust's exit code when it quits (see the end of this file). Every option below is declared
through ``events.init_command_line_parser``, so Locust parses it like its own
and the master hands it to workers in distributed runs (``--master`` /
``--worker``; each worker needs the samples file at the same path), and
Locust's web UI shows them as editable fields. ``locust --help`` prints before
any locustfile is imported, so it does not list them: they are documented
here (the load-shape ones come from ``shapes.SHAPE_ARGUMENTS`` and also show
in ``python -m loadtest --help``).
"""

from __future__ import annotations

import functools
import itertools
import sys
from pathlib import Path
from typing import Any

import locust.stats
from locust import FastHttpUser, LoadTestShape, constant_throughput, events, task
from locust.runners import MasterRunner, WorkerRunner

# Locust imports this file by path, putting only loadtest/ on sys.path; the project root
# makes ``loadtest.*`` importable when run as ``locust -f loadtest/locustfile.py`` from anywhere.
_PROJECT_ROOT = str(Path(__file__).resolve().parent.parent)
if _PROJECT_ROOT not in sys.path:
    sys.path.insert(0, _PROJECT_ROOT)

from loadtest import payload, shapes, slo  # noqa: E402

# Locust flushes its CSV files every 5 s by default; the live charts want every second.
locust.stats.CSV_STATS_FLUSH_INTERVAL_SEC = 1

DEFAULT_TIMEOUT_S = 10.0
DEFAULT_N_FEATURES = 0


@events.init_command_line_parser.add_listener
def _add_options(parser: Any) -> None:
    # Declared on Locust's parser itself (not a group): only there are they shown, and
    # editable, in Locust's web UI, and sent from a master to its workers.
    parser.add_argument("--model-name", default="model", help="model name in /v1/models/NAME:predict (default: model)")
    parser.add_argument(
        "--samples",
        default="",
        help="samples file used as request payloads: .json (TF Serving request format), .npy, .npz (one array "
        "per input name) or .csv (flat rows); or a model with a samples.json beside it",
    )
    parser.add_argument(
        "--n-features",
        type=int,
        default=DEFAULT_N_FEATURES,
        help="without --samples: send rows of this many zeros (for targets without a samples file)",
    )
    parser.add_argument(
        "--signature",
        default="",
        help="without --samples or --n-features: generate payloads for the inputs in this signature.json "
        "(default: read them from the target's /v1/models/NAME/metadata)",
    )
    parser.add_argument("--payload-dist", default="uniform", choices=payload.DISTRIBUTIONS,
                        help="generated payloads: distribution of float inputs (default: uniform)")
    parser.add_argument("--payload-low", type=float, default=0.0, help="generated payloads: lowest float (default 0)")
    parser.add_argument("--payload-high", type=float, default=1.0, help="generated payloads: highest float (default 1)")
    parser.add_argument("--vocab-size", type=int, default=payload.DEFAULT_VOCAB_SIZE,
                        help="generated payloads: integer inputs (token ids) are drawn from 0..N-1 "
                        f"(default: {payload.DEFAULT_VOCAB_SIZE})")
    parser.add_argument(
        "--instances-per-request", type=int, default=1, help="feature rows per request body (default: 1)"
    )
    parser.add_argument(
        "--request-timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        help=f"client timeout per request in seconds; slower answers count as 'timeout' (default: {DEFAULT_TIMEOUT_S})",
    )
    parser.add_argument("--protocol", default="tfserving", choices=payload.PROTOCOLS,
                        help="tfserving: POST /v1/models/NAME:predict; v2: the Open Inference Protocol, "
                        "POST /v2/models/NAME/infer with tensors named and typed from the target's "
                        "/v2/models/NAME metadata or --signature (default: tfserving)")
    parser.add_argument("--topology-file", default="",
                        help="master: at the end, write each worker's requests, failures and peak CPU here (JSON)")
    shapes.add_shape_arguments(parser)


def spec_from_options(options: Any) -> shapes.ShapeSpec:
    """The shape the command line asked for (Locust has already parsed -u/-r/-t)."""
    return shapes.ShapeSpec(
        kind=options.shape,
        users=int(options.num_users or 1),
        spawn_rate=float(options.spawn_rate or 1),
        run_time_s=float(options.run_time or shapes.MAX_RUN_TIME_S),
        step_users=options.step_users,
        step_time_s=options.step_time,
        max_users=options.max_users,
        spike_users=options.spike_users,
        spike_at_s=options.spike_at,
        spike_duration_s=options.spike_duration,
        target_rps=options.target_rps,
    )


def _bodies(options: Any, host: str | None = None) -> tuple[bytes, ...]:
    # A worker's options lack --host: the master sends it with each spawn message (environment.host).
    return _build_bodies(options.samples, options.n_features, options.instances_per_request,
                         options.signature, host or options.host or "", options.model_name,
                         payload.PayloadSpec(options.payload_dist, options.payload_low, options.payload_high,
                                             options.vocab_size),
                         getattr(options, "protocol", "tfserving"))


@functools.cache
def _build_bodies(samples: str, n_features: int, instances_per_request: int, signature: str, host: str,
                  model_name: str, spec: payload.PayloadSpec, protocol: str = "tfserving") -> tuple[bytes, ...]:
    """Request bodies, built once per process."""
    v2_inputs = None
    if protocol == "v2":  # v2 tensors carry their input's name and datatype: the signature is needed
        v2_inputs = (payload.signature_from_file(signature) if signature
                     else payload.fetch_signature(host, model_name, protocol="v2"))
    if samples:
        rows = payload.load_samples_file(samples)
    elif n_features > 0:
        rows = [[0.0] * n_features]
    else:
        if v2_inputs is not None:
            inputs = v2_inputs
        elif signature:
            inputs = payload.signature_from_file(signature)
        elif host:
            inputs = payload.fetch_signature(host, model_name)
        else:
            raise ValueError("give --samples FILE, --n-features N, --signature FILE or a --host to read it from")
        rows = payload.generate_instances(inputs, spec)
    if v2_inputs is not None:
        return tuple(payload.build_v2_bodies(rows, instances_per_request, v2_inputs))
    return tuple(payload.build_bodies(rows, instances_per_request))


@events.init.add_listener
def _check_options(environment: Any, **_kwargs: Any) -> None:
    """Fail fast, with a one-line reason and exit code 2, on options that would make every request wrong."""
    options = environment.parsed_options
    if options is None or not options.headless:
        return  # in the web UI the options can still be changed before a start
    try:
        spec_from_options(options)
        payload.predict_path(options.model_name)
        _bodies(options)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        sys.exit(2)


@events.test_start.add_listener
def _share_pacing(environment: Any, **_kwargs: Any) -> None:
    """Fix each user's pace on the master (or the single process) from the total users.

    Workers started with ``--worker`` do not know ``-u``; custom options set here
    travel to them with every spawn message, so all users share one target rate.
    """
    options = environment.parsed_options
    if options is None or isinstance(environment.runner, WorkerRunner):
        return
    options.rate_per_user = shapes.per_user_rate(spec_from_options(options)) or 0.0


# -- distributed runs: what each worker did, as the master saw it ------------------------------------

_WORKERS: dict[str, dict[str, Any]] = {}
_ENV: list[Any] = []  # the environment, for the worker_report listener (which is not given it)


@events.init.add_listener
def _keep_environment(environment: Any, **_kwargs: Any) -> None:
    _ENV[:] = [environment]


@events.worker_report.add_listener
def _count_worker(client_id: str, data: dict[str, Any], **_kwargs: Any) -> None:
    """Each worker's requests and failures from its own stats reports (deltas), and its peak CPU."""
    w = _WORKERS.setdefault(client_id, {"id": client_id, "requests": 0, "failures": 0, "cpu_pct_max": 0.0})
    total = data.get("stats_total") or {}
    w["requests"] += int(total.get("num_requests", 0))
    w["failures"] += int(total.get("num_failures", 0))
    runner = _ENV[0].runner if _ENV else None
    node = runner.clients.get(client_id) if isinstance(runner, MasterRunner) else None
    if node is not None:
        w["cpu_pct_max"] = max(w["cpu_pct_max"], float(node.cpu_usage or 0))


@events.quitting.add_listener
def _write_topology(environment: Any, **_kwargs: Any) -> None:
    options = environment.parsed_options
    path = getattr(options, "topology_file", "") if options is not None else ""
    if not path or not isinstance(environment.runner, MasterRunner):
        return
    import json

    doc = {"role": "master", "expected_workers": int(getattr(options, "expect_workers", 0) or 0),
           "workers": sorted(_WORKERS.values(), key=lambda w: w["id"])}
    Path(path).write_text(json.dumps(doc, indent=1))


class PredictUser(FastHttpUser):
    """One client posting predictions back to back (closed loop) or paced (the rate shape)."""

    def __init__(self, environment: Any) -> None:
        options = environment.parsed_options
        # FastHttpUser builds its client from these in __init__, so set them first.
        self.network_timeout = self.connection_timeout = float(options.request_timeout)
        super().__init__(environment)
        self.expected = int(options.instances_per_request)
        self.protocol = getattr(options, "protocol", "tfserving")
        self.path = payload.request_path(options.model_name, self.protocol)
        self.bodies = _bodies(options, environment.host)
        self.cycle = itertools.cycle(self.bodies)
        rate = getattr(options, "rate_per_user", None)
        if rate is None:  # not started through a runner's test_start (e.g. a bare Environment)
            rate = shapes.per_user_rate(spec_from_options(options))
        # Open loop: each user runs at a fixed pace whatever the latency, so the offered rate stays fixed.
        self._pace = constant_throughput(rate) if rate else None

    def wait_time(self) -> float:
        return self._pace(self) if self._pace is not None else 0.0

    @task
    def predict(self) -> None:
        with self.client.post(
            self.path,
            data=next(self.cycle),
            headers={"Content-Type": "application/json"},
            name=self.path,
            catch_response=True,
        ) as response:
            reason = payload.check_response(
                response.status_code, response.content, self.expected, getattr(response, "error", None),
                self.protocol,
            )
            if reason is None:
                response.success()
            else:
                response.failure(reason)


class SwarmShape(LoadTestShape):
    """Drives users over time from ``loadtest.shapes``; -u, -r and -t keep their usual meaning."""

    use_common_options = True

    def tick(self) -> tuple[int, float] | None:
        spec = spec_from_options(self.runner.environment.parsed_options)
        return shapes.tick(spec, self.get_run_time())


# -- SLO gates inside Locust ---------------------------------------------------------------------
# A plain ``locust -f loadtest/locustfile.py --headless ... --slo 'p95<=50ms'`` (or a master in
# distributed mode) judges the gates of ``loadtest.slo`` against Locust's own totals when it quits
# and sets its exit code from them: 1 when a gate fails, 0 when all hold, as ``python -m loadtest``.

# Locust's HTML report (--html) and web UI chart these response-time percentiles; p99 is the tail gates watch.
locust.stats.PERCENTILES_TO_CHART = [0.5, 0.95, 0.99]

_GATE_PERCENTILES = {"p50_ms": 0.5, "p90_ms": 0.9, "p95_ms": 0.95, "p99_ms": 0.99}


@events.init_command_line_parser.add_listener
def _add_slo_option(parser: Any) -> None:
    parser.add_argument(
        "--slo",
        action="append",
        default=[],
        include_in_web_ui=False,
        help="gate, repeatable, e.g. 'p95<=50ms' or 'fail_ratio<=0.01'; Locust exits 1 when one fails "
        f"(metrics: {', '.join(slo.METRICS)})",
    )


def summary_from_stats(total: Any) -> dict[str, float | None]:
    """The gate figures of ``loadtest.slo`` from Locust's aggregated ``StatsEntry`` (as ``results.summarize``)."""
    requests, failures = int(total.num_requests), int(total.num_failures)
    summary: dict[str, float | None] = {
        "requests": requests,
        "failures": failures,
        "fail_ratio": failures / requests if requests else 1.0,
        "rps": float(total.total_rps) if requests else 0.0,
    }
    served = requests > failures  # Locust times failed requests too; with no success they say nothing
    for key, q in _GATE_PERCENTILES.items():
        summary[key] = float(total.get_response_time_percentile(q)) if served else None
    summary["avg_ms"] = float(total.avg_response_time) if served else None
    summary["max_ms"] = float(total.max_response_time) if served else None
    return summary


@events.init.add_listener
def _check_slos(environment: Any, **_kwargs: Any) -> None:
    options = environment.parsed_options
    if options is None:
        return
    try:
        environment.slo_gates = slo.parse_slos(getattr(options, "slo", None) or ())
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        sys.exit(2)


@events.quitting.add_listener
def _judge_slos(environment: Any, **_kwargs: Any) -> None:
    gates = getattr(environment, "slo_gates", ())
    if not gates or isinstance(environment.runner, WorkerRunner):
        return  # workers' stats are partial; the master (or the single process) judges the totals
    results = slo.evaluate(gates, summary_from_stats(environment.stats.total))
    for gate in results:
        print(slo.format_gate(gate), file=sys.stderr, flush=True)
    if not all(g.passed for g in results):
        environment.process_exit_code = max(environment.process_exit_code or 0, 1)
    elif environment.process_exit_code is None:
        # Gates stated the tolerance (e.g. fail_ratio); Locust would otherwise exit 1 on any failed request.
        environment.process_exit_code = 0
