"""Load test page: aim a Locust swarm at the endpoint (or any local URL), watch it live, read the verdict."""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path
from typing import Any

import streamlit as st

from dashboard import charts, forms, ui
from dashboard import format as fmt
from dashboard import live as live_view
from dashboard.state import get_registry, init_defaults
from loadtest import payload as payload_files
from loadtest.payload import PROTOCOLS, request_path
from loadtest.results import overload_point
from loadtest.shapes import SHAPES
from runs.registry import Registry, Run

LIVE_REFRESH_S = 1.0
SATURATION_CPU_PCT = 90.0  # Locust's own warning threshold (locust/runners.py)
MAX_REPORT_BYTES = 50 * 1024 * 1024
REPORT_LABELS = {"csv": "Stats CSV", "history_csv": "History CSV", "failures_csv": "Failures CSV", "json": "JSON",
                 "html": "HTML report", "log": "Locust log"}
KEY_PREFIX = "load."
key = ui.widget_keys(KEY_PREFIX)  # key("x") -> the page's widget key for x
TARGET_ENDPOINT = "running endpoint"
TARGET_URL = "URL"
ZEROS = "zeros"
SAMPLE_ROWS = "the model's test rows"
GENERATED = "generated from the signature"

DEFAULTS = forms.LoadForm()
init_defaults({
    key("target_kind"): TARGET_ENDPOINT, key("url"): "http://127.0.0.1:8600", key("url_model"): "model",
    key("n_features"): 64, key("payload"): ZEROS,
    key("users"): DEFAULTS.users, key("spawn_rate"): DEFAULTS.spawn_rate, key("run_time_s"): DEFAULTS.run_time_s,
    key("shape"): DEFAULTS.shape, key("step_users"): DEFAULTS.step_users, key("step_time_s"): DEFAULTS.step_time_s,
    key("max_users"): DEFAULTS.max_users, key("spike_users"): DEFAULTS.spike_users,
    key("spike_at_s"): DEFAULTS.spike_at_s,
    key("spike_duration_s"): DEFAULTS.spike_duration_s, key("target_rps"): DEFAULTS.target_rps,
    key("instances_per_request"): DEFAULTS.instances_per_request, key("processes"): DEFAULTS.processes,
    key("timeout_s"): DEFAULTS.timeout_s, key("slos"): forms.DEFAULT_SLOS, key("protocol"): DEFAULTS.protocol,
    key("expect_workers"): DEFAULTS.expect_workers,
    key("endpoint_payload"): SAMPLE_ROWS, key("gen_dist"): "uniform", key("gen_low"): 0.0, key("gen_high"): 1.0,
    key("gen_vocab"): payload_files.DEFAULT_VOCAB_SIZE,
})
registry = get_registry()
state = st.session_state


def samples_for_model(model_path: str | None) -> Path | None:
    """The samples.json beside a trained or imported model (real rows for the payload), if any;
    found the way ``python -m loadtest --serve`` finds it."""
    return payload_files.resolve_samples_path_or_none(model_path) if model_path else None


def generated_payload(host: str, model_name: str) -> Path | None:
    """The generator's widgets, and the samples file they make from the target's signature (None + an
    error shown when the spec or the target's metadata is unusable)."""
    c1, c2, c3, c4 = st.columns(4)
    dist = c1.selectbox("Distribution", payload_files.DISTRIBUTIONS, key=key("gen_dist"),
                        help="payload_dist: how float inputs are drawn (normal: centred, sd a quarter of the "
                             "range, clipped to it; zeros: all zero)")
    low = c2.number_input("Low", value=None, step=0.1, key=key("gen_low"), format="%g",
                          help="payload_low: the lowest float value generated")
    high = c3.number_input("High", value=None, step=0.1, key=key("gen_high"), format="%g",
                           help="payload_high: the highest float value generated")
    vocab = c4.number_input("Vocabulary size", 1, 10_000_000, step=1, key=key("gen_vocab"),
                            help="vocab_size: integer inputs (token ids) are drawn from 0..N-1")
    try:
        spec = payload_files.PayloadSpec(str(dist), float(low), float(high), int(vocab))
        path = forms.generated_samples_path(host, model_name, spec, registry.home)
    except ValueError as exc:
        st.error(str(exc).splitlines()[0], icon=":material/block:")
        return None
    st.caption(f"{payload_files.GENERATED_ROWS} rows generated from {model_name}'s input signature "
               f"({spec.distribution} {spec.low:g}..{spec.high:g}, integer ids below {spec.vocab_size})")
    return path


