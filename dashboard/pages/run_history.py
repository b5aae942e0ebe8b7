"""Runs page: the registry's history — filter, compare (overlaid curves, config diff), delete, export."""

from __future__ import annotations

import os

import streamlit as st

from dashboard import charts, ui
from dashboard import format as fmt
from dashboard.state import get_registry, init_defaults
from runs import tracking
from runs.registry import KINDS, STATUSES, Registry, Run

KEY_PREFIX = "runs."
key = ui.widget_keys(KEY_PREFIX)  # key("x") -> the page's widget key for x
MAX_LISTED = 500
# What can be overlaid per kind, first = default; x axis label.
OVERLAY_METRICS = {
    "train": (("val_loss", "loss", "val_accuracy", "accuracy", "val_mae", "mae", "samples_per_s"), "epoch"),
    "loadtest": (("p95_ms", "p50_ms", "p99_ms", "rps", "fail_per_s", "users", "server_queue_ms",
                  "server_compute_ms"), "seconds since start"),
    "sweep": ((), "step"),
    "serve": ((), "step"),
}

init_defaults({key("kinds"): [], key("statuses"): [], key("compare"): [], key("mlflow_runs"): [],
               key("mlflow_uri"): os.environ.get(tracking.TRACKING_ENV, ""),
               key("mlflow_live"): bool(os.environ.get(tracking.TRACKING_ENV))})
registry = get_registry()

st.title(":material/history: Runs")
st.caption("Every training, serving, load-test and sweep run recorded in the registry.")

f1, f2 = st.columns(2)
kinds = f1.multiselect("Kind", KINDS, key=key("kinds"),
                       help="kind: show only these kinds of run (empty = all)")
statuses = f2.multiselect("Status", STATUSES, key=key("statuses"),
                          help="status: show only runs in these states (empty = all)")
runs = registry.list_runs(kind=kinds or None, status=statuses or None, limit=MAX_LISTED)

if not runs:
    st.info("No runs match. Train a model on the **Train** page to start the history.")
    st.stop()

sub_runs = fmt.sub_runs_by_parent(runs)
listed_ids = {r.id for r in runs}
show_subs = bool(sub_runs) and st.toggle(
    f"Show sweep sub-runs in the list ({sum(map(len, sub_runs.values()))})", key=key("show_sub_runs"),
    help="a sweep's own trainings, endpoints and load steps are grouped under it below; switch this on to list "
         "them with every other run (and pick them in Compare and Details)")
url_run = st.query_params.get(ui.RUN_PARAM)
# A sub-run whose sweep is filtered out (or that a link names) is listed on its own, never lost.
top = runs if show_subs else [r for r in runs if r.parent_id not in listed_ids or r.id == url_run]
table = fmt.runs_table(top, sub_runs=sub_runs)
st.dataframe(table, hide_index=True, key=key("table"),
             column_config={"id": st.column_config.TextColumn("id", width="medium")})
export = fmt.runs_table(top, icons=False, parent=True, sub_runs=sub_runs)
st.download_button("Export this list (CSV)", fmt.rows_to_csv(export),
                   file_name="tuneswarm-runs.csv", mime="text/csv", key=key("export_list"),
                   icon=":material/download:",
                   help="the runs listed above (after the kind/status filters) as a CSV file")
if not show_subs:
    for parent in (r for r in top if sub_runs.get(r.id)):
        children = sub_runs[parent.id]
        with st.expander(f"{parent.name} · {parent.id}: {len(children)} sub-runs", icon=":material/account_tree:"):
            st.dataframe(fmt.runs_table(children), hide_index=True, key=key(f"subs.{parent.id}"),
                         column_config={"id": st.column_config.TextColumn("id", width="medium")})
by_id = {r.id: r for r in top}
names = fmt.model_names(registry.list_runs(kind="train", limit=MAX_LISTED))  # endpoints read as their model

# -- compare -----------------------------------------------------------------------------

st.subheader("Compare")
st.session_state[key("compare")] = [i for i in st.session_state[key("compare")] if i in by_id]
chosen_ids = st.multiselect(
    "Runs to compare", list(by_id), key=key("compare"), format_func=lambda i: fmt.run_label(by_id[i], names),
    help="pick two or more runs: their curves are overlaid (loss for training runs, latency and "
         "throughput for load tests) and their configs diffed side by side",
)
chosen: list[Run] = [by_id[i] for i in chosen_ids]


def _labels(chosen: list[Run]) -> dict[str, str]:
    """Short unique labels for legends and diff columns."""
    return {r.id: f"{r.name} ({r.id})" for r in chosen}


def _overlay(registry: Registry, chosen: list[Run]) -> None:
    labels = _labels(chosen)
    for kind in dict.fromkeys(r.kind for r in chosen):
        group = [r for r in chosen if r.kind == kind]
        metrics, x_title = OVERLAY_METRICS.get(kind, ((), "step"))
        series = [(labels[r.id], registry.metric_series(r.id)) for r in group]
        present = [m for m in metrics if any(s.get(m) for _, s in series)]
        if not present:
            present = sorted({m for _, s in series for m in s})
        if not present:
            st.caption(f"{kind} runs: no metric series recorded")
            continue
        if st.session_state.get(key(f"metric.{kind}")) not in present:
            st.session_state.pop(key(f"metric.{kind}"), None)  # chosen for runs no longer selected
        metric = st.selectbox(f"{kind} metric", present, key=key(f"metric.{kind}"),
                              format_func=lambda m: charts.LABELS.get(m, m),
                              help=f"the metric drawn for each selected {kind} run")
        st.plotly_chart(charts.overlay_figure(series, metric, x_title=x_title,
                                              title=f"{charts.LABELS.get(metric, metric)} — {kind} runs"),
                        key=key(f"overlay.{kind}"), config={"displaylogo": False})


