"""TuneSwarm dashboard: ``streamlit run app.py``."""

from __future__ import annotations

import streamlit as st

st.set_page_config(page_title="TuneSwarm", page_icon="🐝", layout="wide")
st.title("TuneSwarm")
st.write("Train, serve, swarm and tune a Keras model under load.")
