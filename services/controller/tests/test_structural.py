"""The structural channel end to end, on a real evaluator, real forward-check workers and a real
novelty service: a copy of a corpus program with its names changed and independent lines swapped is
novel by text but caught by its structure (forward-order layer tokens: `archloop corpus structure`
for the corpus, the evaluator for candidates), and so is a renamed copy of an admitted program; a
width-scaled copy is recognised as the same topology; the structural threshold decides only when on."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from archloop import corpus, ids, topology
from archloop.clients import aio_channel
from archloop.prompts import BASELINE_FILE as BASELINE
from archloop.v1 import common_pb2, novelty_pb2_grpc
from services.controller import config as experiment_config
from services.controller.evaluators import EvaluatorPool
from services.controller.ledger import Ledger
from services.controller.loop import ExperimentRunner, LoopSettings
from services.controller.peers import Peers
from services.controller.requests import event
from services.controller.selection import Verdict, decide
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


def width_scaled(code: str) -> str:
    """Every width × 1.5 (the logits and the image channels stay)."""
    return re.sub(r"\b(16|32|64|128)\b", lambda m: str(int(m.group(1)) * 3 // 2), code)


async def test_renamed_copies_are_caught_by_structure_and_scaled_copies_by_topology(
    start_service, tmp_path: Path
) -> None:
    novelty = start_service("novelty", "--db-path", str(tmp_path / "novelty.sqlite3"))
    evaluator = start_service("evaluator", "--work-dir", str(tmp_path / "jobs"))
    corpus_dir = write_corpus(tmp_path / "corpus", {"lemur-original": ORIGINAL})
    # the corpus's structural tokens, by the real command (forward-check workers, meta device)
    done = subprocess.run(
        [sys.executable, "-m", "tools.cli", "corpus", "structure", "--corpus", str(corpus_dir)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "1 of 1 programs" in done.stdout
    assert list(corpus.read_structure(corpus_dir)) == ["lemur-original"]
    config = experiment_config.with_defaults(
        experiment_config.from_mapping(
            {
                "cycles": 2,
                "structural_novelty_threshold": 0.9,
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
        2: [width_scaled(baseline), renamed(baseline)],  # copies of the admitted one
    }
    try:
        await runner.import_corpus()
        for cycle, codes in cycles.items():
            ledger.start_cycle("st", cycle, event("st", cycle, "cycle_started"))
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

    rows = {c.candidate_id: c for c in ledger.candidates("st")}
    assert all(r.valid for r in rows.values()), [r.eval_status for r in rows.values()]
    corpus_copy, new, wide, copy = (
        rows["st-c1-0000"],
        rows["st-c1-0001"],
        rows["st-c2-0000"],
        rows["st-c2-0001"],
    )
    # the corpus program's copy: novel by text, the corpus program by structure
    assert corpus_copy.nn_jaccard_train < 0.9 and not corpus_copy.near_dup_text_train
    assert corpus_copy.structural_jaccard_train >= 0.9
    assert corpus_copy.decision is Verdict.REJECTED
    assert corpus_copy.reason.startswith("structural near-duplicate of lemur-original")
    assert new.decision is Verdict.ADMITTED and new.structural_jaccard_train < 0.9
    # the admitted program's renamed copy: caught through the corpus entry it joined with its tokens
    assert copy.nn_jaccard_train < 0.9 and copy.structural_tokens == new.structural_tokens
    assert copy.nearest_struct_train == new.candidate_id and copy.structural_jaccard_train >= 0.9
    assert copy.decision is Verdict.REJECTED
    # the width-scaled copy: other shapes, the same topology as the program it scales
    assert wide.structural_tokens != new.structural_tokens
    assert topology.forward_topology(wide.structural_tokens) == topology.forward_topology(
        new.structural_tokens
    )
    assert wide.topology_sha256 == new.topology_sha256 != ""
    assert wide.same_topology_as == new.candidate_id and new.same_topology_as == ""
    # with the structural threshold off, J_struct is recorded but does not decide
    off = experiment_config.with_defaults(
        experiment_config.from_mapping({"ablations": {"no_accuracy_threshold": True}})
    )
    decisions = decide([c.for_selection() for c in (corpus_copy, copy)], *selection_rules(off))
    assert {d.verdict for d in decisions.values()} == {Verdict.ADMITTED}


def test_forward_topology_drops_shapes_and_signs_sequences() -> None:
    tokens = ["Conv2d[16, 32, 32]", "ReLU[16, 32, 32]", "Linear[10]", "Flatten[]"]
    assert topology.forward_topology(tokens) == ("Conv2d", "ReLU", "Linear", "Flatten")
    assert topology.signature(("Conv2d", "ReLU")) == topology.signature(("Conv2d", "ReLU"))
    assert topology.signature(("Conv2d", "ReLU")) != topology.signature(("ReLU", "Conv2d"))
    assert topology.signature(()) == ""


@pytest.mark.parametrize("threshold", [-0.1, 1.5])
def test_a_structural_threshold_out_of_range_is_refused_naming_the_field(threshold: float) -> None:
    config = experiment_config.with_defaults(experiment_config.from_mapping({}))
    config.structural_novelty_threshold = threshold
    with pytest.raises(experiment_config.InvalidArgument, match="structural_novelty_threshold"):
        experiment_config.validate(config)


def test_the_corpus_tokens_are_the_evaluators_and_stale_ones_are_ignored(tmp_path: Path) -> None:
    import torch

    from archloop import forwardcheck

    tokens = forwardcheck.check_many([("original", ORIGINAL, (3, 32, 32), 10)], structure=True)[
        "original"
    ].structure
    namespace: dict = {}
    exec(compile(ORIGINAL, "<original>", "exec"), namespace)
    model = namespace["Net"]((1, 3, 32, 32), (10,), dict(forwardcheck.PRM), torch.device("cpu")).eval()
    assert list(tokens) == topology.structural_tokens(model, torch.zeros((1, 3, 32, 32)))  # meta = CPU
    assert tokens[0] == "Conv2d[16, 32, 32]" and tokens[-1] == "Linear[10]"
    unchecked = forwardcheck.check_many([("original", ORIGINAL, (3, 32, 32), 10)])["original"]
    assert unchecked.ok and unchecked.structure == ()  # only asked for

    write_corpus(tmp_path, {"a": ORIGINAL})
    records = corpus.structure_records({"a": ORIGINAL, "b": "broken"}, {"a": tokens, "b": ()})
    (tmp_path / corpus.STRUCTURE_FILE).write_text("".join(json.dumps(r) + "\n" for r in records))
    assert corpus.read_structure(tmp_path) == {"a": list(tokens)}
    changed = ORIGINAL.replace("16", "20")  # the corpus changed under the file: its tokens are stale
    write_corpus(tmp_path, {"a": changed})
    assert corpus.read_structure(tmp_path) == {}