def serve_model_path(serve: Run) -> str | None:
    cfg = serve.config
    return cfg.get("model_path") or cfg.get("model") or serve.summary.get("model_path")


st.title(":material/speed: Load test")
st.caption("Locust swarms against TF Serving's REST API or the Open Inference Protocol (v2). "
           "Closed-loop users slow down with the server; "
           "the open-loop *rate* shape keeps offering load and shows overload as it is.")

# -- target ----------------------------------------------------------------------------------

endpoints = [r for r in registry.list_runs(kind="serve", status=("running", "pending")) if r.summary.get("url")]
st.subheader("Target")
url_run = st.query_params.get(ui.RUN_PARAM)  # "Swarm this endpoint" (Serve page) links here with ?run=ENDPOINT
if url_run in {e.id for e in endpoints} and state.get(key("target_for")) != url_run:
    state[key("target_kind")] = TARGET_ENDPOINT
state[key("target_for")] = url_run
target_kind = st.radio(
    "Target", (TARGET_ENDPOINT, TARGET_URL), key=key("target_kind"), horizontal=True,
    help="target: the endpoint started on the Serve page (its model's real test rows are the payload), "
         "or any local TF Serving-compatible URL",
)
host, model_name, samples_path, n_features, serve_run = "", "model", None, 0, None
if target_kind == TARGET_ENDPOINT:
    if not endpoints:
        st.info("No endpoint is running. Start one on the **Serve** page, or choose *URL*.")
    else:
        serve_run = ui.run_picker("Endpoint", ui.hide_sub_runs(endpoints, key("show_sub_endpoints")),
                                  key=key("endpoint"), names=fmt.model_names(registry.list_runs(kind="train")),
                                  help="which running endpoint to swarm")
        if serve_run is not None:
            host = str(serve_run.summary.get("url", ""))
            model_name = str(serve_run.summary.get("name") or serve_run.config.get("name") or "model")
            samples_path = samples_for_model(serve_model_path(serve_run))
            if samples_path:
                st.caption(f"payload rows from {samples_path.parent.name}")
            choices = (SAMPLE_ROWS, GENERATED) if samples_path else (GENERATED,)
            if state[key("endpoint_payload")] not in choices:
                state[key("endpoint_payload")] = choices[0]
            if st.radio("Payload", choices, key=key("endpoint_payload"), horizontal=True,
                        help="payload: the rows saved beside the model (real held-out rows, or the samples an "
                             "import generated), or new rows generated from the endpoint's input signature "
                             "with the distribution and range below") == GENERATED:
                samples_path = generated_payload(host, model_name)
