"""The main job and its companions.

    archloop run [--config FILE] [--cycles N] [--candidates N] [--dataset NAME] [--mode M] [--seed S]
                 [--out DIR] [--name EXP] [--controller ADDR]
    archloop run --resume EXP
    archloop report EXP [--out DIR]
    archloop experiments list | show EXP | stop EXP
    archloop watch [EXP]

`archloop run` validates the config first (a bad one exits 2 before anything starts), then uses the
controller at --controller (or ARCHLOOP_CONTROLLER_ADDR, or the running local stack), or else brings the
local stack up itself (building the LEMUR corpus first if it is missing) and takes it down at the end.
It shows live progress, prints the cycle table, and writes the report (HTML, CSVs, JSON, plots) to
--out. Ctrl-C stops the experiment cleanly (the ledger keeps everything); `--resume EXP` continues it.
Exit status: 0 completed, 1 failed, 2 bad usage or config, 130 stopped by Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import grpc
from rich.console import Console
from rich.live import Live
from rich.table import Table

from archloop.errors import InvalidArgument

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
console = Console(stderr=True)


def _home(args: argparse.Namespace) -> Path:
    from archloop.localstack import archloop_home

    return Path(args.home) if getattr(args, "home", None) else archloop_home()


def _controller_address(args: argparse.Namespace) -> str | None:
    """--controller, ARCHLOOP_CONTROLLER_ADDR, or a running local stack's controller; None: none running."""
    from archloop.localstack import StackState

    if getattr(args, "controller", None):
        return args.controller
    if os.environ.get("ARCHLOOP_CONTROLLER_ADDR"):
        return os.environ["ARCHLOOP_CONTROLLER_ADDR"]
    state = StackState.load(_home(args))
    if state is not None and state.supervisor_alive():
        return state.address("controller")
    return None


def _stub(address: str):  # type: ignore[no-untyped-def]
    from archloop.clients import channel_options
    from archloop.v1 import controller_pb2_grpc

    channel = grpc.insecure_channel(address, options=channel_options())
    return controller_pb2_grpc.ControllerServiceStub(channel)


