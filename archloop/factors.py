"""Factor mode (SPARK, docs/method.md#generation-modes): the factor list (data,
`archloop/data/factors.yaml`) and which factors an edit touched; shared by the generator (factor mode's
prompts and entanglement), the mutation engine's pairs (tools/edit_pairs.py) and the controller.

Each factor has a signature: a multiset read from the program's syntax tree (the kinds are described at
the top of factors.yaml). An edit touched a factor when the factor's signature differs between the
baseline and the edited program; it is *entangled* when it touched any factor other than the chosen
one (SPARK's entanglement rate). A layer added or removed brings or takes its own activation and norm:
when the edit changed the depth, a call-counted factor counts as touched only if the set of its
distinct calls changed, not their number. Signatures are a heuristic over source text, not a semantic
comparison: renaming a layer class, or computing widths in a loop, is invisible to them.
"""

from __future__ import annotations

import ast
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

from archloop.rewrite import LAZY_NAMES

FACTORS_FILE = Path(__file__).parent / "data" / "factors.yaml"
_SIZE_KEYWORDS = {
    "in_channels",
    "out_channels",
    "in_features",
    "out_features",
    "num_features",
    "num_channels",
    "normalized_shape",
    "embed_dim",
    "inplace",
}
_KINDS = ("calls", "keywords", "channels", "count", "merges", "gates")


@dataclass(frozen=True)
class Factor:
    name: str
    description: str
    calls: frozenset[str] = frozenset()
    keywords: frozenset[str] = frozenset()
    channels: frozenset[str] = frozenset()
    count: frozenset[str] = frozenset()
    merges: frozenset[str] = frozenset()
    gates: frozenset[str] = frozenset()


class FactorFileError(ValueError):
    pass


def load_factors(path: Path | str = "") -> dict[str, Factor]:
    """The factor list in file order; FactorFileError names what is wrong with the file."""
    path = Path(path) if path else FACTORS_FILE
    try:
        entries = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise FactorFileError(f"{path}: {exc}") from None
    if not isinstance(entries, list) or not entries:
        raise FactorFileError(f"{path}: must be a non-empty list of factors")
    factors: dict[str, Factor] = {}
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not entry.get("name") or not entry.get("description"):
            raise FactorFileError(f"{path}: factor {i} needs a name and a description")
        unknown = set(entry) - {"name", "description", *_KINDS}
        if unknown:
            raise FactorFileError(f"{path}: factor {entry['name']!r} has unknown keys {sorted(unknown)}")
        if not any(entry.get(kind) for kind in _KINDS):
            raise FactorFileError(f"{path}: factor {entry['name']!r} lists nothing to recognise it by")
        factors[entry["name"]] = Factor(
            entry["name"], entry["description"], **{k: frozenset(entry.get(k) or ()) for k in _KINDS}
        )
    return factors


def _name(func: ast.expr) -> str:
    if isinstance(func, ast.Attribute):
        return func.attr
    if isinstance(func, ast.Name):
        return func.id
    return ""


def _call_text(call: ast.Call) -> str:
    """A call's name and its non-size arguments (float constants, keywords other than sizes)."""
    parts = [_name(call.func)]
    parts += [
        ast.unparse(arg)
        for arg in call.args
        if isinstance(arg, ast.Constant) and isinstance(arg.value, float | str | bool)
    ]
    parts += [
        f"{k.arg}={ast.unparse(k.value)}" for k in call.keywords if k.arg and k.arg not in _SIZE_KEYWORDS
    ]
    return " ".join(parts)


def _sizes(call: ast.Call) -> list[str]:
    # an eager layer's first two arguments are sizes (in, out); a shape-inferring one has only its output
    # size (nn.LazyConv2d(out, kernel_size), nn.LazyLinear(out))
    positional = 1 if _name(call.func) in LAZY_NAMES else 2
    sizes = [ast.unparse(arg) for arg in call.args[:positional]]
    sizes += [ast.unparse(k.value) for k in call.keywords if k.arg in _SIZE_KEYWORDS - {"inplace"}]
    return sizes


def _is_tensor_term(node: ast.expr) -> bool:
    return isinstance(node, ast.Name | ast.Attribute | ast.Call | ast.Subscript)


def _tensor_op(node: ast.AST, op: type) -> bool:
    """`a <op> b` of two tensor-like terms (names, attributes, calls, subscripts)."""
    return (
        isinstance(node, ast.BinOp)
        and isinstance(node.op, op)
        and _is_tensor_term(node.left)
        and _is_tensor_term(node.right)
    )


def _forward_nodes(tree: ast.AST) -> list[ast.AST]:
    return [
        node
        for fn in ast.walk(tree)
        if isinstance(fn, ast.FunctionDef) and fn.name in ("forward", "_forward_impl")
        for node in ast.walk(fn)
    ]


def marks(tree: ast.AST, factor: Factor) -> Iterator[tuple[str, ast.AST, bool]]:
    """What stands for `factor` in a parsed program: (signature key, the node it was read from, whether
    the key counts once, as a set). The signature is their multiset; region edits (archloop.regions) read
    where they are."""
    for call in (node for node in ast.walk(tree) if isinstance(node, ast.Call)):
        called = _name(call.func)
        if called in factor.calls:
            yield _call_text(call), call, False
        if called in factor.channels:
            for size in _sizes(call):
                yield f"size {size}", call, True
        if called in factor.count:
            yield "layers", call, False
        for keyword in call.keywords:
            if keyword.arg in factor.keywords:
                yield f"{called}.{keyword.arg}={ast.unparse(keyword.value)}", call, False
    if not (factor.merges or factor.gates):
        return
    for node in _forward_nodes(tree):
        if factor.merges:
            if _tensor_op(node, ast.Add) or (
                isinstance(node, ast.AugAssign)
                and isinstance(node.op, ast.Add)
                and _is_tensor_term(node.value)
            ):
                yield f"add {ast.unparse(node)}", node, False
            elif isinstance(node, ast.Call) and _name(node.func) in factor.merges:
                yield f"merge {ast.unparse(node)}", node, False
        if factor.gates and (
            _tensor_op(node, ast.Mult) or (isinstance(node, ast.Call) and _name(node.func) in factor.gates)
        ):
            yield f"gate {ast.unparse(node)}", node, False


def signatures(code: str, factors: dict[str, Factor]) -> dict[str, Counter]:
    """Per factor, the multiset that stands for it in `code` (SyntaxError when it does not parse)."""
    tree = ast.parse(code)
    result: dict[str, Counter] = {}
    for name, factor in factors.items():
        found: Counter = Counter()
        for key, _, as_set in marks(tree, factor):
            found[key] = 1 if as_set else found[key] + 1
        result[name] = found
    return result


def touched_factors(baseline: str, edited: str, factors: dict[str, Factor]) -> list[str]:
    """The factors whose signature the edit changed, in the list's order (SyntaxError when one of the
    programs does not parse)."""
    before, after = signatures(baseline, factors), signatures(edited, factors)
    touched = [name for name in factors if before[name] != after[name]]
    if "depth" not in touched:
        return touched
    return [
        name
        for name in touched
        if name == "depth" or not factors[name].calls or set(before[name]) != set(after[name])
    ]
