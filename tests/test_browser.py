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

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from browser_helpers import (
    SERVE_TIMEOUT_MS,
    SWARM_TIMEOUT_MS,
    TRAIN_TIMEOUT_MS,
    UI_TIMEOUT_MS,
    VIEWPORT,
    dashboard,
    nav,
    set_number,
    settled,
    shot,
    wait_for,
    wait_runs,
)

from dashboard.launch import CHROMIUM_ARGS, CHROMIUM_PATH
from runs.registry import Registry

pytestmark = [pytest.mark.browser, pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.fixture
def app(tmp_path: Path) -> Iterator[tuple[str, Registry]]:
    """The dashboard on a free port over an empty state directory; every job it started is stopped after."""
    with dashboard(tmp_path) as served:
        yield served


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
            shot(page, "first_run")
            set_number(page, "Epochs", 4)
            page.get_by_role("button", name="Train", exact=True).click()
            expect(page.get_by_role("button", name="Stop")).to_be_visible(timeout=UI_TIMEOUT_MS)
            # the first epoch's numbers (live, or already the results if training beat the refresh)
            val_loss = page.locator('[data-testid="stMetric"]', has_text="val loss").first
            expect(val_loss.locator('[data-testid="stMetricValue"]')).to_have_text(
                re.compile(r"^\d"), timeout=TRAIN_TIMEOUT_MS)
            page.get_by_role("heading", name="Runs").first.scroll_into_view_if_needed()
            shot(page, "train_live")
            set_number(page, "Epochs", 3)
            set_number(page, "Seed", 1)
            # the second run, to compare later, is an RNN on the generated sequences
            page.get_by_role("combobox", name="Dataset").click()
            page.get_by_role("option", name="sequences").click()
            page.get_by_text("RNN", exact=True).click()
            expect(page.get_by_role("combobox", name="Recurrent cell")).to_be_visible(timeout=UI_TIMEOUT_MS)
            page.get_by_role("button", name="Train", exact=True).click()
            expect(page.get_by_text("Test metrics")).to_be_visible(timeout=TRAIN_TIMEOUT_MS)
            trained = wait_runs(registry, "train", 2, TRAIN_TIMEOUT_MS / 1000)
            assert sorted(r.summary["epochs_run"] for r in trained) == [3, 4]
            assert sorted(r.config["model"]["family"] for r in trained) == ["mlp", "rnn"]
            expect(page.locator(".js-plotly-plot", has_text="Loss").first).to_be_visible()
            expect(page.get_by_text("Confusion matrix (test split)")).to_be_visible()
            accuracy = page.locator('[data-testid="stMetric"]', has_text="accuracy").first
            assert float(accuracy.locator('[data-testid="stMetricValue"]').inner_text()) > 0.5
            shot(page, "train")

            # -- Serve: start the endpoint, send one request -------------------------------------
            nav(page, "Serve")
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
            shot(page, "serve")

            # -- Load test: a 10-second swarm at the endpoint -------------------------------------
            nav(page, "Load test")
            expect(page.get_by_text(f"POST {serve.summary['url']}")).to_be_visible(timeout=UI_TIMEOUT_MS)
            set_number(page, "Duration (s)", 10)
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
            wait_for(lambda: registry.get_run(swarm_id).progress.get("requests") or 0, lambda n: n > 0,
                      UI_TIMEOUT_MS / 1000)  # the live charts have a few seconds of the swarm
            page.get_by_role("heading", name="Runs").first.scroll_into_view_if_needed()
            shot(page, "load_test_live")
            expect(page.get_by_text("Failures by reason")).to_be_visible(timeout=SWARM_TIMEOUT_MS)
            swarm = registry.list_runs(kind="loadtest")[0]
            assert swarm.status == "completed", swarm.error
            assert swarm.summary["requests"] > 0
            expect(page.get_by_text("Summary", exact=True)).to_be_visible()
            expect(page.get_by_text("Latency (client)")).to_be_visible()
            requests = page.locator('[data-testid="stMetric"]', has_text="requests").first
            expect(requests.locator('[data-testid="stMetricValue"]')).to_have_text(f"{swarm.summary['requests']:,}")
            shot(page, "load_test")

            # -- Runs: overlay the two training runs ----------------------------------------------
            nav(page, "Runs")
            picker = page.get_by_role("combobox", name="Runs to compare")
            for run in trained:
                picker.click()
                page.get_by_role("option", name=run.id).first.click()
                page.keyboard.press("Escape")
                settled(page)
            overlay = page.locator(".js-plotly-plot", has_text="val loss — train runs")
            expect(overlay).to_be_visible(timeout=UI_TIMEOUT_MS)
            expect(overlay.locator(".scatterlayer .trace")).to_have_count(2)
            diff = page.locator('[data-testid="stTable"]')
            expect(diff).to_contain_text("model.epochs")  # the config diff names what differs
            expect(diff).to_contain_text("model.seed")
            shot(page, "runs")

            # -- Serve again: restart the endpoint with another runtime ------------------------------
            nav(page, "Serve")
            page.get_by_role("combobox", name="Runtime").click()
            page.get_by_role("option", name="keras", exact=True).click()
            settled(page)
            page.get_by_role("button", name="Restart with new settings").click()
            serves = wait_for(lambda: [r for r in registry.list_runs(kind="serve") if r.summary.get("ready_at")],
                               lambda rs: len(rs) == 2 and rs[0].active, SERVE_TIMEOUT_MS / 1000)
            # the old endpoint ended; an endpoint ended by a signal is a stop, never a completion
            assert serves[0].status == "running" and serves[1].status == "stopped"
            assert serves[0].summary["runtime"] == "keras"
            expect(page.locator('[data-testid="stMetric"]', has_text="runtime")).to_contain_text(
                "keras", timeout=UI_TIMEOUT_MS)

            # -- Tune (when installed) ------------------------------------------------------------
            if page.locator('[data-testid="stSidebarNav"] a', has_text="Tune").count():
                nav(page, "Tune")
                shot(page, "tune")
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
            shot(page, "serve_import")

            page.get_by_role("button", name="Start endpoint").click()
            expect(page.get_by_role("button", name="Send request")).to_be_visible(timeout=SERVE_TIMEOUT_MS)
            page.get_by_role("button", name="Send request").click()
            expect(page.locator('[data-testid="stMetric"]', has_text="prediction")).to_be_visible(
                timeout=UI_TIMEOUT_MS)
            serve = registry.list_runs(kind="serve")[0]
            assert serve.status == "running"

            nav(page, "Load test")
            expect(page.get_by_text(f"POST {serve.summary['url']}")).to_be_visible(timeout=UI_TIMEOUT_MS)
            set_number(page, "Duration (s)", 5)
            page.get_by_role("button", name="Start swarm").click()
            expect(page.get_by_text("Failures by reason")).to_be_visible(timeout=SWARM_TIMEOUT_MS)
            swarm = registry.list_runs(kind="loadtest")[0]
            assert swarm.status == "completed", swarm.error
            assert swarm.summary["requests"] > 0 and swarm.summary["failures"] == 0
            shot(page, "load_test_imported")
        finally:
            browser.close()