def _config(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from services.controller import config as experiment_config

    base = experiment_config.load_file(Path(args.config)) if args.config else experiment_config.embedded()
    experiment_config.apply_overrides(
        base,
        cycles=args.cycles,
        candidates=args.candidates,
        dataset=args.dataset,
        mode=args.mode,
        seed=args.seed,
    )
    config = experiment_config.with_defaults(base)
    experiment_config.validate(config)
    return config


def _ensure_corpus(home: Path) -> Path:
    from archloop.corpus import CORPUS_VERSION, build_corpus

    corpus_dir = Path(os.environ.get("ARCHLOOP_CORPUS_DIR") or home / "corpus" / CORPUS_VERSION)
    if not (corpus_dir / "examples.jsonl").is_file():
        console.print(f"building the LEMUR corpus into {corpus_dir} (once, about a minute)")
        build_corpus(corpus_dir)
    return corpus_dir


def _cycle_table(summaries, title: str) -> Table:  # type: ignore[no-untyped-def]
    table = Table(title=title)
    for column in (
        "cycle",
        "generated",
        "valid % [95 % CI]",
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
            f"{s.best_accuracy:.3f}",
            f"{s.mean_accuracy:.3f} [{s.mean_accuracy_ci_low:.3f}, {s.mean_accuracy_ci_high:.3f}]",
            f"{s.median_accuracy:.3f}",
            f"{s.fraction_above_threshold * 100:.1f}",
            str(s.admitted),
            str(s.corpus_size),
        )
    return table


def _progress_line(experiment) -> str:  # type: ignore[no-untyped-def]
    from archloop.v1 import controller_pb2

    state = controller_pb2.ExperimentState.Name(experiment.state).removeprefix("EXPERIMENT_STATE_")
    phase = controller_pb2.CyclePhase.Name(experiment.current_phase).removeprefix("CYCLE_PHASE_")
    e = experiment
    total = e.config.cycles * e.config.candidates_per_cycle
    return (
        f"[bold]{e.experiment_id}[/] {state} · cycle {e.current_cycle}/{e.config.cycles} {phase.lower()} · "
        f"generated {e.candidates_generated}/{total} · evaluated {e.candidates_evaluated} · "
        f"admitted {e.candidates_admitted} · corpus {e.corpus_size:,}"
    )


def _follow(stub, experiment_id: str) -> str:  # type: ignore[no-untyped-def]
    """Show progress until the experiment ends; Ctrl-C stops it. Returns the final state name."""
    from archloop.v1 import controller_pb2

    interrupted = False

    def on_interrupt(signum: int, frame: object) -> None:
        nonlocal interrupted
        interrupted = True

    previous = signal.signal(signal.SIGINT, on_interrupt)
    try:
        with Live(console=console, refresh_per_second=4, transient=False) as live:
            while True:
                experiment = stub.GetExperiment(
                    controller_pb2.GetExperimentRequest(experiment_id=experiment_id), timeout=30
                ).experiment
                live.update(_progress_line(experiment))
                state = controller_pb2.ExperimentState.Name(experiment.state).removeprefix(
                    "EXPERIMENT_STATE_"
                )
                if state in ("COMPLETED", "FAILED", "STOPPED"):
                    if state == "FAILED":
                        console.print(f"[red]failed:[/] {experiment.error}")
                    return state
                if interrupted:
                    live.update(_progress_line(experiment) + " · stopping…")
                    stub.StopExperiment(
                        controller_pb2.StopExperimentRequest(experiment_id=experiment_id), timeout=120
                    )
                    return "STOPPED"
                time.sleep(0.5)
    finally:
        signal.signal(signal.SIGINT, previous)


def _finish(stub, experiment_id: str, state: str, out: Path) -> int:  # type: ignore[no-untyped-def]
    from archloop.v1 import controller_pb2

    if state == "STOPPED":
        console.print(f"stopped; continue with: archloop run --resume {experiment_id}")
        return EXIT_INTERRUPTED
    report = stub.GetReport(
        controller_pb2.GetReportRequest(experiment_id=experiment_id, output_dir=str(out.resolve())),
        timeout=600,
    )
    Console().print(_cycle_table(report.cycles, f"{experiment_id} ({state.lower()})"))
    console.print(f"report: {Path(report.output_dir) / 'report.html'}")
    return EXIT_OK if state == "COMPLETED" else EXIT_FAILED


def cmd_run(args: argparse.Namespace) -> int:
    from archloop.localstack import Stack, StackError
    from archloop.v1 import controller_pb2

    try:
        config = None if args.resume else _config(args)
    except InvalidArgument as exc:
        print(f"archloop run: {exc}", file=sys.stderr)
        return EXIT_USAGE
    home = _home(args)
    address = _controller_address(args)
    stack = None
    if address is None:
        corpus_dir = _ensure_corpus(home)
        console.print(f"starting the local stack in {home} …")
        stack = Stack(home, corpus_dir=corpus_dir)
        try:
            address = stack.start().address("controller")
        except StackError as exc:
            stack.stop()
            print(f"archloop run: {exc}", file=sys.stderr)
            return EXIT_FAILED
    try:
        stub = _stub(address)
        if args.resume:
            experiment_id = args.resume
            stub.ResumeExperiment(
                controller_pb2.ResumeExperimentRequest(experiment_id=experiment_id), timeout=60
            )
        else:
            assert config is not None
            stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
            experiment_id = args.name or f"{config.name or 'experiment'}-{stamp}"
            stub.StartExperiment(
                controller_pb2.StartExperimentRequest(experiment_id=experiment_id, config=config), timeout=120
            )
        console.print(f"experiment {experiment_id} on {address}")
        state = _follow(stub, experiment_id)
        out = Path(args.out) if args.out else Path("archloop-runs") / experiment_id
        return _finish(stub, experiment_id, state, out)
    except grpc.RpcError as exc:
        code = exc.code()  # type: ignore[attr-defined]
        print(f"archloop run: {code.name}: {exc.details()}", file=sys.stderr)  # type: ignore[attr-defined]
        return (
            EXIT_USAGE
            if code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND)
            else EXIT_FAILED
        )
    finally:
        if stack is not None:
            stack.stop()


