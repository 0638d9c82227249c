"""What runs inside the sandbox: instantiate → forward → parameter budget → train → accuracy.

`run_job(job_dir, data)` executes one candidate that already passed the static stages (parse,
screen, contract) in the service. It is called in a freshly forked, isolated child process (see
sandbox.py), never in the service process. It writes progress lines to `progress.jsonl` and its
verdict to `result.json` in `job_dir`; stage names and statuses match archloop.v1.EvaluationResult.

The protocol follows docs/method.md#model-contract and #evaluation-protocol: `Net(in_shape, out_shape,
prm, device)`, `train_setup(prm)` once,
`learn(batches)` once per epoch in train mode, accuracy in eval mode without gradients. The loss
module the model installs (`criteria[0]`) is wrapped to record every loss value, so a non-finite
loss stops training at once with its own status.
"""

from __future__ import annotations

import json
import math
import time
import traceback
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode  # here: inside the sandbox site-packages may be gone

from archloop.archtrace import record
from services.evaluator.datasets import EvaluationData, training_batches, validation_batches

MAX_MESSAGE_CHARS = 500


class NonFiniteLoss(ArithmeticError):
    pass


class _LossRecorder(torch.nn.Module):
    """Wraps the model's loss: records each value, raises NonFiniteLoss on NaN or infinity."""

    def __init__(self, loss: Any, progress: _Progress) -> None:
        super().__init__()
        self.loss = loss
        self.progress = progress

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        value = self.loss(*args, **kwargs)
        number = float(value.detach())
        if not math.isfinite(number):
            raise NonFiniteLoss(f"the loss became {number}")
        self.progress.loss(number)
        return value


class _Progress:
    def __init__(self, path: Path, images_total: int) -> None:
        self.handle = open(path, "a", buffering=1)  # noqa: SIM115 - lives as long as the job
        self.images_total = images_total
        self.epoch = 0
        self.images_seen = 0
        self.losses: list[float] = []
        self.started = time.monotonic()
        self._last_write = 0.0

    def stage(self, stage: str, step: str = "") -> None:
        """A stage (or a step of training: "setup", "learn") begins; the watchdog times each."""
        self._write({"stage": stage, "step": step or stage})

    def loss(self, value: float) -> None:
        self.losses.append(value)

    def batch_done(self, size: int) -> None:
        """A training batch finished (the model asked for the next): the first at once, then at most
        every 0.5 s."""
        first = self.images_seen == 0
        self.images_seen += size
        if first or time.monotonic() - self._last_write > 0.5:
            self._write({"stage": "train", "step": "learn"})

    def validation_batch_done(self, images: int) -> None:
        """A batch of the accuracy pass finished (`images` of it so far): at most every 0.5 s."""
        if time.monotonic() - self._last_write > 0.5:
            self._write({"stage": "accuracy", "step": "evaluate", "validation_images_seen": images})

    def _write(self, fields: dict) -> None:
        self._last_write = time.monotonic()
        running = sum(self.losses[-20:]) / len(self.losses[-20:]) if self.losses else 0.0
        record = {
            "epoch": self.epoch,
            "images_seen": self.images_seen,
            "images_total": self.images_total,
            "running_loss": running,
            "elapsed_seconds": time.monotonic() - self.started,
            **fields,
        }
        self.handle.write(json.dumps(record) + "\n")


def forward_flops(model: torch.nn.Module, example: torch.Tensor) -> int:
    """FLOPs of one forward pass of `example` (torch's FlopCounterMode: matrix products and
    convolutions, 2 per multiply-add); 0 when the counter cannot follow the model."""
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(example)
    except Exception:  # the forward pass itself already succeeded without the counter
        return 0
    return int(counter.get_total_flops())


