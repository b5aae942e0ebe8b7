"""Pure Plotly figure builders for the Tune page: data in, ``go.Figure`` out.

No Streamlit here, so every figure is testable (and downloadable as HTML) without a UI.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import plotly.graph_objects as go

from tuning.pareto import pareto_mask
from tuning.points import PARAM_ORDER, Point, group_by_config

SLO_COLOUR = "crimson"
DOMINATED_COLOUR = "lightgrey"
FRONT_COLOUR = "#1f77b4"
COMPARE_COLOUR = "#ff7f0e"
PERCENTILES = ("p50_ms", "p95_ms", "p99_ms")


def _empty(title: str, message: str) -> go.Figure:
    fig = go.Figure()
    fig.update_layout(title=title, xaxis={"visible": False}, yaxis={"visible": False},
                      annotations=[{"text": message, "showarrow": False, "font": {"size": 14}}])
    return fig


def latency_throughput_figure(
    points: Sequence[Point],
    *,
    percentile: str = "p95_ms",
    slo_ms: float | None = None,
    highlight: str | None = None,
) -> go.Figure:
    """Latency vs throughput, one line per config (each point a load level), with the SLO line.

    The knee of each curve is that config's capacity: where latency shoots up while
    throughput stops growing.
    """
    if percentile not in PERCENTILES:
        raise ValueError(f"percentile must be one of {', '.join(PERCENTILES)}; got {percentile!r}")
    title = f"{percentile.removesuffix('_ms')} latency vs throughput"
    if not points:
        return _empty(title, "no measured points yet")
    fig = go.Figure()
    for config_id, series in group_by_config(points).items():
        ys = [getattr(p, percentile) for p in series]
        fig.add_trace(go.Scatter(
            x=[p.rps for p in series], y=ys, mode="lines+markers+text", name=series[0].label,
            line={"width": 4 if config_id == highlight else 2},
            # Each point is one load level: label it on the chart, not only in the hover.
            text=[_level_text(p) for p in series], textposition="top left", textfont={"size": 10},
            customdata=[[p.load_text, p.fail_ratio] for p in series],
            hovertemplate="%{x:.0f} req/s, %{y:.1f} ms<br>at %{customdata[0]}, fail %{customdata[1]:.1%}"
                          "<extra>%{fullData.name}</extra>",
        ))
    if slo_ms is not None:
        fig.add_hline(y=slo_ms, line={"color": SLO_COLOUR, "dash": "dash"},
                      annotation_text=f"SLO {slo_ms:g} ms", annotation_position="top left")
    fig.update_layout(title=title, xaxis_title="throughput (requests/s)", yaxis_title=f"{percentile[:3]} (ms)",
                      legend_title="config", hovermode="closest")
    return fig


def _level_text(point: Point) -> str:
    """A load level in few characters: ``16u`` (users) or ``500/s`` (offered requests/s)."""
    return f"{point.level}/s" if point.rate is not None else f"{point.level}u"


def cpu_per_request_figure(rows: Sequence[Mapping[str, Any]]) -> go.Figure:
    """Server CPU per request (µs) by config; ``rows`` have label and cpu_ms_per_request."""
    title = "server CPU per request"
    rows = [r for r in rows if r.get("cpu_ms_per_request") is not None]
    if not rows:
        return _empty(title, "no CPU measurements yet")
    rows = sorted(rows, key=lambda r: r["cpu_ms_per_request"])
    us = [r["cpu_ms_per_request"] * 1000 for r in rows]
    fig = go.Figure(go.Bar(
        x=[r["label"] for r in rows], y=us,
        text=[f"{v:.0f} µs<br>≈{1e6 / v:.0f} req/s/core" if v > 0 else "" for v in us], textposition="auto",
        marker_color=[FRONT_COLOUR if r.get("best") else "#7f7f7f" for r in rows],
        hovertemplate="%{x}: %{y:.0f} µs/request<extra></extra>",
    ))
    fig.update_layout(title=title, xaxis_title="config", yaxis_title="CPU µs per request (lower is better)")
    return fig


def capacity_rows(points: Sequence[Point], meets: Any = None, best_id: str | None = None) -> list[dict[str, Any]]:
    """One row per config at its capacity point (highest rps within SLO, else its highest load)."""
    rows = []
    for config_id, series in group_by_config(points).items():
        ok = [p for p in series if meets is None or meets(p)]
        at = max(ok, key=lambda p: p.rps) if ok else series[-1]
        rows.append({
            "config_id": config_id, "label": at.label, **at.params,
            "capacity_rps": at.rps if ok else 0.0, "load": at.load_text, "p95_ms": at.p95_ms, "p99_ms": at.p99_ms,
            "cpu_ms_per_request": at.cpu_ms_per_request, "batch_size": at.batch_size,
            "within_slo": bool(ok), "best": config_id == best_id,
        })
    return rows


def parallel_coordinates_figure(rows: Sequence[Mapping[str, Any]], *, colour: str = "capacity_rps") -> go.Figure:
    """Parallel coordinates over the sweep: one line per config, the parameters then the outcomes."""
    title = "parallel coordinates"
    if not rows:
        return _empty(title, "no configs measured yet")
    # A parameter every config shares says nothing here (and draws an axis with made-up ticks): left out.
    params = [n for n in PARAM_ORDER if any(n in r for r in rows) and len({str(r.get(n)) for r in rows}) > 1]
    outcomes = [n for n in ("capacity_rps", "p95_ms", "p99_ms", "cpu_ms_per_request") if any(
        r.get(n) is not None for r in rows)]
    dims = []
    for name in params + outcomes:
        values = [r.get(name) for r in rows]
        if any(isinstance(v, str) for v in values):
            cats = sorted({str(v) for v in values})
            dims.append({"label": name, "values": [cats.index(str(v)) for v in values],
                         "tickvals": list(range(len(cats))), "ticktext": cats})
        else:
            dims.append({"label": name, "values": [float("nan") if v is None else float(v) for v in values]})
    colours = [float(r.get(colour) or 0.0) for r in rows]
    fig = go.Figure(go.Parcoords(
        line={"color": colours, "colorscale": "Viridis", "showscale": True, "colorbar": {"title": colour}},
        dimensions=dims,
    ))
    # Axis titles sit above the outer axes and are clipped without side margins.
    fig.update_layout(title=title, margin={"l": 80, "r": 80, "t": 90, "b": 40})
    return fig


def pareto_figure(
    rows: Sequence[Mapping[str, Any]],
    objectives: Mapping[str, str],
    *,
    x: str = "p99_ms",
    y: str = "val_accuracy",
    size: str | None = "capacity_rps",
    name: str = "Pareto front",
    compare: Sequence[Mapping[str, Any]] = (),
    compare_name: str = "other front",
) -> go.Figure:
    """Pareto scatter: front points in colour, dominated points greyed (dominance over all objectives).

    ``compare``: another sweep's rows (say, a grid's beside an Optuna search), drawn
    as its front in the plotted plane only (``y`` up, ``x`` down), so the two fronts
    can be read against each other. Rows of pruned or failed trials (never served)
    are left out of both.
    """
    title = "accuracy vs latency (Pareto front)"
    rows = [r for r in rows if r.get("state", "complete") == "complete"]
    if not rows:
        return _empty(title, "no models measured yet")
    mask = pareto_mask(rows, objectives)
    sizes = None
    if size and any(r.get(size) for r in rows):
        top = max(float(r.get(size) or 0.0) for r in rows) or 1.0
        sizes = [10 + 30 * float(r.get(size) or 0.0) / top for r in rows]
    fig = go.Figure()
    for on_front, colour, series in ((False, DOMINATED_COLOUR, "dominated"), (True, FRONT_COLOUR, name)):
        idx = [i for i, m in enumerate(mask) if m == on_front]
        if not idx:
            continue
        fig.add_trace(go.Scatter(
            x=[rows[i].get(x) for i in idx], y=[rows[i].get(y) for i in idx], mode="markers+text", name=series,
            text=[str(rows[i].get("label", i)) for i in idx], textposition="top center",
            marker={"color": colour, "size": [sizes[i] for i in idx] if sizes else 12,
                    "line": {"width": 1, "color": "#333"}},
            customdata=[[rows[i].get(size) if size else None] for i in idx],
            hovertemplate=f"%{{text}}<br>{x} %{{x:.3g}}<br>{y} %{{y:.3g}}<br>{size} %{{customdata[0]:.0f}}"
                          "<extra></extra>",
        ))
    front = sorted((rows[i] for i, m in enumerate(mask) if m and rows[i].get(x) is not None
                    and rows[i].get(y) is not None), key=lambda r: r[x])
    if len(front) > 1:
        fig.add_trace(go.Scatter(x=[r[x] for r in front], y=[r[y] for r in front], mode="lines",
                                 line={"color": FRONT_COLOUR, "dash": "dot"}, showlegend=False, hoverinfo="skip"))
    other = [r for r in compare if r.get("state", "complete") == "complete" and r.get(x) is not None
             and r.get(y) is not None]
    if other:
        other_front = sorted((r for r, m in zip(other, pareto_mask(other, {y: "max", x: "min"}), strict=True) if m),
                             key=lambda r: r[x])
        fig.add_trace(go.Scatter(
            x=[r[x] for r in other_front], y=[r[y] for r in other_front], mode="markers+lines", name=compare_name,
            text=[str(r.get("label", "")) for r in other_front],
            marker={"color": COMPARE_COLOUR, "size": 11, "symbol": "diamond-open", "line": {"width": 2}},
            line={"color": COMPARE_COLOUR, "dash": "dash"},
            hovertemplate=f"%{{text}}<br>{x} %{{x:.3g}}<br>{y} %{{y:.3g}}<extra>{compare_name}</extra>",
        ))
    fig.update_layout(title=title, xaxis_title=x, yaxis_title=y)
    return fig


def figure_html(fig: go.Figure) -> bytes:
    """A self-contained HTML file of the figure, for download buttons (no CDN: works offline)."""
    return fig.to_html(include_plotlyjs=True, full_html=True).encode()
