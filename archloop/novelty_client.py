"""A small synchronous Python client of the novelty service, for the CLI and for other tools.

    from archloop.novelty_client import NoveltyClient
    with NoveltyClient("127.0.0.1:50054") as novelty:
        novelty.create_collection("corpus", exist_ok=True, store_shingles=True)
        novelty.admit("corpus", "resnet-a", code)
        result = novelty.check(other_code, ["corpus"])
        print(result.matches[0].max_jaccard, result.matches[0].near_duplicate)

Every call carries a deadline. UNAVAILABLE is retried by the channel (admits are idempotent by id,
so a retried admit is harmless); other errors surface as grpc.RpcError with the service's message.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from archloop.clients import ChannelSecurity, sync_channel
from archloop.v1 import novelty_pb2, novelty_pb2_grpc


def _entry(
    collection: str,
    entry_id: str,
    code: str,
    labels: Mapping[str, str] | None = None,
    structural_tokens: Sequence[str] = (),
) -> novelty_pb2.AdmitEntryRequest:
    return novelty_pb2.AdmitEntryRequest(
        collection=collection,
        entry_id=entry_id,
        code=code,
        labels=dict(labels or {}),
        structural_tokens=list(structural_tokens),
    )


class NoveltyClient:
    def __init__(
        self, target: str, timeout_seconds: float = 30.0, *, tls_ca_file: str = "", token_file: str = ""
    ) -> None:
        """`tls_ca_file`: the CA of a TLS-serving service; `token_file`: its bearer token (both
        optional; see the novelty README's "Exposing it to other tools")."""
        self.target = target
        self.timeout_seconds = timeout_seconds
        self._channel = sync_channel(target, ChannelSecurity(tls_ca_file, token_file))
        self.stub = novelty_pb2_grpc.NoveltyServiceStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> NoveltyClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def create_collection(
        self, name: str, *, exist_ok: bool = False, **settings: Any
    ) -> novelty_pb2.Collection:
        """settings: any CollectionSettings field, e.g. near_duplicate_threshold=0.9, store_shingles=True."""
        request = novelty_pb2.CreateCollectionRequest(
            name=name, settings=novelty_pb2.CollectionSettings(**settings), exist_ok=exist_ok
        )
        return self.stub.CreateCollection(request, timeout=self.timeout_seconds).collection

    def list_collections(self) -> list[novelty_pb2.Collection]:
        return list(
            self.stub.ListCollections(
                novelty_pb2.ListCollectionsRequest(), timeout=self.timeout_seconds
            ).collections
        )

    def drop_collection(self, name: str) -> int:
        request = novelty_pb2.DropCollectionRequest(name=name)
        return self.stub.DropCollection(request, timeout=self.timeout_seconds).entries_removed

    def check(
        self, code: str, collections: Sequence[str], structural_tokens: Sequence[str] = ()
    ) -> novelty_pb2.CheckNoveltyResponse:
        request = novelty_pb2.CheckNoveltyRequest(
            code=code, collections=list(collections), structural_tokens=list(structural_tokens)
        )
        return self.stub.CheckNovelty(request, timeout=self.timeout_seconds)

    def admit(
        self,
        collection: str,
        entry_id: str,
        code: str,
        *,
        labels: Mapping[str, str] | None = None,
        structural_tokens: Sequence[str] = (),
    ) -> bool:
        """Store an entry; False when the same id with the same code was already there."""
        request = _entry(collection, entry_id, code, labels, structural_tokens)
        return self.stub.AdmitEntry(request, timeout=self.timeout_seconds).created

    def check_and_admit(
        self,
        collection: str,
        entry_id: str,
        code: str,
        check_collections: Sequence[str] = (),
        *,
        labels: Mapping[str, str] | None = None,
        structural_tokens: Sequence[str] = (),
    ) -> novelty_pb2.CheckAndAdmitResponse:
        entry = _entry(collection, entry_id, code, labels, structural_tokens)
        request = novelty_pb2.CheckAndAdmitRequest(entry=entry, check_collections=list(check_collections))
        return self.stub.CheckAndAdmit(request, timeout=self.timeout_seconds)

    def import_entries(
        self,
        collection: str,
        entries: Iterable[tuple[str, str]],
        *,
        skip_near_duplicates: bool = False,
        timeout_seconds: float = 3600.0,
    ) -> novelty_pb2.ImportEntriesResponse:
        """Stream (entry_id, code) pairs into a collection; one summary at the end."""

        def requests() -> Iterator[novelty_pb2.ImportEntriesRequest]:
            for entry_id, code in entries:
                yield novelty_pb2.ImportEntriesRequest(
                    entry=_entry(collection, entry_id, code), skip_near_duplicates=skip_near_duplicates
                )

        return self.stub.ImportEntries(requests(), timeout=timeout_seconds)

    def get(self, collection: str, entry_id: str) -> novelty_pb2.Entry:
        request = novelty_pb2.GetEntryRequest(collection=collection, entry_id=entry_id)
        return self.stub.GetEntry(request, timeout=self.timeout_seconds).entry

    def remove(self, collection: str, entry_id: str) -> None:
        request = novelty_pb2.RemoveEntryRequest(collection=collection, entry_id=entry_id)
        self.stub.RemoveEntry(request, timeout=self.timeout_seconds)

    def stats(self) -> novelty_pb2.GetStatsResponse:
        return self.stub.GetStats(novelty_pb2.GetStatsRequest(), timeout=self.timeout_seconds)
