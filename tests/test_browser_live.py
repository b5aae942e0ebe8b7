"""Live views in a real browser: they update on their own while a job runs and settle when it ends.

One dashboard and one trained model for the whole module (registered in the
dashboard's registry as a finished training run), one Chromium page:

- Start endpoint hands the page back before the endpoint is ready and shows its
  stages (loading TensorFlow, converting, warming up) until it is;
- Restart keeps the endpoint's URL (same port);
- a rate swarm's tiles show a figure from the first Locust second on, never "—";
  the sidebar's Active jobs durations advance;
- a model sweep started through the job API turns from its live progress into
  its result on the Tune page without a reload.

Needs Debian's Chromium: ``apt-get install chromium`` (CI's .ci/run installs it).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from browser_helpers import (
    SCREENSHOTS,
    SERVE_TIMEOUT_MS,
    SWARM_TIMEOUT_MS,
    UI_TIMEOUT_MS,
    VIEWPORT,
    dashboard,
    nav,
    set_number,
    settled,
    wait_for,
)

from dashboard.launch import CHROMIUM_ARGS, CHROMIUM_PATH
from runs.registry import Registry

pytestmark = [pytest.mark.browser, pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(300)]
SWEEP_TIMEOUT_MS = 240_000
TILES = ("users", "requests/s", "p95", "failures/s")
READ_METRICS = """() => Object.fromEntries([...document.querySelectorAll('[data-testid="stMetric"]')].map(m => [
    m.querySelector('[data-testid="stMetricLabel"]').innerText.trim(),
    m.querySelector('[data-testid="stMetricValue"]').innerText.trim()]))"""


@pytest.fixture(scope="module")
def live_app(tmp_path_factory: pytest.TempPathFactory, trained_model: Path) -> Iterator[tuple[str, Registry]]:
    """The dashboard over a state directory holding one finished training run (the suite's tiny digits model)."""
    with dashboard(tmp_path_factory.mktemp("browser-live")) as (url, registry):
        run_id = registry.create_run("train", {"model": {"hidden": [32], "epochs": 5}, "data": {"dataset": "digits"}},
                                     name="train digits", status="running")
        registry.update_summary(run_id, {"model_path": str(trained_model), "data": {"name": "digits"},
                                         "test_metrics": {"accuracy": 0.9}, "param_count": 2410})
        registry.set_status(run_id, "completed")
        yield url, registry


@pytest.fixture(scope="module")
def page(live_app: tuple[str, Registry]) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM_PATH, headless=True, args=list(CHROMIUM_ARGS))
        try:
            tab = browser.new_page(viewport=VIEWPORT)
            tab.goto(live_app[0] + "/serve")
            yield tab
        finally:
            browser.close()


def _serving(registry: Registry) -> list:
    return [r for r in registry.list_runs(kind="serve") if r.active]


def test_start_endpoint_returns_at_once_and_shows_its_stages(live_app: tuple[str, Registry], page: Any) -> None:
    from playwright.sync_api import expect

    _, registry = live_app
    expect(page.get_by_role("button", name="Start endpoint")).to_be_visible(timeout=UI_TIMEOUT_MS)
    # XLA compiles every padded batch size while warming up: a stage long enough to be seen.
    page.get_by_role("combobox", name="Runtime").click()
    page.get_by_role("option", name="xla", exact=True).click()
    settled(page)
    page.get_by_role("button", name="Start endpoint").click()
    settled(page)  # the page's rerun is over ...
    (run,) = wait_for(lambda: _serving(registry), lambda rs: len(rs) == 1, 10)
    assert not registry.get_run(run.id).summary.get("ready_at")  # ... before the endpoint is ready
    expect(page.get_by_text(re.compile(r"^(starting|loading TensorFlow and the model).*…$"))).to_be_visible(
        timeout=UI_TIMEOUT_MS)
    # the page stays usable: another page and back, the start-up is still followed
    nav(page, "Load test")
    nav(page, "Serve")
    # The page follows the start-up to its last stage. Warming up is the last before ready and, on a fast
    # machine, shorter than the page's refresh, so the page shows it or has already moved on to ready;
    # the job's record says it was gone through.
    expect(page.get_by_text(re.compile(r"^warming up \(.*…$")).or_(page.get_by_role("button", name="Send request"))
           ).to_be_visible(timeout=SERVE_TIMEOUT_MS)
    page.get_by_role("heading", name="Endpoint").scroll_into_view_if_needed()
    page.screenshot(path=str(SCREENSHOTS / "serve_starting.png"))  # as is: mid-stage, no waiting to settle
    # ready: the whole page switches to the live endpoint (Try it appears) without a reload
    expect(page.get_by_role("button", name="Send request")).to_be_visible(timeout=SERVE_TIMEOUT_MS)
    progress = registry.get_run(run.id).progress
    assert progress["stage"] == "ready" and "warming up" in progress["stages"], progress