if len(chosen) >= 2:
    _overlay(registry, chosen)
    labels = _labels(chosen)
    only_diff = st.toggle("Only parameters that differ", value=True, key=key("only_diff"),
                          help="hide the config lines where every selected run has the same value")
    diff = charts.config_diff({labels[r.id]: r.config for r in chosen}, only_different=only_diff)
    if diff:
        st.table(diff)  # static: every differing value visible side by side
    else:
        st.caption("The selected runs have identical configs.")
elif len(chosen) == 1:
    st.caption("Pick at least one more run to overlay curves and diff configs.")

def _delete(registry: Registry, run_id: str) -> None:
    """Button callback (runs before the script, so it may reset widget state)."""
    try:
        registry.delete_run(run_id)
    except (ValueError, KeyError) as exc:
        st.session_state[key("delete_error")] = str(exc)
        return
    st.session_state.pop(key("detail"), None)
    st.session_state[key("confirm_delete")] = False
    st.session_state[key("compare")] = [i for i in st.session_state.get(key("compare"), []) if i != run_id]


# -- one run -------------------------------------------------------------------------------

st.subheader("Details")
run = ui.run_picker("Run", top, key=key("detail"), names=names, help="the run to inspect, export or delete")
if run is not None:
    ui.status_line(run)
    c1, c2 = st.columns(2)
    with c1:
        st.markdown("**Config**")
        st.json(run.config, expanded=False)
    with c2:
        st.markdown("**Summary**")
        st.json(run.summary, expanded=False)
    rows = registry.metric_rows(run.id)
    e1, e2, e3 = st.columns(3)
    e1.download_button("Export JSON", fmt.run_export_json(run, rows), file_name=f"{run.id}.json",
                       mime="application/json", key=key("export_json"), icon=":material/download:",
                       help="config, summary and every metric row of this run as one JSON file")
    e2.download_button("Export metrics CSV", fmt.rows_to_csv(rows), file_name=f"{run.id}-metrics.csv",
                       mime="text/csv", key=key("export_csv"), icon=":material/download:", disabled=not rows,
                       help="the run's metric series, one row per step")
    confirm = e3.checkbox("Confirm delete", key=key("confirm_delete"), disabled=run.active,
                          help="deleting removes the run, its metrics and its artifact folder; active runs "
                               "must be stopped first")
    e3.button("Delete run", key=key("delete"), icon=":material/delete:", disabled=run.active or not confirm,
              on_click=_delete, args=(registry, run.id),
              help="delete this run (not possible while it is running)")
    if st.session_state.get(key("delete_error")):
        st.error(st.session_state.pop(key("delete_error")))
    if run.active:
        st.caption("This run is active; stop it from its page before deleting it.")


# -- MLflow --------------------------------------------------------------------------------


def _send(registry: Registry, run_ids: list[str], uri: str) -> None:
    """Button callback: export the chosen runs now (in this process; MLflow loads on first use)."""
    sent, errors = tracking.export_many(registry, run_ids, uri)
    st.session_state[key("mlflow_result")] = (sent, errors)


def _live(uri: str) -> None:
    """Toggle callback: jobs started from this dashboard from now on log to MLflow when they end."""
    if st.session_state[key("mlflow_live")] and uri:
        os.environ[tracking.TRACKING_ENV] = uri
    else:
        os.environ.pop(tracking.TRACKING_ENV, None)


st.subheader("MLflow")
if not tracking.available():
    st.info(tracking.MISSING)
else:
    uri = st.text_input("Tracking URI", key=key("mlflow_uri"), placeholder="sqlite:///mlflow.db or http://host:5000",
                        help="where runs go: an MLflow server, a sqlite:/// database or a file: store (MLflow 3 "
                             "needs MLFLOW_ALLOW_FILE_STORE=true for file:)").strip()
    st.toggle("Log new runs when they end", key=key("mlflow_live"), disabled=not uri, on_change=_live, args=(uri,),
              help="every job started from this dashboard from now on is logged to this URI when it ends "
                   "(sets MLFLOW_TRACKING_URI for them)")
    finished = {r.id: r for r in runs if not r.active and not fmt.is_sub_run(r)}
    st.session_state[key("mlflow_runs")] = [i for i in st.session_state[key("mlflow_runs")] if i in finished]
    picked = st.multiselect("Runs to send", list(finished), key=key("mlflow_runs"),
                            format_func=lambda i: fmt.run_label(finished[i], names),
                            help="finished runs to log to MLflow now (a sweep goes with its points as child runs)")
    st.button("Send to MLflow", key=key("mlflow_send"), icon=":material/upload:", disabled=not (uri and picked),
              on_click=_send, args=(registry, picked, uri), help="log the chosen runs to the tracking URI")
    result = st.session_state.pop(key("mlflow_result"), None)
    if result is not None:
        sent, errors = result
        if sent:
            st.success("Sent: " + "; ".join(sent))
        for error in errors:
            st.error(error)
