"""Runs queued fine-tune jobs in worker processes, `slots` at a time, and tells watchers what happens.

Each job runs in a `python -m services.trainer.worker` process (torch state, memory and a crash stay
out of the service), one job at a time; a worker whose job succeeded is kept warm for the next
(services.trainer.workers), any other ends with its job. The runner reads the worker's JSON events,
writes every state change and step to the JobStore before telling watchers, and records the adapter
when the job succeeds. Cancel sends SIGUSR1 (the worker stops within one micro-batch) and SIGKILL if
it has not stopped after `cancel_grace_seconds`; service shutdown sends SIGTERM (checkpoint, then
exit) and marks the job INTERRUPTED.

This module imports neither grpc nor torch.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import structlog

from services.trainer.jobs import (
    CANCELLED,
    FAILED,
    INTERRUPTED,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    TERMINAL,
    Job,
    JobStore,
)
from services.trainer.workers import WorkerPool

log = structlog.get_logger("archloop.trainer")
STDERR_TAIL_BYTES = 4000


@dataclass(frozen=True)
class StepUpdate:
    step: int
    total_steps: int
    epoch: int
    loss: float
    learning_rate: float
    tokens_per_second: float
    eta_seconds: float


@dataclass
class _Running:
    process: asyncio.subprocess.Process
    stop_reason: str = ""  # "cancel" or "shutdown" once asked


class JobRunner:
    def __init__(
        self,
        store: JobStore,
        state_dir: Path,
        artifacts_dir: Path,
        slots: int = 1,
        checkpoint_every_steps: int = 50,
        worker_threads: int = 0,
        cancel_grace_seconds: float = 10.0,
        autocast: str = "auto",
        warm_workers: bool = True,
    ) -> None:
        self.store = store
        self.state_dir = state_dir
        self.artifacts_dir = artifacts_dir
        self.slots = slots
        self.checkpoint_every_steps = checkpoint_every_steps
        self.worker_threads = worker_threads
        self.cancel_grace_seconds = cancel_grace_seconds
        self.autocast = autocast
        self._queue: asyncio.Queue[tuple[str, bool]] = asyncio.Queue()
        self._running: dict[str, _Running] = {}
        self._watchers: dict[str, set[asyncio.Queue]] = {}
        self._tasks: list[asyncio.Task] = []
        self.workers = WorkerPool(
            state_dir, artifacts_dir, checkpoint_every_steps, worker_threads, autocast, warm_workers
        )

    def job_dir(self, job_id: str) -> Path:
        return self.state_dir / "jobs" / job_id.replace("/", "_")

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> list[Job]:
        """Recover after a restart and start the slots (and a warm worker); returns the jobs found
        interrupted."""
        interrupted, queued = self.store.recover()
        for job in queued:
            self._queue.put_nowait((job.job_id, False))
        self._tasks = [asyncio.create_task(self._slot(), name=f"trainer-slot-{i}") for i in range(self.slots)]
        self._tasks.append(asyncio.create_task(self.workers.start(), name="trainer-warm-worker"))
        return interrupted

    async def stop(self, grace_seconds: float = 30.0) -> None:
        for running in list(self._running.values()):
            running.stop_reason = running.stop_reason or "shutdown"
            with contextlib.suppress(ProcessLookupError):
                running.process.send_signal(signal.SIGTERM)
        if self._running:
            waits = [asyncio.ensure_future(r.process.wait()) for r in self._running.values()]
            await asyncio.wait(waits, timeout=grace_seconds)
            for running in list(self._running.values()):
                if running.process.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        running.process.kill()
        for _ in range(100):  # let the slots record what the workers reported (bounded)
            if not self._running:
                break
            await asyncio.sleep(0.05)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.workers.stop()

    # -- requests ----------------------------------------------------------------------------

    def enqueue(self, job: Job, resume: bool = False) -> None:
        self._queue.put_nowait((job.job_id, resume))

    async def cancel(self, job_id: str) -> Job:
        job = self.store.get(job_id)
        assert job is not None
        if job.state in TERMINAL:
            return job
        running = self._running.get(job_id)
        if running is None:  # queued: the slot skips it when it comes up
            job = self.store.update(job, state=CANCELLED, error="cancelled before it started")
            self._notify(job_id, job)
            return job
        running.stop_reason = "cancel"
        with contextlib.suppress(ProcessLookupError):
            running.process.send_signal(signal.SIGUSR1)
        try:
            await asyncio.wait_for(asyncio.shield(running.process.wait()), self.cancel_grace_seconds)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                running.process.kill()
            await running.process.wait()
        for _ in range(100):  # the slot records the terminal state right after the exit
            job = self.store.get(job_id)
            assert job is not None
            if job.state in TERMINAL:
                break
            await asyncio.sleep(0.05)
        return job

    async def watch(self, job_id: str) -> AsyncIterator[Job | StepUpdate]:
        """The job now, then every step and state change until a terminal state."""
        updates: asyncio.Queue = asyncio.Queue()
        self._watchers.setdefault(job_id, set()).add(updates)
        try:
            job = self.store.get(job_id)
            assert job is not None
            yield job
            while job.state not in TERMINAL:
                update = await updates.get()
                if isinstance(update, Job):
                    job = update
                yield update
        finally:
            self._watchers[job_id].discard(updates)

    def _notify(self, job_id: str, update: Job | StepUpdate) -> None:
        for updates in self._watchers.get(job_id, ()):
            updates.put_nowait(update)

    # -- running -----------------------------------------------------------------------------

    async def _slot(self) -> None:
        while True:
            job_id, resume = await self._queue.get()
            job = self.store.get(job_id)
            if job is None or job.state != QUEUED:
                continue
            try:
                await self._run(job, resume)
            except Exception:  # a bug here must not take the slot down with it
                log.exception("fine_tune_runner_failed", job_id=job_id)
                job = self.store.get(job_id)
                if job is not None and job.state not in TERMINAL:
                    self._notify(
                        job_id, self.store.update(job, state=FAILED, error="internal error in the runner")
                    )

    async def _run(self, job: Job, resume: bool) -> None:
        job_dir = self.job_dir(job.job_id)
        job_dir.mkdir(parents=True, exist_ok=True)
        (job_dir / "spec.json").write_text(job.spec.to_json())
        log_path = job_dir / "worker.log"
        process = await self.workers.take()
        await self.workers.hand(process, job_dir, resume)
        running = self._running[job.job_id] = _Running(process)
        job = self.store.update(job, state=RUNNING, error="")
        self._notify(job.job_id, job)
        log.info("fine_tune_started", job_id=job.job_id, adapter=job.spec.adapter_name, pid=process.pid,
                 resume=resume)  # fmt: skip
        loop = asyncio.get_running_loop()
        started = loop.time() - job.duration_seconds
        outcome: dict = {}
        try:
            outcome, job = await self._follow(process, job, started)
            if outcome.get("kind") != "done":
                await process.wait()  # a worker ends with a job that did not succeed (or it crashed)
        finally:
            self._running.pop(job.job_id, None)
            reusable = outcome.get("kind") == "done" and not running.stop_reason
            await self.workers.give_back(process, reusable)
        job = self._finish(job, outcome, running, process.returncode, log_path, loop.time() - started)
        self._notify(job.job_id, job)
        log.info("fine_tune_finished", job_id=job.job_id, state=job.state, steps=job.step,
                 duration_ms=round(job.duration_seconds * 1000), error=job.error or None)  # fmt: skip

    async def _follow(
        self, process: asyncio.subprocess.Process, job: Job, started: float
    ) -> tuple[dict, Job]:
        """The worker's events up to its job's outcome (or its end): (the outcome, {} if none; the job)."""
        loop = asyncio.get_running_loop()
        assert process.stdout is not None
        while line := await process.stdout.readline():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            job = self._apply(job, event, loop.time() - started)
            if event.get("kind") in ("done", "failed", "cancelled", "interrupted"):
                return event, job
        return {}, job

    def _apply(self, job: Job, event: dict, elapsed: float) -> Job:
        kind = event.get("kind")
        if kind == "started":
            return self.store.update(job, total_steps=event["total_steps"], step=event["resumed_from_step"])
        if kind == "step":
            job = self.store.update(
                job,
                step=event["step"],
                total_steps=event["total_steps"],
                loss=event["loss"],
                duration_seconds=elapsed,
            )
            self._notify(
                job.job_id,
                StepUpdate(
                    event["step"],
                    event["total_steps"],
                    event["epoch"],
                    event["loss"],
                    event["learning_rate"],
                    event["tokens_per_second"],
                    event["eta_seconds"],
                ),
            )
            return job
        if kind == "checkpoint":
            return self.store.update(job, last_checkpoint_step=event["step"])
        return job

    def _finish(
        self, job: Job, outcome: dict, running: _Running, code: int | None, log_path: Path, elapsed: float
    ) -> Job:
        kind = outcome.get("kind")
        if kind == "done":
            adapter = outcome["adapter"]
            self.store.add_adapter(adapter)
            return self.store.update(
                job, state=SUCCEEDED, loss=adapter["final_loss"], duration_seconds=elapsed
            )
        if kind == "failed":
            return self.store.update(job, state=FAILED, error=outcome["error"], duration_seconds=elapsed)
        if kind == "cancelled" or running.stop_reason == "cancel":
            return self.store.update(job, state=CANCELLED, error="cancelled", duration_seconds=elapsed)
        if kind == "interrupted" or running.stop_reason == "shutdown":
            return self.store.update(
                job,
                state=INTERRUPTED,
                error="the trainer stopped while the job ran",
                duration_seconds=elapsed,
            )
        tail = log_path.read_bytes()[-STDERR_TAIL_BYTES:].decode(errors="replace").strip().splitlines()[-3:]
        return self.store.update(
            job,
            state=FAILED,
            duration_seconds=elapsed,
            error=f"the worker exited with status {code}: " + " | ".join(tail),
        )
