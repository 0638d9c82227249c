"""One collection's in-memory index: a MinHashLSH per channel (code text, layer structure).

Retrieval is datasketch's MinHashLSH; every retrieved entry is then verified with the
MinHash-estimated Jaccard, and the source is a near-duplicate iff the best estimate exceeds the
collection's threshold τ (docs/method.md#novelty-filter). The LSH threshold of 0.85 with datasketch's default
false-positive/false-negative weights (0.5/0.5) picks 13 bands × 19 rows, which retrieves a pair at
J = 0.90 only 85 % of the time; the default weights here (0.01/0.99) pick 23 × 11, which retrieves
it 99.98 % of the time at the price of verifying more candidates (cheap: one vectorised compare).

The estimate itself is noisy: with 256 permutations its standard deviation at J = 0.9 is about
0.019, so a pair with exact J = 0.91 is called a near-duplicate only ~70 % of the time. With the
default verification ("exact"), estimates within EXACT_MARGIN of τ are settled by the exact Jaccard
of the stored shingle sets (done by the NoveltyIndex, which owns the storage); "estimated" is the
paper's rule.
"""

from __future__ import annotations

import re
import threading
from dataclasses import asdict, dataclass, field

import numpy as np
from datasketch import MinHashLSH

from archloop.errors import InvalidArgument
from services.novelty.fingerprint import as_minhash, estimated_jaccard

COLLECTION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
VERIFICATIONS = ("exact", "estimated")
EXACT_MARGIN = 0.1
"""Estimates in [τ - margin, τ + margin] are re-checked exactly: over 5 standard deviations at J = 0.9."""


