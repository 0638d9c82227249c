"""One candidate from source to verdict: static stages here, the rest in the sandbox.

Stages and their statuses (archloop.v1.EvaluationStage / EvaluationStatus): parse (PARSE_ERROR) →
static screen (UNSAFE) → contract (CONTRACT_ERROR) → instantiate (INSTANTIATE_ERROR) → forward
(FORWARD_ERROR, WRONG_OUTPUT_SHAPE) → parameter budget (OVER_BUDGET; UNUSED_LAZY_LAYER when a shape-
inferring layer was never called, so its size is unknown; parameters are counted after the forward
pass has materialised the others) → train (TRAIN_ERROR,
NON_FINITE_LOSS) → accuracy; whatever ends the child early is TIMEOUT, OUT_OF_MEMORY or CRASHED, or,
before the time limit, the progress watchdog's STAGE_TIMEOUT (instantiate, forward or train_setup over
its own deadline), NO_PROGRESS (no training batch within the first-batch deadline) or TOO_SLOW (the
batches so far project the training past the time limit): see watchdog.py.
Every message names its stage, is sanitized (no host paths) and truncated.

This module imports neither grpc nor torch: the service process never runs candidate code.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from archloop.archgraph import ArchGraph, Architecture
from archloop.datasets import NAMES as DATASETS
from archloop.errors import InvalidArgument, Unavailable
from services.evaluator.sandbox import EXIT_SETUP_FAILED, Sandbox, SandboxOutcome, TemplateDied
from services.evaluator.screen import STATIC_STAGES, static_check
from services.evaluator.watchdog import Deadlines, Watchdog

MAX_CODE_BYTES = 256 * 1024
MAX_MESSAGE_CHARS = 500
TEMPLATE_ATTEMPTS = 2  # a candidate whose run the template dies under twice gets CRASHED, not a third run
log = structlog.get_logger("archloop.evaluator")


@dataclass(frozen=True)
class Protocol:
    """The fixed evaluation protocol of an experiment (docs/method.md#evaluation-protocol)."""

    dataset: str = "digits"
    epochs: int = 1
    batch_size: int = 64
    learning_rate: float = 0.01
    momentum: float = 0.9
    dropout: float = 0.2
    seed: int = 0
    time_limit_seconds: float = 600.0
    param_budget: int = 500_000
    validation_fraction: float = 0.2
    max_train_images: int = 0

    def validate(self, prefix: str = "protocol") -> None:
        if self.dataset not in DATASETS:
            raise InvalidArgument(
                f"{prefix}.dataset", f"{self.dataset!r} is not one of {', '.join(DATASETS)}"
            )
        for name in ("epochs", "batch_size", "param_budget"):
            if getattr(self, name) < 1:
                raise InvalidArgument(f"{prefix}.{name}", f"{getattr(self, name)} must be at least 1")
        if not 0 < self.time_limit_seconds <= 24 * 3600:
            raise InvalidArgument(
                f"{prefix}.time_limit_seconds", f"{self.time_limit_seconds} is outside (0, 86400]"
            )
        if not 0 < self.validation_fraction < 1:
            raise InvalidArgument(
                f"{prefix}.validation_fraction", f"{self.validation_fraction} is outside (0, 1)"
            )
        for name in ("learning_rate", "momentum", "dropout"):
            if not 0 <= getattr(self, name) <= 1:
                raise InvalidArgument(f"{prefix}.{name}", f"{getattr(self, name)} is outside [0, 1]")
        if self.max_train_images < 0:
            raise InvalidArgument(f"{prefix}.max_train_images", "must not be negative")


@dataclass
class StageResult:
    stage: str
    status: str
    duration_seconds: float = 0.0
    message: str = ""


@dataclass
class Evaluation:
    candidate_id: str
    status: str = "OK"
    stages: list[StageResult] = field(default_factory=list)
    accuracy: float = 0.0
    train_loss: float = 0.0
    param_count: int = 0
    flops: int = 0
    train_images_per_second: float = 0.0
    epoch_accuracies: list[float] = field(default_factory=list)
    structural_tokens: list[str] = field(default_factory=list)
    architecture: dict = field(default_factory=dict)  # archloop.archgraph.Architecture.as_dict, tokens apart
    violations: list[tuple[str, int, str]] = field(default_factory=list)
    network_isolation: str = "none"
    stdout_tail: str = ""
    stderr_tail: str = ""
    total_duration_seconds: float = 0.0
    step_seconds: dict[str, float] = field(default_factory=dict)
    """How long each sandboxed step took (watchdog.Watchdog.step_seconds): what the deadlines are
    measured from (bench/stage_durations.py)."""

    def fail(self, stage: str, status: str, message: str, duration_seconds: float = 0.0) -> Evaluation:
        text = message if len(message) <= MAX_MESSAGE_CHARS else message[: MAX_MESSAGE_CHARS - 1] + "…"
        self.stages.append(StageResult(stage, status, duration_seconds, text))
        self.status = status
        return self


def _static(candidate_id: str, code: str) -> Evaluation | tuple[Evaluation, None]:
    """Parse, screen and contract (screen.static_check); returns a finished Evaluation when one fails."""
    evaluation = Evaluation(candidate_id)
    check = static_check(code)
    failed = check.failed_stage
    for stage in STATIC_STAGES:
        if stage == failed:
            break
        evaluation.stages.append(StageResult(stage, "OK", check.seconds[stage]))
    if check.syntax_error is not None:
        error = check.syntax_error
        return evaluation.fail("parse", "PARSE_ERROR", f"parse: {error.msg} (line {error.lineno})")
    if failed == "static_screen":
        violations = check.violations
        evaluation.violations = [(v.rule, v.line, v.detail) for v in violations]
        first = violations[0]
        more = f" (+{len(violations) - 1} more)" if len(violations) > 1 else ""
        return evaluation.fail(
            "static_screen", "UNSAFE", f"static_screen: line {first.line}: {first.detail}{more}"
        )
    if failed == "contract":
        problems = "; ".join(check.contract.problems)
        return evaluation.fail("contract", "CONTRACT_ERROR", f"contract: {problems}")
    return evaluation, None


def _ended_early(
    evaluation: Evaluation, outcome: SandboxOutcome, protocol: Protocol, last_stage: str
) -> None:
    if outcome.stopped is not None:
        stop = outcome.stopped
        evaluation.fail(stop.stage, stop.status, stop.message, stop.seconds)
    elif outcome.timed_out:
        evaluation.fail(
            last_stage, "TIMEOUT", f"{last_stage}: over the time limit of {protocol.time_limit_seconds:g} s"
        )
    elif outcome.exit_code == EXIT_SETUP_FAILED:
        evaluation.fail(last_stage, "CRASHED", f"{last_stage}: the sandbox could not be set up")
    elif outcome.signal_number is not None:
        name = signal.Signals(outcome.signal_number).name
        status = "OUT_OF_MEMORY" if outcome.signal_number == signal.SIGKILL else "CRASHED"
        evaluation.fail(last_stage, status, f"{last_stage}: the process was killed by {name}")
    else:
        evaluation.fail(
            last_stage,
            "CRASHED",
            f"{last_stage}: the candidate ended the process (exit status {outcome.exit_code})",
        )


class Evaluator:
    def __init__(
        self,
        sandbox: Sandbox,
        data_dir: Path,
        allow_download: bool = False,
        deadlines: Deadlines | None = None,
        device: str = "auto",
    ) -> None:
        """`device`: auto (CUDA when there is one), cpu or cuda: where candidates train."""
        self.device = device
        self.sandbox = sandbox
        self.data_dir = data_dir
        self.allow_download = allow_download
        self.deadlines = deadlines or Deadlines()

    def screen(self, candidate_id: str, code: str) -> Evaluation:
        """The static stages alone (parse, static screen, contract), in this process: status OK with
        those stages when the program passes them (what a static_only request asks for)."""
        if not code.strip():
            raise InvalidArgument("code", "must not be empty")
        if len(code.encode("utf-8", "surrogatepass")) > MAX_CODE_BYTES:
            raise InvalidArgument("code", f"is over {MAX_CODE_BYTES} bytes")
        started = time.monotonic()
        static = _static(candidate_id, code)
        evaluation = static if isinstance(static, Evaluation) else static[0]
        evaluation.total_duration_seconds = time.monotonic() - started
        return evaluation

    def evaluate(
        self,
        candidate_id: str,
        code: str,
        protocol: Protocol,
        want_structural_tokens: bool = False,
        on_progress: Callable[[dict], None] | None = None,
        cancel: threading.Event | None = None,
        forward_only: bool = False,
    ) -> Evaluation:
        """The verdict on one program. `cancel` set (the caller went away) kills its sandboxed run;
        `forward_only`: the sandboxed stages up to the parameter budget, no training."""
        protocol.validate()
        started = time.monotonic()
        static = self.screen(candidate_id, code)
        if static.status != "OK":
            return static
        evaluation = static
        last_stage = {"stage": "instantiate"}

        def progress(record: dict) -> None:
            last_stage["stage"] = record.get("stage", last_stage["stage"])
            if on_progress is not None:
                on_progress(record)

        job = {"code": code, "structural_tokens": want_structural_tokens, "device": self.device,
               "forward_only": forward_only,
               "protocol": {**protocol.__dict__, "threads": self.sandbox.limits.threads}}  # fmt: skip
        dataset = {
            "name": protocol.dataset,
            "validation_fraction": protocol.validation_fraction,
            "seed": protocol.seed,
            "max_train_images": protocol.max_train_images,
            "data_dir": str(self.data_dir),
            "allow_download": self.allow_download,
        }
        outcome, watchdog = self._sandboxed(candidate_id, job, dataset, protocol, progress, cancel, started)
        evaluation.step_seconds = dict(watchdog.step_seconds)
        if outcome is None:
            evaluation.total_duration_seconds = time.monotonic() - started
            return evaluation.fail(
                last_stage["stage"], "CRASHED",
                f"{last_stage['stage']}: the sandbox's template process ended under this candidate "
                f"{TEMPLATE_ATTEMPTS} times (restarted each time)",
            )  # fmt: skip
        evaluation.network_isolation = outcome.network_isolation
        evaluation.stdout_tail, evaluation.stderr_tail = outcome.stdout_tail, outcome.stderr_tail
        result = outcome.result
        if result is not None and "setup_error" in result:
            raise InvalidArgument("protocol.dataset", result["setup_error"])
        if result is None:
            _ended_early(evaluation, outcome, protocol, last_stage["stage"])
        else:
            _take_result(evaluation, result)
        evaluation.total_duration_seconds = time.monotonic() - started
        return evaluation

    def _sandboxed(
        self, candidate_id: str, job: dict, dataset: dict, protocol: Protocol,
        progress: Callable[[dict], None], cancel: threading.Event | None, started: float,
    ) -> tuple[SandboxOutcome | None, Watchdog]:  # fmt: skip
        """The sandboxed run. When the template process dies under it (killed, out of memory, its pipe
        closed: nothing the candidate is known to have done), the template is restarted and the
        candidate runs again from the start, so its verdict is its own; None after TEMPLATE_ATTEMPTS."""
        for attempt in range(TEMPLATE_ATTEMPTS):
            generation = self.sandbox.generation
            watchdog = Watchdog(self.deadlines, protocol.time_limit_seconds, protocol.epochs,
                                started if attempt == 0 else time.monotonic())  # fmt: skip
            try:
                return self.sandbox.run(
                    job, dataset, protocol.time_limit_seconds, progress, cancel, watchdog
                ), watchdog
            except TemplateDied as exc:
                log.warning(
                    "evaluator_template_died", candidate_id=candidate_id, attempt=attempt + 1, reason=str(exc)
                )
                try:
                    self.sandbox.restart(generation)
                except RuntimeError as again:  # SandboxUnavailable too: gVisor gone from under us
                    raise Unavailable(
                        f"the sandbox's template could not be restarted ({again}); retry"
                    ) from None
        return None, watchdog


def _take_result(evaluation: Evaluation, result: dict) -> None:
    """The sandboxed run's result.json into the evaluation."""
    evaluation.stages += [StageResult(**stage) for stage in result["stages"]]
    evaluation.status = result["status"]
    evaluation.accuracy = result.get("accuracy", 0.0)
    evaluation.train_loss = result.get("train_loss", 0.0)
    evaluation.param_count = result.get("param_count", 0)
    evaluation.flops = result.get("flops", 0)
    evaluation.train_images_per_second = result.get("train_images_per_second", 0.0)
    evaluation.epoch_accuracies = result.get("epoch_accuracies", [])
    if result.get("architecture_graph"):  # hashed here: networkx stays out of the sandbox
        _set_architecture(evaluation, result["architecture_graph"])


def _set_architecture(evaluation: Evaluation, graph_json: object) -> None:
    """The graph the sandboxed run recorded, hashed (a malformed one, which only a program that wrote
    over its own result could make, leaves the architecture empty)."""
    try:
        architecture = Architecture.of(ArchGraph.from_json(str(graph_json))).as_dict()
    except (ValueError, KeyError, TypeError):
        return
    evaluation.structural_tokens = architecture.pop("tokens")
    evaluation.architecture = architecture
