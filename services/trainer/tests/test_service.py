"""The trainer service as a real process: LoRA jobs on the tiny model on CPU, cancel, restart, bad input."""

from __future__ import annotations

import itertools
import json
import os
import signal
import time
from pathlib import Path

import grpc
import pytest

from archloop import corpus
from archloop.lemur import iter_model_sources, lemur_wheel
from archloop.v1 import common_pb2, trainer_pb2, trainer_pb2_grpc
from services.evaluator.screen import check_contract, parse_source

pytestmark = pytest.mark.slow

TERMINAL = {
    trainer_pb2.FINE_TUNE_STATE_SUCCEEDED,
    trainer_pb2.FINE_TUNE_STATE_FAILED,
    trainer_pb2.FINE_TUNE_STATE_CANCELLED,
    trainer_pb2.FINE_TUNE_STATE_INTERRUPTED,
}


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six short LEMUR models that satisfy the contract, as chat pairs (CIFAR-10 prompt only)."""
    out = tmp_path_factory.mktemp("corpus")
    rows = []
    for name, code in iter_model_sources(lemur_wheel()):
        if 1000 <= len(code) <= 2000 and check_contract(parse_source(code)).ok:
            rows.append(corpus.example_records(name, code, {"cifar-10": 100_000})[0])
        if len(rows) == 6:
            break
    (out / "examples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out / "examples.jsonl"


@pytest.fixture
def trainer(start_service, tmp_path):
    def start(*extra: str):
        proc = start_service(
            "trainer",
            "--state-dir",
            str(tmp_path / "state"),
            "--artifacts-dir",
            str(tmp_path / "artifacts"),
            "--checkpoint-every-steps",
            "2",
            *extra,
        )
        channel = grpc.insecure_channel(proc.address)
        return proc, trainer_pb2_grpc.TrainerServiceStub(channel)

    return start


def request(
    corpus_path: Path, job_id: str = "job-1", adapter: str = "exp-1-cycle-1", **schedule
) -> trainer_pb2.StartFineTuneRequest:
    return trainer_pb2.StartFineTuneRequest(
        job_id=job_id,
        experiment_id="exp-1",
        cycle=1,
        corpus=trainer_pb2.CorpusSnapshot(path=str(corpus_path)),
        adapter_name=adapter,
        seed=7,
        schedule=common_pb2.TrainingSchedule(
            **{
                "epochs": 3,
                "learning_rate": 2e-3,
                "gradient_accumulation_steps": 1,
                "warmup_steps": 1,
                **schedule,
            }
        ),
    )


def watch_until_done(stub, job_id: str, timeout: float = 300) -> tuple[list, trainer_pb2.FineTuneJob]:
    steps, last = [], None
    for update in stub.WatchFineTune(trainer_pb2.WatchFineTuneRequest(job_id=job_id), timeout=timeout):
        if update.HasField("step"):
            steps.append(update.step)
        else:
            last = update.job
    assert last is not None and last.state in TERMINAL
    return steps, last


def wait_for_step(stub, job_id: str, step: int, timeout: float = 120) -> trainer_pb2.FineTuneJob:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = stub.GetFineTune(trainer_pb2.GetFineTuneRequest(job_id=job_id), timeout=5).job
        if job.step >= step:
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} never reached step {step}")


def code_loss_and_logits(adapter_path: str | None, corpus_path: Path):
    """Mean loss on the code tokens of the corpus, and the logits, of the base model (+ adapter)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from archloop.basemodel import TINY_MODEL_DIR
    from services.trainer.data import encode_examples

    tokenizer = AutoTokenizer.from_pretrained(TINY_MODEL_DIR)
    model = AutoModelForCausalLM.from_pretrained(TINY_MODEL_DIR, dtype=torch.float32)
    if adapter_path:
        model = PeftModel.from_pretrained(model, adapter_path)
    model.eval()
    examples, _ = encode_examples(corpus_path, tokenizer, 1024)
    losses, logits = [], []
    with torch.no_grad():
        for e in examples:
            out = model(input_ids=torch.tensor([e.input_ids]), labels=torch.tensor([e.labels]))
            losses.append(float(out.loss))
            logits.append(out.logits)
    return sum(losses) / len(losses), logits


