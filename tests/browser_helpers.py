"""What every browser test shares: the dashboard on a free port, Chromium's settle/navigate/wait helpers.

Needs Debian's Chromium: ``apt-get install chromium`` (CI's .ci/run installs it).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from dashboard.launch import (
    CHROMIUM_PATH,
    free_port,
    start_streamlit,
    stop_streamlit,
    wait_healthy,
)
from runs.jobs import running_jobs, stop_job
from runs.registry import Registry

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


@contextmanager
def dashboard(tmp_path: Path) -> Iterator[tuple[str, Registry]]:
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


def settled(page) -> None:
    """Wait (bounded) until Streamlit's rerun is over and every Plotly chart on the page has drawn."""
    from playwright.sync_api import expect

    expect(page.locator('[data-testid="stStatusWidget"]')).to_be_hidden(timeout=UI_TIMEOUT_MS)
    page.wait_for_function(
        "() => [...document.querySelectorAll('.js-plotly-plot')].every(p => p._fullLayout)",
        timeout=UI_TIMEOUT_MS,
    )


def shot(page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.mouse.move(1, 1)  # no hover tooltip in the picture
    settled(page)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"))


def nav(page, title: str) -> None:
    page.locator('[data-testid="stSidebarNav"] a', has_text=title).first.click()
    page.get_by_role("heading", name=title).first.wait_for(timeout=UI_TIMEOUT_MS)


def set_number(page, label: str, value: int) -> None:
    from playwright.sync_api import expect

    box = page.get_by_role("spinbutton", name=label)
    box.fill(str(value))
    box.press("Enter")
    expect(box).to_have_value(str(value), timeout=UI_TIMEOUT_MS)
    settled(page)  # the rerun that takes the value


def wait_for(read, ok, timeout_s: float):
    """Poll ``read()`` until ``ok(value)`` (bounded); returns the value."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = read()
        if ok(value):
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"condition not met within {timeout_s:.0f}s; last value {value!r}")
        time.sleep(0.3)


def wait_runs(registry: Registry, kind: str, n: int, timeout_s: float) -> list:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        done = [r for r in registry.list_runs(kind=kind) if r.status == "completed"]
        if len(done) >= n:
            return done
        failed = [r for r in registry.list_runs(kind=kind) if r.status == "failed"]
        assert not failed, failed[0].error
        time.sleep(0.5)
    raise AssertionError(f"{n} {kind} runs did not complete within {timeout_s:.0f}s")
