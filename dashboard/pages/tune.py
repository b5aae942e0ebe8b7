"""Tune page: sweep serving configs under load, read the curves, take the recommendation.

A sweep runs as a job (``tuning.sweep.start``); this page starts it,
follows it live from the registry, and recomputes the recommendation on the
recorded points whenever the constraints or objective below are changed (no
re-measuring). "Apply" restarts the endpoint with the recommended config.
"""

from __future__ import annotations

from typing import Any

import streamlit as st

from agent.data import BUILTIN_DATASETS
from agent.model import FAMILIES, WEIGHT_INITS
from agent.serving.config import RUNTIMES
from dashboard import charts_tuning as ct
from dashboard import format as fmt
from dashboard import ui
from dashboard.state import get_registry, init_defaults
from runs.registry import Registry, Run
from tuning.points import Point
from tuning.recommend import OBJECTIVES, Constraints, recommend

KEY_PREFIX = "tune."
key = ui.widget_keys(KEY_PREFIX)  # key("x") -> the page's widget key for x
LIVE_REFRESH_S = 2.0
PLOT_CONFIG = {"displaylogo": False}
OBJECTIVE_HELP = {
    "throughput": "the most requests/s a config sustains within the SLO",
    "latency": "the lowest latency at one load level",
    "cpu": "the least server CPU per request (capacity per core)",
}

init_defaults({
    key("runtime"): ["tflite"], key("max_batch_size"): "1,8,32", key("batch_timeout_ms"): "0,2",
    key("num_batch_threads"): "1", key("workers"): "1", key("users"): "1,16,64", key("rates"): "",
    key("slos"): "p95<=50ms\nfail_ratio<=0.01",
    key("objective"): "throughput", key("strategy"): "grid", key("step_s"): 8,
    key("m_hidden"): "32,128x128", key("m_activation"): ["relu", "tanh"], key("m_lr"): "0.001", key("m_epochs"): 3,
    key("m_users"): 16, key("m_dataset"): "digits", key("m_family"): [], key("m_weight_init"): [],
    key("c_url"): "http://127.0.0.1:8600", key("c_model"): "model", key("c_protocol"): "tfserving",
    key("c_users"): "1,8,32,64", key("c_slos"): "p95<=50ms\nfail_ratio<=0.01", key("c_step_s"): 5,
})
registry = get_registry()

st.title(":material/tune: Tune")
st.caption("Sweep serving parameters up a concurrency ladder, then ship the config with the most capacity within "
           "your SLO — or weigh model accuracy against what it costs under load.")


def _models(registry: Registry) -> dict[str, Run]:
    """Trained models a person made (not a model sweep's): run id -> run, newest first."""
    return {run.id: run for run in registry.list_runs(kind="train", status="completed", limit=100)
            if run.summary.get("model_path") and not fmt.is_sub_run(run)}


def _linked_model(registry: Registry, models: dict[str, Run]) -> str | None:
    """The model a link names (``?run=`` a training run, or an endpoint serving one), if it is in ``models``."""
    run_id = st.query_params.get(ui.RUN_PARAM)
    if not run_id or run_id in models:
        return run_id if run_id in models else None
    try:
        linked = registry.get_run(run_id)
    except KeyError:
        return None
    path = linked.config.get("model_path") if linked.kind == "serve" else None
    return next((i for i, r in models.items() if path and r.summary.get("model_path") == path), None)


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.replace(";", "\n").splitlines() if line.strip()]


