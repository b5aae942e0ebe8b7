"""The run registry: one SQLite file holding every run, its status and its metric series.

Every process (Streamlit, training jobs, load-test runners, sweeps) opens the same
file. WAL mode lets readers proceed while one writer commits; writes take the lock
up front with ``BEGIN IMMEDIATE`` so two writers never deadlock upgrading a read
lock, and the busy timeout makes a contended writer wait instead of failing with
"database is locked".
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
BUSY_TIMEOUT_MS = 30_000
DB_FILENAME = "registry.sqlite3"
ARTIFACTS_DIRNAME = "artifacts"

KINDS = ("train", "serve", "loadtest", "sweep")
LOCK_FILENAME = "registry.lock"
WAL_RETRIES = 50  # journal_mode=WAL can fail with "locked" without waiting on the busy timeout
WAL_RETRY_S = 0.05


class State:
    """The named states of a run. Only :meth:`Registry.transition` moves a run between them."""

    PENDING = "pending"  # created, process not started yet
    RUNNING = "running"  # its process is alive (pid and start time recorded)
    COMPLETED = "completed"  # the work ended on its own
    FAILED = "failed"  # the work ended with an error (one line in ``error``)
    STOPPED = "stopped"  # a stop was asked for (signal, Stop button, parent gone) and honoured
    INTERRUPTED = "interrupted"  # the process vanished without recording an outcome (killed)


STATUSES = (State.PENDING, State.RUNNING, State.COMPLETED, State.FAILED, State.STOPPED, State.INTERRUPTED)
ACTIVE_STATUSES = (State.PENDING, State.RUNNING)
TERMINAL_STATUSES = tuple(s for s in STATUSES if s not in ACTIVE_STATUSES)
# Allowed moves. A terminal state is final: whoever records an outcome first wins, so a
# supervisor that notices later never overwrites what the job itself recorded.
TRANSITIONS: dict[str, tuple[str, ...]] = {
    State.PENDING: (State.RUNNING, *TERMINAL_STATUSES),
    State.RUNNING: TERMINAL_STATUSES,
    State.COMPLETED: (),
    # A resumable job (a sweep) that ended early goes back to pending to be started again.
    State.FAILED: (State.PENDING,),
    State.STOPPED: (State.PENDING,),
    State.INTERRUPTED: (State.PENDING,),
}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id              TEXT PRIMARY KEY,
    kind            TEXT NOT NULL,
    name            TEXT NOT NULL,
    config          TEXT NOT NULL DEFAULT '{}',
    status          TEXT NOT NULL,
    pid             INTEGER,
    pid_started     REAL,
    created_at      REAL NOT NULL,
    started_at      REAL,
    ended_at        REAL,
    error           TEXT,
    stop_requested  INTEGER NOT NULL DEFAULT 0,
    progress        TEXT NOT NULL DEFAULT '{}',
    summary         TEXT NOT NULL DEFAULT '{}',
    parent_id       TEXT
);
CREATE INDEX IF NOT EXISTS runs_kind_status ON runs(kind, status);
CREATE TABLE IF NOT EXISTS metrics (
    run_id  TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    step    INTEGER NOT NULL,
    ts      REAL NOT NULL,
    name    TEXT NOT NULL,
    value   REAL
);
CREATE INDEX IF NOT EXISTS metrics_run_name_step ON metrics(run_id, name, step);
"""


def default_home() -> Path:
    """The state directory: ``$TUNESWARM_HOME``, else ``.tuneswarm/`` in the project root of a checkout,
    else (an installed package, whose root is site-packages) ``~/.tuneswarm``."""
    env = os.environ.get("TUNESWARM_HOME")
    if env:
        return Path(env).expanduser()
    root = Path(__file__).resolve().parent.parent
    if (root / "pyproject.toml").is_file():
        return root / ".tuneswarm"
    return Path.home() / ".tuneswarm"


@dataclass(frozen=True)
class Run:
    """One row of the ``runs`` table, with its JSON columns decoded."""

    id: str
    kind: str
    name: str
    config: dict[str, Any]
    status: str
    pid: int | None
    pid_started: float | None
    created_at: float
    started_at: float | None
    ended_at: float | None
    error: str | None
    stop_requested: bool
    progress: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    parent_id: str | None = None

    @property
    def active(self) -> bool:
        return self.status in ACTIVE_STATUSES

    @property
    def duration_s(self) -> float | None:
        if self.started_at is None:
            return None
        end = self.ended_at if self.ended_at is not None else time.time()
        return max(0.0, end - self.started_at)


