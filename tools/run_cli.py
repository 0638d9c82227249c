"""The main job and its companions.

    archloop run [--config FILE] [--cycles N] [--candidates N] [--dataset NAME] [--mode M] [--seed S]
                 [--out DIR] [--name EXP] [--controller ADDR]
    archloop run --resume EXP
    archloop report EXP [--out DIR]
    archloop experiments list | show EXP | stop EXP
    archloop watch [EXP]
    archloop dashboard [--port 8765]  the web dashboard over the controller and the cycle events

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
import sys
from datetime import UTC, datetime
from pathlib import Path

import grpc
from rich.console import Console
from rich.table import Table

from archloop import datasets
from archloop.errors import InvalidArgument
from services.controller.states import short_name
from tools.run_view import console, cycle_table, follow

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
MAX_RESTARTS_HELP = (
    "restarts of one component within the window before the supervisor gives up "
    "[env ARCHLOOP_STACK_MAX_RESTARTS, default 5; window ARCHLOOP_STACK_RESTART_WINDOW_SECONDS, 300]"
)


def _home(args: argparse.Namespace) -> Path:
    from archloop.paths import archloop_home

    return Path(args.home) if getattr(args, "home", None) else archloop_home()


def _controller_address(args: argparse.Namespace) -> str | None:
    """--controller, ARCHLOOP_CONTROLLER_ADDR, or a running local stack's controller; None: none running."""
    from tools.localstack import StackState

    if getattr(args, "controller", None):
        return args.controller
    if os.environ.get("ARCHLOOP_CONTROLLER_ADDR"):
        return os.environ["ARCHLOOP_CONTROLLER_ADDR"]
    state = StackState.load(_home(args))
    if state is not None and state.supervisor_alive():
        return state.address("controller")
    return None


def _stub(address: str):
    from archloop.clients import channel_options
    from archloop.v1 import controller_pb2_grpc

    channel = grpc.insecure_channel(address, options=channel_options())
    return controller_pb2_grpc.ControllerServiceStub(channel)


def _config(args: argparse.Namespace):
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
    """The corpus, built first when missing; its architecture graphs, recorded first when it has none
    (a corpus built before they existed)."""
    from archloop.corpus import read_architectures
    from archloop.paths import corpus_dir as default_corpus_dir
    from tools.corpus_architecture import record_architectures, summary
    from tools.corpus_build import build_corpus

    corpus_dir = default_corpus_dir(home=home)
    if not (corpus_dir / "examples.jsonl").is_file():
        console.print(f"building the LEMUR corpus into {corpus_dir} (once, about a minute)")
        build_corpus(corpus_dir)
    if not read_architectures(corpus_dir):
        console.print(f"recording the architecture graphs of {corpus_dir} (once, about a minute)")
        console.print(summary(record_architectures(corpus_dir)))
    return corpus_dir


def _finish(stub, experiment_id: str, state: str, out: Path, dashboard: bool) -> int:
    from archloop.v1 import controller_pb2

    if state == "STOPPED":
        console.print(f"stopped; continue with: archloop run --resume {experiment_id}")
        return EXIT_INTERRUPTED
    report = stub.GetReport(
        controller_pb2.GetReportRequest(experiment_id=experiment_id, output_dir=str(out.resolve())),
        timeout=600,
    )
    Console().print(cycle_table(report.cycles, f"{experiment_id} ({state.lower()})"))
    console.print(f"report: {Path(report.output_dir) / 'report.html'} (one file: it opens offline)")
    if dashboard:
        console.print("the dashboard stopped with the run: `archloop up`, then `archloop dashboard`")
    return EXIT_OK if state == "COMPLETED" else EXIT_FAILED


