"""Render serving sweeps' latency-throughput curves to PNG, beside their recommendation and batching gain.

    .venv/bin/python bench/sweep_figures.py tuned-cnn/:CNN tuned-mlp/:MLP --out docs/

Each argument is a ``python -m tuning ... --out DIR`` folder (``points.json`` and
``recommendation.json``), optionally followed by ``:TITLE``. For each, the Tune
page's own figure (``dashboard.charts_tuning.latency_throughput_figure``, the SLO
line drawn, the recommended config highlighted) is written as
``OUT/sweep_<title>_latency_throughput.png`` and one table row is printed: the
recommended config, its capacity within SLO, batching off's (the best
max_batch_size=1 config), and their ratio (the batching gain), as the sweep's
verification pass measured them back to back.

The PNG is a screenshot of the figure's self-contained HTML in headless Chromium
(Debian's /usr/bin/chromium through Playwright, already used by the browser test),
so no image-export package is needed.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dashboard import charts_tuning as ct
from dashboard.launch import CHROMIUM_ARGS, CHROMIUM_PATH
from loadtest.slo import parse_slos
from tuning.points import points_from_json
from tuning.recommend import is_baseline

WIDTH, HEIGHT = 900, 520
RENDER_TIMEOUT_MS = 30_000


def _slo_limit_ms(constraints: list[str], percentile: str) -> float | None:
    return next((s.limit for s in parse_slos(constraints) if s.summary_key == percentile), None)


def render_png(html: bytes, target: Path) -> Path:
    """Screenshot a self-contained Plotly HTML page (plotly.js inlined: no network) to ``target``."""
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        page_file = Path(tmp) / "figure.html"
        page_file.write_bytes(html)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM_PATH, headless=True, args=list(CHROMIUM_ARGS))
            try:
                page = browser.new_page(viewport={"width": WIDTH, "height": HEIGHT})
                page.goto(page_file.as_uri(), timeout=RENDER_TIMEOUT_MS)
                page.wait_for_selector(".main-svg", timeout=RENDER_TIMEOUT_MS)
                page.locator(".js-plotly-plot").first.screenshot(path=str(target), timeout=RENDER_TIMEOUT_MS)
            finally:
                browser.close()
    return target


def sweep_row(folder: Path, title: str, out: Path) -> dict[str, Any]:
    points = points_from_json((folder / "points.json").read_text())
    rec = json.loads((folder / "recommendation.json").read_text())
    best = rec.get("best") or {}
    # Batching off = max_batch_size 1. A grid can hold several such configs (batch_timeout_ms is moot
    # at 1): the gain is taken against the best of them, the conservative reading.
    off = [r for r in rec.get("ranking") or [] if is_baseline(r.get("params") or {})]
    base = max(off, key=lambda r: r.get("capacity_rps") or 0.0, default={})
    percentile = "p95_ms"
    fig = ct.latency_throughput_figure(points, percentile=percentile,
                                       slo_ms=_slo_limit_ms(rec.get("constraints") or [], percentile),
                                       highlight=best.get("config_id"))
    fig.update_layout(title=f"{title}: {fig.layout.title.text}", width=WIDTH, height=HEIGHT)
    slug = re.sub(r"[^a-z0-9]+", "_", title.lower()).strip("_")
    png = render_png(ct.figure_html(fig), out / f"sweep_{slug}_latency_throughput.png")
    return {"title": title, "png": png, "recommended": best.get("label"), "capacity": best.get("capacity_rps"),
            "baseline": base.get("capacity_rps"), "baseline_label": base.get("label"),
            "gain": (best["capacity_rps"] / base["capacity_rps"]) if best.get("capacity_rps") and
            base.get("capacity_rps") else None,
            "saturated": sum(1 for p in points if p.saturated), "points": len(points)}


def _num(v: float | None, fmt: str) -> str:
    return "n/a" if v is None else format(v, fmt)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweeps", nargs="+", metavar="DIR[:TITLE]",
                        help="a python -m tuning --out folder, optionally with a title for the figure")
    parser.add_argument("--out", default="docs", help="folder for the PNGs (default: docs)")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print("| model | recommended | capacity within SLO | batching off | batching gain | points (Locust saturated) "
          "| figure |")
    print("|---|---|---:|---:|---:|---:|---|")
    for arg in args.sweeps:
        folder, _, title = arg.partition(":")
        row = sweep_row(Path(folder), title or Path(folder).name, out)
        print(f"| {row['title']} | {row['recommended']} | {_num(row['capacity'], ',.0f')} req/s "
              f"| {_num(row['baseline'], ',.0f')} req/s ({row['baseline_label']}) | **{_num(row['gain'], '.2f')}×** "
              f"| {row['points']} ({row['saturated']}) | {row['png'].as_posix()} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
