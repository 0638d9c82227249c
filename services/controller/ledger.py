"""The controller's durable ledger (SQLite, WAL, synchronous=FULL): experiments, cycles, every candidate
with every stage, and the event outbox.

Every step of the loop is a transaction here before the next step starts, so a restart resumes from the
ledger alone: a candidate row exists from the moment it was generated; its evaluation, novelty figures
and decision are columns filled in order; a cycle row records its phase, its fine-tune job id (set
before the job is started, and the trainer is idempotent by job id) and the adapter it produced.
Events are rows of the same transactions (an outbox): a publisher sends unpublished rows to NATS in
sequence order and marks them, so a NATS outage delays events but never loses them.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from archloop.v1 import events_pb2

SCHEMA = """
CREATE TABLE IF NOT EXISTS experiments (
    experiment_id TEXT PRIMARY KEY,
    config_json TEXT NOT NULL,
    config_sha256 TEXT NOT NULL,
    state TEXT NOT NULL,
    current_cycle INTEGER NOT NULL DEFAULT 0,
    current_phase TEXT NOT NULL DEFAULT '',
    error TEXT NOT NULL DEFAULT '',
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    finished_ms INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS cycles (
    experiment_id TEXT NOT NULL,
    cycle INTEGER NOT NULL,
    phase TEXT NOT NULL,
    adapter_name TEXT NOT NULL DEFAULT '',
    adapter_path TEXT NOT NULL DEFAULT '',
    adapter_sha256 TEXT NOT NULL DEFAULT '',
    temperature REAL NOT NULL DEFAULT 0,
    corpus_size_start INTEGER NOT NULL DEFAULT 0,
    fine_tune_job_id TEXT NOT NULL DEFAULT '',
    fine_tune_adapter_name TEXT NOT NULL DEFAULT '',
    fine_tune_adapter_path TEXT NOT NULL DEFAULT '',
    fine_tune_adapter_sha256 TEXT NOT NULL DEFAULT '',
    fine_tune_loss REAL,
    fine_tune_examples INTEGER NOT NULL DEFAULT 0,
    fine_tune_skipped INTEGER NOT NULL DEFAULT 0,
    started_ms INTEGER NOT NULL,
    phase_ms TEXT NOT NULL DEFAULT '{}',
    completed_ms INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (experiment_id, cycle)
);
CREATE TABLE IF NOT EXISTS candidates (
    candidate_id TEXT PRIMARY KEY,
    experiment_id TEXT NOT NULL,
    cycle INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    code TEXT NOT NULL,
    generation_json TEXT NOT NULL,
    generation_error TEXT NOT NULL DEFAULT '',
    mode TEXT NOT NULL DEFAULT '',
    factor TEXT NOT NULL DEFAULT '',
    adapter_name TEXT NOT NULL DEFAULT '',
    stage TEXT NOT NULL,
    eval_status TEXT NOT NULL DEFAULT '',
    valid INTEGER,
    accuracy REAL,
    param_count INTEGER,
    eval_seconds REAL,
    eval_replica TEXT NOT NULL DEFAULT '',
    eval_json TEXT NOT NULL DEFAULT '',
    eval_attempts INTEGER NOT NULL DEFAULT 0,
    nn_jaccard_train REAL,
    near_dup_text_train INTEGER,
    nearest_train TEXT NOT NULL DEFAULT '',
    nn_jaccard_gen REAL,
    near_dup_text_gen INTEGER,
    nearest_gen TEXT NOT NULL DEFAULT '',
    structural_jaccard_train REAL,
    rejection_count INTEGER,
    decision TEXT NOT NULL DEFAULT '',
    reason TEXT NOT NULL DEFAULT '',
    final_accuracy REAL,
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    repaired INTEGER NOT NULL DEFAULT 0,
    raw_eval_status TEXT NOT NULL DEFAULT '',
    UNIQUE (experiment_id, cycle, idx)
);
CREATE TABLE IF NOT EXISTS events (
    sequence INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL UNIQUE,
    experiment_id TEXT NOT NULL,
    cycle INTEGER NOT NULL,
    kind TEXT NOT NULL,
    payload BLOB NOT NULL,
    published INTEGER NOT NULL DEFAULT 0,
    created_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS events_unpublished ON events (published, sequence);
CREATE INDEX IF NOT EXISTS candidates_by_cycle ON candidates (experiment_id, cycle, idx);
"""

# repaired: a post-generation repair changed the program (the code column holds the repaired one);
# raw_eval_status: then, the status of the raw program the model wrote
ADDED_CANDIDATE_COLUMNS = {
    "repaired": "INTEGER NOT NULL DEFAULT 0",
    "raw_eval_status": "TEXT NOT NULL DEFAULT ''",
}


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class CycleRow:
    experiment_id: str
    cycle: int
    phase: str
    adapter_name: str
    adapter_path: str
    adapter_sha256: str
    temperature: float
    corpus_size_start: int
    fine_tune_job_id: str
    fine_tune_adapter_name: str
    fine_tune_adapter_path: str
    fine_tune_adapter_sha256: str
    fine_tune_loss: float | None
    fine_tune_examples: int
    fine_tune_skipped: int
    started_ms: int
    phase_ms: str
    completed_ms: int


class Ledger:
    def __init__(self, path: Path | str) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._lock = threading.RLock()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)
        self._add_missing_columns()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- plumbing -------------------------------------------------------------------------------
    def _transaction(self) -> _Transaction:
        return _Transaction(self)

    def _query(self, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    # -- experiments ----------------------------------------------------------------------------
    def create_experiment(self, experiment_id: str, config_json: str, config_sha256: str) -> bool:
        """False when the id exists (the caller compares configs)."""
        with self._transaction() as db:
            if db.execute("SELECT 1 FROM experiments WHERE experiment_id=?", (experiment_id,)).fetchone():
                return False
            t = now_ms()
            db.execute(
                "INSERT INTO experiments"
                " (experiment_id, config_json, config_sha256, state, created_ms, updated_ms)"
                " VALUES (?, ?, ?, 'PENDING', ?, ?)",
                (experiment_id, config_json, config_sha256, t, t),
            )
            return True

    def experiment(self, experiment_id: str) -> sqlite3.Row | None:
        rows = self._query("SELECT * FROM experiments WHERE experiment_id=?", (experiment_id,))
        return rows[0] if rows else None

    def experiments(self) -> list[sqlite3.Row]:
        return self._query("SELECT * FROM experiments ORDER BY created_ms, experiment_id")

    def set_experiment(
        self, experiment_id: str, event: events_pb2.Event | None = None, **fields: Any
    ) -> None:
        with self._transaction() as db:
            self._update(db, "experiments", "experiment_id=?", (experiment_id,), fields)
            if event is not None:
                self._add_event(db, event)

    @staticmethod
    def _update(db: sqlite3.Connection, table: str, where: str, key: tuple, fields: dict) -> None:
        if not fields:
            return
        if table in ("experiments", "candidates"):
            fields = {**fields, "updated_ms": now_ms()}
        columns = ", ".join(f"{name}=?" for name in fields)
        db.execute(f"UPDATE {table} SET {columns} WHERE {where}", (*fields.values(), *key))

    def counts(self, experiment_id: str) -> dict[str, int]:
        row = self._query(
            "SELECT COUNT(*) AS generated,"
            " SUM(stage IN ('evaluated', 'decided')) AS evaluated,"
            " SUM(valid = 1) AS valid,"
            " SUM(decision = 'admitted') AS admitted FROM candidates WHERE experiment_id=?",
            (experiment_id,),
        )[0]
        return {k: int(row[k] or 0) for k in ("generated", "evaluated", "valid", "admitted")}

    # -- cycles ---------------------------------------------------------------------------------
    def start_cycle(self, experiment_id: str, cycle: int, event: events_pb2.Event, **fields: Any) -> None:
        """Insert the cycle once (with its fields and event); a resumed cycle keeps its row, and the
        experiment points at it in its recorded phase."""
        with self._transaction() as db:
            if not db.execute(
                "SELECT 1 FROM cycles WHERE experiment_id=? AND cycle=?", (experiment_id, cycle)
            ).fetchone():
                db.execute(
                    "INSERT INTO cycles (experiment_id, cycle, phase, started_ms)"
                    " VALUES (?, ?, 'GENERATING', ?)",
                    (experiment_id, cycle, now_ms()),
                )
                self._update(db, "cycles", "experiment_id=? AND cycle=?", (experiment_id, cycle), fields)
                self._add_event(db, event)
            phase = db.execute(
                "SELECT phase FROM cycles WHERE experiment_id=? AND cycle=?", (experiment_id, cycle)
            ).fetchone()[0]
            self._update(
                db,
                "experiments",
                "experiment_id=?",
                (experiment_id,),
                {"current_cycle": cycle, "current_phase": phase},
            )

    def cycle(self, experiment_id: str, cycle: int) -> CycleRow | None:
        rows = self._query("SELECT * FROM cycles WHERE experiment_id=? AND cycle=?", (experiment_id, cycle))
        return CycleRow(**dict(rows[0])) if rows else None

    def cycles(self, experiment_id: str) -> list[CycleRow]:
        return [
            CycleRow(**dict(r))
            for r in self._query(
                "SELECT * FROM cycles WHERE experiment_id=? ORDER BY cycle", (experiment_id,)
            )
        ]

    def set_cycle(
        self, experiment_id: str, cycle: int, event: events_pb2.Event | None = None, **fields: Any
    ) -> None:
        """Update a cycle (a phase change also goes to the experiment row and stamps phase_ms)."""
        with self._transaction() as db:
            if "phase" in fields:
                stamps = json.loads(
                    db.execute(
                        "SELECT phase_ms FROM cycles WHERE experiment_id=? AND cycle=?",
                        (experiment_id, cycle),
                    ).fetchone()[0]
                )
                stamps.setdefault(fields["phase"], now_ms())
                fields["phase_ms"] = json.dumps(stamps, sort_keys=True)
                self._update(
                    db, "experiments", "experiment_id=?", (experiment_id,), {"current_phase": fields["phase"]}
                )
                if fields["phase"] == "COMPLETED":
                    fields["completed_ms"] = now_ms()
            self._update(db, "cycles", "experiment_id=? AND cycle=?", (experiment_id, cycle), fields)
            if event is not None:
                self._add_event(db, event)

    # -- candidates -----------------------------------------------------------------------------
    def _add_missing_columns(self) -> None:
        """Columns added after a ledger was first written (its rows get the defaults)."""
        have = {row[1] for row in self._db.execute("PRAGMA table_info(candidates)")}
        for name, declaration in ADDED_CANDIDATE_COLUMNS.items():
            if name not in have:
                self._db.execute(f"ALTER TABLE candidates ADD COLUMN {name} {declaration}")
        self._db.commit()

    def add_candidate(self, row: dict) -> bool:
        """Insert a generated candidate; False if its id is already there (a resumed stream)."""
        t = now_ms()
        with self._transaction() as db:
            if db.execute("SELECT 1 FROM candidates WHERE candidate_id=?", (row["candidate_id"],)).fetchone():
                return False
            row = {**row, "stage": "generated", "created_ms": t, "updated_ms": t}
            names = ", ".join(row)
            marks = ", ".join("?" for _ in row)
            db.execute(f"INSERT INTO candidates ({names}) VALUES ({marks})", tuple(row.values()))
            return True

    def set_candidate(self, candidate_id: str, **fields: Any) -> None:
        with self._transaction() as db:
            self._update(db, "candidates", "candidate_id=?", (candidate_id,), fields)

    def candidate(self, candidate_id: str) -> sqlite3.Row | None:
        rows = self._query("SELECT * FROM candidates WHERE candidate_id=?", (candidate_id,))
        return rows[0] if rows else None

    def candidates(self, experiment_id: str, cycle: int | None = None) -> list[sqlite3.Row]:
        if cycle is None:
            return self._query(
                "SELECT * FROM candidates WHERE experiment_id=? ORDER BY cycle, idx", (experiment_id,)
            )
        return self._query(
            "SELECT * FROM candidates WHERE experiment_id=? AND cycle=? ORDER BY idx", (experiment_id, cycle)
        )

    def admitted(self, experiment_id: str, before_cycle: int | None = None) -> list[sqlite3.Row]:
        sql = "SELECT * FROM candidates WHERE experiment_id=? AND decision='admitted'"
        args: tuple = (experiment_id,)
        if before_cycle is not None:
            sql += " AND cycle<=?"
            args += (before_cycle,)
        return self._query(sql + " ORDER BY cycle, idx", args)

    # -- events (outbox) ------------------------------------------------------------------------
    def add_event(self, event: events_pb2.Event) -> None:
        with self._transaction() as db:
            self._add_event(db, event)

    @staticmethod
    def _add_event(db: sqlite3.Connection, event: events_pb2.Event) -> None:
        """Store once by event_id; the sequence is assigned here."""
        if db.execute("SELECT 1 FROM events WHERE event_id=?", (event.event_id,)).fetchone():
            return
        sequence = db.execute("SELECT COALESCE(MAX(sequence), 0) + 1 FROM events").fetchone()[0]
        event.sequence = sequence
        if not event.HasField("occurred_at"):
            event.occurred_at.GetCurrentTime()
        db.execute(
            "INSERT INTO events (sequence, event_id, experiment_id, cycle, kind, payload, created_ms)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                sequence,
                event.event_id,
                event.experiment_id,
                event.cycle,
                event.WhichOneof("payload") or "",
                event.SerializeToString(),
                now_ms(),
            ),
        )

    def unpublished(self, limit: int = 100) -> list[events_pb2.Event]:
        rows = self._query("SELECT payload FROM events WHERE published=0 ORDER BY sequence LIMIT ?", (limit,))
        return [events_pb2.Event.FromString(r["payload"]) for r in rows]

    def mark_published(self, event_id: str) -> None:
        with self._transaction() as db:
            db.execute("UPDATE events SET published=1 WHERE event_id=?", (event_id,))

    def events(self, experiment_id: str, after_sequence: int = 0) -> list[events_pb2.Event]:
        rows = self._query(
            "SELECT payload FROM events WHERE experiment_id=? AND sequence>? ORDER BY sequence",
            (experiment_id, after_sequence),
        )
        return [events_pb2.Event.FromString(r["payload"]) for r in rows]


class _Transaction:
    """`with ledger._transaction() as db:` → BEGIN IMMEDIATE … COMMIT (ROLLBACK on error), under the lock."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    def __enter__(self) -> sqlite3.Connection:
        self.ledger._lock.acquire()
        self.ledger._db.execute("BEGIN IMMEDIATE")
        return self.ledger._db

    def __exit__(self, kind: type | None, *_: object) -> None:
        try:
            self.ledger._db.execute("COMMIT" if kind is None else "ROLLBACK")
        finally:
            self.ledger._lock.release()
