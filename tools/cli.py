"""The `archloop` command.

    archloop up                 start NATS + the five services locally; Ctrl-C stops them
    archloop status [--json]    address and health of every component of the local stack
    archloop down               stop the local stack started by `archloop up`
    archloop novelty …          create|check|add|import|stats against the novelty service
    archloop corpus …           fetch|build|stats: the LEMUR wheel and the training corpus
    archloop base-model …       train|info: the tiny base code LM
    archloop evaluate FILE      evaluate one model file in the sandbox (exit 3 when it is not valid)
    archloop generate …         sample candidates (full / delta / factor) into a folder
    archloop run …              the main job: the whole loop (brings the local stack up if needed)
    archloop report EXP         an experiment's report; `experiments list|show|stop`, `watch` (events)
    archloop dashboard          the web dashboard: experiments, cycles live, candidates (port 8765)

Exit status: 0 success, 1 a runtime failure (a component failed, nothing is running), 2 bad usage.
The local stack's files (stack.json, logs, NATS storage) live in $ARCHLOOP_HOME (default ~/.archloop).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table

from archloop import datasets

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _home(args: argparse.Namespace) -> Path:
    from archloop.paths import archloop_home

    return Path(args.home) if args.home else archloop_home()


def _components_table(rows: list[dict[str, object]], title: str) -> Table:
    table = Table(title=title)
    for column in ("component", "address", "health", "pid", "log"):
        table.add_column(column)
    for row in rows:
        style = "green" if row["health"] == "SERVING" else "red"
        table.add_row(
            str(row["component"]),
            str(row["address"]),
            f"[{style}]{row['health']}[/]",
            str(row["pid"]),
            str(row["log"]),
        )
    return table


def _status_rows(state) -> list[dict[str, object]]:
    from tools.localstack import component_health

    return [
        {"component": c.name, "address": c.address, "health": component_health(c), "pid": c.pid, "log": c.log}
        for c in state.components
    ]


def cmd_up(args: argparse.Namespace) -> int:
    from tools.localstack import Liveness, RestartPolicy, Stack, StackError
    from tools.stack_ledger import record_failure, unfinished_experiments

    console = Console(stderr=not sys.stdout.isatty())
    try:
        policy, liveness = RestartPolicy.from_env(args.max_restarts), Liveness.from_env()
    except StackError as exc:
        print(f"archloop up: {exc}", file=sys.stderr)
        return EXIT_USAGE
    stack = Stack(_home(args), start_timeout_seconds=args.timeout, restart_policy=policy, liveness=liveness)
    stack.install_signal_handlers()
    try:
        with console.status("starting nats-server and the five services…"):
            state = stack.start()
    except StackError as exc:
        stack.stop()
        print(f"archloop up: {exc}", file=sys.stderr)
        return EXIT_FAILED
    console.print(_components_table(_status_rows(state), f"ArchLoop local stack ({state.home})"))
    console.print(
        "addresses written to "
        + str(Path(state.home) / "stack.json")
        + "; Ctrl-C or `archloop down` stops everything"
    )
    sys.stdout.flush()
    failure = stack.supervise(on_event=lambda line: console.print(f"[yellow]supervisor:[/] {line}"))
    running = unfinished_experiments(stack.home) if failure else []
    stack.stop()
    if failure:
        failed = record_failure(stack.home, failure.sentence, running)
        print(f"archloop up: {failure.sentence}; stopped the stack", file=sys.stderr)
        for experiment_id in failed:
            resume = f"archloop run --resume {experiment_id}"
            print(f"archloop up: {experiment_id} FAILED (continue with `{resume}`)", file=sys.stderr)
        return EXIT_FAILED
    console.print("local stack stopped")
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    from tools.localstack import StackState

    state = StackState.load(_home(args))
    if state is None or not state.supervisor_alive():
        message = "no local stack is running (start one with `archloop up`)"
        if args.json:
            print(json.dumps({"running": False, "components": []}))
        print(f"archloop status: {message}", file=sys.stderr)
        return EXIT_FAILED
    rows = _status_rows(state)
    healthy = all(row["health"] == "SERVING" for row in rows)
    if args.json:
        print(
            json.dumps(
                {
                    "running": True,
                    "healthy": healthy,
                    "supervisor_pid": state.supervisor_pid,
                    "home": state.home,
                    "components": rows,
                },
                indent=2,
            )
        )
    else:
        Console().print(_components_table(rows, f"ArchLoop local stack ({state.home})"))
    return EXIT_OK if healthy else EXIT_FAILED


def cmd_down(args: argparse.Namespace) -> int:
    from tools.localstack import stop_stack

    state = stop_stack(_home(args), timeout_seconds=args.timeout)
    if state is None:
        print("archloop down: no local stack is running", file=sys.stderr)
        return EXIT_OK
    print(f"stopped the local stack (supervisor pid {state.supervisor_pid})")
    return EXIT_OK


EXIT_NOT_VALID = 3


def cmd_datasets_fetch(args: argparse.Namespace) -> int:
    """Download each named torchvision dataset (the Kubernetes setup Job runs this: evaluators have
    no internet egress)."""
    from services.evaluator.datasets import DatasetUnavailable, load_torchvision

    unknown = [n for n in args.names if n not in datasets.TORCHVISION]
    if unknown:
        print(
            f"archloop datasets fetch: unknown dataset {', '.join(unknown)} "
            f"(one of {', '.join(datasets.TORCHVISION)}; digits ships with scikit-learn)",
            file=sys.stderr,
        )
        return 2
    for name in args.names:
        try:
            data = load_torchvision(name, Path(args.data_dir), allow_download=True)
        except DatasetUnavailable as exc:
            print(f"archloop datasets fetch: {exc}", file=sys.stderr)
            return 1
        images = len(data.train_labels) + len(data.validation_labels)
        print(f"{name}: {images} training images in {args.data_dir}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Evaluate one file locally in the same sandbox the evaluator service uses."""
    from dataclasses import replace

    from google.protobuf.json_format import MessageToJson

    from archloop.errors import InvalidArgument
    from services.evaluator.evaluation import Evaluator, Protocol
    from services.evaluator.sandbox import Sandbox, SandboxUnavailable
    from services.evaluator.servicer import result_to_proto
    from services.evaluator.watchdog import Deadlines

    try:
        code = Path(args.file).read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        print(f"archloop evaluate: cannot read {args.file}: {exc.strerror}", file=sys.stderr)
        return EXIT_FAILED
    protocol = Protocol(dataset=args.dataset, epochs=args.epochs, seed=args.seed,
                        time_limit_seconds=args.time_limit, param_budget=args.param_budget)  # fmt: skip
    sandbox = Sandbox(Path(args.work_dir), kind=args.sandbox)
    try:
        sandbox.start()
    except SandboxUnavailable as exc:
        print(f"archloop evaluate: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        deadlines = Deadlines()
        if args.stage_deadline is not None:
            stage = args.stage_deadline
            deadlines = replace(
                deadlines, instantiate_seconds=stage, forward_seconds=stage, setup_seconds=stage
            )
        if args.first_batch_deadline is not None:
            deadlines = replace(deadlines, first_batch_seconds=args.first_batch_deadline)
        evaluation = Evaluator(sandbox, Path(args.data_dir), deadlines=deadlines).evaluate(
            Path(args.file).stem, code, protocol, True
        )
    except InvalidArgument as exc:
        print(f"archloop evaluate: {exc}", file=sys.stderr)
        return 2
    finally:
        sandbox.stop()
    result = result_to_proto(evaluation, "local")
    if args.json:
        print(MessageToJson(result, preserving_proto_field_name=True))
    else:
        for stage in evaluation.stages:
            print(f"{stage.stage:14} {stage.status:18} {stage.duration_seconds:7.3f} s  {stage.message}")
        print(
            f"verdict {evaluation.status}: accuracy {evaluation.accuracy:.4f}, "
            f"{evaluation.param_count:,} parameters"
        )
    return EXIT_OK if evaluation.status == "OK" else EXIT_NOT_VALID


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="archloop", description="ArchLoop: iterative LLM-driven NAS")
    parser.add_argument(
        "--home", help="state directory of the local stack [env ARCHLOOP_HOME; default ~/.archloop]"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = commands.add_parser("up", help="start NATS and the five services locally until Ctrl-C")
    up.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for every component")
    from tools.run_cli import MAX_RESTARTS_HELP

    up.add_argument("--max-restarts", type=int, help=MAX_RESTARTS_HELP)
    up.set_defaults(func=cmd_up)

    status = commands.add_parser("status", help="address and health of each local component")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(func=cmd_status)

    down = commands.add_parser("down", help="stop the local stack")
    down.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for a clean stop")
    down.set_defaults(func=cmd_down)

    from tools.corpus_cli import add_parsers as add_corpus_parsers

    add_corpus_parsers(commands)

    evaluate = commands.add_parser(
        "evaluate", help="evaluate one model file in the sandbox (exit 3 if not valid)"
    )
    evaluate.add_argument("file")
    evaluate.add_argument("--dataset", default="digits", help="digits (offline) or a torchvision dataset")
    evaluate.add_argument("--epochs", type=int, default=1)
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.add_argument("--time-limit", type=float, default=600.0, help="seconds")
    evaluate.add_argument("--param-budget", type=int, default=500_000)
    evaluate.add_argument(
        "--stage-deadline",
        type=float,
        help="seconds for instantiate, forward and train_setup each (0: off) [default: the evaluator's, "
        "20, 20, 10]",
    )
    evaluate.add_argument(
        "--first-batch-deadline",
        type=float,
        help="seconds for the first training batch (0: off) [default 30]",
    )
    evaluate.add_argument("--data-dir", default="data", help="where torchvision datasets live")
    evaluate.add_argument("--work-dir", default=".archloop-jobs", help="job directories (removed after)")
    evaluate.add_argument("--json", action="store_true", help="print the EvaluationResult as JSON")
    evaluate.add_argument(
        "--sandbox",
        choices=("namespaces", "gvisor"),
        default=os.environ.get("ARCHLOOP_SANDBOX", "namespaces"),
        help="what isolates the candidate [env ARCHLOOP_SANDBOX; default namespaces]",
    )
    evaluate.set_defaults(func=cmd_evaluate)

    datasets_command = commands.add_parser("datasets", help="torchvision datasets for the evaluator")
    datasets_sub = datasets_command.add_subparsers(dest="datasets_command", required=True)
    fetch = datasets_sub.add_parser("fetch", help="download datasets into the evaluator's --data-dir")
    fetch.add_argument("names", nargs="+", help=", ".join(datasets.TORCHVISION))
    fetch.add_argument("--data-dir", default="data", help="the evaluator's data directory")
    fetch.set_defaults(func=cmd_datasets_fetch)

    from tools.novelty_cli import add_parser as add_novelty_parser

    add_novelty_parser(commands)

    from tools.generate_cli import add_parser as add_generate_parser

    add_generate_parser(commands)

    from tools.run_cli import add_parsers as add_run_parsers

    add_run_parsers(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from archloop.logs import configure_logging

    # library warnings (NATS reconnects, in-process services) go to stderr; stdout is the command's output
    configure_logging("cli", "warning", "console")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