def _sweep_spec(model_path: str) -> Any:
    """The form as a SweepSpec, or the one-line reason it is not one."""
    from tuning.ladder import parse_levels
    from tuning.space import SearchSpace, parse_grid_arg
    from tuning.sweep import SweepSpec

    state = st.session_state
    try:
        grid = {"runtime": tuple(state[key("runtime")])} if state[key("runtime")] else {}
        for name in ("max_batch_size", "batch_timeout_ms", "num_batch_threads", "workers"):
            param, values = parse_grid_arg(f"{name}={state[key(name)]}")
            grid[param] = values
        space = SearchSpace.from_mapping(grid)
        rates = parse_levels(state[key("rates")], what="rates") if state[key("rates")].strip() else ()
        spec = SweepSpec(model_path=model_path, space=space.to_dict(), users=parse_levels(state[key("users")]),
                         rates=rates,
                         slos=tuple(_lines(state[key("slos")])), objective=state[key("objective")],
                         strategy=state[key("strategy")], step_s=float(state[key("step_s")]))
    except ValueError as exc:
        return str(exc).splitlines()[0]
    return spec


def _start_sweep(spec: Any) -> None:
    from tuning.sweep import start

    if isinstance(spec, str):
        st.error(spec)
        return
    ui.show_next(key("sweep"), start(registry, spec))
    st.rerun()


# -- start a sweep -----------------------------------------------------------------------

models = _models(registry)
linked_model = _linked_model(registry, models)
if linked_model and st.session_state.get(key("model_for")) != linked_model:  # "Tune it" from Train or Serve
    st.session_state[key("model")] = linked_model
st.session_state[key("model_for")] = linked_model
if st.session_state.get(key("model")) not in models and models:
    st.session_state[key("model")] = next(iter(models))
with st.expander("New serving sweep", expanded=bool(linked_model) or not registry.list_runs(kind="sweep", limit=1)):
    if not models:
        st.info("Train a model on the **Train** page first; its bundle (model + samples) is what gets served.")
    else:
        model_id = st.selectbox("Model", list(models), key=key("model"), format_func=lambda i: fmt.run_label(models[i]),
                                help="model: a trained model bundle; its samples.json is the request payload")
        c1, c2, c3 = st.columns(3)
        c1.multiselect("Runtimes", RUNTIMES, key=key("runtime"),
                       help="runtime: the engines to compare (each one is a separate config)")
        c2.text_input("max_batch_size values", key=key("max_batch_size"),
                      help="max_batch_size: comma-separated; 1 = batching off (the untuned baseline)")
        c3.text_input("batch_timeout_ms values", key=key("batch_timeout_ms"),
                      help="batch_timeout_ms: how long a partial batch waits for more rows")
        c1.text_input("num_batch_threads values", key=key("num_batch_threads"),
                      help="num_batch_threads: model executions that may run in parallel")
        c2.text_input("workers values", key=key("workers"), help="workers: server processes sharing the port")
        c3.text_input("Users ladder", key=key("users"),
                      help="users: rising concurrency levels; one short Locust step each, stopping early when the "
                           "SLO breaks or throughput grows less than 5%")
        c3.text_input("Open-loop rates (optional)", key=key("rates"),
                      help="rates: rising offered requests/s, e.g. 500,1000,2000; replaces the users ladder with "
                           "Locust's open-loop rate shape, so overload shows as shed requests and latency")
        c1.text_area("SLO (one per line)", key=key("slos"), height=80,
                     help="slos: e.g. p95<=50ms, p99<=100ms, fail_ratio<=0.01, rps>=500")
        objective = c2.selectbox("Objective", OBJECTIVES, key=key("objective"),
                                 help="objective: what 'best' means among the configs that meet the SLO — "
                                      + "; ".join(f"{o}: {text}" for o, text in OBJECTIVE_HELP.items()))
        c2.caption(OBJECTIVE_HELP[objective])  # beside the box, not in it: a narrow box cuts its text
        c2.selectbox("Strategy", ("grid", "coordinate"), key=key("strategy"),
                     help="strategy: grid measures every combination; coordinate tunes one parameter at a time")
        c3.slider("Seconds per step", 3, 30, key=key("step_s"),
                  help="step_s: load duration per ladder step; short steps keep the sweep to minutes")
        b1, b2 = st.columns([1, 4])
        spec_or_error = _sweep_spec(models[model_id].summary["model_path"])
        if b1.button("Start sweep", key=key("start"), type="primary", icon=":material/play_arrow:",
                     help="Start the sweep as a job; it keeps running if you leave the page"):
            _start_sweep(spec_or_error)
        if isinstance(spec_or_error, str):
            b2.caption(f"Cannot start yet: {spec_or_error}")
        else:
            from tuning.sweep import estimate

            b2.caption(f"Estimated duration: {estimate(spec_or_error).text()}; the ladder often stops sooner.")

