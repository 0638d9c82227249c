"""A program's layer sequence read from its source: the layer types it builds, without widths or numbers.

A static, cheap view (no program runs) that the parent archive's depth and the base-model benches use.
The architecture itself (what runs, and how it is wired) is archloop.archgraph's graph: its wiring hash
is the project's one notion of topology.

    layer_sequence(code)   layer constructors (`nn.X(...)` / `torch.nn.X(...)`) in source order, a
                           shape-inferring layer named as its eager twin
    similarity(a, b)       difflib's ratio of two sequences, 1.0 for the same sequence
    nearest(s, known)      the highest similarity of s to any of known
"""

from __future__ import annotations

import ast
import difflib

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
