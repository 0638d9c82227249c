"""The parent policies over an archive: deterministic under a seed, never a parent whose prompt does not
fit, tournaments favour the accurate, MAP-Elites spreads over its cells; the ledger keeps entries once."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from archloop.v1 import controller_pb2
from services.controller.archive import (
    ArchiveEntry,
    cell_name,
    cell_of,
    choose_parent,
    choose_parents,
    depth,
    occupied_cells,
)
from services.controller.ledger import Ledger

TOURNAMENT, MAP_ELITES, FIXED, AGING = (
    controller_pb2.PARENT_POLICY_TOURNAMENT,
    controller_pb2.PARENT_POLICY_MAP_ELITES,
    controller_pb2.PARENT_POLICY_FIXED,
    controller_pb2.PARENT_POLICY_AGING,
)


def _entry(entry_id: str, accuracy: float, params=50_000, layers=4, factor="", fits=True) -> ArchiveEntry:
    cycle = 0 if entry_id == "baseline" else 1
    return ArchiveEntry(entry_id, cycle, f"# {entry_id}\n", accuracy, params, layers, factor, fits)


ENTRIES = [
    _entry("baseline", 0.0, params=20_000),
    _entry("e-c1-0000", 0.90),
    _entry("e-c1-0001", 0.45, params=400_000, layers=12, factor="width"),
    _entry("e-c1-0002", 0.60),  # same cell as 0000, weaker: never an elite
    _entry("e-c1-0003", 0.99, fits=False),  # the best, but its prompt does not fit
]


@pytest.mark.parametrize("policy", [TOURNAMENT, MAP_ELITES, FIXED, AGING])
def test_policies_are_deterministic_under_a_seed_and_skip_what_does_not_fit(policy: int) -> None:
    first = choose_parents(policy, ENTRIES, 7, 2, range(40))
    assert first == choose_parents(policy, ENTRIES, 7, 2, range(40))
    assert first != choose_parents(policy, ENTRIES, 8, 2, range(40)) or policy == FIXED
    assert all(p.fits for p in first)
    # a resumed cycle that still owes candidates 30..39 picks what a whole run picks for them
    assert choose_parents(policy, ENTRIES, 7, 2, range(30, 40)) == first[30:]


def test_fixed_is_the_baseline_and_tournaments_favour_the_accurate() -> None:
    assert {p.entry_id for p in choose_parents(FIXED, ENTRIES, 1, 1, range(20))} == {"baseline"}
    won = Counter(
        p.entry_id for p in choose_parents(TOURNAMENT, ENTRIES, 1, 1, range(400), tournament_size=3)
    )
    assert won["e-c1-0000"] > won["e-c1-0002"] > won["baseline"] and "e-c1-0003" not in won
    # size 1 is a uniform draw over the entries that fit
    uniform = Counter(
        p.entry_id for p in choose_parents(TOURNAMENT, ENTRIES, 1, 1, range(400), tournament_size=1)
    )
    assert set(uniform) == {"baseline", "e-c1-0000", "e-c1-0001", "e-c1-0002"}


def test_aging_draws_tournaments_among_the_youngest_only() -> None:
    """Aging evolution: the population is the population_size youngest entries that fit (archive
    order); the most accurate program ages out once younger ones replace it."""
    won = Counter(
        p.entry_id
        for p in choose_parents(AGING, ENTRIES, 1, 1, range(400), tournament_size=2, population_size=2)
    )
    # the youngest two that fit: 0001 (0.45) and 0002 (0.60); 0000 (0.90) has aged out
    assert set(won) == {"e-c1-0001", "e-c1-0002"} and won["e-c1-0002"] > won["e-c1-0001"]
    everyone = choose_parents(AGING, ENTRIES, 1, 1, range(400), tournament_size=3, population_size=16)
    assert Counter(p.entry_id for p in everyone) == Counter(
        p.entry_id for p in choose_parents(TOURNAMENT, ENTRIES, 1, 1, range(400), tournament_size=3)
    )  # a population as large as the archive is the plain tournament


def test_map_elites_draws_cells_uniformly_and_takes_each_cells_elite() -> None:
    cells = occupied_cells([e for e in ENTRIES if e.fits])
    assert sorted(cells.values()) == [1, 1, 2]  # baseline's cell, the wide deep one, two in one
    picked = Counter(p.entry_id for p in choose_parents(MAP_ELITES, ENTRIES, 3, 1, range(600)))
    assert set(picked) == {"baseline", "e-c1-0000", "e-c1-0001"}  # 0002 is not its cell's elite
    assert min(picked.values()) > 150  # about 200 each: a cell, not an entry, is the unit of choice


def test_nothing_fits_means_the_baseline_and_depth_counts_layers() -> None:
    only = [_entry("baseline", 0.0, fits=False), _entry("x", 0.9, fits=False)]
    assert choose_parent(TOURNAMENT, only, "s").entry_id == "baseline"
    code = (
        "import torch.nn as nn\nl = [nn.Conv2d(3, 8, 3), nn.ReLU(), nn.LazyConv2d(8, 3), nn.Linear(8, 10)]\n"
    )
    assert depth(code) == 3 and depth("def (") == 0


def test_the_ledger_enters_each_program_once_and_reads_the_archive_as_a_cycle_began(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    assert ledger.add_to_archive("e", ENTRIES[:3]) == 3
    assert ledger.add_to_archive("e", ENTRIES[:4]) == 1  # the three already there are kept as they were
    ledger.close()
    reopened = Ledger(tmp_path / "ledger.sqlite3")
    assert reopened.archive("e") == ENTRIES[:4] and reopened.archive("other") == []
    assert [e.entry_id for e in reopened.archive("e", before_cycle=1)] == ["baseline"]


def test_a_cycles_diversity_figures(tmp_path: Path) -> None:
    from archloop.v1 import novelty_pb2
    from services.controller.report import diversity
    from services.controller.selection import Decision, Verdict
    from services.controller.tests.seed import add_evaluated
    from tests.programs import program

    ledger = Ledger(tmp_path / "ledger.sqlite3")
    same = program(1)
    codes = [same, same, program(2), program(3)]
    for i, (code, j_gen) in enumerate(zip(codes, (0.0, 1.0, 0.2, 0.3), strict=True)):
        candidate_id = add_evaluated(ledger, "e", 1, i, code, 0.5)
        match = novelty_pb2.CollectionMatch(max_jaccard=j_gen)
        ledger.record_novelty(candidate_id, match, match)
        ledger.record_topology(candidate_id, f"wiring-of-{codes.index(code)}", "")
        ledger.record_decision(candidate_id, Decision(Verdict.ADMITTED if i < 3 else Verdict.REJECTED, "", 0))
    figures = diversity(ledger.candidates("e", 1))
    assert figures["admitted_mean_j_gen"] == pytest.approx(0.4)  # (0 + 1 + 0.2) / 3: the rejected one not
    # four valid, two of them the same program: three wiring hashes
    assert figures["valid_wiring_share"] == 0.75
    assert 1 <= figures["admitted_cells"] <= 3
    # the admitted three: programs 1, 1 and 2; each cell's share of them, in the report's own names
    cells = [cell_of(c, 0, "") for c in codes[:3]]
    expected = {cell_name(cell): cells.count(cell) / 3 for cell in set(cells)}
    shares = dict(part.split(":") for part in figures["admitted_cell_shares"].split())
    assert {name: float(share) for name, share in shares.items()} == pytest.approx(expected, abs=0.005)
    assert len(shares) == figures["admitted_cells"]