def cmd_run(args: argparse.Namespace) -> int:
    from archloop.v1 import controller_pb2
    from tools.localstack import Liveness, RestartPolicy, Stack, StackError
    from tools.stack_ledger import base_model_of, park_unfinished, record_failure

    try:
        config = None if args.resume else _config(args)
        policy, liveness = RestartPolicy.from_env(args.max_restarts), Liveness.from_env()
    except (InvalidArgument, StackError) as exc:
        print(f"archloop run: {exc}", file=sys.stderr)
        return EXIT_USAGE
    home = _home(args)
    address = _controller_address(args)
    stack = started = dashboard = None
    if address is None:
        corpus_dir = _ensure_corpus(home)
        if config is not None:
            from archloop.basemodel import BaseModelNotFound, CorpusMismatch, check_corpus_binding

            try:  # before anything starts (the controller checks again: it may be told of another corpus)
                check_corpus_binding(config.base_model, corpus_dir)
            except (BaseModelNotFound, CorpusMismatch) as exc:
                print(f"archloop run: {exc}", file=sys.stderr)
                return EXIT_USAGE
        for left in park_unfinished(home):
            console.print(
                f"{left} was left unfinished by an earlier run: not resumed now "
                f"(continue it with `archloop run --resume {left}`)"
            )
        console.print(f"starting the local stack in {home} …")
        # the generator serves the experiment's base model (the controller refuses one that does not)
        model = config.base_model if config is not None else base_model_of(home, args.resume)
        stack = Stack(
            home, corpus_dir=corpus_dir, restart_policy=policy, generator_model=model, liveness=liveness
        )
        try:
            started = stack.start()
            address = started.address("controller")
        except StackError as exc:
            stack.stop()
            print(f"archloop run: {exc}", file=sys.stderr)
            return EXIT_FAILED
        stack.supervise_in_background(lambda line: console.print(f"[yellow]supervisor:[/] {line}"))
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
        dashboard = _dashboard_beside(args, address, started, experiment_id)
        state = follow(stub, experiment_id, stack)
        if state == "GAVE_UP":
            assert stack is not None and stack.failure is not None
            stack.stop()
            record_failure(home, stack.failure.sentence, [experiment_id])
            print(f"archloop run: {experiment_id} FAILED: {stack.failure.sentence}", file=sys.stderr)
            console.print(f"continue with: archloop run --resume {experiment_id}")
            return EXIT_FAILED
        out = Path(args.out) if args.out else Path("archloop-runs") / experiment_id
        return _finish(stub, experiment_id, state, out, dashboard is not None)
    except grpc.RpcError as exc:
        code = exc.code()
        print(f"archloop run: {code.name}: {exc.details()}", file=sys.stderr)
        return (
            EXIT_USAGE
            if code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND)
            else EXIT_FAILED
        )
    finally:
        if dashboard is not None:  # its live-update streams close their NATS subscriptions first
            dashboard.stop()
        if stack is not None:
            stack.stop()


def _dashboard_beside(args: argparse.Namespace, controller: str, started, experiment_id: str):
    """Serve the web dashboard while the run lasts (--dashboard-port; 0 = none) and print its address;
    the served dashboard (tools.dashboard.app.Served), or None. A dashboard that cannot start is said in
    one line; the run goes on."""
    import dataclasses

    from tools.dashboard.app import Settings, serve_in_background

    if not args.dashboard_port:
        return None
    if started is not None:  # the stack this run brought up
        settings = Settings(controller, started.address("nats"), started.address("novelty"))
    else:
        settings = dataclasses.replace(dashboard_settings(args), controller=controller)
    try:
        served = serve_in_background(settings, port=args.dashboard_port)
    except (RuntimeError, OSError) as exc:
        console.print(f"[yellow]no dashboard:[/] {exc}")
        return None
    console.print(f"dashboard: {served.url}experiments/{experiment_id}")
    return served


def cmd_report(args: argparse.Namespace) -> int:
    """From the controller when one runs, else straight from the ledger file. With several experiments,
    also comparison.csv (NNGPT Table 3: ablations, and the delta/full valid-rate ratio)."""
    from services.controller.report import comparison_rows, write_comparison

    out = Path(args.out) if args.out else Path("archloop-runs") / args.experiment[0]
    address = _controller_address(args)
    items = []
    try:
        for index, experiment_id in enumerate(args.experiment):
            folder = out if index == 0 else out / experiment_id
            if address is not None and not args.ledger:
                items.append(_report_from_controller(address, experiment_id, folder))
            else:
                items.append(_report_from_ledger(args, experiment_id, folder))
    except LookupError as exc:
        print(f"archloop report: {exc.args[0]}", file=sys.stderr)
        return EXIT_FAILED
    for experiment_id, _config, summaries in items:
        Console().print(cycle_table(summaries, experiment_id))
    if len(items) > 1:
        rows = comparison_rows(items)
        table = Table(title="comparison (NNGPT Table 3)")
        for column in ("experiment", "mode", "ablations", "valid_fraction", "best_accuracy", "admitted"):
            table.add_column(column)
        for r in rows:
            table.add_row(r["experiment"], r["mode"], r["ablations"], f"{r['valid_fraction']:.1%}",
                          f"{r['best_accuracy']:.3f}", str(r["admitted"]))  # fmt: skip
        Console().print(table)
        for path in write_comparison(items, out):
            print(path)
    print(out / "report.html")
    return EXIT_OK


