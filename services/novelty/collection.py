"""One collection's in-memory index: a MinHashLSH per channel (code text, layer structure).

Retrieval is datasketch's MinHashLSH; every retrieved entry is then verified with the
MinHash-estimated Jaccard, and the source is a near-duplicate iff the best estimate exceeds the
collection's threshold τ (BRIEF §4). The LSH threshold of 0.85 with datasketch's default
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
    structural_shingle_size: int = 3
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
    """MinHashLSH over one kind of signature, plus the signatures for verification."""

    def __init__(self, config: CollectionConfig) -> None:
        self.config = config
        self.lsh = MinHashLSH(
            threshold=config.lsh_threshold,
            num_perm=config.num_permutations,
            weights=(config.lsh_false_positive_weight, config.lsh_false_negative_weight),
        )
        self.signatures: dict[str, np.ndarray] = {}

    def _minhash(self, signature: np.ndarray):  # type: ignore[no-untyped-def]
        return as_minhash(signature, self.config.num_permutations, self.config.minhash_seed)

    def add(self, entry_id: str, signature: np.ndarray) -> None:
        self.lsh.insert(entry_id, self._minhash(signature), check_duplication=False)
        self.signatures[entry_id] = signature

    def remove(self, entry_id: str) -> None:
        if self.signatures.pop(entry_id, None) is not None:
            self.lsh.remove(entry_id)

    def candidates(self, signature: np.ndarray) -> list[tuple[str, float]]:
        """LSH-retrieved entries with their estimated Jaccard, most similar first."""
        if not self.signatures:
            return []
        found = self.lsh.query(self._minhash(signature))
        if not found:
            return []
        similarities = estimated_jaccard(signature, np.stack([self.signatures[c] for c in found]))
        order = np.argsort(-similarities, kind="stable")
        return [(found[i], float(similarities[i])) for i in order]

    def nearest(self, signature: np.ndarray) -> ChannelMatch:
        """The best candidate decided by its estimate alone (the paper's rule)."""
        found = self.candidates(signature)
        if not found:
            return ChannelMatch()
        best_id, best = found[0]
        return ChannelMatch(best, best_id, best > self.config.near_duplicate_threshold, len(found))

    def __len__(self) -> int:
        return len(self.signatures)


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
