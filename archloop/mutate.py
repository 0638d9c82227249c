"""Factor mutations of model programs: the edit a SPARK-scoped change of one functional factor makes.

    mutations(code, factor, rng)   proposed edits of `code` that change only `factor`, as (text, what)

Factors are those of factor mode (archloop/data/factors.yaml): activation, normalisation,
downsampling, width, depth, skip_connections, attention, regularisation. Each operator is a pure
syntax-tree transform that proposes a few alternatives (seeded by `rng`); nothing here executes a
program. A proposal is only a proposal: whether it builds, runs a forward pass at the task's shapes,
meets the budget and really touched only its factor is decided by the caller (tools/edit_pairs.py runs
each through archloop.forwardcheck and archloop.factors), never assumed. Texts come out of
`ast.unparse`; corpus programs are already in that form (archloop.rewrite.canonical), so a diff between
a program and its mutation holds only the edit.

What each factor's operator does (the layer calls are recognised as `nn.X(...)` / `torch.nn.X(...)`,
functional ones as `F.x(...)` / `torch.nn.functional.x(...)`):
    activation        every call of one activation becomes another (ReLU → GELU, SiLU, …)
    normalisation     one norm kind becomes another (batch → group / instance / layer norm), is removed
                      (nn.Identity), or a program without norms gets nn.LazyBatchNorm2d after its convs
    downsampling      max ↔ average pooling (layers, adaptive layers, functional calls)
    width             every literal layer width × 2 or ÷ 2, except the logits and the image channels
    depth             a conv block in a layer list is repeated (its copy keeps the resolution) or removed
    skip_connections  a residual `a + b` in forward keeps one branch, or `x = self.f(x)` gains `x + …`
    attention         a gate `a * g(…)` in forward loses the gate (where the program has one)
    regularisation    dropout probabilities change, dropout layers are removed, or one is added before
                      the classifier's last linear layer
"""

from __future__ import annotations

import ast
import copy
import random
from collections.abc import Callable, Collection, Iterator
from typing import Any, cast

from archloop.rewrite import layer_name

FACTORS = (
    "activation",
    "normalisation",
    "downsampling",
    "width",
    "depth",
    "skip_connections",
    "attention",
    "regularisation",
)

# module activations → whether the class takes `inplace`
ACTIVATIONS = {
    "ReLU": True, "ReLU6": True, "LeakyReLU": True, "ELU": True, "SELU": True, "CELU": True,
    "SiLU": True, "Mish": True, "Hardswish": True, "GELU": False,
}  # fmt: skip
# functional activations of torch.nn.functional → whether they take `inplace`
FUNCTIONAL_ACTIVATIONS = {
    "relu": True, "relu6": False, "leaky_relu": True, "elu": True, "selu": True, "celu": True,
    "silu": True, "mish": True, "hardswish": True, "gelu": False,
}  # fmt: skip
CONVS = frozenset({"Conv1d", "Conv2d", "Conv3d", "LazyConv1d", "LazyConv2d", "LazyConv3d"})
LINEARS = frozenset({"Linear", "LazyLinear"})
POOL_SWAPS = {
    "MaxPool1d": "AvgPool1d", "AvgPool1d": "MaxPool1d", "MaxPool2d": "AvgPool2d", "AvgPool2d": "MaxPool2d",
    "AdaptiveAvgPool2d": "AdaptiveMaxPool2d", "AdaptiveMaxPool2d": "AdaptiveAvgPool2d",
    "AdaptiveAvgPool1d": "AdaptiveMaxPool1d", "AdaptiveMaxPool1d": "AdaptiveAvgPool1d",
}  # fmt: skip
FUNCTIONAL_POOL_SWAPS = {
    "max_pool2d": "avg_pool2d", "avg_pool2d": "max_pool2d",
    "adaptive_avg_pool2d": "adaptive_max_pool2d", "adaptive_max_pool2d": "adaptive_avg_pool2d",
}  # fmt: skip
# keywords a max pool takes and an average pool does not (and back)
_POOL_ONLY = {"dilation", "return_indices", "count_include_pad", "divisor_override"}
NORMS_2D = ("BatchNorm2d", "LazyBatchNorm2d", "InstanceNorm2d", "LazyInstanceNorm2d", "GroupNorm")
_NORM_TARGETS = ("GroupNorm", "InstanceNorm2d", "LazyInstanceNorm2d", "Identity")
DROPOUTS = frozenset({"Dropout", "Dropout1d", "Dropout2d", "AlphaDropout"})
DROPOUT_RATES = (0.1, 0.2, 0.3, 0.5)
PROPOSALS = 3  # alternatives an operator proposes at most