# -- one sweep ---------------------------------------------------------------------------

sweeps = [r for r in registry.list_runs(kind="sweep", limit=200) if r.config.get("mode", "serving") == "serving"]
st.divider()
st.subheader("Serving sweeps")
if not sweeps:
    st.info("No sweep yet. Start one above, or from a shell: `python -m tuning --model PATH.keras "
            "--grid max_batch_size=1,8,32 --users 1,8,32 --slo 'p95<=50ms'`.")
run = ui.run_picker("Sweep", sweeps, key=key("sweep"), help="sweep: a recorded (or running) serving sweep")


def _points(run: Run) -> list[Point]:
    return [Point.from_dict(d) for d in run.summary.get("points", [])]


def _progress(run: Run) -> None:
    p = run.progress or {}
    done, total = int(p.get("configs_done") or 0), int(p.get("configs_total") or 0)
    text = f"{p.get('phase', 'starting')}: {p.get('config', '')}"
    if p.get("load"):
        text += f" at {p['load']}"
    text += f" — {done}/{total} configs, {p.get('points', 0)} points"
    if p.get("resumed_points"):
        text += f" ({p['resumed_points']} kept from before a restart)"
    st.progress(min(done / total, 1.0) if total else 0.0, text=text)
    if p.get("phase") == "verifying finalists":
        st.info("The search is done. Verifying finalists: the best configs (and batching off) are measured again, "
                "back to back under the same background load, so the recommendation is not a lucky step. "
                "This takes one load step per level of each finalist.", icon=":material/fact_check:")


def _curves(points: list[Point], constraints: Constraints, best_id: str | None, slo_key: str) -> None:
    if not points:
        st.caption("No finished points yet.")
        return
    limit = next((s.limit for s in constraints.slos if s.summary_key == slo_key), None)
    c1, c2 = st.columns(2)
    c1.plotly_chart(ct.latency_throughput_figure(points, percentile=slo_key, slo_ms=limit, highlight=best_id),
                    key=key("curve"), config=PLOT_CONFIG)
    rows = ct.capacity_rows(points, constraints.meets, best_id)
    c2.plotly_chart(ct.cpu_per_request_figure(rows), key=key("cpu"), config=PLOT_CONFIG)
    st.plotly_chart(ct.parallel_coordinates_figure(rows), key=key("parcoords"), config=PLOT_CONFIG)
    st.download_button("Download curves (HTML)", ct.figure_html(ct.latency_throughput_figure(
        points, percentile=slo_key, slo_ms=limit, highlight=best_id)), file_name="latency_throughput.html",
        mime="text/html", key=key("dl_curve"), help="the latency-vs-throughput chart as a standalone HTML file")


def _table(points: list[Point], constraints: Constraints, verified: list[Point] | None = None) -> None:
    tagged = [("search", p) for p in points] + [("re-measured", p) for p in verified or []]
    rows = [{"pass": tag, "config": p.label, "load": p.load_text, "req/s": round(p.rps, 1), "p50 ms": p.p50_ms,
             "p95 ms": p.p95_ms, "p99 ms": p.p99_ms, "fail": p.fail_ratio, "queue ms": p.queue_ms,
             "batch": p.batch_size,
             "CPU µs/req": None if p.cpu_ms_per_request is None else round(p.cpu_ms_per_request * 1000),
             "within SLO": constraints.meets(p), "Locust saturated": p.saturated} for tag, p in tagged]
    st.dataframe(rows, hide_index=True, key=key("points"))