else:
    c1, c2, c3 = st.columns([3, 1, 1])
    host = c1.text_input("URL", key=key("url"),
                         help="host: base URL of a TF Serving-compatible REST endpoint (local only), "
                              "e.g. http://127.0.0.1:8600")
    model_name = c2.text_input("Model name", key=key("url_model"),
                               help="model_name: the {name} in /v1/models/{name}:predict")
    trained = [r for r in registry.list_runs(kind="train", status=("completed", "stopped"))
               if samples_for_model(r.summary.get("model_path"))]
    by_id = {r.id: r for r in trained}
    if state[key("payload")] not in (GENERATED, *by_id):
        state[key("payload")] = ZEROS  # the chosen run was deleted
    payload = st.selectbox(
        "Payload rows", [ZEROS, GENERATED, *by_id], key=key("payload"),
        format_func=lambda i: {ZEROS: "rows of zeros", GENERATED: f"rows {GENERATED}"}.get(i) or
        f"test rows of {by_id[i].name} · {by_id[i].id}",
        help="samples: real held-out rows of a trained model (use the model this URL serves), rows generated "
             "from the URL's own input signature (its /v1/models/NAME/metadata), or rows of zeros of the given "
             "width",
    )
    if payload in by_id:
        samples_path = samples_for_model(by_id[payload].summary.get("model_path"))
    elif payload == GENERATED:
        samples_path = generated_payload(host, model_name)
    else:
        n_features = int(c3.number_input("Features", 1, 100_000, step=1, key=key("n_features"),
                                         help="n_features: width of the all-zeros rows sent when no model "
                                              "samples are given"))

protocol = st.radio(
    "Protocol", PROTOCOLS, key=key("protocol"), horizontal=True,
    format_func=lambda p: {"tfserving": "TF Serving REST (v1)", "v2": "Open Inference Protocol (v2)"}[p],
    help="protocol: tfserving posts {\"instances\": ...} to /v1/models/{name}:predict; v2 posts named, typed "
         "tensors to /v2/models/{name}/infer (Triton, KServe, MLServer; the embedded endpoint speaks both), "
         "their names and datatypes read from the target's /v2/models/{name} metadata",
)
if host and model_name:
    with contextlib.suppress(ValueError):  # a bad model name: the form check below says so
        # Code, not a link: a click would send a GET to :predict (405).
        st.caption(f"POST `{host.rstrip('/')}{request_path(model_name.strip(), protocol)}`")

# -- swarm knobs -----------------------------------------------------------------------------

st.subheader("Swarm")
c1, c2, c3, c4 = st.columns(4)
c1.number_input("Users", 1, forms.MAX_USERS, step=1, key=key("users"),
                help="users: concurrent simulated clients (closed loop: each waits for its answer before the "
                     "next request); for steps, the ladder's first rung; for spike, the baseline")
c2.number_input("Spawn rate (users/s)", 0.0, 1000.0, step=1.0, key=key("spawn_rate"),
                help="spawn_rate: users started per second at the beginning of the run; must be > 0")
c3.number_input("Duration (s)", 1, forms.MAX_RUN_TIME_S, step=5, key=key("run_time_s"),
                help="run_time: how long the swarm runs; reports keep whatever was measured if stopped early")
c4.selectbox("Shape", SHAPES, key=key("shape"), format_func=lambda s: s if s != "rate" else "rate (open loop)",
             help="shape: " + "; ".join(f"{k}: {v}" for k, v in forms.SHAPE_HELP.items()))
shape = state[key("shape")]
st.caption(forms.SHAPE_HELP[shape])
if shape == "steps":
    s1, s2, s3 = st.columns(3)
    s1.number_input("Users per step", 1, forms.MAX_USERS, key=key("step_users"),
                    help="step_users: users added at each rung of the ladder")
    s2.number_input("Step duration (s)", 0.5, 3600.0, step=1.0, key=key("step_time_s"),
                    help="step_time: seconds spent on each rung")
    s3.number_input("Top of the ladder (users)", 1, forms.MAX_USERS, key=key("max_users"),
                    help="max_users: the ladder stops climbing here and holds")
elif shape == "spike":
    s1, s2, s3 = st.columns(3)
    s1.number_input("Spike users", 1, forms.MAX_USERS, key=key("spike_users"),
                    help="spike_users: users during the spike (the baseline is the user count)")
    s2.number_input("Spike at (s)", 0.0, 3600.0, step=1.0, key=key("spike_at_s"),
                    help="spike_at: seconds into the run when the spike starts")
    s3.number_input("Spike duration (s)", 0.5, 3600.0, step=1.0, key=key("spike_duration_s"),
                    help="spike_duration: how long the spike lasts")
