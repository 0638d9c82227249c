"""`archloop novelty create|check|add|import|stats`: the novelty service from the shell.

The service address comes from --addr, else ARCHLOOP_NOVELTY_ADDR, else the running local stack
(`archloop up`), else 127.0.0.1:50054. `--json` prints the response as JSON (proto field names).
Errors print `archloop novelty <cmd>: <STATUS>: <message>` and exit 1.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from pathlib import Path

DEFAULT_ADDR = "127.0.0.1:50054"


def novelty_address(explicit: str | None) -> str:
    if explicit:
        return explicit
    if os.environ.get("ARCHLOOP_NOVELTY_ADDR"):
        return os.environ["ARCHLOOP_NOVELTY_ADDR"]
    from archloop.paths import archloop_home
    from tools.localstack import StackState

    state = StackState.load(archloop_home())
    if state is not None and state.supervisor_alive():
        return state.address("novelty")
    return DEFAULT_ADDR


def _read_source(path: str) -> str:
    if path == "-":
        return sys.stdin.read()
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise SystemExit(f"archloop novelty: cannot read {path}: {exc.strerror}") from None


def _print(message, as_json: bool, text: str) -> None:
    from google.protobuf.json_format import MessageToJson

    if as_json:
        print(
            MessageToJson(
                message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
            )
        )
    else:
        print(text)


def cmd_create(args: argparse.Namespace, client) -> int:
    settings = {
        "near_duplicate_threshold": args.threshold,
        "shingle_size": args.shingle_size,
        "num_permutations": args.num_permutations,
        "store_shingles": args.store_shingles,
    }
    collection = client.create_collection(
        args.name, exist_ok=args.exist_ok, **{k: v for k, v in settings.items() if v}
    )
    _print(collection, args.json, f"collection {collection.name}: {collection.entry_count} entries")
    return 0


def cmd_check(args: argparse.Namespace, client) -> int:
    result = client.check(_read_source(args.file), args.collection)
    lines = [
        f"{m.collection}: max J={m.max_jaccard:.3f} nearest={m.nearest_entry_id or '-'} "
        f"{'NEAR-DUPLICATE' if m.near_duplicate else 'novel'}"
        for m in result.matches
    ]
    _print(result, args.json, "\n".join(lines))
    return 0


def cmd_add(args: argparse.Namespace, client) -> int:
    entry_id = args.id or (Path(args.file).stem if args.file != "-" else "")
    if args.check:
        result = client.check_and_admit(args.collection, entry_id, _read_source(args.file), args.check)
        _print(result, args.json, "admitted" if result.admitted else f"rejected: {result.reason}")
        return 0
    created = client.admit(args.collection, entry_id, _read_source(args.file))
    from archloop.v1 import novelty_pb2

    _print(
        novelty_pb2.AdmitEntryResponse(created=created), args.json, "added" if created else "already present"
    )
    return 0


def _sources(paths: list[str]) -> Iterator[tuple[str, str]]:
    for raw in paths:
        path = Path(raw)
        files = sorted(path.rglob("*.py")) if path.is_dir() else [path]
        for file in files:
            yield file.stem, _read_source(str(file))


def cmd_import(args: argparse.Namespace, client) -> int:
    summary = client.import_entries(
        args.collection, _sources(args.paths), skip_near_duplicates=args.skip_near_duplicates
    )
    text = (
        f"received {summary.received}, created {summary.created}, unchanged {summary.unchanged}, "
        f"skipped near-duplicates {summary.skipped_near_duplicates} in {summary.duration_seconds:.1f} s"
    )
    _print(summary, args.json, text)
    return 0


def cmd_stats(args: argparse.Namespace, client) -> int:
    stats = client.stats()
    lines = [
        f"{c.collection.name}: {c.collection.entry_count} entries (LSH {c.lsh_bands}×{c.lsh_rows})"
        for c in stats.collections
    ]
    lines.append(f"storage {stats.storage_path}: {stats.storage_bytes} bytes")
    _print(stats, args.json, "\n".join(lines))
    return 0


def add_parser(commands: argparse._SubParsersAction) -> None:
    novelty = commands.add_parser("novelty", help="talk to the novelty service")
    novelty.add_argument(
        "--addr", help=f"service address [env ARCHLOOP_NOVELTY_ADDR; default: local stack or {DEFAULT_ADDR}]"
    )
    novelty.add_argument("--timeout", type=float, default=30.0, help="deadline per call in seconds")
    novelty.add_argument(
        "--tls-ca",
        help="PEM CA of a service that serves TLS [env ARCHLOOP_NOVELTY_TLS_CA; default: plaintext]",
    )
    novelty.add_argument(
        "--token-file", help="file holding the service's bearer token [env ARCHLOOP_NOVELTY_TOKEN_FILE]"
    )
    sub = novelty.add_subparsers(dest="novelty_command", required=True, metavar="COMMAND")

    def command(name: str, func, help: str) -> argparse.ArgumentParser:
        parser = sub.add_parser(name, help=help)
        parser.add_argument("--json", action="store_true", help="print the response as JSON")
        parser.set_defaults(novelty_func=func)
        return parser

    create = command("create", cmd_create, "create a collection")
    create.add_argument("name")
    create.add_argument("--threshold", type=float, help="near-duplicate threshold τ (default 0.90)")
    create.add_argument("--shingle-size", type=int, help="tokens per shingle (default 10)")
    create.add_argument("--num-permutations", type=int, help="MinHash permutations (default 256)")
    create.add_argument("--store-shingles", action="store_true", help="keep shingles to report exact Jaccard")
    create.add_argument("--exist-ok", action="store_true", help="succeed if it exists with the same settings")

    check = command("check", cmd_check, "similarity of a source file to collections")
    check.add_argument("--collection", action="append", required=True, help="repeat for several")
    check.add_argument("file", help="a Python file, or - for stdin")

    add = command("add", cmd_add, "admit a source file into a collection")
    add.add_argument("--collection", required=True)
    add.add_argument("--id", help="entry id (default: the file name without .py)")
    add.add_argument("--check", action="append", help="atomic check-and-admit against these collections too")
    add.add_argument("file")

    imp = command("import", cmd_import, "bulk-import .py files (directories are searched recursively)")
    imp.add_argument("--collection", required=True)
    imp.add_argument("--skip-near-duplicates", action="store_true")
    imp.add_argument("paths", nargs="+")

    command("stats", cmd_stats, "collections, LSH shape, storage")
    novelty.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import grpc

    from archloop.novelty_client import NoveltyClient

    try:
        client = NoveltyClient(
            novelty_address(args.addr),
            timeout_seconds=args.timeout,
            tls_ca_file=args.tls_ca or os.environ.get("ARCHLOOP_NOVELTY_TLS_CA", ""),
            token_file=args.token_file or os.environ.get("ARCHLOOP_NOVELTY_TOKEN_FILE", ""),
        )
    except ValueError as exc:
        print(f"archloop novelty: {exc}", file=sys.stderr)
        return 2
    with client:
        try:
            return args.novelty_func(args, client)
        except grpc.RpcError as err:
            print(
                f"archloop novelty {args.novelty_command}: {err.code().name}: {err.details()}",
                file=sys.stderr,
            )
            return 1