def _live(live: Run) -> None:
    ui.status_line(live)
    _progress(live)
    spec_slos = live.config.get("spec", {}).get("slos", [])
    constraints = Constraints.parse(spec_slos)
    points = _points(live)
    _curves(points, constraints, None, constraints.latency_key)
    _table(points, constraints)
    ui.stop_button(registry, live, key=key("stop"))


def _apply(run: Run, params: dict[str, Any]) -> None:
    """Restart the endpoint for this model with the recommended config, in the background (same URL)."""
    from agent.serving.process import restart_endpoint
    from tuning.points import config_label
    from tuning.sweep import MODEL_NAME, SweepSpec

    spec = SweepSpec.from_dict(run.config["spec"])
    config = spec.serving_config(params)
    try:
        run_id = restart_endpoint(registry, spec.model_path, config, name=MODEL_NAME)
    except (RuntimeError, ValueError, OSError) as exc:
        st.error(f"could not start the endpoint: {str(exc).splitlines()[0]}")
        return
    st.session_state[key("applied")] = fmt.apply_message(run_id, MODEL_NAME, config.to_dict(), config_label(params))
    ui.show_next("serve.endpoint", run_id)  # the Serve page opens on it


def _ship(run: Run, config: Any, label: str) -> None:
    """Ship section: the swept model with the recommended config as a TF Serving bundle."""
    from tuning.ship import ship_dir

    def write() -> None:
        from tuning.ship import ship_sweep

        ship_sweep(registry, run.id, config=config, label=label)

    st.markdown("#### Ship to TensorFlow Serving")
    st.caption(f"The swept model as a SavedModel with {label}'s batching. TF Serving honours max_batch_size, "
               "batch_timeout, allowed_batch_sizes, num_batch_threads, max_enqueued_batches and the TF thread "
               "counts; runtime, workers and the body limits are TuneSwarm's own (SERVE.md says what to do instead).")
    ui.ship_section(ship_dir(registry, run.id), write, key=key(f"ship.{run.id}"), what="the swept model")


