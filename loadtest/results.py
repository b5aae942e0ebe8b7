"""Pure parsing of Locust's output files and the judgement of a finished run.

Locust writes, for ``--csv PREFIX``:

- ``PREFIX_stats_history.csv``: one row per second (per endpoint with
  ``--csv-full-history``, plus ``Aggregated``); appended while it runs, so the
  last line may be half written when read;
- ``PREFIX_stats.csv``: totals per endpoint, rewritten every second;
- ``PREFIX_failures.csv``: failure messages with their counts.

Nothing here touches files or processes: callers pass text and get plain data
back, so the live tailer, the final summary and the tests share one parser.
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

AGGREGATED = "Aggregated"
# Percentile columns we turn into registry metrics: Locust column -> metric name.
PERCENTILES = {"50%": "p50_ms", "90%": "p90_ms", "95%": "p95_ms", "99%": "p99_ms"}
SERVER_METRICS = ("server_rps", "server_queue_ms", "server_compute_ms", "server_batch_size", "server_shed_per_s")
ENDPOINT_PREFIX = "endpoint:"
# Locust's own warning when its process runs hot (locust/runners.py).
LOCUST_CPU_WARNINGS = ("CPU usage above", "CPU usage was too high", "CPU usage threshold was exceeded")
SATURATION_CPU_PCT = 90.0

# Failure reasons the locustfile reports (see locustfile.classify_response).
REASON_SHED = "503 shed"
REASON_DEADLINE = "504 deadline"
REASON_REFUSED = "connection refused"
REASON_TIMEOUT = "timeout"

_WRAPPED_ERROR = re.compile(r"^\w+\((?P<q>['\"])(?P<msg>.*)(?P=q)\)$", re.S)


@dataclass(frozen=True)
class HistoryRow:
    """One line of ``_stats_history.csv`` (latencies in ms; None where Locust wrote N/A)."""

    ts: int
    users: int
    method: str
    name: str
    rps: float
    fail_per_s: float
    percentiles: Mapping[str, float | None]
    total_requests: int
    total_failures: int
    total_avg_ms: float | None
    total_max_ms: float | None

    @property
    def aggregated(self) -> bool:
        return self.name == AGGREGATED


@dataclass(frozen=True)
class StatsRow:
    """One line of ``_stats.csv``: totals for the run so far."""

    method: str
    name: str
    requests: int
    failures: int
    avg_ms: float | None
    min_ms: float | None
    max_ms: float | None
    rps: float
    fail_per_s: float
    percentiles: Mapping[str, float | None] = field(default_factory=dict)


def split_complete_lines(buffer: str) -> tuple[list[str], str]:
    """Lines that end in a newline, and the unfinished rest (kept for the next read).

    Locust appends the history file through a buffered writer, so a read can
    stop mid-line; such a line is only parsed once its newline arrives.
    """
    if "\n" not in buffer:
        return [], buffer
    head, _, rest = buffer.rpartition("\n")
    return [line for line in head.split("\n") if line.strip()], rest


def _num(value: str) -> float | None:
    """A number from a Locust cell; None for N/A, empty or garbage."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _columns(header: Sequence[str], required: Iterable[str]) -> dict[str, int] | None:
    """Column index by name, or None when a required column is missing (not the file we expected)."""
    columns = {name: i for i, name in enumerate(header)}
    return columns if all(name in columns for name in required) else None


def _whole_rows(rows: Iterable[list[str]], width: int) -> Iterator[list[str]]:
    """Rows as wide as the header: a row torn by a concurrent write (or a foreign one) is skipped."""
    return (cells for cells in rows if len(cells) == width)


def _cell(columns: Mapping[str, int], cells: Sequence[str], name: str) -> float | None:
    """The number in column ``name`` of a row; None for an absent column or an empty/non-numeric cell."""
    i = columns.get(name)
    return None if i is None else _num(cells[i])


def _csv_table(text: str, required: Iterable[str]) -> tuple[dict[str, int], Iterator[list[str]]] | None:
    """``(columns, whole rows)`` of a CSV file's text; None when it is empty or lacks a required column."""
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if header is None:
        return None
    columns = _columns(header, required)
    if columns is None:
        return None
    return columns, _whole_rows(reader, len(header))


