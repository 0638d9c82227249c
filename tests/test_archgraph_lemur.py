"""The wiring hash against the mutation engine's verified edits of LEMUR programs (a property test): an
edit of the width factor keeps the hash; an edit of the skip-connection factor changes it, unless the
term it adds or drops is not a second computed tensor (a sum of a tensor with itself, or with a tensor
that does not depend on the input), which is no skip connection.

Measured when written (100 programs that run at CIFAR shapes by the shipped forward table, seed 0, two
proposals per factor): width 14 of 14 verified edits keep it; skip connections 40 of 44 change it, and
the 4 that keep it add `out + self.relu(out)` where the ReLU is in place (it overwrote `out`: the sum is
2·relu(out)), `x + self.norm_act(x)` likewise, or drop a learned positional encoding that does not
depend on the input.
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter

import pytest

from archloop import forwardcheck, mutate, prompts
from archloop.factors import load_factors, touched_factors
from archloop.lemur import iter_model_sources, lemur_wheel
from archloop.rewrite import canonical

pytestmark = pytest.mark.slow  # a few hundred forward checks
TASK = prompts.TASKS["cifar-10"]
PROGRAMS = 100


def _programs() -> dict[str, str]:
    table = forwardcheck.load_table()
    runnable = []
    for name, code in iter_model_sources(lemur_wheel()):
        result = table.get(hashlib.sha256(code.encode()).hexdigest(), {}).get("cifar-10")
        if result is not None and result.ok:
            runnable.append((name, code))
    random.Random(0).shuffle(runnable)
    return {name: canonical(code) for name, code in runnable[:PROGRAMS]}


def test_width_edits_keep_the_wiring_hash_skip_edits_change_it_unless_no_second_tensor_is_added() -> None:
    factors = load_factors()
    programs = _programs()
    items, edits = [], {}
    for name, code in programs.items():
        items.append((f"{name}|parent", code, TASK.input_shape, TASK.num_classes))
        for factor in ("width", "skip_connections"):
            proposals = mutate.mutations(code, factor, random.Random(f"{name}:{factor}"))
            for index, (text, _what) in enumerate(proposals[:2]):
                key = f"{name}|{factor}|{index}"
                edits[key] = (name, factor, text)
                items.append((key, text, TASK.input_shape, TASK.num_classes))
    results = forwardcheck.check_many(items, structure=True, workers=2)

    counts: Counter[tuple[str, str]] = Counter()
    for key, (name, factor, text) in edits.items():
        parent, child = results[f"{name}|parent"], results[key]
        if not (parent.ok and child.ok) or touched_factors(programs[name], text, factors) != [factor]:
            continue  # not a verified edit
        same = parent.architecture["wiring_hash"] == child.architecture["wiring_hash"]
        counts[factor, "same" if same else "changed"] += 1
        if factor == "width":
            assert same, key
        elif same:  # no skip connection after all: the number of merge nodes did not change
            merges = [_merges(r.architecture["graph"]) for r in (parent, child)]
            assert merges[0] == merges[1], key
    assert counts["width", "same"] >= 10 and counts["width", "changed"] == 0, counts
    assert counts["skip_connections", "changed"] >= 30, counts


def _merges(graph_json: str) -> int:
    from archloop.archgraph import ArchGraph

    families = ArchGraph.from_json(graph_json).families()
    return families["add"] + families["cat"] + families["mul"]
