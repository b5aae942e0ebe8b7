"""Serve page: run a trained or imported model behind the embedded TF Serving-compatible endpoint and watch it work.

Import: upload a ``.keras`` file (or a ``.zip`` of a SavedModel directory) or give a
path on this machine; ``tuning.imports`` checks it in a child process and records it
as a run, so it shows up in every model picker.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Any

import streamlit as st

from agent.serving.config import RUNTIMES
from dashboard import charts, endpoint_client, forms, serving_view, ui
from dashboard import format as fmt
from dashboard import live as live_view
from dashboard.state import get_registry, init_defaults
from runs.registry import Registry, Run

LIVE_REFRESH_S = 1.0
HISTORY_POINTS = 120  # scrapes kept per endpoint for the timeline (2 minutes at 1/s)
BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
KEY_PREFIX = "serve."
key = ui.widget_keys(KEY_PREFIX)  # key("x") -> the page's widget key for x

DEFAULTS = forms.ServeForm()
init_defaults({
    key("runtime"): DEFAULTS.runtime, key("max_batch_size"): DEFAULTS.max_batch_size,
    key("batch_timeout_ms"): DEFAULTS.batch_timeout_ms,
    key("max_enqueued_batches"): DEFAULTS.max_enqueued_batches, key("num_batch_threads"): DEFAULTS.num_batch_threads,
    key("workers"): DEFAULTS.workers, key("model_name"): "model", key("sample_index"): 0,
})
registry = get_registry()
state = st.session_state


def trained_models(registry: Registry) -> list[Run]:
    """Finished training runs and imported models whose model file (or SavedModel directory) exists."""
    runs = registry.list_runs(kind="train", status=("completed", "stopped"))
    return [r for r in runs if r.summary.get("model_path") and Path(r.summary["model_path"]).exists()]


def import_section(registry: Registry, expanded: bool) -> None:
    """Upload or point at a model; on success the picker shows it."""
    from tuning.imports import MAX_UPLOAD_BYTES

    with st.expander("Import a model", expanded=expanded, icon=":material/upload:"):
        st.caption("A Keras 3 `.keras` file (loaded in safe mode) or a TensorFlow SavedModel directory "
                   "(served through its `serving_default` signature) with fixed-shape numeric inputs.")
        c1, c2 = st.columns(2)
        upload = c1.file_uploader("Upload .keras or .zip of a SavedModel", type=["keras", "zip"],
                                  key=key("upload"), max_upload_size=MAX_UPLOAD_BYTES // 2**20,
                                  help="upload: a .keras file, or a SavedModel directory zipped "
                                       f"(at most {MAX_UPLOAD_BYTES // 2**20} MB)")
        path = c2.text_input("…or a path on this machine", key=key("import_path"),
                             placeholder="/path/to/model.keras or /path/to/saved_model_dir",
                             help="path: a .keras file or a SavedModel directory readable by this server")
        if st.button("Import", key=key("import"), icon=":material/upload:", disabled=not (upload or path.strip()),
                     help="Check the model (in a separate process), copy it into the run registry and record "
                          "its signature, parameters and size"):
            _import(registry, upload, path.strip())


def _import(registry: Registry, upload: Any, path: str) -> None:
    from tuning.imports import ImportRefusedError, import_model, import_upload

    with st.spinner("Reading the model (loading TensorFlow in a separate process)…"):
        try:
            if upload is not None:
                imported = import_upload(registry, upload.name, upload.getvalue())
            else:
                imported = import_model(registry, path)
        except (ImportRefusedError, OSError) as exc:
            st.error(f"Not imported: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
            return
    ui.show_next(key("model"), imported.run_id)
    st.rerun()


def model_path_of(serve: Run) -> str | None:
    cfg = serve.config
    for field in ("model_path", "model"):
        if isinstance(cfg.get(field), str):
            return cfg[field]
    return serve.summary.get("model_path")


def serve_job(model_path: str, form: forms.ServeForm, name: str) -> Any:
    from agent.serving.process import ServeJob

    return ServeJob(str(model_path), name, serving=forms.serving_config(form))


def start(registry: Registry, model_path: str, form: forms.ServeForm, name: str) -> str:
    """Start an endpoint job for ``model_path`` on a free port; returns its run id at once (the page follows
    its stages: loading TensorFlow, converting, warming up, ready)."""
    from agent.serving.process import start as start_serving

    return start_serving(registry, serve_job(model_path, form, name))


def restart(registry: Registry, old: Run, model_path: str, form: forms.ServeForm, name: str, new_port: bool) -> str:
    """Replace ``old`` by an endpoint with the knobs of ``form``; returns the new run id at once.

    The old one stops in the background; the new one keeps its port (same URL) unless ``new_port``.
    """
    from agent.serving.process import replace_endpoint

    return replace_endpoint(registry, old, serve_job(model_path, form, name), keep_port=not new_port)


def stop(registry: Registry, run_id: str) -> object:
    from agent.serving.process import stop_endpoint

    return stop_endpoint(registry, run_id)


st.title(":material/dns: Serve")
st.caption("The embedded endpoint speaks TensorFlow Serving's REST API and batches requests dynamically. "
           "Turn the knobs, restart, and read where the time goes.")

all_models = trained_models(registry)
import_section(registry, expanded=not all_models)
if not all_models:
    st.info("No trained model yet. Train one on the **Train** page first, or import your own above.")
    st.stop()

# -- model and knobs ---------------------------------------------------------------------------

left, right = st.columns([1, 1], gap="large")
with left:
    st.subheader("Model")
    models = ui.hide_sub_runs(all_models, key("show_sub_models"))
    model_run = ui.run_picker("Model", models or all_models, key=key("model"), write_url=False,
                              help="model: a finished training run or an imported model (.keras in safe mode, "
                                   "or a SavedModel directory)")
    assert model_run is not None
    s = model_run.summary
    tm = s.get("test_metrics") or {}
    c1, c2, c3 = st.columns(3)
    if s.get("imported"):
        c1.metric("format", "SavedModel" if s.get("format") == "saved_model" else ".keras")
    else:
        c1.metric("dataset", (s.get("data") or {}).get("name", "—"))
    c2.metric("parameters", f"{s.get('param_count', 0):,}")
    if s.get("imported"):
        c3.metric("size", f"{(s.get('size_bytes') or 0) / 2**20:.2f} MB")
        st.caption("Inputs: " + serving_view.describe_signature(s.get("signature") or {}))
    else:
        quality = ("accuracy", tm["accuracy"]) if "accuracy" in tm else ("MSE", tm.get("mse"))
        c3.metric(f"test {quality[0]}", "—" if quality[1] is None else f"{quality[1]:.4f}")
    st.text_input("Model name in URLs", key=key("model_name"),
                  help="name: the {name} in /v1/models/{name}:predict (letters, digits, - and _)")
with right:
    st.subheader("Serving knobs")
    c1, c2 = st.columns(2)
    c1.selectbox("Runtime", RUNTIMES, key=key("runtime"),
                 help="runtime: keras (Keras predict_on_batch), tf-function (traced graph), xla (jit-compiled), "
                      "tflite (TFLite interpreter, float32), tflite-int8 (dynamic-range quantized)")
    c2.select_slider("Max batch size", BATCH_SIZES, key=key("max_batch_size"),
                     help="max_batch_size: most rows in one model execution; 1 turns batching off")
    c1.slider("Batch timeout (ms)", 0.0, 50.0, step=0.5, key=key("batch_timeout_ms"),
              help="batch_timeout_ms: how long a partial batch waits for more rows; trades a little latency "
                   "at low load for much higher throughput at high load")
    c2.number_input("Queue bound (batches)", 1, 100_000, step=8, key=key("max_enqueued_batches"),
                    help="max_enqueued_batches: queued batches before new requests are shed with 503 at once "
                         "(bounded latency instead of an unbounded queue)")
    c1.slider("Batch threads", 0, 8, key=key("num_batch_threads"),
              help="num_batch_threads: 0 runs each batch on the event loop itself (no thread hand-off; "
                   "cheapest for tiny models, but requests wait while the model runs); 1 or more = model "
                   "executions that may run in parallel, each in its own thread")
    c2.slider("Workers", 1, 4, key=key("workers"),
              help="workers: server processes sharing the port, each with its own batcher and model copy")

form = forms.ServeForm(
    runtime=state[key("runtime")], max_batch_size=int(state[key("max_batch_size")]),
    batch_timeout_ms=float(state[key("batch_timeout_ms")]),
    max_enqueued_batches=int(state[key("max_enqueued_batches")]),
    num_batch_threads=int(state[key("num_batch_threads")]), workers=int(state[key("workers")]),
    model_name=state[key("model_name")].strip(),
)
check = forms.serve_check(form)
ui.show_check(check)
if check.ok:
    with st.expander("Config to start"):
        st.json(forms.serving_config(form).to_dict())

# -- endpoints ---------------------------------------------------------------------------------

endpoints = registry.list_runs(kind="serve", status=("pending", "running"))
b1, b2 = st.columns([1, 4])
if b1.button("Start endpoint", key=key("start"), type="primary", icon=":material/play_arrow:",
             disabled=not check.ok,
             help="Start the endpoint on a free local port with these knobs; it starts in the background "
                  "and this page shows its stages (loading TensorFlow, converting, warming up, ready)"):
    try:
        run_id = start(registry, model_run.summary["model_path"], form, form.model_name)
    except (ValueError, OSError, RuntimeError) as exc:
        st.error(f"The endpoint did not start: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
    else:
        ui.show_next(key("endpoint"), run_id)
        st.rerun()
if endpoints:
    b2.caption(f"{len(endpoints)} endpoint(s) running. Start another to compare, or restart one below.")

st.divider()
st.subheader("Endpoint")
all_serve = ui.hide_sub_runs(registry.list_runs(kind="serve", limit=50), key("show_sub_endpoints"))
names = fmt.model_names(registry.list_runs(kind="train", limit=500))
endpoint = ui.run_picker("Endpoint run", all_serve, key=key("endpoint"), names=names,
                         help="which endpoint to inspect (running ones first); running ones update live")


def _ready(run: Run) -> bool:
    return bool(run.summary.get("ready_at")) and run.active


def _status(run: Run) -> None:
    s = run.summary
    ready = _ready(run)
    c = st.columns(5)
    # Until the job reports ready, its knobs are those it was started with (the run's config).
    cfg = s.get("config") or run.config.get("serving") or {}
    c[0].metric("status", "ready" if ready else ("starting" if run.active else run.status))
    c[1].metric("runtime", str(s.get("runtime") or cfg.get("runtime") or "—"))
    c[2].metric("pid", str(s.get("pid") or run.pid or "—"))
    uptime = (time.time() - float(s["ready_at"])) if ready else None
    c[3].metric("uptime", fmt.duration(uptime))
    c[4].metric("batching", f"{cfg.get('max_batch_size', '—')} / {cfg.get('batch_timeout_ms', '—')} ms",
                help="max batch size (rows) / batch timeout")
    url = s.get("url") or (run.progress or {}).get("url")
    if url:
        # Plain text, not a link: a browser's GET to :predict only earns a 405.
        st.code(f"{url}/v1/models/{s.get('name') or run.config.get('name', 'model')}:predict", language=None)


def _scrape(run: Run) -> None:
    """Read /metrics once and keep the scrape in this session's short history."""
    from runs.metrics_scrape import scrape

    url = run.summary.get("url")
    if not url:
        return
    hist = state.setdefault(key("scrapes"), {}).setdefault(run.id, [])
    try:
        snap = scrape(url, timeout_s=serving_view.SCRAPE_TIMEOUT_S, at=time.time())
    except (OSError, ValueError) as exc:
        st.caption(f"/metrics not reachable: {exc}")
        return
    hist.append(snap)
    del hist[:-HISTORY_POINTS]


