"""Region edits (archloop.regions, tools/region_pairs.py): sites are whole statements of one method, an
insertion site exists for a wiring factor the parent lacks, a splice keeps the parent byte for byte
outside the hole, the scope check reads the whole child, and the training examples cut every engine edit
to a site and splice back to the child exactly; the FIM tokens are one id each in a trained tokenizer
and its chat template."""

from __future__ import annotations

import ast
import random
from pathlib import Path

import pytest
import torch

from archloop import basemodel, corpus, mutate, pretraining, prompts, regions
from archloop.archgraph import Architecture
from archloop.archtrace import record
from archloop.factors import load_factors, touched_factors
from archloop.rewrite import canonical
from tests.test_mutate import PROGRAMS, _corpus
from tools import edit_pairs, region_pairs

FACTORS = load_factors()
CANONICAL = {name: canonical(code) for name, code in PROGRAMS.items()}


def _wiring(code: str) -> str:
    namespace: dict = {}
    exec(compile(code, "<model>", "exec"), namespace)
    model = namespace["Net"]((1, 3, 32, 32), (10,), {"lr": 0.01, "momentum": 0.9, "dropout": 0.1}, "cpu")
    example = torch.zeros(2, 3, 32, 32)
    model.eval()(example)
    return Architecture.of(record(model, example)).wiring_hash


@pytest.mark.parametrize("name", list(CANONICAL))
def test_sites_are_whole_statements_of_one_method_and_cut_and_splice_give_the_parent_back(name) -> None:
    code = CANONICAL[name]
    tree = ast.parse(code)
    starts = {n.lineno for n in ast.walk(tree) if isinstance(n, ast.stmt)}
    ends = {n.end_lineno for n in ast.walk(tree) if isinstance(n, ast.stmt)}
    found = 0
    for factor in FACTORS:
        for site in regions.sites(code, factor, FACTORS):
            found += 1
            assert site.start in starts and site.end in ends, site
            prefix, middle, suffix = regions.cut(code, site)
            assert middle and regions.splice(prefix, middle, suffix) == code
            # whatever the model writes, the parent outside the hole stays byte for byte
            child = regions.splice(prefix, "\n        pass  # written\n\n", suffix)
            assert child.startswith(prefix) and child.endswith(suffix)
            assert child[len(prefix) : len(child) - len(suffix)] == "        pass  # written\n"
    assert found >= len(FACTORS)


def test_a_wiring_factor_the_parent_lacks_gets_an_insertion_site_that_can_change_the_wiring() -> None:
    parent = CANONICAL["baseline"]  # a plain chain: no skip, no gate
    (site,) = regions.sites(parent, "skip_connections", FACTORS)
    assert site.kind == "insert" and site.method == "Net.forward"
    (gate_site,) = regions.sites(parent, "attention", FACTORS)
    assert gate_site == regions.Site("attention", "Net.forward", site.start, site.end, "insert")
    prefix, _, suffix = regions.cut(parent, site)
    residual = "        y = self.features(x)\n        x = y + y.mean(dim=1, keepdim=True)\n"
    child = regions.splice(
        prefix, residual + "        x = torch.flatten(x, 1)\n        return self.classifier(x)\n", suffix
    )
    verdict = regions.scope(parent, child, "skip_connections", FACTORS)
    assert verdict.ok and verdict.touched == ("skip_connections",)
    assert _wiring(child) != _wiring(parent)  # an architecture the parent did not have
    depth = [s for s in regions.sites(parent, "depth", FACTORS) if s.kind == "insert"]
    assert [s.method for s in depth] == ["Net.__init__"]


def test_the_scope_check_reads_the_whole_child() -> None:
    parent = CANONICAL["gated"]
    site = next(s for s in regions.sites(parent, "activation", FACTORS) if s.method == "Net.__init__")
    prefix, middle, suffix = regions.cut(parent, site)
    swapped = regions.splice(prefix, middle.replace("nn.ReLU()", "nn.GELU()"), suffix)
    assert regions.scope(parent, swapped, "activation", FACTORS) == regions.Scope("in_scope", ("activation",))
    entangled = regions.splice(
        prefix, middle.replace("nn.ReLU()", "nn.GELU()").replace("16, 3", "32, 3"), suffix
    )
    verdict = regions.scope(parent, entangled, "activation", FACTORS)
    assert verdict.verdict == "out_of_scope" and "width" in verdict.touched and not verdict.ok
    assert regions.scope(parent, parent, "activation", FACTORS).verdict == "no_change"
    broken = regions.splice(prefix, "        self.stem = nn.Sequential(\n", suffix)
    assert regions.scope(parent, broken, "activation", FACTORS).verdict == "does_not_parse"


