"""`archloop generate`: sample candidates for people tuning prompts and decoding.

    archloop generate --n 8 --mode full --out runs/try1
    archloop generate --n 4 --mode delta --baseline mine.py --adapter c3 --adapter-path artifacts/e/c3 --out d
    archloop generate --n 8 --mode factor --factor activation --factor width --out d --generator :50052

Without --generator the generator's own code runs in this process (the local backend, or --backend tgi
with --tgi-url); with it, a running generator service is called. Writes `<candidate_id>.py` for every
candidate with code, and `candidates.json`: every candidate's metadata (mode, factor, adapter, prompt
sha256, tokens in/out, latency, raw response, errors). Exit 0 when every candidate has code, 3 when some
have none (their errors are in candidates.json), 2 on bad usage, 1 when the backend fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from archloop import prompts
from archloop.errors import ArchLoopError, InvalidArgument

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_SOME_EMPTY = 0, 1, 2, 3
BASELINE = prompts.BASELINE_FILE
_MODES = ("full", "delta", "factor", "region")  # GenerationMode values, named without their prefix
_FALLBACKS = ("none", "reprompt", "full")  # DeltaFallback values


def _request(args: argparse.Namespace):
    from archloop.v1 import common_pb2, generator_pb2

    baseline = ""
    if args.mode in ("delta", "factor", "region"):
        path = Path(args.baseline) if args.baseline else BASELINE
        try:
            baseline = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidArgument("--baseline", f"cannot read {path}: {exc}") from None
    return generator_pb2.GenerateCandidatesRequest(
        experiment_id=args.experiment,
        cycle=args.cycle,
        task=common_pb2.TaskSpec(
            dataset=args.dataset,
            input_shape=args.input_shape,
            num_classes=args.num_classes,
            param_budget=args.param_budget,
        ),
        mode=f"GENERATION_MODE_{args.mode.upper()}",
        decoding=common_pb2.DecodingParams(
            temperature=args.temperature,  # None: not set, the service's default
            top_k=args.top_k,
            top_p=args.top_p,
            max_new_tokens=args.max_new_tokens,
        ),
        adapter=common_pb2.AdapterRef(name=args.adapter or "", path=args.adapter_path or ""),
        seed=args.seed,
        n=args.n,
        baseline_code=baseline,
        factors=args.factor or [],
        delta_fallback=f"DELTA_FALLBACK_{args.delta_fallback.upper()}",
        max_reprompts=args.max_reprompts,
        repair=args.repair,
    )


async def _local(args: argparse.Namespace, request) -> list:
    from services.generator.servicer import GeneratorServicer
    from services.generator.settings import GeneratorSettings

    settings = GeneratorSettings(
        backend=args.backend,
        model=args.model,
        tgi_url=args.tgi_url,
        batch_size=args.batch_size,
        max_candidates=max(args.n, 1),
        threads=args.threads,
    )
    servicer = GeneratorServicer(settings)
    await servicer.start()
    try:
        return [response.candidate async for response in servicer.GenerateCandidates(request, None)]
    finally:
        await servicer.stop()


def _remote(target: str, request) -> list:
    import grpc

    from archloop.clients import channel_options
    from archloop.v1 import generator_pb2_grpc

    with grpc.insecure_channel(target, options=channel_options()) as channel:
        stub = generator_pb2_grpc.GeneratorServiceStub(channel)
        return [response.candidate for response in stub.GenerateCandidates(request, timeout=24 * 3600)]


def cmd_generate(args: argparse.Namespace) -> int:
    from google.protobuf.json_format import MessageToDict

    if args.n < 1:
        print(f"archloop generate: --n {args.n} must be at least 1", file=sys.stderr)
        return EXIT_USAGE
    out = Path(args.out)
    try:
        request = _request(args)
        if args.generator:
            candidates = _remote(args.generator, request)
        else:
            candidates = asyncio.run(_local(args, request))
    except InvalidArgument as exc:
        print(f"archloop generate: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ArchLoopError as exc:
        print(f"archloop generate: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except Exception as exc:
        details = getattr(exc, "details", None)
        code = getattr(exc, "code", None)
        if callable(details) and callable(code):
            print(f"archloop generate: {code().name}: {details()}", file=sys.stderr)
            return EXIT_USAGE if code().name == "INVALID_ARGUMENT" else EXIT_FAILED
        raise
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for candidate in candidates:
        row = MessageToDict(
            candidate, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
        )
        code = row.pop("code")
        row["file"] = ""
        if code:
            path = out / f"{candidate.candidate_id}.py"
            path.write_text(code, encoding="utf-8")
            row["file"] = path.name
        rows.append(row)
    (out / "candidates.json").write_text(
        json.dumps(rows, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    empty = sum(not c.code for c in candidates)
    tokens = sum(c.generation.completion_tokens for c in candidates)
    seconds = sum(c.generation.latency_seconds for c in candidates)
    print(
        f"{len(candidates)} candidates ({empty} without code), {tokens:,} tokens generated; "
        f"summed latency {seconds:.1f} s → {out}"
    )
    return EXIT_SOME_EMPTY if empty else EXIT_OK


def add_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("generate", help="sample candidate programs into a folder (prompt tuning)")
    p.add_argument("--n", type=int, required=True, help="how many candidates")
    p.add_argument("--mode", choices=sorted(_MODES), default="full")
    p.add_argument("--out", required=True, help="folder for <id>.py files and candidates.json")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--adapter", help="adapter name (empty: the base model)")
    p.add_argument("--adapter-path", help="adapter folder (local backend, or a managed TGI)")
    p.add_argument(
        "--baseline", help=f"delta/factor: the program to edit [default {BASELINE.name}, packaged]"
    )
    p.add_argument("--factor", action="append", help="factor mode: a factor to choose from (repeatable)")
    p.add_argument("--delta-fallback", choices=sorted(_FALLBACKS), default="reprompt")
    p.add_argument("--max-reprompts", type=int, default=0, help="delta re-prompts [0: the default, 2]")
    p.add_argument("--dataset", default="cifar10", help="task the prompt describes")
    p.add_argument("--input-shape", type=int, nargs=4, default=[1, 3, 32, 32], metavar=("N", "C", "H", "W"))
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--param-budget", type=int, default=500_000)
    p.add_argument("--temperature", type=float, default=None, help="default 0.2; 0 = greedy")
    p.add_argument("--top-k", type=int, default=0, help="0: the default, 50")
    p.add_argument("--top-p", type=float, default=0.0, help="0: the default, 0.9")
    p.add_argument(
        "--max-new-tokens", type=int, default=0, help="0: the default, 2,048 (capped by the context)"
    )
    p.add_argument("--experiment", default="", help="experiment id for candidate ids [adhoc]")
    p.add_argument("--cycle", type=int, default=0)
    p.add_argument("--generator", help="address of a running generator service (else run in this process)")
    p.add_argument("--backend", choices=("local", "tgi"), default="local", help="in-process backend")
    p.add_argument(
        "--model",
        default="",
        help="local: base model folder, or smollm2-135m-instruct ('' = the packaged tiny model)",
    )
    p.add_argument(
        "--repair",
        action="store_true",
        help="repair each program (imports, class name, shape-inferring layers); the raw code is kept too",
    )
    p.add_argument("--tgi-url", default="http://127.0.0.1:8080")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=0)
    p.set_defaults(func=cmd_generate)