def _message(stage: str, exc: BaseException) -> str:
    """'<stage>: <Type>: <message>' with the candidate's frame, short and free of our paths."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == "<candidate>"]
    where = f" (candidate line {frames[-1].lineno})" if frames else ""
    text = f"{stage}: {type(exc).__name__}: {exc}{where}"
    return text if len(text) <= MAX_MESSAGE_CHARS else text[: MAX_MESSAGE_CHARS - 1] + "…"


def _status_for(stage: str, exc: BaseException) -> str:
    if isinstance(exc, NonFiniteLoss):
        return "NON_FINITE_LOSS"
    text = str(exc).lower()
    if isinstance(exc, MemoryError) or "out of memory" in text or "can't allocate memory" in text:
        return "OUT_OF_MEMORY"
    return {
        "instantiate": "INSTANTIATE_ERROR",
        "forward": "FORWARD_ERROR",
        "train": "TRAIN_ERROR",
        "accuracy": "TRAIN_ERROR",
    }[stage]


LOSS_ATTRIBUTES = ("criteria", "criterion")
"""Where LEMUR models keep their loss: the contract's `criteria`, and `criterion` (8.6 % of the corpus
lemur-v3: 184 of 2,151 programs were TRAIN_ERROR "'Net' object has no attribute 'criteria'" until the
watcher looked for both)."""


def _watch_loss(model: torch.nn.Module, progress: _Progress) -> None:
    """Wrap the loss train_setup installed, under either name, so every value is recorded and a non-finite
    one stops training. A model that keeps its loss elsewhere trains unwatched (no train_loss)."""
    for name in LOSS_ATTRIBUTES:
        loss = getattr(model, name, None)
        if isinstance(loss, tuple | list) and loss:
            setattr(model, name, (_LossRecorder(loss[0], progress), *loss[1:]))
            return
        if callable(loss):  # a bare loss module instead of the contract's tuple: watch it all the same
            setattr(model, name, _LossRecorder(loss, progress))
            return


def unmaterialised_layers(model: torch.nn.Module) -> list[str]:
    """'name (Type)' of every module still holding uninitialised (lazy) parameters."""
    from torch.nn.parameter import UninitializedParameter

    return [
        f"{name or 'the model'} ({type(module).__name__})"
        for name, module in model.named_modules()
        if any(isinstance(p, UninitializedParameter) for p in module.parameters(recurse=False))
    ]


def run_job(job_dir: Path, data: EvaluationData) -> dict:
    """Evaluate the candidate in job_dir/job.json; return (and write) the result dictionary."""
    job = json.loads((job_dir / "job.json").read_text())
    protocol = job["protocol"]
    run = _Run(_Progress(job_dir / "progress.jsonl", len(data.train_labels)))
    torch.manual_seed(protocol["seed"])
    torch.set_num_threads(protocol.get("threads", 1))
    try:
        model, prm, data = run.instantiate(job, data)
        checked = run.forward(model, data, bool(job.get("structural_tokens"))) and run.budget(model, protocol)
        if checked and not job.get("forward_only"):  # (a forward-only request stops before training)
            run.train(model, prm, data, protocol)
    except BaseException as exc:
        status = _status_for(run.stage, exc)
        run.finish_stage(run.stage, status, _message(run.stage, exc))
        run.result["status"] = status
    return run.result


class _Run:
    """One evaluation's stages in order; each records its duration and verdict in `result`, and a
    failing check ends the run with its status (an exception is caught by run_job, by `stage`)."""

    def __init__(self, progress: _Progress) -> None:
        self.progress = progress
        self.result: dict[str, Any] = {"stages": [], "status": "OK", "epoch_accuracies": []}
        self.stage = "instantiate"
        self.started = time.monotonic()

    def finish_stage(self, name: str, status: str = "OK", message: str = "") -> None:
        seconds = time.monotonic() - self.started
        self.result["stages"].append(
            {"stage": name, "status": status, "duration_seconds": seconds, "message": message}
        )
        self.started = time.monotonic()

    def fail(self, name: str, status: str, message: str) -> bool:
        self.finish_stage(name, status, message)
        self.result["status"] = status
        return False

    def instantiate(self, job: dict, data: EvaluationData) -> tuple[Any, dict, EvaluationData]:
        """Run the program, build its Net on the device: (model, hyperparameters, data on the device)."""
        protocol = job["protocol"]
        namespace: dict[str, Any] = {"__name__": "candidate"}
        exec(compile(job["code"], "<candidate>", "exec"), namespace)
        prm = {
            "lr": protocol["learning_rate"],
            "momentum": protocol["momentum"],
            "dropout": protocol["dropout"],
            "batch": protocol["batch_size"],
            "epoch": protocol["epochs"],
        }
        # CUDA is first touched here, in the child: the template never initialises it, so forking is safe
        wanted = job.get("device", "auto")
        device = torch.device(
            ("cuda" if torch.cuda.is_available() else "cpu") if wanted == "auto" else wanted
        )
        data = data.on(device)
        self.progress.stage(self.stage)
        model = namespace["Net"](data.in_shape, (data.num_classes,), prm, device).to(device)
        self.finish_stage("instantiate")
        return model, prm, data

    def forward(self, model: torch.nn.Module, data: EvaluationData, want_tokens: bool) -> bool:
        """Two images through the model: the output's shape and finiteness; its FLOPs (and structural
        tokens when asked)."""
        self.stage = "forward"
        self.progress.stage(self.stage)
        example = data.train_images[:2]
        model.eval()
        with torch.no_grad():
            output = model(example)
        if not isinstance(output, torch.Tensor) or tuple(output.shape) != (2, data.num_classes):
            shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
            message = f"forward: output {shape}, expected (2, {data.num_classes})"
            return self.fail("forward", "WRONG_OUTPUT_SHAPE", message)
        if not bool(torch.isfinite(output).all()):
            return self.fail("forward", "FORWARD_ERROR", "forward: the output holds NaN or infinity")
        if want_tokens:  # its architecture graph: one more forward pass, recorded; hashed by the service
            self.result["architecture_graph"] = record(model, example[:1]).to_json()
        self.result["flops"] = forward_flops(model, example[:1])
        self.finish_stage("forward")
        return True

    def budget(self, model: torch.nn.Module, protocol: dict) -> bool:
        """Every shape-inferring layer materialised, and the parameters within the budget."""
        unused = unmaterialised_layers(model)
        if unused:
            message = (f"param_budget: {len(unused)} shape-inferring layer(s) never called by forward, so "
                       f"their size is unknown: {', '.join(unused[:5])}")  # fmt: skip
            return self.fail("param_budget", "UNUSED_LAZY_LAYER", message)
        # counted after the forward pass, which gave every shape-inferring layer its parameters
        params = sum(p.numel() for p in model.parameters() if p.requires_grad)
        self.result["param_count"] = params
        if params > protocol["param_budget"]:
            message = f"param_budget: {params:,} > {protocol['param_budget']:,}"
            return self.fail("param_budget", "OVER_BUDGET", message)
        self.finish_stage("param_budget")
        return True

    def train(self, model: Any, prm: dict, data: EvaluationData, protocol: dict) -> None:
        """The model's own train_setup and learn, epoch by epoch, the validation accuracy after each."""
        progress, result = self.progress, self.result
        self.stage = "train"
        progress.stage(self.stage, "setup")
        model.train_setup(prm)
        progress.stage(self.stage, "learn")
        _watch_loss(model, progress)
        train_started = time.monotonic()
        for epoch in range(1, protocol["epochs"] + 1):
            progress.epoch = epoch

            def counted(epoch: int = epoch):
                for inputs, labels in training_batches(data, protocol["batch_size"], epoch, protocol["seed"]):
                    yield inputs, labels
                    progress.batch_done(len(labels))  # the model came back for the next one

            model.train()
            model.learn(counted())
            self.stage = "accuracy"
            progress.stage("accuracy", "evaluate")
            result["epoch_accuracies"].append(_accuracy(model, data, protocol["batch_size"], progress))
            self.stage = "train"
            if epoch < protocol["epochs"]:
                progress.stage("train", "learn")
        train_seconds = time.monotonic() - train_started
        result["train_images_per_second"] = progress.images_seen / train_seconds if train_seconds else 0.0
        recent = progress.losses[-50:]
        result["train_loss"] = sum(recent) / len(recent) if recent else 0.0
        result["accuracy"] = result["epoch_accuracies"][-1]
        self.finish_stage("train")
        self.finish_stage("accuracy")


def _accuracy(model: torch.nn.Module, data: EvaluationData, batch_size: int, progress: _Progress) -> float:
    model.eval()
    correct = seen = 0
    with torch.no_grad():
        for inputs, labels in validation_batches(data, max(batch_size, 256)):
            correct += int((model(inputs).argmax(dim=1) == labels).sum())
            seen += len(labels)
            progress.validation_batch_done(seen)
    return correct / len(data.validation_labels)
