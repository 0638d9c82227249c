"""Architecture novelty end to end, on a real evaluator, real forward-check workers and a real novelty
service: a copy of a corpus program with its names changed and independent lines swapped is novel by
text but has the corpus program's wiring (the corpus's graphs by `archloop corpus structure`, the
candidates' by the evaluator), and so have a renamed and a width-scaled copy of an admitted program;
with architecture_novelty require they are rejected and a gated variant is admitted; with record they
are only recorded; the graded threshold decides only when on."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from archloop import corpus, ids
from archloop.archgraph import Architecture
from archloop.archtrace import record
from archloop.clients import aio_channel
from archloop.prompts import BASELINE_FILE as BASELINE
from archloop.v1 import common_pb2, novelty_pb2_grpc
from services.controller import config as experiment_config
from services.controller.evaluators import EvaluatorPool
from services.controller.ledger import CandidateRow, Ledger
from services.controller.loop import ExperimentRunner, LoopSettings
from services.controller.peers import Peers
from services.controller.requests import event
from services.controller.selection import BEFORE_TRAINING, KNOWN_WIRING, Verdict, decide
from services.controller.states import selection_rules
from services.controller.tests.seed import write_corpus

pytestmark = pytest.mark.slow

# the packaged baseline's training methods, under a network of separately defined layers
_TRAINING = "    def train_setup" + BASELINE.read_text().split("    def train_setup", 1)[1]
ORIGINAL = (
    """import torch
import torch.nn as nn


def supported_hyperparameters():
    return {'lr', 'momentum', 'dropout'}


class Net(nn.Module):
    def __init__(self, in_shape, out_shape, prm, device):
        super().__init__()
        self.device = device
        self.conv_in = nn.Conv2d(in_shape[1], 16, kernel_size=3, padding=1)
        self.norm_in = nn.BatchNorm2d(16)
        self.conv_mid = nn.Conv2d(16, 32, kernel_size=3, padding=1)
        self.norm_mid = nn.BatchNorm2d(32)
        self.shrink = nn.MaxPool2d(2)
        self.act = nn.ReLU()
        self.drop = nn.Dropout(prm['dropout'])
        self.head = nn.Linear(32, out_shape[0])

    def forward(self, x):
        x = self.shrink(self.act(self.norm_in(self.conv_in(x))))
        x = self.shrink(self.act(self.norm_mid(self.conv_mid(x))))
        x = torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)
        return self.head(self.drop(x))