def _recommendation(run: Run, points: list[Point], verified: list[Point]) -> None:
    from tuning.exports import serving_config_json, tf_serving_batching_text
    from tuning.sweep import SweepSpec

    spec = SweepSpec.from_dict(run.config["spec"])
    st.markdown("#### Recommendation")
    c1, c2, c3 = st.columns([2, 1, 1])
    slo_key, obj_key = key(f"slo_text.{run.id}"), key(f"objective.{run.id}")
    init_defaults({slo_key: "\n".join(spec.slos), obj_key: spec.objective})
    slo_text = c1.text_area("Constraints", key=slo_key, height=80,
                            help="slos: change them to re-rank the recorded points (nothing is re-measured)")
    objective = c2.selectbox("Objective", OBJECTIVES, key=obj_key, help="objective: what 'best' means")
    at_users = None
    if objective == "latency":
        levels = sorted({p.level for p in points})
        at_users = c3.selectbox("At load level", levels, index=len(levels) - 1, key=key(f"at.{run.id}"),
                                help="at_users: the load level latencies are compared at (users, or offered req/s "
                                     "for an open-loop sweep)")
    try:
        constraints = Constraints.parse(_lines(slo_text))
        rec = recommend(verified or points, constraints, objective, at_users=at_users)
    except ValueError as exc:
        st.error(str(exc).splitlines()[0])
        return
    if verified:
        st.caption(f"Ranked on the re-measurement of the search's {len({p.config_id for p in verified})} finalists "
                   "(measured back to back, under the same background load); the curves show the search pass.")
    if rec.best is None:
        st.error(" ".join(rec.explanation), icon=":material/error:")
        _curves(points, constraints, None, constraints.latency_key)
        _table(points, constraints, verified)
        return
    best = rec.best
    m = st.columns([2, 1, 1, 1])
    # Markdown, not a metric: a config label is longer than a metric tile shows, and it must be read whole.
    m[0].markdown(f"Recommended\n\n#### **{best.label}**",
                  help="the config that best meets the objective within the constraints")
    m[1].metric("Capacity within SLO", f"{best.capacity_rps:.0f} req/s",
                help="the highest throughput this config reached with every constraint met")
    m[2].metric("Per core (CPU)", "n/a" if best.capacity_per_core is None else f"{best.capacity_per_core:.0f} req/s",
                help="1 s / server CPU time per request at that load: what one core would sustain")
    speedup = rec.speedup_vs_baseline
    m[3].metric("vs batching off", "n/a" if speedup is None else f"{speedup:.1f}x",
                help="capacity within SLO relative to the max_batch_size=1 config of this sweep")
    for line in rec.explanation:
        st.markdown(f"- {line}")
    config = spec.serving_config(best.params)
    d1, d2, d3 = st.columns(3)
    d1.download_button("serving_config.json", serving_config_json(config), file_name="serving_config.json",
                       mime="application/json", key=key("dl_json"), icon=":material/download:",
                       help="for python -m agent.serving --config serving_config.json")
    d2.download_button("batching_parameters.txt", tf_serving_batching_text(config), file_name="batching_parameters.txt",
                       mime="text/plain", key=key("dl_tfs"), icon=":material/download:",
                       help="TF Serving BatchingParameters (text format) for --batching_parameters_file")
    if d3.button("Apply: restart the endpoint", key=key("apply"), type="primary", icon=":material/restart_alt:",
                 help="stop the endpoint serving this model (if any) and start it with the recommended config"):
        _apply(run, best.params)
    if st.session_state.get(key("applied")):
        st.success(st.session_state[key("applied")], icon=":material/check_circle:")
    _ship(run, config, best.label)
    with st.expander("Recommended config", expanded=False):
        st.json(config.to_dict())
    _curves(points, constraints, best.config_id, constraints.latency_key)
    _table(points, constraints, verified)


if run is not None:
    if run.active:
        ui.live_fragment(registry, run.id, _live, LIVE_REFRESH_S)
    else:
        ui.status_line(run)
        pts = _points(run)
        if not pts:
            st.info("This sweep recorded no points" + (f": {run.error}" if run.error else "."))
        else:
            _recommendation(run, pts, [Point.from_dict(d) for d in run.summary.get("verify_points", [])])

# -- capacity of a running endpoint ----------------------------------------------------------


def _start_capacity() -> None:
    from urllib.parse import urlsplit

    from dashboard.forms import LOCAL_HOSTS
    from tuning.capacity import CapacitySpec, start
    from tuning.ladder import parse_levels

    state = st.session_state
    url = state[key("c_url")].strip()
    if urlsplit(url).hostname not in LOCAL_HOSTS:
        st.error(f"only local targets ({', '.join(LOCAL_HOSTS)}) may be load-tested here; got {url!r}")
        return
    try:
        spec = CapacitySpec(host=url, model_name=state[key("c_model")].strip(), protocol=state[key("c_protocol")],
                            users=parse_levels(state[key("c_users")]), slos=tuple(_lines(state[key("c_slos")])),
                            step_s=float(state[key("c_step_s")]))
    except ValueError as exc:
        st.error(str(exc).splitlines()[0])
        return
    state[key("csweep")] = start(registry, spec)
    st.rerun()


