"""Plain-text formatting of runs for labels, tables and exports (pure, no Streamlit)."""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from loadtest.results import rate_shortfall, verdict_status
from runs.registry import Run

# Plain symbols (not emoji) so labels render with the fonts any browser has.
STATUS_ICONS = {
    "pending": "…",
    "running": "●",
    "completed": "✓",
    "failed": "✗",
    "stopped": "■",
    "interrupted": "⚠",
}


def duration(seconds: float | None) -> str:
    """``12.3 s``, ``4 min 05 s``, ``2 h 03 min``; an em dash when unknown."""
    if seconds is None:
        return "—"
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def when(ts: float | None) -> str:
    if ts is None:
        return "—"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def run_label(run: Run) -> str:
    """One line naming a run in pickers: name, start time, short id.

    No status here: a picker keeps an option's label while its value stays
    selected, so a changing status would show stale; the status line says it.
    """
    return f"{run.name} · {when(run.created_at)[5:]} · {run.id[-6:]}"


def headline(run: Run) -> str:
    """The one number that says how a run went, per kind."""
    s = run.summary
    if run.kind == "train":
        m = s.get("test_metrics") or {}
        if "accuracy" in m:
            return f"test accuracy {m['accuracy']:.3f}"
        if "mse" in m:
            return f"test MSE {m['mse']:.4g}"
    if run.kind == "loadtest" and "rps" in s:
        p95 = s.get("p95_ms")
        text = f"{s['rps']:.0f} req/s"
        if p95 is not None:
            text += f", p95 {p95:.1f} ms"
        status = verdict_status(s)
        if status == "FAIL":
            failed = ", ".join(str(g.get("expr")) for g in s["slo"] if not g.get("passed"))
            return f"FAIL ({failed}): {text}"
        if status == "PASS":
            return f"PASS: {text}"
        return text
    if run.kind == "serve" and s.get("url"):
        return f"{s.get('runtime', '')} at {s['url']}".strip()
    if run.error:
        return run.error.splitlines()[0][:120]
    return ""


def gates_status(run: Run) -> str:
    """``PASS``/``FAIL`` over a load test's SLO gates; empty for other runs and runs without gates."""
    return verdict_status(run.summary) if run.kind == "loadtest" else ""


def verdict_kind(run: Run) -> str:
    """How a finished load test's verdict is shown: ``error`` (a gate failed), ``success``
    (every gate held, or no gates and nothing went wrong) or ``info`` (something to read)."""
    s = run.summary
    status = verdict_status(s)
    if status == "FAIL":
        return "error"
    if run.status != "completed":
        return "info"
    if status == "PASS":
        return "success"
    return "success" if not s.get("failures") and not rate_shortfall(s) and not s.get("saturated") else "info"


def runs_table(runs: Iterable[Run]) -> list[dict[str, Any]]:
    return [
        {
            "id": r.id,
            "kind": r.kind,
            "name": r.name,
            "status": f"{STATUS_ICONS.get(r.status, '')} {r.status}",
            "created": when(r.created_at),
            "duration": duration(r.duration_s),
            "result": headline(r),
        }
        for r in runs
    ]


def run_export(run: Run, metric_rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Everything about a run as one JSON-able dict."""
    return {
        "id": run.id, "kind": run.kind, "name": run.name, "status": run.status, "error": run.error,
        "created_at": run.created_at, "started_at": run.started_at, "ended_at": run.ended_at,
        "parent_id": run.parent_id, "config": run.config, "summary": run.summary,
        "metrics": list(metric_rows),
    }


def run_export_json(run: Run, metric_rows: Sequence[Mapping[str, Any]]) -> str:
    return json.dumps(run_export(run, metric_rows), indent=2, default=str)


def rows_to_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    """Rows as CSV: ``step`` first (when present), other columns in first-seen order."""
    seen = dict.fromkeys(k for r in rows for k in r)
    columns = (["step"] if "step" in seen else []) + [k for k in seen if k != "step"]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: row.get(k, "") for k in columns})
    return buf.getvalue()