def _report_from_controller(address: str, experiment_id: str, out: Path) -> tuple:
    from archloop.v1 import controller_pb2

    stub = _stub(address)
    try:
        config = stub.GetExperiment(
            controller_pb2.GetExperimentRequest(experiment_id=experiment_id), timeout=30
        ).experiment.config
        request = controller_pb2.GetReportRequest(experiment_id=experiment_id, output_dir=str(out.resolve()))
        report = stub.GetReport(request, timeout=600)
    except grpc.RpcError as exc:
        raise LookupError(f"{exc.code().name}: {exc.details()}") from None
    return experiment_id, config, list(report.cycles)


def _report_from_ledger(args: argparse.Namespace, experiment_id: str, out: Path) -> tuple:
    from archloop.paths import corpus_dir as default_corpus_dir
    from services.controller import config as experiment_config
    from services.controller.ledger import Ledger
    from services.controller.report import write_report

    home = _home(args)
    ledger_path = Path(args.ledger) if args.ledger else home / "data" / "controller" / "ledger.sqlite3"
    if not ledger_path.exists():
        raise LookupError(f"no ledger at {ledger_path} (and no controller running)")
    ledger = Ledger(ledger_path)
    row = ledger.experiment(experiment_id)
    if row is None:
        raise LookupError(f"no experiment {experiment_id!r} in {ledger_path}")
    summaries, _ = write_report(ledger, experiment_id, out, default_corpus_dir(home=home))
    return experiment_id, experiment_config.from_json(row.config_json), summaries


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
                state = short_name(controller_pb2.ExperimentState, e.state)
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
            print(short_name(controller_pb2.ExperimentState, e.experiment.state))
    except grpc.RpcError as exc:
        print(f"archloop experiments: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def cmd_watch(args: argparse.Namespace) -> int:
    """Follow the ARCHLOOP JetStream stream: every event from the start, live, one line each."""
    import asyncio

    from tools.localstack import StackState

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


def dashboard_settings(args: argparse.Namespace):
    """The dashboard's peers and auth: flags, then ARCHLOOP_* variables, then the running local stack."""
    from archloop.clients import ChannelSecurity
    from tools.dashboard.app import Settings
    from tools.localstack import StackState

    state = StackState.load(_home(args))
    recorded = {c.name: c.address for c in state.components} if state is not None else {}
    controller = _controller_address(args) or recorded.get("controller", "")

    def given(flag: str, variable: str) -> str:
        return getattr(args, flag, None) or os.environ.get(variable, "")

    nats = given("nats_url", "ARCHLOOP_NATS_URL") or recorded.get("nats", "")
    novelty = given("novelty", "ARCHLOOP_NOVELTY_ADDR") or recorded.get("novelty", "")

    peers = ChannelSecurity(given("peer_tls_ca_file", "ARCHLOOP_PEER_TLS_CA_FILE"),
                            given("peer_token_file", "ARCHLOOP_PEER_TOKEN_FILE"))  # fmt: skip
    token_file = given("auth_token_file", "ARCHLOOP_AUTH_TOKEN_FILE")
    return Settings(controller, nats, novelty, auth_token_file=token_file, peers=peers)


LOOPBACK = ("127.0.0.1", "::1", "localhost")
# what `archloop dashboard` reads (its flags' [env …]); the Kubernetes test holds the pod to these
DASHBOARD_VARIABLES = (
    "ARCHLOOP_HOST", "ARCHLOOP_DASHBOARD_PORT", "ARCHLOOP_CONTROLLER_ADDR", "ARCHLOOP_NATS_URL",
    "ARCHLOOP_NOVELTY_ADDR", "ARCHLOOP_AUTH_TOKEN_FILE", "ARCHLOOP_PEER_TOKEN_FILE",
    "ARCHLOOP_PEER_TLS_CA_FILE",
)  # fmt: skip


def cmd_dashboard(args: argparse.Namespace) -> int:
    """Serve the web dashboard until Ctrl-C. Off loopback it wants a token (its pages stop and resume
    experiments): --auth-token-file, or --no-auth said out loud."""
    import uvicorn

    from tools.dashboard.app import create_app

    settings = dashboard_settings(args)
    if not settings.controller:
        print("archloop dashboard: no controller (give --controller, or `archloop up`)", file=sys.stderr)
        return EXIT_USAGE
    if args.port is None:
        variable = os.environ.get("ARCHLOOP_DASHBOARD_PORT", "8765")
        if not variable.isdigit():
            print(f"archloop dashboard: ARCHLOOP_DASHBOARD_PORT={variable!r} is not a port", file=sys.stderr)
            return EXIT_USAGE
        args.port = int(variable)
    if not 0 <= args.port <= 65535:
        print(f"archloop dashboard: --port {args.port} is not a port", file=sys.stderr)
        return EXIT_USAGE
    if args.host not in LOOPBACK and not settings.auth_token_file and not args.no_auth:
        print(
            f"archloop dashboard: --host {args.host} is reachable from other machines: give "
            "--auth-token-file (or ARCHLOOP_AUTH_TOKEN_FILE), or --no-auth to serve it to anyone",
            file=sys.stderr,
        )
        return EXIT_USAGE
    try:
        app = create_app(settings)
    except ValueError as exc:
        print(f"archloop dashboard: --auth-token-file: {exc}", file=sys.stderr)
        return EXIT_USAGE
    live = f"from {settings.nats_url}" if settings.nats_url else "off"
    auth = "token required" if settings.auth_token_file else "no auth"
    address = f"http://{args.host}:{args.port}/"
    print(f"dashboard: {address} (controller {settings.controller}, live events {live}, {auth})", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", proxy_headers=True)
    return EXIT_OK


def add_parsers(commands: argparse._SubParsersAction) -> None:
    run = commands.add_parser("run", help="run an experiment: the whole loop (the main job)")
    run.add_argument("--config", help="experiment YAML (ExperimentConfig fields) [default: the embedded one]")
    run.add_argument("--cycles", type=int)
    run.add_argument("--candidates", type=int, help="candidates per cycle")
    run.add_argument("--dataset", help="digits (offline), " + ", ".join(datasets.TORCHVISION))
    run.add_argument("--mode", choices=("full", "delta", "factor", "region", "engine", "corpus_sample"))
    run.add_argument("--seed", type=int)
    run.add_argument("--name", help="experiment id [default <config name>-<UTC time>]")
    run.add_argument("--out", help="report folder [default archloop-runs/<experiment>]")
    run.add_argument("--controller", help="address of a running controller [env ARCHLOOP_CONTROLLER_ADDR]")
    run.add_argument("--resume", metavar="EXP", help="continue a stopped or failed experiment")
    run.add_argument("--max-restarts", type=int, help=MAX_RESTARTS_HELP + " (the stack it brings up)")
    run.add_argument(
        "--dashboard-port",
        type=int,
        default=8765,
        help="the web dashboard's port while the run lasts (0 = none; taken: a free one)",
    )
    run.set_defaults(func=cmd_run)

    report = commands.add_parser(
        "report", help="an experiment's report (HTML, CSV, JSON, plots); comparisons"
    )
    report.add_argument("experiment", nargs="+", help="one or more (the others are compared with the first)")
    report.add_argument("--out", help="folder [default archloop-runs/<first experiment>]")
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

    dashboard = commands.add_parser("dashboard", help="the web dashboard")
    dashboard.add_argument(
        "--host", default=os.environ.get("ARCHLOOP_HOST", "127.0.0.1"),
        help="interface [env ARCHLOOP_HOST, default 127.0.0.1: this machine]",
    )  # fmt: skip
    dashboard.add_argument("--port", type=int, help="[env ARCHLOOP_DASHBOARD_PORT, default 8765]")
    dashboard.add_argument(
        "--auth-token-file",
        help="visitors must show this bearer token (header or login form) [env ARCHLOOP_AUTH_TOKEN_FILE]",
    )
    dashboard.add_argument("--no-auth", action="store_true", help="serve off loopback without a token")
    dashboard.add_argument(
        "--peer-token-file", help="the services' bearer token [env ARCHLOOP_PEER_TOKEN_FILE]"
    )
    dashboard.add_argument("--peer-tls-ca-file", help="the services' TLS CA [env ARCHLOOP_PEER_TLS_CA_FILE]")
    dashboard.add_argument("--controller", help="[env ARCHLOOP_CONTROLLER_ADDR, else the local stack's]")
    dashboard.add_argument("--nats-url", help="live cycle events [env ARCHLOOP_NATS_URL, else the stack's]")
    dashboard.add_argument("--novelty", help="neighbours [env ARCHLOOP_NOVELTY_ADDR, else the stack's]")
    dashboard.set_defaults(func=cmd_dashboard)