def _row_to_run(row: sqlite3.Row) -> Run:
    return Run(
        id=row["id"],
        kind=row["kind"],
        name=row["name"],
        config=json.loads(row["config"]),
        status=row["status"],
        pid=row["pid"],
        pid_started=row["pid_started"],
        created_at=row["created_at"],
        started_at=row["started_at"],
        ended_at=row["ended_at"],
        error=row["error"],
        stop_requested=bool(row["stop_requested"]),
        progress=json.loads(row["progress"]),
        summary=json.loads(row["summary"]),
        parent_id=row["parent_id"],
    )


def _check_choice(name: str, value: str, allowed: Iterable[str]) -> None:
    allowed = tuple(allowed)
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")


class Registry:
    """Handle on the registry file. Cheap to create; safe to share between threads.

    Each thread gets its own SQLite connection (sqlite3 connections must not be
    used from two threads at once).
    """

    def __init__(self, home: str | os.PathLike[str] | None = None) -> None:
        self.home = Path(home) if home is not None else default_home()
        self.home.mkdir(parents=True, exist_ok=True)
        self.path = self.home / DB_FILENAME
        self._local = threading.local()
        self._migrate()

    # -- connections -------------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None or getattr(self._local, "pid", None) != os.getpid():
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            _set_wal(conn)
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            self._local.conn = conn
            self._local.pid = os.getpid()
        return conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction that takes the write lock at once (no lock upgrades)."""
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        else:
            conn.execute("COMMIT")

    def _migrate(self) -> None:
        # Processes opening a brand-new file at once would race on switching it to WAL and on
        # creating the schema; an advisory file lock makes them take turns (held only here).
        with open(self.home / LOCK_FILENAME, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                self._migrate_locked()
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _migrate_locked(self) -> None:
        conn = self._conn()
        with self._write():
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise RuntimeError(
                    f"registry {self.path} has schema version {version}, newer than this "
                    f"TuneSwarm understands ({SCHEMA_VERSION}); upgrade TuneSwarm"
                )
            if version < 1:
                # executescript() would COMMIT our open transaction; run statements one by one.
                for statement in filter(str.strip, _SCHEMA.split(";")):
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    # -- runs --------------------------------------------------------------------------

    def create_run(
        self,
        kind: str,
        config: Mapping[str, Any] | None = None,
        *,
        name: str | None = None,
        status: str = "pending",
        parent_id: str | None = None,
    ) -> str:
        """Insert a run and make its artifact folder; returns the new run id."""
        _check_choice("kind", kind, KINDS)
        _check_choice("status", status, STATUSES)
        now = time.time()
        run_id = time.strftime("%Y%m%d-%H%M%S", time.localtime(now)) + "-" + uuid.uuid4().hex[:6]
        config_json = json.dumps(dict(config or {}), sort_keys=True, default=str)
        with self._write() as conn:
            conn.execute(
                "INSERT INTO runs (id, kind, name, config, status, created_at, started_at, parent_id)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    run_id,
                    kind,
                    name or f"{kind} {run_id}",
                    config_json,
                    status,
                    now,
                    now if status == "running" else None,
                    parent_id,
                ),
            )
        self.artifacts_dir(run_id).mkdir(parents=True, exist_ok=True)
        return run_id

    def get_run(self, run_id: str) -> Run:
        row = self._conn().execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            raise KeyError(f"no run with id {run_id!r} in {self.path}")
        return _row_to_run(row)

    def list_runs(
        self,
        kind: str | Iterable[str] | None = None,
        status: str | Iterable[str] | None = None,
        limit: int | None = None,
    ) -> list[Run]:
        """Runs, newest first, optionally filtered by kind(s) and status(es)."""
        clauses: list[str] = []
        params: list[Any] = []
        for column, value in (("kind", kind), ("status", status)):
            if value is None:
                continue
            values = [value] if isinstance(value, str) else list(value)
            if not values:
                return []
            clauses.append(f"{column} IN ({','.join('?' * len(values))})")
            params.extend(values)
        sql = "SELECT * FROM runs"
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        sql += " ORDER BY created_at DESC, id DESC"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return [_row_to_run(r) for r in self._conn().execute(sql, params)]

    def mark_started(self, run_id: str, pid: int, pid_started: float | None) -> None:
        """Record the process doing the run (its pid and start time) and make it ``running``.

        Called by the launcher right after the fork and again by the job itself, so
        a run always names a live process the reaper can check (a foreground CLI
        run records its own pid this way).
        """
        with self._write() as conn:
            cur = conn.execute(
                "UPDATE runs SET status=?, pid=?, pid_started=?, started_at=COALESCE(started_at, ?)"
                " WHERE id=? AND status IN (?, ?)",
                (State.RUNNING, pid, pid_started, time.time(), run_id, *ACTIVE_STATUSES),
            )
            if cur.rowcount == 0:
                run = self.get_run(run_id)  # KeyError for an unknown id
                raise ValueError(f"run {run_id} is already {run.status}; a finished run cannot be started again")

    def transition(self, run_id: str, status: str, error: str | None = None) -> bool:
        """Move a run to ``status`` if :data:`TRANSITIONS` allows it from where it is; True if it moved.

        The one place a run's status changes. A terminal status stamps ``ended_at``;
        a refused move (e.g. ``completed`` after ``stopped``) changes nothing.
        """
        _check_choice("status", status, STATUSES)
        sources = [s for s, targets in TRANSITIONS.items() if status in targets]
        if not sources:
            return False
        now = time.time()
        ended = None if status in ACTIVE_STATUSES else now
        with self._write() as conn:
            cur = conn.execute(
                "UPDATE runs SET status=?, error=COALESCE(?, error), ended_at=?, started_at=COALESCE(started_at, ?)"
                f" WHERE id=? AND status IN ({','.join('?' * len(sources))})",
                (status, error, ended, now, run_id, *sources),
            )
            if cur.rowcount == 0 and conn.execute("SELECT 1 FROM runs WHERE id=?", (run_id,)).fetchone() is None:
                raise KeyError(f"no run with id {run_id!r}")
            return cur.rowcount > 0

    def reopen(self, run_id: str) -> None:
        """Make a stopped, interrupted or failed run pending again, to be resumed (keeps its results)."""
        run = self.get_run(run_id)
        if run.status == State.PENDING:
            return
        if State.PENDING not in TRANSITIONS[run.status]:
            raise ValueError(f"run {run_id} is {run.status}; only a stopped, interrupted or failed run can resume")
        with self._write() as conn:
            conn.execute(
                "UPDATE runs SET status=?, error=NULL, ended_at=NULL, stop_requested=0, pid=NULL, pid_started=NULL"
                " WHERE id=?",
                (State.PENDING, run_id),
            )

    def set_status(self, run_id: str, status: str, error: str | None = None) -> bool:
        """Record ``status`` (see :meth:`transition`); kept for the jobs that record their own outcome."""
        return self.transition(run_id, status, error)

    def finish_if_active(self, run_id: str, status: str, error: str | None = None) -> bool:
        """Set a terminal status only if the run is still active; True if it changed.

        Used by supervisors, so that a run which already recorded its own outcome
        is never overwritten by a later observer.
        """
        if status in ACTIVE_STATUSES:
            raise ValueError(f"finish_if_active needs a terminal status, one of {', '.join(TERMINAL_STATUSES)}")
        return self.transition(run_id, status, error)

    def update_config(self, run_id: str, updates: Mapping[str, Any]) -> None:
        """Merge ``updates`` into the run's config (e.g. a path known only once the run exists)."""
        self._merge_json(run_id, "config", updates)

    def set_progress(self, run_id: str, progress: Mapping[str, Any]) -> None:
        with self._write() as conn:
            conn.execute(
                "UPDATE runs SET progress=? WHERE id=?", (json.dumps(dict(progress)), run_id)
            )

    def update_summary(self, run_id: str, updates: Mapping[str, Any]) -> None:
        """Merge ``updates`` into the run's summary (final results, reports, flags)."""
        self._merge_json(run_id, "summary", updates)

    def _merge_json(self, run_id: str, column: str, updates: Mapping[str, Any]) -> None:
        if column not in ("config", "summary"):
            raise ValueError(f"column must be config or summary; got {column!r}")
        with self._write() as conn:
            row = conn.execute(f"SELECT {column} FROM runs WHERE id=?", (run_id,)).fetchone()
            if row is None:
                raise KeyError(f"no run with id {run_id!r}")
            merged = {**json.loads(row[column]), **updates}
            conn.execute(
                f"UPDATE runs SET {column}=? WHERE id=?",
                (json.dumps(merged, sort_keys=column == "config", default=_json_default), run_id),
            )

    def request_stop(self, run_id: str) -> None:
        with self._write() as conn:
            conn.execute("UPDATE runs SET stop_requested=1 WHERE id=?", (run_id,))

    def stop_requested(self, run_id: str) -> bool:
        row = self._conn().execute(
            "SELECT stop_requested FROM runs WHERE id=?", (run_id,)
        ).fetchone()
        return bool(row and row[0])

    def delete_run(self, run_id: str) -> None:
        """Delete a finished run, its metrics and its artifacts. Active runs are refused."""
        run = self.get_run(run_id)
        if run.active:
            raise ValueError(f"run {run_id} is {run.status}; stop it before deleting it")
        with self._write() as conn:
            conn.execute("DELETE FROM metrics WHERE run_id=?", (run_id,))
            conn.execute("DELETE FROM runs WHERE id=?", (run_id,))
        shutil.rmtree(self.artifacts_dir(run_id), ignore_errors=True)

    def artifacts_dir(self, run_id: str) -> Path:
        return self.home / ARTIFACTS_DIRNAME / run_id

    # -- metrics -----------------------------------------------------------------------

    def log_metrics(
        self, run_id: str, step: int, values: Mapping[str, float | None], ts: float | None = None
    ) -> None:
        """Append one point per metric name at ``step``, in one transaction."""
        self.log_metric_rows(run_id, [(step, values)], ts=ts)

    def log_metric_rows(
        self,
        run_id: str,
        rows: Iterable[tuple[int, Mapping[str, float | None]]],
        ts: float | None = None,
    ) -> None:
        now = time.time() if ts is None else ts
        params = [
            (run_id, int(step), now, name, None if value is None else float(value))
            for step, values in rows
            for name, value in values.items()
        ]
        if not params:
            return
        with self._write() as conn:
            conn.executemany(
                "INSERT INTO metrics (run_id, step, ts, name, value) VALUES (?, ?, ?, ?, ?)",
                params,
            )

    def metric_series(
        self, run_id: str, names: Iterable[str] | None = None, since_step: int | None = None
    ) -> dict[str, list[tuple[int, float | None]]]:
        """Series by metric name: ``{name: [(step, value), ...]}`` ordered by step."""
        sql = "SELECT step, name, value FROM metrics WHERE run_id=?"
        params: list[Any] = [run_id]
        if names is not None:
            names = list(names)
            sql += f" AND name IN ({','.join('?' * len(names))})"
            params.extend(names)
        if since_step is not None:
            sql += " AND step > ?"
            params.append(since_step)
        sql += " ORDER BY step, rowid"
        out: dict[str, list[tuple[int, float | None]]] = {}
        for row in self._conn().execute(sql, params):
            out.setdefault(row["name"], []).append((row["step"], row["value"]))
        return out

    def metric_rows(self, run_id: str) -> list[dict[str, Any]]:
        """The run's metrics as one dict per step (wide form), ordered by step."""
        wide: dict[int, dict[str, Any]] = {}
        for name, points in self.metric_series(run_id).items():
            for step, value in points:
                wide.setdefault(step, {"step": step})[name] = value
        return [wide[s] for s in sorted(wide)]

    def count_metrics(self, run_id: str) -> int:
        return self._conn().execute(
            "SELECT COUNT(*) FROM metrics WHERE run_id=?", (run_id,)
        ).fetchone()[0]


def _set_wal(conn: sqlite3.Connection) -> None:
    """Switch to WAL; retried (bounded) because the switch does not wait on the busy timeout."""
    for attempt in range(WAL_RETRIES):
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == WAL_RETRIES - 1:
                raise
            time.sleep(WAL_RETRY_S)


def _json_default(value: Any) -> Any:
    # numpy scalars and arrays arrive from metric code; keep the registry free of numpy.
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    return str(value)
