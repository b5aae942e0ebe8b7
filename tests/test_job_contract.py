"""The job contract with real processes: every job kind, started from its CLI and from the start() pages use,
stopped by SIGTERM, SIGINT or kill -9 of its top process, leaves nothing running and no run `running`.

For each (kind, launcher) three copies run at once, each in its own state directory, and each gets one of
the signals once it is deep in its work (children started). Then, within 10 s, no process of that copy may
be alive — found by its process group, by the run ids in command lines and by the TUNESWARM_HOME every
process of a run inherits — and after the reaper ran no run is active: the top run is `stopped` after a
graceful signal and `interrupted` after kill -9 (never `completed`), every run that was active when the
signal came is `stopped` or `interrupted`.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from serving_helpers import wait_until

from runs import jobs
from runs.registry import ACTIVE_STATUSES, Registry, Run

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGKILL)
DEEP_TIMEOUT_S = 180.0  # three copies start TensorFlow at once on two cores
GONE_WITHIN_S = 10.0  # the contract: nothing of the run alive this long after the signal
LONG_S = 60  # work that is still going when the signal comes


@dataclass
class Copy:
    """One started copy of a job: its state directory, registry and top process."""

    home: Path
    registry: Registry
    pid: int
    proc: subprocess.Popen[bytes] | None = None  # the CLI; None when start() launched the job

    def runs(self) -> list[Run]:
        return self.registry.list_runs()

    def top_run(self) -> Run:
        """The run the signalled process was doing (a CLI records its own pid on the run it runs)."""
        return next(r for r in self.registry.list_runs() if r.pid == self.pid and r.parent_id is None)


# -- how each kind is started and when it is deep in its work ----------------------------------------------


def _cli_argv(kind: str, model: Path, home: Path) -> list[str]:
    m = str(model)
    return {
        "train": ["agent.training", "--hidden", "8", "--epochs", "500", "--batch-size", "8"],
        "serve": ["agent.serving", "--model", m, "--port", "0", "--runtime", "keras"],
        "swarm": ["loadtest", "--serve", m, "--runtime", "keras", "--users", "2", "--spawn-rate", "2",
                  "--run-time", f"{LONG_S}s", "--report-dir", str(home / "reports")],
        "sweep": ["tuning", "--model", m, "--grid", "max_batch_size=1,8", "--users", "1,2", "--step-s", str(LONG_S),
                  "--verify-top", "0"],
        "model_sweep": ["tuning", "--mode", "models", "--train-grid", "hidden=4,8", "--epochs", "1", "--users", "1",
                        "--step-s", str(LONG_S)],
    }[kind]


def _start_with_start(kind: str, registry: Registry, model: Path, ceiling_url: str) -> str:
    """What the pages call."""
    if kind == "train":
        from agent.data import DataSource
        from agent.model import ModelConfig
        from agent.training import TrainJob, start

        return start(registry, TrainJob(ModelConfig(hidden=(8,), epochs=500, batch_size=8), DataSource("digits")))
    if kind == "serve":
        from agent.serving.config import ServingConfig
        from agent.serving.process import ServeJob, start

        return start(registry, ServeJob(str(model), serving=ServingConfig(runtime="keras")))
    if kind == "swarm":
        from loadtest.runner import LoadTestConfig, start

        return start(registry, LoadTestConfig(host=ceiling_url, users=2, spawn_rate=2.0, run_time_s=LONG_S,
                                              n_features=64))
    if kind == "sweep":
        from tuning.sweep import SweepSpec, start

        return start(registry, SweepSpec(model_path=str(model), space={"max_batch_size": [1, 8]}, users=(1, 2),
                                         step_s=LONG_S, verify_top=0))
    from tuning.model_sweep import ModelSweepSpec, start

    return start(registry, ModelSweepSpec(grid={"hidden": [[4], [8]]}, epochs=1, users=1, step_s=LONG_S))


def _deep(kind: str, registry: Registry) -> bool:
    """True once the job is well into its work, with whatever children it starts alive."""
    runs = registry.list_runs()
    by_kind = {k: [r for r in runs if r.kind == k and r.status == "running"] for k in ("train", "serve", "loadtest")}
    if kind == "train":
        return any(registry.metric_rows(r.id) for r in by_kind["train"])
    if kind == "serve":
        return any(r.summary.get("ready_at") for r in by_kind["serve"])
    # swarms and sweeps: a Locust swarm is running and has reported at least one second
    return any(r.progress.get("requests") for r in by_kind["loadtest"])


# -- finding what is left ----------------------------------------------------------------------------------


def _proc_state(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[0].decode()
    except (OSError, IndexError):
        return None


def _leftovers(copy: Copy) -> list[str]:
    """Live (non-zombie) processes of this copy: its group, its run ids in a cmdline, or its state dir in env."""
    run_ids = [r.id for r in copy.runs()]
    home_env = f"TUNESWARM_HOME={copy.home}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        pid = int(entry)
        state = _proc_state(pid)
        if state is None or state == "Z":
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                cmdline = fh.read().replace(b"\0", b" ").decode(errors="replace")
            with open(f"/proc/{pid}/environ", "rb") as fh:
                environ = fh.read().split(b"\0")
            pgid = os.getpgid(pid)
        except (OSError, ProcessLookupError):
            continue
        if pgid == copy.pid or home_env in environ or any(r in cmdline for r in run_ids):
            found.append(f"{pid}: {cmdline[:160]}")
    return found


def _reap_ours(copy: Copy) -> None:
    if copy.proc is not None:
        copy.proc.poll()  # our CLI child: collect it, or it stays a zombie
    jobs.reap(copy.registry)  # the reaper (what Streamlit runs on every page); also collects start()'s children


def _kill_everything(copy: Copy) -> None:
    """Teardown: whatever the test found, nothing of this copy survives it."""
    for _ in range(2):
        for line in _leftovers(copy):
            pid = int(line.split(":", 1)[0])
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)
    if copy.proc is not None and copy.proc.poll() is None:
        copy.proc.kill()
        copy.proc.wait(5)
    _reap_ours(copy)


# -- fixtures ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ceiling_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A target for start()'s swarms that belongs to no copy (its own state directory)."""
    from agent.serving.config import ServingConfig
    from agent.serving.process import start_endpoint, stop_endpoint

    registry = Registry(tmp_path_factory.mktemp("ceiling-home"))
    handle = start_endpoint(registry, None, ServingConfig(), ceiling=True)
    try:
        yield handle.url
    finally:
        stop_endpoint(registry, handle.run_id)




