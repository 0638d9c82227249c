"""Novelty before training (config novelty_precheck), on a real evaluator and a real novelty service: one
cycle of fixed programs decided twice, with the pre-check off (the paper's order: train, then filter) and
on. The pre-check rejects a copy of the corpus and a copy of an earlier valid candidate without training
them; it waits for an earlier near-duplicate still in training, and trains a candidate whose only
near-duplicate ended invalid; a candidate whose decision depends on one decided without training gets
that one trained by the filter. Every decision is the one the paper's order makes; only the label of
a near-duplicate that would have failed training differs (rejected, not invalid: neither is admitted)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from archloop import views
from archloop.prompts import BASELINE_FILE
from services.controller import config as experiment_config
from services.controller import report, selection
from services.controller.ledger import CandidateRow, Ledger
from services.controller.loop import ExperimentRunner, LoopSettings
from services.controller.peers import Peers
from services.controller.requests import event
from services.controller.selection import Verdict
from services.controller.tests.seed import evaluate_programs, evaluator_and_novelty, write_corpus
from services.controller.tests.test_structural import ORIGINAL, renamed

pytestmark = pytest.mark.slow

A = BASELINE_FILE.read_text()


def helpers(tag: str, n: int) -> str:
    """n module-level functions nobody calls: text that moves J, not the network."""
    return "".join(
        f"\n\ndef helper_{tag}{i}(value):\n    scaled = value * {i + 2} + {i}\n    return scaled - {i + 1}\n"
        for i in range(n)
    )


C1 = A + helpers("a", 2)  # J(A, C1) 0.92: a near-duplicate of A
C2 = C1 + helpers("b", 2)  # J(C1, C2) 0.95, J(A, C2) 0.87: a near-duplicate of C1 alone
B = renamed(ORIGINAL).replace("nn.Linear(32,", "nn.Linear(48,")  # passes the static stages, fails forward
PROGRAMS = [
    A,  # 0 novel, valid: admitted
    A,  # 1 a copy of 0: rejected before training (after waiting for 0's result)
    ORIGINAL,  # 2 a copy of the corpus program: rejected before training
    B,  # 3 novel, invalid (forward)
    B + helpers("c", 1),  # 4 a near-duplicate of 3 only, which ends invalid: trained, invalid
    C1,  # 5 a near-duplicate of 0: rejected before training
    C2,  # 6 a near-duplicate of 5 only: the filter trains 5, which is valid, so 6 is rejected
    A.replace("nn.Linear(128,", "nn.Linear(96,"),  # 7 a copy of 0 that fails forward: the one label
    "def broken(:\n",  # 8 does not parse
    renamed(ORIGINAL),  # 9 novel (J to the corpus program 0.3), valid: admitted
]


async def _run_cycle(
    experiment_id: str, precheck: bool, ledger: Ledger, peers: Peers, corpus_dir: Path, work: Path
) -> dict[str, CandidateRow]:
    config = experiment_config.with_defaults(
        experiment_config.from_mapping(
            {
                "novelty_precheck": precheck,
                "ablations": {"no_accuracy_threshold": True},  # admission by novelty alone
                "protocol": {"max_train_images": 200},
            }
        )
    )
    experiment_config.validate(config)
    assert config.novelty_precheck is precheck
    ledger.create_experiment(
        experiment_id, experiment_config.to_json(config), experiment_config.config_sha256(config)
    )
    runner = ExperimentRunner(experiment_id, config, ledger, peers, LoopSettings(work, corpus_dir))
    await runner.import_corpus()
    ledger.start_cycle(experiment_id, 1, event(experiment_id, 1, "cycle_started"))
    await runner.precheck.open(1)
    await evaluate_programs(runner, 1, PROGRAMS)
    await runner.filtering.run(1)
    return {c.candidate_id.rsplit("-", 1)[1]: c for c in ledger.candidates(experiment_id, 1)}


async def test_the_precheck_decides_as_the_paper_order_does_and_saves_the_epochs(
    start_service, tmp_path: Path
) -> None:
    peers = evaluator_and_novelty(start_service, tmp_path)
    corpus_dir = write_corpus(tmp_path / "corpus", {"lemur-original": ORIGINAL})
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    try:
        off = await _run_cycle("off", False, ledger, peers, corpus_dir, tmp_path / "work")
        on = await _run_cycle("on", True, ledger, peers, corpus_dir, tmp_path / "work")
    finally:
        await peers.evaluator.close()

    verdicts = {n: (c.decision, c.eval_status) for n, c in off.items()}
    assert [off[f"{i:04d}"].decision for i in range(10)] == [
        Verdict.ADMITTED, Verdict.REJECTED, Verdict.REJECTED, Verdict.INVALID, Verdict.INVALID,
        Verdict.REJECTED, Verdict.REJECTED, Verdict.INVALID, Verdict.INVALID, Verdict.ADMITTED,
    ], verdicts  # fmt: skip
    assert off["0006"].nearest_gen == "off-c1-0005"
    assert not any(c.precheck for c in off.values())  # off: the paper's order, nothing decided early

    # the same admissions, and the same verdict for every candidate but the one label
    admitted = {"0000", "0009"}
    assert {n for n, c in on.items() if c.admitted} == admitted
    assert {n for n, c in off.items() if c.admitted} == admitted
    for name, c in on.items():
        if name != "0007":
            assert c.decision == off[name].decision, name
        if not c.decided_before_training:
            assert (c.valid, c.eval_status) == (off[name].valid, off[name].eval_status), name
    assert on["0007"].decision is Verdict.REJECTED and off["0007"].decision is Verdict.INVALID

    # decided before training: never trained, neither valid nor invalid, said so in the reason
    untrained = {n for n, c in on.items() if c.decided_before_training}
    assert untrained == {"0001", "0002", "0007"}
    for name in untrained:
        row = on[name]
        assert row.valid is None and row.accuracy is None and row.eval_status == ""
        assert row.reason.endswith(selection.BEFORE_TRAINING), row.reason
    assert on["0002"].near_dup_text_train and on["0002"].nearest_train == "lemur-original"
    assert on["0001"].near_dup_text_gen and on["0001"].nearest_gen == "on-c1-0000"
    # a near-duplicate of an earlier one that ended invalid is trained, as the paper's order would
    assert on["0004"].precheck == 0 and on["0004"].eval_status == off["0004"].eval_status != "OK"
    # 5 was decided before training, then trained for 6's decision: valid, so 6 is its near-duplicate
    assert on["0005"].trained_for_a_later_decision and on["0005"].valid
    assert on["0006"].decision is Verdict.REJECTED and on["0006"].nearest_gen == "on-c1-0005"
    # the static stages alone for the ones never trained: a fraction of an epoch
    trained_off = sum(c.eval_seconds or 0 for c in off.values())
    trained_on = sum(c.eval_seconds or 0 for c in on.values())
    assert all((on[n].eval_seconds or 0) < 1.0 for n in untrained)
    assert trained_on < trained_off

    # the report counts them apart, out of the valid rate's denominator, with the seconds saved
    [row] = report.cycle_rows(ledger, "on", 0.4)
    assert row["generated"] == 10 and row["decided_before_training"] == 3
    assert row["trained_for_a_later_decision"] == 1
    assert row["valid"] == 4 and row["valid_fraction"] == pytest.approx(4 / 7)  # 0, 5, 6, 9 of 7
    assert row["evaluator_seconds"] == pytest.approx(trained_on)
    assert row["evaluator_seconds_saved"] > 0
    # and over every generated candidate (the paper's p; the untrained not shown valid), shown beside it
    assert row["valid_of_generated"] == pytest.approx(4 / 10)
    assert row["elite_of_generated"] < row["elite_concentration"] or row["elite_concentration"] == 0
    assert row["mean_quality_of_generated"] == pytest.approx(row["mean_quality"] * 7 / 10)
    table = views.environment().get_template("cycle_table.html").render(cycles=[row])
    assert '<span class="ci of-generated">of generated 40' in table
    [row_off] = report.cycle_rows(ledger, "off", 0.4)
    assert row_off["decided_before_training"] == 0 and row_off["evaluator_seconds_saved"] == 0
    assert row_off["valid_of_generated"] == row_off["valid_fraction"]
    assert "of-generated" not in views.environment().get_template("cycle_table.html").render(cycles=[row_off])
    events = {e.WhichOneof("payload"): e for e in ledger.events("on")}
    assert events["cycle_filtered"].cycle_filtered.decided_before_training == 3
    assert events["cycle_filtered"].cycle_filtered.trained_for_a_later_decision == 1


def test_the_precheck_is_refused_with_what_it_cannot_serve() -> None:
    for mapping, words in (
        ({"novelty_precheck": True, "ablations": {"no_novelty_filter": True}}, "no_novelty_filter"),
        ({"novelty_precheck": True, "structural_novelty_threshold": 0.9}, "forward pass"),
    ):
        config = experiment_config.with_defaults(experiment_config.from_mapping(mapping))
        with pytest.raises(experiment_config.InvalidArgument, match="novelty_precheck") as error:
            experiment_config.validate(config)
        assert words in str(error.value)


def test_the_embedded_default_is_on_and_the_paper_config_keeps_its_order() -> None:
    embedded = experiment_config.with_defaults(experiment_config.from_mapping({}))
    paper = experiment_config.with_defaults(
        experiment_config.load_file(experiment_config.CONFIG_DIR / "paper.yaml")
    )
    assert embedded.novelty_precheck and not paper.novelty_precheck
    # an experiment recorded before the field existed resumes as it ran: without the pre-check
    old = experiment_config.from_json(
        re.sub(r', "novelty_precheck": true', "", experiment_config.to_json(embedded))
    )
    assert not old.novelty_precheck


def test_selection_counts_a_rejection_before_training() -> None:
    candidates = [
        selection.Candidate("a", 0, True, "OK", 0.9),
        selection.Candidate(
            "b", 1, False, near_duplicate_generation=True, nearest_generation="a", jaccard_generation=1.0,
            decided_before_training=True,
        ),
    ]  # fmt: skip
    rules = (selection.Policy.THRESHOLD, selection.Thresholds(0.4, 0), selection.Ablations())
    decisions = selection.decide(candidates, *rules)
    assert decisions["a"].verdict is Verdict.ADMITTED
    assert decisions["b"].verdict is Verdict.REJECTED and decisions["b"].rejection_count == 1
    assert decisions["b"].reason == f"near-duplicate of a (J=1.000), {selection.BEFORE_TRAINING}"
