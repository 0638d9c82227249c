"""The loop at laptop speed: the embedded experiment on an earlier commit and on this checkout, same seed,
one after the other; and the trainer's tokens/s against that commit's, a plain loop and the machine.

    python bench/loop_speed.py [--baseline 8159959] [--cycles 3] [--candidates 24] [--seed 1]
        [--trainer-examples 24] [--rounds 2] [--skip-loop] [--keep DIR] [--write]

**Loop.** The baseline commit is checked out as a git worktree (its gRPC stubs generated with this
venv's grpcio-tools) and runs with this venv's packages, its folders first on PYTHONPATH; then this
checkout runs. Each arm is a whole `archloop run` of the embedded experiment under its own
$ARCHLOOP_HOME and the shared corpus. From each ledger's events: the seconds of every phase of every
cycle (an event's time minus the previous event's: `cycle_generated` closes generation,
`cycle_evaluated` evaluation, `cycle_audited` promotion + audit, `cycle_filtered` the filter,
`cycle_fine_tuned` the fine-tune, `cycle_completed` the cycle's end), the stack's start and stop
(wall clock outside the experiment's events), generation tokens/s (completion tokens ÷ generation
seconds), fine-tune tokens/s (the adapters' recorded tokens ÷ training seconds), valid, admitted, and
whether the two arms generated the same programs.

**Trainer.** On the same examples (the first --trainer-examples of the embedded fine-tune's LEMUR
sample that fit 1,536 tokens; the embedded LoRA and schedule, one epoch, 2 threads):
- the baseline commit's `run_fine_tune` and this checkout's, each in a fresh process, alternating
  for --rounds (drift hits both); tokens/s over the training loop (first micro-batch to last step);
- in this process: this checkout's `run_fine_tune` and a plain PyTorch loop over the same model with
  no peft and no service (a full fine-tune: every weight trained, AdamW, same batches);
- the machine's ceiling: the best fp32 GEMM rate of this process (2,048² matrices, 2 threads) divided
  by the FLOPs one trained token costs (matrix products counted by torch's FlopCounterMode on a real
  step, plus attention's 4·T²·d per layer forward and twice that backward, which its CPU kernel does
  not report; not halved for the causal mask).

`--write` replaces this bench's section of docs/benchmarks.md; raw figures go to
bench/results/loop_speed.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.report import built_corpus, machine, publish, run_experiment  # noqa: E402

START, END = "<!-- loop-speed:start -->", "<!-- loop-speed:end -->"
THREADS = 2
PHASE_OF_EVENT = {
    "cycle_generated": "generation",
    "cycle_evaluated": "evaluation",
    "cycle_audited": "promotion + audit",
    "cycle_filtered": "filter + admission",
    "cycle_fine_tuned": "fine-tune",
    "cycle_completed": "cycle end",
}
PHASES = ["stack start + stop", "experiment start", *PHASE_OF_EVENT.values(), "experiment end"]
TRAINER_SCRIPT = """
import json, sys
from pathlib import Path
from services.trainer.lora import run_fine_tune
from services.trainer.spec import FineTuneSpec
spec = FineTuneSpec.from_json(Path(sys.argv[1]).read_text())
job, out, threads = Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
meta = run_fine_tune(spec, job, out, lambda e: None, lambda: "", threads=threads)
keys = ("tokens", "train_seconds", "duration_seconds", "first_loss", "final_loss")
print(json.dumps({k: meta[k] for k in keys}))
"""


def worktree(commit: str, where: Path) -> Path:
    """A detached checkout of `commit` with its stubs generated; removed by the caller's temp folder."""
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(where), commit],
        check=True,
        capture_output=True,
    )
    subprocess.run([sys.executable, "protos/generate.py"], cwd=where, check=True, capture_output=True)
    return where


def remove_worktree(where: Path) -> None:
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(where)],
        check=False,
        capture_output=True,
    )


# -- the loop ---------------------------------------------------------------------------------------
def phase_seconds(events: list, wall_seconds: float) -> dict[str, float]:
    """Seconds per phase, summed over cycles, from the experiment's events (see the module's doc)."""
    totals = dict.fromkeys(PHASES, 0.0)
    times = [(e.WhichOneof("payload"), e.occurred_at.ToNanoseconds() / 1e9) for e in events]
    for (_, before), (kind, at) in itertools.pairwise(times):
        if kind == "cycle_started":
            totals["experiment start" if before == times[0][1] else "cycle end"] += at - before
        elif kind in PHASE_OF_EVENT:
            totals[PHASE_OF_EVENT[kind]] += at - before
        else:
            totals["experiment end"] += at - before
    totals["stack start + stop"] = wall_seconds - (times[-1][1] - times[0][1])
    return {k: round(v, 1) for k, v in totals.items()}