st.divider()
st.subheader("Capacity of a running endpoint")
with st.expander("New capacity sweep (any local URL, nothing restarted)", expanded=False):
    c1, c2, c3 = st.columns([3, 1, 1])
    c1.text_input("URL", key=key("c_url"),
                  help="host: base URL of a running endpoint (TF Serving, Triton, KServe, MLServer or TuneSwarm's)")
    c2.text_input("Model name", key=key("c_model"), help="model_name: the model's name at that URL")
    c3.radio("Protocol", ("tfserving", "v2"), key=key("c_protocol"),
             help="protocol: tfserving = /v1/models/NAME:predict; v2 = the Open Inference Protocol "
                  "(/v2/models/NAME/infer); payloads are generated from the target's own metadata")
    c1.text_input("Users ladder", key=key("c_users"),
                  help="users: rising concurrency levels, one short Locust step each; stops at the first level "
                       "that breaks the SLO")
    c2.text_area("SLO (one per line)", key=key("c_slos"), height=80,
                 help="slos: e.g. p95<=50ms, fail_ratio<=0.01")
    c3.slider("Seconds per step", 2, 30, key=key("c_step_s"), help="step_s: load duration per level")
    if st.button("Start capacity sweep", key=key("c_start"), icon=":material/play_arrow:",
                 help="measure the target as it stands, level by level, as a job"):
        _start_capacity()

cruns = [r for r in registry.list_runs(kind="sweep", limit=200) if r.config.get("mode") == "capacity"]
crun = ui.run_picker("Capacity sweep", cruns, key=key("csweep"),
                     help="csweep: a recorded (or running) capacity sweep of a URL")


def _capacity(crun: Run) -> None:
    """A capacity sweep, live (in a fragment, re-read each tick) or finished."""
    ui.status_line(crun)
    cspec = crun.config.get("spec", {})
    st.caption(f"{cspec.get('model_name')} at {cspec.get('host')} ({cspec.get('protocol')}), "
               f"SLO {' and '.join(cspec.get('slos', []))}")
    if crun.active:
        st.caption(f"measuring {(crun.progress or {}).get('level', '…')} users")
        ui.stop_button(registry, crun, key=key("c_stop"))
    cpoints = [Point.from_dict(d) for d in crun.summary.get("points", [])]
    cconstraints = Constraints.parse(cspec.get("slos", []))
    if cpoints:
        st.plotly_chart(ct.latency_throughput_figure(cpoints, percentile=cconstraints.latency_key),
                        key=key("c_curve"), config=PLOT_CONFIG)
        st.dataframe([{"users": p.users, "req/s": round(p.rps, 1), "p50 ms": p.p50_ms, "p95 ms": p.p95_ms,
                       "p99 ms": p.p99_ms, "failed": f"{p.fail_ratio:.1%}", "queue ms": p.queue_ms,
                       "within SLO": cconstraints.meets(p)} for p in cpoints], hide_index=True, key=key("c_points"))
    for line in (crun.summary.get("verdict") or {}).get("explanation", []):
        st.markdown(f"- {line}")
    if not cpoints and not crun.active:
        st.info("This capacity sweep recorded no points" + (f": {crun.error}" if crun.error else "."))


if crun is not None:
    if crun.active:
        ui.live_fragment(registry, crun.id, _capacity, LIVE_REFRESH_S)
    else:
        _capacity(crun)

# -- model sweep -------------------------------------------------------------------------

st.divider()
st.subheader("Model sweep: accuracy vs cost under load")
init_defaults({key("m_search"): "grid", key("m_trials"): 16, key("m_timeout"): 0, key("m_objective"): "accuracy+p99",
               key("m_width"): "", key("m_depth"): ""})
