"""Source rewrites of model programs: canonical text, shape-inferring layers, width scaling.

Pure syntax-tree transforms (nothing here executes a program); whether a rewrite keeps a program's
meaning is decided by running it (archloop.forwardcheck), never assumed.

    canonical(code)            `ast.unparse` of the parse: one spelling per program, comments dropped
    to_lazy(code)              nn.Conv2d(c_in, c_out, …) → nn.LazyConv2d(c_out, …), nn.BatchNorm2d(c) →
                               nn.LazyBatchNorm2d(), nn.Linear(f_in, f_out) → nn.LazyLinear(f_out), …:
                               the layer infers its input size at the first forward, so a program needs
                               no running channel count (the commonest reason generated programs fail)
    scale_widths(code, shift)  every integer-literal output width of a lazy conv or linear layer divided
                               by 2**shift (never below 1), except the last linear layer's (the logits)

A lazy layer keeps its parameters' identity when the first forward materialises them, so an optimizer
made afterwards (the contract's `train_setup`) or before trains them alike. What fails on lazy layers
is code that touches `weight` before the first forward (an init loop in `__init__`); the corpus keeps
such programs in their original form.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from typing import cast

# eager layer → (its lazy twin, the keyword of the input size the lazy layer infers)
LAZY_TWINS: dict[str, tuple[str, str]] = {
    "Conv1d": ("LazyConv1d", "in_channels"),
    "Conv2d": ("LazyConv2d", "in_channels"),
    "Conv3d": ("LazyConv3d", "in_channels"),
    "ConvTranspose1d": ("LazyConvTranspose1d", "in_channels"),
    "ConvTranspose2d": ("LazyConvTranspose2d", "in_channels"),
    "ConvTranspose3d": ("LazyConvTranspose3d", "in_channels"),
    "BatchNorm1d": ("LazyBatchNorm1d", "num_features"),
    "BatchNorm2d": ("LazyBatchNorm2d", "num_features"),
    "BatchNorm3d": ("LazyBatchNorm3d", "num_features"),
    "InstanceNorm1d": ("LazyInstanceNorm1d", "num_features"),
    "InstanceNorm2d": ("LazyInstanceNorm2d", "num_features"),
    "InstanceNorm3d": ("LazyInstanceNorm3d", "num_features"),
    "Linear": ("LazyLinear", "in_features"),
}
LAZY_NAMES: frozenset[str] = frozenset(lazy for lazy, _ in LAZY_TWINS.values())
EAGER_OF_LAZY: dict[str, str] = {lazy: eager for eager, (lazy, _) in LAZY_TWINS.items()}
# the output-width argument of the lazy layers scale_widths divides: (position, keyword)
_WIDTH_ARGUMENT = {
    **{f"Lazy{kind}{d}d": (0, "out_channels") for kind in ("Conv", "ConvTranspose") for d in (1, 2, 3)},
    "LazyLinear": (0, "out_features"),
}


def canonical(code: str) -> str:
    """The program as `ast.unparse` writes it (raises SyntaxError when it does not parse)."""
    return ast.unparse(ast.parse(code)) + "\n"


def _torch_nn(node: ast.expr) -> bool:
    """`nn` or `torch.nn`: the prefix of a layer class the rewrites recognise."""
    if isinstance(node, ast.Name):
        return node.id == "nn"
    return (
        isinstance(node, ast.Attribute)
        and node.attr == "nn"
        and isinstance(node.value, ast.Name)
        and node.value.id == "torch"
    )


def layer_name(call: ast.Call) -> str:
    """'Conv2d' for `nn.Conv2d(...)` / `torch.nn.Conv2d(...)`, else ''."""
    func = call.func
    return func.attr if isinstance(func, ast.Attribute) and _torch_nn(func.value) else ""


def _plain(call: ast.Call) -> bool:
    """No *args / **kwargs: the arguments can be read by position and keyword."""
    return not any(isinstance(a, ast.Starred) for a in call.args) and all(k.arg for k in call.keywords)


class _Lazify(ast.NodeTransformer):
    def __init__(self) -> None:
        self.count = 0

    def visit_Call(self, node: ast.Call) -> ast.AST:
        self.generic_visit(node)
        name = layer_name(node)
        if name not in LAZY_TWINS or not _plain(node):
            return node
        lazy, input_keyword = LAZY_TWINS[name]
        keywords = [k for k in node.keywords if k.arg != input_keyword]
        if len(keywords) < len(node.keywords):
            args = node.args
        elif node.args:
            args = node.args[1:]
        else:
            return node  # no input size given: not a call we understand
        assert isinstance(node.func, ast.Attribute)
        node.func.attr = lazy
        node.args, node.keywords = args, keywords
        self.count += 1
        return node


def to_lazy(code: str) -> tuple[str, int]:
    """(canonical text with shape-inferring layers, how many layer calls were rewritten)."""
    tree = ast.parse(code)
    lazify = _Lazify()
    tree = lazify.visit(tree)
    return ast.unparse(tree) + "\n", lazify.count


@dataclass(frozen=True)
class _Width:
    call: ast.Call
    holder: list  # node.args or node.keywords
    index: int


def _widths(tree: ast.AST) -> list[_Width]:
    """Integer-literal output widths of lazy conv / linear calls, in source order."""
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        spec = _WIDTH_ARGUMENT.get(layer_name(node))
        if spec is None:
            continue
        position, keyword = spec
        for i, kw in enumerate(node.keywords):
            if kw.arg == keyword and _int_literal(kw.value):
                found.append(_Width(node, node.keywords, i))
        if len(node.args) > position and _int_literal(node.args[position]):
            found.append(_Width(node, node.args, position))
    found.sort(key=lambda w: (w.call.lineno, w.call.col_offset))
    return found


def _int_literal(node: ast.expr) -> bool:
    return isinstance(node, ast.Constant) and type(node.value) is int


def scale_widths(code: str, shift: int) -> tuple[str, int]:
    """(canonical text with literal widths divided by 2**shift, how many widths changed)."""
    if shift < 0:
        raise ValueError(f"shift {shift} must not be negative")
    tree = ast.parse(code)
    widths = _widths(tree)
    linear = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and layer_name(n) == "LazyLinear"]
    # the classifier's output (the last linear layer in the text) stays the number of classes
    logits = max(linear, key=lambda n: (n.lineno, n.col_offset)) if linear else None
    changed = 0
    for width in widths:
        if width.call is logits:
            continue
        slot = width.holder[width.index]
        literal = cast(ast.Constant, slot.value if isinstance(slot, ast.keyword) else slot)  # see _widths
        scaled = max(1, cast(int, literal.value) >> shift)
        if scaled != literal.value:
            replacement = ast.Constant(scaled)
            if isinstance(slot, ast.keyword):
                slot.value = replacement
            else:
                width.holder[width.index] = replacement
            changed += 1
    return ast.unparse(tree) + "\n", changed


def lazy_layer_count(code: str) -> int:
    """How many shape-inferring layer calls a program makes (0 when it does not parse)."""
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return 0
    return sum(isinstance(n, ast.Call) and layer_name(n) in LAZY_NAMES for n in ast.walk(tree))
