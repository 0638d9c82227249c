"""Evaluator benchmark: sandboxed evaluation vs a bare training loop, and tensor batches vs a
torchvision DataLoader with per-sample transforms like the reference harness. Same model, same data,
same run.

    python bench/evaluator_bench.py [--write]

(a) Wall time of Evaluator.evaluate (static stages, fork from the template, isolation, training,
    accuracy, clean-up) under each sandbox (namespaces; gVisor where runsc runs, else the column says
    why not) vs the same training loop in this plain process, on a 10,052-image training run (7 epochs
    of digits' 1,436 training images); the fixed per-candidate overhead (evaluation wall time minus the
    child's own training and accuracy time); and the sandbox's start-up (the template, once).
(b) Training images/s of the evaluator's in-memory tensor batches vs a DataLoader over PIL images
    with RandomCrop + RandomHorizontalFlip + ToTensor + Normalize per sample.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.report import publish  # noqa: E402
from services.evaluator.datasets import load_digits, training_batches  # noqa: E402
from services.evaluator.evaluation import Evaluator, Protocol  # noqa: E402
from services.evaluator.sandbox import SANDBOXES, Sandbox, SandboxUnavailable  # noqa: E402
from services.evaluator.tests.test_evaluation import GOOD  # noqa: E402

SECTION_START = "<!-- evaluator-bench:start -->"
SECTION_END = "<!-- evaluator-bench:end -->"
EPOCHS = 7


def model_and_setup() -> torch.nn.Module:
    namespace: dict = {}
    exec(compile(GOOD, "<bench-model>", "exec"), namespace)
    prm = {"lr": 0.01, "momentum": 0.9, "dropout": 0.2, "batch": 64, "epoch": EPOCHS}
    model = namespace["Net"]((1, 3, 32, 32), (10,), prm, torch.device("cpu"))
    model.train_setup(prm)
    return model


def bare_loop_seconds() -> tuple[float, int]:
    """The training the evaluator does, in this process: same data, batches, model, epochs."""
    torch.manual_seed(0)
    data = load_digits(0.2, 0)
    model = model_and_setup()
    images = 0
    started = time.perf_counter()
    for epoch in range(1, EPOCHS + 1):
        model.train()
        batches = list(training_batches(data, 64, epoch, 0))
        images += sum(len(labels) for _, labels in batches)
        model.learn(batches)
        model.eval()  # validation accuracy after every epoch, as the evaluator records it
        with torch.no_grad():
            model(data.validation_images).argmax(1)
    return time.perf_counter() - started, images


def dataloader_images_per_second() -> tuple[float, float]:
    """The reference harness's input pipeline: PIL images, per-sample transforms, a DataLoader.
    Returns (images/s of the pipeline alone, images/s with the model training on it)."""
    import torchvision.transforms as T
    from PIL import Image
    from torch.utils.data import DataLoader, Dataset

    data = load_digits(0.2, 0)
    raw = (
        (data.train_images - data.train_images.min())
        / (data.train_images.max() - data.train_images.min())
        * 255
    )
    pil = [Image.fromarray(img.permute(1, 2, 0).to(torch.uint8).numpy()) for img in raw]
    labels = data.train_labels.tolist()
    transform = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                           T.Normalize((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))])  # fmt: skip

    class Images(Dataset):
        def __len__(self) -> int:
            return len(pil)

        def __getitem__(self, i: int):
            return transform(pil[i]), labels[i]

    torch.manual_seed(0)
    model = model_and_setup()
    loader = DataLoader(Images(), batch_size=64, shuffle=True, num_workers=0)
    started = time.perf_counter()
    for _ in range(EPOCHS):
        for _batch in loader:
            pass
    pipeline = EPOCHS * len(pil) / (time.perf_counter() - started)
    started = time.perf_counter()
    for _ in range(EPOCHS):
        model.train()
        model.learn(loader)
    return pipeline, EPOCHS * len(pil) / (time.perf_counter() - started)


def tensor_pipeline_images_per_second() -> float:
    data = load_digits(0.2, 0)
    started = time.perf_counter()
    for epoch in range(1, EPOCHS + 1):
        for _batch in training_batches(data, 64, epoch, 0):
            pass
    return EPOCHS * len(data.train_labels) / (time.perf_counter() - started)


def sandboxed(kind: str, work: Path, repeats: int) -> dict | str:
    """Median figures of `repeats` evaluations under one sandbox, or why it could not run here."""
    sandbox = Sandbox(work / "jobs", kind=kind)
    started = time.perf_counter()
    try:
        sandbox.start()
    except SandboxUnavailable as exc:
        return str(exc)
    start_seconds = time.perf_counter() - started
    try:
        evaluator = Evaluator(sandbox, work)
        evaluator.evaluate("warm-up", GOOD, Protocol(epochs=1))
        runs = []
        for _ in range(repeats):
            evaluation = evaluator.evaluate("bench", GOOD, Protocol(epochs=EPOCHS, learning_rate=0.01))
            assert evaluation.status == "OK", evaluation.stages
            inside = sum(s.duration_seconds for s in evaluation.stages if s.stage in ("train", "accuracy"))
            runs.append((evaluation.total_duration_seconds, inside, evaluation.train_images_per_second))
    finally:
        sandbox.stop()
    return {
        "seconds": statistics.median(r[0] for r in runs),
        "overhead_seconds": statistics.median(r[0] - r[1] for r in runs),
        "images_per_second": statistics.median(r[2] for r in runs),
        "start_seconds": round(start_seconds, 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args()
    torch.set_num_threads(1)  # the evaluator's default: one torch thread per evaluation

    bares = [bare_loop_seconds() for _ in range(args.repeats)]
    bare, images = statistics.median(b[0] for b in bares), bares[0][1]
    with tempfile.TemporaryDirectory(prefix="evaluator-bench-") as tmp:
        kinds = {kind: sandboxed(kind, Path(tmp) / kind, args.repeats) for kind in SANDBOXES}
    ns = kinds["namespaces"]
    assert isinstance(ns, dict), ns
    total, overhead, tensor_ips = ns["seconds"], ns["overhead_seconds"], ns["images_per_second"]
    loader_pipeline_ips, loader_ips = dataloader_images_per_second()
    tensor_pipeline_ips = tensor_pipeline_images_per_second()
    results = {
        "training_images": images,
        "bare_loop_seconds": round(bare, 3),
        "evaluator_seconds": round(total, 3),
        "evaluator_vs_bare": round(total / bare, 3),
        "fixed_overhead_seconds": round(overhead, 3),
        "tensor_batches_images_per_second": round(tensor_ips, 1),
        "dataloader_images_per_second": round(loader_ips, 1),
        "tensor_vs_dataloader": round(tensor_ips / loader_ips, 2),
        "sandboxes": kinds,
        "tensor_pipeline_images_per_second": round(tensor_pipeline_ips, 1),
        "dataloader_pipeline_images_per_second": round(loader_pipeline_ips, 1),
        "pipeline_ratio": round(tensor_pipeline_ips / loader_pipeline_ips, 1),
    }
    text = "\n".join([
        SECTION_START,
        "## Evaluator",
        "",
        f"`python bench/evaluator_bench.py` on {datetime.now(UTC):%Y-%m-%d}, median of {args.repeats}, "
        "one torch thread.",
        "Goals (issue 5): evaluator / bare loop ≤ 1.10 on a ~10,000-image run; fixed overhead ≤ 0.3 s;",
        "tensor batches ≥ 2× the images/s of a DataLoader with per-sample transforms.",
        "",
        "| training images | bare loop s | namespaces s (× bare) | gVisor s (× bare) |",
        "|---|---|---|---|",
        f"| {images:,} | {bare:.2f} | " + " | ".join(_cell(kinds[k], bare) for k in SANDBOXES) + " |",
        "",
        "| sandbox | fixed overhead per candidate s | start-up (template, once) s |",
        "|---|---|---|",
        *[f"| {k} | {v['overhead_seconds']:.2f} | {v['start_seconds']:.1f} |"
          for k, v in kinds.items() if isinstance(v, dict)],
        "",
        "| images/s | tensor batches | DataLoader + per-sample transforms | ratio |",
        "|---|---|---|---|",
        f"| pipeline alone | {results['tensor_pipeline_images_per_second']:,} "
        f"| {results['dataloader_pipeline_images_per_second']:,} | {results['pipeline_ratio']}× |",
        f"| training the benchmark model (CPU-bound) | {results['tensor_batches_images_per_second']:,} "
        f"| {results['dataloader_images_per_second']:,} | {results['tensor_vs_dataloader']}× |",
        "",
        "Raw figures: `bench/results/evaluator.json`.",
        SECTION_END,
    ])  # fmt: skip
    publish("evaluator", results, text, SECTION_START, SECTION_END, args.write)
    return 0


def _cell(figures: dict | str, bare: float) -> str:
    if isinstance(figures, str):
        return f"not run: {figures}"
    return f"{figures['seconds']:.2f} ({figures['seconds'] / bare:.2f}×)"


if __name__ == "__main__":
    sys.exit(main())