def parse_history_lines(header: Sequence[str], lines: Iterable[str]) -> list[HistoryRow]:
    """Rows from complete history lines; lines that do not parse (torn, foreign) are skipped."""
    needed = ("Timestamp", "User Count", "Name", "Requests/s", "Failures/s", "Total Request Count")
    columns = _columns(header, needed)
    if columns is None:
        raise ValueError(f"not a Locust stats history header: {list(header)!r}")
    rows: list[HistoryRow] = []
    for cells in _whole_rows(csv.reader(lines), len(header)):
        ts = _num(cells[columns["Timestamp"]])
        users = _num(cells[columns["User Count"]])
        total = _num(cells[columns["Total Request Count"]])
        if ts is None or users is None or total is None:
            continue

        def cell(name: str, cells: list[str] = cells) -> float | None:
            return _cell(columns, cells, name)

        rows.append(
            HistoryRow(
                ts=int(ts),
                users=int(users),
                method=cells[columns["Type"]] if "Type" in columns else "",
                name=cells[columns["Name"]],
                rps=cell("Requests/s") or 0.0,
                fail_per_s=cell("Failures/s") or 0.0,
                percentiles={p: cell(p) for p in PERCENTILES},
                total_requests=int(total),
                total_failures=int(cell("Total Failure Count") or 0),
                total_avg_ms=cell("Total Average Response Time"),
                total_max_ms=cell("Total Max Response Time"),
            )
        )
    return rows


def parse_history(text: str) -> list[HistoryRow]:
    """All complete rows of a whole history file's text (header included)."""
    lines, _ = split_complete_lines(text)
    if not lines:
        return []
    header = next(csv.reader([lines[0]]))
    return parse_history_lines(header, lines[1:])


def frames_from_history(
    rows: Iterable[HistoryRow], start_ts: float, *, locust_rates: bool = False
) -> list[tuple[int, dict[str, float | None]]]:
    """Registry frames ``(step, {metric: value})``, one per second of the run.

    ``step`` is whole seconds since ``start_ts``. ``rps``/``fail_per_s`` count the
    requests completed in that second and ``avg_ms`` is their mean latency, both
    recovered from Locust's running totals; percentiles are Locust's own
    current-window (about 10 s) figures.
    Per-endpoint rows add ``endpoint:<name>/rps`` etc. A second written twice
    keeps its last row.

    ``locust_rates`` takes Locust's own smoothed rates instead: in distributed
    runs (``--processes``, workers) the master's totals grow in bursts, once per
    worker report (every 3 s), so per-second differences would saw-tooth.
    """
    frames: dict[int, dict[str, float | None]] = {}
    previous: dict[str, HistoryRow] = {}
    for row in rows:
        step = max(0, int(row.ts - int(start_ts)))
        frame = frames.setdefault(step, {})
        prev = previous.get(row.name)
        window_avg = _window_mean(prev, row)
        rps, fail_per_s = (row.rps, row.fail_per_s) if locust_rates else _per_second(prev, row)
        previous[row.name] = row
        if row.aggregated:
            frame.update(
                {
                    "users": float(row.users),
                    "rps": rps,
                    "fail_per_s": fail_per_s,
                    **{metric: row.percentiles.get(col) for col, metric in PERCENTILES.items()},
                    "avg_ms": window_avg,
                }
            )
        else:
            prefix = f"{ENDPOINT_PREFIX}{row.method} {row.name}/".replace("  ", " ")
            frame.update(
                {
                    prefix + "rps": rps,
                    prefix + "fail_per_s": fail_per_s,
                    prefix + "p95_ms": row.percentiles.get("95%"),
                }
            )
    return sorted(frames.items())


def _per_second(prev: HistoryRow | None, row: HistoryRow) -> tuple[float, float]:
    """Requests and failures per second since the previous row, from Locust's running totals.

    Locust's own ``Requests/s`` column is a 10-second average lagging 2 s behind,
    which smears steps and spikes; differencing the totals gives each second its own rate.
    """
    if prev is None:
        return float(row.total_requests), float(row.total_failures)  # the first row covers about one second
    dt = row.ts - prev.ts
    if dt <= 0:
        return row.rps, row.fail_per_s
    return (
        max(0.0, (row.total_requests - prev.total_requests) / dt),
        max(0.0, (row.total_failures - prev.total_failures) / dt),
    )


def _window_mean(prev: HistoryRow | None, row: HistoryRow) -> float | None:
    if row.total_avg_ms is None:
        return None
    if prev is None or prev.total_avg_ms is None:
        return row.total_avg_ms if row.total_requests else None
    n = row.total_requests - prev.total_requests
    if n <= 0:
        return None
    value = (row.total_avg_ms * row.total_requests - prev.total_avg_ms * prev.total_requests) / n
    return max(0.0, value)


