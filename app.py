"""TuneSwarm dashboard: ``streamlit run app.py``.

Page config and navigation only; each page is one file in ``dashboard/pages``.
Pages import TensorFlow lazily (only where a job or a model is touched), so the
first paint does not wait for ``import tensorflow``.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

PAGES_DIR = Path(__file__).resolve().parent / "dashboard" / "pages"
# (file, title, icon); a page whose file is absent (e.g. not installed yet) is skipped.
PAGES = (
    ("train.py", "Train", ":material/model_training:"),
    ("serve.py", "Serve", ":material/dns:"),
    ("loadtest.py", "Load test", ":material/speed:"),
    ("tune.py", "Tune", ":material/tune:"),
    ("runs.py", "Runs", ":material/history:"),
)

st.set_page_config(page_title="TuneSwarm", page_icon="🐝", layout="wide")

pages = [
    st.Page(PAGES_DIR / name, title=title, icon=icon, default=(i == 0))
    for i, (name, title, icon) in enumerate(PAGES)
    if (PAGES_DIR / name).is_file()
]
with st.sidebar:
    st.markdown("### TuneSwarm")
    st.caption("Train a model, serve it, swarm it with Locust, pick the config to ship.")
st.navigation(pages).run()