elif shape == "rate":
    st.number_input("Target rate (requests/s)", 0.0, 100_000.0, step=50.0, key=key("target_rps"),
                    help="target_rps: offered request rate, split across the users (each paced with "
                         "constant_throughput); above capacity this shows 503s or queueing, not a slowdown")
c1, c2, c3 = st.columns(3)
c1.number_input("Instances per request", 1, forms.MAX_INSTANCES_PER_REQUEST, key=key("instances_per_request"),
                help="instances_per_request: rows in each :predict body; more rows = fewer, bigger requests")
c2.number_input("Locust processes", 1, forms.MAX_PROCESSES, key=key("processes"),
                help="processes: Locust worker processes (one core each, ~3k req/s per core here); "
                     "raise it when the saturation warning shows")
c3.number_input("Request timeout (s)", 0.1, 120.0, step=0.5, key=key("timeout_s"),
                help="timeout: a request slower than this counts as a failure (timeout)")
st.number_input("Workers started elsewhere (distributed)", 0, forms.MAX_PROCESSES, key=key("expect_workers"),
                help="expect_workers: 0 runs Locust here; N > 0 runs it as a master that starts the swarm once N "
                     "workers have connected (set Locust processes to 1); the command each worker runs is shown "
                     "below")
st.text_area("SLOs (one per line)", key=key("slos"), height=90,
             help="slo: gates judged on the finished run, e.g. p95<=50ms, p99<=100ms, fail_ratio<=0.01, "
                  "rps>=500; the verdict shows PASS/FAIL per line")

form = forms.LoadForm(
    host=host or "", model_name=model_name or "", users=int(state[key("users")]),
    spawn_rate=float(state[key("spawn_rate")]),
    run_time_s=int(state[key("run_time_s")]), shape=shape, step_users=int(state[key("step_users")]),
    step_time_s=float(state[key("step_time_s")]), max_users=int(state[key("max_users")]),
    spike_users=int(state[key("spike_users")]), spike_at_s=float(state[key("spike_at_s")]),
    spike_duration_s=float(state[key("spike_duration_s")]), target_rps=float(state[key("target_rps")]),
    instances_per_request=int(state[key("instances_per_request")]), processes=int(state[key("processes")]),
    timeout_s=float(state[key("timeout_s")]), slos=state[key("slos")], protocol=protocol,
    expect_workers=int(state[key("expect_workers")]),
)
check = forms.load_check(form, samples_path=samples_path, n_features=n_features)
ui.show_check(check)
config: Any = None
if check.ok:
    try:  # checked just above; only a samples.json deleted in between could fail here
        config = forms.loadtest_config(form, samples_path=samples_path, n_features=n_features)
    except ValueError as exc:
        st.error(str(exc).splitlines()[0], icon=":material/block:")
if config is not None and config.expect_workers:
    from loadtest.runner import worker_command

    st.info(f"Locust will wait for {config.expect_workers} workers. On each worker machine run:",
            icon=":material/hub:")
    st.code(" ".join(worker_command(config)), language="bash")
if config is not None:
    with st.expander("Config to run"):
        st.json(config.to_dict())

if st.button("Start swarm", key=key("start"), type="primary", icon=":material/play_arrow:",
             disabled=config is None, help="Start Locust headless as a background job with these settings"):
    from loadtest.runner import start_loadtest

    try:
        run_id = start_loadtest(registry, config, serve_run_id=serve_run.id if serve_run else None,
                                name=f"swarm {form.shape} {form.users}u → {model_name}")
    except (ValueError, OSError) as exc:
        st.error(f"Could not start the swarm: {exc}")
    else:
        ui.show_next(key("view"), run_id)
        st.rerun()

# -- a run -----------------------------------------------------------------------------------

st.divider()


