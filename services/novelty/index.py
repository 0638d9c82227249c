"""NoveltyIndex: all collections, their storage and the rules for checking and admitting code.

Concurrency: each collection has a lock. Fingerprints are computed outside any lock; a check holds
the locks of the collections it reads; check-and-admit holds the locks of every collection it
reads and the one it writes (taken in name order, so two calls never deadlock) from the check
through the durable write to the in-memory insert. Hence two concurrent near-duplicates can never
both be admitted. Storage is written first and the index second, so a failed write leaves no trace.

This module imports neither grpc nor nats; errors are archloop.errors exceptions.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from archloop.errors import AlreadyExists, InvalidArgument, NotFound
from services.novelty.collection import (
    EXACT_MARGIN,
    ChannelIndex,
    ChannelMatch,
    CollectionConfig,
    CollectionIndex,
    validate_collection_name,
)
from services.novelty.fingerprint import (
    Fingerprint,
    Lexer,
    exact_jaccard,
    fingerprint_source,
    fingerprint_tokens,
)
from services.novelty.store import EntryStore, StoredEntry

MAX_CODE_BYTES = 256 * 1024
MAX_ENTRY_ID_CHARS = 256


@dataclass
class Submission:
    """Code offered for checking or admission, validated."""

    code: str
    entry_id: str = ""
    structural_tokens: list[str] | None = None
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def code_sha256(self) -> str:
        return hashlib.sha256(self.code.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass
class CollectionMatch:
    collection: str
    text: ChannelMatch
    structure: ChannelMatch
    nearest_exact_jaccard: float | None = None

    @property
    def near_duplicate(self) -> bool:
        """Text novelty is the decision rule; the structural channel is reported beside it."""
        return self.text.near_duplicate


@dataclass
class CheckResult:
    lexer: Lexer
    token_count: int
    shingle_count: int
    matches: list[CollectionMatch]


@dataclass
class AdmitResult:
    admitted: bool
    created: bool
    lexer: Lexer
    matches: list[CollectionMatch] = field(default_factory=list)
    reason: str = ""


@dataclass
class ImportSummary:
    received: int = 0
    created: int = 0
    unchanged: int = 0
    skipped_near_duplicates: int = 0


def validate_submission(sub: Submission, prefix: str = "", max_code_bytes: int = MAX_CODE_BYTES) -> None:
    if not sub.code.strip():
        raise InvalidArgument(prefix + "code", "must not be empty")
    size = len(sub.code.encode("utf-8", "surrogatepass"))
    if size > max_code_bytes:
        raise InvalidArgument(prefix + "code", f"is {size} bytes; the limit is {max_code_bytes}")


def validate_entry_id(entry_id: str, field_name: str = "entry_id") -> None:
    if not entry_id:
        raise InvalidArgument(field_name, "must not be empty")
    if len(entry_id) > MAX_ENTRY_ID_CHARS:
        raise InvalidArgument(field_name, f"is {len(entry_id)} characters; the limit is {MAX_ENTRY_ID_CHARS}")


class _Fingerprints:
    """Fingerprints of one submission, computed once per distinct (k, permutations, seed)."""

    def __init__(self, sub: Submission) -> None:
        self.sub = sub
        self._text: dict[tuple[int, int, int], Fingerprint] = {}
        self._structure: dict[tuple[int, int, int], Fingerprint] = {}

    def text(self, config: CollectionConfig) -> Fingerprint:
        key = (config.shingle_size, config.num_permutations, config.minhash_seed)
        if key not in self._text:
            self._text[key] = fingerprint_source(self.sub.code, *key)
        return self._text[key]

    def structure(self, config: CollectionConfig) -> Fingerprint | None:
        if not self.sub.structural_tokens:
            return None
        key = (config.structural_shingle_size, config.num_permutations, config.minhash_seed)
        if key not in self._structure:
            self._structure[key] = fingerprint_tokens(self.sub.structural_tokens, Lexer.PYTHON, *key)
        return self._structure[key]


class NoveltyIndex:
    def __init__(self, store: EntryStore, max_code_bytes: int = MAX_CODE_BYTES) -> None:
        self.store = store
        self.max_code_bytes = max_code_bytes
        self._collections: dict[str, CollectionIndex] = {}
        self._registry_lock = threading.Lock()
        self.rebuild_duration_seconds = 0.0

    # -- collections -------------------------------------------------------------------------

    def load(self) -> float:
        """Rebuild every collection from storage; return the seconds it took."""
        started = time.perf_counter()
        for name, settings, created in self.store.collections():
            collection = CollectionIndex(name, CollectionConfig(**settings), created)
            for entry_id, sha, signature, structural in self.store.iter_signatures(name):
                collection.add(entry_id, sha, signature, structural)
            self._collections[name] = collection
        self.rebuild_duration_seconds = time.perf_counter() - started
        return self.rebuild_duration_seconds

    def create_collection(
        self, name: str, config: CollectionConfig, exist_ok: bool = False
    ) -> tuple[CollectionIndex, bool]:
        validate_collection_name(name)
        config.validate()
        with self._registry_lock:
            existing = self._collections.get(name)
            if existing is not None:
                if exist_ok and existing.config == config:
                    return existing, False
                detail = "with other settings" if exist_ok else "already"
                raise AlreadyExists(f"collection {name!r} exists {detail}")
            created = int(time.time() * 1000)
            self.store.create_collection(name, config.as_dict(), created)
            collection = CollectionIndex(name, config, created)
            self._collections[name] = collection
            return collection, True

    def collection(self, name: str, field_name: str = "collection") -> CollectionIndex:
        if not name:
            raise InvalidArgument(field_name, "must name a collection")
        try:
            return self._collections[name]
        except KeyError:
            raise NotFound(f"{field_name}: collection {name!r} does not exist") from None

    def collections(self) -> list[CollectionIndex]:
        return sorted(self._collections.values(), key=lambda c: c.name)

    def drop_collection(self, name: str) -> int:
        with self._registry_lock:
            collection = self.collection(name, "name")
            with collection.lock:
                removed = self.store.drop_collection(name)
                del self._collections[name]
        return removed

    # -- checking ----------------------------------------------------------------------------

    def _exact(self, collection: CollectionIndex, entry_id: str, shingles: np.ndarray) -> float | None:
        stored = self.store.shingles(collection.name, entry_id)
        return None if stored is None else exact_jaccard(shingles, stored)

    def _text_match(
        self, collection: CollectionIndex, text_print: Fingerprint, among: frozenset[str] | None = None
    ) -> tuple[ChannelMatch, float | None]:
        """The text decision and the exact Jaccard of the nearest entry (when shingles are kept)."""
        config = collection.config
        floor = config.near_duplicate_threshold - EXACT_MARGIN if config.verification == "exact" else 1.0
        found, retrieved = collection.text.candidates(text_print.signature, floor, among)
        if not found:
            return ChannelMatch(), None
        best_id, best = found[0]
        match = ChannelMatch(best, best_id, best > config.near_duplicate_threshold, retrieved)
        exact_best = self._exact(collection, best_id, text_print.shingles) if config.keeps_shingles else None
        if config.verification != "exact":
            return match, exact_best
        tau = config.near_duplicate_threshold
        match.near_duplicate = best > tau + EXACT_MARGIN
        for entry_id, estimate in found:
            if match.near_duplicate or estimate < tau - EXACT_MARGIN:
                break
            exact = (
                exact_best if entry_id == best_id else self._exact(collection, entry_id, text_print.shingles)
            )
            if exact is not None and exact > tau:
                match.near_duplicate = True
                match.nearest_entry_id, match.max_jaccard = entry_id, estimate
                exact_best = exact
        return match, exact_best

    def _match(
        self, collection: CollectionIndex, prints: _Fingerprints, among: frozenset[str] | None = None
    ) -> CollectionMatch:
        text, exact = self._text_match(collection, prints.text(collection.config), among)
        structure_print = prints.structure(collection.config)
        structure = (
            collection.structure.nearest(structure_print.signature, among)
            if structure_print
            else ChannelMatch()
        )
        return CollectionMatch(collection.name, text, structure, exact)

    def _resolve(self, names: Sequence[str], field_name: str) -> list[CollectionIndex]:
        if not names:
            raise InvalidArgument(field_name, "must name at least one collection")
        unique = list(dict.fromkeys(names))
        return [self.collection(name, field_name) for name in unique]

    @staticmethod
    @contextlib.contextmanager
    def _locked(collections: Iterable[CollectionIndex]) -> Iterator[None]:
        with contextlib.ExitStack() as stack:
            for collection in sorted(collections, key=lambda c: c.name):
                stack.enter_context(collection.lock)
            yield

    def check(
        self,
        sub: Submission,
        collection_names: Sequence[str],
        wait: bool = True,
        among: frozenset[str] | None = None,
    ) -> CheckResult | None:
        """The submission against each collection (only its entries in `among`, when given). With
        wait=False, None instead of waiting for a collection that a write holds (the caller then checks
        from a thread that may wait)."""
        validate_submission(sub, max_code_bytes=self.max_code_bytes)
        collections = self._resolve(collection_names, "collections")
        prints = _Fingerprints(sub)
        first = prints.text(collections[0].config)
        for collection in collections:
            prints.text(collection.config)  # fingerprint outside the locks
            prints.structure(collection.config)
        matches = []
        for collection in collections:
            if not collection.lock.acquire(blocking=wait):
                return None
            try:
                matches.append(self._match(collection, prints, among))
            finally:
                collection.lock.release()
        return CheckResult(first.lexer, first.token_count, int(first.shingles.size), matches)

    # -- admitting ---------------------------------------------------------------------------

    def _stored_entry(
        self, collection: CollectionIndex, sub: Submission, prints: _Fingerprints
    ) -> StoredEntry:
        text_print = prints.text(collection.config)
        structure_print = prints.structure(collection.config)
        return StoredEntry(
            collection=collection.name,
            entry_id=sub.entry_id,
            code=sub.code,
            code_sha256=sub.code_sha256,
            lexer=text_print.lexer.value,
            signature=text_print.signature,
            shingles=text_print.shingles if collection.config.keeps_shingles else None,
            structural_tokens=sub.structural_tokens,
            structural_signature=None if structure_print is None else structure_print.signature,
            labels=sub.labels,
            admitted_unix_ms=int(time.time() * 1000),
        )

    @staticmethod
    def _existing(collection: CollectionIndex, sub: Submission) -> bool:
        """True when the id is stored with the same code; AlreadyExists when with other code."""
        sha = collection.code_sha256.get(sub.entry_id)
        if sha is None:
            return False
        if sha != sub.code_sha256:
            raise AlreadyExists(
                f"entry {sub.entry_id!r} in collection {collection.name!r} exists with different code"
            )
        return True

    def _insert(self, collection: CollectionIndex, entries: list[StoredEntry]) -> None:
        self.store.insert_entries(entries)  # durable first: a failure leaves memory untouched
        for e in entries:
            collection.add(e.entry_id, e.code_sha256, e.signature, e.structural_signature)

    def admit(self, collection_name: str, sub: Submission) -> AdmitResult:
        validate_submission(sub, max_code_bytes=self.max_code_bytes)
        validate_entry_id(sub.entry_id)
        collection = self.collection(collection_name)
        prints = _Fingerprints(sub)
        entry = self._stored_entry(collection, sub, prints)
        with collection.lock:
            if self._existing(collection, sub):
                return AdmitResult(admitted=True, created=False, lexer=prints.text(collection.config).lexer)
            self._insert(collection, [entry])
        return AdmitResult(admitted=True, created=True, lexer=prints.text(collection.config).lexer)

    def check_and_admit(
        self, collection_name: str, sub: Submission, check_names: Sequence[str]
    ) -> AdmitResult:
        """Admit `sub` into the collection unless it is a near-duplicate of it or of any check collection."""
        validate_submission(sub, "entry.", self.max_code_bytes)
        validate_entry_id(sub.entry_id, "entry.entry_id")
        target = self.collection(collection_name, "entry.collection")
        others = (
            [c for c in self._resolve(check_names, "check_collections") if c.name != target.name]
            if check_names
            else []
        )
        involved = [target, *others]
        prints = _Fingerprints(sub)
        entry = self._stored_entry(target, sub, prints)
        for collection in others:
            prints.text(collection.config)
            prints.structure(collection.config)
        lexer = prints.text(target.config).lexer
        with self._locked(involved):
            if self._existing(target, sub):
                return AdmitResult(True, False, lexer, reason="already admitted with the same code")
            matches = [self._match(collection, prints) for collection in involved]
            duplicates = [m for m in matches if m.near_duplicate]
            if duplicates:
                worst = max(duplicates, key=lambda m: m.text.max_jaccard)
                reason = (
                    f"near-duplicate of {worst.collection}/{worst.text.nearest_entry_id} "
                    f"(estimated J={worst.text.max_jaccard:.3f})"
                )
                return AdmitResult(False, False, lexer, matches, reason)
            self._insert(target, [entry])
        return AdmitResult(True, True, lexer, matches)

    def import_entries(
        self,
        collection_name: str,
        subs: Iterable[Submission],
        skip_near_duplicates: bool,
        batch_size: int = 256,
    ) -> ImportSummary:
        """Bulk admit; one transaction per batch. Ids already stored with the same code are unchanged."""
        collection = self.collection(collection_name, "entry.collection")
        summary = ImportSummary()
        pending: list[StoredEntry] = []
        pending_ids: set[str] = set()
        pending_index = ChannelIndex(collection.config)  # near-duplicates within the unflushed batch

        def flush() -> None:
            nonlocal pending_index
            if pending:
                with collection.lock:
                    self._insert(collection, pending)
                summary.created += len(pending)
                pending.clear()
                pending_ids.clear()
                pending_index = ChannelIndex(collection.config)

        for sub in subs:
            summary.received += 1
            validate_submission(sub, "entry.", self.max_code_bytes)
            validate_entry_id(sub.entry_id, "entry.entry_id")
            if sub.entry_id in pending_ids:
                flush()
            if self._existing(collection, sub):
                summary.unchanged += 1
                continue
            prints = _Fingerprints(sub)
            entry = self._stored_entry(collection, sub, prints)
            if skip_near_duplicates:
                with collection.lock:
                    stored_match = self._match(collection, prints)
                # the unflushed batch is checked by estimate only: it is a bulk-import convenience
                if stored_match.near_duplicate or pending_index.nearest(entry.signature).near_duplicate:
                    summary.skipped_near_duplicates += 1
                    continue
                pending_index.add(entry.entry_id, entry.signature)
            pending.append(entry)
            pending_ids.add(sub.entry_id)
            if len(pending) >= batch_size:
                flush()
        flush()
        return summary

    # -- entries -----------------------------------------------------------------------------

    def get(self, collection_name: str, entry_id: str) -> StoredEntry:
        collection = self.collection(collection_name)
        validate_entry_id(entry_id)
        entry = self.store.get_entry(collection.name, entry_id)
        if entry is None:
            raise NotFound(f"entry {entry_id!r} is not in collection {collection_name!r}")
        return entry

    def remove(self, collection_name: str, entry_id: str) -> None:
        collection = self.collection(collection_name)
        validate_entry_id(entry_id)
        with collection.lock:
            if not self.store.delete_entry(collection.name, entry_id):
                raise NotFound(f"entry {entry_id!r} is not in collection {collection_name!r}")
            collection.remove(entry_id)
