"""Live views without a browser: the tile figures, progress text and stages (pure), the dead-target probe
(a real job against a dead port, shown once on the Load test page), and a starting endpoint's stage view."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from dashboard import live
from loadtest.preflight import probe_target, target_address
from runs.jobs import wait_job
from runs.registry import Registry
from tests.test_dashboard_pages import PAGES, TIMEOUT_S, _train_run

# A rate swarm's rows as the registry holds them: Locust's figures land late, so the newest
# seconds carry only the CPU and server samples (what used to turn every tile into "—").
RATE_ROWS = [
    {"step": 1, "locust_cpu_pct": 12.0},
    {"step": 2, "users": 10, "rps": 98.0, "fail_per_s": 0.0, "p95_ms": 4.1, "locust_cpu_pct": 20.0},
    {"step": 3, "users": 10, "rps": 101.0, "fail_per_s": 0.5, "p95_ms": 3.9, "locust_cpu_pct": 21.0,
     "server_queue_ms": 0.2},
    {"step": 4, "locust_cpu_pct": 22.0, "server_queue_ms": 0.3},
    {"step": 5, "server_compute_ms": 0.4},
]


def test_each_tile_shows_the_newest_value_that_exists_for_it() -> None:
    figures = live.latest_figures(RATE_ROWS)
    assert figures == {"users": 10, "rps": 101.0, "p95_ms": 3.9, "fail_per_s": 0.5, "locust_cpu_pct": 22.0}
    assert live.latest_figures(RATE_ROWS[:1]) == {"users": None, "rps": None, "p95_ms": None, "fail_per_s": None,
                                                  "locust_cpu_pct": 12.0}
    assert live.latest_figures([], ("rps",)) == {"rps": None}
    # a zero is a figure, not a missing one
    assert live.latest_figures([{"fail_per_s": 0.0}, {"fail_per_s": None}], ("fail_per_s",)) == {"fail_per_s": 0.0}


def test_progress_text_never_overshoots_the_run_time() -> None:
    assert live.elapsed_progress(15, 12) == (1.0, "12 s of 12 s")
    assert live.elapsed_progress(3, 12) == (0.25, "3 s of 12 s")
    assert live.elapsed_progress(-1, 12) == (0.0, "0 s of 12 s")
    assert live.elapsed_progress(5, 0) == (0.0, "5 s")


def test_active_durations_run_from_start_to_now() -> None:
    assert live.active_duration(100.0, 116.6) == pytest.approx(16.6)
    assert live.active_duration(None, 116.6) is None


def test_serve_stage_line() -> None:
    assert live.serve_stage({}, ready=False) == "starting"
    progress = {"stage": "converting", "detail": "to a TFLite flatbuffer"}
    assert live.serve_stage(progress, ready=False) == "converting (to a TFLite flatbuffer)"
    assert live.serve_stage(progress, ready=True) == "ready"
    assert live.stage_index("converting (to a TFLite flatbuffer)") == live.SERVE_STAGES.index("converting")
    assert live.stage_index("something new") == 0


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_probe_answers_in_milliseconds() -> None:
    t0 = time.monotonic()
    reason = probe_target(f"http://127.0.0.1:{_dead_port()}")
    assert reason is not None and "connection refused" in reason and "no load was sent" in reason
    assert time.monotonic() - t0 < 2.0
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        assert probe_target(f"http://127.0.0.1:{listener.getsockname()[1]}") is None
    assert "http(s) URL" in (probe_target("127.0.0.1:8600") or "")
    assert target_address("http://localhost") == ("localhost", 80)
    with pytest.raises(ValueError, match="port"):
        target_address("http://127.0.0.1:99999")


@pytest.mark.integration
def test_a_swarm_at_a_dead_url_fails_in_seconds_and_says_so_once(home: Path, registry: Registry) -> None:
    """Through the Load test page: the job probes the target, fails at once, and the page shows one message."""
    at = AppTest.from_file(str(PAGES / "load_test.py"), default_timeout=TIMEOUT_S).run()
    at.radio(key="load.target_kind").set_value("URL").run()
    at.text_input(key="load.url").set_value(f"http://127.0.0.1:{_dead_port()}").run()
    at.number_input(key="load.run_time_s").set_value(60).run()
    t0 = time.monotonic()
    at.button(key="load.start").click().run()
    assert not at.exception
    (swarm,) = registry.list_runs(kind="loadtest")
    run = wait_job(registry, swarm.id, 30)
    assert time.monotonic() - t0 < 20  # not the 60 s it was set to run
    assert run.status == "failed" and "connection refused" in (run.error or "")
    assert run.summary["requests"] == 0
    at.run()
    assert not at.exception
    shown = [e.value for e in at.error] + [w.value for w in at.warning] + [i.value for i in at.info]
    assert sum(run.error in text for text in shown) == 1, shown


def test_a_starting_endpoint_shows_its_stage_and_the_restart_port_choice(home: Path, registry: Registry) -> None:
    model_run = _train_run(registry)
    model_path = registry.get_run(model_run).summary["model_path"]
    run_id = registry.create_run("serve", {"model_path": model_path, "name": "digits", "port": 0,
                                           "serving": {"runtime": "xla", "max_batch_size": 32,
                                                       "batch_timeout_ms": 2.0}},
                                 name="serve digits", status="running")
    registry.set_progress(run_id, {"stage": "warming up", "detail": "6 batch sizes up to 32", "port": 8612,
                                   "url": "http://127.0.0.1:8612"})
    at = AppTest.from_file(str(PAGES / "serve.py"), default_timeout=TIMEOUT_S).run()
    assert not at.exception
    assert "warming up (6 batch sizes up to 32)…" in [p.proto.text for p in at.get("progress")]
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["status"] == "starting"
    assert metrics["runtime"] == "xla" and metrics["batching"] == "32 / 2.0 ms"  # the knobs it was started with
    # the URL it will answer on is known (and shown as code, not a link) before it is ready
    assert "http://127.0.0.1:8612/v1/models/digits:predict" in [c.value for c in at.code]
    assert at.checkbox(key="serve.new_port").value is False  # a restart keeps the URL unless asked
    assert "Send request" not in [b.label for b in at.button]  # Try it comes once it is ready