def cmd_report(args: argparse.Namespace) -> int:
    """From the controller when one runs, else straight from the ledger file."""
    out = Path(args.out) if args.out else Path("archloop-runs") / args.experiment
    address = _controller_address(args)
    if address is not None and not args.ledger:
        from archloop.v1 import controller_pb2

        try:
            report = _stub(address).GetReport(
                controller_pb2.GetReportRequest(experiment_id=args.experiment, output_dir=str(out.resolve())),
                timeout=600,
            )
        except grpc.RpcError as exc:
            print(f"archloop report: {exc.code().name}: {exc.details()}", file=sys.stderr)  # type: ignore[attr-defined]
            return EXIT_FAILED
        summaries = report.cycles
    else:
        from archloop.corpus import CORPUS_VERSION
        from services.controller.ledger import Ledger
        from services.controller.report import write_report

        ledger_path = (
            Path(args.ledger) if args.ledger else _home(args) / "data" / "controller" / "ledger.sqlite3"
        )
        if not ledger_path.exists():
            print(f"archloop report: no ledger at {ledger_path} (and no controller running)", file=sys.stderr)
            return EXIT_FAILED
        ledger = Ledger(ledger_path)
        if ledger.experiment(args.experiment) is None:
            print(f"archloop report: no experiment {args.experiment!r} in {ledger_path}", file=sys.stderr)
            return EXIT_FAILED
        corpus_dir = Path(os.environ.get("ARCHLOOP_CORPUS_DIR") or _home(args) / "corpus" / CORPUS_VERSION)
        summaries, _ = write_report(ledger, args.experiment, out, corpus_dir)
    Console().print(_cycle_table(summaries, args.experiment))
    print(out / "report.html")
    return EXIT_OK


def cmd_experiments(args: argparse.Namespace) -> int:
    from google.protobuf.json_format import MessageToDict

    from archloop.v1 import controller_pb2

    address = _controller_address(args)
    if address is None:
        print(
            "archloop experiments: no controller (give --controller, or start `archloop up`)", file=sys.stderr
        )
        return EXIT_FAILED
    stub = _stub(address)
    try:
        if args.experiments_command == "list":
            response = stub.ListExperiments(controller_pb2.ListExperimentsRequest(), timeout=30)
            table = Table(title="experiments")
            for column in ("experiment", "state", "cycle", "generated", "admitted", "corpus"):
                table.add_column(column)
            for e in response.experiments:
                state = controller_pb2.ExperimentState.Name(e.state).removeprefix("EXPERIMENT_STATE_")
                table.add_row(
                    e.experiment_id,
                    state,
                    f"{e.current_cycle}/{e.config.cycles}",
                    str(e.candidates_generated),
                    str(e.candidates_admitted),
                    str(e.corpus_size),
                )
            Console().print(table)
        elif args.experiments_command == "show":
            e = stub.GetExperiment(
                controller_pb2.GetExperimentRequest(experiment_id=args.experiment), timeout=30
            )
            print(json.dumps(MessageToDict(e.experiment, preserving_proto_field_name=True), indent=2))
        else:
            e = stub.StopExperiment(
                controller_pb2.StopExperimentRequest(experiment_id=args.experiment), timeout=120
            )
            print(controller_pb2.ExperimentState.Name(e.experiment.state).removeprefix("EXPERIMENT_STATE_"))
    except grpc.RpcError as exc:
        print(f"archloop experiments: {exc.code().name}: {exc.details()}", file=sys.stderr)  # type: ignore[attr-defined]
        return EXIT_FAILED
    return EXIT_OK


