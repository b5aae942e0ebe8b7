"""Process-wide handles and per-session defaults for the dashboard.

The registry is the source of truth: the Streamlit process only holds one
cached handle on it. Jobs whose process vanished (Streamlit restarted, machine
rebooted) are reaped once at start-up so they show as interrupted, not running.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import streamlit as st

from runs.jobs import reap
from runs.registry import Registry, default_home


@st.cache_resource(show_spinner=False)
def _registry_for(home: str) -> Registry:
    registry = Registry(home)
    reap(registry)  # once per process and state directory
    return registry


def get_registry() -> Registry:
    """The shared registry handle (thread-safe: one SQLite connection per thread).

    Each page run also reaps jobs whose process has gone (one indexed query plus a
    process check per active run), so a crashed endpoint or swarm never shows
    as running nor is offered as a target.
    """
    registry = _registry_for(str(default_home()))
    reap(registry)
    return registry


KEPT_PREFIX = "kept:"  # a widget's value copied under a non-widget key, which Streamlit never drops


def init_defaults(defaults: Mapping[str, Any]) -> None:
    """Seed widget values once per session, so neither a rerun nor a visit to another page resets them.

    Streamlit forgets a widget's value as soon as one run does not draw it (leaving the
    page does that), so every run also copies each value under a plain key and the
    next visit restores from that copy before the widget is drawn again.
    """
    state = st.session_state
    for key, value in defaults.items():
        if key not in state:
            state[key] = state.get(KEPT_PREFIX + key, value)
        state[KEPT_PREFIX + key] = state[key]
