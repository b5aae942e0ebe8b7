"""The model sweep's Optuna search as a real job: tiny digits trials, a kill -9 mid-search, a resume, the front."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from serving_helpers import wait_until

from runs.jobs import reap, stop_job
from runs.registry import Registry
from tuning.model_search import DUPLICATE_ATTR
from tuning.model_sweep import ModelSweepSpec, start

optuna = pytest.importorskip("optuna")

pytestmark = [pytest.mark.integration, pytest.mark.slow]
ROOT = Path(__file__).resolve().parent.parent
# Trials of a few seconds each: 2 epochs (pruning compares epoch 1), small widths, a 2 s step.
SPEC = ModelSweepSpec(dataset="digits", search="optuna", n_trials=8, objective="accuracy+p99", epochs=2,
                      ranges={"width": [4, 32], "learning_rate": [0.001, 0.05]}, grid={}, users=2, step_s=2.0,
                      slos=("p99<=5000ms", "fail_ratio<=0.5"))




def _group_gone(pid: int, registry: Registry) -> bool:
    reap(registry)  # collect our own exited child, or it lingers in its group as a zombie
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _mid_trial(registry: Registry, run_id: str, after: int) -> bool:
    """``after`` trials finished and the next one is training (so the kill leaves a RUNNING trial)."""
    run = registry.get_run(run_id)
    return len(run.summary.get("models", [])) >= after and run.progress.get("phase") == "training" and \
        run.progress.get("done", 0) >= after


def test_optuna_search_resumes_after_kill_9_without_repeating_trials_and_reports_the_front(registry: Registry,
                                                                                           home: Path) -> None:
    run_id = start(registry, SPEC)
    try:
        wait_until(lambda: registry.get_run(run_id).pid is not None, 60, "the job to start")
        job_pid = registry.get_run(run_id).pid
        wait_until(lambda: _mid_trial(registry, run_id, 3), 150, "three finished trials and a fourth training")
        before = {r["trial"]: r for r in registry.get_run(run_id).summary["models"]}
        os.killpg(job_pid, signal.SIGKILL)  # no clean-up at all: as if the machine lost the process
        wait_until(lambda: _group_gone(job_pid, registry), 10, "the search's process group to die")
        assert registry.get_run(run_id).status == "interrupted"

        env = {**os.environ, "TUNESWARM_HOME": str(home), "PYTHONPATH": str(ROOT)}
        proc = subprocess.run([sys.executable, "-m", "tuning", "--run-id", run_id], capture_output=True, text=True,
                              env=env, timeout=240, cwd=ROOT, check=False)  # same run id: resume
        assert proc.returncode == 0, proc.stdout + proc.stderr
        run = registry.get_run(run_id)
        assert run.status == "completed", run.error

        study = optuna.load_study(study_name=run_id, storage=run.summary["optuna"]["storage"])
        states = Counter(t.state.name for t in study.trials)
        assert states["COMPLETE"] + states["PRUNED"] == SPEC.n_trials  # the budget, reached across the kill
        assert states["FAIL"] >= 1 and states["RUNNING"] == 0  # the trial the kill interrupted
        assert run.summary["optuna_failed_on_resume"]
        rows = run.summary["models"]
        assert len(rows) == SPEC.n_trials and len({r["trial"] for r in rows}) == SPEC.n_trials
        # the trials finished before the kill are kept as they were, not trained again
        after = {r["trial"]: r for r in rows}
        for number, row in before.items():
            assert after[number]["train_run_id"] == row["train_run_id"]
        trains = [r for r in registry.list_runs(kind="train") if r.parent_id == run_id]
        # one training per trial, the failed one included (a re-sampled point is told, not trained)
        assert len(trains) == len([t for t in study.trials if DUPLICATE_ATTR not in t.user_attrs])
        assert Counter(r["key"] for r in rows).most_common(1)[0][1] == 1  # no point measured twice
        pruned = [r for r in rows if r["state"] == "pruned"]
        for r in pruned:  # not served, and its training recorded as pruned
            assert r.get("p99_ms") is None
            assert registry.get_run(r["train_run_id"]).error.startswith("pruned by the search")
        complete = [r for r in rows if r["state"] == "complete"]
        assert complete and all(r["p99_ms"] > 0 and 0 <= r["val_accuracy"] <= 1 for r in complete)
        front = [r for r in complete if r["key"] in run.summary["front"]]
        assert front  # somebody is always on the front, and only measured trials compete
        assert {r["key"] for r in pruned}.isdisjoint(run.summary["front"])
        assert "Pareto front (val_accuracy vs p99_ms)" in proc.stdout
        assert not [r for r in registry.list_runs() if r.parent_id == run_id and r.active]
    finally:
        reap(registry)
        for r in registry.list_runs(status=("pending", "running")):
            stop_job(registry, r.id, grace_s=5.0)
