"""The whole app in a real browser: ``streamlit run app.py`` driven through Chromium by Playwright.

As a user would: train a small model (twice, to compare), watch the loss chart and
read the final metrics, start the endpoint and send one request, run a 10-second
swarm and read its latency chart and summary, then overlay the two training runs
on the Runs page. Screenshots of each page go to test-artifacts/screenshots/;
``TUNESWARM_SCREENSHOTS=docs/screenshots pytest tests/test_browser.py`` refreshes
the ones the README shows.

Needs Debian's Chromium: ``apt-get install chromium`` (CI's .ci/run installs it).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dashboard.launch import (
    CHROMIUM_ARGS,
    CHROMIUM_PATH,
    free_port,
    start_streamlit,
    stop_streamlit,
    wait_healthy,
)
from runs.jobs import running_jobs, stop_job
from runs.registry import Registry

pytestmark = [pytest.mark.browser, pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(300)]

# Screenshots land in test-artifacts/ (git-ignored) so a test run leaves the tree clean;
# TUNESWARM_SCREENSHOTS=docs/screenshots refreshes the README's copies.
SCREENSHOTS = Path(
    os.environ.get("TUNESWARM_SCREENSHOTS")
    or Path(__file__).resolve().parent.parent / "test-artifacts" / "screenshots"
)
VIEWPORT = {"width": 1400, "height": 1800}
TRAIN_TIMEOUT_MS = 150_000
SERVE_TIMEOUT_MS = 150_000
SWARM_TIMEOUT_MS = 120_000
UI_TIMEOUT_MS = 30_000


@pytest.fixture
def app(tmp_path: Path) -> Iterator[tuple[str, Registry]]:
    """The dashboard on a free port over an empty state directory; every job it started is stopped after."""
    if not Path(CHROMIUM_PATH).exists():
        pytest.skip(f"no Chromium at {CHROMIUM_PATH}; enable the browser test with `apt-get install chromium`")
    home = tmp_path / "state"
    home.mkdir()
    port = free_port()
    proc = start_streamlit(home, port, tmp_path / "streamlit.log")
    registry = Registry(home)
    try:
        wait_healthy(proc, port)
        yield f"http://127.0.0.1:{port}", registry
    finally:
        for run in running_jobs(registry):  # endpoints and swarms the UI started
            stop_job(registry, run.id, grace_s=10)
        stop_streamlit(proc)
        registry.close()


def _settled(page) -> None:
    """Wait (bounded) until Streamlit's rerun is over and every Plotly chart on the page has drawn."""
    from playwright.sync_api import expect

    expect(page.locator('[data-testid="stStatusWidget"]')).to_be_hidden(timeout=UI_TIMEOUT_MS)
    page.wait_for_function(
        "() => [...document.querySelectorAll('.js-plotly-plot')].every(p => p._fullLayout)",
        timeout=UI_TIMEOUT_MS,
    )


