"""Did a cycle's fine-tune move the model? Code loss of the base model against each adapter of an experiment.

    python bench/adapter_effect.py EXPERIMENT [--home DIR] [--held-out 24] [--threads 2] [--write]

For every cycle of the experiment that produced an adapter (`$ARCHLOOP_HOME/artifacts/EXPERIMENT/
cycle-N`), next-token loss on the answer's tokens only (the prompt masked, as in training), base model
alone and base + that adapter, on two sets:
- **held-out corpus programs**: the first --held-out pairs the base model never trained on (its own
  held-out split: whole programs, the seed and share of its training.json);
- **the admitted programs**: the generated examples of the cycle's fine-tune set (`train.jsonl` in the
  controller's experiment folder), i.e. what that fine-tune was meant to teach.
A fine-tune that leaves both losses where they were has not changed what the generator samples, so
any change of the valid rate from one cycle to the next is sampling noise. `--write` replaces this
bench's section of docs/benchmarks.md (one experiment at a time); raw figures go to
bench/results/adapter_effect.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from archloop import basemodel, corpus, paths  # noqa: E402
from bench.report import machine, publish  # noqa: E402

SECTION_START = "<!-- adapter-effect:start -->"
SECTION_END = "<!-- adapter-effect:end -->"


def code_loss(model, tokenizer, examples: list[dict], context: int) -> float:
    """Mean next-token loss over the answers' tokens of `examples` (each cut to the context)."""
    import torch

    total, count = 0.0, 0
    model.eval()
    with torch.inference_mode():
        for example in examples:
            ids, mask = basemodel.encode_example(tokenizer, example["messages"])
            batch, keep = torch.tensor([ids[:context]]), torch.tensor([mask[:context]])
            targets = int(keep[:, 1:].sum())
            total += float(basemodel.next_token_loss(model, batch, keep)) * targets
            count += targets
    return total / count


def cycles_of(home: Path, experiment: str) -> list[tuple[int, Path, Path]]:
    """(cycle, adapter folder, fine-tune set) of each cycle that produced an adapter."""
    found = []
    for folder in sorted((home / "artifacts" / experiment).glob("cycle-*")):
        cycle = int(folder.name.removeprefix("cycle-"))
        train = home / "data" / "controller" / "experiments" / experiment / f"cycle-{cycle}" / "train.jsonl"
        if (folder / "adapter_config.json").exists() and train.exists():
            found.append((cycle, folder, train))
    return sorted(found)


def markdown(result: dict) -> str:
    lines = [
        SECTION_START,
        "## Fine-tune effect: code loss of the base model and of each cycle's adapter",
        "",
        f"`python bench/adapter_effect.py {result['args']}` on {result['date']} ({result['machine']}): "
        f"experiment `{result['experiment']}`, base `{result['base_model']}`; loss in nats per answer "
        f"token (prompt masked); held-out: {result['held_out']} corpus pairs the base never trained on.",
        "",
        "| cycle | fine-tune set: LEMUR / generated | held-out loss, base → adapter | change | admitted "
        "programs' loss, base → adapter | change |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["cycles"]:
        lines.append(
            f"| {r['cycle']} | {r['lemur_examples']} / {r['generated_examples']} "
            f"| {r['held_out_base']:.4f} → {r['held_out_adapter']:.4f} | {r['held_out_change']:+.1%} "
            f"| {r['admitted_base']:.4f} → {r['admitted_adapter']:.4f} | {r['admitted_change']:+.1%} |"
        )
    lines += ["", "Raw figures: `bench/results/adapter_effect.json`.", SECTION_END]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment")
    parser.add_argument(
        "--home", type=Path, default=Path(os.environ.get("ARCHLOOP_HOME") or Path.home() / ".archloop")
    )
    parser.add_argument("--held-out", type=int, default=24)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args()
    found = cycles_of(args.home, args.experiment)
    if not found:
        print(f"{args.home}/artifacts/{args.experiment} holds no cycle adapter", file=sys.stderr)
        return 2
    import torch
    from peft import PeftModel

    torch.set_num_threads(args.threads)
    spec = json.loads((found[0][1] / "archloop_adapter.json").read_text())
    reference = spec.get("base_model", "")
    model, tokenizer, resolved = basemodel.load_base(reference, "cpu")
    record = basemodel.training_corpus(resolved)
    if record is None:
        print(f"{resolved} records no training corpus: no held-out split to measure on", file=sys.stderr)
        return 2
    training = json.loads((Path(resolved) / "training.json").read_text())["settings"]
    corpus_dir = paths.corpus_dir(record["version"])
    _, held = basemodel.split_by_model(
        list(corpus.read_jsonl(corpus_dir / "examples.jsonl")), training["holdout_share"], training["seed"]
    )
    held = held[: args.held_out]
    context = int(training["context_tokens"])
    held_base = code_loss(model, tokenizer, held, context)
    rows = []
    for cycle, folder, train in found:
        examples = list(corpus.read_jsonl(train))
        generated = [e for e in examples if e.get("source") == "generated"]
        tuned = PeftModel.from_pretrained(basemodel.load_base(reference, "cpu")[0], str(folder))
        row = {
            "cycle": cycle,
            "lemur_examples": len(examples) - len(generated),
            "generated_examples": len(generated),
            "held_out_base": held_base,
            "held_out_adapter": code_loss(tuned, tokenizer, held, context),
        }
        for key, which in (("admitted_base", model), ("admitted_adapter", tuned)):
            row[key] = code_loss(which, tokenizer, generated, context) if generated else float("nan")
        row["held_out_change"] = row["held_out_adapter"] / row["held_out_base"] - 1
        row["admitted_change"] = row["admitted_adapter"] / row["admitted_base"] - 1
        rows.append(row)
        print(json.dumps(row), flush=True)
    result = {
        "date": datetime.now(UTC).date().isoformat(),
        "machine": machine(),
        "args": " ".join(sys.argv[1:]),
        "experiment": args.experiment,
        "base_model": Path(str(resolved)).name,
        "held_out": len(held),
        "cycles": rows,
    }
    publish("adapter_effect", result, markdown(result), SECTION_START, SECTION_END, args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
