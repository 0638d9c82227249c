"""The per-cycle proxy audit as a function of ledger rows, and promotion on a real evaluator: the top-k
valid, novel candidates trained longer, the audit and its event written once, selection reading the
promoted accuracy when the config says so."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from scipy import stats as scipy_stats

from archloop.prompts import BASELINE_FILE
from archloop.v1 import evaluator_pb2
from services.controller import audit, selection
from services.controller import config as experiment_config
from services.controller.ledger import Ledger
from services.controller.loop import ExperimentRunner, LoopSettings
from services.controller.requests import event
from services.controller.tests.seed import (
    add_evaluated,
    evaluate_programs,
    evaluator_and_novelty,
    write_corpus,
)
from services.controller.tests.test_precheck import helpers
from services.controller.tests.test_structural import ORIGINAL, renamed, width_scaled


def _promoted_cycle(tmp_path: Path, pairs: list[tuple[float, float, int, int]]) -> Ledger:
    """A cycle whose candidate i was promoted with (first-epoch, promoted accuracy, params, flops)."""
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    ledger.create_experiment("a", "{}", "x")
    ledger.start_cycle("a", 1, event("a", 1, "cycle_started"))
    for i, (first, longer, params, flops) in enumerate(pairs):
        candidate_id = add_evaluated(ledger, "a", 1, i, f"program {i}", first)
        ledger._set_candidate(candidate_id, param_count=params, flops=flops)
        result = evaluator_pb2.EvaluationResult(status=evaluator_pb2.EVALUATION_STATUS_OK, accuracy=longer)
        ledger.record_promotion(candidate_id, result)
    add_evaluated(ledger, "a", 1, len(pairs), "not promoted", 0.9)  # not in the audit
    return ledger


def test_the_audit_is_scipys_figures_on_the_promoted_and_warns_below_the_threshold(tmp_path: Path) -> None:
    pairs = [
        (0.2, 0.5, 900, 10),
        (0.4, 0.6, 100, 20),
        (0.3, 0.7, 500, 30),
        (0.6, 0.8, 300, 40),
        (0.5, 0.9, 700, 50),
    ]
    ledger = _promoted_cycle(tmp_path, pairs)
    result = audit.proxy_audit(ledger.candidates("a", 1), 5, 0.5)
    first, longer = [p[0] for p in pairs], [p[1] for p in pairs]
    assert result["promoted"] == 5 and result["epochs"] == 5
    assert result["spearman"] == pytest.approx(scipy_stats.spearmanr(longer, first)[0])  # 0.8
    assert result["kendall"] == pytest.approx(scipy_stats.kendalltau(longer, first)[0])
    assert result["pearson"] == pytest.approx(scipy_stats.pearsonr(longer, first)[0])
    assert result["params_spearman"] == pytest.approx(scipy_stats.spearmanr([p[2] for p in pairs], longer)[0])
    assert result["flops_spearman"] == pytest.approx(1.0)  # here FLOPs rank them perfectly
    assert result["beats_params"] is True and result["beats_flops"] is False
    variance = sum((x - sum(longer) / 5) ** 2 for x in longer) / 4
    diffs = [b - a for a, b in zip(first, longer, strict=True)]
    noise = sum((d - sum(diffs) / 5) ** 2 for d in diffs) / 4
    assert result["snr"] == pytest.approx(variance / noise)
    assert not result["warning"]
    strict = audit.proxy_audit(ledger.candidates("a", 1), 5, 0.9)
    assert strict["warning"] and "no longer ranks" in strict["message"] and "0.800 < 0.9" in strict["message"]
    assert [p[0] for p in result["points"]] == [f"a-c1-{i:04d}" for i in range(5)]
    json.dumps(audit.as_json(result), allow_nan=False)  # strict JSON


def test_too_few_promoted_is_said_not_warned(tmp_path: Path) -> None:
    ledger = _promoted_cycle(tmp_path, [(0.2, 0.5, 1, 1), (0.4, 0.6, 2, 2)])
    result = audit.proxy_audit(ledger.candidates("a", 1), 5, 0.5)
    assert result["promoted"] == 2 and not result["warning"] and "too few" in result["message"]
    assert math.isnan(result["spearman"]) and audit.as_json(result)["spearman"] is None


@pytest.mark.parametrize(
    ("mapping", "field"),
    [
        ({"promotion": {"top_k": -1}}, "promotion.top_k"),
        ({"promotion": {"top_k": 3, "epochs": 1}}, "promotion.epochs"),
        ({"promotion": {"min_spearman": 2}}, "promotion.min_spearman"),
        ({"promotion": {"top_k": 0, "select_on_promoted": True}}, "promotion.select_on_promoted"),
    ],
)
def test_promotion_settings_out_of_range_are_refused_naming_the_field(mapping: dict, field: str) -> None:
    config = experiment_config.with_defaults(experiment_config.from_mapping(mapping))
    with pytest.raises(experiment_config.InvalidArgument, match=field.replace(".", r"\.")):
        experiment_config.validate(config)


def test_promotable_is_the_top_k_of_the_valid_novel_ones() -> None:
    c = selection.Candidate
    candidates = [
        c("dup", 0, True, "OK", 0.99, near_duplicate_train=True),
        c("a", 1, True, "OK", 0.50),
        c("bad", 2, False, "FORWARD_ERROR"),
        c("b", 3, True, "OK", 0.70),
        c("c", 4, True, "OK", 0.50),  # ties with a: the lower index first
        c("early", 5, False, decided_before_training=True),
    ]
    rules = (selection.Thresholds(0.4, 0), selection.Ablations())
    assert selection.promotable(candidates, 2, *rules) == ["b", "a"]
    assert selection.promotable(candidates, 9, *rules) == ["b", "a", "c"]
    no_filter = (selection.Thresholds(0.4, 0), selection.Ablations(no_novelty_filter=True))
    assert selection.promotable(candidates, 1, *no_filter) == ["dup"]


@pytest.mark.slow
async def test_promotion_trains_the_top_k_longer_and_selection_may_read_it(
    start_service, tmp_path: Path
) -> None:
    peers = evaluator_and_novelty(start_service, tmp_path)
    corpus_dir = write_corpus(tmp_path / "corpus", {"lemur-original": ORIGINAL})
    base = BASELINE_FILE.read_text()
    programs = [base, renamed(ORIGINAL), width_scaled(base) + helpers("w", 4), ORIGINAL, "def broken(:\n"]
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    config = experiment_config.with_defaults(
        experiment_config.from_mapping(
            {
                # τ above every first epoch here, so only a promoted accuracy can reach it
                "accuracy_threshold": 0.99,
                "promotion": {"top_k": 2, "epochs": 3, "select_on_promoted": True, "min_spearman": 0.5},
                "protocol": {"max_train_images": 200},
            }
        )
    )
    experiment_config.validate(config)
    ledger.create_experiment("p", experiment_config.to_json(config), experiment_config.config_sha256(config))
    runner = ExperimentRunner("p", config, ledger, peers, LoopSettings(tmp_path / "work", corpus_dir))
    try:
        await runner.import_corpus()
        ledger.start_cycle("p", 1, event("p", 1, "cycle_started"))
        await runner.precheck.open(1)
        await evaluate_programs(runner, 1, programs)
        await runner.filtering.run(1)
        first = {c.candidate_id: c for c in ledger.candidates("p", 1)}
        await runner.filtering.promotion.promote(
            1
        )  # again, as after a restart: nothing runs twice, no second audit
    finally:
        await peers.evaluator.close()

    rows = {c.candidate_id: c for c in ledger.candidates("p", 1)}
    novel_valid = [
        r for r in rows.values() if r.valid and not r.near_dup_text_train and not r.near_dup_text_gen
    ]
    top = sorted(novel_valid, key=lambda r: (-(r.accuracy or 0), r.idx))[:2]
    assert {r.candidate_id for r in rows.values() if r.promoted_status} == {r.candidate_id for r in top}
    for r in top:
        assert r.promoted_status == "OK" and r.promoted_accuracy is not None
        assert r.promoted_seconds == first[r.candidate_id].promoted_seconds  # not run again
        # selection read the promoted accuracy (its reason quotes the accuracy it compared with τ)
        if r.decision == selection.Verdict.ADMITTED:
            assert r.promoted_accuracy >= 0.99
        else:
            assert r.reason == f"accuracy {r.promoted_accuracy:.4f} < τ 0.99", r.reason
        assert r.flops and r.flops > 0
    assert rows["p-c1-0003"].decided_before_training  # the corpus copy: never trained, never promoted
    assert not any(r.promoted_status for r in rows.values() if r not in top)
    for r in novel_valid:
        if r not in top:  # not promoted: selection read its first epoch
            assert r.reason == f"accuracy {r.accuracy:.4f} < τ 0.99", r.reason
    recorded = json.loads(ledger.cycle_of("p", 1).audit_json)
    assert recorded == audit.as_json(audit.proxy_audit(ledger.candidates("p", 1), 3, 0.5))
    assert recorded["promoted"] == 2 and "too few" in recorded["message"]
    assert [e.cycle for e in ledger.events("p") if e.WhichOneof("payload") == "cycle_audited"] == [1]
