"""Links and page changes in a real browser: ``/train``, ``?run=ID`` deep links, next-step buttons, and a
Train form (with its uploaded CSV) that survives a visit to another page.

One dashboard for the whole file; runs are written straight into its registry (a finished training
run with its artifacts), so nothing here trains or serves.
Needs Debian's Chromium: ``apt-get install chromium`` (CI's .ci/run installs it).
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from browser_helpers import UI_TIMEOUT_MS, VIEWPORT, dashboard, nav, set_number, settled
from test_dashboard_pages import _train_run

from dashboard.launch import CHROMIUM_ARGS, CHROMIUM_PATH
from runs.registry import Registry

pytestmark = [pytest.mark.browser, pytest.mark.integration, pytest.mark.timeout(240)]

CSV = b"a,b,label\n" + b"\n".join(f"{i},{i % 7},{'cat' if i % 2 else 'dog'}".encode() for i in range(40)) + b"\n"


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Registry]]:
    with dashboard(tmp_path_factory.mktemp("nav")) as served:
        yield served


@pytest.fixture(scope="module")
def page(app: tuple[str, Registry]) -> Iterator:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM_PATH, headless=True, args=list(CHROMIUM_ARGS))
        try:
            yield browser.new_page(viewport=VIEWPORT)
        finally:
            browser.close()


def _picker(page, label: str):
    return page.locator('[data-testid="stSelectbox"]', has_text=label).first


def _shows(page, label: str, text: str) -> None:
    """The selectbox ``label`` shows an option containing ``text`` (its value sits in the combobox input)."""
    from playwright.sync_api import expect

    expect(page.get_by_role("combobox", name=label)).to_have_value(re.compile(re.escape(text)),
                                                                    timeout=UI_TIMEOUT_MS)


def test_train_opens_at_its_own_url(app: tuple[str, Registry], page) -> None:
    from playwright.sync_api import expect

    url, _ = app
    page.goto(f"{url}/train")
    page.get_by_role("heading", name="Train").first.wait_for(timeout=UI_TIMEOUT_MS)
    settled(page)
    expect(page.get_by_text("Page not found")).to_have_count(0)


def test_a_run_link_opens_that_run_and_next_steps_carry_it(app: tuple[str, Registry], page) -> None:

    url, registry = app
    older = _train_run(registry, name="train iris")
    newer = _train_run(registry, name="train wine")
    page.goto(f"{url}/?run={older}")
    page.get_by_role("heading", name="Train").first.wait_for(timeout=UI_TIMEOUT_MS)
    settled(page)
    _shows(page, "Training run", older)  # not the newest, the default without a link
    assert newer not in page.get_by_role("combobox", name="Training run").input_value()
    # "Serve this model": the Serve page opens with that model picked and the id in its address.
    page.get_by_role("button", name="Serve this model").click()
    page.get_by_role("heading", name="Serve").first.wait_for(timeout=UI_TIMEOUT_MS)
    settled(page)
    _shows(page, "Model", older)
    assert f"run={older}" in page.url and "/serve" in page.url


def test_the_train_form_and_its_upload_survive_another_page(app: tuple[str, Registry], page) -> None:
    from playwright.sync_api import expect

    url, _ = app
    page.goto(url)
    page.get_by_role("heading", name="Train").first.wait_for(timeout=UI_TIMEOUT_MS)
    settled(page)
    set_number(page, "Epochs", 7)
    _picker(page, "Dataset").click()
    page.get_by_role("option", name="upload a CSV file…").click()
    settled(page)
    page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files(
        files=[{"name": "pets.csv", "mimeType": "text/csv", "buffer": CSV}])
    expect(page.get_by_text("40 rows × 3 columns")).to_be_visible(timeout=UI_TIMEOUT_MS)
    settled(page)

    nav(page, "Runs")
    settled(page)
    nav(page, "Train")
    settled(page)
    expect(page.get_by_role("spinbutton", name="Epochs")).to_have_value("7", timeout=UI_TIMEOUT_MS)
    _shows(page, "Dataset", "upload a CSV file")
    expect(page.get_by_text("uploaded earlier")).to_be_visible(timeout=UI_TIMEOUT_MS)
    expect(page.get_by_text("40 rows × 3 columns")).to_be_visible()
    _shows(page, "Target column", "label")
    expect(page.get_by_role("button", name="Train", exact=True)).to_be_enabled()


def test_the_runs_page_groups_a_sweep_with_its_sub_runs(app: tuple[str, Registry], page) -> None:
    """A sweep's sub-runs fold under it (screenshot ``runs_grouped.png`` for the README)."""
    from browser_helpers import shot
    from playwright.sync_api import expect
    from test_dashboard_names import _sweep_family

    url, registry = app
    _, sweep, _, _ = _sweep_family(registry)
    page.goto(f"{url}/runs")
    page.get_by_role("heading", name="Runs").first.wait_for(timeout=UI_TIMEOUT_MS)
    group = page.get_by_text(f"model sweep digits: hidden · {sweep}: 2 sub-runs")
    expect(group).to_be_visible(timeout=UI_TIMEOUT_MS)
    group.click()
    expect(page.locator('[data-testid="stExpander"]', has_text=sweep).locator('[data-testid="stDataFrame"]')
           ).to_be_visible(timeout=UI_TIMEOUT_MS)
    settled(page)
    shot(page, "runs_grouped")
