"""Novelty and selection of one cycle against a real novelty service: J_train, J_gen, the paper's
rejection_count, the three selection policies and the ablations, and a resumed filter step."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from archloop import corpus
from archloop.clients import aio_channel
from archloop.lemur import iter_model_sources, lemur_wheel
from archloop.v1 import controller_pb2, novelty_pb2, novelty_pb2_grpc
from services.controller import config as experiment_config
from services.controller.ledger import Ledger
from services.controller.loop import ExperimentRunner, LoopSettings
from services.controller.peers import Peers
from services.controller.requests import event
from services.controller.tests.seed import add_evaluated
from services.evaluator.screen import check_contract, parse_source
from services.novelty.tests.variants import make_variant

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def lemur_codes() -> list[tuple[str, str]]:
    """One file from each of 12 LEMUR families: far apart from each other (J well below 0.9)."""
    found, families = [], set()
    for name, code in iter_model_sources(lemur_wheel()):
        family = name.split("-")[0]
        if family not in families and 1500 <= len(code) <= 6000 and check_contract(parse_source(code)).ok:
            families.add(family)
            found.append((name, code))
        if len(found) == 12:
            return found
    raise AssertionError("too few LEMUR files")


def _runner(
    tmp_path: Path, novelty_address: str, codes: list[tuple[str, str]], **overrides
) -> ExperimentRunner:
    corpus_dir = tmp_path / "corpus"
    corpus_dir.mkdir(exist_ok=True)
    rows = [r for name, code in codes[:6] for r in corpus.example_records(name, code, {"cifar-10": 100_000})]
    (corpus_dir / "examples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    # no promotion: only novelty is called by _filter here (test_audit.py trains the promoted)
    mapping = {"cycles": 1, "promotion": {"top_k": 0}, **overrides}
    config = experiment_config.with_defaults(experiment_config.from_mapping(mapping))
    experiment_config.validate(config)
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    ledger.create_experiment(
        "exp", experiment_config.to_json(config), experiment_config.config_sha256(config)
    )
    novelty = novelty_pb2_grpc.NoveltyServiceStub(aio_channel(novelty_address))
    peers = Peers(None, None, novelty, None)  # only novelty is called by _filter
    return ExperimentRunner("exp", config, ledger, peers, LoopSettings(tmp_path / "work", corpus_dir))


def _add(runner: ExperimentRunner, idx: int, code: str, accuracy: float | None) -> None:
    add_evaluated(runner.ctx.ledger, "exp", 1, idx, code, accuracy)


async def _setup_cycle(runner: ExperimentRunner, codes: list[tuple[str, str]]) -> None:
    """Cycle 1 of: a copy of a corpus model (J_train), two near-copies of each other (J_gen), novel ones."""
    await runner.import_corpus()
    runner.ctx.ledger.start_cycle("exp", 1, event("exp", 1, "cycle_started"))
    rng = random.Random(0)
    novel_a, novel_b, novel_c = codes[7][1], codes[8][1], codes[9][1]
    _add(runner, 0, make_variant(codes[0][1], rng, 1)[0], 0.55)  # near-duplicate of corpus model 0
    _add(runner, 1, novel_a, 0.30)  # novel, below τ
    _add(runner, 2, novel_b, 0.62)  # novel, above τ
    _add(runner, 3, make_variant(novel_b, rng, 1)[0], 0.70)  # near-duplicate of candidate 2 (J_gen)
    _add(runner, 4, "broken", None)  # not valid
    _add(runner, 5, novel_c, 0.45)  # novel, above τ
    runner.ctx.ledger.set_cycle("exp", 1, phase="FILTERING")


async def test_threshold_policy_with_j_train_j_gen_and_rejection_count(
    start_service, tmp_path, lemur_codes
) -> None:
    novelty = start_service("novelty", "--db-path", str(tmp_path / "novelty.sqlite3"))
    runner = _runner(tmp_path, novelty.address, lemur_codes)
    await _setup_cycle(runner, lemur_codes)
    await runner.filtering.run(1)
    rows = {c.idx: c for c in runner.ctx.ledger.candidates("exp", 1)}
    assert rows[0].near_dup_text_train == 1 and rows[0].nearest_train == lemur_codes[0][0]
    assert rows[3].near_dup_text_gen == 1 and rows[3].nearest_gen == "exp-c1-0002"
    assert rows[2].near_dup_text_gen == 0 and rows[2].nn_jaccard_train < 0.9
    assert [rows[i].decision for i in range(6)] == [
        "rejected",
        "rejected",
        "admitted",
        "rejected",
        "invalid",
        "admitted",
    ]
    assert [rows[i].rejection_count for i in range(6)] == [1, 1, 1, 2, 2, 2]
    assert "near-duplicate" in rows[0].reason and "< τ" in rows[1].reason
    assert all(r.stage == "decided" for r in rows.values())
    stub = novelty_pb2_grpc.NoveltyServiceStub(aio_channel(novelty.address))
    for idx, present in ((2, True), (5, True), (1, False), (3, False)):
        request = novelty_pb2.GetEntryRequest(collection="exp-corpus", entry_id=f"exp-c1-{idx:04d}")
        try:
            await stub.GetEntry(request, timeout=10)
            found = True
        except Exception:
            found = False
        assert found == present, idx
    # a second pass (a resumed step) changes nothing
    await runner.filtering.run(1)
    assert {c.idx: c.decision for c in runner.ctx.ledger.candidates("exp", 1)} == {
        i: rows[i].decision for i in rows
    }


@pytest.mark.parametrize(
    ("overrides", "decisions"),
    [
        (
            {"selection_policy": "top_k", "selection_top_k": 1},
            ["rejected", "rejected", "admitted", "rejected", "invalid", "rejected"],
        ),
        (
            {"selection_policy": "threshold_top_k_fill", "selection_top_k": 3},
            ["rejected", "admitted", "admitted", "rejected", "invalid", "admitted"],
        ),
        (
            {"ablations": {"no_novelty_filter": True}},
            ["admitted", "rejected", "admitted", "admitted", "invalid", "admitted"],
        ),
        (
            {"ablations": {"no_accuracy_threshold": True}},
            ["rejected", "admitted", "admitted", "rejected", "invalid", "admitted"],
        ),
    ],
    ids=["top-k", "threshold-fill", "no-novelty-filter", "no-accuracy-threshold"],
)
async def test_selection_policies_and_ablations(
    start_service, tmp_path, lemur_codes, overrides, decisions
) -> None:
    novelty = start_service("novelty", "--db-path", str(tmp_path / "novelty.sqlite3"))
    runner = _runner(tmp_path, novelty.address, lemur_codes, **overrides)
    await _setup_cycle(runner, lemur_codes)
    await runner.filtering.run(1)
    assert [c.decision for c in runner.ctx.ledger.candidates("exp", 1)] == decisions


def test_selection_policy_enum_names_are_accepted_short() -> None:
    config = experiment_config.from_mapping({"selection_policy": "threshold_top_k_fill"})
    assert config.selection_policy == controller_pb2.SELECTION_POLICY_THRESHOLD_TOP_K_FILL
