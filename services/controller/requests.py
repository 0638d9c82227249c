"""What a run asks its peers, built from the experiment's config: one function per request kind, so
the phases (services.controller.phases) read as steps, not as message assembly. Ids and collection
names come from archloop.ids."""

from __future__ import annotations

import math
from pathlib import Path

from archloop import datasets, ids, prompts
from archloop.ids import EvaluationKind
from archloop.v1 import common_pb2, controller_pb2, evaluator_pb2, events_pb2, generator_pb2, trainer_pb2
from services.controller.ledger import CycleRow

EVALUATION_GRACE_SECONDS = 120  # an evaluation's deadline: its protocol's time limit plus this


def prompt_task(config: controller_pb2.ExperimentConfig) -> prompts.Task:
    """What the prompt asks for: the evaluated dataset's shapes and classes (named as
    `generation.prompt_dataset` when set), within the protocol's parameter budget."""
    evaluated = datasets.CATALOGUE[config.datasets[0]]  # config.validate has checked the name
    return prompts.task_for(
        config.generation.prompt_dataset or config.datasets[0],
        evaluated.input_shape,
        evaluated.num_classes,
        config.protocol.param_budget,
    )


def cycle_temperature(config: controller_pb2.ExperimentConfig, cycle: int) -> float:
    """Constant, or cyclic between the base temperature and temperature_max over the period
    (docs/method.md#generation-modes)."""
    g = config.generation
    base = g.decoding.temperature
    if g.temperature_schedule != controller_pb2.TEMPERATURE_SCHEDULE_CYCLIC:
        return base
    phase = ((cycle - 1) % g.temperature_period_cycles) / g.temperature_period_cycles
    return base + (g.temperature_max - base) * (1 - math.cos(2 * math.pi * phase)) / 2


def event(experiment_id: str, at_cycle: int, kind: str, **payload: object) -> events_pb2.Event:
    """An event of `kind` with its payload fields; the id (experiment, cycle, kind) makes it happen once."""
    message = events_pb2.Event(
        event_id=f"{experiment_id}.{at_cycle}.{kind}", experiment_id=experiment_id, cycle=at_cycle
    )
    getattr(message, kind).SetInParent()
    for name, value in payload.items():
        setattr(getattr(message, kind), name, value)
    return message


def task_spec(task: prompts.Task) -> common_pb2.TaskSpec:
    return common_pb2.TaskSpec(
        dataset=task.dataset,
        input_shape=[1, *task.input_shape],
        num_classes=task.num_classes,
        param_budget=task.max_parameters,
    )


def baseline_code(config: controller_pb2.ExperimentConfig) -> str:
    """What delta / factor mode edit first: the config's baseline, else the packaged one."""
    return config.generation.baseline_code or prompts.BASELINE_FILE.read_text()


def generation(
    experiment_id: str,
    config: controller_pb2.ExperimentConfig,
    task: prompts.Task,
    row: CycleRow,
    start: int,
    n: int,
    parents: list[tuple[str, str]] | None = None,
    factors: list[tuple[str, str]] | None = None,
) -> generator_pb2.GenerateCandidatesRequest:
    """Candidates `start` … `start + n - 1` of the cycle `row`, with its adapter and temperature;
    delta / factor / region: each edits its (id, code) of `parents`, with its (factor, why) of
    `factors` when the controller chose them (a bandit)."""
    g = config.generation
    decoding = common_pb2.DecodingParams()
    decoding.CopyFrom(g.decoding)
    decoding.temperature = row.temperature
    return generator_pb2.GenerateCandidatesRequest(
        experiment_id=experiment_id,
        cycle=row.cycle,
        task=task_spec(task),
        mode=g.mode,
        decoding=decoding,
        adapter=common_pb2.AdapterRef(
            name=row.adapter_name, path=row.adapter_path, weights_sha256=row.adapter_sha256
        ),
        seed=config.seed * 1000 + row.cycle,
        n=n,
        factors=list(g.factors),
        start_index=start,
        repair=g.repair,
        parents=[
            generator_pb2.ParentProgram(parent_id=i, code=code, factor=factor, factor_choice=why)
            for (i, code), (factor, why) in zip(
                parents or [], factors or [("", "")] * len(parents or []), strict=True
            )
        ],
    )


def evaluation(
    experiment_id: str,
    config: controller_pb2.ExperimentConfig,
    candidate_id: str,
    code: str,
    cycle: int,
    kind: EvaluationKind = EvaluationKind.PROXY,
    static_only: bool = False,
    forward_only: bool = False,
) -> tuple[evaluator_pb2.EvaluateCandidateRequest, float]:
    """The request for one evaluation of `kind` under the experiment's protocol (promotion and final
    training: their epochs, and as many times the time limit), and its deadline in seconds. The proxy
    evaluation asks for the architecture graph, unless architecture_novelty is off; `static_only` and
    `forward_only` stop it before the sandbox and before training (the novelty pre-check)."""
    epochs = {
        EvaluationKind.PROMOTED: config.promotion.epochs,
        EvaluationKind.FINAL: config.final_training.epochs,
    }.get(kind, 0)
    protocol = common_pb2.EvaluationProtocol()
    protocol.CopyFrom(config.protocol)
    if epochs:
        protocol.epochs = epochs
        protocol.time_limit_seconds = config.protocol.time_limit_seconds * epochs
    request = evaluator_pb2.EvaluateCandidateRequest(
        candidate_id=ids.evaluation_id(candidate_id, kind),
        code=code,
        protocol=protocol,
        structural_tokens=kind is EvaluationKind.PROXY
        and not static_only
        and config.architecture_novelty != controller_pb2.ARCHITECTURE_NOVELTY_OFF,
        experiment_id=experiment_id,
        cycle=cycle,
        static_only=static_only,
        forward_only=forward_only,
    )
    return request, protocol.time_limit_seconds + EVALUATION_GRACE_SECONDS


def fine_tune(
    experiment_id: str,
    config: controller_pb2.ExperimentConfig,
    cycle: int,
    training_set: Path,
    previous_adapter: common_pb2.AdapterRef,
) -> trainer_pb2.StartFineTuneRequest:
    """The cycle's job (ids.fine_tune_job_id: the trainer is idempotent by it)."""
    job_id = ids.fine_tune_job_id(experiment_id, cycle)
    request = trainer_pb2.StartFineTuneRequest(
        job_id=job_id,
        experiment_id=experiment_id,
        cycle=cycle,
        base_model=config.base_model,
        corpus=trainer_pb2.CorpusSnapshot(path=str(training_set)),
        lora=config.lora,
        schedule=config.fine_tune_schedule,
        adapter_name=job_id,
        seed=config.seed * 1000 + cycle,
        init=config.adapter_init,
    )
    if config.adapter_init == trainer_pb2.ADAPTER_INIT_CONTINUE and previous_adapter.name:
        request.init_adapter.CopyFrom(previous_adapter)
    return request
