"""The worker processes that run fine-tunes: one job at a time each, kept warm between jobs.

A worker (`python -m services.trainer.worker --serve`) imports torch, transformers and peft once, then
runs the jobs it is handed on stdin, one JSON line each ({"job_dir": …, "resume": …}), and reports on
stdout (services.trainer.worker). After a job that succeeded it waits for the next; after any other
outcome (failed, cancelled, interrupted, a crash) it exits, so a job that went wrong never shares a
process with the next. The import was ~6 s of every job on 2 CPU cores (docs/benchmarks.md), paid once
per service with a warm worker (and before the first job: `start()` spawns one).

With `warm=False` every job gets a fresh worker that exits after it (the behaviour before).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from pathlib import Path

import structlog

log = structlog.get_logger("archloop.trainer")
STOP_GRACE_SECONDS = 10.0


class WorkerPool:
    def __init__(
        self,
        state_dir: Path,
        artifacts_dir: Path,
        checkpoint_every_steps: int,
        threads: int,
        autocast: str,
        warm: bool = True,
    ) -> None:
        self.state_dir, self.artifacts_dir, self.warm = state_dir, artifacts_dir, warm
        self.arguments = [
            "--artifacts-dir", str(artifacts_dir), "--checkpoint-every-steps", str(checkpoint_every_steps),
            "--threads", str(threads), "--autocast", autocast,
        ]  # fmt: skip
        self._idle: list[asyncio.subprocess.Process] = []

    async def start(self) -> None:
        """With warm workers, one waits from the start, its imports done before the first job."""
        if self.warm and not self._idle:
            self._idle.append(await self._spawn())

    async def take(self) -> asyncio.subprocess.Process:
        """An idle worker that is still alive, or a new one."""
        while self._idle:
            process = self._idle.pop()
            if process.returncode is None:
                return process
        return await self._spawn()

    async def hand(self, process: asyncio.subprocess.Process, job_dir: Path, resume: bool) -> None:
        """Give the worker its job (it reports on its stdout)."""
        assert process.stdin is not None
        process.stdin.write((json.dumps({"job_dir": str(job_dir), "resume": resume}) + "\n").encode())
        await process.stdin.drain()

    async def give_back(self, process: asyncio.subprocess.Process, reusable: bool) -> None:
        """After a job: a warm pool keeps a worker whose job succeeded; any other is ended."""
        if self.warm and reusable and process.returncode is None:
            self._idle.append(process)
        else:
            await _end(process)

    async def stop(self) -> None:
        """An idle worker holds no job, so it is killed at once: one still importing torch (~6 s
        after the service starts) would not read the end of its stdin before the service's grace ran
        out."""
        idle, self._idle = self._idle, []
        for process in idle:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
        await asyncio.gather(*(process.wait() for process in idle))

    async def _spawn(self) -> asyncio.subprocess.Process:
        command = [sys.executable, "-m", "services.trainer.worker", "--serve", *self.arguments]
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with open(self.state_dir / "workers.log", "ab") as log_file:  # until a job's log takes over
            process = await asyncio.create_subprocess_exec(
                *command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=log_file,
                cwd=os.getcwd(),
            )  # fmt: skip
        log.info("trainer_worker_started", pid=process.pid, warm=self.warm)
        return process


async def _end(process: asyncio.subprocess.Process) -> None:
    """Close its stdin (a serving worker then exits); kill it if it has not after a grace period."""
    if process.stdin is not None and not process.stdin.is_closing():
        process.stdin.close()
    try:
        await asyncio.wait_for(process.wait(), STOP_GRACE_SECONDS)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
