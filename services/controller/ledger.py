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
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from google.protobuf import json_format

from archloop.v1 import common_pb2, evaluator_pb2, events_pb2, novelty_pb2
from services.controller.archive import ArchiveEntry
from services.controller.selection import Candidate, Decision, Verdict
from services.controller.states import (
    PRECHECK_FROM_STORED,
    PRECHECK_STORED,
    ExperimentState,
    Phase,
    PrecheckState,
    Stage,
    short_name,
)

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
CREATE TABLE IF NOT EXISTS archive (
    experiment_id TEXT NOT NULL,
    entry_id TEXT NOT NULL,
    cycle INTEGER NOT NULL,
    code TEXT NOT NULL,
    accuracy REAL NOT NULL,
    param_count INTEGER NOT NULL,
    depth INTEGER NOT NULL,
    factor TEXT NOT NULL,
    fits INTEGER NOT NULL,
    added_ms INTEGER NOT NULL,
    PRIMARY KEY (experiment_id, entry_id)
);
CREATE INDEX IF NOT EXISTS events_unpublished ON events (published, sequence);
CREATE INDEX IF NOT EXISTS candidates_by_cycle ON candidates (experiment_id, cycle, idx);
"""

# repaired: a post-generation repair changed the program (the code column holds the repaired one);
# raw_eval_status: then, the status of the raw program the model wrote
ADDED_CANDIDATE_COLUMNS = {
    "repaired": "INTEGER NOT NULL DEFAULT 0",
    "raw_eval_status": "TEXT NOT NULL DEFAULT ''",
    "nearest_struct_train": "TEXT NOT NULL DEFAULT ''",
    "structural_jaccard_gen": "REAL",
    "nearest_struct_gen": "TEXT NOT NULL DEFAULT ''",
    "topology_sha256": "TEXT NOT NULL DEFAULT ''",
    "same_topology_as": "TEXT NOT NULL DEFAULT ''",
    "wiring_known_as": "TEXT NOT NULL DEFAULT ''",
    "precheck": "INTEGER NOT NULL DEFAULT 0",
    "flops": "INTEGER",
    "promoted_accuracy": "REAL",
    "promoted_status": "TEXT NOT NULL DEFAULT ''",
    "promoted_seconds": "REAL",
}
# audit_json: the cycle's proxy audit on its promoted candidates (services.controller.audit), once done
ADDED_CYCLE_COLUMNS = {"audit_json": "TEXT NOT NULL DEFAULT ''"}


def _novelty_fields(train: novelty_pb2.CollectionMatch, generation: novelty_pb2.CollectionMatch) -> dict:
    return dict(
        nn_jaccard_train=train.max_jaccard,
        near_dup_text_train=int(train.near_duplicate),
        nearest_train=train.nearest_entry_id,
        nn_jaccard_gen=generation.max_jaccard,
        near_dup_text_gen=int(generation.near_duplicate),
        nearest_gen=generation.nearest_entry_id,
        structural_jaccard_train=train.structural_max_jaccard,
        nearest_struct_train=train.structural_nearest_entry_id,
        structural_jaccard_gen=generation.structural_max_jaccard,
        nearest_struct_gen=generation.structural_nearest_entry_id,
    )


def now_ms() -> int:
    return int(time.time() * 1000)


def _optional_bool(value: int | None) -> bool | None:
    return None if value is None else bool(value)


@dataclass(frozen=True)
class CandidateRow:
    """One candidate as the ledger holds it; fields not yet reached are None ('' for text)."""

    candidate_id: str
    experiment_id: str
    cycle: int
    idx: int
    code: str
    generation_json: str
    generation_error: str
    mode: str
    factor: str
    adapter_name: str
    stage: Stage
    eval_status: str
    valid: bool | None
    accuracy: float | None
    param_count: int | None
    eval_seconds: float | None
    eval_replica: str
    eval_json: str
    eval_attempts: int
    nn_jaccard_train: float | None
    near_dup_text_train: bool | None
    nearest_train: str
    nn_jaccard_gen: float | None
    near_dup_text_gen: bool | None
    nearest_gen: str
    structural_jaccard_train: float | None
    rejection_count: int | None
    decision: Verdict | None
    reason: str
    final_accuracy: float | None
    created_ms: int
    updated_ms: int
    repaired: bool
    raw_eval_status: str
    nearest_struct_train: str
    structural_jaccard_gen: float | None
    nearest_struct_gen: str
    topology_sha256: str
    """Its wiring hash (archloop.archgraph; before issue 34, its forward layer sequence's sha256)."""
    same_topology_as: str
    wiring_known_as: str
    """The corpus program, admitted candidate or earlier valid candidate of its cycle with the same
    wiring hash, decided by the filter ('' = wiring-new, or not recorded: see topology_sha256)."""
    flops: int | None
    """FLOPs of one forward pass of one image (the evaluator's count; None before it was recorded)."""
    promoted_accuracy: float | None
    """Accuracy after promotion.epochs, for a candidate promoted in its cycle (None otherwise, or when
    the promoted run failed: promoted_status says how)."""
    promoted_status: str
    promoted_seconds: float | None
    precheck: int
    """The novelty pre-check's part as stored (states.PRECHECK_STORED); read it as `precheck_state`.
    Decided before training: valid stays None (its verdict is unknown)."""

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> CandidateRow:
        values = {name: row[name] for name in _CANDIDATE_FIELDS}
        values["stage"] = Stage(values["stage"])
        values["decision"] = Verdict(values["decision"]) if values["decision"] else None
        for name in ("valid", "near_dup_text_train", "near_dup_text_gen"):
            values[name] = _optional_bool(values[name])
        values["repaired"] = bool(values["repaired"])
        return cls(**values)

    def stored(self) -> dict[str, Any]:
        """The row as the ledger stores it (0/1 flags, '' for no decision): what reports write."""
        out: dict[str, Any] = {name: getattr(self, name) for name in _CANDIDATE_FIELDS}
        for name, value in out.items():
            if isinstance(value, bool):
                out[name] = int(value)
        out["decision"] = out["decision"] or ""
        return out

    @property
    def admitted(self) -> bool:
        return self.decision is Verdict.ADMITTED

    @property
    def precheck_state(self) -> PrecheckState:
        return PRECHECK_FROM_STORED[self.precheck]

    @property
    def decided_before_training(self) -> bool:
        """Rejected by the novelty pre-check and never trained."""
        return self.precheck_state is not PrecheckState.NONE and self.valid is None

    @property
    def trained_for_a_later_decision(self) -> bool:
        return self.precheck_state is PrecheckState.TRAINED_LATER and self.valid is not None

    def for_selection(self, on_promoted: bool = False) -> Candidate:
        """What selection reads of the row (with `on_promoted`, a promoted candidate's accuracy is the
        one after promotion.epochs)."""
        promoted = on_promoted and self.promoted_accuracy is not None
        return Candidate(
            candidate_id=self.candidate_id,
            index=self.idx,
            valid=bool(self.valid),
            decided_before_training=self.decided_before_training,
            eval_status=self.eval_status,
            accuracy=(self.promoted_accuracy if promoted else self.accuracy) or 0.0,
            near_duplicate_train=bool(self.near_dup_text_train),
            near_duplicate_generation=bool(self.near_dup_text_gen),
            nearest_train=self.nearest_train,
            nearest_generation=self.nearest_gen,
            jaccard_train=self.nn_jaccard_train or 0.0,
            jaccard_generation=self.nn_jaccard_gen or 0.0,
            structural_train=self.structural_jaccard_train or 0.0,
            structural_generation=self.structural_jaccard_gen or 0.0,
            nearest_structural_train=self.nearest_struct_train,
            nearest_structural_generation=self.nearest_struct_gen,
            wiring_known_as=self.wiring_known_as,
        )

    @property
    def structural_tokens(self) -> list[str]:
        """The architecture tokens the evaluator recorded (empty when it did not run or record them)."""
        if not self.eval_json:
            return []
        return list(json.loads(self.eval_json).get("structural_tokens", []))

    @property
    def wiring_hash(self) -> str:
        """The wiring hash the evaluator recorded ('' when it did not run or record it)."""
        return str(json.loads(self.eval_json).get("wiring_hash", "")) if self.eval_json else ""

    @property
    def raw_valid(self) -> bool:
        """Whether what the model itself wrote was valid (before any repair)."""
        return self.raw_eval_status == "OK" if self.repaired else bool(self.valid)


_CANDIDATE_FIELDS = tuple(f.name for f in fields(CandidateRow))


@dataclass(frozen=True)
class ExperimentRow:
    experiment_id: str
    config_json: str
    config_sha256: str
    state: ExperimentState
    current_cycle: int
    current_phase: Phase | None
    error: str
    created_ms: int
    updated_ms: int
    finished_ms: int

    @property
    def span_seconds(self) -> float:
        """From its creation to its end (or its last write, while it runs)."""
        return ((self.finished_ms or self.updated_ms) - self.created_ms) / 1000

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> ExperimentRow:
        values = dict(row)
        values["state"] = ExperimentState(values["state"])
        values["current_phase"] = Phase(values["current_phase"]) if values["current_phase"] else None
        return cls(**values)


@dataclass(frozen=True)
class CycleRow:
    experiment_id: str
    cycle: int
    phase: Phase
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
    audit_json: str

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> CycleRow:
        values = dict(row)
        values["phase"] = Phase(values["phase"])
        return cls(**values)


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
                " VALUES (?, ?, ?, ?, ?, ?)",
                (experiment_id, config_json, config_sha256, ExperimentState.PENDING, t, t),
            )
            return True

    def experiment(self, experiment_id: str) -> ExperimentRow | None:
        rows = self._query("SELECT * FROM experiments WHERE experiment_id=?", (experiment_id,))
        return ExperimentRow.from_row(rows[0]) if rows else None

    def experiment_of(self, experiment_id: str) -> ExperimentRow:
        """The experiment's row; LookupError when there is none (a caller that created it)."""
        row = self.experiment(experiment_id)
        if row is None:
            raise LookupError(f"no experiment {experiment_id!r} in the ledger")
        return row

    def experiments(self) -> list[ExperimentRow]:
        rows = self._query("SELECT * FROM experiments ORDER BY created_ms, experiment_id")
        return [ExperimentRow.from_row(r) for r in rows]

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
            " SUM(stage IN (?, ?)) AS evaluated,"
            " SUM(valid = 1) AS valid,"
            " SUM(decision = ?) AS admitted FROM candidates WHERE experiment_id=?",
            (Stage.EVALUATED, Stage.DECIDED, Verdict.ADMITTED, experiment_id),
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
                    "INSERT INTO cycles (experiment_id, cycle, phase, started_ms) VALUES (?, ?, ?, ?)",
                    (experiment_id, cycle, Phase.GENERATING, now_ms()),
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
        return CycleRow.from_row(rows[0]) if rows else None

    def cycle_of(self, experiment_id: str, cycle: int) -> CycleRow:
        """The cycle's row; LookupError when it was never started."""
        row = self.cycle(experiment_id, cycle)
        if row is None:
            raise LookupError(f"experiment {experiment_id!r} has no cycle {cycle}")
        return row

    def cycles(self, experiment_id: str) -> list[CycleRow]:
        return [
            CycleRow.from_row(r)
            for r in self._query(
                "SELECT * FROM cycles WHERE experiment_id=? ORDER BY cycle", (experiment_id,)
            )
        ]

    def adapter_before(self, experiment_id: str, cycle: int) -> common_pb2.AdapterRef:
        """The adapter of the last fine-tune before `cycle`: the one that generates it (none: the base
        model)."""
        for previous in reversed(self.cycles(experiment_id)):
            if previous.cycle < cycle and previous.fine_tune_adapter_name and not previous.fine_tune_skipped:
                return common_pb2.AdapterRef(
                    name=previous.fine_tune_adapter_name,
                    path=previous.fine_tune_adapter_path,
                    weights_sha256=previous.fine_tune_adapter_sha256,
                )
        return common_pb2.AdapterRef()

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
                if fields["phase"] == Phase.COMPLETED:
                    fields["completed_ms"] = now_ms()
            self._update(db, "cycles", "experiment_id=? AND cycle=?", (experiment_id, cycle), fields)
            if event is not None:
                self._add_event(db, event)

    # -- candidates -----------------------------------------------------------------------------
    def _add_missing_columns(self) -> None:
        """Columns added after a ledger was first written (its rows get the defaults)."""
        for table, columns in (("candidates", ADDED_CANDIDATE_COLUMNS), ("cycles", ADDED_CYCLE_COLUMNS)):
            have = {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}
            for name, declaration in columns.items():
                if name not in have:
                    self._db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {declaration}")
        self._db.commit()

    def record_generated(self, experiment_id: str, candidate: common_pb2.Candidate) -> bool:
        """Insert a candidate as the generator sent it; False if its id is already there (a resumed
        stream re-sends none, but a restart may)."""
        g = candidate.generation
        return self._insert_candidate(
            {
                "candidate_id": candidate.candidate_id,
                "experiment_id": experiment_id,
                "cycle": candidate.cycle,
                "idx": candidate.index,
                "code": candidate.code,
                "generation_json": json_format.MessageToJson(g, preserving_proto_field_name=True),
                "generation_error": candidate.generation_error,
                "mode": short_name(common_pb2.GenerationMode, g.mode).lower(),
                "factor": g.factor,
                "adapter_name": g.adapter_name,
                "repaired": int(g.repaired),
            }
        )

    def _insert_candidate(self, row: dict) -> bool:
        t = now_ms()
        with self._transaction() as db:
            if db.execute("SELECT 1 FROM candidates WHERE candidate_id=?", (row["candidate_id"],)).fetchone():
                return False
            row = {**row, "stage": Stage.GENERATED, "created_ms": t, "updated_ms": t}
            names = ", ".join(row)
            marks = ", ".join("?" for _ in row)
            db.execute(f"INSERT INTO candidates ({names}) VALUES ({marks})", tuple(row.values()))
            return True

    def record_evaluation(
        self, candidate_id: str, result: evaluator_pb2.EvaluationResult, raw_status: str = ""
    ) -> None:
        """The evaluator's result (raw_status: that of the model's own text, when it was repaired)."""
        status = short_name(evaluator_pb2.EvaluationStatus, result.status)
        self._set_candidate(
            candidate_id,
            stage=Stage.EVALUATED,
            raw_eval_status=raw_status,
            eval_status=status,
            valid=int(status == "OK"),
            accuracy=result.accuracy if status == "OK" else None,
            param_count=result.param_count,
            flops=result.flops or None,
            eval_seconds=result.total_duration_seconds,
            eval_replica=result.evaluator_replica,
            eval_json=json_format.MessageToJson(result, preserving_proto_field_name=True),
        )

    def record_precheck(
        self,
        candidate_id: str,
        screen: evaluator_pb2.EvaluationResult,
        train: novelty_pb2.CollectionMatch,
        generation: novelty_pb2.CollectionMatch | None,
        wiring_known_as: str = "",
    ) -> None:
        """Rejected before training: its static stages passed (`screen`), and its text is a near-duplicate
        of the corpus (`train`) or of an earlier candidate of the cycle that ended valid (`generation`);
        or (`wiring_known_as`) its forward-only run (`screen`) recorded the wiring of that corpus program
        or admitted candidate. Not valid, not invalid (never trained): `valid` stays NULL."""
        generation = generation or novelty_pb2.CollectionMatch()
        wiring = {"topology_sha256": screen.wiring_hash, "wiring_known_as": wiring_known_as}
        with self._transaction() as db:
            self._update(db, "candidates", "candidate_id=?", (candidate_id,), dict(
                stage=Stage.EVALUATED,
                precheck=PRECHECK_STORED[PrecheckState.DECIDED_BEFORE_TRAINING],
                eval_seconds=screen.total_duration_seconds,
                eval_replica=screen.evaluator_replica,
                eval_json=json_format.MessageToJson(screen, preserving_proto_field_name=True),
                **_novelty_fields(train, generation),
                **(wiring if wiring_known_as else {}),
            ))  # fmt: skip

    def record_trained_later(self, candidate_id: str) -> None:
        """Decided before training, then trained by the filter: a later candidate's decision depended
        on whether this one is valid (its evaluation is recorded next)."""
        self._set_candidate(candidate_id, precheck=PRECHECK_STORED[PrecheckState.TRAINED_LATER])

    def record_generation_error(self, candidate_id: str) -> None:
        """A candidate with no program to evaluate."""
        self._set_candidate(candidate_id, stage=Stage.EVALUATED, valid=0, eval_status="GENERATION_ERROR")

    def record_novelty(
        self, candidate_id: str, train: novelty_pb2.CollectionMatch, generation: novelty_pb2.CollectionMatch
    ) -> None:
        """Its nearest neighbour in the corpus (J_train) and among the cycle's earlier ones (J_gen), by
        text and by structure (J_struct: the structural channel's, 0 when neither side had tokens)."""
        self._set_candidate(candidate_id, **_novelty_fields(train, generation))

    def record_topology(self, candidate_id: str, sha256: str, same_as: str, known_as: str = "") -> None:
        """Its wiring hash (archloop.archgraph.wiring_hash), the earliest earlier valid candidate of the
        experiment with the same one ('' when none), and what makes it not wiring-new (`known_as`: a
        corpus program, an admitted candidate or an earlier valid candidate of its cycle; '' when none)."""
        self._set_candidate(
            candidate_id, topology_sha256=sha256, same_topology_as=same_as, wiring_known_as=known_as
        )

    def admitted_wiring(self, experiment_id: str, before_cycle: int) -> dict[str, str]:
        """{wiring hash: the first admitted candidate with it}, over the cycles before `before_cycle`."""
        return self._first_with_wiring(experiment_id, before_cycle, "decision=?", (Verdict.ADMITTED.value,))

    def first_topologies(self, experiment_id: str, before_cycle: int) -> dict[str, str]:
        """{wiring hash: the first valid candidate with it}, over the experiment's cycles before
        `before_cycle` (reads two columns, not the programs)."""
        return self._first_with_wiring(experiment_id, before_cycle, "valid=1", ())

    def _first_with_wiring(
        self, experiment_id: str, before_cycle: int, condition: str, values: tuple
    ) -> dict[str, str]:
        rows = self._query(
            "SELECT candidate_id, topology_sha256 FROM candidates WHERE experiment_id=? AND cycle<? "
            f"AND {condition} AND topology_sha256!='' ORDER BY cycle, idx",
            (experiment_id, before_cycle, *values),
        )
        first: dict[str, str] = {}
        for row in rows:
            first.setdefault(row["topology_sha256"], row["candidate_id"])
        return first

    def record_decision(self, candidate_id: str, decision: Decision) -> None:
        self._set_candidate(
            candidate_id,
            decision=decision.verdict,
            reason=decision.reason,
            rejection_count=decision.rejection_count,
        )

    def record_late_rejection(self, candidate_id: str, reason: str) -> None:
        """Selected, but the corpus had meanwhile admitted a near-duplicate of it (check-and-admit)."""
        self._set_candidate(candidate_id, decision=Verdict.REJECTED, reason=reason)

    def record_decided(self, candidate_id: str) -> None:
        """Its decision has reached the corpus collection: the candidate is done."""
        self._set_candidate(candidate_id, stage=Stage.DECIDED)

    def record_promotion(self, candidate_id: str, result: evaluator_pb2.EvaluationResult) -> None:
        """Its promoted run (promotion.epochs under the same protocol): the accuracy when it passed."""
        status = short_name(evaluator_pb2.EvaluationStatus, result.status)
        self._set_candidate(
            candidate_id,
            promoted_accuracy=result.accuracy if status == "OK" else None,
            promoted_status=status,
            promoted_seconds=result.total_duration_seconds,
        )

    def record_final_accuracy(self, candidate_id: str, accuracy: float) -> None:
        self._set_candidate(candidate_id, final_accuracy=accuracy)

    def _set_candidate(self, candidate_id: str, **fields: Any) -> None:
        with self._transaction() as db:
            self._update(db, "candidates", "candidate_id=?", (candidate_id,), fields)

    def candidate(self, candidate_id: str) -> CandidateRow | None:
        rows = self._query("SELECT * FROM candidates WHERE candidate_id=?", (candidate_id,))
        return CandidateRow.from_row(rows[0]) if rows else None

    def candidate_of(self, candidate_id: str) -> CandidateRow:
        """The candidate's row; KeyError if the ledger has none."""
        row = self.candidate(candidate_id)
        if row is None:
            raise KeyError(f"no candidate {candidate_id}")
        return row

    def candidates(self, experiment_id: str, cycle: int | None = None) -> list[CandidateRow]:
        if cycle is None:
            rows = self._query(
                "SELECT * FROM candidates WHERE experiment_id=? ORDER BY cycle, idx", (experiment_id,)
            )
        else:
            rows = self._query(
                "SELECT * FROM candidates WHERE experiment_id=? AND cycle=? ORDER BY idx",
                (experiment_id, cycle),
            )
        return [CandidateRow.from_row(r) for r in rows]

    def admitted(self, experiment_id: str, before_cycle: int | None = None) -> list[CandidateRow]:
        sql = "SELECT * FROM candidates WHERE experiment_id=? AND decision=?"
        args: tuple = (experiment_id, Verdict.ADMITTED)
        if before_cycle is not None:
            sql += " AND cycle<=?"
            args += (before_cycle,)
        return [CandidateRow.from_row(r) for r in self._query(sql + " ORDER BY cycle, idx", args)]

    # -- the archive of parents (services.controller.archive) -------------------------------------
    def add_to_archive(self, experiment_id: str, entries: list[ArchiveEntry]) -> int:
        """Enter programs once (an entry already there is kept as it was); how many were new."""
        t = now_ms()
        with self._transaction() as db:
            added = 0
            for e in entries:
                added += db.execute(
                    "INSERT OR IGNORE INTO archive (experiment_id, entry_id, cycle, code, accuracy,"
                    " param_count, depth, factor, fits, added_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (experiment_id, e.entry_id, e.cycle, e.code, e.accuracy, e.param_count, e.depth, e.factor,
                     int(e.fits), t),
                ).rowcount  # fmt: skip
            return added

    def archive(self, experiment_id: str, before_cycle: int | None = None) -> list[ArchiveEntry]:
        """The archive in entry order (the baseline first); with `before_cycle`, as that cycle began."""
        sql = "SELECT * FROM archive WHERE experiment_id=?"
        args: tuple = (experiment_id,)
        if before_cycle is not None:
            sql += " AND cycle<?"
            args += (before_cycle,)
        rows = self._query(sql + " ORDER BY cycle, entry_id", args)
        return [
            ArchiveEntry(r["entry_id"], r["cycle"], r["code"], r["accuracy"], r["param_count"], r["depth"],
                         r["factor"], bool(r["fits"]))
            for r in rows
        ]  # fmt: skip

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
