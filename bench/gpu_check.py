"""One prepared GPU check: the CUDA paths of the evaluator, the trainer, the generator and one loop cycle.

    python bench/gpu_check.py [--quick] [--skip-cycle] [--write]

On a CUDA machine, in one run (≤ 8 minutes on an H200; no network):
1. evaluator: the benchmark model (bench/evaluator_bench.py's) trained by the real sandboxed Evaluator
   with device cuda, then cpu (7 epochs of digits; `--quick`: 1);
2. trainer: a LoRA job of the real trainer service (bf16 on CUDA, as it trains there) against the plain
   peft loop on CUDA in bf16 (bench/trainer_bench.py's baseline), same examples;
3. generator: the local backend sampling full-mode candidates in batches on CUDA, then on CPU (tokens/s);
4. one embedded cycle: `archloop run --cycles 1` with its own stack in a temporary home: every service
   picks CUDA when there is one; wall time, valid and admitted.
On a CPU machine the same code runs on CPU, and the section says the CUDA part did not run and why.
Every part runs even when another fails (its error is reported). `--write` puts the section in
docs/benchmarks.md ("GPU check").
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench.report import machine, publish  # noqa: E402

START, END = "<!-- gpu-check:start -->", "<!-- gpu-check:end -->"


def cuda_state() -> tuple[bool, str]:
    if not torch.cuda.is_available():
        why = "torch.cuda.is_available() is False"
        if torch.version.cuda is None:
            why += " (this torch has no CUDA build)"
        else:
            why += f" (torch built for CUDA {torch.version.cuda}; no usable NVIDIA GPU or driver here)"
        return False, why
    return True, f"{torch.cuda.get_device_name(0)}, CUDA {torch.version.cuda}, torch {torch.__version__}"


def timed(part: Callable[[], dict]) -> dict:
    started = time.perf_counter()
    try:
        result = part()
    except Exception as exc:  # a check reports what failed and goes on
        result = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc(limit=3)}
    result["seconds"] = round(time.perf_counter() - started, 2)
    return result


def evaluator_part(devices: list[str], epochs: int) -> dict:
    from services.evaluator.evaluation import Evaluator, Protocol
    from services.evaluator.sandbox import Sandbox, SandboxLimits
    from services.evaluator.tests.test_evaluation import GOOD

    out: dict = {}
    with tempfile.TemporaryDirectory(prefix="gpu-check-evaluator-") as tmp:
        # a CUDA context reserves far more address space than the CPU default of 8 GiB allows
        sandbox = Sandbox(Path(tmp) / "jobs", SandboxLimits(address_space_bytes=1 << 44, threads=1))
        sandbox.start()
        try:
            for device in devices:
                evaluator = Evaluator(sandbox, Path(tmp), device=device)
                evaluator.evaluate("warm-up", GOOD, Protocol(epochs=1))
                result = evaluator.evaluate("bench", GOOD, Protocol(epochs=epochs, learning_rate=0.01))
                out[device] = {
                    "status": result.status,
                    "message": result.stages[-1].message,
                    "accuracy": round(result.accuracy, 4),
                    "seconds": round(result.total_duration_seconds, 2),
                    "train_images_per_second": round(result.train_images_per_second, 1),
                }
        finally:
            sandbox.stop()
    return out


def corpus() -> Path:
    """The embedded corpus: the one in ARCHLOOP_HOME when built, else built once into the cache (a fresh
    device machine has none; the build takes a minute or two)."""
    from archloop import paths
    from tools.corpus_build import build_corpus

    for folder in (paths.corpus_dir(), Path(tempfile.gettempdir()) / "archloop-gpu-check-corpus"):
        if (folder / "examples.jsonl").is_file():
            return folder
    build_corpus(folder)
    return folder


def trainer_part(device: str, examples: int, epochs: int) -> dict:
    from bench.trainer_bench import bench_examples, plain_loop, service_run

    with tempfile.TemporaryDirectory(prefix="gpu-check-trainer-") as tmp:
        work = Path(tmp)
        path = bench_examples(corpus(), examples, work / "examples.jsonl")
        baseline = plain_loop(path, epochs, 0, device)
        service = service_run(path, epochs, 0, work, "gpu-check")  # the service picks CUDA itself
    return {
        "device": device,
        "plain_peft_loop_tokens_per_second": round(baseline["tokens_per_second"], 1),
        "trainer_service_tokens_per_second": round(service["tokens_per_second"], 1),
        "service_vs_plain": round(service["tokens_per_second"] / baseline["tokens_per_second"], 3),
        "service_end_to_end_seconds": round(service["end_to_end_seconds"], 1),
    }


def generator_part(devices: list[str], candidates: int, batch: int, max_new_tokens: int) -> dict:
    from archloop.factors import load_factors
    from bench.generator_bench import run_once
    from services.generator.local import LocalBackend

    factors = load_factors()
    out = {}
    for device in devices:
        backend = LocalBackend("", device, 2)
        run = run_once(backend, factors, batch, candidates, max_new_tokens, seed=0)
        out[device] = {"tokens_per_second": round(run["tokens_per_second"], 1), "tokens": run["tokens"]}
    return out


QUICK_CYCLE = {  # the embedded experiment, cut to fit a CPU test: a small fine-tune, a short epoch
    "lemur_examples_per_cycle": 4,
    "fine_tune_schedule": {"epochs": 1},
    "protocol": {"max_train_images": 400},
}


def cycle_part(candidates: int, timeout: float, quick: bool) -> dict:
    import shutil

    from archloop import paths
    from services.controller.ledger import Ledger

    with tempfile.TemporaryDirectory(prefix="gpu-check-cycle-") as tmp:
        home = Path(tmp) / "home"
        shutil.copytree(corpus(), paths.corpus_dir(home=home))
        env = {**os.environ, "ARCHLOOP_HOME": str(home)}
        started = time.perf_counter()
        config = Path(tmp) / "config.yaml"
        config.write_text(json.dumps(QUICK_CYCLE if quick else {}))  # JSON is YAML
        run = subprocess.run(
            [sys.executable, "-m", "tools.cli", "run", "--config", str(config), "--cycles", "1",
             "--candidates", str(candidates), "--name", "gpu-check", "--out", str(Path(tmp) / "report")],
            env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, cwd=ROOT,
        )  # fmt: skip
        seconds = time.perf_counter() - started
        ledger_path = home / "data" / "controller" / "ledger.sqlite3"
        counts = Ledger(ledger_path).counts("gpu-check") if ledger_path.exists() else {}
    return {
        "exit": run.returncode,
        "wall_seconds": round(seconds, 1),
        **counts,
        "stderr_tail": run.stderr[-600:] if run.returncode else "",
    }


def markdown(r: dict) -> str:
    lines = [
        START,
        "## GPU check",
        "",
        f"`python bench/gpu_check.py{' --quick' if r['quick'] else ''}` — {r['machine']}; "
        f"{r['total_seconds'] / 60:.1f} min.",
        "",
        f"CUDA: **{'ran' if r['cuda'] else 'did not run'}** — {r['cuda_detail']}.",
        "",
    ]
    ev = r["evaluator"]
    if "error" in ev:
        lines.append(f"- evaluator: failed — {ev['error']}")
    else:
        cells = ", ".join(
            f"{d}: {v['status']}, {v['seconds']} s, {v['train_images_per_second']:,} training images/s"
            for d, v in ev.items()
            if isinstance(v, dict)
        )
        lines.append(
            f"- evaluator (benchmark model, {r['epochs']} epoch(s) of digits, real sandbox): {cells}"
        )
    tr = r["trainer"]
    if "error" in tr:
        lines.append(f"- trainer: failed — {tr['error']}")
    else:
        lines.append(
            f"- trainer ({tr['device']}): service {tr['trainer_service_tokens_per_second']:,} tokens/s "
            f"vs plain peft loop {tr['plain_peft_loop_tokens_per_second']:,} ({tr['service_vs_plain']}×); "
            f"job end to end {tr['service_end_to_end_seconds']} s"
        )
    ge = r["generator"]
    if "error" in ge:
        lines.append(f"- generator: failed — {ge['error']}")
    else:
        cells = ", ".join(
            f"{d}: {v['tokens_per_second']:,} tokens/s" for d, v in ge.items() if isinstance(v, dict)
        )
        lines.append(f"- generator (local backend, batched full-mode sampling): {cells}")
    cy = r["cycle"]
    if "error" in cy:
        lines.append(f"- one embedded cycle: failed — {cy['error']}")
    elif cy.get("skipped"):
        lines.append("- one embedded cycle: skipped (--skip-cycle)")
    else:
        cut = f" with {json.dumps(QUICK_CYCLE)}" if r["quick"] else ""
        lines.append(
            f"- one embedded cycle (`archloop run --cycles 1 --candidates {r['cycle_candidates']}`{cut}, own "
            f"stack): exit {cy['exit']}, {cy['wall_seconds']} s, generated {cy.get('generated', 0)}, valid "
            f"{cy.get('valid', 0)}, admitted {cy.get('admitted', 0)}"
        )
    lines += ["", "Raw figures: `bench/results/gpu_check.json`.", END]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (the CPU test's)")
    parser.add_argument("--skip-cycle", action="store_true")
    parser.add_argument("--write", action="store_true")
    parser.add_argument("--out", type=Path, help="write the raw figures here instead of bench/results/")
    args = parser.parse_args()
    started = time.perf_counter()
    cuda, detail = cuda_state()
    print(f"CUDA {'available' if cuda else 'not available'}: {detail}", flush=True)
    devices = ["cuda", "cpu"] if cuda else ["cpu"]
    epochs = 1 if args.quick else 7
    r: dict = {
        "machine": machine(),
        "cuda": cuda,
        "cuda_detail": detail,
        "quick": args.quick,
        "epochs": epochs,
    }
    r["evaluator"] = timed(lambda: evaluator_part(devices, epochs))
    print("evaluator", json.dumps(r["evaluator"]), flush=True)
    r["trainer"] = timed(lambda: trainer_part(devices[0], 4 if args.quick else 24, 1))
    print("trainer", json.dumps(r["trainer"]), flush=True)
    r["generator"] = timed(lambda: generator_part(devices, 4 if args.quick else 16, 4 if args.quick else 8,
                                                  64 if args.quick else 256))  # fmt: skip
    print("generator", json.dumps(r["generator"]), flush=True)
    r["cycle_candidates"] = 2 if args.quick else 8
    r["cycle"] = (
        {"skipped": True}
        if args.skip_cycle
        else timed(lambda: cycle_part(r["cycle_candidates"], 420, args.quick))
    )
    print("cycle", json.dumps(r["cycle"]), flush=True)
    r["total_seconds"] = time.perf_counter() - started
    if args.out:
        args.out.write_text(json.dumps(r, indent=2))
        print(markdown(r))
    else:
        publish("gpu_check", r, markdown(r), START, END, args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