def _nn(attr: str) -> ast.Attribute:
    return ast.Attribute(ast.Name("nn", ast.Load()), attr, ast.Load())


def _call(attr: str, *args: ast.expr, **keywords: ast.expr) -> ast.Call:
    return ast.Call(_nn(attr), list(args), [ast.keyword(k, v) for k, v in keywords.items()])


def _functional_name(call: ast.Call) -> str:
    """'relu' for `F.relu(...)` / `torch.nn.functional.relu(...)` / `nn.functional.relu(...)`, else ''."""
    func = call.func
    if not isinstance(func, ast.Attribute):
        return ""
    base = func.value
    if isinstance(base, ast.Name) and base.id == "F":
        return func.attr
    if isinstance(base, ast.Attribute) and base.attr == "functional":
        return func.attr
    return ""


def _is_layer(node: ast.AST, names: frozenset[str] | set[str]) -> bool:
    return isinstance(node, ast.Call) and layer_name(node) in names


def _calls(tree: ast.AST) -> list[ast.Call]:
    return [node for node in ast.walk(tree) if isinstance(node, ast.Call)]


def _forward(tree: ast.AST) -> list[ast.FunctionDef]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "forward"]


def _text(tree: ast.AST) -> str:
    return ast.unparse(ast.fix_missing_locations(tree)) + "\n"


Proposal = tuple[str, str]  # (mutated program, what was changed, in words)
Operator = Callable[[ast.Module, random.Random], Iterator[Proposal]]


def _present(
    tree: ast.Module, rng: random.Random, modules: Collection[str], functionals: Collection[str]
) -> list[tuple[str, str]]:
    """("module" | "functional", name) of the listed calls the program makes, in a seeded order."""
    calls = _calls(tree)
    choices = [("module", n) for n in sorted({layer_name(c) for c in calls} & set(modules))]
    choices += [("functional", n) for n in sorted({_functional_name(c) for c in calls} & set(functionals))]
    rng.shuffle(choices)
    return choices


def _renamed(
    tree: ast.Module, kind: str, source: str, target: str, adjust: Callable[[ast.Call], None]
) -> str:
    """The program with every `source` call (a layer or a functional call) renamed `target` and its
    arguments `adjust`ed."""
    edited = copy.deepcopy(tree)
    for call in _calls(edited):
        if (layer_name(call) if kind == "module" else _functional_name(call)) == source:
            assert isinstance(call.func, ast.Attribute)
            call.func.attr = target
            adjust(call)
    return _text(edited)


def _activation(tree: ast.Module, rng: random.Random) -> Iterator[Proposal]:
    for kind, source in _present(tree, rng, ACTIVATIONS, FUNCTIONAL_ACTIVATIONS):
        table = ACTIVATIONS if kind == "module" else FUNCTIONAL_ACTIVATIONS
        target = rng.choice(sorted(set(table) - {source}))

        def adjust(call: ast.Call, kind: str = kind, table: dict = table, target: str = target) -> None:
            # the tensor (functional) stays; an activation's own parameters (slopes, alphas) do not
            call.args = call.args[:1] if kind == "functional" else []
            call.keywords = [k for k in call.keywords if k.arg == "inplace" and table[target]]

        yield _renamed(tree, kind, source, target, adjust), f"{source} → {target}"