def _panel(run: Run) -> None:
    from runs.metrics_scrape import snapshot_delta

    hist = state.get(key("scrapes"), {}).get(run.id, [])
    if not hist:
        st.caption("waiting for the first /metrics scrape…")
        return
    t0 = hist[0].at
    rows = [serving_view.delta_row(snapshot_delta(a, b), b, b.at - t0) for a, b in itertools.pairwise(hist)]
    last = rows[-1] if rows else {}
    snap = hist[-1]
    m = st.columns(6)
    m[0].metric("requests/s", _n(last.get("server_rps"), ".0f"), help="requests answered in the last interval")
    m[1].metric("p50", _n(last.get("p50_ms"), ".2f", " ms"), help="server-side latency, last interval (histogram)")
    m[2].metric("p99", _n(last.get("p99_ms"), ".2f", " ms"), help="server-side 99th percentile, last interval")
    m[3].metric("mean batch", _n(last.get("batch_size"), ".1f"), help="rows per model execution, last interval")
    m[4].metric("queue depth", f"{snap.queue_depth_rows:.0f} rows", help="rows waiting for a batch right now")
    codes = snap.requests_by_code
    m[5].metric("503 shed", f"{codes.get('503', 0):.0f}", help="requests refused because the queue was full (total)")
    c1, c2 = st.columns(2)
    c1.plotly_chart(charts.timeline_figure(rows, ("p50_ms", "p99_ms", "server_queue_ms", "server_compute_ms"),
                                           "Server latency", "ms"), key=key("lat_chart"),
                    config={"displaylogo": False})
    c2.plotly_chart(charts.timeline_figure(rows, ("server_rps", "server_shed_per_s"), "Requests", "per second"),
                    key=key("rps_chart"), config={"displaylogo": False})
    c1, c2 = st.columns(2)
    c1.plotly_chart(charts.latency_split_figure(_ms(snap.queue_wait.mean), _ms(snap.compute.mean),
                                                _other(snap)), key=key("split_chart"),
                    config={"displaylogo": False})
    c2.plotly_chart(charts.batch_size_figure(serving_view.histogram_counts(snap.batch_size.buckets)),
                    key=key("batch_chart"), config={"displaylogo": False})
    st.caption(f"requests by status since start: {', '.join(f'{k}: {v:.0f}' for k, v in sorted(codes.items())) or '—'}")


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else 1000.0 * seconds