def adapter_rates(home: Path, name: str) -> list[dict]:
    found = []
    for meta in sorted((home / "artifacts" / name).glob("cycle-*/archloop_adapter.json")):
        m = json.loads(meta.read_text())
        found.append(
            {
                "cycle": m["cycle"],
                "tokens": m["tokens"],
                "train_seconds": round(m["train_seconds"], 1),
                "job_seconds": round(m["duration_seconds"], 1),
                "final_loss": m["final_loss"],
            }
        )
    return found


def run_arm(label: str, source: Path | None, args: argparse.Namespace, work: Path) -> dict:
    from services.controller.ledger import Ledger

    home = work / label
    home.mkdir(parents=True)
    config = {
        "name": label,
        "cycles": args.cycles,
        "candidates_per_cycle": args.candidates,
        "seed": args.seed,
    }
    seconds, exit_code = run_experiment(home, config, label, args.corpus, source)
    ledger = Ledger(home / "data" / "controller" / "ledger.sqlite3")
    rows = ledger.candidates(label)
    phases = phase_seconds(ledger.events(label), seconds)
    completion_tokens = sum(json.loads(r.generation_json).get("completion_tokens", 0) for r in rows)
    adapters = adapter_rates(home, label)
    tuned = sum(a["tokens"] for a in adapters), sum(a["train_seconds"] for a in adapters)
    return {
        "home": str(home),
        "exit_code": exit_code,
        "seconds": round(seconds, 1),
        "phases": phases,
        "candidates": len(rows),
        "valid": sum(bool(r.raw_valid) for r in rows),
        "decided_before_training": sum(r.decided_before_training for r in rows),
        "admitted": sum(r.admitted for r in rows),
        "completion_tokens": completion_tokens,
        "generation_tokens_per_second": round(completion_tokens / max(phases["generation"], 1e-9), 1),
        "adapters": adapters,
        "fine_tune_tokens_per_second": round(tuned[0] / tuned[1], 1) if tuned[1] else None,
        "programs": [[r.cycle, r.idx, r.code] for r in rows],
    }


# -- the trainer -------------------------------------------------------------------------------------
def trainer_examples(corpus: Path, count: int, seed: int, out: Path) -> Path:
    """The first `count` pairs of the embedded fine-tune's LEMUR sample that fit 1,536 tokens."""
    from transformers import AutoTokenizer

    from archloop import corpus as corpus_lib
    from archloop.basemodel import TINY_MODEL_DIR, encode_example

    tokenizer = AutoTokenizer.from_pretrained(TINY_MODEL_DIR)  # the tokenizer alone, not the model
    rows = list(corpus_lib.read_jsonl(corpus / "examples.jsonl"))
    picked = [
        r
        for r in random.Random(seed).sample(rows, 64)
        if len(encode_example(tokenizer, r["messages"])[0]) <= 1536
    ]
    out.write_text("".join(json.dumps(r) + "\n" for r in picked[:count]))
    return out


def bench_spec(examples: Path, job: str) -> str:
    from services.trainer.spec import FineTuneSpec, LoraConfig, Schedule

    schedule = Schedule(
        epochs=1,
        learning_rate=1e-3,
        batch_size=1,
        gradient_accumulation_steps=4,
        warmup_steps=2,
        weight_decay=0.01,
        max_seq_len_tokens=1536,
    )
    return FineTuneSpec(
        job, job, str(examples), lora=LoraConfig(rank=16, alpha=32, dropout=0.05), schedule=schedule, seed=1
    ).to_json()


def trainer_in_process(source: Path, spec_json: str, work: Path) -> dict:
    """`run_fine_tune` of the checkout at `source`, in a fresh process."""
    work.mkdir(parents=True, exist_ok=True)
    (work / "spec.json").write_text(spec_json)
    env = {**os.environ, "PYTHONPATH": str(source)}
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            TRAINER_SCRIPT,
            str(work / "spec.json"),
            str(work / "job"),
            str(work / "out"),
            str(THREADS),
        ],
        cwd=source,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def plain_loop(examples_path: Path) -> dict:
    """A full fine-tune with an ordinary loop: no peft, no service, the model as the trainer loads it."""
    import torch

    from archloop.basemodel import load_base
    from services.trainer.data import collate, encode_examples
    from services.trainer.lora import without_base_dropout

    torch.manual_seed(1)
    model, tokenizer, _ = load_base("", "cpu")
    without_base_dropout(model)
    examples, _ = encode_examples(examples_path, tokenizer, 1536)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
    model.train()
    tokens, began = 0, time.perf_counter()
    for index, example in enumerate(examples):
        ids, labels, mask = collate([example], tokenizer.pad_token_id, "cpu")
        (model(input_ids=ids, attention_mask=mask, labels=labels).loss / 4).backward()
        tokens += int(mask.sum())
        if index % 4 == 3 or index + 1 == len(examples):
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    return {"tokens": tokens, "train_seconds": time.perf_counter() - began}


