"""First paint of the dashboard vs ``import tensorflow``, measured side by side in one run.

Prints, for each repetition and as a median:

- dashboard: seconds from starting ``streamlit run app.py`` (empty state directory)
  to the Train page being interactive in Chromium (its "Train" button is
  visible and enabled);
- bare Streamlit: the same for a one-button Streamlit script (the floor the
  framework itself sets: interpreter, server, the browser loading the client);
- import tensorflow: seconds of ``python -c 'import tensorflow'``;

and the ratios. The dashboard imports TensorFlow only where a job or a model
needs it, so its first paint should take well under the time of that import.

Usage: ``python bench/startup.py [--repeat 3]`` (needs /usr/bin/chromium).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dashboard.launch import (
    CHROMIUM_ARGS,
    CHROMIUM_PATH,
    free_port,
    start_streamlit,
    stop_streamlit,
    wait_healthy,
)

INTERACTIVE_TIMEOUT_MS = 120_000
BARE_APP = 'import streamlit as st\nst.title("Train")\nst.button("Train")\n'


def time_dashboard(browser, bare: bool = False) -> float:
    """Seconds from process start to the Train button being clickable (``bare``: a one-button app)."""
    with tempfile.TemporaryDirectory(prefix="tuneswarm-startup-") as tmp:
        home = Path(tmp) / "state"
        home.mkdir()
        port = free_port()
        page = browser.new_page()
        app = Path(tmp) / "bare_app.py"
        app.write_text(BARE_APP)
        t0 = time.perf_counter()
        proc = start_streamlit(home, port, Path(tmp) / "streamlit.log", **({"app": app} if bare else {}))
        try:
            wait_healthy(proc, port)
            page.goto(f"http://127.0.0.1:{port}/")
            button = page.get_by_role("button", name="Train", exact=True)
            button.wait_for(state="visible", timeout=INTERACTIVE_TIMEOUT_MS)
            deadline = time.monotonic() + INTERACTIVE_TIMEOUT_MS / 1000
            while not button.is_enabled() and time.monotonic() < deadline:
                time.sleep(0.01)
            return time.perf_counter() - t0
        finally:
            page.close()
            stop_streamlit(proc)


def time_tensorflow_import() -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import tensorflow"], check=True, capture_output=True, timeout=300)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python bench/startup.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="measurements of each (the median is reported)")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.exit(2, f"{parser.prog}: error: --repeat must be >= 1; got {args.repeat}\n")
    if not Path(CHROMIUM_PATH).exists():
        parser.exit(2, f"{parser.prog}: error: no Chromium at {CHROMIUM_PATH}; install it: apt-get install chromium\n")
    from playwright.sync_api import sync_playwright

    time_tensorflow_import()  # warm the file cache for both sides alike
    dash: list[float] = []
    bare: list[float] = []
    tf: list[float] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM_PATH, headless=True, args=list(CHROMIUM_ARGS))
        try:
            time_dashboard(browser)  # warm-up: first Streamlit start compiles bytecode
            for i in range(args.repeat):
                # Alternate so background load on this shared machine hits both alike.
                dash.append(time_dashboard(browser))
                bare.append(time_dashboard(browser, bare=True))
                tf.append(time_tensorflow_import())
                print(f"run {i + 1}: dashboard {dash[-1]:.2f} s | bare streamlit {bare[-1]:.2f} s | "
                      f"import tensorflow {tf[-1]:.2f} s")
        finally:
            browser.close()
    d, b, t = statistics.median(dash), statistics.median(bare), statistics.median(tf)
    print()
    print(f"{'measure':<44} {'median s':>9}")
    print(f"{'streamlit run app.py -> Train interactive':<44} {d:>9.2f}")
    print(f"{'bare one-button Streamlit app -> interactive':<44} {b:>9.2f}")
    print(f"{'python -c import tensorflow':<44} {t:>9.2f}")
    print(f"{'ratio dashboard / import tensorflow':<44} {d / t:>9.2f}")
    print(f"{'ratio dashboard / bare Streamlit':<44} {d / b:>9.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
