"""What `archloop run` shows while it follows an experiment (tools.run_cli): the progress bars, a line
when nothing has moved for a minute saying what the run waits for, and the cycle table at the end."""

from __future__ import annotations

import signal
import time

import grpc
from rich.console import Console
from rich.progress import TaskID
from rich.table import Table

from services.controller.states import short_name

CONTROLLER_OUTAGE_SECONDS = 300.0
"""How long the progress view waits for an unreachable controller (a restarting one comes back)."""
console = Console(stderr=True)


def cycle_table(summaries, title: str) -> Table:
    table = Table(title=title)
    repaired = any(s.repaired for s in summaries)
    for column in (
        "cycle",
        "generated",
        "valid % [95 % CI]",
        *(("raw valid % (repaired)",) if repaired else ()),
        "best",
        "mean [95 % CI]",
        "median",
        "≥ τ %",
        "admitted",
        "corpus",
    ):
        table.add_column(column, justify="right")
    for s in summaries:
        table.add_row(
            str(s.cycle),
            str(s.generated),
            f"{s.valid_fraction:.1%} [{s.valid_fraction_ci_low:.1%}, {s.valid_fraction_ci_high:.1%}]",
            *((f"{s.raw_valid_fraction:.1%} ({s.repaired})",) if repaired else ()),
            f"{s.best_accuracy:.3f}",
            f"{s.mean_accuracy:.3f} [{s.mean_accuracy_ci_low:.3f}, {s.mean_accuracy_ci_high:.3f}]",
            f"{s.median_accuracy:.3f}",
            f"{s.fraction_above_threshold * 100:.1f}",
            str(s.admitted),
            str(s.corpus_size),
        )
    return table


class _Stillness:
    """Says, once a minute while nothing moves (no candidate generated or evaluated, no fine-tune step,
    no phase change), what the run is waiting for: the phase, the cycle and the counts."""

    QUIET_SECONDS = 60.0

    def __init__(self) -> None:
        self.seen: tuple = ()
        self.since = self.said = time.monotonic()

    def waiting_for(self, e, now: float) -> str | None:
        from archloop.v1 import controller_pb2

        moving = (e.state, e.current_cycle, e.current_phase, e.candidates_generated, e.candidates_evaluated,
                  e.candidates_admitted, e.fine_tune.step)  # fmt: skip
        if moving != self.seen:
            self.seen, self.since, self.said = moving, now, now
            return None
        if now - self.said < self.QUIET_SECONDS:
            return None
        self.said = now
        phase = short_name(controller_pb2.CyclePhase, e.current_phase).lower().replace("_", "-")
        what = {
            "generating": f"the generator ({e.candidates_generated} candidates so far)",
            "evaluating": f"the evaluators ({e.candidates_evaluated} of {e.candidates_generated} evaluated)",
            "filtering": "the novelty service and the filter",
            "fine-tuning": f"the trainer (step {e.fine_tune.step} of {e.fine_tune.total_steps})",
        }.get(phase, f"the controller ({phase or 'starting'})")
        quiet = now - self.since
        return f"[yellow]nothing has moved for {quiet:.0f} s:[/] cycle {e.current_cycle} waits for {what}"


class _ProgressView:
    """rich progress bars: cycles, candidates generated / evaluated / admitted, the fine-tune's loss."""

    def __init__(self) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(
            TextColumn("{task.description:>11}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            console=console,
        )
        self.tasks: dict[str, TaskID] = {}

    def update(self, e) -> None:
        from archloop.v1 import controller_pb2

        total = e.config.cycles * e.config.candidates_per_cycle
        state = short_name(controller_pb2.ExperimentState, e.state).lower()
        phase = short_name(controller_pb2.CyclePhase, e.current_phase).lower()
        rows = {
            "cycle": (
                max(0, e.current_cycle - 1) + (phase == "completed"),
                e.config.cycles,
                f"{state}, {phase}",
            ),
            "generated": (e.candidates_generated, total, ""),
            "evaluated": (e.candidates_evaluated, total, ""),
            "admitted": (e.candidates_admitted, max(1, e.candidates_evaluated), f"corpus {e.corpus_size:,}"),
            "fine-tune": (
                e.fine_tune.step,
                max(1, e.fine_tune.total_steps),
                f"loss {e.fine_tune.loss:.3f}" if e.fine_tune.total_steps else "",
            ),
        }
        for name, (done, whole, info) in rows.items():
            if name not in self.tasks:
                self.tasks[name] = self.progress.add_task(name, total=whole, info=info)
            self.progress.update(self.tasks[name], completed=done, total=whole, info=info)


def follow(stub, experiment_id: str, stack=None) -> str:
    """Show progress until the experiment ends; Ctrl-C stops it. Returns the final state name, or
    "GAVE_UP" when the supervisor of our own `stack` gave up on a component. A controller that is
    unreachable (restarting) is waited for up to CONTROLLER_OUTAGE_SECONDS."""
    from archloop.v1 import controller_pb2

    interrupted = False

    def on_interrupt(signum: int, frame: object) -> None:
        nonlocal interrupted
        interrupted = True

    previous = signal.signal(signal.SIGINT, on_interrupt)
    view = _ProgressView()
    outage_since: float | None = None
    still = _Stillness()
    try:
        with view.progress:
            while True:
                if stack is not None and stack.failure is not None:
                    return "GAVE_UP"
                try:
                    experiment = stub.GetExperiment(
                        controller_pb2.GetExperimentRequest(experiment_id=experiment_id), timeout=30
                    ).experiment
                except grpc.RpcError as exc:
                    retryable = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
                    if exc.code() not in retryable or interrupted:  # Ctrl-C: no controller to stop it
                        raise
                    now = time.monotonic()
                    if outage_since is None:
                        outage_since = now
                        console.print(f"[yellow]controller unreachable ({exc.code().name}); waiting …[/]")
                    elif now - outage_since > CONTROLLER_OUTAGE_SECONDS:
                        raise
                    time.sleep(1.0)
                    continue
                if outage_since is not None:
                    console.print(f"controller reachable again after {time.monotonic() - outage_since:.0f} s")
                    outage_since = None
                view.update(experiment)
                if (waiting := still.waiting_for(experiment, time.monotonic())) is not None:
                    console.print(waiting)
                state = short_name(controller_pb2.ExperimentState, experiment.state)
                if state in ("COMPLETED", "FAILED", "STOPPED"):
                    if state == "FAILED":
                        console.print(f"[red]failed:[/] {experiment.error}")
                    return state
                if interrupted:
                    console.print("stopping (the ledger keeps everything done so far) …")
                    request = controller_pb2.StopExperimentRequest(experiment_id=experiment_id)
                    stub.StopExperiment(request, timeout=120)
                    return "STOPPED"
                time.sleep(0.5)
    finally:
        signal.signal(signal.SIGINT, previous)