KINDS = ("train", "serve", "swarm", "sweep", "model_sweep")


@pytest.mark.parametrize("launcher", ["cli", "start"])
@pytest.mark.parametrize("kind", KINDS)
def test_signals_and_kill_leave_nothing_running(
    kind: str, launcher: str, tmp_path: Path, trained_model: Path, ceiling_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    copies: list[Copy] = []
    try:
        for sig in SIGNALS:
            home = tmp_path / sig.name
            home.mkdir()
            registry = Registry(home)
            if launcher == "cli":
                env = {**os.environ, "TUNESWARM_HOME": str(home), "PYTHONPATH": str(ROOT)}
                log = open(home / "cli.log", "wb")  # noqa: SIM115 (closed with the process)
                argv = [sys.executable, "-m", *_cli_argv(kind, trained_model, home)]
                proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                        stderr=subprocess.STDOUT, start_new_session=True)
                log.close()
                copies.append(Copy(home, registry, proc.pid, proc))
            else:
                monkeypatch.setenv("TUNESWARM_HOME", str(home))
                run_id = _start_with_start(kind, registry, trained_model, ceiling_url)
                run = registry.get_run(run_id)
                assert run.pid is not None
                copies.append(Copy(home, registry, run.pid))
        for copy in copies:
            wait_until(lambda copy=copy: _deep(kind, copy.registry), DEEP_TIMEOUT_S,
                       f"{kind} to be at work in {copy.home}")

        active_before = []
        for copy, sig in zip(copies, SIGNALS, strict=True):
            active_before.append({r.id for r in copy.runs() if r.active})
            os.kill(copy.pid, sig)
        sent = time.monotonic()

        for copy, sig in zip(copies, SIGNALS, strict=True):
            def gone(copy: Copy = copy) -> bool:
                _reap_ours(copy)
                return not _leftovers(copy)

            remaining = GONE_WITHIN_S - (time.monotonic() - sent)
            try:
                wait_until(gone, max(0.5, remaining), f"every process of the {sig.name} copy to end")
            except AssertionError:
                raise AssertionError(f"{kind} via {launcher}, {sig.name}: still alive after {GONE_WITHIN_S:.0f}s: "
                                     f"{_leftovers(copy)}") from None

        for copy, sig, before in zip(copies, SIGNALS, active_before, strict=True):
            _reap_ours(copy)
            runs = {r.id: r for r in copy.runs()}
            still = [f"{r.kind} {r.id} {r.status}" for r in runs.values() if r.status in ACTIVE_STATUSES]
            assert not still, f"{kind} via {launcher}, {sig.name}: runs left active: {still}"
            top = copy.top_run()
            expected = ("interrupted",) if sig == signal.SIGKILL else ("stopped",)
            assert top.status in expected, (kind, launcher, sig.name, top.kind, top.status, top.error)
            for run_id in before:
                r = runs[run_id]
                assert r.status in ("stopped", "interrupted"), (kind, launcher, sig.name, r.kind, r.status, r.error)
            if kind == "swarm" and launcher == "cli" and sig != signal.SIGKILL:
                # the partial results reach --report-dir too
                summary = json.loads((copy.home / "reports" / "summary.json").read_text())
                assert summary["status"] == "stopped" and summary["requests"] > 0
    finally:
        for copy in copies:
            _kill_everything(copy)