def _other(snap: Any) -> float | None:
    """End-to-end minus queue wait and compute: HTTP, decoding, encoding (means since start)."""
    total, q, c = snap.latency.mean, snap.queue_wait.mean, snap.compute.mean
    if total is None or q is None or c is None:
        return None
    return max(0.0, 1000.0 * (total - q - c))


def _n(value: Any, spec: str, unit: str = "") -> str:
    return "—" if value is None else f"{format(float(value), spec)}{unit}"


def _starting(run: Run) -> None:
    """The start-up's stage, as the serve job records it (the page stays usable meanwhile)."""
    stage = live_view.serve_stage(run.progress, ready=False)
    n = len(live_view.SERVE_STAGES) - 1
    st.progress(live_view.stage_index(stage) / n, text=f"{stage}…")
    st.caption("Starting in the background: the rest of the page stays usable, and this view switches to the "
               "live metrics once the model is warm.")


def _live(run: Run) -> None:
    ui.status_line(run)  # in here, so its duration advances
    _status(run)
    if _ready(run):
        _scrape(run)
        _panel(run)
    else:
        _starting(run)


def _try_it(run: Run) -> None:
    from agent.export import load_metadata, load_samples

    st.markdown("**Try it**")
    mp = model_path_of(run)
    samples = load_samples(mp) if mp else None
    meta = load_metadata(mp) if mp else None
    if not samples:
        st.caption("No samples.json beside this model; send your own rows with any TF Serving client.")
        return
    labels = list(meta.spec.class_labels) if meta else []
    c1, c2 = st.columns([1, 3])
    idx = int(c1.number_input("Sample row", 0, len(samples) - 1, step=1, key=key("sample_index"),
                              help="which held-out test row to send as one instance"))
    row = samples[idx]
    c2.caption(serving_view.describe_row(row))
    if st.button("Send request", key=key("send"), icon=":material/send:",
                 help="POST {\"instances\": [row]} to :predict and show the answer"):
        t = time.perf_counter()
        try:
            status, body = endpoint_client.predict(run.summary["url"], run.summary.get("name", "model"), [row])
        except OSError as exc:
            st.error(f"request failed: {exc}")
            return
        elapsed = 1000 * (time.perf_counter() - t)
        if status != 200:
            st.error(f"HTTP {status}: {body.get('error', body)}")
            return
        pred = (body.get("predictions") or [None])[0]
        label, conf = serving_view.describe_prediction(pred, labels)
        r1, r2, r3 = st.columns(3)
        r1.metric("prediction", label + ("" if conf is None else f" ({conf:.1%})"))
        targets = _targets(mp)
        if targets is not None and idx < len(targets):
            truth = targets[idx]
            r2.metric("true label", labels[int(truth)] if labels and int(truth) < len(labels) else f"{truth:g}")
        r3.metric("round trip", f"{elapsed:.1f} ms")
        with st.expander("Raw response"):
            st.json(body)