@pytest.mark.parametrize("name", list(CANONICAL))
def test_every_scoped_engine_edit_fits_a_site_and_splices_back_to_the_child(name) -> None:
    parent = CANONICAL[name]
    checked = 0
    for factor in mutate.FACTORS:
        for child, _ in mutate.mutations(parent, factor, random.Random(f"1:{name}:{factor}")):
            if touched_factors(parent, child, FACTORS) != [factor]:
                continue
            site = regions.training_site(parent, child, factor, FACTORS)
            assert site is not None, (factor, child)
            prefix, _, suffix = regions.cut(parent, site)
            assert regions.splice(prefix, regions.child_middle(parent, child, site), suffix) == child
            checked += 1
    assert checked >= 5


def test_region_prompts_hold_the_hole_in_fim_tokens_or_in_one_marker_line() -> None:
    task = prompts.TASKS["mnist"]
    fim = prompts.region_messages(task, "A\n", "B\n", "activation", "the activation functions")
    assert fim[-1]["content"].endswith("<|fim_prefix|>A\n<|fim_suffix|>B\n<|fim_middle|>")
    assert "changes only its activation (the activation functions)" in fim[-1]["content"]
    text = prompts.region_messages(task, "A\n", "B\n", "activation", "x", fim=False)[-1]["content"]
    assert f"A\n{prompts.HOLE_MARKER}\nB" in text and "<|fim" not in text
    assert prompts.region_middle(prompts.region_answer("    y = 1\n", fim=False), fim=False) == "    y = 1"
    assert prompts.region_middle("    y = 1\n") == "    y = 1\n"


@pytest.fixture(scope="module")
def region_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = _corpus(tmp_path_factory.mktemp("regions"))
    edits = edit_pairs.build_edit_pairs(folder, folder.with_name("edits"), seed=1, workers=2)
    return region_pairs.build_region_pairs(folder, edits.out_dir, folder.with_name("regions"), seed=1).out_dir


@pytest.mark.slow
def test_region_examples_splice_back_to_the_engines_children_and_fim_examples_to_the_programs(
    region_folder,
) -> None:
    manifest = corpus.json.loads((region_folder / "manifest.json").read_text())
    folder = region_folder.with_name("corpus")
    programs = {r["model"]: canonical(prompts.extract_code(r["messages"][-1]["content"])[0])
                for r in corpus.read_jsonl(folder / "examples.jsonl")}  # fmt: skip
    children = {r["model"]: prompts.extract_code(r["messages"][-1]["content"])[0]
                for r in corpus.read_jsonl(region_folder.with_name("edits") / "edits.jsonl")
                if r["mode"] == "factor"}  # fmt: skip
    records = list(corpus.read_jsonl(region_folder / "edits.jsonl"))
    assert manifest["fim_examples"] == len(programs) and manifest["region_examples"] > 0
    assert sum(c["edits"] for c in manifest["counts"].values()) == len(children)
    for r in records:
        content = r["messages"][1]["content"]
        prefix = content.split(prompts.FIM_PREFIX)[1].split(prompts.FIM_SUFFIX)[0]
        suffix = content.split(prompts.FIM_SUFFIX)[1].split(prompts.FIM_MIDDLE)[0]
        spliced = regions.splice(prefix, r["messages"][-1]["content"], suffix)
        assert spliced == (children[r["model"]] if r["mode"] == "region" else programs[r["parent"]])
        if r["mode"] == "region":
            assert touched_factors(programs[r["parent"]], spliced, FACTORS) == [r["factor"]]
    again = region_pairs.build_region_pairs(
        folder, region_folder.with_name("edits"), folder.with_name("again"), 1
    )
    assert again.manifest["edits_sha256"] == manifest["edits_sha256"]


@pytest.mark.slow
def test_training_on_region_examples_adds_the_fim_tokens_to_tokenizer_and_model(
    region_folder, tmp_path
) -> None:
    settings = basemodel.BaseModelSettings(
        steps=2, n_layer=1, n_embd=32, n_head=2, vocab_size=600, context_tokens=3072, warmup_steps=1,
        accumulation_steps=1, eval_every_steps=2, holdout_share=0.15,
    )  # fmt: skip
    out = tmp_path / "model"
    pretraining.train_base_model(
        region_folder.with_name("corpus"), out, settings, checkpoint_dir=tmp_path / "c",
        edits_dir=region_folder, edit_share=0.5,
    )  # fmt: skip
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    ids = [tokenizer(t, add_special_tokens=False).input_ids for t in prompts.FIM_TOKENS]
    assert all(len(i) == 1 for i in ids) and len({i[0] for i in ids}) == 3
    assert model.get_input_embeddings().num_embeddings >= len(tokenizer) > max(i[0] for i in ids)
    chat = prompts.region_messages(prompts.TASKS["mnist"], "import torch\n", "x = 1\n", "width", "w")
    text = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    rendered = tokenizer(text, add_special_tokens=False).input_ids  # as the generator encodes a prompt
    assert all(i[0] in rendered for i in ids)
