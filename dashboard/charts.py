"""Pure Plotly figure builders: data in, ``go.Figure`` out.

No Streamlit and no registry here, so every chart is testable without a UI and
looks the same on every page (one template, one palette, one height scale).
Inputs are the plain shapes the registry hands out: ``{name: [(step, value)]}``
series and wide ``[{step, name: value}]`` rows.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

TEMPLATE = "plotly_white"
HEIGHT = 320
TALL_HEIGHT = 620
MARGIN = {"l": 10, "r": 10, "t": 40, "b": 10}
# One colour per meaning, everywhere: train vs validation, and latency percentiles.
COLORS = {
    "loss": "#1f77b4",
    "val_loss": "#ff7f0e",
    "accuracy": "#2ca02c",
    "val_accuracy": "#d62728",
    "mae": "#2ca02c",
    "val_mae": "#d62728",
    "rps": "#1f77b4",
    "server_rps": "#aec7e8",
    "fail_per_s": "#e377c2",  # not p99's red: the swarm chart shows both
    "p50_ms": "#2ca02c",
    "p90_ms": "#bcbd22",
    "p95_ms": "#ff7f0e",
    "p99_ms": "#d62728",
    "users": "#7f7f7f",
    "server_queue_ms": "#9467bd",
    "server_compute_ms": "#17becf",
    "server_shed_per_s": "#8c564b",
}
RUN_PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf")
LABELS = {
    "loss": "loss",
    "val_loss": "val loss",
    "accuracy": "accuracy",
    "val_accuracy": "val accuracy",
    "mae": "MAE",
    "val_mae": "val MAE",
    "rps": "requests/s",
    "fail_per_s": "failures/s",
    "p50_ms": "p50",
    "p90_ms": "p90",
    "p95_ms": "p95",
    "p99_ms": "p99",
    "avg_ms": "mean",
    "users": "users",
    "server_queue_ms": "server queue wait",
    "server_compute_ms": "server compute",
    "server_rps": "server requests/s",
    "server_shed_per_s": "shed (503)/s",
}

Series = Mapping[str, Sequence[tuple[float, float | None]]]


def _style(fig: go.Figure, title: str, height: int = HEIGHT) -> go.Figure:
    fig.update_layout(
        template=TEMPLATE,
        title={"text": title, "x": 0.0, "xanchor": "left", "font": {"size": 15}},
        height=height,
        margin=MARGIN,
        legend={"orientation": "h", "yanchor": "bottom", "y": 1.0, "xanchor": "right", "x": 1.0},
        hovermode="x unified",
    )
    return fig


def _clean(points: Sequence[tuple[float, float | None]]) -> tuple[list[float], list[float | None]]:
    """x and y lists; NaN/inf/None become gaps rather than breaking the axis scale."""
    xs: list[float] = []
    ys: list[float | None] = []
    for x, y in points:
        xs.append(x)
        ys.append(y if y is not None and math.isfinite(y) else None)
    return xs, ys


def _empty(fig: go.Figure, message: str) -> go.Figure:
    fig.add_annotation(text=message, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper",
                       font={"size": 14, "color": "#888"})
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return fig


def _has_points(series: Series, names: Sequence[str]) -> bool:
    return any(series.get(n) for n in names)


MAX_UNIT_TICKS = 20


def _whole_ticks(fig: go.Figure, xs: Sequence[float]) -> None:
    """Epoch axes: one tick per epoch when there are few (no "1.5 epochs" ticks)."""
    if xs and max(xs) <= MAX_UNIT_TICKS:
        fig.update_xaxes(dtick=1)


# -- training ---------------------------------------------------------------------------


def curves_figure(series: Series, names: Sequence[str], title: str, y_title: str, *,
                  log_y: bool = False) -> go.Figure:
    """Per-epoch lines for ``names`` (e.g. loss and val_loss) on one axis."""
    fig = go.Figure()
    for name in names:
        points = series.get(name) or []
        if not points:
            continue
        xs, ys = _clean(points)
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines+markers", name=LABELS.get(name, name),
                                 line={"color": COLORS.get(name), "width": 2}, marker={"size": 5}))
    _style(fig, title)
    if not _has_points(series, names):
        return _empty(fig, "no epochs recorded yet")
    fig.update_xaxes(title_text="epoch", rangemode="tozero")
    _whole_ticks(fig, [x for n in names for x, _ in series.get(n) or []])
    fig.update_yaxes(title_text=y_title, type="log" if log_y else "linear")
    return fig


def loss_figure(series: Series, *, log_y: bool = False) -> go.Figure:
    return curves_figure(series, ("loss", "val_loss"), "Loss", "loss", log_y=log_y)


def quality_metric_names(series: Series, task: str | None = None) -> tuple[str, str]:
    """The training-quality pair: accuracy (classification) or MAE (regression).

    Decided by ``task`` when known (so a classifier's empty chart before its first
    epoch is titled right), else by which series are present.
    """
    if task == "classification" or series.get("accuracy") or series.get("val_accuracy"):
        return ("accuracy", "val_accuracy")
    if task == "regression" or series.get("mae") or series.get("val_mae"):
        return ("mae", "val_mae")
    return ("accuracy", "val_accuracy")


def accuracy_figure(series: Series, task: str | None = None) -> go.Figure:
    names = quality_metric_names(series, task)
    title = "Accuracy" if names[0] == "accuracy" else "Mean absolute error"
    fig = curves_figure(series, names, title, LABELS[names[0]])
    if names[0] == "accuracy" and _has_points(series, names):
        fig.update_yaxes(range=[0, 1.02])
    return fig


def confusion_matrix_figure(matrix: Sequence[Sequence[int]], labels: Sequence[str] | None = None) -> go.Figure:
    """Heatmap of counts, true label on y, predicted on x, each cell annotated."""
    n = len(matrix)
    if n == 0:
        return _empty(_style(go.Figure(), "Confusion matrix"), "no confusion matrix (regression or no test run)")
    names = [str(label) for label in (labels or [])]
    if len(names) != n:
        names = [str(i) for i in range(n)]
    z = [[int(v) for v in row] for row in matrix]
    fig = go.Figure(go.Heatmap(
        z=z, x=names, y=names, colorscale="Blues", showscale=False,
        text=[[str(v) for v in row] for row in z], texttemplate="%{text}",
        hovertemplate="true %{y}<br>predicted %{x}<br>%{z} samples<extra></extra>",
    ))
    _style(fig, "Confusion matrix (test split)", height=max(HEIGHT, 36 * n + 120))
    fig.update_xaxes(title_text="predicted", type="category", side="bottom")
    fig.update_yaxes(title_text="true", type="category", autorange="reversed")
    fig.update_layout(hovermode="closest")
    return fig


# -- load tests -------------------------------------------------------------------------


def _column(rows: Sequence[Mapping[str, Any]], name: str, x_key: str) -> tuple[list[float], list[float | None]]:
    pts = [(r[x_key], r.get(name)) for r in rows if x_key in r and name in r]
    return _clean(pts)


def loadtest_figure(rows: Sequence[Mapping[str, Any]], *, x_key: str = "step",
                    slo_lines: Mapping[str, float] | None = None) -> go.Figure:
    """The swarm over time on one shared time axis.

    Panels: throughput (RPS and failures/s), client-side latency percentiles
    (with SLO limits drawn), active users, and the server's own split of time
    into queue wait and compute, so a latency rise can be read against where the
    server spent it.
    """
    fig = make_subplots(
        rows=4, cols=1, shared_xaxes=True, vertical_spacing=0.06,
        row_heights=[0.26, 0.32, 0.16, 0.26],
        subplot_titles=("Throughput", "Latency (client)", "Users", "Server time per request"),
    )
    for name in ("rps", "server_rps", "fail_per_s", "server_shed_per_s"):
        xs, ys = _column(rows, name, x_key)
        if xs:
            fig.add_trace(go.Scatter(x=xs, y=ys, name=LABELS[name], mode="lines",
                                     line={"color": COLORS.get(name, "#1f77b4"),
                                           "dash": "dot" if name.startswith("server") else "solid"}),
                          row=1, col=1)
    for name in ("p50_ms", "p95_ms", "p99_ms"):
        xs, ys = _column(rows, name, x_key)
        if xs:
            fig.add_trace(go.Scatter(x=xs, y=ys, name=LABELS[name], mode="lines",
                                     line={"color": COLORS[name]}), row=2, col=1)
    for metric, limit in (slo_lines or {}).items():
        fig.add_hline(y=limit, line={"dash": "dash", "color": COLORS.get(metric, "#d62728"), "width": 1},
                      annotation_text=f"SLO {LABELS.get(metric, metric)} ≤ {limit:g} ms",
                      annotation_position="top left", row=2, col=1)
    xs, ys = _column(rows, "users", x_key)
    if xs:
        fig.add_trace(go.Scatter(x=xs, y=ys, name="users", mode="lines", line={"color": COLORS["users"],
                                 "shape": "hv"}, fill="tozeroy"), row=3, col=1)
    for name in ("server_queue_ms", "server_compute_ms"):
        xs, ys = _column(rows, name, x_key)
        if xs:
            fig.add_trace(go.Scatter(x=xs, y=ys, name=LABELS[name], mode="lines", stackgroup="server",
                                     line={"color": COLORS[name]}), row=4, col=1)
    _style(fig, "", height=TALL_HEIGHT + 80)
    fig.update_layout(title=None, margin={"l": 10, "r": 10, "t": 30, "b": 10})
    _legend_per_panel(fig, n_panels=4)
    if not rows:
        return _empty(fig, "no load-test samples yet")
    fig.update_yaxes(title_text="req/s", rangemode="tozero", row=1, col=1)
    fig.update_yaxes(title_text="ms", rangemode="tozero", row=2, col=1)
    fig.update_yaxes(title_text="users", rangemode="tozero", row=3, col=1)
    fig.update_yaxes(title_text="ms", rangemode="tozero", row=4, col=1)
    fig.update_xaxes(title_text="seconds since start", row=4, col=1)
    return fig


def _legend_per_panel(fig: go.Figure, n_panels: int) -> None:
    """One legend beside each panel of a stacked subplot figure (Plotly's ``legend``, ``legend2``, ...),
    so each legend names only its panel's lines; a panel with one line has none (its title names it)."""
    for panel in range(1, n_panels + 1):
        axis = "y" if panel == 1 else f"y{panel}"
        traces = [t for t in fig.data if (t.yaxis or "y") == axis]
        name = "legend" if panel == 1 else f"legend{panel}"
        for t in traces:
            t.update(legend=name, showlegend=len(traces) > 1)
        domain = fig.layout["yaxis" if panel == 1 else f"yaxis{panel}"].domain
        fig.update_layout({name: {"orientation": "v", "yanchor": "top", "y": domain[1], "xanchor": "left",
                                  "x": 1.01, "font": {"size": 11}, "bgcolor": "rgba(0,0,0,0)",
                                  "tracegroupgap": 2}})


def batch_size_figure(buckets: Mapping[float, float] | Sequence[tuple[float, float]],
                      title: str = "Realised batch size") -> go.Figure:
    """Bar chart of a histogram given as ``{upper_bound: count}`` (non-cumulative counts).

    Bars are labelled by bucket range ("2-4", "≤1") so a reader sees which batch
    sizes the batcher actually formed, not the configured maximum.
    """
    items = sorted((float(k), float(v)) for k, v in (buckets.items() if isinstance(buckets, Mapping) else buckets))
    fig = go.Figure()
    _style(fig, title)
    nonzero = [i for i, (_, v) in enumerate(items) if v > 0]
    if not nonzero:
        return _empty(fig, "no batches yet")
    # Only the range the batcher used: empty buckets past the largest batch say nothing.
    first = nonzero[0]
    items = items[max(0, first - 1): nonzero[-1] + 1]
    prev: float | None = None if first == 0 else items[0][0]
    if first > 0:
        items = items[1:]
    names: list[str] = []
    for bound, _ in items:
        if not math.isfinite(bound):
            names.append(f">{prev:g}" if prev is not None else "all")
        elif prev is None:
            names.append(f"≤{bound:g}")
        else:
            names.append(f"{prev:g}–{bound:g}")
        prev = bound
    fig.add_trace(go.Bar(x=names, y=[v for _, v in items], marker_color=COLORS["rps"],
                         hovertemplate="batch size %{x}<br>%{y:.0f} batches<extra></extra>"))
    fig.update_xaxes(title_text="rows per batch", type="category")
    fig.update_yaxes(title_text="batches", rangemode="tozero")
    fig.update_layout(hovermode="closest")
    return fig


def latency_split_figure(queue_ms: float | None, compute_ms: float | None, other_ms: float | None = None,
                         title: str = "Where a request's time goes") -> go.Figure:
    """One horizontal stacked bar: queue wait vs compute (vs the rest: HTTP, decoding)."""
    fig = go.Figure()
    _style(fig, title, height=180)
    parts = [("queue wait", queue_ms, COLORS["server_queue_ms"]),
             ("compute", compute_ms, COLORS["server_compute_ms"]),
             ("other", other_ms, "#c7c7c7")]
    parts = [(n, v, c) for n, v, c in parts if v is not None and math.isfinite(v) and v >= 0]
    if not parts or sum(v for _, v, _ in parts) <= 0:
        return _empty(fig, "no requests yet")
    for name, value, color in parts:
        fig.add_trace(go.Bar(y=["mean"], x=[value], name=name, orientation="h", marker_color=color,
                             hovertemplate=f"{name}: %{{x:.2f}} ms<extra></extra>"))
    fig.update_layout(barmode="stack", hovermode="closest")
    fig.update_xaxes(title_text="ms per request (mean)", rangemode="tozero")
    return fig


def overload_figure(points: Sequence[Mapping[str, float]], *, current: float | None = None) -> go.Figure:
    """Goodput and 503s/s against offered load, one point per open-loop run (see
    ``loadtest.results.overload_point``); the diagonal is "everything offered was served"."""
    fig = go.Figure()
    _style(fig, "Goodput and 503s against offered load")
    pts = sorted(points, key=lambda p: p["offered"])
    if not pts:
        return _empty(fig, "no open-loop (rate) runs yet")
    xs = [p["offered"] for p in pts]
    top = max(xs)
    fig.add_trace(go.Scatter(x=[0, top], y=[0, top], mode="lines", name="offered", line={"dash": "dot",
                             "color": "#c7c7c7"}, hoverinfo="skip"))
    fig.add_trace(go.Scatter(x=xs, y=[p["goodput"] for p in pts], mode="lines+markers", name="goodput (2xx/s)",
                             line={"color": COLORS["rps"]}))
    fig.add_trace(go.Scatter(x=xs, y=[p["shed_per_s"] for p in pts], mode="lines+markers", name="503/s",
                             line={"color": COLORS["server_shed_per_s"]}))
    fig.add_trace(go.Scatter(x=xs, y=[p["achieved"] for p in pts], mode="markers", name="achieved (all answers)/s",
                             marker={"color": "#7f7f7f", "symbol": "x"}))
    if current is not None:
        fig.add_vline(x=current, line={"color": "#ff7f0e", "width": 1}, annotation_text="this run")
    fig.update_xaxes(title_text="offered requests/s", rangemode="tozero")
    fig.update_yaxes(title_text="requests/s", rangemode="tozero")
    fig.update_layout(hovermode="closest")
    return fig


def timeline_figure(rows: Sequence[Mapping[str, Any]], names: Sequence[str], title: str, y_title: str,
                    *, x_key: str = "t") -> go.Figure:
    """A few lines over time from wide rows (the Serve page's scraped history)."""
    fig = go.Figure()
    _style(fig, title)
    plotted = False
    for name in names:
        xs, ys = _column(rows, name, x_key)
        if xs:
            plotted = True
            # connectgaps: an idle interval (no batch ran) leaves no queue/compute figure; bridge it.
            fig.add_trace(go.Scatter(x=xs, y=ys, name=LABELS.get(name, name), mode="lines+markers",
                                     line={"color": COLORS.get(name)}, marker={"size": 4}, connectgaps=True))
    if not plotted:
        return _empty(fig, "no samples yet")
    fig.update_xaxes(title_text="seconds")
    fig.update_yaxes(title_text=y_title, rangemode="tozero")
    return fig


# -- comparing runs ---------------------------------------------------------------------


def overlay_figure(runs: Sequence[tuple[str, Series]], metric: str, *, x_title: str = "epoch",
                   title: str | None = None) -> go.Figure:
    """One line per run for ``metric`` (e.g. val_loss of several train runs, p95 of load runs)."""
    fig = go.Figure()
    _style(fig, title or f"{LABELS.get(metric, metric)} by run")
    plotted = 0
    for i, (label, series) in enumerate(runs):
        points = series.get(metric) or []
        if not points:
            continue
        xs, ys = _clean(points)
        fig.add_trace(go.Scatter(x=xs, y=ys, name=label, mode="lines+markers",
                                 line={"color": RUN_PALETTE[i % len(RUN_PALETTE)], "width": 2},
                                 marker={"size": 4}))
        plotted += 1
    if not plotted:
        return _empty(fig, f"none of the selected runs recorded {metric}")
    fig.update_xaxes(title_text=x_title)
    if x_title == "epoch":
        _whole_ticks(fig, [x for _, s in runs for x, _ in s.get(metric) or []])
    fig.update_yaxes(title_text=LABELS.get(metric, metric))
    return fig


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict -> dotted keys (``model.hidden``), for config diffs and exports."""
    out: dict[str, Any] = {}
    for key, value in d.items():
        full = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, full + "."))
        else:
            out[full] = value
    return out


def config_diff(configs: Mapping[str, Mapping[str, Any]], *, only_different: bool = True) -> list[dict[str, Any]]:
    """Rows ``{"parameter": key, run_label: value, ...}`` comparing flattened configs.

    With ``only_different`` the rows where every run agrees are dropped, which is
    usually what a reader wants from a diff.
    """
    flat = {label: flatten(cfg) for label, cfg in configs.items()}
    keys = sorted({k for f in flat.values() for k in f})
    rows: list[dict[str, Any]] = []
    for key in keys:
        values = [flat[label].get(key, "—") for label in flat]
        if only_different and len({repr(v) for v in values}) <= 1:
            continue
        row: dict[str, Any] = {"parameter": key}
        for label, value in zip(flat, values, strict=True):
            row[label] = value if isinstance(value, (int, float, str, bool)) else repr(value)
        rows.append(row)
    return rows