def parse_stats_csv(text: str) -> dict[str, StatsRow]:
    """``_stats.csv`` rows by endpoint name (``Aggregated`` for the total); torn rows skipped."""
    table = _csv_table(text, ("Request Count", "Name"))
    if table is None:
        return {}
    columns, rows = table
    out: dict[str, StatsRow] = {}
    for cells in rows:

        def cell(name: str, cells: list[str] = cells) -> float | None:
            return _cell(columns, cells, name)

        requests = cell("Request Count")
        if requests is None:
            continue
        out[cells[columns["Name"]]] = StatsRow(
            method=cells[columns["Type"]] if "Type" in columns else "",
            name=cells[columns["Name"]],
            requests=int(requests),
            failures=int(cell("Failure Count") or 0),
            avg_ms=cell("Average Response Time"),
            min_ms=cell("Min Response Time"),
            max_ms=cell("Max Response Time"),
            rps=cell("Requests/s") or 0.0,
            fail_per_s=cell("Failures/s") or 0.0,
            percentiles={p: cell(p) for p in PERCENTILES},
        )
    return out


def failure_reason(error: str) -> str:
    """The reason text inside Locust's recorded error (``CatchResponseError('503 shed')`` -> ``503 shed``)."""
    text = error.strip()
    m = _WRAPPED_ERROR.match(text)
    if m:
        text = m["msg"]
    return text or "unknown"


def parse_failures_csv(text: str) -> dict[str, int]:
    """``{reason: occurrences}`` from ``_failures.csv`` (summed over endpoints)."""
    table = _csv_table(text, ("Error", "Occurrences"))
    if table is None:
        return {}
    columns, rows = table
    out: dict[str, int] = {}
    for cells in rows:
        count = _num(cells[columns["Occurrences"]])
        if count is None:
            continue
        reason = failure_reason(cells[columns["Error"]])
        out[reason] = out.get(reason, 0) + int(count)
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def locust_warned_cpu(log_text: str) -> bool:
    """True if Locust logged its own high-CPU warning."""
    return any(w in log_text for w in LOCUST_CPU_WARNINGS)


