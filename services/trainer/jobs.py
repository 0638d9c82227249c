"""Durable state of the trainer: fine-tune jobs and the adapters they produced (SQLite, WAL).

A job row is written before the job is queued and on every state change and checkpoint, so after a
crash the service knows each job's last state. On start, jobs that were RUNNING become INTERRUPTED
(restartable from their last checkpoint) and QUEUED jobs are queued again.

This module imports neither grpc nor torch.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

from services.trainer.spec import FineTuneSpec

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED, INTERRUPTED = (
    "QUEUED",
    "RUNNING",
    "SUCCEEDED",
    "FAILED",
    "CANCELLED",
    "INTERRUPTED",
)
TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELLED, INTERRUPTED})
RESTARTABLE = frozenset({FAILED, CANCELLED, INTERRUPTED})  # `resume` queues these again

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY,
    spec TEXT NOT NULL,
    state TEXT NOT NULL,
    step INTEGER NOT NULL DEFAULT 0,
    total_steps INTEGER NOT NULL DEFAULT 0,
    loss REAL NOT NULL DEFAULT 0,
    error TEXT NOT NULL DEFAULT '',
    last_checkpoint_step INTEGER NOT NULL DEFAULT 0,
    duration_seconds REAL NOT NULL DEFAULT 0,
    created_unix_ms INTEGER NOT NULL,
    updated_unix_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS adapters (
    name TEXT PRIMARY KEY,
    experiment_id TEXT NOT NULL,
    job_id TEXT NOT NULL,
    metadata TEXT NOT NULL
);
"""


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True)
class Job:
    spec: FineTuneSpec
    state: str
    created_unix_ms: int
    updated_unix_ms: int
    step: int = 0
    total_steps: int = 0
    loss: float = 0.0
    error: str = ""
    last_checkpoint_step: int = 0
    duration_seconds: float = 0.0

    @property
    def job_id(self) -> str:
        return self.spec.job_id


class JobStore:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode = wal")
        self._db.execute("PRAGMA synchronous = FULL")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _execute(self, sql: str, params: tuple = ()) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    @staticmethod
    def _job(row: tuple) -> Job:
        spec, state, step, total, loss, error, checkpoint, duration, created, updated = row
        return Job(
            FineTuneSpec.from_json(spec),
            state,
            created,
            updated,
            step,
            total,
            loss,
            error,
            checkpoint,
            duration,
        )

    _COLUMNS = (
        "spec, state, step, total_steps, loss, error, last_checkpoint_step, duration_seconds, "
        "created_unix_ms, updated_unix_ms"
    )

    def insert(self, spec: FineTuneSpec) -> Job:
        created = now_ms()
        self._execute(
            "INSERT INTO jobs (job_id, spec, state, created_unix_ms, updated_unix_ms) VALUES (?, ?, ?, ?, ?)",
            (spec.job_id, spec.to_json(), QUEUED, created, created),
        )
        return Job(spec, QUEUED, created, created)

    def get(self, job_id: str) -> Job | None:
        rows = self._execute(f"SELECT {self._COLUMNS} FROM jobs WHERE job_id = ?", (job_id,))
        return self._job(rows[0]) if rows else None

    def jobs(self, experiment_id: str = "") -> list[Job]:
        jobs = [
            self._job(r) for r in self._execute(f"SELECT {self._COLUMNS} FROM jobs ORDER BY created_unix_ms")
        ]
        return [j for j in jobs if not experiment_id or j.spec.experiment_id == experiment_id]

    def update(self, job: Job, **changes: object) -> Job:
        job = replace(job, **changes, updated_unix_ms=now_ms())  # type: ignore[arg-type]
        self._execute(
            "UPDATE jobs SET state = ?, step = ?, total_steps = ?, loss = ?, error = ?, "
            "last_checkpoint_step = ?, duration_seconds = ?, updated_unix_ms = ? WHERE job_id = ?",
            (
                job.state,
                job.step,
                job.total_steps,
                job.loss,
                job.error,
                job.last_checkpoint_step,
                job.duration_seconds,
                job.updated_unix_ms,
                job.job_id,
            ),
        )
        return job

    def adapter_owner(self, adapter_name: str) -> str | None:
        """The job that claims an adapter name (every job does from its start)."""
        for job in self.jobs():
            if job.spec.adapter_name == adapter_name:
                return job.job_id
        return None

    def recover(self) -> tuple[list[Job], list[Job]]:
        """After a restart: RUNNING → INTERRUPTED; returns (interrupted, still queued)."""
        interrupted = [
            self.update(j, state=INTERRUPTED, error="the trainer stopped while the job ran")
            for j in self.jobs()
            if j.state == RUNNING
        ]
        return interrupted, [j for j in self.jobs() if j.state == QUEUED]

    def add_adapter(self, metadata: dict) -> None:
        self._execute(
            "INSERT OR REPLACE INTO adapters (name, experiment_id, job_id, metadata) VALUES (?, ?, ?, ?)",
            (metadata["name"], metadata["experiment_id"], metadata["job_id"], json.dumps(metadata)),
        )

    def adapters(self, experiment_id: str = "") -> list[dict]:
        rows = self._execute("SELECT metadata FROM adapters ORDER BY name")
        found = [json.loads(r[0]) for r in rows]
        return [a for a in found if not experiment_id or a["experiment_id"] == experiment_id]

    def adapter(self, name: str) -> dict | None:
        rows = self._execute("SELECT metadata FROM adapters WHERE name = ?", (name,))
        return json.loads(rows[0][0]) if rows else None