def _shot(page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.mouse.move(1, 1)  # no hover tooltip in the picture
    _settled(page)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"))


def _nav(page, title: str) -> None:
    page.locator('[data-testid="stSidebarNav"] a', has_text=title).first.click()
    page.get_by_role("heading", name=title).first.wait_for(timeout=UI_TIMEOUT_MS)


def _set_number(page, label: str, value: int) -> None:
    from playwright.sync_api import expect

    box = page.get_by_role("spinbutton", name=label)
    box.fill(str(value))
    box.press("Enter")
    expect(box).to_have_value(str(value), timeout=UI_TIMEOUT_MS)
    _settled(page)  # the rerun that takes the value


def _wait_for(read, ok, timeout_s: float):
    """Poll ``read()`` until ``ok(value)`` (bounded); returns the value."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = read()
        if ok(value):
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"condition not met within {timeout_s:.0f}s; last value {value!r}")
        time.sleep(0.3)


def _wait_runs(registry: Registry, kind: str, n: int, timeout_s: float) -> list:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        done = [r for r in registry.list_runs(kind=kind) if r.status == "completed"]
        if len(done) >= n:
            return done
        failed = [r for r in registry.list_runs(kind=kind) if r.status == "failed"]
        assert not failed, failed[0].error
        time.sleep(0.5)
    raise AssertionError(f"{n} {kind} runs did not complete within {timeout_s:.0f}s")


def test_train_serve_swarm_and_compare_in_the_browser(app: tuple[str, Registry]) -> None:
    from playwright.sync_api import expect, sync_playwright

    url, registry = app
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM_PATH, headless=True, args=list(CHROMIUM_ARGS))
        try:
            page = browser.new_page(viewport=VIEWPORT)
            page.goto(url)

            # -- Train: empty registry -> first-run path; train a small model twice ----------------
            expect(page.get_by_role("button", name="Train the default model")).to_be_visible(timeout=UI_TIMEOUT_MS)
            _shot(page, "first_run")
            _set_number(page, "Epochs", 4)
            page.get_by_role("button", name="Train", exact=True).click()
            expect(page.get_by_role("button", name="Stop")).to_be_visible(timeout=UI_TIMEOUT_MS)
            # the first epoch's numbers (live, or already the results if training beat the refresh)
            val_loss = page.locator('[data-testid="stMetric"]', has_text="val loss").first
            expect(val_loss.locator('[data-testid="stMetricValue"]')).to_have_text(
                re.compile(r"^\d"), timeout=TRAIN_TIMEOUT_MS)
            page.get_by_role("heading", name="Runs").first.scroll_into_view_if_needed()
            _shot(page, "train_live")
            _set_number(page, "Epochs", 3)
            _set_number(page, "Seed", 1)
            # the second run, to compare later, is an RNN on the generated sequences
            page.get_by_role("combobox", name="Dataset").click()
            page.get_by_role("option", name="sequences").click()
            page.get_by_text("RNN", exact=True).click()
            expect(page.get_by_role("combobox", name="Recurrent cell")).to_be_visible(timeout=UI_TIMEOUT_MS)
            page.get_by_role("button", name="Train", exact=True).click()
            expect(page.get_by_text("Test metrics")).to_be_visible(timeout=TRAIN_TIMEOUT_MS)
            trained = _wait_runs(registry, "train", 2, TRAIN_TIMEOUT_MS / 1000)
            assert sorted(r.summary["epochs_run"] for r in trained) == [3, 4]
            assert sorted(r.config["model"]["family"] for r in trained) == ["mlp", "rnn"]
            expect(page.locator(".js-plotly-plot", has_text="Loss").first).to_be_visible()
            expect(page.get_by_text("Confusion matrix (test split)")).to_be_visible()
            accuracy = page.locator('[data-testid="stMetric"]', has_text="accuracy").first
            assert float(accuracy.locator('[data-testid="stMetricValue"]').inner_text()) > 0.5
            _shot(page, "train")

            # -- Serve: start the endpoint, send one request -------------------------------------
            _nav(page, "Serve")
            page.get_by_role("button", name="Start endpoint").click()
            expect(page.get_by_role("button", name="Send request")).to_be_visible(timeout=SERVE_TIMEOUT_MS)
            page.get_by_role("button", name="Send request").click()
            expect(page.locator('[data-testid="stMetric"]', has_text="prediction")).to_be_visible(
                timeout=UI_TIMEOUT_MS)
            expect(page.get_by_text("Realised batch size")).to_be_visible()
            serve = registry.list_runs(kind="serve")[0]
            assert serve.status == "running" and serve.summary["url"].startswith("http://127.0.0.1:")
            page.get_by_role("heading", name="Endpoint").scroll_into_view_if_needed()
            # two live scrapes make the first interval: the request rate is a number then
            rate = page.locator('[data-testid="stMetric"]', has_text="requests/s").first
            expect(rate.locator('[data-testid="stMetricValue"]')).to_have_text(re.compile(r"^\d"),
                                                                               timeout=UI_TIMEOUT_MS)
            _shot(page, "serve")

            # -- Load test: a 10-second swarm at the endpoint -------------------------------------
            _nav(page, "Load test")
            expect(page.get_by_text(f"POST {serve.summary['url']}")).to_be_visible(timeout=UI_TIMEOUT_MS)
            _set_number(page, "Duration (s)", 10)
            page.get_by_role("button", name="Start swarm").click()
            expect(page.get_by_text("Locust CPU")).to_be_visible(timeout=UI_TIMEOUT_MS)
            expect(page.get_by_text("Latency (client)")).to_be_visible(timeout=UI_TIMEOUT_MS)
            # A second tab (a new session) finds the same swarm and jobs: state lives in the registry.
            swarm_id = registry.list_runs(kind="loadtest")[0].id
            swarm_name = registry.get_run(swarm_id).name
            other = browser.new_page(viewport=VIEWPORT)
            other.goto(f"{url}/loadtest")
            expect(other.get_by_role("combobox", name="Load-test run")).to_be_visible(timeout=UI_TIMEOUT_MS)
            expect(other.locator("strong", has_text=swarm_name).first).to_be_visible(timeout=UI_TIMEOUT_MS)
            expect(other.get_by_text("Active jobs")).to_be_visible()
            other.close()
            _wait_for(lambda: registry.get_run(swarm_id).progress.get("requests") or 0, lambda n: n > 0,
                      UI_TIMEOUT_MS / 1000)  # the live charts have a few seconds of the swarm
            page.get_by_role("heading", name="Runs").first.scroll_into_view_if_needed()
            _shot(page, "load_test_live")
            expect(page.get_by_text("Failures by reason")).to_be_visible(timeout=SWARM_TIMEOUT_MS)
            swarm = registry.list_runs(kind="loadtest")[0]
            assert swarm.status == "completed", swarm.error
            assert swarm.summary["requests"] > 0
            expect(page.get_by_text("Summary", exact=True)).to_be_visible()
            expect(page.get_by_text("Latency (client)")).to_be_visible()
            requests = page.locator('[data-testid="stMetric"]', has_text="requests").first
            expect(requests.locator('[data-testid="stMetricValue"]')).to_have_text(f"{swarm.summary['requests']:,}")
            _shot(page, "load_test")

            # -- Runs: overlay the two training runs ----------------------------------------------
            _nav(page, "Runs")
            picker = page.get_by_role("combobox", name="Runs to compare")
            for run in trained:
                picker.click()
                page.get_by_role("option", name=run.id[-6:]).first.click()
                page.keyboard.press("Escape")
                _settled(page)
            overlay = page.locator(".js-plotly-plot", has_text="val loss — train runs")
            expect(overlay).to_be_visible(timeout=UI_TIMEOUT_MS)
            expect(overlay.locator(".scatterlayer .trace")).to_have_count(2)
            diff = page.locator('[data-testid="stTable"]')
            expect(diff).to_contain_text("model.epochs")  # the config diff names what differs
            expect(diff).to_contain_text("model.seed")
            _shot(page, "runs")

            # -- Serve again: restart the endpoint with another runtime ------------------------------
            _nav(page, "Serve")
            page.get_by_role("combobox", name="Runtime").click()
            page.get_by_role("option", name="keras", exact=True).click()
            _settled(page)
            page.get_by_role("button", name="Restart with new settings").click()
            serves = _wait_for(lambda: [r for r in registry.list_runs(kind="serve") if r.summary.get("ready_at")],
                               lambda rs: len(rs) == 2 and rs[0].active, SERVE_TIMEOUT_MS / 1000)
            # the old endpoint ended; an endpoint ended by a signal is a stop, never a completion
            assert serves[0].status == "running" and serves[1].status == "stopped"
            assert serves[0].summary["runtime"] == "keras"
            expect(page.locator('[data-testid="stMetric"]', has_text="runtime")).to_contain_text(
                "keras", timeout=UI_TIMEOUT_MS)

            # -- Tune (when installed) ------------------------------------------------------------
            if page.locator('[data-testid="stSidebarNav"] a', has_text="Tune").count():
                _nav(page, "Tune")
                _shot(page, "tune")
        finally:
            browser.close()


def test_import_serve_and_swarm_your_own_model_in_the_browser(app: tuple[str, Registry], tmp_path: Path) -> None:
    """A user's CNN (.keras, one (8, 8, 1) input) uploaded on the Serve page, served, asked once and swarmed."""
    from model_zoo import cnn_model
    from playwright.sync_api import expect, sync_playwright

    model_file = tmp_path / "my_cnn.keras"
    cnn_model().save(model_file)
    url, registry = app
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM_PATH, headless=True, args=list(CHROMIUM_ARGS))
        try:
            page = browser.new_page(viewport=VIEWPORT)
            page.goto(f"{url}/serve")
            expect(page.get_by_text("Import a model")).to_be_visible(timeout=UI_TIMEOUT_MS)
            page.locator('[data-testid="stFileUploader"] input[type="file"]').set_input_files(str(model_file))
            expect(page.get_by_text("my_cnn.keras").first).to_be_visible(timeout=UI_TIMEOUT_MS)
            page.get_by_role("button", name="Import", exact=True).click()
            expect(page.get_by_text("image 8x8x1 float32")).to_be_visible(timeout=SERVE_TIMEOUT_MS)
            (imported,) = registry.list_runs(kind="train")
            assert imported.config["imported"] is True and imported.summary["param_count"] == 40 + 3 * 36 + 3
            _shot(page, "serve_import")

            page.get_by_role("button", name="Start endpoint").click()
            expect(page.get_by_role("button", name="Send request")).to_be_visible(timeout=SERVE_TIMEOUT_MS)
            page.get_by_role("button", name="Send request").click()
            expect(page.locator('[data-testid="stMetric"]', has_text="prediction")).to_be_visible(
                timeout=UI_TIMEOUT_MS)
            serve = registry.list_runs(kind="serve")[0]
            assert serve.status == "running"

            _nav(page, "Load test")
            expect(page.get_by_text(f"POST {serve.summary['url']}")).to_be_visible(timeout=UI_TIMEOUT_MS)
            _set_number(page, "Duration (s)", 5)
            page.get_by_role("button", name="Start swarm").click()
            expect(page.get_by_text("Failures by reason")).to_be_visible(timeout=SWARM_TIMEOUT_MS)
            swarm = registry.list_runs(kind="loadtest")[0]
            assert swarm.status == "completed", swarm.error
            assert swarm.summary["requests"] > 0 and swarm.summary["failures"] == 0
            _shot(page, "load_test_imported")
        finally:
            browser.close()