def gemm_ceiling(size: int = 2048, repeats: int = 5) -> float:
    """The best FLOP/s of an fp32 size² GEMM in this process."""
    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = 0.0
    for _ in range(repeats):
        began = time.perf_counter()
        a @ b
        best = max(best, 2 * size**3 / (time.perf_counter() - began))
    return best


def flops_per_token(examples_path: Path) -> float:
    """FLOPs of one LoRA training step (forward + backward) per token, on the first example."""
    from peft import LoraConfig, get_peft_model
    from torch.utils.flop_counter import FlopCounterMode

    from archloop.basemodel import load_base
    from services.trainer.data import collate, encode_examples
    from services.trainer.lora import without_base_dropout
    from services.trainer.spec import TARGET_MODULES

    model, tokenizer, _ = load_base("", "cpu")
    without_base_dropout(model)
    config = model.config
    model = get_peft_model(
        model,
        LoraConfig(
            r=16,
            lora_alpha=32,
            lora_dropout=0.05,
            task_type="CAUSAL_LM",
            target_modules=TARGET_MODULES["gpt2"],
            fan_in_fan_out=True,
        ),
    )
    model.train()
    example = encode_examples(examples_path, tokenizer, 1536)[0][0]
    ids, labels, mask = collate([example], tokenizer.pad_token_id, "cpu")
    counter = FlopCounterMode(display=False)
    with counter:
        model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
    length = ids.shape[1]
    attention = 3 * 4 * length**2 * config.n_embd * config.n_layer  # forward + twice that backward
    return (counter.get_total_flops() + attention) / length


def trainer_bench(baseline: Path, args: argparse.Namespace, work: Path) -> dict:
    import torch

    from services.trainer.lora import run_fine_tune

    torch.set_num_threads(THREADS)
    work.mkdir(parents=True, exist_ok=True)
    examples = trainer_examples(args.corpus, args.trainer_examples, args.seed, work / "examples.jsonl")
    spec = bench_spec(examples, "bench")
    runs: dict[str, list[dict]] = {"baseline": [], "current": []}
    for round_ in range(args.rounds):
        for label, source in (("baseline", baseline), ("current", ROOT)):
            runs[label].append(trainer_in_process(source, spec, work / f"{label}-{round_}"))
            print(json.dumps({label: runs[label][-1]}), flush=True)
    from services.trainer.spec import FineTuneSpec

    here = run_fine_tune(
        FineTuneSpec.from_json(spec),
        work / "here" / "job",
        work / "here" / "out",
        lambda e: None,
        lambda: "",
        threads=THREADS,
    )
    plain = plain_loop(examples)
    ceiling = gemm_ceiling()
    per_token = flops_per_token(examples)

    def rate(run: dict) -> float:
        return run["tokens"] / run["train_seconds"]

    base = statistics.median(rate(r) for r in runs["baseline"])
    current = statistics.median(rate(r) for r in runs["current"])
    return {
        "examples": args.trainer_examples,
        "runs": runs,
        "baseline_tokens_per_second": round(base, 1),
        "current_tokens_per_second": round(current, 1),
        "ratio": round(current / base, 2),
        "in_process_tokens_per_second": round(rate(here), 1),
        "plain_loop_tokens_per_second": round(rate(plain), 1),
        "gemm_flops_per_second": ceiling,
        "flops_per_token": per_token,
        "ceiling_tokens_per_second": round(ceiling / per_token, 1),
    }


