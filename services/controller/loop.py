"""One experiment's run: its lifecycle (started, stopped, failed, completed; the wall-clock budget) and
the dispatch of each cycle's phases (docs/method.md#the-loop):

    corpus import   once: the LEMUR programs into the experiment's corpus collection
    per cycle       archive upkeep (delta / factor) → generation, each candidate handed at once to its
                    proxy evaluation (after the novelty pre-check, when on) → filter: novelty figures,
                    promotion and the proxy audit, decisions, corpus admission → fine-tune
    after the last  final training of the top-k admitted

The phases live in services.controller.phases, one module each. Every phase reads what is left to do
from the ledger and records its result there before the next starts, so `run()` after a crash (or a
stop) continues where the ledger says; the cycle's phase (states.Phase) picks the phase to resume.
Events are ledger rows written in the same transactions (services.controller.ledger).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import structlog

from archloop.v1 import common_pb2, controller_pb2, trainer_pb2
from services.controller import requests
from services.controller.ledger import Ledger
from services.controller.peers import Clients, PeerFailed, Peers, Retry, StopRequested
from services.controller.phases.context import CandidateSource, LoopSettings, RunContext, Stop
from services.controller.phases.corpus_import import import_corpus
from services.controller.phases.corpus_sample import CorpusSample
from services.controller.phases.engine import MutationEngine
from services.controller.phases.evaluation import Evaluation
from services.controller.phases.filtering import Filtering
from services.controller.phases.final_training import FinalTraining
from services.controller.phases.fine_tune import FineTune
from services.controller.phases.generation import Generation, LanguageModel
from services.controller.phases.parents import Parents
from services.controller.phases.precheck import NoPrecheck, Precheck
from services.controller.phases.promotion import PromotionAndAudit
from services.controller.states import ExperimentState, Phase
from services.controller.summary import cycle_counts

__all__ = ["ExperimentRunner", "LoopSettings", "RunnerView", "record_failed"]
log = structlog.get_logger("archloop.controller")


def record_failed(ledger: Ledger, experiment_id: str, message: str) -> None:
    """The experiment FAILED with `message`, and its experiment_failed event, in one ledger write (the
    run's own failures, and a local supervisor that gave up on a component)."""
    cycle = ledger.experiment_of(experiment_id).current_cycle
    ledger.set_experiment(
        experiment_id,
        requests.event(experiment_id, cycle, "experiment_failed", error=message, cycle=cycle),
        state=ExperimentState.FAILED,
        error=message,
    )


@dataclass(frozen=True)
class RunnerView:
    """What the servicer reads of a running experiment beyond the ledger."""

    fine_tune_step: trainer_pb2.FineTuneStep | None  # the running fine-tune's last step


class ExperimentRunner:
    def __init__(
        self,
        experiment_id: str,
        config: controller_pb2.ExperimentConfig,
        ledger: Ledger,
        peers: Peers,
        settings: LoopSettings,
        notify: asyncio.Event | None = None,
        *,
        clients: Clients | None = None,
    ) -> None:
        """`clients`: the peers' clients already bound (a unit test's fakes); by default the four of
        `peers` bound to this experiment's retry rule."""
        self.stop = Stop()
        if clients is None:
            retry = Retry(
                settings.retry_budget_seconds,
                settings.rpc_timeout_seconds,
                lambda: self.stop.requested,
                experiment_id,
                settings.progress_deadline_seconds,
            )
            clients = Clients(peers, retry)
        notify = notify or asyncio.Event()
        ctx = RunContext(experiment_id, config, ledger, clients, settings, notify, self.stop)
        self.ctx = ctx
        self.started = time.monotonic()
        self.lemur_models = 0  # LEMUR programs in the corpus collection (set by the corpus import)
        self.parents = Parents(ctx)
        self.precheck = Precheck(ctx) if config.novelty_precheck else NoPrecheck()
        self.evaluation = Evaluation(ctx, self.precheck)
        self.generation = Generation(ctx, self.evaluation, self.precheck, self._source())
        self.filtering = Filtering(ctx, self.evaluation, self.precheck, PromotionAndAudit(ctx))
        self.fine_tune = FineTune(ctx, self.parents)
        self.final_training = FinalTraining(ctx)

    def _source(self) -> CandidateSource:
        """Where the candidates come from: the generator's model, or (no model) the engine or the corpus."""
        mode = self.ctx.config.generation.mode
        if mode == common_pb2.GENERATION_MODE_ENGINE:
            return MutationEngine(self.ctx, self.parents)
        if mode == common_pb2.GENERATION_MODE_CORPUS_SAMPLE:
            return CorpusSample(self.ctx)
        return LanguageModel(self.ctx, self.parents)

    @property
    def view(self) -> RunnerView:
        return RunnerView(self.fine_tune.last_step)

    async def import_corpus(self) -> None:
        self.lemur_models = await import_corpus(self.ctx)

    def request_stop(self) -> None:
        """Stop at the next safe point; evaluations in flight are abandoned (re-run on resume)."""
        self.stop.request()

    # -- the run --------------------------------------------------------------------------------
    async def run(self) -> str:
        """Run to the end (or a stop); returns the final state name."""
        ctx = self.ctx
        row = ctx.ledger.experiment_of(ctx.experiment_id)
        ctx.ledger.set_experiment(
            ctx.experiment_id,
            requests.event(
                ctx.experiment_id,
                0,
                "experiment_started",
                cycles=ctx.config.cycles,
                candidates_per_cycle=ctx.config.candidates_per_cycle,
                config_sha256=row.config_sha256,
            ),
            state=ExperimentState.RUNNING,
            error="",
        )
        ctx.notify.set()
        try:
            await self.import_corpus()
            for cycle in range(max(1, row.current_cycle), ctx.config.cycles + 1):
                if self._budget_spent(cycle):
                    break
                await self._cycle(cycle)
            await self.final_training.run()
        except StopRequested:
            ctx.ledger.set_experiment(ctx.experiment_id, state=ExperimentState.STOPPED)
            log.info("experiment_stopped", experiment_id=ctx.experiment_id)
            return ExperimentState.STOPPED
        except Exception as exc:
            message = str(exc) or type(exc).__name__
            log.error("experiment_failed", experiment_id=ctx.experiment_id, error=message,
                      exc_info=not isinstance(exc, PeerFailed))  # fmt: skip
            record_failed(ctx.ledger, ctx.experiment_id, message)
            ctx.notify.set()
            return ExperimentState.FAILED
        self._completed()
        return ExperimentState.COMPLETED

    def _completed(self) -> None:
        ctx = self.ctx
        counts = ctx.ledger.counts(ctx.experiment_id)
        completed = [c.cycle for c in ctx.ledger.cycles(ctx.experiment_id) if c.phase == Phase.COMPLETED]
        ctx.ledger.set_experiment(
            ctx.experiment_id,
            requests.event(
                ctx.experiment_id,
                max(completed, default=0),
                "experiment_completed",
                cycles_completed=len(completed),
                budget_spent=len(completed) < ctx.config.cycles,
                candidates_generated=counts["generated"],
                candidates_admitted=counts["admitted"],
                duration_seconds=time.monotonic() - self.started,
            ),
            state=ExperimentState.COMPLETED,
            finished_ms=int(time.time() * 1000),
        )
        ctx.notify.set()
        log.info("experiment_completed", experiment_id=ctx.experiment_id, **counts)

    def _budget_spent(self, cycle: int) -> bool:
        """Whether the wall-clock budget forbids starting `cycle` (one already started always finishes):
        the completed cycles' durations, summed from the ledger, so a resume keeps the count."""
        budget = self.ctx.config.wall_clock_budget_seconds
        rows = self.ctx.ledger.cycles(self.ctx.experiment_id)
        if not budget or any(c.cycle == cycle for c in rows):
            return False
        spent = sum((c.completed_ms - c.started_ms) / 1000 for c in rows if c.phase == Phase.COMPLETED)
        if spent < budget:
            return False
        log.info("wall_clock_budget_spent", experiment_id=self.ctx.experiment_id, cycle=cycle,
                 spent_seconds=spent)  # fmt: skip
        return True

    async def _cycle(self, cycle: int) -> None:
        """The cycle's phases from the one its ledger row is in."""
        ctx, experiment = self.ctx, self.ctx.experiment_id
        ctx.stop.check()
        await self.parents.update(cycle)
        adapter = ctx.ledger.adapter_before(experiment, cycle)
        corpus_size = self.lemur_models + len(ctx.ledger.admitted(experiment, cycle - 1))
        ctx.ledger.start_cycle(
            experiment,
            cycle,
            requests.event(
                experiment, cycle, "cycle_started", adapter_name=adapter.name, corpus_size=corpus_size
            ),
            adapter_name=adapter.name,
            adapter_path=adapter.path,
            adapter_sha256=adapter.weights_sha256,
            temperature=requests.cycle_temperature(ctx.config, cycle),
            corpus_size_start=corpus_size,
        )
        ctx.notify.set()
        row = ctx.ledger.cycle_of(experiment, cycle)
        if row.phase in (Phase.GENERATING, Phase.EVALUATING):
            await self.generation.run(cycle, row)
        if ctx.ledger.cycle_of(experiment, cycle).phase == Phase.FILTERING:
            await self.filtering.run(cycle)
        if ctx.ledger.cycle_of(experiment, cycle).phase == Phase.FINE_TUNING:
            await self.fine_tune.run(cycle)
        if ctx.ledger.cycle_of(experiment, cycle).phase != Phase.COMPLETED:
            admitted = cycle_counts(ctx.ledger.candidates(experiment, cycle)).admitted
            ctx.step(cycle, "cycle_completed", dict(
                candidates_admitted=admitted,
                corpus_size=corpus_size + admitted,
                duration_seconds=time.time() - row.started_ms / 1000,
            ), phase=Phase.COMPLETED)  # fmt: skip
