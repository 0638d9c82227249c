"""`archloop corpus …` and `archloop base-model …`: the LEMUR corpus and the tiny base model.

archloop corpus fetch                 download and verify the LEMUR wheel into the cache
archloop corpus build [--out DIR] [--version V]
                                      build a corpus version (default lemur-v3 in $ARCHLOOP_HOME/corpus/V)
archloop corpus stats [--json]        its funnel and the proxy-reliability table's summary
archloop corpus edits [--out DIR]     delta and factor training pairs from verified mutations of it
archloop corpus regions [--out DIR]   region-edit (fill-in-the-middle) examples: the edits cut to a factor's
                                      site, and one random statement run of every program
archloop corpus structure             each program's architecture graph, wiring hash and tokens (again:
                                      `build` records them; the novelty service's architecture channel)
archloop corpus leaderboard           every program trained once on the embedded protocol (resumable;
                                      writes the packaged table reports read)
archloop base-model train [--out DIR] train the tiny GPT-2 and its tokenizer on the corpus (fixed seed);
                                      --edits DIR --edit-share F mix in edit pairs
archloop base-model fetch [--convert] download the pinned SmolLM2-135M-Instruct wheel (and convert it)
archloop base-model info [--json]     what the shipped tiny model was trained on and how
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from pathlib import Path

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
LEADERBOARD_TABLE = (
    Path(__file__).resolve().parent.parent / "archloop" / "data" / "lemur-v3-leaderboard-v1.json.gz"
)


def cmd_fetch(args: argparse.Namespace) -> int:
    from archloop.lemur import LemurUnavailable, lemur_wheel

    try:
        path = lemur_wheel(fetch=True)
    except LemurUnavailable as exc:
        print(f"archloop corpus fetch: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(path)
    return EXIT_OK


def _corpus_dir(args: argparse.Namespace) -> Path:
    from archloop.paths import corpus_dir

    return Path(args.corpus) if args.corpus else corpus_dir()


def cmd_build(args: argparse.Namespace) -> int:
    from archloop.lemur import LemurUnavailable
    from archloop.paths import corpus_dir
    from tools.corpus_architecture import record_architectures, summary
    from tools.corpus_build import build_corpus, forward_lookup, rewrite_lookup

    if not 0 < args.threshold <= 1:
        print(f"archloop corpus build: --threshold {args.threshold} must be in (0, 1]", file=sys.stderr)
        return EXIT_USAGE
    out = Path(args.out) if args.out else corpus_dir(args.version)
    try:
        forward = forward_lookup(recheck=args.recheck_forward, save=args.save_forward_table)
        rewrites = (  # lemur-v2 rewrites nothing: its table is not even read
            None
            if args.version == "lemur-v2"
            else rewrite_lookup(recheck=args.recheck_forward, save=args.save_forward_table)
        )
        report = build_corpus(
            out, threshold=args.threshold, forward=forward, version=args.version, rewrites=rewrites
        )
    except LemurUnavailable as exc:
        print(f"archloop corpus build: {exc}", file=sys.stderr)
        return EXIT_FAILED
    funnel = report.manifest["funnel"]
    print(
        " → ".join(f"{name.replace('_', ' ')} {count:,}" for name, count in funnel.items())
        + f"  ({report.seconds:.0f} s)"
    )
    architectures = record_architectures(report.out_dir)
    print(summary(architectures))
    print(report.out_dir)
    return EXIT_OK if architectures.recorded else EXIT_FAILED


def cmd_stats(args: argparse.Namespace) -> int:
    from archloop.corpus import CorpusError, corpus_stats, stages_of

    try:
        stats = corpus_stats(_corpus_dir(args))
    except CorpusError as exc:
        print(f"archloop corpus stats: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        print(json.dumps(stats, indent=2))
    else:
        print(
            f"{stats['version']} at {stats['corpus_dir']} (manifest sha256 {stats['manifest_sha256'][:12]}…)"
        )
        order = ("files", *stages_of(stats["version"])[1:], "examples")
        print("funnel: " + " → ".join(f"{k.replace('_', ' ')} {stats['funnel'][k]:,}" for k in order))
        proxy = stats["proxy_stats"]
        print(
            f"proxy table ({proxy['dataset']}): {proxy['runs']:,} runs of {proxy['models']:,} models, "
            f"{proxy['runs_with_epoch_1_and_5']:,} with epochs 1 and 5 "
            f"(Spearman {proxy.get('spearman_epoch_1_vs_5', float('nan')):.3f}), "
            f"{proxy['runs_reaching_epoch_50']:,} reach epoch 50"
        )
    return EXIT_OK


def cmd_edits(args: argparse.Namespace) -> int:
    from archloop.corpus import CorpusError, edits_dir
    from tools.edit_pairs import build_edit_pairs

    if args.programs < 0:
        print(f"archloop corpus edits: --programs {args.programs} must not be negative", file=sys.stderr)
        return EXIT_USAGE
    source = _corpus_dir(args)
    try:
        out = Path(args.out) if args.out else edits_dir(source)
        report = build_edit_pairs(source, out, args.seed, args.programs)
    except (CorpusError, FileNotFoundError) as exc:
        print(f"archloop corpus edits: {exc}", file=sys.stderr)
        return EXIT_FAILED
    kept = {factor: counts["kept"] for factor, counts in report.manifest["counts"].items()}
    print(
        f"{report.manifest['programs']:,} programs → {report.manifest['pairs']:,} pairs "
        f"({', '.join(f'{k} {v}' for k, v in kept.items())}; {report.seconds:.0f} s)"
    )
    print(report.out_dir)
    return EXIT_OK


def cmd_regions(args: argparse.Namespace) -> int:
    from archloop.corpus import CorpusError, edits_dir
    from tools.region_pairs import build_region_pairs, regions_dir

    source = _corpus_dir(args)
    edits = Path(args.edits) if args.edits else edits_dir(source)
    if not (edits / "manifest.json").exists():
        print(
            f"archloop corpus regions: {edits} holds no edit pairs; run `archloop corpus edits`",
            file=sys.stderr,
        )
        return EXIT_FAILED
    try:
        out = Path(args.out) if args.out else regions_dir(source)
        report = build_region_pairs(source, edits, out, args.seed)
    except (CorpusError, FileNotFoundError) as exc:
        print(f"archloop corpus regions: {exc}", file=sys.stderr)
        return EXIT_FAILED
    m = report.manifest
    no_site = sum(c["no_site"] for c in m["counts"].values())
    print(f"{m['region_examples']:,} region examples ({no_site:,} edits fit no single site), "
          f"{m['fim_examples']:,} fill-in-the-middle examples ({report.seconds:.0f} s)")  # fmt: skip
    print(report.out_dir)
    return EXIT_OK


def cmd_structure(args: argparse.Namespace) -> int:
    from tools.corpus_architecture import record_architectures, summary

    source = _corpus_dir(args)
    if not (source / "examples.jsonl").exists():
        print(f"archloop corpus structure: {source} holds no corpus (examples.jsonl)", file=sys.stderr)
        return EXIT_FAILED
    report = record_architectures(source)
    print(summary(report))
    return EXIT_OK if report.recorded else EXIT_FAILED


def cmd_leaderboard(args: argparse.Namespace) -> int:
    from tools.corpus_leaderboard import main

    return main(args)


def cmd_train(args: argparse.Namespace) -> int:
    from archloop.basemodel import TINY_MODEL_DIR, BaseModelNotFound, BaseModelSettings
    from archloop.corpus import CorpusError
    from archloop.pretraining import train_base_model

    overrides = {
        f.name: getattr(args, f.name)
        for f in fields(BaseModelSettings)
        if getattr(args, f.name, None) is not None
    }
    for name, value in overrides.items():
        if value <= 0:
            print(f"archloop base-model train: --{name.replace('_', '-')} must be positive", file=sys.stderr)
            return EXIT_USAGE
    settings = BaseModelSettings(**overrides)
    if args.edit_share and not (args.edits and 0 < args.edit_share < 1):
        print("archloop base-model train: --edit-share needs --edits and a value in (0, 1)", file=sys.stderr)
        return EXIT_USAGE

    def progress(event: dict) -> None:
        print(json.dumps(event), file=sys.stderr, flush=True)

    try:
        record = train_base_model(
            _corpus_dir(args),
            Path(args.out or TINY_MODEL_DIR),
            settings,
            progress,
            Path(args.checkpoint_dir) if args.checkpoint_dir else None,
            args.init_from,
            Path(args.edits) if args.edits else None,
            args.edit_share,
        )
    except (CorpusError, BaseModelNotFound, FileNotFoundError) as exc:
        print(f"archloop base-model train: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(json.dumps({k: v for k, v in record.items() if k != "history"}, indent=2))
    return EXIT_OK


def cmd_fetch_model(args: argparse.Namespace) -> int:
    from archloop import smollm
    from archloop.lemur import WheelUnavailable

    try:
        path = smollm.ensure_model(fetch=True) if args.convert else smollm.smollm_wheel(fetch=True)
    except WheelUnavailable as exc:
        print(f"archloop base-model fetch: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(path)
    return EXIT_OK


def cmd_info(args: argparse.Namespace) -> int:
    from archloop.basemodel import TINY_MODEL_DIR

    path = Path(args.model or TINY_MODEL_DIR) / "training.json"
    if not path.exists():
        print(f"archloop base-model info: {path} is missing", file=sys.stderr)
        return EXIT_FAILED
    record = json.loads(path.read_text())
    if args.json:
        print(json.dumps(record, indent=2))
    else:
        print(
            f"{record['name']}: {record['parameters']:,} parameters, {record['tokens_seen']:,} tokens, "
            f"train loss {record['final_train_loss']}, held-out loss {record['final_held_out_loss']}, "
            f"{record['duration_seconds'] / 60:.1f} min; "
            f"corpus manifest {record['corpus']['manifest_sha256'][:12]}…"
        )
    return EXIT_OK


def add_parsers(commands: argparse._SubParsersAction) -> None:
    _corpus_parsers(commands)
    _base_model_parsers(commands)


def _corpus_parsers(commands: argparse._SubParsersAction) -> None:
    from archloop.corpus import CORPUS_VERSION, CORPUS_VERSIONS

    corpus = commands.add_parser("corpus", help="the LEMUR corpus")
    sub = corpus.add_subparsers(dest="corpus_command", required=True, metavar="COMMAND")
    sub.add_parser("fetch", help="download the nn-dataset==2.1.2 wheel once into the cache").set_defaults(
        func=cmd_fetch
    )
    build = sub.add_parser("build", help="build the training corpus from the wheel")
    build.add_argument("--out", help="output folder [default $ARCHLOOP_HOME/corpus/VERSION]")
    build.add_argument(
        "--version",
        choices=CORPUS_VERSIONS,
        default=CORPUS_VERSION,
        help="lemur-v3: every program within the loop's budget, shape-inferring layers where proven "
        "identical; lemur-v2: the LEMUR texts as they are",
    )
    build.add_argument("--threshold", type=float, default=0.90, help="near-duplicate Jaccard threshold")
    build.add_argument(
        "--recheck-forward",
        action="store_true",
        help="run every forward and rewrite check again (about 12 minutes on 2 cores), not the "
        "packaged tables",
    )
    build.add_argument(
        "--save-forward-table",
        action="store_true",
        help="write the forward and rewrite checks back to the packaged tables (maintainers, after a "
        "wheel or rewrite change)",
    )
    build.set_defaults(func=cmd_build)
    stats = sub.add_parser("stats", help="the corpus funnel and the LEMUR proxy-reliability summary")
    stats.add_argument("--corpus", help="corpus folder [env ARCHLOOP_CORPUS_DIR]")
    stats.add_argument("--json", action="store_true")
    stats.set_defaults(func=cmd_stats)
    edits = sub.add_parser("edits", help="delta and factor training pairs: verified mutations of the corpus")
    edits.add_argument("--corpus", help="corpus folder [env ARCHLOOP_CORPUS_DIR]")
    edits.add_argument("--out", help="output folder [default: beside the corpus, VERSION-edits]")
    edits.add_argument("--seed", type=int, default=0)
    edits.add_argument("--programs", type=int, default=0, help="a seeded sample of this many programs [all]")
    edits.set_defaults(func=cmd_edits)
    regions_ = sub.add_parser(
        "regions", help="region-edit examples: engine edits cut to a site, and FIM spans"
    )
    regions_.add_argument("--corpus", help="corpus folder [env ARCHLOOP_CORPUS_DIR]")
    regions_.add_argument("--edits", help="the `archloop corpus edits` folder [default: beside the corpus]")
    regions_.add_argument("--out", help="output folder [default: beside the corpus, VERSION-regions]")
    regions_.add_argument("--seed", type=int, default=0)
    regions_.set_defaults(func=cmd_regions)
    structure = sub.add_parser("structure", help="each corpus program's architecture graph (build too)")
    structure.add_argument("--corpus", help="corpus folder [env ARCHLOOP_CORPUS_DIR]")
    structure.set_defaults(func=cmd_structure)
    board = sub.add_parser("leaderboard", help="every corpus program trained once on the embedded protocol")
    board.add_argument("--corpus", help="corpus folder [env ARCHLOOP_CORPUS_DIR]")
    board.add_argument("--workers", type=int, default=2, help="evaluations at once [2]")
    board.add_argument("--limit", type=int, default=0, help="at most this many new programs [all]")
    board.add_argument(
        "--table", default=str(LEADERBOARD_TABLE), help="where the table goes [the packaged one]"
    )
    board.set_defaults(func=cmd_leaderboard)


def _base_model_parsers(commands: argparse._SubParsersAction) -> None:
    from archloop.smollm import WHEEL_REQUIREMENT as smollm_requirement

    base = commands.add_parser("base-model", help="the tiny base code LM")
    sub = base.add_subparsers(dest="base_model_command", required=True, metavar="COMMAND")
    train = sub.add_parser("train", help="train tokenizer and model from scratch on the corpus")
    train.add_argument("--corpus", help="corpus folder [env ARCHLOOP_CORPUS_DIR]")
    train.add_argument("--out", help="model folder [default: the packaged tiny model]")
    train.add_argument(
        "--init-from",
        default="",
        help="fine-tune this pretrained base model (e.g. smollm2-135m-instruct) instead of training the tiny "
        "GPT-2 from scratch; give --out",
    )
    train.add_argument(
        "--checkpoint-dir",
        help="where checkpoints go; a run with the same corpus and settings resumes from them "
        "[default $ARCHLOOP_HOME/base-model-checkpoints/<hash of --out>]",
    )
    for name in (
        "seed",
        "steps",
        "warmup_steps",
        "accumulation_steps",
        "n_layer",
        "n_embd",
        "n_head",
        "context_tokens",
        "vocab_size",
        "eval_every_steps",
        "patience_evals",
        "checkpoint_every_steps",
        "threads",
    ):
        train.add_argument(f"--{name.replace('_', '-')}", type=int, dest=name)
    train.add_argument("--learning-rate", type=float, dest="learning_rate")
    train.add_argument("--edits", help="an `archloop corpus edits` folder whose pairs join the training data")
    train.add_argument(
        "--edit-share", type=float, default=0.0, help="the share of training examples that are edit pairs"
    )
    train.set_defaults(func=cmd_train)
    fetch = sub.add_parser(
        "fetch", help=f"download the pinned {smollm_requirement} wheel (SmolLM2-135M-Instruct) into the cache"
    )
    fetch.add_argument(
        "--convert", action="store_true", help="also convert it once into a model folder (about 30 s)"
    )
    fetch.set_defaults(func=cmd_fetch_model)
    info = sub.add_parser("info", help="the training record of a base model")
    info.add_argument("--model", help="model folder [default: the packaged tiny model]")
    info.add_argument("--json", action="store_true")
    info.set_defaults(func=cmd_info)