with st.expander("New model sweep", expanded=False):
    from tuning.model_sweep import SEARCH_OBJECTIVES

    st.radio("Search", ("grid", "optuna"), key=key("m_search"), horizontal=True,
             help="search: grid = every combination (small discrete spaces); optuna = sample the space with TPE "
                  "(one objective) or NSGA-II (accuracy vs cost), pruning on validation loss, within the budgets")
    optuna_search = st.session_state[key("m_search")] == "optuna"
    if optuna_search:
        o1, o2, o3 = st.columns(3)
        o1.number_input("Trials", 1, 200, key=key("m_trials"),
                        help="n_trials: finished trials (complete or pruned) to reach")
        o2.number_input("Time budget (s)", 0, 86_400, key=key("m_timeout"),
                        help="timeout_s: start no trial once the finished ones took this long; 0 = no limit")
        o3.selectbox("Objective", tuple(SEARCH_OBJECTIVES), key=key("m_objective"),
                     help="objective: accuracy or loss alone (TPE), or accuracy against p99 or server CPU per "
                          "request (NSGA-II)")
        o1.text_input("Width range", key=key("m_width"), placeholder="8..128",
                      help="width: units per hidden layer, LO..HI (log scale) or a list; with depth it replaces "
                           "the hidden layers below")
        o2.text_input("Depth range", key=key("m_depth"), placeholder="1..2",
                      help="depth: hidden layers, LO..HI or a list")
    c1, c2, c3 = st.columns(3)
    c1.text_input("Hidden layers", key=key("m_hidden"),
                  help="hidden: comma-separated models, layers joined by x (128x128 = two layers of 128)")
    c2.multiselect("Activations", ("relu", "gelu", "tanh", "sigmoid", "elu", "selu", "swish"), key=key("m_activation"),
                   help="activation: the hidden layers' non-linearity")
    c3.text_input("Learning rates", key=key("m_lr"),
                  help="learning_rate: comma-separated, e.g. 0.001,0.01; for optuna also a range LO..HI "
                       "(log scale), e.g. 0.0003..0.03")
    c1.number_input("Epochs", 1, 50, key=key("m_epochs"), help="epochs: per model; keep it small")
    c2.number_input("Users for the load step", 1, 512, key=key("m_users"),
                    help="users: concurrency of the one load step each model gets")
    c3.selectbox("Dataset", BUILTIN_DATASETS, key=key("m_dataset"),
                 help="dataset: the built-in set every model trains on (sequences = the generated token sequences "
                      "for the RNN)")
    c1.multiselect("Families", FAMILIES, key=key("m_family"),
                   help="family: mlp, cnn (digits as 8×8×1 images), rnn (each row as a sequence); empty = mlp")
    c2.multiselect("Weight initialisers", WEIGHT_INITS, key=key("m_weight_init"),
                   help="weight_init: how every kernel starts; empty = glorot_uniform (Keras' default)")
    from tuning.model_sweep import ModelSweepSpec, estimate_text, parse_space, start

    state = st.session_state
    try:
        lists = {name: state[key(f"m_{name}")] for name in ("activation", "family", "weight_init")}
        shape = {n: state[key(f"m_{n}")].strip() for n in ("width", "depth")} if optuna_search else {}
        shape = {n: v for n, v in shape.items() if v}
        flags = ([f"{n}={v}" for n, v in shape.items()] if shape else [f"hidden={state[key('m_hidden')]}"])
        grid, ranges = parse_space(flags + [f"learning_rate={state[key('m_lr')]}"]
                                   + [f"{name}={','.join(values)}" for name, values in lists.items() if values])
        mspec: ModelSweepSpec | str = ModelSweepSpec(
            dataset=state[key("m_dataset")], grid=grid, ranges=ranges,
            epochs=int(state[key("m_epochs")]), users=int(state[key("m_users")]),
            search=state[key("m_search")], n_trials=int(state[key("m_trials")]),
            timeout_s=float(state[key("m_timeout")]), objective=state[key("m_objective")])
    except ValueError as exc:
        mspec = str(exc).splitlines()[0]
    b1, b2 = st.columns([1, 4])
    if b1.button("Start model sweep", key=key("m_start"), icon=":material/play_arrow:",
                 help="train each model (or trial) briefly, serve it, load-test it; runs as a job"):
        if not isinstance(mspec, str) and optuna_search:
            from tuning.model_search import require_optuna

            try:
                require_optuna()
            except RuntimeError as exc:
                mspec = str(exc).splitlines()[0]
        if isinstance(mspec, str):
            st.error(mspec)
        else:
            ui.show_next(key("msweep"), start(registry, mspec))
            st.rerun()
    b2.caption(f"Cannot start yet: {mspec}" if isinstance(mspec, str)
               else f"Estimated duration: {estimate_text(mspec)}.")

