"""gRPC surface of the trainer: validate → JobStore / JobRunner → response.

StartFineTune checks everything it can before a job exists (fields, the corpus file and its
manifest, the base model reference, the adapter name), so a bad request never leaves a job behind.
Jobs then run in worker processes (services.trainer.runner).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import structlog

from archloop import basemodel, corpus
from archloop.defaults import nonzero_over
from archloop.errors import AlreadyExists, InvalidArgument, NotFound
from archloop.server import ServicerBase
from archloop.v1 import common_pb2, trainer_pb2, trainer_pb2_grpc
from services.trainer.jobs import QUEUED, RESTARTABLE, TERMINAL, Job, JobStore
from services.trainer.runner import JobRunner, StepUpdate
from services.trainer.settings import TrainerSettings
from services.trainer.spec import FineTuneSpec, LoraConfig, Schedule

log = structlog.get_logger("archloop.trainer")

_INIT = {
    trainer_pb2.ADAPTER_INIT_UNSPECIFIED: "fresh",
    trainer_pb2.ADAPTER_INIT_FRESH: "fresh",
    trainer_pb2.ADAPTER_INIT_CONTINUE: "continue",
}


def lora_from_proto(request: trainer_pb2.StartFineTuneRequest) -> LoraConfig:
    """Absent → the paper's settings; present → taken as given (rank 0 is an error), except a dropout
    that is not set: the default (a set dropout of 0 is 0)."""
    if not request.HasField("lora"):
        return LoraConfig()
    given = request.lora
    dropout = given.dropout if given.HasField("dropout") else LoraConfig().dropout
    return LoraConfig(given.rank, given.alpha, dropout, tuple(given.target_modules))


def lora_to_proto(lora: dict) -> common_pb2.LoraSettings:
    return common_pb2.LoraSettings(
        rank=lora["rank"], alpha=lora["alpha"], dropout=lora["dropout"], target_modules=lora["target_modules"]
    )


def schedule_to_proto(schedule: dict) -> common_pb2.TrainingSchedule:
    return common_pb2.TrainingSchedule(**schedule)


def _corpus_file(path: str) -> Path:
    if not path:
        raise InvalidArgument("corpus.path", "must name a JSONL file of chat examples (or a corpus folder)")
    file = Path(path)
    if file.is_dir():
        file = file / "examples.jsonl"
    if not file.is_file():
        raise InvalidArgument("corpus.path", f"{file} does not exist")
    with open(file, encoding="utf-8", errors="replace") as handle:
        if not any(line.strip() for line in handle):
            raise InvalidArgument("corpus.path", f"{file} holds no examples")
    return file


def _manifest_sha256(file: Path, expected: str) -> str:
    """The corpus snapshot's identity: its manifest's sha256 (or the file's own, without a manifest)."""
    manifest = corpus.manifest_path(file.parent)
    actual = hashlib.sha256((manifest if manifest.exists() else file).read_bytes()).hexdigest()
    if expected and expected != actual:
        raise InvalidArgument("corpus.manifest_sha256", f"is {actual[:12]}… on disk, not {expected[:12]}…")
    return actual


def job_to_proto(job: Job, adapter: dict | None = None) -> trainer_pb2.FineTuneJob:
    out = trainer_pb2.FineTuneJob(
        job_id=job.job_id,
        experiment_id=job.spec.experiment_id,
        cycle=job.spec.cycle,
        state=trainer_pb2.FineTuneState.Value(f"FINE_TUNE_STATE_{job.state}"),
        adapter_name=job.spec.adapter_name,
        step=job.step,
        total_steps=job.total_steps,
        loss=job.loss,
        duration_seconds=job.duration_seconds,
        error=job.error,
        created_unix_ms=job.created_unix_ms,
        updated_unix_ms=job.updated_unix_ms,
        last_checkpoint_step=job.last_checkpoint_step,
    )
    if adapter is not None:
        out.adapter.CopyFrom(
            common_pb2.AdapterRef(
                name=adapter["name"], path=adapter["path"], weights_sha256=adapter["weights_sha256"]
            )
        )
    return out


def adapter_to_proto(a: dict) -> trainer_pb2.Adapter:
    return trainer_pb2.Adapter(
        name=a["name"],
        path=a["path"],
        weights_sha256=a["weights_sha256"],
        base_model=a["base_model"],
        base_model_sha256=a["base_model_sha256"],
        corpus_manifest_sha256=a["corpus_manifest_sha256"],
        lora=lora_to_proto(a["lora"]),
        schedule=schedule_to_proto(a["schedule"]),
        final_loss=a["final_loss"],
        duration_seconds=a["duration_seconds"],
        job_id=a["job_id"],
        created_unix_ms=a["created_unix_ms"],
    )


class TrainerServicer(ServicerBase, trainer_pb2_grpc.TrainerServiceServicer):
    service_name = trainer_pb2.DESCRIPTOR.services_by_name["TrainerService"].full_name
    add_to_server = staticmethod(trainer_pb2_grpc.add_TrainerServiceServicer_to_server)

    def __init__(self, settings: TrainerSettings) -> None:
        self.settings = settings
        self.store: JobStore | None = None
        self.runner: JobRunner | None = None

    async def start(self) -> None:
        state_dir = Path(self.settings.state_dir)
        self.store = JobStore(state_dir / "trainer.sqlite3")
        self.runner = JobRunner(
            self.store,
            state_dir,
            Path(self.settings.artifacts_dir).resolve(),
            self.settings.slots,
            self.settings.checkpoint_every_steps,
            self.settings.worker_threads,
            self.settings.cancel_grace_seconds,
            self.settings.autocast,
            self.settings.warm_workers,
        )
        interrupted = self.runner.start()
        log.info("trainer_ready", jobs=len(self.store.jobs()), interrupted=[j.job_id for j in interrupted])

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.stop(self.settings.grace_period_seconds)
        if self.store is not None:
            self.store.close()

    @property
    def _store(self) -> JobStore:
        assert self.store is not None, "RPCs are served only after start()"
        return self.store

    @property
    def _runner(self) -> JobRunner:
        assert self.runner is not None, "RPCs are served only after start()"
        return self.runner

    def _job(self, job_id: str) -> Job:
        if not job_id:
            raise InvalidArgument("job_id", "must not be empty")
        job = self._store.get(job_id)
        if job is None:
            raise NotFound(f"no fine-tune job {job_id!r}")
        return job

    def _job_proto(self, job: Job) -> trainer_pb2.FineTuneJob:
        adapter = self._store.adapter(job.spec.adapter_name)
        return job_to_proto(job, adapter if adapter and adapter["job_id"] == job.job_id else None)

    def _spec(self, request: trainer_pb2.StartFineTuneRequest) -> FineTuneSpec:
        schedule = request.schedule
        for name in (
            "epochs",
            "learning_rate",
            "batch_size",
            "gradient_accumulation_steps",
            "warmup_steps",
            "weight_decay",
            "max_grad_norm",
            "max_seq_len_tokens",
        ):
            if getattr(schedule, name) < 0:
                raise InvalidArgument(f"schedule.{name}", f"{getattr(schedule, name)} must not be negative")
        init = _INIT.get(request.init)
        if init is None:
            raise InvalidArgument("init", f"{request.init} is not an AdapterInit value")
        init_path = request.init_adapter.path
        if init == "continue" and not init_path and request.init_adapter.name:
            previous = self._store.adapter(request.init_adapter.name)
            if previous is None:
                raise InvalidArgument("init_adapter.name", f"no adapter {request.init_adapter.name!r}")
            init_path = previous["path"]
        spec = FineTuneSpec(
            job_id=request.job_id,
            adapter_name=request.adapter_name,
            corpus_path=request.corpus.path,
            experiment_id=request.experiment_id,
            cycle=request.cycle,
            base_model=request.base_model,
            lora=lora_from_proto(request),
            schedule=nonzero_over(Schedule(), schedule),
            seed=request.seed,
            init=init,
            init_adapter_path=init_path,
        )
        spec.validate()
        file = _corpus_file(spec.corpus_path)
        try:
            basemodel.resolve_base_model(spec.base_model)
        except basemodel.BaseModelNotFound as exc:
            raise InvalidArgument("base_model", str(exc)) from None
        if init == "continue" and not (Path(init_path) / "adapter_config.json").exists():
            raise InvalidArgument("init_adapter.path", f"{init_path} holds no adapter_config.json")
        return dataclasses.replace(
            spec,
            corpus_path=str(file.resolve()),
            corpus_manifest_sha256=_manifest_sha256(file, request.corpus.manifest_sha256),
        )

    async def StartFineTune(self, request, context):
        spec = self._spec(request)
        existing = self._store.get(spec.job_id)
        if existing is not None:
            if existing.spec != spec:
                raise AlreadyExists(f"job {spec.job_id!r} exists with a different request")
            if request.resume and existing.state in RESTARTABLE:
                job = self._store.update(existing, state=QUEUED, error="")
                self._runner.enqueue(job, resume=True)
                return trainer_pb2.StartFineTuneResponse(job=self._job_proto(job), created=False)
            return trainer_pb2.StartFineTuneResponse(job=self._job_proto(existing), created=False)
        owner = self._store.adapter_owner(spec.adapter_name)
        if owner is not None:
            raise AlreadyExists(f"adapter name {spec.adapter_name!r} belongs to job {owner!r}")
        job = self._store.insert(spec)
        self._runner.enqueue(job)
        log.info("fine_tune_queued", job_id=job.job_id, adapter=spec.adapter_name, corpus=spec.corpus_path)
        return trainer_pb2.StartFineTuneResponse(job=self._job_proto(job), created=True)

    async def WatchFineTune(self, request, context) -> AsyncIterator:
        job = self._job(request.job_id)
        async for update in self._runner.watch(job.job_id):
            if isinstance(update, StepUpdate):
                yield trainer_pb2.WatchFineTuneResponse(step=trainer_pb2.FineTuneStep(**update.__dict__))
            else:
                yield trainer_pb2.WatchFineTuneResponse(job=self._job_proto(update))
                if update.state in TERMINAL:
                    return

    async def GetFineTune(self, request, context):
        return trainer_pb2.GetFineTuneResponse(job=self._job_proto(self._job(request.job_id)))

    async def CancelFineTune(self, request, context):
        job = await self._runner.cancel(self._job(request.job_id).job_id)
        return trainer_pb2.CancelFineTuneResponse(job=self._job_proto(job))

    async def ListFineTunes(self, request, context):
        return trainer_pb2.ListFineTunesResponse(
            jobs=[self._job_proto(j) for j in self._store.jobs(request.experiment_id)]
        )

    async def ListAdapters(self, request, context):
        return trainer_pb2.ListAdaptersResponse(
            adapters=[adapter_to_proto(a) for a in self._store.adapters(request.experiment_id)]
        )

    async def GetAdapter(self, request, context):
        if not request.name:
            raise InvalidArgument("name", "must not be empty")
        adapter = self._store.adapter(request.name)
        if adapter is None:
            raise NotFound(f"no adapter {request.name!r}")
        return trainer_pb2.GetAdapterResponse(adapter=adapter_to_proto(adapter))