def _targets(model_path: str) -> list[float] | None:
    import json

    p = Path(model_path).with_name("samples.json")
    try:
        return json.loads(p.read_text()).get("targets")
    except (OSError, ValueError):
        return None


if endpoint is None:
    st.info("No endpoint yet. Pick a model and press **Start endpoint**.")
else:
    if endpoint.active:
        ui.next_steps([
            ui.NextStep("Swarm this endpoint", "load_test.py", key("to_swarm"), ":material/speed:",
                        help="open the Load test page with this endpoint as the target"),
            ui.NextStep("Tune it", "tune.py", key("to_tune"), ":material/tune:",
                        help="open the Tune page with this endpoint's model picked for a serving sweep"),
        ], endpoint.id)
        a1, a2, a3 = st.columns([1, 2, 3])
        with a1:
            ui.stop_button(registry, endpoint, key=key("stop"), label="Stop endpoint", stopper=stop)
        new_port = a3.checkbox("on a new port", key=key("new_port"),
                               help="new_port: restart on a free port (a new URL); unticked, the restarted "
                                    "endpoint takes the old one's port once it is free, so clients keep the URL")
        if a2.button("Restart with new settings", key=key("restart"), icon=":material/restart_alt:",
                     disabled=not check.ok,
                     help="Stop this endpoint and start the same model with the knobs above, in the background "
                          "(same URL unless 'on a new port')"):
            mp = model_path_of(endpoint) or model_run.summary["model_path"]
            name = str(endpoint.summary.get("name") or endpoint.config.get("name") or state[key("model_name")])
            try:
                new_id = restart(registry, endpoint, mp, form, name, new_port)
            except (ValueError, OSError, RuntimeError) as exc:
                st.error(f"The endpoint did not restart: {str(exc).splitlines()[0]}")
            else:
                ui.show_next(key("endpoint"), new_id)
                st.rerun()
        was_ready = _ready(endpoint)
        # Once it becomes ready, the whole page reruns (the Try-it section appears).
        ui.live_fragment(registry, endpoint.id, _live, LIVE_REFRESH_S, settled=lambda r: _ready(r) and not was_ready)
        if endpoint.summary.get("url"):
            _try_it(endpoint)
    else:
        ui.status_line(endpoint)
        _status(endpoint)