def cmd_watch(args: argparse.Namespace) -> int:
    """Follow the ARCHLOOP JetStream stream: every event from the start, live, one line each."""
    import asyncio

    from archloop.localstack import StackState

    url = args.nats_url or os.environ.get("ARCHLOOP_NATS_URL")
    if not url:
        state = StackState.load(_home(args))
        url = next((c.address for c in state.components if c.name == "nats"), None) if state else None
    if not url:
        print("archloop watch: no NATS URL (give --nats-url, or start `archloop up`)", file=sys.stderr)
        return EXIT_FAILED

    async def follow() -> int:
        from google.protobuf.json_format import MessageToDict

        from archloop.eventbus import SUBJECT_PREFIX, connect_nats
        from archloop.v1 import events_pb2

        client = await connect_nats(url, name="archloop-watch")
        subject = f"{SUBJECT_PREFIX}.events.{args.experiment or '*'}.>"
        subscription = await client.jetstream().subscribe(subject, ordered_consumer=True)
        try:
            while True:
                message = await subscription.next_msg(timeout=None)
                event = events_pb2.Event.FromString(message.data)
                kind = event.WhichOneof("payload")
                payload = MessageToDict(getattr(event, kind), preserving_proto_field_name=True)
                print(f"{event.experiment_id} cycle {event.cycle} {kind} {json.dumps(payload)}", flush=True)
                if (
                    args.experiment
                    and kind in ("experiment_completed", "experiment_failed")
                    and not args.follow
                ):
                    return EXIT_OK
        finally:
            await client.close()

    try:
        return asyncio.run(follow())
    except KeyboardInterrupt:
        return EXIT_OK


def add_parsers(commands: argparse._SubParsersAction) -> None:
    run = commands.add_parser("run", help="run an experiment: the whole loop (the main job)")
    run.add_argument("--config", help="experiment YAML (ExperimentConfig fields) [default: the embedded one]")
    run.add_argument("--cycles", type=int)
    run.add_argument("--candidates", type=int, help="candidates per cycle")
    run.add_argument("--dataset", help="digits (offline), cifar10, cifar100, svhn, mnist, fashion_mnist")
    run.add_argument("--mode", choices=("full", "delta", "factor"))
    run.add_argument("--seed", type=int)
    run.add_argument("--name", help="experiment id [default <config name>-<UTC time>]")
    run.add_argument("--out", help="report folder [default archloop-runs/<experiment>]")
    run.add_argument("--controller", help="address of a running controller [env ARCHLOOP_CONTROLLER_ADDR]")
    run.add_argument("--resume", metavar="EXP", help="continue a stopped or failed experiment")
    run.set_defaults(func=cmd_run)

    report = commands.add_parser("report", help="write an experiment's report (HTML, CSV, JSON, plots)")
    report.add_argument("experiment")
    report.add_argument("--out", help="folder [default archloop-runs/<experiment>]")
    report.add_argument("--controller")
    report.add_argument("--ledger", help="read this ledger file directly (no controller needed)")
    report.set_defaults(func=cmd_report)

    experiments = commands.add_parser("experiments", help="list, show or stop experiments")
    sub = experiments.add_subparsers(dest="experiments_command", required=True, metavar="COMMAND")
    sub.add_parser("list")
    for name in ("show", "stop"):
        sub.add_parser(name).add_argument("experiment")
    experiments.add_argument("--controller")
    experiments.set_defaults(func=cmd_experiments)

    watch = commands.add_parser("watch", help="follow the cycle events on NATS")
    watch.add_argument("experiment", nargs="?")
    watch.add_argument("--nats-url")
    watch.add_argument("--follow", action="store_true", help="keep following after the experiment ends")
    watch.set_defaults(func=cmd_watch)
