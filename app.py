"""TuneSwarm dashboard: ``streamlit run app.py``.

Page config and navigation only; each page is one file in ``dashboard/pages``.
Pages import TensorFlow lazily (only where a job or a model is touched), so the
first paint does not wait for ``import tensorflow``.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

PAGES_DIR = Path(__file__).resolve().parent / "dashboard" / "pages"
# (file, title, icon, URL path); a page whose file is absent (e.g. not installed yet) is skipped.
# Page files are named so they never shadow a package (``loadtest``, ``runs``) when a
# page's folder is on sys.path (AppTest runs a page with its folder on the path).
PAGES = (
    ("train.py", "Train", ":material/model_training:", "train"),
    ("serve.py", "Serve", ":material/dns:", "serve"),
    ("load_test.py", "Load test", ":material/speed:", "loadtest"),
    ("tune.py", "Tune", ":material/tune:", "tune"),
    ("run_history.py", "Runs", ":material/history:", "runs"),
)

st.set_page_config(page_title="TuneSwarm", page_icon="🐝", layout="wide")

available = [p for p in PAGES if (PAGES_DIR / p[0]).is_file()]
pages = [
    # Streamlit serves the default page at the root and reserves its url_path without answering it,
    # so the first page gets a path nobody links to and its real one (/train) goes to the alias below.
    st.Page(PAGES_DIR / name, title=title, icon=icon, url_path=f"{url_path}-home" if i == 0 else url_path,
            default=(i == 0))
    for i, (name, title, icon, url_path) in enumerate(available)
]


def _to_default_page() -> None:
    """``/train`` (the default page's own name): open it at the root, keeping ``?run=ID``."""
    st.switch_page(pages[0], query_params=st.query_params.to_dict())


if pages:
    pages.append(st.Page(_to_default_page, title=available[0][1], url_path=available[0][3], visibility="hidden"))
page = st.navigation(pages)
ACTIVE_JOBS_REFRESH_S = 2.0


def active_jobs() -> None:
    """The sidebar's Active jobs, redrawn on a timer so durations advance (from start to now)."""
    import time

    from dashboard.format import STATUS_ICONS, duration
    from dashboard.live import active_duration
    from dashboard.state import get_registry

    # Jobs live in the registry, not in this session: whatever another tab (or a
    # previous run of Streamlit) started is listed here too.
    active = get_registry().list_runs(status=("pending", "running"), limit=10)
    if active:
        st.markdown("**Active jobs**")
        now = time.time()
        for run in active:
            st.caption(f"{STATUS_ICONS.get(run.status, '')} {run.kind} · {run.name} · "
                       f"{duration(active_duration(run.started_at, now))}")


with st.sidebar:
    st.markdown("### TuneSwarm")
    st.caption("Train a model, serve it, swarm it with Locust, pick the config to ship.")
    # A timer only while something runs; a page that starts a job reruns the whole app, which turns it on.
    from dashboard.state import get_registry as _registry

    _busy = bool(_registry().list_runs(status=("pending", "running"), limit=1))
    st.fragment(active_jobs, run_every=ACTIVE_JOBS_REFRESH_S if _busy else None)()
page.run()
