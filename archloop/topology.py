"""A program's shape-free topology: the sequence of layer types it builds, without widths or numbers.

Text Jaccard is very sensitive to literals (a width-scaled copy of a program has J ≈ 0.57 to it), so a
model that re-emits a training architecture with new numbers passes the text novelty filter. The
layer sequence sees through that: `nn.LazyConv2d(24, 3)` and `nn.Conv2d(3, 96, 11)` are both `Conv2d`.

    layer_sequence(code)   layer constructors (`nn.X(...)` / `torch.nn.X(...)`) in source order, a
                           shape-inferring layer named as its eager twin
    similarity(a, b)       difflib's ratio of two sequences, 1.0 for the same topology
    forward_topology(t)    the evaluator's structural tokens (leaf modules in the order the forward
                           pass calls them, with output shapes) without their shapes: the order the
                           layers run in, which reordering their definitions or scaling widths keeps
    signature(sequence)    sha256 of a sequence, the key two programs of one topology share
    structural_tokens(m, x) those tokens of a built model, from one forward pass with hooks
"""

from __future__ import annotations

import ast
import difflib
import hashlib
import re
from typing import Any

from archloop.rewrite import EAGER_OF_LAZY, layer_name

_NOT_LAYERS = {"Module", "ModuleList", "ModuleDict", "Sequential", "Parameter", "ParameterList"}


def layer_sequence(code: str) -> tuple[str, ...]:
    """The layer types in the order the source writes them (empty when it does not parse)."""
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return ()
    calls = sorted(
        (n for n in ast.walk(tree) if isinstance(n, ast.Call)), key=lambda n: (n.lineno, n.col_offset)
    )
    names = (layer_name(call) for call in calls)
    return tuple(
        EAGER_OF_LAZY.get(name, name)
        for name in names
        if name and name[0].isupper() and name not in _NOT_LAYERS
    )


_SHAPE = re.compile(r"\[[^\]]*\]$")


def forward_topology(structural_tokens: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """`['Conv2d[32, 16, 16]', 'ReLU[32, 16, 16]']` → `('Conv2d', 'ReLU')`."""
    return tuple(_SHAPE.sub("", token) for token in structural_tokens)


def structural_tokens(model: Any, example: Any) -> list[str]:
    """Leaf module types with output shapes (batch left out), in the order the forward pass calls
    them: what the evaluator sends the novelty service's structural channel (works on the meta device
    too, so the corpus's tokens cost no arithmetic)."""
    import torch

    tokens: list[str] = []

    def record(module: torch.nn.Module, _inputs: Any, output: Any) -> None:
        shape = tuple(output.shape[1:]) if isinstance(output, torch.Tensor) else ()
        tokens.append(f"{type(module).__name__}{list(shape)}")

    hooks = [m.register_forward_hook(record) for m in model.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for hook in hooks:
            hook.remove()
    return tokens


def signature(sequence: tuple[str, ...]) -> str:
    """sha256 of a layer sequence ('' for an empty one: no topology to compare)."""
    return hashlib.sha256("\n".join(sequence).encode()).hexdigest() if sequence else ""


def similarity(a: tuple[str, ...], b: tuple[str, ...]) -> float:
    return difflib.SequenceMatcher(None, a, b, autojunk=False).ratio()


def nearest(sequence: tuple[str, ...], known: list[tuple[str, ...]]) -> float:
    """The highest similarity of `sequence` to any of `known` (0.0 when there is none)."""
    best = 0.0
    matcher = difflib.SequenceMatcher(None, autojunk=False)
    matcher.set_seq2(sequence)
    for other in known:
        matcher.set_seq1(other)
        if matcher.real_quick_ratio() > best and matcher.quick_ratio() > best:
            best = max(best, matcher.ratio())
            if best == 1.0:
                break
    return best
