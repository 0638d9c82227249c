"""The mutation engine (archloop.mutate) and the edit-pair builder (tools/edit_pairs.py): every kept edit
builds and runs at the task's shapes, meets the budget and touches exactly its factor; delta pairs apply
back to their factor twins; the pairs join base-model training in the share asked."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from archloop import basemodel, corpus, forwardcheck, mutate, pretraining, prompts
from archloop.factors import load_factors, touched_factors
from archloop.lemur import iter_model_sources, lemur_wheel
from archloop.rewrite import canonical
from services.generator.delta import apply_response
from tests.programs import program
from tools import edit_pairs

pytestmark = pytest.mark.slow  # forward checks of every proposal, a pair build, a training run
FACTORS = load_factors()
BASELINE = prompts.BASELINE_FILE.read_text()
RESIDUAL_GATED = """\
import torch
import torch.nn as nn


def supported_hyperparameters():
    return {'lr', 'momentum'}


class Net(nn.Module):

    def __init__(self, in_shape, out_shape, prm, device):
        super().__init__()
        self.device = device
        self.stem = nn.Sequential(nn.Conv2d(in_shape[1], 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.gate = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(16, 16, 1), nn.Sigmoid())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, out_shape[0])

    def forward(self, x):
        x = self.stem(x)
        x = x + self.block(x)
        x = x * self.gate(x)
        return self.fc(torch.flatten(self.pool(x), 1))

    def train_setup(self, prm):
        self.to(self.device)
        self.criteria = (nn.CrossEntropyLoss().to(self.device),)
        self.optimizer = torch.optim.SGD(self.parameters(), lr=prm['lr'], momentum=prm['momentum'])

    def learn(self, train_data):
        self.train()
        for inputs, labels in train_data:
            self.optimizer.zero_grad()
            loss = self.criteria[0](self(inputs.to(self.device)), labels.to(self.device))
            loss.backward()
            self.optimizer.step()
"""
# eager and shape-inferring, plain and residual-with-a-gate: every factor has something to change
PROGRAMS = {"baseline": BASELINE, "family-1": program(1), "family-4": program(4), "gated": RESIDUAL_GATED}


def test_proposals_are_seeded_distinct_and_absent_when_nothing_of_the_factor_exists() -> None:
    for factor in mutate.FACTORS:
        first = mutate.mutations(RESIDUAL_GATED, factor, random.Random(3))
        assert first == mutate.mutations(RESIDUAL_GATED, factor, random.Random(3)), factor
        texts = [text for text, _ in first]
        assert len(set(texts)) == len(texts) and canonical(RESIDUAL_GATED) not in texts
    assert mutate.mutations(BASELINE, "attention", random.Random(0)) == []  # no gate to take away
    with pytest.raises(KeyError):
        mutate.mutations(BASELINE, "colour", random.Random(0))


def test_every_factor_yields_an_edit_that_runs_meets_the_budget_and_touches_only_that_factor() -> None:
    """The engine's contract, checked the way the pair builder checks it: forward at 3×32×32 → 10,
    ≤ 500k parameters, and the factor signatures of the edit differ from the parent's in exactly one."""
    kept: dict[str, int] = dict.fromkeys(mutate.FACTORS, 0)
    for name, code in PROGRAMS.items():
        for factor in mutate.FACTORS:
            for text, what in mutate.mutations(code, factor, random.Random(f"{name}:{factor}")):
                result = forwardcheck.check_forward(text, (3, 32, 32), 10)
                if (
                    result.ok
                    and result.parameters <= 500_000
                    and touched_factors(code, text, FACTORS) == [factor]
                ):
                    kept[factor] += 1
                    assert what
    assert all(kept.values()), kept


