"""A program's architecture as a dataflow graph, its identity (the wiring hash) and a graded similarity.

Text similarity is fooled by renaming and width scaling, and the layer sequence (the structural channel
before this) cannot see wiring: `x + self.f(x)`, `torch.cat`, a multiplicative gate. The graph can.
archloop.archtrace records it from one real forward pass; this module holds what is done with it.

Nodes are the layer calls, torch functions and tensor methods the forward pass ran (on the branch it
took), edges follow the tensors; shape-only operations (view, flatten, permute, Identity, dropout, a
scalar scale) are left out and their edges joined; add / mul / cat of two or more computed tensors are
merge nodes. Each node has two labels:

    wiring   its family: conv, dwconv, linear, norm, act, softmax, pool, add, mul, cat, matmul,
             attention, resample, embedding, elementwise, input, output (or the function's name)
    op       the exact operation: `Conv2d(k3,s1)`, `ReLU`, `MaxPool2d(k2,s2)`, `BatchNorm2d`, `add`, …

    wiring_hash(g)          the architecture's identity: Weisfeiler-Lehman over the wiring labels of
                            the directed graph (predecessors and successors apart), |V| rounds as
                            NAS-Bench-101's graph hash; unchanged by widths, names, the order of
                            `__init__`, the activation or pooling kind; changed by a skip, a branch, a
                            gate, a layer more or less
    op_hash(g)              the same over the op labels (kernel sizes, strides, layer kinds count)
    architecture_tokens(g)  the WL subgraph hashes of every node at depths 1–3 (wiring labels), each
                            numbered by occurrence so that counts matter: the novelty service's
                            architecture (structural) channel takes MinHash-Jaccard over them, 1.0 for
                            one wiring hash

Hashes come from networkx (pinned: 3.5 changed directed hashes), the reference implementation of WL
graph hashing, rather than our own.
"""

from __future__ import annotations

import contextlib
import json
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

TOKEN_DEPTHS = 3
_GRAPH_DIGEST = 16
_TOKEN_DIGEST = 8


@dataclass
class ArchGraph:
    """Nodes in the order they ran (0 is the input, the last the output); edges (source, target)."""

    wiring: list[str] = field(default_factory=list)
    ops: list[str] = field(default_factory=list)
    edges: list[tuple[int, int]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.wiring)

    def to_json(self) -> str:
        return json.dumps(
            {"wiring": self.wiring, "ops": self.ops, "edges": self.edges}, separators=(",", ":")
        )

    @classmethod
    def from_json(cls, text: str) -> ArchGraph:
        """The graph of `to_json`; ValueError (json's included) when it is not one."""
        data = json.loads(text)
        wiring, ops = [str(w) for w in data["wiring"]], [str(o) for o in data["ops"]]
        edges = [(int(a), int(b)) for a, b in data["edges"]]
        if len(wiring) != len(ops) or any(not (0 <= n < len(wiring)) for edge in edges for n in edge):
            raise ValueError("an architecture graph's labels and edges do not match")
        return cls(wiring, ops, edges)

    def networkx(self) -> Any:
        import networkx as nx

        graph = nx.DiGraph()
        for index, (wiring, op) in enumerate(zip(self.wiring, self.ops, strict=True)):
            graph.add_node(index, wiring=wiring, op=op)
        graph.add_edges_from(self.edges)
        return graph

    def families(self) -> Counter[str]:
        return Counter(self.wiring)


def wiring_hash(graph: ArchGraph) -> str:
    """The architecture's identity ('' for an empty graph)."""
    return _graph_hash(graph, "wiring")


def op_hash(graph: ArchGraph) -> str:
    return _graph_hash(graph, "op")


def _graph_hash(graph: ArchGraph, label: str) -> str:
    import networkx as nx

    if not len(graph):
        return ""
    with _quiet():
        return str(
            nx.weisfeiler_lehman_graph_hash(
                graph.networkx(), node_attr=label, iterations=len(graph), digest_size=_GRAPH_DIGEST
            )
        )


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """networkx warns on every directed hash that 3.5 changed them: the pin in pyproject.toml answers
    that once."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The hashes produced for directed graphs changed")
        yield


def architecture_tokens(graph: ArchGraph, depths: int = TOKEN_DEPTHS) -> list[str]:
    """`d<depth>:<hash>#<n>` for every node and depth 1..depths, the n-th occurrence of that subgraph
    hash (so a program with five conv blocks is not one with three): a set for MinHash."""
    import networkx as nx

    if not len(graph):
        return []
    with _quiet():
        per_node = nx.weisfeiler_lehman_subgraph_hashes(
            graph.networkx(), node_attr="wiring", iterations=depths, digest_size=_TOKEN_DIGEST
        )
    seen: Counter[str] = Counter()
    tokens = []
    for node in sorted(per_node):
        for depth, digest in enumerate(per_node[node], start=1):
            key = f"d{depth}:{digest}"
            seen[key] += 1
            tokens.append(f"{key}#{seen[key]}")
    return tokens


def token_jaccard(a: list[str], b: list[str]) -> float:
    """The exact Jaccard of two token sets (what the novelty service's MinHash estimates)."""
    left, right = set(a), set(b)
    return len(left & right) / len(left | right) if left | right else 1.0


@dataclass(frozen=True)
class Architecture:
    """What the evaluator and the corpus record of a program's graph."""

    wiring_hash: str
    op_hash: str
    tokens: tuple[str, ...]
    graph_json: str

    @classmethod
    def of(cls, graph: ArchGraph) -> Architecture:
        return cls(wiring_hash(graph), op_hash(graph), tuple(architecture_tokens(graph)), graph.to_json())

    def as_dict(self) -> dict:
        return {"wiring_hash": self.wiring_hash, "op_hash": self.op_hash, "tokens": list(self.tokens),
                "graph": self.graph_json}  # fmt: skip