def test_restart_keeps_the_url(live_app: tuple[str, Registry], page: Any) -> None:
    from playwright.sync_api import expect

    _, registry = live_app
    (old,) = _serving(registry)
    url = old.summary["url"]
    page.get_by_role("combobox", name="Runtime").click()
    page.get_by_role("option", name="tflite", exact=True).click()
    settled(page)
    page.get_by_role("button", name="Restart with new settings").click()
    settled(page)
    new = wait_for(lambda: [r for r in _serving(registry) if r.id != old.id], lambda rs: len(rs) == 1, 10)[0]
    assert not registry.get_run(new.id).summary.get("ready_at")  # the page came back before it was ready
    expect(page.get_by_text(re.compile(r"^(starting|waiting for the port|loading TensorFlow and the model).*…$"))
           ).to_be_visible(timeout=UI_TIMEOUT_MS)
    expect(page.get_by_role("button", name="Send request")).to_be_visible(timeout=SERVE_TIMEOUT_MS)
    ready = registry.get_run(new.id)
    assert ready.summary["url"] == url and ready.summary["runtime"] == "tflite"
    assert registry.get_run(old.id).status == "stopped"
    expect(page.get_by_text(f"{url}/v1/models/model:predict").first).to_be_visible(timeout=UI_TIMEOUT_MS)


def test_rate_swarm_tiles_never_show_a_dash_and_durations_advance(live_app: tuple[str, Registry],
                                                                  page: Any) -> None:
    from playwright.sync_api import expect

    _, registry = live_app
    assert _serving(registry), "the endpoint of the tests above"
    nav(page, "Load test")
    page.get_by_role("combobox", name="Shape").click()
    page.get_by_role("option", name="rate (open loop)").click()
    settled(page)
    set_number(page, "Duration (s)", 8)
    page.get_by_role("button", name="Start swarm").click()
    swarm = wait_for(lambda: registry.list_runs(kind="loadtest"), lambda rs: len(rs) == 1, 10)[0]
    expect(page.get_by_text("Locust CPU")).to_be_visible(timeout=UI_TIMEOUT_MS)
    first_figures: float | None = None
    dashes: list[dict[str, str]] = []
    sidebar: list[str] = []
    deadline = time.monotonic() + SWARM_TIMEOUT_MS / 1000
    while registry.get_run(swarm.id).active and time.monotonic() < deadline:
        tiles = {k: v for k, v in page.evaluate(READ_METRICS).items() if k in TILES}
        if first_figures is None and len(tiles) == len(TILES) and "—" not in tiles.values():
            first_figures = time.monotonic()
            page.screenshot(path=str(SCREENSHOTS / "load_test_rate_live.png"))
        elif first_figures is not None and tiles and "—" in tiles.values():
            dashes.append(tiles)
        active = page.locator('[data-testid="stSidebar"] [data-testid="stCaptionContainer"]', has_text="loadtest")
        if active.count():
            sidebar.append(active.first.inner_text())
        time.sleep(0.25)
    assert first_figures is not None, "the tiles never showed all four figures"
    assert not dashes, f"a tile fell back to '—' after the first figures: {dashes[:3]}"
    durations = {re.sub(r".*· ", "", s) for s in sidebar}
    assert len(durations) >= 2, f"the sidebar's duration did not advance: {sidebar[:3]}"
    assert registry.get_run(swarm.id).status == "completed", registry.get_run(swarm.id).error
    expect(page.get_by_text("Failures by reason")).to_be_visible(timeout=UI_TIMEOUT_MS)  # settled to results


def test_model_sweep_page_updates_to_its_result_without_reload(live_app: tuple[str, Registry], page: Any) -> None:
    from playwright.sync_api import expect

    from tuning.model_sweep import ModelSweepSpec, start

    _, registry = live_app
    run_id = start(registry, ModelSweepSpec(grid={"hidden": [[4], [8]]}, epochs=1, users=1, step_s=2))
    nav(page, "Tune")  # opened once; from here on the page follows the sweep by itself
    page.get_by_role("heading", name="Model sweep: accuracy vs cost under load").scroll_into_view_if_needed()
    expect(page.get_by_text(re.compile(r"^(starting|training|load test): "))).to_be_visible(timeout=UI_TIMEOUT_MS)
    expect(page.get_by_text(re.compile(r"^load test: "))).to_be_visible(timeout=SWEEP_TIMEOUT_MS)
    # finished: the status line says so and the live parts (progress, Stop) are gone, all without a reload
    expect(page.get_by_text(re.compile(r"— completed · started"))).to_be_visible(timeout=SWEEP_TIMEOUT_MS)
    expect(page.get_by_text(re.compile(r"^(starting|training|load test): "))).to_have_count(0)
    expect(page.get_by_text(re.compile(r"^Grey points are dominated"))).to_be_visible()
    run = registry.get_run(run_id)
    assert run.status == "completed", run.error
    assert len(run.summary["models"]) == 2