def _norm_replacement(call: ast.Call, target: str) -> ast.Call | None:
    """`call` (a 2-d norm layer) as a `target` layer of the same width; None when its width is unknown."""
    name = layer_name(call)
    if target == "Identity":
        return _call("Identity")
    if target == "LazyInstanceNorm2d":
        return _call("LazyInstanceNorm2d", affine=ast.Constant(True))
    if name.startswith("Lazy"):
        return None  # an eager layer needs the width the lazy one inferred
    if name == "GroupNorm":
        width = call.args[1] if len(call.args) > 1 else None
    else:
        width = call.args[0] if call.args else None
    width = width or next((k.value for k in call.keywords if k.arg in ("num_features", "num_channels")), None)
    if width is None:
        return None
    if target == "GroupNorm":  # one group: normalises each image over all its channels, any width
        return _call("GroupNorm", ast.Constant(1), copy.deepcopy(width))
    return _call(target, copy.deepcopy(width), affine=ast.Constant(True))


def _layer_lists(tree: ast.AST) -> list[list[ast.expr]]:
    """Element lists of layer sequences: `nn.Sequential(a, b, …)` arguments and list literals that hold
    a layer call (`layers += [conv, act, pool]`)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and layer_name(node) == "Sequential":
            if not any(isinstance(a, ast.Starred) for a in node.args):
                found.append(node.args)
        elif isinstance(node, ast.List) and any(isinstance(e, ast.Call) and layer_name(e) for e in node.elts):
            found.append(node.elts)
    return found


def _normalisation(tree: ast.Module, rng: random.Random) -> Iterator[Proposal]:
    present = sorted({layer_name(c) for c in _calls(tree)} & set(NORMS_2D))
    if not present:
        # none at all: a shape-inferring batch norm after every conv of the layer lists
        edited = copy.deepcopy(tree)
        added = 0
        for elements in _layer_lists(edited):
            for i in reversed(range(len(elements))):
                element = elements[i]
                if isinstance(element, ast.Call) and layer_name(element) in ("Conv2d", "LazyConv2d"):
                    elements.insert(i + 1, _call("LazyBatchNorm2d"))
                    added += 1
        if added:
            yield _text(edited), f"LazyBatchNorm2d after {added} conv(s)"
        return
    rng.shuffle(present)
    for source in present:
        targets = [t for t in _NORM_TARGETS if t != source]
        if source.startswith("Lazy"):
            targets = [t for t in targets if t.startswith("Lazy") or t == "Identity"]
        rng.shuffle(targets)
        for target in targets[:2]:
            edited = copy.deepcopy(tree)
            changed = 0
            for node in ast.walk(edited):
                for field, value in ast.iter_fields(node):
                    slots = value if isinstance(value, list) else [value]
                    for i, slot in enumerate(slots):
                        if isinstance(slot, ast.Call) and layer_name(slot) == source:
                            new = _norm_replacement(slot, target)
                            if new is None:
                                continue
                            if isinstance(value, list):
                                value[i] = new
                            else:
                                setattr(node, field, new)
                            changed += 1
            if changed:
                yield _text(edited), f"{source} → {target}"


def _downsampling(tree: ast.Module, rng: random.Random) -> Iterator[Proposal]:
    for kind, source in _present(tree, rng, POOL_SWAPS, FUNCTIONAL_POOL_SWAPS):
        target = (POOL_SWAPS if kind == "module" else FUNCTIONAL_POOL_SWAPS)[source]

        def adjust(call: ast.Call, kind: str = kind, source: str = source) -> None:
            call.keywords = [k for k in call.keywords if k.arg not in _POOL_ONLY]
            if kind == "module" and "Adaptive" not in source:
                call.args = call.args[:3]  # kernel, stride, padding: both kinds read these first

        yield _renamed(tree, kind, source, target, adjust), f"{source} → {target}"


def _int(node: ast.expr) -> bool:
    return isinstance(node, ast.Constant) and type(node.value) is int


_WIDTH_KEYWORDS = {
    "in_channels", "out_channels", "in_features", "out_features", "num_features", "num_channels",
}  # fmt: skip


def _width_slots(tree: ast.AST) -> list[tuple[ast.Call, list[Any], int, str]]:
    """(call, holder, index, role) of each integer-literal width of a conv / linear / norm layer; role is
    'in' or 'out' (a norm's width counts as 'in': it follows its conv)."""
    slots: list[tuple[ast.Call, list[Any], int, str]] = []
    for call in _calls(tree):
        name = layer_name(call)
        if name in CONVS or name in LINEARS:
            roles = ("out",) if name.startswith("Lazy") else ("in", "out")
        elif name in ("BatchNorm1d", "BatchNorm2d", "InstanceNorm2d", "LayerNorm"):
            roles = ("in",)
        elif name == "GroupNorm":
            roles = ("groups", "in")
        else:
            continue
        for position, role in enumerate(roles):
            if len(call.args) > position and _int(call.args[position]) and role != "groups":
                slots.append((call, call.args, position, role))
        for i, kw in enumerate(call.keywords):
            if kw.arg in _WIDTH_KEYWORDS and _int(kw.value):
                role = "out" if kw.arg.startswith("out") else "in"
                slots.append((call, call.keywords, i, role))
    return slots


def _width(tree: ast.Module, rng: random.Random) -> Iterator[Proposal]:
    factors = [2.0, 0.5]
    rng.shuffle(factors)
    for factor in factors:
        edited = copy.deepcopy(tree)
        linears = [c for c in _calls(edited) if layer_name(c) in LINEARS]
        logits = max(linears, key=lambda c: (c.lineno, c.col_offset)) if linears else None
        changed = 0
        for call, holder, index, role in _width_slots(edited):
            slot = holder[index]
            literal = cast(ast.Constant, slot.value if isinstance(slot, ast.keyword) else slot)
            value = cast(int, literal.value)  # _width_slots holds integer literals only
            if (call is logits and role == "out") or (role == "in" and value <= 4):
                continue  # the number of classes; the image's channels (1 or 3)
            scaled = max(1, round(value * factor))
            if scaled == value:
                continue
            if isinstance(slot, ast.keyword):
                slot.value = ast.Constant(scaled)
            else:
                holder[index] = ast.Constant(scaled)
            changed += 1
        if changed:
            yield _text(edited), f"{changed} widths × {factor:g}"


def _conv_blocks(elements: list[ast.expr]) -> list[tuple[int, int]]:
    """[start, end) of each conv block of a layer list: a conv and the non-conv layers after it, up to the
    next conv or linear layer."""
    starts = [i for i, e in enumerate(elements) if isinstance(e, ast.Call) and layer_name(e) in CONVS]
    blocks = []
    for start in starts:
        end = start + 1
        while end < len(elements):
            e = elements[end]
            if isinstance(e, ast.Call) and layer_name(e) in CONVS | LINEARS:
                break
            end += 1
        blocks.append((start, end))
    return blocks


def _same_resolution_copy(block: list[ast.expr]) -> list[ast.expr]:
    """A copy of a conv block that keeps its input's size: stride 1, no pooling, padding k // 2, and an
    eager conv's input width set to its output width."""
    copied = []
    for element in block:
        if _is_layer(element, DROPOUTS) or (isinstance(element, ast.Call) and "Pool" in layer_name(element)):
            continue
        element = copy.deepcopy(element)
        if isinstance(element, ast.Call) and layer_name(element) in CONVS:
            element.keywords = [k for k in element.keywords if k.arg not in ("stride", "padding")]
            # (out, kernel) of a lazy conv, (in, out, kernel) of an eager one
            positional = 2 if layer_name(element).startswith("Lazy") else 3
            kernel = (
                element.args[positional - 1]
                if len(element.args) >= positional
                else next((k.value for k in element.keywords if k.arg == "kernel_size"), None)
            )
            element.args = element.args[:positional]
            if not isinstance(kernel, ast.Constant) or type(kernel.value) is not int or kernel.value % 2 == 0:
                return []
            element.keywords.append(ast.keyword("padding", ast.Constant(kernel.value // 2)))
            if not layer_name(element).startswith("Lazy"):
                if len(element.args) < 2:
                    return []
                element.args[0] = copy.deepcopy(element.args[1])
        copied.append(element)
    return copied


def _depth(tree: ast.Module, rng: random.Random) -> Iterator[Proposal]:
    options = []
    lists = _layer_lists(tree)
    for li, elements in enumerate(lists):
        for bi, _ in enumerate(_conv_blocks(elements)):
            options += [("repeat", li, bi), ("remove", li, bi)]
    rng.shuffle(options)
    for action, li, bi in options[: PROPOSALS * 2]:
        edited = copy.deepcopy(tree)
        elements = _layer_lists(edited)[li]
        blocks = _conv_blocks(elements)
        start, end = blocks[bi]
        if action == "repeat":
            block = _same_resolution_copy(elements[start:end])
            if not block:
                continue
            elements[end:end] = block
        else:
            if len(blocks) < 2:
                continue  # a network keeps at least one conv
            pools = elements[start + 1 : end]
            keep = [e for e in pools if isinstance(e, ast.Call) and "Pool" in layer_name(e)]
            elements[start:end] = keep  # the resolution it reduced stays reduced
        yield _text(edited), f"conv block {bi + 1} of layer list {li + 1} {action}ed"


def _tensor_term(node: ast.expr) -> bool:
    return isinstance(node, ast.Name | ast.Attribute | ast.Call | ast.Subscript)


class _ReplaceNode(ast.NodeTransformer):
    def __init__(self, target: ast.AST, replacement: ast.AST) -> None:
        self.target, self.replacement = target, replacement

    def visit(self, node: ast.AST) -> ast.AST:
        if node is self.target:
            return self.replacement
        return super().visit(node)


def _skip_connections(tree: ast.Module, rng: random.Random) -> Iterator[Proposal]:
    proposals: list[tuple[str, Any, str]] = []  # (drop, BinOp, side) or (add, Assign, "")
    for forward in _forward(tree):
        for node in ast.walk(forward):
            if (
                isinstance(node, ast.BinOp)
                and isinstance(node.op, ast.Add)
                and _tensor_term(node.left)
                and _tensor_term(node.right)
            ):
                proposals += [("drop", node, "left"), ("drop", node, "right")]
            if (
                isinstance(node, ast.Assign)
                and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name)
                and isinstance(node.value, ast.Call)
                and isinstance(node.value.func, ast.Attribute)
                and isinstance(node.value.func.value, ast.Name)
                and node.value.func.value.id == "self"
                and len(node.value.args) == 1
                and isinstance(node.value.args[0], ast.Name)
                and node.value.args[0].id == node.targets[0].id
            ):
                proposals.append(("add", node, ""))
    rng.shuffle(proposals)
    for action, node, side in proposals[:PROPOSALS]:
        if action == "drop":
            kept = node.left if side == "left" else node.right
            edited_tree = _replace_same(tree, node, copy.deepcopy(kept))
            yield _text(edited_tree), f"residual {ast.unparse(node)} keeps {ast.unparse(kept)}"
        else:
            name = node.targets[0].id
            value = ast.BinOp(ast.Name(name, ast.Load()), ast.Add(), copy.deepcopy(node.value))
            edited_tree = _replace_same(tree, node.value, value)
            yield _text(edited_tree), f"{ast.unparse(node)} gains a residual"


def _replace_same(tree: ast.Module, target: ast.AST, replacement: ast.AST) -> ast.Module:
    """A copy of `tree` with the node at `target`'s place replaced (nodes are matched by walk order)."""
    order = {id(node): i for i, node in enumerate(ast.walk(tree))}
    wanted = order[id(target)]
    edited = copy.deepcopy(tree)
    node = next(n for i, n in enumerate(ast.walk(edited)) if i == wanted)
    return cast(ast.Module, _ReplaceNode(node, replacement).visit(edited))


def _attention(tree: ast.Module, rng: random.Random) -> Iterator[Proposal]:
    gates = [
        node
        for forward in _forward(tree)
        for node in ast.walk(forward)
        # activations × something computed from them (squeeze-and-excitation, spatial gates)
        if isinstance(node, ast.BinOp)
        and isinstance(node.op, ast.Mult)
        and _tensor_term(node.left)
        and _tensor_term(node.right)
    ]
    rng.shuffle(gates)
    for gate in gates[:PROPOSALS]:
        # the gated tensor is the plain term, the gate the call (when both are calls: the left one stays)
        kept = (
            gate.right
            if isinstance(gate.left, ast.Call) and not isinstance(gate.right, ast.Call)
            else gate.left
        )
        yield _text(_replace_same(tree, gate, copy.deepcopy(kept))), f"gate {ast.unparse(gate)} removed"


def _regularisation(tree: ast.Module, rng: random.Random) -> Iterator[Proposal]:
    dropouts = [c for c in _calls(tree) if layer_name(c) in DROPOUTS]
    options = ["rate", "remove"] if dropouts else ["add"]
    rng.shuffle(options)
    for option in options:
        edited = copy.deepcopy(tree)
        if option == "rate":
            rate = rng.choice(DROPOUT_RATES)
            for call in _calls(edited):
                if layer_name(call) in DROPOUTS:
                    call.args, call.keywords = [], [ast.keyword("p", ast.Constant(rate))]
            yield _text(edited), f"dropout p = {rate:g}"
        elif option == "remove":
            changed = 0
            for elements in _layer_lists(edited):
                before = len(elements)
                elements[:] = [e for e in elements if not _is_layer(e, DROPOUTS)]
                changed += before - len(elements)
            if changed:
                yield _text(edited), f"{changed} dropout layer(s) removed"
        else:
            for elements in reversed(_layer_lists(edited)):
                linear = [i for i, e in enumerate(elements) if _is_layer(e, LINEARS)]
                if linear:
                    rate = rng.choice(DROPOUT_RATES)
                    elements.insert(linear[-1], _call("Dropout", p=ast.Constant(rate)))
                    yield _text(edited), f"dropout p = {rate:g} before the last linear layer"
                    break


OPERATORS: dict[str, Operator] = {
    "activation": _activation,
    "normalisation": _normalisation,
    "downsampling": _downsampling,
    "width": _width,
    "depth": _depth,
    "skip_connections": _skip_connections,
    "attention": _attention,
    "regularisation": _regularisation,
}


def _binds_nn(tree: ast.Module) -> bool:
    """Does the module import `nn` (`import torch.nn as nn`, `from torch import nn`)?"""
    return any(
        isinstance(node, ast.Import | ast.ImportFrom)
        and any((a.asname or a.name) == "nn" for a in node.names)
        for node in tree.body
    )


class _TorchNN(ast.NodeTransformer):
    """`nn.X` → `torch.nn.X`, for a program that spells its layers in full."""

    def visit_Name(self, node: ast.Name) -> ast.expr:
        if node.id == "nn":
            return ast.Attribute(ast.Name("torch", ast.Load()), "nn", ast.Load())
        return node


def mutations(code: str, factor: str, rng: random.Random) -> list[Proposal]:
    """Up to PROPOSALS distinct edits of `code` that change `factor` (SyntaxError when it does not
    parse; KeyError for an unknown factor). Empty when the program has nothing of the factor to change."""
    operator = OPERATORS[factor]
    tree = ast.parse(code)
    original = _text(tree)
    seen, found = {original}, []
    spelled_torch_nn = not _binds_nn(tree)
    for text, what in operator(tree, rng):
        if spelled_torch_nn:
            text = _text(_TorchNN().visit(ast.parse(text)))
        if text not in seen:
            seen.add(text)
            found.append((text, what))
        if len(found) == PROPOSALS:
            break
    return found
