"""The architecture graph (archloop.archtrace, archloop.archgraph): what keeps the wiring hash and what
changes it, a program symbolic tracing cannot follow, the meta device, and the graded similarity."""

from __future__ import annotations

import json

import pytest
import torch

from archloop.archgraph import ArchGraph, Architecture, token_jaccard
from archloop.archtrace import record

HEADER = "import torch\nimport torch.nn as nn\nimport torch.nn.functional as F\n\n\n"
PLAIN = (
    HEADER
    + """\
class Net(nn.Module):
    def __init__(self, width=16):
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.norm = nn.BatchNorm2d(width)
        self.body = nn.Conv2d(width, width, 3, padding=1)
        self.head = nn.Linear(width, 10)

    def forward(self, x):
        x = F.relu(self.norm(self.stem(x)))
        y = self.body(x)
        y = F.relu(y)
        return self.head(torch.flatten(F.adaptive_avg_pool2d(y, 1), 1))
"""
)
WIDE = PLAIN.replace("width=16", "width=48")
RENAMED = (
    PLAIN.replace("self.stem", "self.first").replace("self.body", "self.middle")
    .replace("self.norm", "self.bn")
    .replace("self.head", "self.classifier").replace("width", "channels").replace("y", "hidden")
)  # fmt: skip
REORDERED = PLAIN.replace(
    """        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.norm = nn.BatchNorm2d(width)
        self.body = nn.Conv2d(width, width, 3, padding=1)
        self.head = nn.Linear(width, 10)""",
    """        self.head = nn.Linear(width, 10)
        self.body = nn.Conv2d(width, width, 3, padding=1)
        self.norm = nn.BatchNorm2d(width)
        self.stem = nn.Conv2d(3, width, 3, padding=1)""",
)
MODULES = PLAIN.replace("F.relu(self.norm", "nn.ReLU()(self.norm").replace(
    "nn.Conv2d(3, width, 3, padding=1)", "nn.LazyConv2d(width, 3, padding=1)"
)
GELU = PLAIN.replace("F.relu", "F.gelu")
SKIP = PLAIN.replace("y = F.relu(y)", "y = F.relu(y + x)")
CONCAT = PLAIN.replace("self.head = nn.Linear(width, 10)", "self.head = nn.Linear(2 * width, 10)").replace(
    "y = F.relu(y)", "y = torch.cat([F.relu(y), x], dim=1)"
)
GATE = PLAIN.replace("y = F.relu(y)", "y = F.relu(y) * torch.sigmoid(x.mean((2, 3), keepdim=True))")
DEEPER = PLAIN.replace("y = self.body(x)", "y = self.body(F.relu(self.body(x)))")
SHAPE_IF = PLAIN.replace(
    "        y = self.body(x)\n",
    "        y = self.body(x)\n        if x.shape[-1] > 8:\n            y = y + x\n",
)


def graph_of(code: str, device: str = "cpu", size: int = 32) -> ArchGraph:
    namespace: dict = {}
    exec(compile(code, "<model>", "exec"), namespace)
    with torch.device(device):
        model = namespace["Net"]().eval()
        example = torch.zeros(1, 3, size, size)
        model(example)  # materialise lazy layers, as the evaluator's forward check has
        return record(model, example)


def identity(code: str) -> str:
    return Architecture.of(graph_of(code)).wiring_hash


def test_widths_names_the_order_of_init_and_how_a_layer_is_written_keep_the_wiring_hash() -> None:
    plain = identity(PLAIN)
    assert len(plain) == 32
    for variant in (WIDE, RENAMED, REORDERED, MODULES, GELU):
        assert identity(variant) == plain
    # the op hash sees the activation's kind; the wiring hash does not
    assert Architecture.of(graph_of(GELU)).op_hash != Architecture.of(graph_of(PLAIN)).op_hash
    assert Architecture.of(graph_of(WIDE)).op_hash == Architecture.of(graph_of(PLAIN)).op_hash


def test_a_skip_a_concat_branch_a_gate_and_a_layer_more_change_it() -> None:
    programs = {"plain": PLAIN, "skip": SKIP, "concat": CONCAT, "gate": GATE, "deeper": DEEPER}
    hashes = {name: identity(code) for name, code in programs.items()}
    assert len(set(hashes.values())) == len(hashes), hashes
    skip = graph_of(SKIP)
    assert skip.families()["add"] == 1 and graph_of(PLAIN).families()["add"] == 0
    add = skip.wiring.index("add")
    assert sorted(source for source, target in skip.edges if target == add) == [
        skip.wiring.index("act"),  # the first ReLU's output, x
        skip.wiring.index("conv", skip.wiring.index("act")),  # the body's output, y
    ]
    assert graph_of(CONCAT).families()["cat"] == 1
    gate = graph_of(GATE).families()
    assert gate["mul"] == 1 and gate["pool"] == 2  # the gate's mean and the head's pooling


def test_a_program_symbolic_tracing_cannot_follow_gets_the_graph_of_the_branch_it_ran() -> None:
    namespace: dict = {}
    exec(compile(SHAPE_IF, "<model>", "exec"), namespace)
    with pytest.raises(Exception, match="symbolically traced"):
        torch.fx.symbolic_trace(namespace["Net"]())
    assert identity(SHAPE_IF) == identity(SKIP)  # 32 px: the skip is taken
    assert (
        Architecture.of(graph_of(SHAPE_IF, size=8)).wiring_hash
        == Architecture.of(graph_of(PLAIN, size=8)).wiring_hash
    )


def test_the_meta_device_records_the_same_graph_as_the_cpu() -> None:
    for code in (PLAIN, SKIP, GATE, MODULES):
        assert graph_of(code, "meta") == graph_of(code)


def test_shape_only_operations_and_unused_work_make_no_node() -> None:
    noisy = PLAIN.replace(
        "        y = self.body(x)\n",
        "        x = x.view(x.shape[0], -1).reshape(x.shape).contiguous()[:, :]\n"
        "        unused = torch.sigmoid(x).sum()\n"
        "        y = self.body(F.dropout(x * 2.0, 0.1, self.training))\n",
    )
    assert graph_of(noisy) == graph_of(PLAIN)


def test_the_graded_similarity_is_one_for_one_wiring_and_counts_repeated_blocks() -> None:
    plain, wide, skip, deeper = (Architecture.of(graph_of(c)).tokens for c in (PLAIN, WIDE, SKIP, DEEPER))
    assert token_jaccard(list(plain), list(wide)) == 1.0
    assert 0.0 < token_jaccard(list(plain), list(skip)) < 1.0
    assert 0.0 < token_jaccard(list(plain), list(deeper)) < 1.0
    assert all(token.startswith(("d1:", "d2:", "d3:")) for token in plain)


def test_the_graph_survives_json_and_a_malformed_one_is_refused() -> None:
    graph = graph_of(GATE)
    assert ArchGraph.from_json(graph.to_json()) == graph
    data = json.loads(graph.to_json())
    data["edges"].append([0, len(graph)])
    with pytest.raises(ValueError):
        ArchGraph.from_json(json.dumps(data))
    with pytest.raises(ValueError):
        ArchGraph.from_json("not json")
