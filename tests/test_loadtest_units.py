"""Pure parts of the Locust side: SLO gates, shapes, Locust output parsing, payloads, config, CLI usage."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from loadtest import payload, results, shapes, slo
from loadtest.__main__ import main as cli_main
from loadtest.probes import HistoryTail
from loadtest.runner import LoadTestConfig, _outcome, locust_argv

HEADER = (
    "Timestamp,User Count,Type,Name,Requests/s,Failures/s,50%,66%,75%,80%,90%,95%,98%,99%,99.9%,99.99%,100%,"
    "Total Request Count,Total Failure Count,Total Median Response Time,Total Average Response Time,"
    "Total Min Response Time,Total Max Response Time,Total Average Content Size"
)


def hist_line(ts: int, users: int, name: str, total: int, fails: int, avg: float, p: int = 5) -> str:
    method = "" if name == "Aggregated" else "POST"
    pct = ",".join([str(p)] * 11)
    return f"{ts},{users},{method},{name},1.0,0.0,{pct},{total},{fails},{p},{avg},1,{p * 3},20"


# -- SLO ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "metric", "op", "limit"),
    [
        ("p95<=50ms", "p95", "<=", 50.0),
        ("p99 < 0.1s", "p99", "<", 100.0),
        ("avg<=7", "avg", "<=", 7.0),
        ("fail_ratio<=0.01", "fail_ratio", "<=", 0.01),
        ("fail_ratio<1%", "fail_ratio", "<", 0.01),
        ("rps>=500", "rps", ">=", 500.0),
        ("failures>0", "failures", ">", 0.0),
        ("MAX<=2s", "max", "<=", 2000.0),
    ],
)
def test_slo_parses_good_expressions(expr: str, metric: str, op: str, limit: float) -> None:
    s = slo.parse_slo(expr)
    assert (s.metric, s.op) == (metric, op)
    assert s.limit == pytest.approx(limit)


@pytest.mark.parametrize(
    "expr", ["p96<=50ms", "p95=50", "p95<=", "rps>=5ms", "p95<=10%", "latency<1", "", "fail_ratio<=2"]
)
def test_slo_rejects_malformed_expressions_naming_metrics_and_operators(expr: str) -> None:
    with pytest.raises(ValueError) as info:
        slo.parse_slo(expr)
    message = str(info.value)
    if "fail_ratio is a fraction" not in message:
        assert "p95" in message and "fail_ratio" in message and "<=" in message


def test_slo_evaluate_measures_against_summary_and_fails_missing_figures() -> None:
    summary = {"p95_ms": 40.0, "p99_ms": 120.0, "rps": 600.0, "fail_ratio": 0.0, "failures": 0, "avg_ms": None}
    gates = slo.evaluate(slo.parse_slos(["p95<=50ms", "p99<=100ms", "rps>=500", "fail_ratio<=0.01", "avg<5"]), summary)
    assert [g.passed for g in gates] == [True, False, True, True, False]
    assert gates[1].measured == 120.0 and gates[1].limit == 100.0
    assert gates[4].measured is None  # no latency measured: the gate fails rather than passing silently
    assert "FAIL" in slo.format_gate(gates[1]) and "PASS" in slo.format_gate(gates[0])


def test_slo_boundaries_respect_strictness() -> None:
    assert slo.parse_slo("p95<=50").holds(50.0)
    assert not slo.parse_slo("p95<50").holds(50.0)
    assert slo.parse_slo("rps>=10").holds(10.0)
    assert not slo.parse_slo("rps>10").holds(10.0)


# -- shapes ------------------------------------------------------------------------------------


def test_constant_shape_holds_users_then_stops() -> None:
    spec = shapes.ShapeSpec(kind="constant", users=7, spawn_rate=3, run_time_s=10)
    assert shapes.tick(spec, 0) == (7, 3.0)
    assert shapes.tick(spec, 9.9) == (7, 3.0)
    assert shapes.tick(spec, 10) is None


def test_step_shape_climbs_the_ladder_and_holds_at_max() -> None:
    spec = shapes.ShapeSpec(kind="steps", users=2, step_users=3, step_time_s=2, max_users=9, run_time_s=20)
    assert [shapes.target_users(spec, t) for t in (0, 1.9, 2, 4, 6, 8, 19)] == [2, 2, 5, 8, 9, 9, 9]
    assert shapes.peak_users(spec) == 9


def test_spike_shape_rises_fast_and_returns_to_baseline() -> None:
    spec = shapes.ShapeSpec(kind="spike", users=2, spike_users=12, spike_at_s=3, spike_duration_s=2, run_time_s=10)
    assert [shapes.target_users(spec, t) for t in (0, 2.9, 3, 4.9, 5, 9)] == [2, 2, 12, 12, 2, 2]
    assert shapes.spawn_rate_at(spec) >= 10  # reaches the peak within about a second


def test_rate_shape_splits_the_target_over_paced_users() -> None:
    spec = shapes.ShapeSpec(kind="rate", users=8, target_rps=200, run_time_s=5)
    assert shapes.per_user_rate(spec) == pytest.approx(25.0)
    assert shapes.offered_rps(spec) == 200
    assert shapes.per_user_rate(shapes.ShapeSpec(kind="constant")) is None


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"kind": "zigzag"}, "shape"),
        ({"users": 0}, "users"),
        ({"spawn_rate": 0}, "spawn_rate"),
        ({"run_time_s": -1}, "run_time_s"),
        ({"kind": "rate", "target_rps": 0}, "target_rps"),
        ({"kind": "steps", "max_users": 1, "users": 5}, "max_users"),
        ({"kind": "spike", "spike_duration_s": 0}, "spike"),
    ],
)
def test_shape_spec_names_the_bad_field(changes: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        shapes.ShapeSpec(**changes)


@pytest.mark.parametrize(("text", "seconds"), [("20", 20), ("20s", 20), ("1m30s", 90), ("1h", 3600), (2.5, 2.5)])
def test_parse_duration(text: str | float, seconds: float) -> None:
    assert shapes.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "abc", "0", "-3s", "5ms"])
def test_parse_duration_rejects_garbage(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        shapes.parse_duration(text)


# -- Locust output parsing ---------------------------------------------------------------------


def test_history_parser_skips_a_half_written_last_line() -> None:
    text = "\n".join([HEADER, hist_line(100, 2, "Aggregated", 10, 0, 4.0), hist_line(101, 2, "Aggregated", 30, 1, 6.0)])
    text += "\n" + hist_line(102, 2, "Aggregated", 50, 1, 6.0)[:37]  # torn: no newline yet
    rows = results.parse_history(text)
    assert [r.ts for r in rows] == [100, 101]
    lines, rest = results.split_complete_lines(text)
    assert rest.startswith("102,") and len(lines) == 3


def test_frames_difference_totals_into_per_second_rates_and_means() -> None:
    rows = results.parse_history(
        "\n".join(
            [
                HEADER,
                hist_line(100, 4, "/predict", 10, 0, 4.0),
                hist_line(100, 4, "Aggregated", 10, 0, 4.0),
                hist_line(101, 4, "/predict", 30, 2, 6.0),
                hist_line(101, 4, "Aggregated", 30, 2, 6.0),
            ]
        )
        + "\n"
    )
    frames = dict(results.frames_from_history(rows, start_ts=99.7))
    assert sorted(frames) == [1, 2]
    assert frames[2]["rps"] == pytest.approx(20.0)
    assert frames[2]["fail_per_s"] == pytest.approx(2.0)
    # 30 requests averaging 6 ms after 10 averaging 4 ms: the 20 new ones averaged 7 ms.
    assert frames[2]["avg_ms"] == pytest.approx(7.0)
    assert frames[2]["users"] == 4 and frames[2]["p95_ms"] == 5
    assert any(k.startswith(results.ENDPOINT_PREFIX) and k.endswith("/rps") for k in frames[2])


def test_frames_can_use_locusts_smoothed_rates_for_distributed_runs() -> None:
    rows = results.parse_history(
        "\n".join([HEADER, hist_line(100, 4, "Aggregated", 0, 0, 0.0), hist_line(101, 4, "Aggregated", 90, 0, 2.0)])
        + "\n"
    )
    frames = dict(results.frames_from_history(rows, start_ts=100, locust_rates=True))
    assert frames[1]["rps"] == 1.0  # the Requests/s column, not the 90-request burst of one worker report


def test_history_tail_reads_incrementally_and_waits_for_the_newline(tmp_path: Path) -> None:
    path = tmp_path / "x_stats_history.csv"
    tail = HistoryTail(path)
    assert tail.read() == []  # not there yet
    line1 = hist_line(100, 1, "Aggregated", 5, 0, 1.0)
    path.write_text(HEADER + "\n" + line1[:20])
    assert tail.read() == []
    with open(path, "a") as fh:
        fh.write(line1[20:] + "\n" + hist_line(101, 1, "Aggregated", 9, 0, 1.0)[:10])
    assert [r.ts for r in tail.read()] == [100]
    with open(path, "a") as fh:
        fh.write(hist_line(101, 1, "Aggregated", 9, 0, 1.0)[10:] + "\n")
    assert [r.total_requests for r in tail.read()] == [9]


def test_failures_csv_reasons_are_unwrapped_and_summed() -> None:
    text = (
        "Method,Name,Error,Occurrences,First Seen,Last Seen\n"
        "POST,/a,CatchResponseError('503 shed'),7,x,y\n"
        "POST,/b,CatchResponseError('503 shed'),3,x,y\n"
        'POST,/a,"CatchResponseError(""400 instances must be a list"")",2,x,y\n'
        "POST,/a,CatchResponseError('connection refused'),1,x,y\n"
    )
    reasons = results.parse_failures_csv(text)
    assert reasons == {"503 shed": 10, '400 instances must be a list': 2, "connection refused": 1}


def test_stats_csv_totals_and_summary_verdicts() -> None:
    stats_text = (
        "Type,Name,Request Count,Failure Count,Median Response Time,Average Response Time,Min Response Time,"
        "Max Response Time,Average Content Size,Requests/s,Failures/s,50%,66%,75%,80%,90%,95%,98%,99%,99.9%,"
        "99.99%,100%\n"
        "POST,/p,100,40,3,3.5,1,30,20,50.0,20.0,3,3,4,4,5,6,8,9,30,30,30\n"
        ",Aggregated,100,40,3,3.5,1,30,20,50.0,20.0,3,3,4,4,5,6,8,9,30,30,30\n"
    )
    stats = results.parse_stats_csv(stats_text)
    summary = results.summarize(
        stats=stats, history=[], failures_by_reason={"503 shed": 40}, offered_rps=200.0, target="http://t"
    )
    assert summary["requests"] == 100 and summary["fail_ratio"] == pytest.approx(0.4)
    assert summary["p95_ms"] == 6 and summary["shed"] == 40 and summary["offered_rps"] == 200.0
    assert "shed load" in summary["verdict"] and "capacity" in summary["verdict"]
    down = results.summarize(stats={}, history=[], failures_by_reason={})
    assert "never answered" in down["verdict"] and down["fail_ratio"] == 1.0


def _gate(expr: str, metric: str, op: str, limit: float, measured: float | None, passed: bool) -> dict:
    return {"expr": expr, "metric": metric, "op": op, "limit": limit, "measured": measured, "passed": passed}


CLEAN_RUN = {"requests": 4000, "failures": 0, "fail_ratio": 0.0, "rps": 680.0, "p95_ms": 160.0, "avg_ms": 90.0,
             "failures_by_reason": {}, "saturated": False, "shed": 0, "target": "http://t"}


def test_a_failed_gate_makes_the_verdict_fail_and_names_it_with_measured_and_limit() -> None:
    summary = {**CLEAN_RUN, "slo": [_gate("fail_ratio<=0.01", "fail_ratio", "<=", 0.01, 0.0, True),
                                    _gate("p95<=100ms", "p95", "<=", 100.0, 160.0, False)]}
    text = results.verdict(summary)
    assert text.startswith("FAIL: p95<=100ms measured 160 ms (limit <= 100 ms) | ")
    assert "fail_ratio" not in text.split("|")[0]  # only the failed gate is named
    assert "680 req/s" in text and not text.startswith("ok")
    assert results.verdict_status(summary) == "FAIL"
    summary["slo"][1] = _gate("p95<=200ms", "p95", "<=", 200.0, 160.0, True)
    assert results.verdict(summary).startswith("PASS: all 2 gates held | 680 req/s, p95 160 ms")
    # A gate the run could not measure fails and says so.
    summary["slo"] = [_gate("p99<=1s", "p99", "<=", 1000.0, None, False)]
    assert results.verdict(summary).startswith("FAIL: p99<=1s measured n/a")
    assert results.verdict(CLEAN_RUN).startswith("ok: 680 req/s") and results.verdict_status(CLEAN_RUN) == ""


def test_rate_run_short_of_its_offered_rate_says_who_fell_short() -> None:
    rate = {**CLEAN_RUN, "offered_rps": 2000.0, "users": 64, "avg_ms": 94.0}
    text = results.verdict(rate)
    assert "offered 2000 req/s, achieved 680 req/s (34%)" in text
    assert "64 users cannot offer it at a mean response time of 94.0 ms: that needs about 188 users" in text
    busy = {**rate, "users": 400, "saturated": True, "saturation_reason": "Locust used 97% of its CPU"}
    assert "the load generator could not keep up (Locust used 97% of its CPU)" in results.verdict(busy)
    shed = {**rate, "users": 400, "shed": 900, "failures": 900, "failures_by_reason": {"503 shed": 900},
            "server": {"queue_ms": 3.5}}
    assert "the server shed load: 900 requests got 503 (queue full, mean queue wait 3.5 ms)" in results.verdict(shed)
    slow = {**rate, "users": 400}
    assert "the server slowed: mean response time 94.0 ms" in results.verdict(slow)
    assert results.rate_shortfall({**rate, "rps": 1950.0}) is None  # within 10% of the offered rate
    assert results.rate_shortfall(CLEAN_RUN) is None  # closed loop: nothing offered


def test_run_headlines_and_verdict_colour_follow_the_gates() -> None:
    from dashboard import format as fmt
    from runs.registry import Run

    failed = {**CLEAN_RUN, "slo": [_gate("p95<=100ms", "p95", "<=", 100.0, 160.0, False)]}
    failed["verdict"] = results.verdict(failed)

    def run_with(summary: dict) -> Run:
        return Run(id="r1", kind="loadtest", name="swarm", config={}, status="completed", pid=None,
                   pid_started=None, created_at=0.0, started_at=0.0, ended_at=1.0, error=None,
                   stop_requested=False, summary=summary)

    run = run_with(failed)
    assert fmt.headline(run) == "FAIL (p95<=100ms): 680 req/s, p95 160.0 ms"
    assert fmt.verdict_kind(run) == "error"
    run = run_with({**failed, "slo": [_gate("p95<=200ms", "p95", "<=", 200.0, 160.0, True)]})
    assert fmt.headline(run).startswith("PASS: ") and fmt.verdict_kind(run) == "success"


def test_saturation_from_locust_warning_or_measured_cpu() -> None:
    assert results.detect_saturation("... WARNING/root: CPU usage above 90%! This may constrain", [10.0])[0]
    assert results.detect_saturation("", [95.0, 97.0, 40.0])[0]
    assert not results.detect_saturation("", [50.0, 60.0, 95.0])[0]
    summary = results.summarize(
        stats={}, history=[], failures_by_reason={}, cpu_samples=[99.0, 99.0], log_text=""
    )
    assert summary["saturated"] is True


# -- payloads and response checks -------------------------------------------------------------


def test_bodies_cycle_real_rows_with_the_requested_instances(tmp_path: Path) -> None:
    f = tmp_path / "samples.json"
    f.write_text(json.dumps({"instances": [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]}))
    rows = payload.load_samples_file(tmp_path / "model.keras")  # resolved to the samples.json beside it
    bodies = payload.build_bodies(rows, 2)
    decoded = [json.loads(b) for b in bodies]
    assert all(len(d["instances"]) == 2 for d in decoded)
    assert decoded[0]["instances"] == [[1.0, 2.0], [3.0, 4.0]]
    assert decoded[1]["instances"] == [[5.0, 6.0], [1.0, 2.0]]


@pytest.mark.parametrize(
    "content",
    ['{"instances": []}', '{"instances": [[1, 2], [3]]}', '{"instances": [["a"]]}', "not json"],
)
def test_bad_samples_files_are_refused(tmp_path: Path, content: str) -> None:
    f = tmp_path / "samples.json"
    f.write_text(content)
    with pytest.raises(ValueError, match="samples file"):
        payload.load_samples_file(f)


def test_check_response_reasons() -> None:
    ok = json.dumps({"predictions": [[0.1], [0.9]]})
    assert payload.check_response(200, ok, 2) is None
    assert payload.check_response(200, ok, 3) == "200 with 2 predictions, expected 3"
    assert payload.check_response(503, b'{"error": "queue full"}', 1) == "503 shed"
    assert payload.check_response(504, b"", 1) == "504 deadline"
    assert payload.check_response(400, b'{"error": "instances must be a list"}', 1) == "400 instances must be a list"
    assert payload.check_response(0, None, 1, ConnectionRefusedError(111, "refused")) == "connection refused"
    assert payload.check_response(0, None, 1, TimeoutError("timed out")) == "timeout"
    assert payload.check_response(200, b"<html>", 1) == "200 with a body that is not JSON"


# -- config and CLI usage ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"host": "ftp://x"}, "host"),
        ({"model_name": "a/b"}, "model_name"),
        ({"instances_per_request": 0}, "instances_per_request"),
        ({"processes": -5}, "processes"),
        ({"timeout_s": 0}, "timeout_s"),
        ({"slos": ("p95<<3",)}, "slos"),
        ({"samples_path": "", "n_features": 0}, "samples_path"),
        ({"users": 0}, "users"),
        ({"bogus": 1}, "bogus"),
    ],
)
def test_loadtest_config_names_the_bad_field(changes: dict, field: str) -> None:
    base = {"host": "http://127.0.0.1:1", "n_features": 4}
    with pytest.raises(ValueError, match=field):
        LoadTestConfig.from_dict({**base, **changes})


def test_loadtest_config_round_trips_and_builds_locust_argv(tmp_path: Path) -> None:
    cfg = LoadTestConfig(host="http://127.0.0.1:9/", n_features=4, shape="rate", target_rps=50, processes=2,
                         slos=("p95<=5ms",))
    assert cfg.host == "http://127.0.0.1:9"
    assert LoadTestConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    argv = locust_argv(cfg, tmp_path / "locust")
    for flag in ("--headless", "--csv", "--csv-full-history", "--json-file", "--html", "--stop-timeout"):
        assert flag in argv
    assert argv[argv.index("--processes") + 1] == "2"
    assert argv[argv.index("--shape") + 1] == "rate"


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["--host", "http://127.0.0.1:1", "--n-features", "4", "--slo", "p97<=1ms"],
        ["--host", "http://127.0.0.1:1", "--n-features", "4", "--run-time", "soon"],
        ["--host", "nonsense", "--n-features", "4"],
        ["--serve", "/nonexistent/model.keras"],
        ["--host", "http://127.0.0.1:1"],  # no payload source
    ],
)
def test_cli_bad_usage_exits_2_with_one_line(argv: list[str], capsys: pytest.CaptureFixture[str], home: Path) -> None:
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("python -m loadtest: error:") and "\n" not in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("summary", "stopped", "code", "status", "error_part"),
    [
        ({"requests": 10, "failures": 0}, False, 0, "completed", None),
        ({"requests": 10, "failures": 10, "failures_by_reason": {"503 shed": 10}}, False, 1, "completed", None),
        ({"requests": 10, "failures": 10, "failures_by_reason": {"timeout": 10}}, False, 1, "failed", "succeeded"),
        ({"requests": 9, "failures": 3, "failures_by_reason": {"connection refused": 3}}, False, 1, "failed", "down"),
        ({"requests": 0, "failures": 0}, False, 1, "failed", "never answered"),
        ({"requests": 5, "failures": 0}, True, 0, "stopped", "stopped"),
        ({"requests": 5, "failures": 0}, False, -9, "failed", "code -9"),
    ],
)
def test_run_outcome(summary: dict, stopped: bool, code: int, status: str, error_part: str | None) -> None:
    full = {**summary, "target": "http://t"}
    full["verdict"] = results.verdict(full)
    got_status, error = _outcome(stopped, code, full, "")
    assert got_status == status
    if error_part is None:
        assert error is None
    else:
        assert error_part in error


# -- payloads for any model: user files and rows generated from the signature -----------------------

TWO_INPUTS = (payload.InputSpec("tokens", (5,), "int32"), payload.InputSpec("vec", (2, 2), "float32"))


def test_generated_instances_follow_the_signature_distribution_and_vocabulary() -> None:
    rows = payload.generate_instances(TWO_INPUTS, payload.PayloadSpec("uniform", -2.0, 3.0, vocab_size=7), 200)
    assert len(rows) == 200 and all(sorted(r) == ["tokens", "vec"] for r in rows)
    tokens = np.array([r["tokens"] for r in rows])
    vec = np.array([r["vec"] for r in rows])
    assert tokens.shape == (200, 5) and tokens.dtype.kind == "i" and tokens.min() >= 0 and tokens.max() == 6
    assert vec.shape == (200, 2, 2) and vec.min() >= -2.0 and vec.max() <= 3.0 and vec.std() > 1.0
    normal = np.array(payload.generate_instances(TWO_INPUTS[1:], payload.PayloadSpec("normal", 0.0, 4.0), 500))
    assert normal.shape == (500, 2, 2) and normal.min() >= 0.0 and normal.max() <= 4.0
    assert abs(normal.mean() - 2.0) < 0.2 and 0.7 < normal.std() < 1.1  # centred, sd a quarter of the range
    zeros = payload.generate_instances(TWO_INPUTS[1:], payload.PayloadSpec("zeros"), 3)
    assert zeros == [[[0.0, 0.0], [0.0, 0.0]]] * 3
    for bad, needle in [({"distribution": "cauchy"}, "distribution"), ({"low": 2.0, "high": 1.0}, "low <= high"),
                        ({"vocab_size": 0}, "vocab size")]:
        with pytest.raises(ValueError, match=needle):
            payload.PayloadSpec(**bad)


def test_signature_from_tf_serving_metadata() -> None:
    def tensor(dtype: str, dims: list[int]) -> dict:
        return {"dtype": dtype, "tensor_shape": {"dim": [{"size": str(d), "name": ""} for d in dims]}}

    doc = {"metadata": {"signature_def": {"signature_def": {"serving_default": {
        "inputs": {"vec": tensor("DT_FLOAT", [-1, 2, 2]), "tokens": tensor("DT_INT32", [-1, 5])},
        "outputs": {"y": tensor("DT_FLOAT", [-1, 1])}}}}}}
    assert payload.signature_from_metadata(doc) == TWO_INPUTS
    doc["metadata"]["signature_def"]["signature_def"]["serving_default"]["inputs"]["vec"] = tensor("DT_FLOAT", [-1, -1])
    with pytest.raises(ValueError, match="fixed shapes"):
        payload.signature_from_metadata(doc)
    with pytest.raises(ValueError, match="serving_default"):
        payload.signature_from_metadata({"metadata": {}})


def test_samples_files_in_every_format(tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", np.arange(12, dtype=np.float32).reshape(3, 2, 2))
    assert payload.load_samples_file(tmp_path / "a.npy")[1] == [[4.0, 5.0], [6.0, 7.0]]
    np.savez(tmp_path / "b.npz", tokens=np.ones((2, 5), dtype=np.int32), vec=np.zeros((2, 2, 2)))
    rows = payload.load_samples_file(tmp_path / "b.npz")
    assert rows[0] == {"tokens": [1] * 5, "vec": [[0.0, 0.0], [0.0, 0.0]]} and len(rows) == 2
    (tmp_path / "c.csv").write_text("x1,x2,x3\n1,2,3\n4,5,6\n")
    assert payload.load_samples_file(tmp_path / "c.csv") == [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]
    (tmp_path / "d.json").write_text(json.dumps({"inputs": {"tokens": [[1, 2]], "vec": [[0.5, 0.5]]}}))
    assert payload.load_samples_file(tmp_path / "d.json") == [{"tokens": [1, 2], "vec": [0.5, 0.5]}]
    (tmp_path / "e.json").write_text(json.dumps({"instances": [{"a": [1]}, {"b": [1]}]}))
    (tmp_path / "f.csv").write_text("1,2\n3,x\n")
    np.save(tmp_path / "g.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    (tmp_path / "h.json").write_text(json.dumps({"instances": [[True, 1.0]]}))
    for name, needle in [("e.json", "must be an object with the keys a"), ("f.csv", "line 2 is not all numbers"),
                         ("g.npy", "not a numeric .npy"), ("h.json", "booleans")]:
        with pytest.raises(ValueError, match=needle):
            payload.load_samples_file(tmp_path / name)