msweeps = [r for r in registry.list_runs(kind="sweep", limit=200) if r.config.get("mode") == "models"]
mrun = ui.run_picker("Model sweep", msweeps, key=key("msweep"), help="msweep: a recorded (or running) model sweep")


def _model_sweep(mrun: Run) -> None:
    """A model sweep, live (in a fragment, re-read each tick, so its phases and models appear) or finished."""
    from tuning.model_sweep import ModelSweepSpec, front_objectives, with_front

    mspec_run = ModelSweepSpec.from_dict(mrun.config["spec"])
    objectives = front_objectives(mspec_run)
    ui.status_line(mrun)
    rows = mrun.summary.get("models", [])
    if mrun.active:
        p = mrun.progress or {}
        done, total = int(p.get("done") or 0), int(p.get("total") or 0)
        text = f"{p.get('phase', 'starting')}: {p.get('model', '')}" if p else "starting: loading TensorFlow"
        if total:
            text += f" — {done}/{total} models"
        st.progress(min(done / max(total, 1), 1.0), text=text)
        ui.stop_button(registry, mrun, key=key("m_stop"))
    if rows:
        def _search(run: Run) -> str:
            return str(run.config.get("spec", {}).get("search", "grid"))

        # The other searches' sweeps to draw beside this one; the newest of the other kind by default.
        others = [r for r in msweeps if r.id != mrun.id and r.summary.get("models")]
        others.sort(key=lambda r: _search(r) == _search(mrun))
        labels = {r.id: f"{_search(r)}: {r.name} ({r.id})" for r in others}
        cmp_id = st.selectbox("Compare with", [None, *labels], key=key("m_compare"),
                              index=1 if others and _search(others[0]) != _search(mrun) else 0,
                              format_func=lambda i: "(none)" if i is None else labels[i],
                              help="compare: draw another model sweep's front (accuracy vs p99) on the same chart")
        cmp_run = next((r for r in others if r.id == cmp_id), None)
        pareto = ct.pareto_figure(rows, objectives, name=f"{_search(mrun)} front",
                                  compare=cmp_run.summary.get("models", []) if cmp_run else (),
                                  compare_name=f"{_search(cmp_run)} front" if cmp_run else "other front")
        st.plotly_chart(pareto, key=key("pareto"), config=PLOT_CONFIG)
        st.download_button("Download Pareto chart (HTML)", ct.figure_html(pareto), file_name="pareto.html",
                           mime="text/html", key=key("dl_pareto"), help="the Pareto scatter as a standalone HTML file")
        columns = ("trial", "state") if mspec_run.search == "optuna" else ()
        columns += ("label", "param_count", "val_accuracy", "val_loss", "p99_ms", "rps", "capacity_rps", "on_front")
        ranked = with_front(rows, objectives)
        st.dataframe([{k: r.get(k) for k in columns} for r in ranked], hide_index=True, key=key("models"))
        pruned = sum(1 for r in rows if r.get("state") == "pruned")
        st.caption("Grey points are dominated: another model is at least as accurate, as fast and as cheap. "
                   f"Front: {', '.join(r['label'] for r in ranked if r['on_front'])}."
                   + (f" {pruned} pruned trial(s) stopped early on validation loss and were not served."
                      if pruned else ""))
    elif not mrun.active:
        st.info("This model sweep recorded no models" + (f": {mrun.error}" if mrun.error else "."))


if mrun is not None:
    if mrun.active:
        ui.live_fragment(registry, mrun.id, _model_sweep, LIVE_REFRESH_S)
    else:
        _model_sweep(mrun)
st.caption(f"Sweeps recorded: {len(sweeps)} serving, {len(msweeps)} model. Every load step and training run of "
           "a sweep is also on the **Runs** page.")