def detect_saturation(
    log_text: str, cpu_samples: Sequence[float], threshold: float = SATURATION_CPU_PCT
) -> tuple[bool, str | None]:
    """Did the load generator, rather than the server, limit the run?

    ``cpu_samples`` are Locust's CPU use per second in percent of the cores it
    can use (100 = every Locust process busy all the time). The run counts as
    saturated when Locust warned, or when the median second of the busy part
    of the run reached ``threshold``.
    """
    if locust_warned_cpu(log_text):
        return True, "Locust warned that its CPU usage went above 90%"
    busy = sorted(s for s in cpu_samples if s is not None)
    if busy:
        median = busy[len(busy) // 2]
        if median >= threshold:
            return True, f"Locust used {median:.0f}% of its CPU (median second) >= {threshold:.0f}%"
    return False, None


def _mean(values: Iterable[float | None]) -> float | None:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return sum(vals) / len(vals) if vals else None


def summarize(
    *,
    stats: Mapping[str, StatsRow],
    history: Sequence[HistoryRow],
    failures_by_reason: Mapping[str, int],
    cpu_samples: Sequence[float] = (),
    log_text: str = "",
    offered_rps: float | None = None,
    target: str = "",
    server_frames: Sequence[Mapping[str, float | None]] = (),
    users: int | None = None,
) -> dict[str, Any]:
    """The run summary (the keys the registry, the CLI, the gates and tuning read).

    Totals come from ``_stats.csv``; if Locust died before rewriting it, the last
    aggregated history row stands in (so a killed run still has its counts).
    """
    total = stats.get(AGGREGATED)
    last_hist = next((r for r in reversed(history) if r.aggregated), None)
    if total is not None and (last_hist is None or total.requests >= last_hist.total_requests):
        requests, failures = total.requests, total.failures
        pct = dict(total.percentiles)
        avg_ms, max_ms, rps = total.avg_ms, total.max_ms, total.rps
    elif last_hist is not None:
        requests, failures = last_hist.total_requests, last_hist.total_failures
        pct = {p: None for p in PERCENTILES}
        avg_ms, max_ms = last_hist.total_avg_ms, last_hist.total_max_ms
        busy = [r.rps for r in history if r.aggregated and r.users > 0]
        rps = _mean(busy) or 0.0
        # Cumulative percentiles are not in the history; the busiest window's are the honest stand-in.
        for col in PERCENTILES:
            vals = [r.percentiles.get(col) for r in history if r.aggregated]
            vals = [v for v in vals if v is not None]
            pct[col] = max(vals) if vals else None
    else:
        requests = failures = 0
        pct = {p: None for p in PERCENTILES}
        avg_ms = max_ms = None
        rps = 0.0
    if requests == failures:
        # Locust reports latencies of failed requests too; with no success they say nothing about serving.
        pct = {p: None for p in PERCENTILES}
        avg_ms = max_ms = None
    cpu_mean = _mean(cpu_samples)
    saturated, saturation_reason = detect_saturation(log_text, cpu_samples)
    shed = int(failures_by_reason.get(REASON_SHED, 0))
    summary: dict[str, Any] = {
        "requests": requests,
        "failures": failures,
        "fail_ratio": (failures / requests) if requests else 1.0,
        "rps": rps,
        "ok_rps": rps * (requests - failures) / requests if requests else 0.0,
        **{metric: pct.get(col) for col, metric in PERCENTILES.items()},
        "avg_ms": avg_ms,
        "max_ms": max_ms,
        "failures_by_reason": dict(failures_by_reason),
        "saturated": saturated,
        "saturation_reason": saturation_reason,
        "locust_cpu_pct": cpu_mean,
        "offered_rps": offered_rps,
        "users": users,
        "shed": shed,
        "target": target,
    }
    if server_frames:
        summary["server"] = {
            name.removeprefix("server_"): _mean(f.get(name) for f in server_frames) for name in SERVER_METRICS
        }
    summary["verdict"] = verdict(summary)
    return summary


def is_http_answer(reason: str) -> bool:
    """True for failures the server answered (``503 shed``, ``400 ...``, ``200 with ...``), not transport errors."""
    return len(reason) >= 3 and reason[:3].isdigit()


def target_unreachable(summary: Mapping[str, Any]) -> bool:
    """No request got an HTTP answer at all: the target is down, unreachable or hung."""
    requests = int(summary.get("requests") or 0)
    failures = int(summary.get("failures") or 0)
    reasons: Mapping[str, int] = summary.get("failures_by_reason") or {}
    if requests == 0:
        return True
    return failures >= requests and not any(is_http_answer(r) for r in reasons)


RATE_SHORTFALL = 0.9  # an open-loop run achieving less than this share of its offered rate fell short


def verdict(summary: Mapping[str, Any]) -> str:
    """The run's headline: ``PASS``/``FAIL`` over its SLO gates first (a failed gate named
    with measured vs limit), then what happened, worst news first. Without gates there
    is no PASS/FAIL, only what happened. Call it again once ``summary["slo"]`` is set."""
    facts = _facts(summary)
    gates: Sequence[Mapping[str, Any]] = summary.get("slo") or ()
    if not gates:
        return facts
    failed = [g for g in gates if not g.get("passed")]
    if failed:
        return "FAIL: " + "; ".join(gate_text(g) for g in failed) + " | " + facts.removeprefix("ok: ")
    return f"PASS: {'the gate' if len(gates) == 1 else f'all {len(gates)} gates'} held | " + facts.removeprefix("ok: ")


def verdict_status(summary: Mapping[str, Any]) -> str:
    """``"PASS"`` when the run had gates and every one held, ``"FAIL"`` when one failed, else ``""``."""
    gates = summary.get("slo") or ()
    if not gates:
        return ""
    return "PASS" if all(g.get("passed") for g in gates) else "FAIL"


def gate_text(gate: Mapping[str, Any]) -> str:
    """``p95<=100ms measured 160 ms (limit <= 100 ms)`` from a recorded gate."""
    metric = str(gate.get("metric", ""))
    unit = {"rps": " req/s", "fail_ratio": "", "failures": ""}.get(metric, " ms")
    measured = gate.get("measured")
    shown = "n/a (the run has no such figure)" if measured is None else f"{float(measured):.4g}{unit}"
    return f"{gate.get('expr')} measured {shown} (limit {gate.get('op')} {float(gate.get('limit', 0.0)):.4g}{unit})"


def rate_shortfall(summary: Mapping[str, Any]) -> str | None:
    """For an open-loop run that achieved under RATE_SHORTFALL of its offered rate: offered
    vs achieved and why: the server shed or slowed, or the load generator could not offer it
    (Locust out of CPU, or too few users: each user waits for its answer, so offering a rate
    takes about rate x mean response time users). None when there is no shortfall."""
    offered = summary.get("offered_rps")
    if not offered:
        return None
    achieved = float(summary.get("rps") or 0.0)
    if achieved >= RATE_SHORTFALL * offered:
        return None
    reasons: list[str] = []
    shed = int(summary.get("shed") or 0)
    server = summary.get("server") or {}
    queue_ms = server.get("queue_ms")
    queue_txt = f", mean queue wait {queue_ms:.1f} ms" if queue_ms is not None else ""
    if shed:
        reasons.append(f"the server shed load: {shed} requests got 503 (queue full{queue_txt}), "
                       "the offered rate is above its capacity")
    if summary.get("saturated"):
        reasons.append(f"the load generator could not keep up ({summary.get('saturation_reason')})")
    users = summary.get("users")
    avg_ms = summary.get("avg_ms")
    if users and avg_ms:
        needed = math.ceil(offered * avg_ms / 1000.0)
        if users < needed:
            reasons.append(f"{users} users cannot offer it at a mean response time of {avg_ms:.1f} ms: "
                           f"that needs about {needed} users (rate x mean response time)")
        elif not reasons:
            reasons.append(f"the server slowed: mean response time {avg_ms:.1f} ms{queue_txt}")
    if not reasons:
        reasons.append("neither 503s, a saturated load generator nor too few users explain it")
    return (f"offered {offered:.0f} req/s, achieved {achieved:.0f} req/s ({achieved / offered:.0%}): "
            + "; ".join(reasons))


def overload_point(summary: Mapping[str, Any]) -> dict[str, float] | None:
    """One point of goodput and 503s against offered load from an open-loop run's summary:
    ``offered``, ``achieved``, ``goodput`` (successful requests/s) and ``shed_per_s``; None
    for a closed-loop run or one without requests."""
    offered = summary.get("offered_rps")
    requests = int(summary.get("requests") or 0)
    rps = float(summary.get("rps") or 0.0)
    if not offered or not requests or rps <= 0:
        return None
    seconds = requests / rps
    return {"offered": float(offered), "achieved": rps, "goodput": float(summary.get("ok_rps") or 0.0),
            "shed_per_s": int(summary.get("shed") or 0) / seconds}


def _facts(summary: Mapping[str, Any]) -> str:
    """What the run measured, worst news first (the verdict without its gates)."""
    requests = int(summary.get("requests") or 0)
    failures = int(summary.get("failures") or 0)
    reasons: Mapping[str, int] = summary.get("failures_by_reason") or {}
    target = summary.get("target") or "the target"
    parts: list[str] = []
    if requests == 0:
        return f"no request completed: {target} never answered"
    refused = int(reasons.get(REASON_REFUSED, 0))
    if failures >= requests and refused < requests:
        parts.append(f"no request succeeded out of {requests}")
    if refused:
        if refused == requests:
            parts.append(f"{target} refused every connection ({refused} requests): it is down")
        else:
            parts.append(
                f"{target} refused {refused} of {requests} requests: it went down during the run "
                f"({requests - failures} succeeded)"
            )
    if summary.get("saturated"):
        parts.append(
            f"load generator saturated ({summary.get('saturation_reason')}): this run measured Locust, "
            "not the server; add --processes or workers"
        )
    shed = int(summary.get("shed") or 0)
    shortfall = rate_shortfall(summary)
    if shortfall:
        parts.append(shortfall)  # names the 503s itself
    elif shed:
        offered = summary.get("offered_rps")
        offered_txt = f" at an offered {offered:.0f} req/s" if offered else ""
        parts.append(
            f"the endpoint shed load: {shed} of {requests} requests got 503 (queue full){offered_txt}; "
            f"it answered {summary.get('ok_rps') or 0.0:.0f} req/s successfully — offered load is above its capacity"
        )
    other = failures - refused - shed
    if other > 0:
        top = ", ".join(f"{r} x{c}" for r, c in reasons.items() if r not in (REASON_REFUSED, REASON_SHED))
        parts.append(f"{other} other failures ({top})")
    if not parts:
        p95 = summary.get("p95_ms")
        p95_txt = "n/a" if p95 is None else f"{p95:.0f} ms"
        return f"ok: {summary.get('rps', 0.0):.0f} req/s, p95 {p95_txt}, no failures out of {requests}"
    return "; ".join(parts)