# -- the report --------------------------------------------------------------------------------------
def loop_lines(base: dict, current: dict, args: argparse.Namespace) -> list[str]:
    lines = [
        f"Embedded experiment, seed {args.seed}, {args.cycles} cycles × {args.candidates} candidates; "
        f"`{args.baseline}` first, then this checkout, alone on the machine.",
        "",
        f"| phase ({args.cycles} cycles) | {args.baseline} s | this checkout s | ratio |",
        "|---|---|---|---|",
    ]
    for phase in PHASES:
        a, b = base["phases"][phase], current["phases"][phase]
        lines.append(
            f"| {phase} | {a:.0f} | {b:.0f} | {b / a:.2f} |" if a else f"| {phase} | {a:.0f} | {b:.0f} | — |"
        )
    ratio = current["seconds"] / base["seconds"]
    lines.append(
        f"| **wall clock** | **{base['seconds']:.0f}** | **{current['seconds']:.0f}** | **{ratio:.2f}** |"
    )
    same = base["programs"] == current["programs"]
    same_first = [p for p in base["programs"] if p[0] == 1] == [p for p in current["programs"] if p[0] == 1]

    def row(label: str, figure) -> str:
        return f"| {label} | {figure(base)} | {figure(current)} |"

    lines += [
        "",
        "| figure | " + args.baseline + " | this checkout |",
        "|---|---|---|",
        row("generation tokens/s", lambda a: f"{a['generation_tokens_per_second']:.0f}"),
        row("fine-tune tokens/s (training loop)", lambda a: f"{a['fine_tune_tokens_per_second']:.0f}"),
        row(
            "valid / trained (candidates − decided before training)",
            lambda a: f"{a['valid']} / {a['candidates'] - a['decided_before_training']}",
        ),
        row("admitted", lambda a: a["admitted"]),
        "",
        f"Same programs generated: {'all' if same else 'first cycle' if same_first else 'no'}.",
    ]
    return lines


def trainer_lines(t: dict, args: argparse.Namespace) -> list[str]:
    base = t["baseline_tokens_per_second"]

    def row(label: str, rate: float, ratio: str = "") -> str:
        return f"| {label} | {rate:.0f} | {ratio or f'{rate / base:.2f}'} |"

    ceiling = (
        f"ceiling: {t['gemm_flops_per_second'] / 1e9:.0f} GFLOP/s fp32 GEMM ÷ "
        f"{t['flops_per_token'] / 1e6:.0f} MFLOP per token"
    )
    share = 100 * t["current_tokens_per_second"] / t["ceiling_tokens_per_second"]
    return [
        "",
        f"Trainer alone, {t['examples']} examples × 1 epoch, LoRA rank 16, 2 threads, median of "
        f"{args.rounds} alternating fresh-process runs each:",
        "",
        "| trainer | tokens/s | ÷ " + args.baseline + " |",
        "|---|---|---|",
        row(f"{args.baseline} `run_fine_tune`", base),
        row("this checkout's `run_fine_tune`", t["current_tokens_per_second"], f"**{t['ratio']:.2f}**"),
        row("the same, in the bench's process", t["in_process_tokens_per_second"]),
        row("plain PyTorch loop, full fine-tune, no peft", t["plain_loop_tokens_per_second"]),
        row(ceiling, t["ceiling_tokens_per_second"]),
        "",
        f"This checkout's trainer reaches {share:.0f} % of the GEMM ceiling.",
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default="8159959", help="the earlier commit")
    parser.add_argument("--cycles", type=int, default=3)
    parser.add_argument("--candidates", type=int, default=24)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--trainer-examples", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--skip-loop", action="store_true", help="the trainer part only")
    parser.add_argument("--corpus", type=Path, default=None, help="default: the local corpus")
    parser.add_argument("--keep", type=Path, default=None, help="keep each arm's home here")
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    if min(args.cycles, args.candidates, args.trainer_examples, args.rounds) < 1:
        print("--cycles, --candidates, --trainer-examples and --rounds must be at least 1", file=sys.stderr)
        return 2
    args.corpus = built_corpus(args.corpus)
    if args.corpus is None:
        return 2
    with tempfile.TemporaryDirectory(prefix="loop-speed-") as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        try:
            baseline = worktree(args.baseline, Path(tmp) / "baseline-tree")
        except subprocess.CalledProcessError as exc:
            why = exc.stderr.decode().strip()
            print(f"--baseline {args.baseline}: cannot check it out ({why})", file=sys.stderr)
            return 2
        try:
            results: dict = {"baseline_commit": args.baseline}
            if not args.skip_loop:
                for label, source in (("baseline", baseline), ("current", None)):
                    results[label] = run_arm(label, source, args, work / "loop")
                    shown = {k: v for k, v in results[label].items() if k != "programs"}
                    print(json.dumps({label: shown}), flush=True)
            results["trainer"] = trainer_bench(baseline, args, work / "trainer")
        finally:
            remove_worktree(baseline)
    lines = [
        START,
        "## Fine-tune speed and the loop's wall clock",
        "",
        f"`python bench/loop_speed.py {' '.join(sys.argv[1:])}` ({machine()}).",
        "",
    ]
    if not args.skip_loop:
        lines += loop_lines(results["baseline"], results["current"], args)
    lines += trainer_lines(results["trainer"], args)
    lines += ["", "Raw figures: `bench/results/loop_speed.json`.", END]
    for label in ("baseline", "current"):
        results.get(label, {}).pop("programs", None)
    publish("loop_speed", results, "\n".join(lines), START, END, args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
