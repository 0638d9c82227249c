"""Edited variants of real model files: the labelled material for accuracy tests and benchmarks.

Edits are the ones an LLM makes when it copies a model: rename an identifier everywhere, change
numeric constants, insert copies of existing lines, delete lines. Each variant is labelled later by
the exact Jaccard of its shingle set against the original, never by how it was made.
"""

from __future__ import annotations

import ast
import builtins
import keyword
import random
import re
from collections.abc import Callable

_NUMBER = re.compile(r"(?<![\w.])\d+(?:\.\d+)?(?![\w.])")
_RESERVED = set(keyword.kwlist) | set(dir(builtins)) | {"self", "nn", "torch", "F", "super"}


def defined_names(source: str) -> list[str]:
    """Names the file itself binds (functions, classes, arguments, assigned names and attributes)."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
    return sorted(n for n in names if n not in _RESERVED and len(n) > 1)


def rename_identifier(source: str, rng: random.Random) -> str:
    names = defined_names(source)
    if not names:
        return source
    old = rng.choice(names)
    return re.sub(rf"\b{re.escape(old)}\b", f"{old}_{rng.randint(2, 99)}", source)


def change_constant(source: str, rng: random.Random) -> str:
    spots = list(_NUMBER.finditer(source))
    if not spots:
        return source
    spot = rng.choice(spots)
    return (
        source[: spot.start()] + str(rng.choice([2, 3, 5, 16, 32, 64, 128, 0.1, 0.5])) + source[spot.end() :]
    )


def _code_lines(lines: list[str]) -> list[int]:
    """Lines that are whole simple statements (not block openers or continuation lines)."""
    openers = (":", "(", "[", "{", ",", "\\")
    return [i for i, line in enumerate(lines) if line.strip() and not line.rstrip().endswith(openers)]


def _indent(line: str) -> str:
    return line[: len(line) - len(line.lstrip())]


def insert_line(source: str, rng: random.Random) -> str:
    """Copy a random statement below another one, at that one's indentation."""
    lines = source.split("\n")
    candidates = _code_lines(lines)
    if not candidates:
        return source
    anchor, copied = rng.choice(candidates), rng.choice(candidates)
    lines.insert(anchor + 1, _indent(lines[anchor]) + lines[copied].strip())
    return "\n".join(lines)


def delete_line(source: str, rng: random.Random) -> str:
    lines = source.split("\n")
    keep = ("return", "def ", "class ")
    candidates = [i for i in _code_lines(lines) if not lines[i].lstrip().startswith(keep)]
    if not candidates:
        return source
    del lines[rng.choice(candidates)]
    return "\n".join(lines)


EDITS: dict[str, Callable[[str, random.Random], str]] = {
    "rename": rename_identifier,
    "constant": change_constant,
    "insert": insert_line,
    "delete": delete_line,
}


def make_variant(source: str, rng: random.Random, edits: int) -> tuple[str, list[str]]:
    """Apply `edits` random edits; return the variant and the edit kinds applied."""
    kinds = [rng.choice(list(EDITS)) for _ in range(edits)]
    for kind in kinds:
        source = EDITS[kind](source, rng)
    return source, kinds