"""
    + _TRAINING
)

RENAMES = {
    "conv_in": "c1", "norm_in": "b1", "conv_mid": "c2", "norm_mid": "b2", "shrink": "down", "act": "nonlin",
    "drop": "dr", "head": "classify", "x": "h", "inputs": "xb", "labels": "yb", "loss": "objective",
    "features": "body", "classifier": "top", "channels": "c_in", "criteria": "losses", "optimizer": "opt",
}  # fmt: skip


def renamed(code: str) -> str:
    for old, new in RENAMES.items():
        code = re.sub(rf"\b{old}\b", new, code)
    return code


def renamed_and_reordered(code: str) -> str:
    """Every name of RENAMES changed, and the eight layer definitions of ORIGINAL's __init__ in reverse
    order (they are independent: the forward pass decides the order the layers run in)."""
    lines = renamed(code).splitlines()
    first = next(i for i, line in enumerate(lines) if "self.c1 = " in line)
    lines[first : first + 8] = lines[first : first + 8][::-1]
    return "\n".join(lines) + "\n"


def gated(code: str) -> str:
    """The baseline with a self-gate after its features (x * sigmoid(x)): a new wiring."""
    line = "        x = self.features(x)\n"
    assert line in code
    return code.replace(line, line + "        x = x * torch.sigmoid(x)\n", 1)


def width_scaled(code: str) -> str:
    """Every width × 1.5 (the logits and the image channels stay)."""
    return re.sub(r"\b(16|32|64|128)\b", lambda m: str(int(m.group(1)) * 3 // 2), code)


async def _run_two_cycles(start_service, tmp_path: Path, precheck: bool) -> dict[str, CandidateRow]:
    """The cycles below under architecture_novelty require, through the runner's own phases on real
    services: cycle 1 a copy of the corpus program and a new one; cycle 2 a gate, a width-scaled copy of
    the program admitted in cycle 1, the gate's width-scaled copy."""
    novelty = start_service("novelty", "--db-path", str(tmp_path / "novelty.sqlite3"))
    evaluator = start_service("evaluator", "--work-dir", str(tmp_path / "jobs"))
    corpus_dir = write_corpus(tmp_path / "corpus", {"lemur-original": ORIGINAL})
    # the corpus's architecture graphs, by the real command (forward-check workers, meta device)
    done = subprocess.run(
        [sys.executable, "-m", "tools.cli", "corpus", "structure", "--corpus", str(corpus_dir)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "architecture graphs: 1 of 1 programs" in done.stdout
    assert list(corpus.read_structure(corpus_dir)) == ["lemur-original"]
    config = experiment_config.with_defaults(
        experiment_config.from_mapping(
            {
                "cycles": 2,
                "architecture_novelty": "require",
                "novelty_precheck": precheck,  # this test calls the phases itself
                "ablations": {"no_accuracy_threshold": True},  # admission by novelty alone
                "protocol": {"max_train_images": 200},
            }
        )
    )
    experiment_config.validate(config)
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    ledger.create_experiment("st", experiment_config.to_json(config), experiment_config.config_sha256(config))
    peers = Peers(
        None,
        EvaluatorPool(evaluator.address),
        novelty_pb2_grpc.NoveltyServiceStub(aio_channel(novelty.address)),
        None,
    )
    runner = ExperimentRunner("st", config, ledger, peers, LoopSettings(tmp_path / "work", corpus_dir))
    baseline = BASELINE.read_text()
    cycles = {
        1: [renamed_and_reordered(ORIGINAL), baseline],  # a copy of the corpus program; a new one
        # a new gate; a width-scaled copy of the admitted program; the gate's width-scaled copy
        2: [renamed(gated(baseline)), width_scaled(baseline), width_scaled(renamed(gated(baseline)))],
    }
    try:
        await runner.import_corpus()
        for cycle, codes in cycles.items():
            ledger.start_cycle("st", cycle, event("st", cycle, "cycle_started"))
            await runner.precheck.open(cycle)
            for index, program in enumerate(codes):
                candidate_id = ids.candidate_id("st", cycle, index)
                candidate = common_pb2.Candidate(
                    candidate_id=candidate_id, cycle=cycle, index=index, code=program
                )
                assert ledger.record_generated("st", candidate)
                await runner.evaluation.evaluate(cycle, candidate_id, program, "")
            await runner.filtering.run(cycle)
    finally:
        await peers.evaluator.close()
    return {c.candidate_id: c for c in ledger.candidates("st")}


async def test_copies_have_known_wiring_and_require_rejects_them_where_record_admits(
    start_service, tmp_path: Path
) -> None:
    rows = await _run_two_cycles(start_service, tmp_path, precheck=False)
    assert all(r.valid for r in rows.values()), [r.eval_status for r in rows.values()]
    corpus_copy, new = rows["st-c1-0000"], rows["st-c1-0001"]
    gate, wide, gate_copy = (rows[f"st-c2-{i:04d}"] for i in range(3))
    # the corpus program's copy: novel by text, the corpus program's wiring and architecture J 1
    assert corpus_copy.nn_jaccard_train < 0.9 and not corpus_copy.near_dup_text_train
    assert corpus_copy.structural_jaccard_train == 1.0 and corpus_copy.wiring_known_as == "lemur-original"
    assert corpus_copy.decision is Verdict.REJECTED
    assert corpus_copy.reason == f"{KNOWN_WIRING}: the architecture of lemur-original"
    assert new.decision is Verdict.ADMITTED and new.wiring_known_as == "" and new.topology_sha256
    assert new.structural_jaccard_train < 1.0
    # the admitted program's width-scaled copy: its wiring, whatever the widths
    assert wide.nn_jaccard_train < 0.9 and wide.topology_sha256 == new.topology_sha256
    assert wide.structural_tokens == new.structural_tokens and wide.wiring_known_as == new.candidate_id
    assert wide.decision is Verdict.REJECTED and wide.reason.startswith(KNOWN_WIRING)
    assert wide.same_topology_as == new.candidate_id and new.same_topology_as == ""
    # the gate is new wiring; its width-scaled copy in the same cycle is the gate's
    assert gate.wiring_known_as == "" and gate.decision is Verdict.ADMITTED
    assert gate.structural_jaccard_train < 1.0  # (below the LSH's reach it reads 0)
    assert gate_copy.nn_jaccard_gen < 0.9 and gate_copy.wiring_known_as == gate.candidate_id
    assert gate_copy.decision is Verdict.REJECTED
    # with record (the paper's text-only rule) the same figures decide nothing
    recorded = experiment_config.with_defaults(
        experiment_config.from_mapping(
            {"architecture_novelty": "record", "ablations": {"no_accuracy_threshold": True}}
        )
    )
    decisions = decide(
        [c.for_selection() for c in (corpus_copy, wide, gate_copy)], *selection_rules(recorded)
    )
    assert {d.verdict for d in decisions.values()} == {Verdict.ADMITTED}
    # the graded threshold: J ≥ 0.9 to the corpus is a structural near-duplicate
    graded = experiment_config.with_defaults(
        experiment_config.from_mapping(
            {"structural_novelty_threshold": 0.9, "ablations": {"no_accuracy_threshold": True}}
        )
    )
    decisions = decide([corpus_copy.for_selection()], *selection_rules(graded))
    assert decisions[corpus_copy.candidate_id].reason.startswith(
        "structural near-duplicate of lemur-original"
    )


async def test_with_the_precheck_a_known_wiring_is_decided_before_training(
    start_service, tmp_path: Path
) -> None:
    """novelty_precheck with require: the corpus copy and the admitted program's width-scaled copy are
    decided by a forward-only run (never trained, the reason says so), the same verdicts as the paper
    order; the gate's copy (its wiring known only within the cycle) is left to the filter."""
    rows = await _run_two_cycles(start_service, tmp_path, precheck=True)
    corpus_copy, new = rows["st-c1-0000"], rows["st-c1-0001"]
    gate, wide, gate_copy = (rows[f"st-c2-{i:04d}"] for i in range(3))
    for copy, known_as in ((corpus_copy, "lemur-original"), (wide, new.candidate_id)):
        assert copy.decided_before_training and copy.valid is None and copy.accuracy is None
        assert copy.wiring_known_as == known_as and copy.topology_sha256
        assert copy.decision is Verdict.REJECTED
        assert copy.reason == f"{KNOWN_WIRING}: the architecture of {known_as}, {BEFORE_TRAINING}"
        stages = [stage["stage"] for stage in json.loads(copy.eval_json)["stages"]]
        assert stages[-1] == "EVALUATION_STAGE_PARAM_BUDGET"  # its forward-only run: no training
    assert corpus_copy.structural_jaccard_train == 1.0
    assert wide.topology_sha256 == new.topology_sha256
    assert new.valid and new.decision is Verdict.ADMITTED and gate.valid and gate.decision is Verdict.ADMITTED
    assert gate_copy.valid and gate_copy.wiring_known_as == gate.candidate_id
    assert gate_copy.decision is Verdict.REJECTED and BEFORE_TRAINING not in gate_copy.reason


@pytest.mark.parametrize("threshold", [-0.1, 1.5])
def test_a_structural_threshold_out_of_range_is_refused_naming_the_field(threshold: float) -> None:
    config = experiment_config.with_defaults(experiment_config.from_mapping({}))
    config.structural_novelty_threshold = threshold
    with pytest.raises(experiment_config.InvalidArgument, match="structural_novelty_threshold"):
        experiment_config.validate(config)


def test_a_threshold_without_the_architecture_is_refused_and_the_mode_is_named() -> None:
    config = experiment_config.with_defaults(
        experiment_config.from_mapping(
            {"architecture_novelty": "off", "structural_novelty_threshold": 0.9, "novelty_precheck": False}
        )
    )
    with pytest.raises(experiment_config.InvalidArgument, match="architecture_novelty is off"):
        experiment_config.validate(config)
    with pytest.raises(experiment_config.InvalidArgument, match="'sometimes' is not one of"):
        experiment_config.from_mapping({"architecture_novelty": "sometimes"})


def test_the_corpus_graphs_are_the_evaluators_and_stale_ones_are_ignored(tmp_path: Path) -> None:
    import torch

    from archloop import forwardcheck

    found = forwardcheck.check_many([("original", ORIGINAL, (3, 32, 32), 10)], structure=True)["original"]
    namespace: dict = {}
    exec(compile(ORIGINAL, "<original>", "exec"), namespace)
    model = namespace["Net"]((1, 3, 32, 32), (10,), dict(forwardcheck.PRM), torch.device("cpu")).eval()
    on_cpu = Architecture.of(record(model, torch.zeros((1, 3, 32, 32)))).as_dict()
    assert found.device == "meta" and found.architecture == on_cpu  # meta = CPU
    unchecked = forwardcheck.check_many([("original", ORIGINAL, (3, 32, 32), 10)])["original"]
    assert unchecked.ok and unchecked.architecture == {}  # only asked for

    write_corpus(tmp_path, {"a": ORIGINAL})
    records = corpus.architecture_records({"a": ORIGINAL, "b": "broken"}, {"a": found.architecture, "b": {}})
    path = tmp_path / corpus.ARCHITECTURE_FILE
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert corpus.read_structure(tmp_path) == {"a": on_cpu["tokens"]}
    assert corpus.read_architectures(tmp_path)["a"]["wiring_hash"] == on_cpu["wiring_hash"]
    path.write_text("".join(json.dumps({**r, "version": 0}) + "\n" for r in records))
    assert corpus.read_structure(tmp_path) == {}  # recorded by another labelling
    with pytest.raises(corpus.MissingArchitectures, match="archloop corpus structure"):
        corpus.require_architectures(tmp_path)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    changed = ORIGINAL.replace("16", "20")  # the corpus changed under the file: its graphs are stale
    write_corpus(tmp_path, {"a": changed})
    assert corpus.read_structure(tmp_path) == {}
