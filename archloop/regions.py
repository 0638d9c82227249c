"""Region edits (docs/edit-modes.md#region-edits): the parent with one factor's site cut out as a hole,
the model writes only the middle, and the splice is checked to touch exactly that factor.

    sites(code, factor, factors)        where `factor` can be edited in `code`, as Site line ranges
    cut(code, site)                     (prefix, middle, suffix) of the program around a site
    splice(prefix, middle, suffix)      the child program: the parent outside the hole byte for byte
    scope(parent, child, factor, ...)   in_scope | no_change | out_of_scope | does_not_parse, with the
                                        factors the edit touched (archloop.factors' rule)
    training_site(parent, child, ...)   the site a verified engine edit fits in (training examples)

A site is a run of whole statements of one method (`Class.method`), so a hole never splits a
statement and what the model writes is whole lines at the method's indentation:
    replace  the statements of a method that hold the factor's marks (archloop.factors.marks: its calls,
             widths, keywords, merges or gates), from the first to the last
    insert   the whole body of the method where a factor is added when the parent lacks it or has it
             elsewhere: `forward` for skip connections and attention / gates, `__init__` for depth (a
             layer list grows there) and normalisation (norms after convs that had none). The wiring ones
             are the sites that create architecture: a skip, a branch, a gate or a layer where the
             parent had none.
Entanglement outside the hole is zero by construction (the splice keeps the parent's bytes there);
inside the hole it is measured: `scope` re-reads the whole child with archloop.factors.touched_factors.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass

from archloop.factors import Factor, marks, touched_factors

# a factor that can be added where the parent has none → the method whose whole body is its insertion
# site: the wiring factors, and normalisation (norm layers after convs that had none)
INSERTION_METHODS = {
    "skip_connections": "forward",
    "attention": "forward",
    "depth": "__init__",
    "normalisation": "__init__",
}
VERDICTS = ("in_scope", "no_change", "out_of_scope", "does_not_parse")


@dataclass(frozen=True)
class Site:
    factor: str
    method: str  # "Net.forward"
    start: int  # first line of the hole, 1-based
    end: int  # last line of the hole, inclusive
    kind: str  # "replace" | "insert"

    @property
    def key(self) -> str:
        return f"{self.factor}@{self.method}:{self.start}-{self.end}"


def methods(tree: ast.Module) -> list[tuple[str, ast.FunctionDef]]:
    return [
        (f"{cls.name}.{fn.name}", fn)
        for cls in tree.body
        if isinstance(cls, ast.ClassDef)
        for fn in cls.body
        if isinstance(fn, ast.FunctionDef) and fn.body
    ]


def _span(body: list[ast.stmt], lines: set[int]) -> tuple[int, int] | None:
    """The first and last line of the run of `body`'s statements that holds any of `lines`."""
    chosen = [s for s in body if any(s.lineno <= line <= (s.end_lineno or s.lineno) for line in lines)]
    if not chosen:
        return None
    return chosen[0].lineno, chosen[-1].end_lineno or chosen[-1].lineno


def sites(code: str, factor: str, factors: dict[str, Factor]) -> list[Site]:
    """The sites of `factor` in `code`, in line order (SyntaxError when it does not parse)."""
    tree = ast.parse(code)
    marked = {
        line
        for _, node, _ in marks(tree, factors[factor])
        for line in range(getattr(node, "lineno", 0), (getattr(node, "end_lineno", 0) or 0) + 1)
        if line
    }
    found: dict[tuple[int, int], Site] = {}
    for name, fn in methods(tree):
        span = _span(fn.body, marked)
        if span is not None:
            found[span] = Site(factor, name, span[0], span[1], "replace")
        if fn.name == INSERTION_METHODS.get(factor):
            body = (fn.body[0].lineno, fn.body[-1].end_lineno or fn.body[-1].lineno)
            found.setdefault(body, Site(factor, name, body[0], body[1], "insert"))
    return sorted(found.values(), key=lambda s: (s.start, s.end))


def cut(code: str, site: Site) -> tuple[str, str, str]:
    """(prefix, middle, suffix): the lines before the site, the site's lines, the lines after it."""
    lines = code.splitlines(keepends=True)
    return (
        "".join(lines[: site.start - 1]),
        "".join(lines[site.start - 1 : site.end]),
        "".join(lines[site.end :]),
    )


def splice(prefix: str, middle: str, suffix: str) -> str:
    """The child program: `middle` (blank lines around it dropped, a final newline added) between the
    parent's own prefix and suffix, which stay byte for byte."""
    lines = middle.splitlines()
    while lines and not lines[0].strip():
        lines.pop(0)
    while lines and not lines[-1].strip():
        lines.pop()
    return prefix + "".join(line + "\n" for line in lines) + suffix


@dataclass(frozen=True)
class Scope:
    verdict: str  # one of VERDICTS
    touched: tuple[str, ...]  # the factors the edit touched, in the factor list's order

    @property
    def ok(self) -> bool:
        return self.verdict == "in_scope"


def scope(parent: str, child: str, factor: str, factors: dict[str, Factor]) -> Scope:
    """Whether the child changed exactly `factor` (in_scope), nothing a factor sees (no_change), more
    than it (out_of_scope), or does not parse."""
    try:
        touched = tuple(touched_factors(parent, child, factors))
    except SyntaxError:
        return Scope("does_not_parse", ())
    if not touched:
        return Scope("no_change", touched)
    return Scope("in_scope" if touched == (factor,) else "out_of_scope", touched)


def changed_lines(parent: str, child: str) -> tuple[int, int, int]:
    """(same_before, same_after, child_lines): how many whole lines the two programs share at their
    start and at their end (never overlapping), and the child's line count."""
    a, b = parent.splitlines(keepends=True), child.splitlines(keepends=True)
    before = 0
    while before < min(len(a), len(b)) and a[before] == b[before]:
        before += 1
    after = 0
    while after < min(len(a), len(b)) - before and a[-1 - after] == b[-1 - after]:
        after += 1
    return before, after, len(b)


def training_site(parent: str, child: str, factor: str, factors: dict[str, Factor]) -> Site | None:
    """The smallest site of `factor` in `parent` that holds every line the edit to `child` changed
    (a pure insertion: the place it goes); None when no single site does."""
    before, after, _ = changed_lines(parent, child)
    first, last = before + 1, len(parent.splitlines()) - after  # changed parent lines (last < first: none)
    if last < first:  # nothing removed: the new lines go between `before` and `before + 1`
        fitting = [s for s in sites(parent, factor, factors) if s.start <= first <= s.end + 1]
    else:
        fitting = [s for s in sites(parent, factor, factors) if s.start <= first and last <= s.end]
    return min(fitting, key=lambda s: (s.end - s.start, s.start), default=None)


def child_middle(parent: str, child: str, site: Site) -> str:
    """What the child has in place of the parent's site (the answer of a training example); the child
    must equal the parent outside the site."""
    child_lines = child.splitlines(keepends=True)
    tail = len(parent.splitlines()) - site.end
    return "".join(child_lines[site.start - 1 : len(child_lines) - tail])