def test_lora_job_completes_loss_falls_and_adapter_changes_the_model(trainer, small_corpus) -> None:
    _, stub = trainer()
    started = stub.StartFineTune(request(small_corpus), timeout=30)
    assert started.created and started.job.state == trainer_pb2.FINE_TUNE_STATE_QUEUED
    again = stub.StartFineTune(request(small_corpus), timeout=30)  # idempotent by job id
    assert not again.created and again.job.job_id == "job-1"

    steps, job = watch_until_done(stub, "job-1")
    assert job.state == trainer_pb2.FINE_TUNE_STATE_SUCCEEDED, job.error
    assert [s.step for s in steps] == list(range(1, 19)) and job.total_steps == 18  # 6 examples × 3 epochs
    first, last = steps[:6], steps[-6:]  # loss is on the code tokens only
    assert sum(s.loss for s in last) / 6 < 0.8 * sum(s.loss for s in first) / 6
    assert all(s.tokens_per_second > 0 and s.eta_seconds >= 0 for s in steps)
    rates = [s.learning_rate for s in steps]  # warm-up from 0 over one step, then cosine down
    assert rates[1] == pytest.approx(2e-3) and all(a > b > 0 for a, b in itertools.pairwise(rates[1:]))

    adapter = stub.GetAdapter(trainer_pb2.GetAdapterRequest(name="exp-1-cycle-1"), timeout=5).adapter
    assert adapter.path.endswith("exp-1/cycle-1") and adapter.job_id == "job-1"
    assert (Path(adapter.path) / "adapter_model.safetensors").exists()
    assert adapter.lora.rank == 32 and list(adapter.lora.target_modules) == ["c_attn", "c_proj", "c_fc"]
    assert len(adapter.weights_sha256) == 64 and len(adapter.base_model_sha256) == 64
    assert adapter.schedule.learning_rate == 2e-3 and adapter.final_loss == pytest.approx(job.loss)
    listed = stub.ListAdapters(trainer_pb2.ListAdaptersRequest(experiment_id="exp-1"), timeout=5).adapters
    assert [a.name for a in listed] == ["exp-1-cycle-1"]
    assert job.adapter.weights_sha256 == adapter.weights_sha256

    base_loss, base_logits = code_loss_and_logits(None, small_corpus)
    tuned_loss, tuned_logits = code_loss_and_logits(adapter.path, small_corpus)
    assert tuned_loss < base_loss  # the adapter changes the model's output, towards the corpus
    assert max(float((a - b).abs().max()) for a, b in zip(tuned_logits, base_logits, strict=True)) > 1e-2


def test_cancel_stops_within_seconds(trainer, small_corpus) -> None:
    _, stub = trainer()
    stub.StartFineTune(request(small_corpus, epochs=50), timeout=30)
    wait_for_step(stub, "job-1", 1)
    started = time.monotonic()
    job = stub.CancelFineTune(trainer_pb2.CancelFineTuneRequest(job_id="job-1"), timeout=30).job
    assert time.monotonic() - started < 10
    assert job.state == trainer_pb2.FINE_TUNE_STATE_CANCELLED
    assert stub.ListAdapters(trainer_pb2.ListAdaptersRequest(), timeout=5).adapters == []


def test_crash_marks_the_job_interrupted_and_resume_continues_from_the_checkpoint(
    trainer, small_corpus
) -> None:
    proc, stub = trainer()
    stub.StartFineTune(request(small_corpus, epochs=2), timeout=30)
    wait_for_step(stub, "job-1", 3)  # a checkpoint at step 2
    os.kill(proc.proc.pid, signal.SIGKILL)
    proc.proc.wait(10)

    proc, stub = trainer()
    job = stub.GetFineTune(trainer_pb2.GetFineTuneRequest(job_id="job-1"), timeout=5).job
    assert job.state == trainer_pb2.FINE_TUNE_STATE_INTERRUPTED and job.last_checkpoint_step >= 2

    resumed = stub.StartFineTune(
        trainer_pb2.StartFineTuneRequest(**{**_fields(request(small_corpus, epochs=2)), "resume": True}),
        timeout=30,
    )
    assert not resumed.created
    steps, job = watch_until_done(stub, "job-1")
    assert job.state == trainer_pb2.FINE_TUNE_STATE_SUCCEEDED, job.error
    assert steps[0].step == job.last_checkpoint_step + 1 or steps[0].step > 2
    assert steps[-1].step == 12


