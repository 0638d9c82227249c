"""gRPC surface of the controller: experiments over the ledger, one ExperimentRunner task per running one.

On start the ledger is opened, the event publisher drains the outbox to NATS in the background, and
experiments the last process left RUNNING are resumed (a crash or kill -9 loses nothing: see loop.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import structlog
from google.protobuf import json_format

from archloop import basemodel, corpus
from archloop.clients import ChannelSecurity, aio_channel, backoff_delays
from archloop.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from archloop.paths import corpus_dir
from archloop.server import ServicerBase
from archloop.settings import SettingsError
from archloop.v1 import (
    controller_pb2,
    controller_pb2_grpc,
    generator_pb2,
    generator_pb2_grpc,
    novelty_pb2_grpc,
    trainer_pb2,
    trainer_pb2_grpc,
)
from services.controller import config as experiment_config
from services.controller.evaluators import EvaluatorPool
from services.controller.events import EventPublisher
from services.controller.ledger import CandidateRow, Ledger
from services.controller.loop import ExperimentRunner, LoopSettings
from services.controller.peers import Peers
from services.controller.settings import ControllerSettings
from services.controller.states import (
    EXPERIMENT_STATE_TO_PROTO,
    PHASE_TO_PROTO,
    TERMINAL,
    ExperimentState,
    Phase,
)

log = structlog.get_logger("archloop.controller")

EXPERIMENT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


class ControllerServicer(ServicerBase, controller_pb2_grpc.ControllerServiceServicer):
    service_name = controller_pb2.DESCRIPTOR.services_by_name["ControllerService"].full_name
    add_to_server = staticmethod(controller_pb2_grpc.add_ControllerServiceServicer_to_server)

    def __init__(self, settings: ControllerSettings) -> None:
        self.settings = settings
        self.events = EventPublisher(settings.nats_url) if settings.nats_url else None
        self.ledger: Ledger | None = None
        self.runners: dict[str, tuple[ExperimentRunner, asyncio.Task]] = {}
        self.notify = asyncio.Event()
        self._publisher: asyncio.Task | None = None
        self._channels: list = []
        self.evaluators: EvaluatorPool | None = None

    # -- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        state = Path(self.settings.state_dir)
        self.ledger = Ledger(state / "ledger.sqlite3")
        if self.events is not None:
            await self.events.connect()
            self._publisher = asyncio.create_task(self._publish_forever())
        novelty_security = ChannelSecurity(
            self.settings.novelty_tls_ca_file, self.settings.novelty_token_file
        )
        try:
            channels = [
                aio_channel(self.settings.generator_addr),
                aio_channel(self.settings.novelty_addr, security=novelty_security),
                aio_channel(self.settings.trainer_addr),
            ]
        except ValueError as exc:
            raise SettingsError(f"--novelty-tls-ca-file/--novelty-token-file: {exc}") from None
        self._channels = channels
        self.evaluators = EvaluatorPool(
            self.settings.evaluator_addr,
            refresh_seconds=self.settings.evaluator_refresh_seconds,
            limit=self.settings.evaluation_concurrency,
        )
        self.peers = Peers(
            generator_pb2_grpc.GeneratorServiceStub(channels[0]),
            self.evaluators,
            novelty_pb2_grpc.NoveltyServiceStub(channels[1]),
            trainer_pb2_grpc.TrainerServiceStub(channels[2]),
        )
        self.loop_settings = LoopSettings(
            work_dir=Path(self.settings.training_sets_dir or state / "experiments"),
            corpus_dir=Path(self.settings.corpus_dir) if self.settings.corpus_dir else corpus_dir(),
            retry_budget_seconds=self.settings.retry_budget_seconds,
            progress_deadline_seconds=self.settings.progress_deadline_seconds,
        )
        if self.settings.resume_on_start:
            for row in self.ledger.experiments():
                if row.state in (ExperimentState.RUNNING, ExperimentState.PENDING, ExperimentState.STOPPING):
                    if row.state is ExperimentState.STOPPING:
                        self.ledger.set_experiment(row.experiment_id, state=ExperimentState.STOPPED)
                        continue
                    log.info("experiment_resumed_on_start", experiment_id=row.experiment_id)
                    self._spawn(row.experiment_id)

    async def stop(self) -> None:
        for runner, _task in self.runners.values():
            runner.request_stop()
        tasks = [task for _runner, task in self.runners.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._publisher is not None:
            self._publisher.cancel()
            await asyncio.gather(self._publisher, return_exceptions=True)
        if self.events is not None:
            await self.events.close()
        for channel in self._channels:
            await channel.close()
        if self.evaluators is not None:
            await self.evaluators.close()
        if self.ledger is not None:
            self.ledger.close()

    async def _publish_forever(self) -> None:
        """The outbox: unpublished ledger events to NATS in order; an outage only delays them."""
        assert self.ledger is not None and self.events is not None
        delays = backoff_delays(0.5)
        while True:
            pending = self.ledger.unpublished()
            try:
                for event in pending:
                    await self.events.publish(event)
                    self.ledger.mark_published(event.event_id)
                delays = backoff_delays(0.5)
            except Exception as exc:
                delay = next(delays)
                log.warning("event_publish_delayed", error=str(exc), retry_s=delay)
                await asyncio.sleep(delay)
                continue
            if not pending:
                self.notify.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.notify.wait(), 1.0)

    def _spawn(self, experiment_id: str) -> None:
        assert self.ledger is not None
        config = experiment_config.from_json(self.ledger.experiment_of(experiment_id).config_json)
        runner = ExperimentRunner(
            experiment_id, config, self.ledger, self.peers, self.loop_settings, self.notify
        )
        task = asyncio.create_task(runner.run(), name=f"experiment-{experiment_id}")
        self.runners[experiment_id] = (runner, task)
        task.add_done_callback(lambda done: self._runner_ended(experiment_id, done))

    def _runner_ended(self, experiment_id: str, task: asyncio.Task) -> None:
        """A runner records its own end; one that died of a bug leaves RUNNING behind: mark it FAILED."""
        self.runners.pop(experiment_id, None)
        if task.cancelled() or task.exception() is None or self.ledger is None:
            return
        error = f"controller bug: {type(task.exception()).__name__}: {task.exception()}"
        log.error("experiment_runner_crashed", experiment_id=experiment_id, error=error)
        self.ledger.set_experiment(experiment_id, state=ExperimentState.FAILED, error=error)

    # -- RPCs -----------------------------------------------------------------------------------
    def _experiment(self, experiment_id: str) -> controller_pb2.Experiment:
        assert self.ledger is not None
        row = self.ledger.experiment(experiment_id)
        if row is None:
            raise NotFound(f"experiment {experiment_id!r} does not exist")
        counts = self.ledger.counts(experiment_id)
        cycles = self.ledger.cycles(experiment_id)
        corpus_size = 0
        if cycles:
            last = cycles[-1]
            admitted_now = sum(c.admitted for c in self.ledger.candidates(experiment_id, last.cycle))
            corpus_size = last.corpus_size_start + admitted_now
        return controller_pb2.Experiment(
            experiment_id=experiment_id,
            config=experiment_config.from_json(row.config_json),
            state=EXPERIMENT_STATE_TO_PROTO[row.state],
            current_cycle=row.current_cycle,
            current_phase=PHASE_TO_PROTO[row.current_phase]
            if row.current_phase
            else controller_pb2.CYCLE_PHASE_UNSPECIFIED,
            candidates_generated=counts["generated"],
            candidates_evaluated=counts["evaluated"],
            candidates_admitted=counts["admitted"],
            corpus_size=corpus_size,
            error=row.error,
            created_unix_ms=row.created_ms,
            updated_unix_ms=row.updated_ms,
            fine_tune=self._fine_tune_step(experiment_id),
        )

    def _fine_tune_step(self, experiment_id: str) -> trainer_pb2.FineTuneStep | None:
        running = self.runners.get(experiment_id)
        step = running[0].view.fine_tune_step if running is not None else None
        if step is None or self.ledger is None:
            return None
        return step if self.ledger.experiment_of(experiment_id).current_phase is Phase.FINE_TUNING else None

    async def StartExperiment(self, request, context) -> controller_pb2.StartExperimentResponse:
        assert self.ledger is not None
        if not EXPERIMENT_ID.match(request.experiment_id):
            raise InvalidArgument(
                "experiment_id", "must be 1-64 letters, digits, '-' or '_', starting with a letter or digit"
            )
        config = experiment_config.with_defaults(request.config)
        experiment_config.validate(config)
        examples = self.loop_settings.corpus_dir / "examples.jsonl"
        if not examples.is_file():
            raise FailedPrecondition(
                f"no corpus at {self.loop_settings.corpus_dir}: run `archloop corpus build`"
            )
        if config.architecture_novelty != controller_pb2.ARCHITECTURE_NOVELTY_OFF:
            try:  # never a silent J_struct of 0 against a corpus without graphs
                corpus.require_architectures(self.loop_settings.corpus_dir)
            except corpus.MissingArchitectures as exc:
                raise FailedPrecondition(str(exc)) from None
        edits = corpus.edits_dir(self.loop_settings.corpus_dir) / "edits.jsonl"
        if config.edit_pair_share > 0 and not edits.is_file():
            raise FailedPrecondition(
                f"edit_pair_share is {config.edit_pair_share} but there are no edit pairs at {edits.parent}: "
                "run `archloop corpus edits`"
            )
        try:
            basemodel.check_corpus_binding(config.base_model, self.loop_settings.corpus_dir)
        except basemodel.BaseModelNotFound as exc:
            raise InvalidArgument("config.base_model", str(exc)) from None
        except basemodel.CorpusMismatch as exc:
            raise FailedPrecondition(str(exc)) from None
        if experiment_config.uses_language_model(config.generation):
            await self._check_generator_model(config.base_model)
        created = self.ledger.create_experiment(
            request.experiment_id, experiment_config.to_json(config), experiment_config.config_sha256(config)
        )
        if not created:
            existing = self.ledger.experiment_of(request.experiment_id)
            if existing.config_sha256 != experiment_config.config_sha256(config):
                raise AlreadyExists(f"experiment {request.experiment_id!r} exists with another config")
        elif request.experiment_id not in self.runners:
            self._spawn(request.experiment_id)
        log.info("experiment_started", experiment_id=request.experiment_id, created=created)
        return controller_pb2.StartExperimentResponse(
            experiment=self._experiment(request.experiment_id), created=created
        )

    async def GetExperiment(self, request, context) -> controller_pb2.GetExperimentResponse:
        return controller_pb2.GetExperimentResponse(experiment=self._experiment(request.experiment_id))

    async def ListExperiments(self, request, context) -> controller_pb2.ListExperimentsResponse:
        assert self.ledger is not None
        return controller_pb2.ListExperimentsResponse(
            experiments=[self._experiment(row.experiment_id) for row in self.ledger.experiments()]
        )

    async def StopExperiment(self, request, context) -> controller_pb2.StopExperimentResponse:
        assert self.ledger is not None
        experiment = self._experiment(request.experiment_id)
        running = self.runners.get(request.experiment_id)
        if running is not None:
            running[0].request_stop()
            self.ledger.set_experiment(request.experiment_id, state=ExperimentState.STOPPING)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(running[1]), 30.0)
            experiment = self._experiment(request.experiment_id)
        elif experiment.state in (
            controller_pb2.EXPERIMENT_STATE_RUNNING,
            controller_pb2.EXPERIMENT_STATE_PENDING,
            controller_pb2.EXPERIMENT_STATE_STOPPING,
        ):  # no runner in this process (its runner died with a bug): record the stop
            self.ledger.set_experiment(request.experiment_id, state=ExperimentState.STOPPED)
            experiment = self._experiment(request.experiment_id)
        return controller_pb2.StopExperimentResponse(experiment=experiment)

    async def _check_generator_model(self, base_model: str) -> None:
        """A local generator must serve the experiment's base model: its adapters are trained on that
        model, and J_train is measured against that model's corpus. FAILED_PRECONDITION naming both
        when it does not (a generator that cannot be asked now is checked by the loop's first call)."""
        try:
            described = await self.peers.generator.DescribeBackend(
                generator_pb2.DescribeBackendRequest(), timeout=30
            )
        except grpc.aio.AioRpcError as exc:
            log.warning("generator_not_described", code=exc.code().name)
            return
        if described.backend != "local" or not described.model_sha256:
            return  # TGI serves a hub model by name; the replay backend has no model
        wanted = await asyncio.to_thread(
            lambda: basemodel.base_model_sha256(basemodel.resolve_base_model(base_model))
        )
        if wanted != described.model_sha256:
            raise FailedPrecondition(
                f"config.base_model is {base_model or 'the packaged tiny model'!r} (sha256 {wanted[:12]}…) "
                f"but the generator serves {described.model_id!r} (sha256 {described.model_sha256[:12]}…): "
                "start the generator with --model set to the experiment's base model"
            )

    async def ResumeExperiment(self, request, context) -> controller_pb2.ResumeExperimentResponse:
        experiment = self._experiment(request.experiment_id)
        if experiment.state == EXPERIMENT_STATE_TO_PROTO[ExperimentState.COMPLETED]:
            raise FailedPrecondition(f"experiment {request.experiment_id!r} is completed")
        if experiment_config.uses_language_model(experiment.config.generation):
            await self._check_generator_model(experiment.config.base_model)
        if request.experiment_id not in self.runners:
            self._spawn(request.experiment_id)
        return controller_pb2.ResumeExperimentResponse(experiment=self._experiment(request.experiment_id))

    async def WatchExperiment(
        self, request, context
    ) -> AsyncIterator[controller_pb2.WatchExperimentResponse]:
        """The experiment's events from the ledger in order, live, until it ends (or the caller leaves)."""
        assert self.ledger is not None
        self._experiment(request.experiment_id)
        after = request.after_sequence
        while True:
            for event in self.ledger.events(request.experiment_id, after):
                after = event.sequence
                yield controller_pb2.WatchExperimentResponse(event=event)
            row = self.ledger.experiment_of(request.experiment_id)
            ended = row.state in TERMINAL and request.experiment_id not in self.runners
            if ended and not self.ledger.events(request.experiment_id, after):
                return
            await asyncio.sleep(0.2)

    async def GetReport(self, request, context) -> controller_pb2.GetReportResponse:
        from services.controller.report import write_report

        assert self.ledger is not None
        self._experiment(request.experiment_id)
        out = Path(request.output_dir or Path(self.settings.state_dir) / "reports" / request.experiment_id)
        summaries, files = await asyncio.to_thread(
            write_report, self.ledger, request.experiment_id, out, self.loop_settings.corpus_dir
        )
        return controller_pb2.GetReportResponse(
            cycles=summaries, output_dir=str(out), files=[str(f) for f in files]
        )

    async def ListCycles(self, request, context) -> controller_pb2.ListCyclesResponse:
        from services.controller.report import cycle_rows, summaries

        assert self.ledger is not None
        threshold = self._experiment(request.experiment_id).config.accuracy_threshold
        rows = await asyncio.to_thread(cycle_rows, self.ledger, request.experiment_id, threshold)
        return controller_pb2.ListCyclesResponse(cycles=summaries(rows))

    async def GetReportDocument(self, request, context) -> controller_pb2.GetReportDocumentResponse:
        from services.controller.report import report_document

        assert self.ledger is not None
        self._experiment(request.experiment_id)
        document = await asyncio.to_thread(
            report_document, self.ledger, request.experiment_id, self.loop_settings.corpus_dir,
            request.include_candidates,
        )  # fmt: skip
        return controller_pb2.GetReportDocumentResponse(
            document_json=json.dumps(document, default=str, allow_nan=False)
        )

    async def ListCandidates(self, request, context) -> controller_pb2.ListCandidatesResponse:
        assert self.ledger is not None
        self._experiment(request.experiment_id)
        if request.cycle < 0:
            raise InvalidArgument("cycle", f"{request.cycle} is negative (0 = every cycle)")
        rows = await asyncio.to_thread(self.ledger.candidates, request.experiment_id, request.cycle or None)
        chosen = [
            candidate_record(r, full=False)
            for r in rows
            if (not request.eval_status or r.eval_status == request.eval_status)
            and (not request.decision or (r.decision or "") == request.decision)
        ]
        return controller_pb2.ListCandidatesResponse(candidates=chosen)

    async def GetCandidate(self, request, context) -> controller_pb2.GetCandidateResponse:
        assert self.ledger is not None
        if not request.candidate_id:
            raise InvalidArgument("candidate_id", "must not be empty")
        row = self.ledger.candidate(request.candidate_id)
        if row is None:
            raise NotFound(f"candidate {request.candidate_id!r} does not exist")
        return controller_pb2.GetCandidateResponse(candidate=candidate_record(row, full=True))


def candidate_record(row: CandidateRow, full: bool) -> controller_pb2.CandidateRecord:
    """The ledger row as the API shows it (with `full`: its program, evaluation and generation JSON)."""
    record = controller_pb2.CandidateRecord(
        candidate_id=row.candidate_id, experiment_id=row.experiment_id, cycle=row.cycle, index=row.idx,
        stage=row.stage.value,
        eval_status=row.eval_status, decision=row.decision.value if row.decision else "", reason=row.reason,
        param_count=row.param_count or 0, flops=row.flops or 0, nearest_train=row.nearest_train,
        nearest_gen=row.nearest_gen, nearest_struct_train=row.nearest_struct_train,
        nearest_struct_gen=row.nearest_struct_gen, mode=row.mode, factor=row.factor,
        adapter_name=row.adapter_name, decided_before_training=row.decided_before_training,
        repaired=row.repaired, eval_seconds=row.eval_seconds or 0.0, wiring_hash=row.topology_sha256,
        wiring_known_as=row.wiring_known_as,
    )  # fmt: skip
    for name in ("accuracy", "nn_jaccard_train", "nn_jaccard_gen", "structural_jaccard_train",
                 "structural_jaccard_gen", "promoted_accuracy"):  # fmt: skip
        value = getattr(row, name)
        if value is not None:
            setattr(record, name, value)
    if full:
        record.code = row.code
        record.generation_json = row.generation_json
        if row.eval_json:
            json_format.Parse(row.eval_json, record.evaluation)
    return record
