"""The run registry: a real SQLite file, concurrent writers from real processes."""

from __future__ import annotations

import multiprocessing as mp
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runs.registry import SCHEMA_VERSION, Registry

WRITERS = 3
WRITES_PER_WRITER = 500


def test_run_lifecycle_and_json_columns(registry: Registry) -> None:
    run_id = registry.create_run("train", {"model": {"hidden": [8]}}, name="tiny")
    run = registry.get_run(run_id)
    assert (run.kind, run.name, run.status, run.config) == ("train", "tiny", "pending", {"model": {"hidden": [8]}})
    assert registry.artifacts_dir(run_id).is_dir()

    registry.mark_started(run_id, pid=12345, pid_started=1.0)
    registry.set_progress(run_id, {"epoch": 2, "epochs": 5})
    registry.update_summary(run_id, {"a": 1})
    registry.update_summary(run_id, {"b": 2})
    registry.set_status(run_id, "completed")
    run = registry.get_run(run_id)
    assert run.status == "completed" and run.pid == 12345
    assert run.progress == {"epoch": 2, "epochs": 5}
    assert run.summary == {"a": 1, "b": 2}
    assert run.ended_at is not None and run.ended_at >= run.started_at


def test_finish_if_active_never_overwrites_an_outcome(registry: Registry) -> None:
    run_id = registry.create_run("serve", status="running")
    registry.set_status(run_id, "completed")
    assert registry.finish_if_active(run_id, "interrupted", "gone") is False
    assert registry.get_run(run_id).status == "completed"


def test_list_filters_and_order(registry: Registry) -> None:
    a = registry.create_run("train")
    b = registry.create_run("loadtest", status="running")
    c = registry.create_run("train", status="running")
    assert [r.id for r in registry.list_runs()] == [c, b, a]
    assert [r.id for r in registry.list_runs(kind="train")] == [c, a]
    assert [r.id for r in registry.list_runs(kind="train", status="running")] == [c]
    assert [r.id for r in registry.list_runs(kind=["train", "loadtest"], status=["pending"])] == [a]


def test_metric_series_and_wide_rows(registry: Registry) -> None:
    run_id = registry.create_run("train")
    registry.log_metrics(run_id, 1, {"loss": 2.0, "val_loss": 2.5})
    registry.log_metric_rows(run_id, [(2, {"loss": 1.0}), (3, {"loss": 0.5, "val_loss": 0.7})])
    series = registry.metric_series(run_id)
    assert series["loss"] == [(1, 2.0), (2, 1.0), (3, 0.5)]
    assert registry.metric_series(run_id, ["val_loss"], since_step=1) == {"val_loss": [(3, 0.7)]}
    assert registry.metric_rows(run_id)[1] == {"step": 2, "loss": 1.0}


def test_bad_kind_status_and_unknown_run(registry: Registry) -> None:
    with pytest.raises(ValueError, match="kind must be one of"):
        registry.create_run("bake")
    run_id = registry.create_run("train")
    with pytest.raises(ValueError, match="status must be one of"):
        registry.set_status(run_id, "done")
    with pytest.raises(KeyError, match="no run with id"):
        registry.get_run("nope")


def test_delete_refuses_active_runs_and_removes_everything(registry: Registry) -> None:
    run_id = registry.create_run("train", status="running")
    registry.log_metrics(run_id, 1, {"loss": 1.0})
    (registry.artifacts_dir(run_id) / "model.keras").write_text("x")
    with pytest.raises(ValueError, match="stop it before deleting"):
        registry.delete_run(run_id)
    registry.set_status(run_id, "stopped")
    registry.delete_run(run_id)
    assert registry.list_runs() == []
    assert registry.count_metrics(run_id) == 0
    assert not registry.artifacts_dir(run_id).exists()


def test_schema_version_and_wal(registry: Registry) -> None:
    conn = sqlite3.connect(registry.path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def test_newer_schema_is_refused(home: Path) -> None:
    Registry(home).close()
    conn = sqlite3.connect(home / "registry.sqlite3")
    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(RuntimeError, match="newer than this TuneSwarm understands"):
        Registry(home)


def _writer(home: str, run_id: str, worker: int, start: mp.synchronize.Event) -> None:
    reg = Registry(home)
    start.wait(30)
    for i in range(WRITES_PER_WRITER):
        reg.log_metrics(run_id, worker * WRITES_PER_WRITER + i, {"w": float(worker)})
        if i % 50 == 0:
            reg.update_summary(run_id, {f"w{worker}": i})


@pytest.mark.integration  # real processes
def test_concurrent_writers_from_three_processes(registry: Registry) -> None:
    run_id = registry.create_run("loadtest", status="running")
    ctx = mp.get_context("spawn")
    start = ctx.Event()
    procs = [ctx.Process(target=_writer, args=(str(registry.home), run_id, w, start)) for w in range(WRITERS)]
    for p in procs:
        p.start()
    start.set()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0] * WRITERS, "a writer failed (database is locked?)"
    assert registry.count_metrics(run_id) == WRITERS * WRITES_PER_WRITER
    per_worker = registry.metric_series(run_id)["w"]
    assert sorted({int(v) for _, v in per_worker}) == list(range(WRITERS))
    assert sorted(registry.get_run(run_id).summary) == [f"w{w}" for w in range(WRITERS)]


FRESH_OPENERS = 8
FRESH_FILES = 60
# Each opener waits for the go file, then opens the same brand-new registries in the same order
# (the race is at creating the file and switching it to WAL), writing one run in each.
OPENER = """
import os, sys, time
go, root, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
from runs.registry import Registry
deadline = time.monotonic() + 30
while not os.path.exists(go) and time.monotonic() < deadline:
    time.sleep(0.0005)
errors = []
for i in range(n):
    try:
        reg = Registry(os.path.join(root, f"fresh{i}"))
        reg.create_run("train")
        reg.close()
    except Exception as exc:
        errors.append(f"fresh{i}: {type(exc).__name__}: {exc}")
print("\\n".join(errors) or "ok")
"""


@pytest.mark.integration  # real processes
def test_processes_opening_the_same_fresh_registry_at_once_all_succeed(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(root)}
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", OPENER, str(go), str(tmp_path), str(FRESH_FILES)], env=env,
                              cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(FRESH_OPENERS)]
    time.sleep(1.0)  # let them all import and reach the wait (a late one only makes the race milder)
    go.touch()
    outs = [p.communicate(timeout=120) for p in procs]
    failures = [out.strip() or err.strip()[-300:] for (out, err) in outs if out.strip() != "ok"]
    assert not failures, failures
    for i in range(FRESH_FILES):
        assert len(Registry(tmp_path / f"fresh{i}").list_runs()) == FRESH_OPENERS
