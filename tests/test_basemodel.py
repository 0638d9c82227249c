"""The tiny base model: the packaged one loads and samples; `archloop base-model train` really trains."""

from __future__ import annotations

import dataclasses
import itertools
import json
from pathlib import Path

import pytest

from archloop import basemodel, corpus, pretraining, prompts
from archloop.lemur import iter_model_sources, lemur_wheel
from tools.testing import run_cli


def test_packaged_model_is_small_and_its_record_matches_its_files() -> None:
    files = list(basemodel.TINY_MODEL_DIR.iterdir())
    assert sum(f.stat().st_size for f in files) <= 30 * 2**20
    record = json.loads((basemodel.TINY_MODEL_DIR / "training.json").read_text())
    assert record["model_sha256"] == basemodel.model_hash(basemodel.TINY_MODEL_DIR)
    assert record["final_held_out_loss"] > 0 and record["tokens_seen"] > 0
    info = run_cli("base-model", "info", "--json")
    assert info.returncode == 0 and json.loads(info.stdout)["model_sha256"] == record["model_sha256"]


def test_chat_template_renders_prompts_as_a_prefix_of_the_training_pair() -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(basemodel.TINY_MODEL_DIR)
    pair = prompts.chat_messages(prompts.TASKS["mnist"], "import torch\n")
    prompt = tokenizer.apply_chat_template(pair[:-1], tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(pair, tokenize=False)
    assert full.startswith(prompt) and prompt.endswith("<|assistant|>\n") and full.endswith("<|end|>\n")
    ids = tokenizer(full, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == full  # byte-level BPE round-trips
    assert tokenizer.convert_ids_to_tokens(tokenizer.eos_token_id) == "<|end|>"


def test_resolving_base_model_references(tmp_path: Path) -> None:
    assert basemodel.resolve_base_model("") == basemodel.TINY_MODEL_DIR
    assert basemodel.resolve_base_model(str(basemodel.TINY_MODEL_DIR)) == basemodel.TINY_MODEL_DIR
    assert basemodel.resolve_base_model("Qwen/Qwen2.5-Coder-7B-Instruct") == "Qwen/Qwen2.5-Coder-7B-Instruct"
    with pytest.raises(basemodel.BaseModelNotFound, match="does not exist"):
        basemodel.resolve_base_model(str(tmp_path / "missing"))
    with pytest.raises(basemodel.BaseModelNotFound, match=r"config\.json"):
        basemodel.resolve_base_model(str(tmp_path))


def test_learning_rate_warms_up_then_decays_to_the_floor() -> None:
    s = basemodel.BaseModelSettings(
        steps=100, warmup_steps=10, learning_rate=1e-3, min_learning_rate_ratio=0.1
    )
    rates = [pretraining._learning_rate(step, s) for step in range(100)]
    assert rates[0] == pytest.approx(1e-4) and rates[9] == pytest.approx(1e-3)
    assert all(a >= b for a, b in itertools.pairwise(rates[10:]))
    assert rates[-1] == pytest.approx(1e-4, rel=0.01)


def test_extracting_code_from_responses() -> None:
    assert prompts.extract_code("Here:\n```python\nimport torch\n```\nbye") == ("import torch\n", "fence")
    assert prompts.extract_code("```python\nimport torch\nclass Net(") == (
        "import torch\nclass Net(\n",
        "fence",
    )
    assert prompts.extract_code("import torch") == ("import torch\n", "raw")


def _tiny_corpus(tmp_path: Path, count: int, datasets: tuple[str, ...] = ("cifar-10",)) -> Path:
    """A corpus folder of `count` chat pairs of short LEMUR models."""
    rows = []
    for name, code in iter_model_sources(lemur_wheel()):
        if len(code) < 2200:
            rows.extend(corpus.example_records(name, code, dict.fromkeys(datasets, 100_000)))
        if len(rows) >= count:
            break
    corpus_dir = tmp_path / "corpus"
    corpus_dir.mkdir()
    (corpus_dir / "examples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (corpus_dir / "manifest.json").write_text(
        json.dumps({"version": "test", "files": {"examples.jsonl": {"sha256": "x"}}})
    )
    return corpus_dir


@pytest.mark.slow
def test_the_train_command_trains_a_model_that_samples_token_by_token(tmp_path: Path) -> None:
    corpus_dir = _tiny_corpus(tmp_path, 6, ("cifar-10", "mnist"))
    out = tmp_path / "model"
    args = [
        "base-model",
        "train",
        "--corpus",
        str(corpus_dir),
        "--out",
        str(out),
        "--steps",
        "12",
        "--n-layer",
        "1",
        "--n-embd",
        "32",
        "--n-head",
        "2",
        "--vocab-size",
        "400",
        "--context-tokens",
        "2048",
        "--warmup-steps",
        "2",
        "--accumulation-steps",
        "1",
        "--eval-every-steps",
        "6",
        "--checkpoint-dir",
        str(tmp_path / "checkpoints"),
    ]
    result = run_cli(*args, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    record = json.loads(result.stdout)
    history = json.loads((out / "training.json").read_text())["history"]
    assert record["parameters"] < 100_000 and [h["step"] for h in history] == [6, 12]
    steps = [json.loads(line) for line in result.stderr.splitlines() if line.startswith('{"event": "step"')]
    assert len(steps) == 12 and steps[-1]["loss"] < steps[0]["loss"]

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    text = tokenizer.apply_chat_template(
        prompts.chat_messages(prompts.TASKS["cifar-10"]), tokenize=False, add_generation_prompt=True
    )
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    torch.manual_seed(0)
    sampled = model.generate(ids, do_sample=True, max_new_tokens=20, pad_token_id=tokenizer.pad_token_id)
    assert sampled.shape[1] > ids.shape[1]

    bad = run_cli("base-model", "train", "--corpus", str(tmp_path / "none"), "--out", str(tmp_path / "m2"))
    assert bad.returncode == 1 and "archloop corpus build" in bad.stderr
    zero = run_cli("base-model", "train", "--corpus", str(corpus_dir), "--steps", "0")
    assert zero.returncode == 2 and "--steps" in zero.stderr


TINY = basemodel.BaseModelSettings(
    steps=8, n_layer=1, n_embd=32, n_head=2, vocab_size=1500, context_tokens=1024, warmup_steps=2,
    accumulation_steps=1, eval_every_steps=4, checkpoint_every_steps=3, holdout_share=0.25,
)  # fmt: skip


def test_only_the_answer_is_in_the_loss() -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(basemodel.TINY_MODEL_DIR)
    messages = prompts.chat_messages(prompts.TASKS["cifar-10"], "import torch\n")
    ids, mask = basemodel.encode_example(tokenizer, messages)
    answer = tokenizer.decode([t for t, m in zip(ids, mask, strict=True) if m])
    assert answer == "```python\nimport torch\n```<|end|>\n"
    assert mask == sorted(mask)  # the prompt's tokens first, all masked


class _Interrupt(Exception):
    pass


def _stop_at_step_5(event: dict) -> None:
    """A progress callback that interrupts training as step 5 ends (after the checkpoint of step 3)."""
    if event.get("step") == 5:
        raise _Interrupt


@pytest.mark.slow
def test_an_interrupted_run_resumes_from_its_checkpoint_and_ends_where_an_unbroken_one_does(
    tmp_path: Path,
) -> None:
    corpus_dir = _tiny_corpus(tmp_path, 40)
    unbroken = pretraining.train_base_model(corpus_dir, tmp_path / "a", TINY, checkpoint_dir=tmp_path / "ca")

    with pytest.raises(_Interrupt):
        pretraining.train_base_model(corpus_dir, tmp_path / "b", TINY, _stop_at_step_5, tmp_path / "cb")
    events: list[dict] = []
    resumed = pretraining.train_base_model(corpus_dir, tmp_path / "b", TINY, events.append, tmp_path / "cb")
    assert events[0]["event"] == "data_ready" and events[0]["resumed_at_step"] == 3  # the last checkpoint
    assert [e["step"] for e in events[1:]] == [4, 5, 6, 7, 8]

    def losses(record: dict) -> list[dict]:
        return [{k: v for k, v in h.items() if k != "seconds"} for h in record["history"]]

    assert losses(resumed) == losses(unbroken)  # same losses, step for step
    assert all(h["held_out_loss"] > 0 for h in resumed["history"])
    assert basemodel.weights_sha256(tmp_path / "b") == basemodel.weights_sha256(tmp_path / "a")
    # another corpus or other settings never resume a checkpoint that is not theirs
    other = dataclasses.replace(TINY, seed=7)
    events.clear()
    pretraining.train_base_model(corpus_dir, tmp_path / "c", other, events.append, tmp_path / "cb")
    assert events[0]["resumed_at_step"] == 0


@pytest.mark.slow
def test_a_resumed_run_may_be_cut_short_or_extended(tmp_path: Path) -> None:
    corpus_dir = _tiny_corpus(tmp_path, 40)

    with pytest.raises(_Interrupt):
        pretraining.train_base_model(corpus_dir, tmp_path / "m", TINY, _stop_at_step_5, tmp_path / "c")
    events: list[dict] = []
    shorter = dataclasses.replace(TINY, steps=3)
    cut = pretraining.train_base_model(corpus_dir, tmp_path / "m", shorter, events.append, tmp_path / "c")
    assert [e["event"] for e in events] == ["data_ready"] and events[0]["resumed_at_step"] == 3
    assert cut["steps_run"] == 3 and cut["settings"]["steps"] == 3  # the checkpoint's model, evaluated
    assert cut["final_held_out_loss"] > 0 and (tmp_path / "m" / "training.json").exists()
    events.clear()
    longer = dataclasses.replace(TINY, steps=10)
    more = pretraining.train_base_model(corpus_dir, tmp_path / "n", longer, events.append, tmp_path / "c")
    assert events[0]["resumed_at_step"] == 3 and [e["step"] for e in events[1:]] == list(range(4, 11))
    assert more["steps_run"] == 10


def test_training_stops_once_the_held_out_loss_stalls() -> None:
    flat = [{"held_out_loss": x} for x in (2.0, 1.0, 0.999, 0.998, 0.9991, 0.9995)]
    assert pretraining._stalled(flat, 4)
    falling = [{"held_out_loss": x} for x in (2.0, 1.0, 0.99, 0.97, 0.95, 0.93)]
    assert not pretraining._stalled(falling, 4) and not pretraining._stalled(flat[:4], 4)


def test_the_tiny_model_runs_gpt2s_gelu_as_torchs_fused_kernel_with_the_same_outputs() -> None:
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.activations import GELUTanh, NewGELUActivation

    from archloop.basemodel import TINY_MODEL_DIR, load_base

    fused, _, _ = load_base("", "cpu")
    written_out = AutoModelForCausalLM.from_pretrained(TINY_MODEL_DIR, dtype=torch.float32)
    assert written_out.config.activation_function == "gelu_new"  # what the packaged config says
    assert isinstance(written_out.transformer.h[0].mlp.act, NewGELUActivation)
    assert all(isinstance(block.mlp.act, GELUTanh) for block in fused.transformer.h)
    ids = torch.randint(5, 4000, (2, 200))
    with torch.inference_mode():
        a, b = fused.eval()(input_ids=ids).logits, written_out.eval()(input_ids=ids).logits
    assert torch.allclose(a, b, atol=1e-4), (a - b).abs().max()
