"""One child of a parent by the mutation engine alone, no language model (issue 35's `engine` mode).

    child(code, seed, factors)   a verified one-factor edit of `code`, or None when none of the factors
                                 has an edit that touches that factor alone

The factor is drawn uniformly (seeded by `seed`, one string per candidate) from `factors` (the
experiment's list, else all eight of archloop.mutate); when the parent has nothing of that factor to
change (no gate to remove, no residual to add …) the next factor in the same seeded order is tried.
Among the operator's proposals (archloop.mutate.mutations) only those whose edit touches exactly that
factor (archloop.factors.touched_factors, the signature check factor mode and `archloop corpus edits`
use) are kept, and one of them is drawn. Nothing here executes the program: whether the child builds,
runs and trains is the evaluator's verdict, as for every other candidate.
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass

from archloop import mutate
from archloop.factors import Factor, load_factors, touched_factors


@dataclass(frozen=True)
class Child:
    code: str
    factor: str
    edit: str  # what the operator did, in its own words ("ReLU → GELU", …)
    tried: tuple[str, ...]  # the factors tried before it, in order (none had a verified edit)


@functools.cache
def _factor_table() -> dict[str, Factor]:
    return load_factors()


def child(code: str, seed: str, factors: tuple[str, ...] = mutate.FACTORS) -> Child | None:
    """A verified one-factor edit of `code` (None when no factor of `factors` has one; SyntaxError when
    `code` does not parse; KeyError for a factor the engine does not know)."""
    unknown = [f for f in factors if f not in mutate.FACTORS]
    if unknown:
        raise KeyError(f"the mutation engine has no operator for {unknown} (it has {list(mutate.FACTORS)})")
    rng = random.Random(seed)
    order = list(factors)
    rng.shuffle(order)
    table = _factor_table()
    tried: list[str] = []
    for factor in order:
        verified = [
            (text, what)
            for text, what in mutate.mutations(code, factor, rng)
            if touched_factors(code, text, table) == [factor]
        ]
        if verified:
            text, what = rng.choice(verified)
            return Child(text, factor, what, tuple(tried))
        tried.append(factor)
    return None