def _fields(message) -> dict:
    return {f.name: v for f, v in message.ListFields()}


def _worker_pid(state_dir: Path, job_id: str) -> int:
    log = (state_dir / "jobs" / job_id / "worker.log").read_text()
    return int(log.split("archloop trainer worker ", 1)[1].split(":", 1)[0])


def test_a_warm_worker_runs_the_next_job_as_a_fresh_worker_would(trainer, small_corpus, tmp_path) -> None:
    """Two jobs of one spec in one warm worker, and the same spec in a fresh one: the same adapter."""
    warm, stub = trainer()
    adapters = {}
    for job_id in ("warm-1", "warm-2"):
        stub.StartFineTune(request(small_corpus, job_id, job_id, epochs=1), timeout=30)
        _, job = watch_until_done(stub, job_id)
        assert job.state == trainer_pb2.FINE_TUNE_STATE_SUCCEEDED, job.error
        adapters[job_id] = job.adapter.weights_sha256
    assert _worker_pid(tmp_path / "state", "warm-1") == _worker_pid(tmp_path / "state", "warm-2")
    warm.proc.terminate()  # the same state folder next, so one service at a time
    warm.proc.wait(30)
    _, cold_stub = trainer("--warm-workers", "false")
    cold_stub.StartFineTune(request(small_corpus, "cold", "cold", epochs=1), timeout=30)
    _, job = watch_until_done(cold_stub, "cold")
    assert job.state == trainer_pb2.FINE_TUNE_STATE_SUCCEEDED, job.error
    assert adapters["warm-1"] == adapters["warm-2"] == job.adapter.weights_sha256


@pytest.mark.parametrize(
    ("change", "code", "field"),
    [
        (
            {"corpus": trainer_pb2.CorpusSnapshot(path="/nonexistent/examples.jsonl")},
            "INVALID_ARGUMENT",
            "corpus.path",
        ),
        ({"corpus": "EMPTY"}, "INVALID_ARGUMENT", "corpus.path"),
        ({"base_model": "/nonexistent/model"}, "INVALID_ARGUMENT", "base_model"),
        ({"lora": common_pb2.LoraSettings(rank=0, alpha=32)}, "INVALID_ARGUMENT", "lora.rank"),
        (
            {"schedule": common_pb2.TrainingSchedule(learning_rate=-1e-5)},
            "INVALID_ARGUMENT",
            "schedule.learning_rate",
        ),
        ({"adapter_name": "bad name!"}, "INVALID_ARGUMENT", "adapter_name"),
        ({"job_id": ""}, "INVALID_ARGUMENT", "job_id"),
        ({"job_id": "job-2"}, "ALREADY_EXISTS", "exp-1-cycle-1"),
    ],
)
def test_bad_input_is_rejected_with_the_field_named(
    trainer, small_corpus, tmp_path, change, code, field
) -> None:
    _, stub = trainer()
    if change.get("corpus") == "EMPTY":
        (tmp_path / "empty.jsonl").write_text("\n")
        change = {"corpus": trainer_pb2.CorpusSnapshot(path=str(tmp_path / "empty.jsonl"))}
    if code == "ALREADY_EXISTS":  # the adapter name is taken by job-1
        stub.StartFineTune(request(small_corpus, epochs=1), timeout=30)
    bad = trainer_pb2.StartFineTuneRequest(**{**_fields(request(small_corpus)), **change})
    with pytest.raises(grpc.RpcError) as err:
        stub.StartFineTune(bad, timeout=30)
    assert err.value.code().name == code and field in err.value.details()
    jobs = stub.ListFineTunes(trainer_pb2.ListFineTunesRequest(), timeout=5).jobs
    assert [j.job_id for j in jobs] == (["job-1"] if code == "ALREADY_EXISTS" else [])


def test_unknown_job_is_not_found(trainer) -> None:
    _, stub = trainer()
    for call, message in (
        (stub.GetFineTune, trainer_pb2.GetFineTuneRequest(job_id="nope")),
        (stub.CancelFineTune, trainer_pb2.CancelFineTuneRequest(job_id="nope")),
        (stub.GetAdapter, trainer_pb2.GetAdapterRequest(name="nope")),
    ):
        with pytest.raises(grpc.RpcError) as err:
            call(message, timeout=5)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