@dataclass(frozen=True)
class CollectionConfig:
    shingle_size: int = 10
    num_permutations: int = 256
    lsh_threshold: float = 0.85
    near_duplicate_threshold: float = 0.90
    store_shingles: bool = False
    minhash_seed: int = 1
    lsh_false_positive_weight: float = 0.01
    lsh_false_negative_weight: float = 0.99
    structural_shingle_size: int = 1  # architecture tokens are a set (archloop.archgraph), not a text
    verification: str = "exact"

    @property
    def keeps_shingles(self) -> bool:
        return self.store_shingles or self.verification == "exact"

    def validate(self, prefix: str = "settings") -> None:
        """Raise InvalidArgument naming the first bad field."""
        if self.shingle_size < 1:
            raise InvalidArgument(f"{prefix}.shingle_size", f"{self.shingle_size} must be at least 1")
        if self.structural_shingle_size < 1:
            raise InvalidArgument(
                f"{prefix}.structural_shingle_size", f"{self.structural_shingle_size} must be at least 1"
            )
        if not 16 <= self.num_permutations <= 1024:
            raise InvalidArgument(
                f"{prefix}.num_permutations", f"{self.num_permutations} is outside [16, 1024]"
            )
        for name in ("lsh_threshold", "near_duplicate_threshold"):
            value = getattr(self, name)
            if not 0 < value <= 1:
                raise InvalidArgument(f"{prefix}.{name}", f"{value} is outside (0, 1]")
        for name in ("lsh_false_positive_weight", "lsh_false_negative_weight"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise InvalidArgument(f"{prefix}.{name}", f"{value} is outside [0, 1]")
        if self.verification not in VERIFICATIONS:
            raise InvalidArgument(
                f"{prefix}.verification", f"{self.verification!r} is not one of {VERIFICATIONS}"
            )
        if abs(self.lsh_false_positive_weight + self.lsh_false_negative_weight - 1) > 1e-6:
            raise InvalidArgument(f"{prefix}.lsh_false_positive_weight", "the two LSH weights must sum to 1")

    def as_dict(self) -> dict:
        return asdict(self)


def validate_collection_name(name: str, field_name: str = "name") -> None:
    if not COLLECTION_NAME.match(name):
        raise InvalidArgument(
            field_name,
            f"{name!r} must be 1-128 letters, digits, '.', '_', ':' or '-', starting with a letter or digit",
        )


@dataclass
class ChannelMatch:
    """The nearest entry of one channel: its id, estimated Jaccard, and the decision."""

    max_jaccard: float = 0.0
    nearest_entry_id: str = ""
    near_duplicate: bool = False
    candidates_verified: int = 0


class ChannelIndex:
    """MinHashLSH over one kind of signature, plus the signatures (one matrix row per entry).

    The LSH is keyed by matrix row, not entry id, so retrieved candidates index the signature matrix
    directly. Querying reads datasketch's band tables and unions the buckets with one C-level
    set.union: datasketch's own query adds keys one by one in Python, which took ~10 ms when a
    popular family of LEMUR variants filled the buckets with thousands of entries (same buckets, same
    answer: a test compares the two).
    """

    def __init__(self, config: CollectionConfig) -> None:
        self.config = config
        self.lsh = MinHashLSH(
            threshold=config.lsh_threshold,
            num_perm=config.num_permutations,
            weights=(config.lsh_false_positive_weight, config.lsh_false_negative_weight),
        )
        self._rows: dict[str, int] = {}
        self._ids: list[str | None] = []  # row → entry id (None: free)
        self._free: list[int] = []
        self._matrix = np.zeros((64, config.num_permutations), dtype=np.uint32)

    def _minhash(self, signature: np.ndarray):
        return as_minhash(signature, self.config.num_permutations, self.config.minhash_seed)

    def add(self, entry_id: str, signature: np.ndarray) -> None:
        if self._free:
            row = self._free.pop()
            self._ids[row] = entry_id
        else:
            row = len(self._ids)
            self._ids.append(entry_id)
            if row == len(self._matrix):
                self._matrix = np.concatenate([self._matrix, np.zeros_like(self._matrix)])
        self.lsh.insert(row, self._minhash(signature), check_duplication=False)
        self._matrix[row] = signature
        self._rows[entry_id] = row

    def remove(self, entry_id: str) -> None:
        row = self._rows.pop(entry_id, None)
        if row is not None:
            self.lsh.remove(row)
            self._ids[row] = None
            self._free.append(row)

    def retrieve(self, signature: np.ndarray) -> set[int]:
        """Rows sharing at least one LSH band with the signature (what MinHashLSH.query returns).

        A band's key is datasketch's `_byteswap` of its slice of the signature (uint32 for the
        affine32 scheme): the byte-swapped signature is made once and sliced per band.
        """
        swapped = np.asarray(signature, dtype=np.uint32).byteswap().tobytes()
        lsh = self.lsh
        buckets = [
            table.get(swapped[4 * start : 4 * end])
            for (start, end), table in zip(lsh.hashranges, lsh.hashtables, strict=True)
        ]
        return set().union(*buckets)

    def candidates(
        self, signature: np.ndarray, floor: float = 0.0, among: frozenset[str] | None = None
    ) -> tuple[list[tuple[str, float]], int]:
        """LSH-retrieved entries whose estimated Jaccard is at least `floor`, most similar first
        (ties by id, so the answer never depends on LSH bucket order), and how many were retrieved;
        with `among`, only those entries count (the others as if absent)."""
        if not self._rows:
            return [], 0
        found = self.retrieve(signature)
        if among is not None:
            found = {row for row in found if self._ids[row] in among}
        if not found:
            return [], 0
        rows = np.fromiter(found, dtype=np.int64, count=len(found))
        similarities = estimated_jaccard(signature, self._matrix[rows])
        best = float(similarities.max())
        keep = np.flatnonzero(similarities >= min(floor, best))
        ranked = sorted(
            ((self._ids[rows[i]], float(similarities[i])) for i in keep), key=lambda pair: (-pair[1], pair[0])
        )
        return ranked, len(found)

    def nearest(self, signature: np.ndarray, among: frozenset[str] | None = None) -> ChannelMatch:
        """The best candidate decided by its estimate alone (the paper's rule)."""
        ranked, retrieved = self.candidates(signature, floor=1.0, among=among)
        if not ranked:
            return ChannelMatch()
        best_id, best = ranked[0]
        return ChannelMatch(best, best_id, best > self.config.near_duplicate_threshold, retrieved)

    def __len__(self) -> int:
        return len(self._rows)


@dataclass
class CollectionIndex:
    """A collection in memory: both channels, the code hash of every entry, and its lock."""

    name: str
    config: CollectionConfig
    created_unix_ms: int
    text: ChannelIndex = field(init=False)
    structure: ChannelIndex = field(init=False)
    code_sha256: dict[str, str] = field(default_factory=dict)
    lock: threading.RLock = field(default_factory=threading.RLock)

    def __post_init__(self) -> None:
        self.text = ChannelIndex(self.config)
        self.structure = ChannelIndex(self.config)

    def add(
        self, entry_id: str, code_sha256: str, signature: np.ndarray, structural: np.ndarray | None
    ) -> None:
        self.text.add(entry_id, signature)
        if structural is not None:
            self.structure.add(entry_id, structural)
        self.code_sha256[entry_id] = code_sha256

    def remove(self, entry_id: str) -> None:
        self.text.remove(entry_id)
        self.structure.remove(entry_id)
        self.code_sha256.pop(entry_id, None)

    def __len__(self) -> int:
        return len(self.code_sha256)
