"""The job contract's pieces in-process: states and their one transition function, job_context's outcomes,
the one-line error, and the shared config helpers."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

from runs import jobs, lifecycle
from runs.configs import atomic_write_text, known_fields, plain_dict
from runs.registry import Registry, State

TF_NOISE = """WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
I0000 00:00:1796306942.196621   11274 port.cc:153] oneDNN custom operations are on. You may see slightly different
W0000 00:00:1796306942.2 11274 cpu_feature_guard.cc:210] This TensorFlow binary is optimized to use available CPU
error: model.keras: not a Keras v3 archive (config.json missing)
"""


def test_one_line_error_leaves_tensorflow_noise_out() -> None:
    assert lifecycle.one_line_error(ValueError("bad value\nsecond line")) == "ValueError: bad value"
    line = lifecycle.one_line_error("process exited with code 2", TF_NOISE)
    assert line == "process exited with code 2: error: model.keras: not a Keras v3 archive (config.json missing)"
    own = lifecycle.JobFailed("worker 12 exited with code 1")
    assert lifecycle.one_line_error(own) == "worker 12 exited with code 1"
    assert len(lifecycle.one_line_error(RuntimeError("x" * 5000))) <= lifecycle.ERROR_LINE_MAX


@pytest.mark.integration  # starts a child process
def test_reaper_reports_a_failed_childs_useful_log_line(registry: Registry) -> None:
    run_id = registry.create_run("serve")
    code = f"import sys; sys.stderr.write({TF_NOISE!r}); sys.exit(2)"
    jobs.start_job(registry, run_id, [sys.executable, "-c", code])
    run = jobs.wait_job(registry, run_id, timeout_s=30)
    assert run.status == "failed"
    assert run.error == "process exited with code 2: error: model.keras: not a Keras v3 archive (config.json missing)"


def test_transitions_keep_the_first_outcome(registry: Registry) -> None:
    run_id = registry.create_run("train")
    assert registry.transition(run_id, State.RUNNING)
    assert registry.transition(run_id, State.STOPPED, "stopped by request")
    assert not registry.transition(run_id, State.COMPLETED)  # a stopped run never becomes completed
    assert not registry.transition(run_id, State.RUNNING)  # nor runs again without reopen
    run = registry.get_run(run_id)
    assert (run.status, run.error) == ("stopped", "stopped by request") and run.ended_at is not None
    registry.reopen(run_id)  # a sweep resuming
    run = registry.get_run(run_id)
    assert (run.status, run.error, run.ended_at, run.stop_requested) == ("pending", None, None, False)
    done = registry.create_run("train")
    registry.transition(done, State.COMPLETED)
    with pytest.raises(ValueError, match="only a stopped, interrupted or failed run"):
        registry.reopen(done)
    with pytest.raises(KeyError):
        registry.transition("no-such-run", State.FAILED)


def test_job_context_records_each_outcome(registry: Registry) -> None:
    ok = registry.create_run("train")
    with lifecycle.job_context(registry, ok) as job:
        assert registry.get_run(ok).pid == psutil.Process().pid and job.run_id == ok
    assert registry.get_run(ok).status == "completed"

    failing = registry.create_run("train")
    with pytest.raises(ZeroDivisionError), lifecycle.job_context(registry, failing):
        1 / 0  # noqa: B018
    assert registry.get_run(failing).status == "failed"
    assert registry.get_run(failing).error == "ZeroDivisionError: division by zero"

    stopped = registry.create_run("train")
    reached = []
    with lifecycle.job_context(registry, stopped) as job:
        registry.request_stop(stopped)  # the Stop button
        assert job.stopping
        job.check()  # raises JobStopped, which job_context records and swallows
        reached.append(True)
    assert not reached and registry.get_run(stopped).status == "stopped"

    with pytest.raises(ValueError, match="already stopped"), lifecycle.job_context(registry, stopped):
        pass


@pytest.mark.integration  # starts a child process
def test_job_context_ends_the_children_its_job_started_and_spares_others(registry: Registry) -> None:
    sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
    older = subprocess.Popen(sleeper)  # started before the job: not the job's
    try:
        run_id = registry.create_run("train")
        with lifecycle.job_context(registry, run_id):
            child = subprocess.Popen(sleeper)
        assert child.wait(timeout=10) is not None  # ended on the way out
        assert older.poll() is None
    finally:
        older.kill()
        older.wait(5)


@dataclass(frozen=True)
class _Config:
    name: str = "x"
    sizes: tuple[int, ...] = ()
    nested: dict = field(default_factory=dict)


def test_known_fields_and_plain_dict_round_trip(tmp_path: Path) -> None:
    config = _Config("a", (1, 2), {"k": (3, 4)})
    data = plain_dict(config)
    assert data == {"name": "a", "sizes": [1, 2], "nested": {"k": [3, 4]}}
    assert _Config(**known_fields(_Config, data, "test config")) == _Config("a", (1, 2), {"k": [3, 4]})
    with pytest.raises(ValueError, match=r"unknown test config key\(s\) colour; expected some of name, sizes, nested"):
        known_fields(_Config, {"colour": 1}, "test config")
    with pytest.raises(ValueError, match="must be a JSON object"):
        known_fields(_Config, [1], "test config")
    path = atomic_write_text(tmp_path / "deep" / "out.json", "{}")
    assert path.read_text() == "{}" and oct(path.stat().st_mode & 0o777) == "0o644"
    assert [p.name for p in path.parent.iterdir()] == ["out.json"]  # no temporary left behind