def _stop(registry: Registry, run_id: str) -> object:
    from loadtest.runner import stop_loadtest

    return stop_loadtest(registry, run_id)


def _frames(registry: Registry, run: Run) -> list[dict[str, Any]]:
    """The run's per-second frames (client and server metrics share the step = second)."""
    return registry.metric_rows(run.id)


def _chart(registry: Registry, run: Run, chart_key: str) -> list[dict[str, Any]]:
    rows = _frames(registry, run)
    limits = forms.slo_limits_ms(run.config.get("slos") or [])
    st.plotly_chart(charts.loadtest_figure(rows, slo_lines=limits), key=chart_key, config={"displaylogo": False})
    return rows


def _live(run: Run) -> None:
    ui.status_line(run)
    rows = _frames(registry, run)
    # Locust's rows land a second or two after the CPU and server samples of the same second:
    # each tile shows the newest value that exists for its own figure.
    last = live_view.latest_figures(rows)
    total = float(run.config.get("run_time_s") or 0)
    elapsed = float(rows[-1].get("step", 0)) if rows else 0.0
    frac, text = live_view.elapsed_progress(elapsed, total)
    st.progress(frac, text=text)
    m = st.columns(5)
    m[0].metric("users", _n(last["users"], ".0f"), help="simulated users now")
    m[1].metric("requests/s", _n(last["rps"], ".0f"), help="requests completed in the last second")
    m[2].metric("p95", _n(last["p95_ms"], ".1f", " ms"), help="Locust's current-window 95th percentile")
    m[3].metric("failures/s", _n(last["fail_per_s"], ".1f"), help="failed requests in the last second")
    m[4].metric("Locust CPU", _n(last["locust_cpu_pct"], ".0f", " %"),
                help="CPU use of Locust's processes; near 100% the numbers measure Locust, not the server")
    cpu = last["locust_cpu_pct"]
    if cpu is not None and cpu >= SATURATION_CPU_PCT:
        st.warning(f"Locust is using {cpu:.0f}% CPU: the load generator is saturated, so these numbers "
                   "measure Locust, not the server. Add Locust processes or lower the user count.")
    limits = forms.slo_limits_ms(run.config.get("slos") or [])
    st.plotly_chart(charts.loadtest_figure(rows, slo_lines=limits), key=key("live_chart"),
                    config={"displaylogo": False})
    ui.stop_button(registry, run, key=key("stop"), stopper=_stop)


def _n(value: Any, spec: str, unit: str = "") -> str:
    return "—" if value is None else f"{format(float(value), spec)}{unit}"


