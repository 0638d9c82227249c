"""The progress watchdog: a candidate that hangs ends at its stage's deadline, not at the time limit.

The sandboxed child reports each step in progress.jsonl (runner._Progress): `instantiate` (timed from
the fork, so module-level code counts), `forward`, `setup` (train_setup), `learn` (training, with
`images_seen` after finished batches, at most every 0.5 s) and `evaluate` (the accuracy pass after each
epoch, a record at most every 0.5 s of its batches). The service feeds every record to
`Watchdog.observe` and asks `Watchdog.check` several times a second; the first `Stop` it returns ends
the candidate:

- STAGE_TIMEOUT: instantiate, forward or setup still running after its own deadline;
- NO_PROGRESS: no training batch finished within the first-batch deadline; or, later, no new record
  (training or the accuracy pass) within the batch deadline (a program that stalls after its first
  batches, or in its accuracy pass);
- TOO_SLOW: the batches so far project the training past the time limit.

The time limit itself stays the backstop (TIMEOUT). Deadlines are settings of the evaluator
(ARCHLOOP_INSTANTIATE_DEADLINE_SECONDS, …); their defaults are measured on LEMUR programs
(bench/stage_durations.py, docs/benchmarks.md "Stage durations"). Pure: no torch, no grpc, no clock
of its own (callers pass `now`), so a table test drives it.
"""

from __future__ import annotations

from dataclasses import InitVar, dataclass, field

STAGE_TIMEOUT, NO_PROGRESS, TOO_SLOW = "STAGE_TIMEOUT", "NO_PROGRESS", "TOO_SLOW"


@dataclass(frozen=True)
class Deadlines:
    """Seconds each step may take; 0 turns a deadline off.

    Defaults from bench/stage_durations.py on 2,151 lemur-v3 programs (2 cores, digits): the 99.9th
    percentile was 0.06 s (instantiate), 0.06 s (forward), 0.005 s (train_setup) and 2.2 s (first batch;
    max 4.0 s); × 10, with a floor of 10 s, gives 10, 10, 10 and 22 s. Instantiate and forward get 20 s
    because on a GPU the child's CUDA context and first kernels land in them (not measured here); the
    first batch 30 s."""

    instantiate_seconds: float = 20.0
    forward_seconds: float = 20.0
    setup_seconds: float = 10.0
    first_batch_seconds: float = 30.0
    project_after_batches: int = 3
    """Batches after the first one before the training time is projected (0: never project)."""
    batch_seconds: float = 30.0
    """After the first batch: the longest silence (no new batch of training or of the accuracy pass) before
    NO_PROGRESS. A record comes at least every batch; a batch after the first took at most 4.0 s above."""


@dataclass(frozen=True)
class Stop:
    """Why the watchdog ended a candidate: the proto stage it was in, its status, one sentence."""

    stage: str
    status: str
    message: str
    seconds: float = 0.0
    """How long the step had run when it was ended."""


# step → (proto stage, what runs in it, the deadline's field)
_STEPS = {
    "instantiate": ("instantiate", "module code and Net(...)", "instantiate_seconds"),
    "forward": ("forward", "the forward pass", "forward_seconds"),
    "setup": ("train", "train_setup", "setup_seconds"),
}


@dataclass
class Watchdog:
    deadlines: Deadlines
    time_limit_seconds: float
    epochs: int
    started: InitVar[float]
    """When the child was forked (the instantiate step's start); the sandbox sets it again at the fork."""
    step: str = "instantiate"
    step_since: float = 0.0
    images_seen: int = 0
    images_total: int = 0
    first_batch: tuple[float, int] | None = None  # (child's elapsed seconds, images) at the first batch
    last_batch: tuple[float, int] | None = None
    batches_after_first: int = 0
    step_seconds: dict[str, float] = field(default_factory=dict)
    """How long each finished step took by the child's clock (its records' elapsed_seconds, exact where
    the service reads the records in batches); "first_batch" too. What bench/stage_durations.py reports."""
    step_elapsed: float = 0.0  # the child's elapsed seconds when the current step began
    moved_at: float = 0.0  # the service's clock at the last record that showed progress

    def __post_init__(self, started: float) -> None:
        self.step_since = started

    def observe(self, record: dict, now: float) -> None:
        step = record.get("step") or record.get("stage", self.step)
        elapsed = float(record.get("elapsed_seconds", 0.0))
        if step != self.step:
            self.step_seconds[self.step] = elapsed - self.step_elapsed
            self.step, self.step_since, self.step_elapsed = step, now, elapsed
            self.moved_at = now
        if step == "evaluate":
            self.moved_at = now
            return
        if step != "learn" or "images_seen" not in record:
            return
        seen = int(record["images_seen"])
        if seen > self.images_seen:
            self.moved_at = now
        self.images_total = int(record.get("images_total", 0))
        if seen > self.images_seen:
            if self.first_batch is None:
                self.first_batch = (elapsed, seen)
                self.step_seconds["first_batch"] = elapsed - self.step_elapsed
            else:
                self.batches_after_first += 1
            self.last_batch = (elapsed, seen)
        self.images_seen = max(self.images_seen, seen)

    def check(self, now: float) -> Stop | None:
        """A Stop when the candidate should end now, else None."""
        d = self.deadlines
        if self.step in _STEPS:
            stage, what, name = _STEPS[self.step]
            limit = getattr(d, name)
            if limit and now - self.step_since > limit:
                return Stop(stage, STAGE_TIMEOUT, f"{stage}: {what} did not return within its stage deadline "
                            f"of {limit:g} s", now - self.step_since)  # fmt: skip
            return None
        if self.step == "evaluate":
            return self._stalled("accuracy", "no batch of the accuracy pass finished", now)
        if self.step != "learn":
            return None
        if self.first_batch is None:
            if d.first_batch_seconds and now - self.step_since > d.first_batch_seconds:
                return Stop("train", NO_PROGRESS, f"train: no training batch finished within the first-batch "
                            f"deadline of {d.first_batch_seconds:g} s", now - self.step_since)  # fmt: skip
            return None
        return self._stalled(
            "train", f"no training batch finished after {self.images_seen:,} images", now
        ) or (self._projection())

    def _stalled(self, stage: str, what: str, now: float) -> Stop | None:
        limit = self.deadlines.batch_seconds
        if limit and now - self.moved_at > limit:
            return Stop(stage, NO_PROGRESS, f"{stage}: {what} within the batch deadline of {limit:g} s",
                        now - self.moved_at)  # fmt: skip
        return None

    def _projection(self) -> Stop | None:
        d = self.deadlines
        if not d.project_after_batches or self.batches_after_first < d.project_after_batches:
            return None
        assert self.first_batch is not None and self.last_batch is not None
        (t0, n0), (t1, n1) = self.first_batch, self.last_batch
        if t1 <= t0 or n1 <= n0 or not self.images_total:
            return None
        rate = (n1 - n0) / (t1 - t0)
        total = self.images_total * self.epochs
        projected = t1 + (total - n1) / rate
        if projected <= self.time_limit_seconds:
            return None
        return Stop(
            "train",
            TOO_SLOW,
            f"train: at {rate:.1f} images/s the training ({self.epochs} epoch(s) of {self.images_total:,} "
            f"images) would end at about {projected:.0f} s, over the time limit of "
            f"{self.time_limit_seconds:g} s (projected from {self.batches_after_first + 1} batches)",
        )
