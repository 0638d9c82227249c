"""The wirings a run already knows before a cycle's candidates are decided (docs/method.md#architecture-
novelty): every corpus program's (`<corpus>/architecture.jsonl`, read once per run) and every candidate
admitted in an earlier cycle's. Neither changes while a cycle is evaluated, so the novelty pre-check
and the filter read the same answer; the filter adds the cycle's earlier valid candidates itself.
"""

from __future__ import annotations

from pathlib import Path

from archloop import corpus
from services.controller.ledger import Ledger


class KnownWiring:
    def __init__(self, ledger: Ledger, corpus_dir: Path, experiment_id: str) -> None:
        self.ledger, self.corpus_dir, self.experiment_id = ledger, corpus_dir, experiment_id
        self._corpus: dict[str, str] | None = None
        self._before: tuple[int, dict[str, str]] | None = None  # the last cycle asked, and its answer

    def corpus(self) -> dict[str, str]:
        """{wiring hash: the first corpus program with it, by name}."""
        if self._corpus is None:
            found: dict[str, str] = {}
            for model, record in sorted(corpus.read_architectures(self.corpus_dir).items()):
                found.setdefault(record["wiring_hash"], model)
            self._corpus = found
        return self._corpus

    def before(self, cycle: int) -> dict[str, str]:
        """{wiring hash: what has it}: the corpus program, else the first candidate admitted before
        `cycle` (asked of the ledger once per cycle: it does not change while the cycle is decided)."""
        if self._before is None or self._before[0] != cycle:
            admitted = self.ledger.admitted_wiring(self.experiment_id, cycle)
            self._before = (cycle, {**admitted, **self.corpus()})
        return dict(self._before[1])  # a copy: the filter adds the cycle's own to what it gets