def _corpus(tmp_path: Path) -> Path:
    """A corpus folder of the four programs above and three short LEMUR models."""
    rows = []
    for name, code in PROGRAMS.items():
        rows += corpus.example_records(name, code, {"cifar-10": 100_000})
    lemur = [(n, c) for n, c in iter_model_sources(lemur_wheel()) if "LazyConv2d" not in c and len(c) < 2500]
    for name, code in lemur[:3]:
        rows += corpus.example_records(name, code, {"cifar-10": 100_000})
    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "examples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    files = {"examples.jsonl": {"sha256": "made by the test"}}
    (folder / "manifest.json").write_text(json.dumps({"version": "test", "files": files}))
    return folder


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> edit_pairs.EditPairsReport:
    folder = _corpus(tmp_path_factory.mktemp("edits"))
    return edit_pairs.build_edit_pairs(folder, folder.with_name("edits"), seed=1, workers=2)


def test_edit_pairs_are_verified_rendered_with_the_generators_templates_and_apply_back(built) -> None:
    records = edit_pairs.load_edit_pairs(built.out_dir)
    counts = built.manifest["counts"]
    assert built.manifest["pairs"] == len(records) == 2 * sum(c["kept"] for c in counts.values())
    for factor, c in counts.items():
        assert c["proposed"] >= c["built"] >= c["in_budget"] >= c["scoped"] >= c["kept"], factor
    assert all(
        counts[f]["kept"] for f in ("activation", "normalisation", "width", "depth", "skip_connections")
    )
    by_id = {r["id"]: r for r in records}
    sources = {r["model"]: prompts.extract_code(r["messages"][-1]["content"])[0]
               for r in corpus.read_jsonl(built.out_dir.with_name("corpus") / "examples.jsonl")}  # fmt: skip
    for record in records:
        if record["mode"] != "delta":
            continue
        twin = by_id[record["id"].replace("#delta", "#factor")]
        parent, child = sources[record["parent"]], prompts.extract_code(twin["messages"][-1]["content"])[0]
        task = prompts.TASKS[record["dataset"]]
        assert record["messages"][:-1] == prompts.delta_messages(task, parent)
        assert twin["messages"][:-1] == prompts.factor_messages(
            task, parent, record["factor"], FACTORS[record["factor"]].description
        )
        # the diff a delta pair teaches is exactly the factor pair's edit
        assert apply_response(parent, record["messages"][-1]["content"])[0] == child
        assert (
            touched_factors(parent, child, FACTORS) == [record["factor"]] and record["parameters"] <= 500_000
        )


def test_edit_pairs_are_deterministic_for_a_seed(built, tmp_path: Path) -> None:
    again = edit_pairs.build_edit_pairs(
        built.out_dir.with_name("corpus"), tmp_path / "again", seed=1, workers=1
    )
    assert again.manifest["edits_sha256"] == built.manifest["edits_sha256"]


def test_edit_pairs_join_base_model_training_in_the_share_asked(built, tmp_path: Path) -> None:
    corpus_dir = built.out_dir.with_name("corpus")
    settings = basemodel.BaseModelSettings(
        steps=2, n_layer=1, n_embd=32, n_head=2, vocab_size=600, context_tokens=3072, warmup_steps=1,
        accumulation_steps=1, eval_every_steps=2, holdout_share=0.15,
    )  # fmt: skip
    events: list[dict] = []
    record = pretraining.train_base_model(
        corpus_dir,
        tmp_path / "m",
        settings,
        events.append,
        tmp_path / "c",
        edits_dir=built.out_dir,
        edit_share=0.5,
    )
    ready = next(e for e in events if e["event"] == "data_ready")
    full = ready["train_examples_fitting"] - ready["edit_examples"]
    examples = list(corpus.read_jsonl(corpus_dir / "examples.jsonl"))
    held = {e["model"] for e in basemodel.split_by_model(examples, settings.holdout_share, settings.seed)[1]}
    edits = [r for r in edit_pairs.load_edit_pairs(built.out_dir) if r["parent"] not in held]
    assert held  # a held-out model is not seen through its edits: they do not count below
    assert 0 < ready["edit_examples"] <= min(full, len(edits))  # half the examples, when enough fit
    assert record["edits"]["share"] == 0.5 and record["edits"]["examples"] == ready["edit_examples"] > 0
    with pytest.raises(ValueError, match="edit_share"):
        pretraining.train_base_model(
            corpus_dir, tmp_path / "x", settings, edits_dir=built.out_dir, edit_share=1.5
        )
