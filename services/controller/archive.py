"""The experiment's archive of parents and the policies that pick what each delta / factor / engine candidate
edits.

The archive holds the baseline (entered before the first cycle) and every admitted candidate (entered
when its cycle's selection ends), each with its accuracy, parameter count, depth, the factor its edit
changed and whether its edit prompt fits the generator's context. It is a ledger table
(services.controller.ledger), so a restarted controller has exactly the archive it had.

Policies (ExperimentConfig.generation.parent_policy), each a pure function of the archive as the cycle
began and a seed per candidate (`<experiment seed>:<cycle>:<index>`), so a resumed cycle picks the same
parents for the candidates it still has to generate:
    fixed        the baseline, always (the behaviour before the archive existed)
    tournament   `tournament_size` entries drawn at random, the most accurate wins (ties: the earlier)
    map_elites   MAP-Elites [Mouret & Clune 2015]: entries fall into cells by (parameter-count band,
                 depth band, factor changed); a cell is drawn uniformly among the occupied ones and its
                 most accurate entry (its elite) is the parent, so a cell with one weak program is
                 explored as often as the crowded best one
    aging        aging (regularized) evolution [Real et al. 2019]: the population is the
                 `population_size` youngest entries (archive order: the order they were admitted), a
                 tournament of `tournament_size` among them; an older entry has left the population,
                 however accurate (it stays in the archive and its reports)
Entries whose prompt does not fit are never drawn; when none fits, the baseline is the parent.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from archloop import topology
from archloop.v1 import controller_pb2

BASELINE_ID = "baseline"
# parameter-count bands (upper bounds) and depth bands (layer counts) of the MAP-Elites grid
PARAMETER_BANDS = (25_000, 100_000, 250_000, 500_000)
DEPTH_BANDS = (3, 6, 10)
_LAYERS = frozenset({"Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d", "Linear"})


@dataclass(frozen=True)
class ArchiveEntry:
    entry_id: str  # a candidate id, or "baseline"
    cycle: int  # the cycle that admitted it (0: the baseline)
    code: str
    accuracy: float
    param_count: int
    depth: int
    factor: str  # the factor its edit changed ("" for the baseline and full-mode programs)
    fits: bool  # its delta / factor prompt fits the generator's context

    @property
    def cell(self) -> tuple[int, int, str]:
        return _cell(self.param_count, self.depth, self.factor)


def _cell(param_count: int, layers: int, factor: str) -> tuple[int, int, str]:
    return (_band(param_count, PARAMETER_BANDS), _band(layers, DEPTH_BANDS), factor)


def cell_of(code: str, param_count: int, factor: str) -> tuple[int, int, str]:
    """The MAP-Elites cell of a program: parameter band × depth band × the factor its edit changed."""
    return _cell(param_count, depth(code), factor)


def cell_name(cell: tuple[int, int, str]) -> str:
    """A cell as reports print it: `p1-d2-activation` (band indices; `-` for no factor)."""
    return f"p{cell[0]}-d{cell[1]}-{cell[2] or '-'}"


def _band(value: int, bounds: tuple[int, ...]) -> int:
    return next((i for i, bound in enumerate(bounds) if value <= bound), len(bounds))


def depth(code: str) -> int:
    """How many conv / linear layers the program constructs (archloop.topology's layer sequence, a
    shape-inferring layer named as its eager twin; 0 when it does not parse)."""
    return sum(name in _LAYERS for name in topology.layer_sequence(code))


def _better(entry: ArchiveEntry) -> tuple[float, int]:
    """Sort key of the most accurate (NaN-safe; the earlier entry wins a tie)."""
    accuracy = entry.accuracy if math.isfinite(entry.accuracy) else -1.0
    return (accuracy, -entry.cycle)


def choose_parent(
    policy: int, entries: list[ArchiveEntry], seed: str, tournament_size: int = 3, population_size: int = 16
) -> ArchiveEntry:
    """The parent of one candidate; `entries` in archive order (the baseline first), `seed` its own."""
    baseline = next(e for e in entries if e.entry_id == BASELINE_ID)
    usable = [e for e in entries if e.fits]
    if policy in (controller_pb2.PARENT_POLICY_FIXED, controller_pb2.PARENT_POLICY_UNSPECIFIED) or not usable:
        return baseline
    rng = random.Random(seed)
    if policy == controller_pb2.PARENT_POLICY_TOURNAMENT:
        drawn = [rng.choice(usable) for _ in range(tournament_size)]
        return max(drawn, key=_better)
    if policy == controller_pb2.PARENT_POLICY_AGING:
        population = usable[-population_size:]
        drawn = [rng.choice(population) for _ in range(tournament_size)]
        return max(drawn, key=_better)
    if policy == controller_pb2.PARENT_POLICY_MAP_ELITES:
        cells: dict[tuple[int, int, str], ArchiveEntry] = {}
        for entry in usable:
            elite = cells.get(entry.cell)
            if elite is None or _better(entry) > _better(elite):
                cells[entry.cell] = entry
        return cells[rng.choice(sorted(cells))]
    raise ValueError(f"unknown parent policy {policy}")


def choose_parents(
    policy: int,
    entries: list[ArchiveEntry],
    experiment_seed: int,
    cycle: int,
    indices: range,
    tournament_size: int = 3,
    population_size: int = 16,
) -> list[ArchiveEntry]:
    """The parents of candidates `indices` of `cycle` (each seeded by its own index)."""
    return [
        choose_parent(policy, entries, f"{experiment_seed}:{cycle}:{index}", tournament_size, population_size)
        for index in indices
    ]


def occupied_cells(entries: list[ArchiveEntry]) -> dict[tuple[int, int, str], int]:
    """How many entries each MAP-Elites cell holds."""
    counts: dict[tuple[int, int, str], int] = {}
    for entry in entries:
        counts[entry.cell] = counts.get(entry.cell, 0) + 1
    return counts