def _results(registry: Registry, run: Run) -> None:
    s = run.summary
    if s.get("saturated"):
        st.warning(f"Load generator saturated: {s.get('saturation_reason') or 'Locust ran out of CPU'}. "
                   "This run measured Locust, not the server; rerun with more Locust processes.")
    # A failed run's reason is on its status line already (a dead target's verdict is that reason): once.
    if s.get("verdict") and not (run.status == "failed" and run.error and s["verdict"] in run.error):
        {"error": st.error, "success": st.success}.get(fmt.verdict_kind(run), st.info)(s["verdict"])
    if "requests" in s:
        m = st.columns(6)
        m[0].metric("requests", f"{int(s.get('requests') or 0):,}", help="requests completed in the run")
        m[1].metric("requests/s", _n(s.get("rps"), ".0f"), help="mean throughput over the run")
        m[2].metric("p50", _n(s.get("p50_ms"), ".1f", " ms"), help="median latency seen by Locust")
        m[3].metric("p95", _n(s.get("p95_ms"), ".1f", " ms"), help="95th percentile latency")
        m[4].metric("p99", _n(s.get("p99_ms"), ".1f", " ms"), help="99th percentile latency")
        m[5].metric("failure ratio", _n(s.get("fail_ratio"), ".2%") if s.get("fail_ratio") is not None else "—",
                    help="failed / all requests")
        table = {k: s.get(k) for k in ("requests", "failures", "fail_ratio", "rps", "offered_rps", "p50_ms", "p90_ms",
                                       "p95_ms", "p99_ms", "avg_ms", "max_ms", "shed", "locust_cpu_pct")
                 if k in s}
        server = s.get("server") or {}
        table.update({f"server {k}": v for k, v in server.items()})
        st.markdown("**Summary**")
        st.dataframe([{"metric": k, "value": v} for k, v in table.items()], hide_index=True, key=key("summary"),
                     height=220)
    workers = (s.get("topology") or {}).get("workers") or []
    if workers:
        st.markdown(f"**Workers** ({len(workers)} connected; their requests add up to "
                    f"{sum(w['requests'] for w in workers):,})")
        st.dataframe([{"worker": w["id"], "requests": w["requests"], "failures": w["failures"],
                       "peak CPU %": w["cpu_pct_max"],
                       "saturated": "yes: measured Locust" if w["cpu_pct_max"] >= SATURATION_CPU_PCT else "no"}
                      for w in workers], hide_index=True, key=key("workers"))
    _chart(registry, run, key("result_chart"))
    if s.get("offered_rps"):
        _overload(registry, run)
    c1, c2 = st.columns(2)
    with c1:
        st.markdown("**Failures by reason**")
        reasons = s.get("failures_by_reason") or {}
        if reasons:
            st.dataframe([{"reason": k, "count": v} for k, v in sorted(reasons.items(), key=lambda kv: -kv[1])],
                         hide_index=True, key=key("failures"))
        else:
            st.caption("no failures")
    with c2:
        st.markdown("**SLO gates**")
        gates = s.get("slo") or []
        if gates:
            st.dataframe([{"gate": g.get("expr"), "measured": g.get("measured"), "limit": g.get("limit"),
                           "verdict": "PASS" if g.get("passed") else "FAIL"} for g in gates],
                         hide_index=True, key=key("gates"))
        else:
            st.caption("no SLOs set for this run")
    reports = s.get("reports") or {}
    if reports:
        mimes = {"csv": "text/csv", "json": "application/json", "html": "text/html", "history_csv": "text/csv"}
        items = sorted(reports.items())
        # Three to a row, short labels: six buttons in one row cut their labels ("failures csv re...").
        cols = [c for _ in range(0, len(items), 3) for c in st.columns(3)]
        for col, (kind, path) in zip(cols, items, strict=False):
            p = Path(path)
            if p.is_file() and p.stat().st_size <= MAX_REPORT_BYTES:
                col.download_button(REPORT_LABELS.get(kind, kind), p.read_bytes(), file_name=p.name,
                                    mime=mimes.get(kind, "application/octet-stream"), key=key(f"dl.{kind}"),
                                    icon=":material/download:",
                                    help=f"Locust's {kind} output for this run ({p.name})")


def _overload(registry: Registry, run: Run) -> None:
    """Open-loop runs against the same target: goodput and 503s against the offered rate."""
    host = run.config.get("host")
    same = [r for r in registry.list_runs(kind="loadtest")
            if r.config.get("host") == host and r.status == "completed"]
    points = [p for p in (overload_point(r.summary) for r in same) if p is not None]
    st.plotly_chart(charts.overload_figure(points, current=run.summary.get("offered_rps")),
                    key=key("overload_chart"), config={"displaylogo": False})
    st.caption(f"One point per completed rate run against {host}. Run the rate shape below, near and far above "
               "capacity to see where goodput stops following the offered rate and 503s take over.")


load_runs = ui.hide_sub_runs(registry.list_runs(kind="loadtest"), key("show_sub_runs"))
ui.run_view("Load-test run", load_runs, key=key("view"), help="which swarm to show; a running one updates live",
            empty_text="No load tests yet. Pick a target and press **Start swarm**.",
            live=_live, results=functools.partial(_results, registry), refresh_s=LIVE_REFRESH_S,
            registry=registry)
