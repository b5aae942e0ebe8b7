"""Shared fixtures: a temporary state directory per test and one tiny trained model per session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from runs.registry import Registry

# Quiet TensorFlow's start-up chatter in test output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(scope="session", autouse=True)
def _session_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Every CLI records its run: without a test's own ``home``, they go here, never to the project's .tuneswarm/."""
    previous = os.environ.get("TUNESWARM_HOME")
    os.environ["TUNESWARM_HOME"] = str(tmp_path_factory.mktemp("session-home"))
    yield
    if previous is None:
        os.environ.pop("TUNESWARM_HOME", None)
    else:
        os.environ["TUNESWARM_HOME"] = previous


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh state directory; child processes inherit it through TUNESWARM_HOME."""
    state = tmp_path / "state"
    state.mkdir()
    monkeypatch.setenv("TUNESWARM_HOME", str(state))
    return state


@pytest.fixture
def registry(home: Path) -> Iterator[Registry]:
    reg = Registry(home)
    yield reg
    reg.close()


@pytest.fixture(scope="session")
def trained_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path to ``model.keras`` of a small digits model trained once for the whole suite.

    Its folder also holds ``metadata.json`` and ``samples.json``.
    """
    from agent.data import DataSource
    from agent.model import ModelConfig
    from agent.training import train

    state = tmp_path_factory.mktemp("trained-state")
    reg = Registry(state)
    result = train(ModelConfig(hidden=(32,), epochs=5, batch_size=64, seed=1), DataSource("digits"), reg)
    reg.close()
    assert result.status == "completed"
    return result.model_path
