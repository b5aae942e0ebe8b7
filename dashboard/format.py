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


def is_sub_run(run: Run) -> bool:
    """A run a sweep made (its load steps, endpoints, trainings): the registry links it by ``parent_id``."""
    return run.parent_id is not None


def sub_runs_by_parent(runs: Iterable[Run]) -> dict[str, list[Run]]:
    """Sub-runs grouped under their parent's id, in the order given."""
    out: dict[str, list[Run]] = {}
    for run in runs:
        if run.parent_id is not None:
            out.setdefault(run.parent_id, []).append(run)
    return out


def running_first(runs: Sequence[Run]) -> list[Run]:
    """Active runs first (newest first among them), then the rest, each group in the order given."""
    return [r for r in runs if r.active] + [r for r in runs if not r.active]


def model_names(runs: Iterable[Run]) -> dict[str, str]:
    """Model file path -> the name of the run that made (or imported) it, for naming endpoints by model."""
    return {str(r.summary["model_path"]): r.name for r in runs if r.summary.get("model_path")}


def serve_description(run: Run, names: Mapping[str, str] | None = None) -> str:
    """What an endpoint serves and how: ``train digits · tflite · batch 32 / 2.0 ms`` (workers when more than 1)."""
    cfg = run.config
    serving = cfg.get("serving") or (run.summary.get("config") or {})
    if cfg.get("ceiling"):
        model = "HTTP ceiling (no model)"
    else:
        path = str(cfg.get("model_path") or run.summary.get("model_path") or "")
        model = (names or {}).get(path) or (_model_from_path(path) if path else "model ?")
    parts = [model, str(serving.get("runtime") or "?")]
    mbs = serving.get("max_batch_size")
    if mbs is not None:
        parts.append("no batching" if int(mbs) <= 1 else f"batch {mbs} / {serving.get('batch_timeout_ms', '?')} ms")
    workers = int(serving.get("workers") or 1)
    if workers > 1:
        parts.append(f"{workers} workers")
    return " · ".join(parts)


def _model_from_path(path: str) -> str:
    """A model named by its file when no run names it: ``model.keras`` in a run folder reads as that run."""
    p = path.rstrip("/").rsplit("/", 2)
    return f"model of run {p[-2]}" if len(p) >= 2 and p[-1] in ("model.keras", "saved_model") else p[-1]


def run_label(run: Run, names: Mapping[str, str] | None = None) -> str:
    """One line naming a run in pickers: status marker, readable name, start time, full id.

    An endpoint reads as its model, runtime and batching (every endpoint's own name is its URL
    model name, the same for all); ``names`` maps model paths to the runs that made them.
    """
    marker = f"{STATUS_ICONS.get(run.status, '')} {run.status}"
    name = serve_description(run, names) if run.kind == "serve" else run.name
    return f"{marker} · {name} · {when(run.created_at)[5:]} · {run.id}"


def apply_message(run_id: str, model_name: str, config: dict[str, Any], label: str) -> str:
    """What Apply did, as a sentence (the full config is in the "Recommended config" expander)."""
    workers = config.get("workers", 1)
    return (f"Restarting the endpoint of {model_name} with {label} ({config.get('runtime')} runtime, batches of up "
            f"to {config.get('max_batch_size')} rows waiting at most {config.get('batch_timeout_ms'):g} ms, "
            f"{workers} worker{'s' if workers != 1 else ''}) as run {run_id}, on the same URL; "
            "the **Serve** page shows its stages until it is ready.")


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


def runs_table(runs: Iterable[Run], *, icons: bool = True, parent: bool = False,
               sub_runs: Mapping[str, Sequence[Run]] | None = None) -> list[dict[str, Any]]:
    """Rows for the Runs table: ``icons=False`` for exports (plain ``completed``), ``parent`` adds the id of
    the sweep a run belongs to, ``sub_runs`` (by parent id) the count of a sweep's own runs."""
    return [
        {
            "id": r.id,
            "kind": r.kind,
            "name": r.name,
            "status": f"{STATUS_ICONS.get(r.status, '')} {r.status}" if icons else r.status,
            "created": when(r.created_at),
            "duration": duration(r.duration_s),
            "result": headline(r),
            **({"sub-runs": len(sub_runs.get(r.id, ())) or None} if sub_runs is not None else {}),
            **({"parent": r.parent_id or ""} if parent else {}),
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
