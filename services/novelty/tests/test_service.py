"""The novelty service as a real process over loopback gRPC: behaviour, bad input, durability."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import sqlite3

import grpc
import pytest

from archloop.clients import aio_channel
from archloop.lemur import iter_model_sources, lemur_wheel
from archloop.novelty_client import NoveltyClient
from archloop.v1 import novelty_pb2, novelty_pb2_grpc
from services.novelty.fingerprint import exact_jaccard, fingerprint_source
from services.novelty.tests.variants import make_variant
from tools.testing import run_cli


@pytest.fixture(scope="module")
def models() -> list[tuple[str, str]]:
    rng = random.Random(3)
    sources = [(n, s) for n, s in iter_model_sources(lemur_wheel()) if 2000 <= len(s) <= 6000]
    return rng.sample(sources, 40)


@pytest.fixture
def novelty(start_service, tmp_path):
    proc = start_service(
        "novelty", "--db-path", str(tmp_path / "n.sqlite3"), "--sqlite-busy-timeout-ms", "300"
    )
    with NoveltyClient(proc.address) as client:
        yield proc, client


INVALID = grpc.StatusCode.INVALID_ARGUMENT
TAU = "near_duplicate_threshold"


def _code(err: pytest.ExceptionInfo) -> grpc.StatusCode:
    return err.value.code()


def test_check_admit_and_idempotency(novelty, models) -> None:
    _, client = novelty
    client.create_collection("corpus", store_shingles=True)
    (name_a, code_a), (_, code_b) = models[0], models[1]
    assert client.admit("corpus", name_a, code_a) is True
    assert client.admit("corpus", name_a, code_a) is False  # same id + same code: no-op
    with pytest.raises(grpc.RpcError) as err:
        client.admit("corpus", name_a, code_b)
    assert _code(err) == grpc.StatusCode.ALREADY_EXISTS

    same = client.check(code_a, ["corpus"]).matches[0]
    assert same.near_duplicate and same.nearest_entry_id == name_a and same.max_jaccard == 1.0
    assert same.nearest_exact_jaccard == 1.0
    variant = make_variant(code_a, random.Random(1), 1)[0]
    close = client.check(variant, ["corpus"])
    assert close.tokenizer == novelty_pb2.TOKENIZER_PYTHON and close.shingle_count > 100
    assert close.matches[0].near_duplicate
    other = client.check(code_b, ["corpus"]).matches[0]
    assert not other.near_duplicate

    entry = client.get("corpus", name_a)
    assert entry.code == code_a and len(entry.code_sha256) == 64
    stats = client.stats()
    assert stats.collections[0].collection.entry_count == 1
    assert (stats.collections[0].lsh_bands, stats.collections[0].lsh_rows) == (23, 11)
    client.remove("corpus", name_a)
    assert not client.check(code_a, ["corpus"]).matches[0].near_duplicate
    with pytest.raises(grpc.RpcError) as err:
        client.get("corpus", name_a)
    assert _code(err) == grpc.StatusCode.NOT_FOUND


def test_fallback_tokenizer_and_garbage(novelty) -> None:
    _, client = novelty
    client.create_collection("c")
    result = client.check("def broken(:\n  x = [1, 2\n\x00 ☃ \udcff"[:-1] + "é" * 10, ["c"])
    assert result.tokenizer == novelty_pb2.TOKENIZER_FALLBACK
    garbage = bytes(random.Random(0).randrange(256) for _ in range(4000)).decode("latin-1")
    assert client.admit("c", "garbage", garbage) is True
    assert client.check(garbage, ["c"]).matches[0].near_duplicate


def test_bad_input_gets_clear_errors(novelty) -> None:
    proc, client = novelty
    client.create_collection("c")
    cases = [
        (lambda: client.check("", ["c"]), grpc.StatusCode.INVALID_ARGUMENT, "code"),
        (lambda: client.check("x" * (256 * 1024 + 1), ["c"]), grpc.StatusCode.INVALID_ARGUMENT, "code"),
        (lambda: client.check("x = 1", ["nope"]), grpc.StatusCode.NOT_FOUND, "nope"),
        (lambda: client.check("x = 1", []), grpc.StatusCode.INVALID_ARGUMENT, "collections"),
        (lambda: client.admit("c", "", "x = 1"), grpc.StatusCode.INVALID_ARGUMENT, "entry_id"),
        (lambda: client.create_collection("t", near_duplicate_threshold=1.5), INVALID, TAU),
        (lambda: client.create_collection("t", near_duplicate_threshold=-0.2), INVALID, TAU),
        (lambda: client.create_collection("t", shingle_size=-1), INVALID, "shingle_size"),
        (lambda: client.create_collection("bad name!"), grpc.StatusCode.INVALID_ARGUMENT, "name"),
        (lambda: client.create_collection("c"), grpc.StatusCode.ALREADY_EXISTS, "c"),
        (lambda: client.drop_collection("nope"), grpc.StatusCode.NOT_FOUND, "nope"),
    ]  # fmt: skip
    for call, code, named in cases:
        with pytest.raises(grpc.RpcError) as err:
            call()
        assert _code(err) == code, err.value.details()
        assert named in err.value.details()
    # Bytes that are not a valid message (a string field holding invalid UTF-8).
    with grpc.insecure_channel(proc.address) as channel:
        raw = channel.unary_unary("/archloop.v1.NoveltyService/CheckNovelty")
        with pytest.raises(grpc.RpcError) as err:
            raw(b"\x0a\x03\xff\xfe\xfd\x12\x01c", timeout=5)
    assert _code(err) == grpc.StatusCode.INVALID_ARGUMENT
    assert client.stats().collections[0].collection.name == "c"  # still serving, nothing lost


def test_storage_failure_leaves_no_trace(novelty, tmp_path, models) -> None:
    _, client = novelty
    client.create_collection("c")
    blocker = sqlite3.connect(tmp_path / "n.sqlite3", isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(grpc.RpcError) as err:
            client.admit("c", "x", models[0][1])
        assert _code(err) == grpc.StatusCode.UNAVAILABLE
        assert "storage" in err.value.details()
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert not client.check(models[0][1], ["c"]).matches[0].near_duplicate
    with pytest.raises(grpc.RpcError) as err:
        client.get("c", "x")
    assert _code(err) == grpc.StatusCode.NOT_FOUND
    assert client.admit("c", "x", models[0][1]) is True  # works again once storage does


def test_batch_stream_import_and_structural_channel(novelty, models) -> None:
    _, client = novelty
    client.create_collection("corpus")
    entries = list(models[:20])
    entries.append(("copy-of-0", models[0][1] + "\n# trailing comment\n"))
    summary = client.import_entries("corpus", entries, skip_near_duplicates=True)
    assert (summary.received, summary.created, summary.skipped_near_duplicates) == (21, 20, 1)
    again = client.import_entries("corpus", entries[:5])
    assert (again.created, again.unchanged) == (0, 5)

    stub = client.stub
    batch = stub.BatchCheckNovelty(
        novelty_pb2.BatchCheckNoveltyRequest(
            checks=[novelty_pb2.CheckNoveltyRequest(code=c, collections=["corpus"]) for _, c in models[18:22]]
        ),
        timeout=10,
    )
    assert [r.matches[0].near_duplicate for r in batch.results] == [True, True, False, False]

    stream = stub.StreamCheckNovelty(
        iter(
            novelty_pb2.StreamCheckNoveltyRequest(
                check=novelty_pb2.CheckNoveltyRequest(code=c, collections=["corpus"]), request_id=n
            )
            for n, c in models[:3]
        ),
        timeout=10,
    )
    assert [(r.request_id, r.result.matches[0].nearest_entry_id) for r in stream] == [
        (n, n) for n, _ in models[:3]
    ]

    layers = [
        "Conv2d(3,16,3)",
        "BatchNorm2d(16)",
        "ReLU",
        "MaxPool2d(2)",
        "Conv2d(16,32,3)",
        "ReLU",
        "Linear(32,10)",
    ]
    client.admit("corpus", "layered", models[30][1], structural_tokens=layers)
    # Different code, same architecture: text novel, structure a near-duplicate.
    match = client.check(models[31][1], ["corpus"], structural_tokens=layers).matches[0]
    assert not match.near_duplicate
    assert match.structural_near_duplicate and match.structural_nearest_entry_id == "layered"
    assert client.stats().collections[0].structural_entry_count == 1


async def test_concurrent_check_and_admit_admits_one_per_group(novelty, models) -> None:
    proc, client = novelty
    client.create_collection("cycle", store_shingles=True)
    rng = random.Random(11)
    groups = []
    for group, (_, base) in enumerate(models[:8]):
        base_print = fingerprint_source(base, 10, 256, 1).shingles
        variants = [base]
        while len(variants) < 6:  # small edits only, so every pair in the group is a near-duplicate
            variant = make_variant(base, rng, 1)[0]
            if exact_jaccard(base_print, fingerprint_source(variant, 10, 256, 1).shingles) > 0.96:
                variants.append(variant)
        prints = [fingerprint_source(v, 10, 256, 1).shingles for v in variants]
        assert min(exact_jaccard(a, b) for a in prints for b in prints) > 0.90
        groups.append([(f"g{group}-{i}", v) for i, v in enumerate(variants)])
    calls = [(g, entry_id, code) for g, group in enumerate(groups) for entry_id, code in group]
    random.Random(5).shuffle(calls)

    channels = [aio_channel(proc.address) for _ in range(6)]
    stubs = [novelty_pb2_grpc.NoveltyServiceStub(c) for c in channels]

    async def one(i: int, group: int, entry_id: str, code: str) -> tuple[int, bool]:
        request = novelty_pb2.CheckAndAdmitRequest(
            entry=novelty_pb2.AdmitEntryRequest(collection="cycle", entry_id=entry_id, code=code)
        )
        response = await stubs[i % len(stubs)].CheckAndAdmit(request, timeout=30)
        return group, response.admitted

    results = await asyncio.gather(*(one(i, *call) for i, call in enumerate(calls)))
    for channel in channels:
        await channel.close()
    admitted = {g: sum(ok for group, ok in results if group == g) for g in range(len(groups))}
    assert admitted == dict.fromkeys(range(len(groups)), 1)
    assert client.stats().collections[0].collection.entry_count == len(groups)


def test_kill_9_then_restart_loses_nothing(start_service, tmp_path, models) -> None:
    db = str(tmp_path / "durable.sqlite3")
    proc = start_service("novelty", "--db-path", db)
    with NoveltyClient(proc.address) as client:
        client.create_collection("corpus", store_shingles=True)
        for name, code in models[:25]:
            client.admit("corpus", name, code)
        before = [client.check(code, ["corpus"]) for _, code in models[20:30]]
    proc.proc.send_signal(signal.SIGKILL)
    proc.proc.wait(10)

    restarted = start_service("novelty", "--db-path", db)
    with NoveltyClient(restarted.address) as client:
        assert client.list_collections()[0].entry_count == 25
        for name, code in models[:25]:
            assert client.get("corpus", name).code == code
        after = [client.check(code, ["corpus"]) for _, code in models[20:30]]
        assert client.stats().rebuild_duration_seconds > 0
    assert after == before


def test_cli_create_add_check_import_stats(novelty, tmp_path, models) -> None:
    proc, _ = novelty
    env = {**os.environ, "ARCHLOOP_NOVELTY_ADDR": proc.address}
    folder = tmp_path / "models"
    folder.mkdir()
    for name, code in models[:5]:
        (folder / f"{name}.py").write_text(code)

    assert run_cli("novelty", "create", "corpus", "--store-shingles", env=env).returncode == 0
    imported = run_cli("novelty", "import", "--collection", "corpus", str(folder), "--json", env=env)
    assert imported.returncode == 0, imported.stderr
    assert json.loads(imported.stdout)["created"] == "5"  # int64 is a string in proto JSON
    checked = run_cli(
        "novelty", "check", "--collection", "corpus", str(folder / f"{models[0][0]}.py"), "--json", env=env
    )
    match = json.loads(checked.stdout)["matches"][0]
    assert match["near_duplicate"] is True and match["nearest_entry_id"] == models[0][0]
    new_file = tmp_path / "new.py"
    new_file.write_text(models[6][1])
    added = run_cli("novelty", "add", "--collection", "corpus", "--check", "corpus", str(new_file), env=env)
    assert added.returncode == 0 and "admitted" in added.stdout
    stats = run_cli("novelty", "stats", "--json", env=env)
    assert json.loads(stats.stdout)["collections"][0]["collection"]["entry_count"] == "6"
    missing = run_cli("novelty", "check", "--collection", "nope", str(new_file), env=env)
    assert missing.returncode == 1 and "NOT_FOUND" in missing.stderr


def test_a_check_among_a_subset_of_entries_sees_only_those(novelty, models) -> None:
    """CheckNoveltyRequest.among: the collection's other entries count as absent; an empty subset
    compares with none (the controller's pre-check asks about the cycle's still-eligible candidates)."""
    _, client = novelty
    client.create_collection("cycle")
    (_, code_a), (_, code_b) = models[0], models[1]
    client.admit("cycle", "a", code_a)
    client.admit("cycle", "a-copy", code_a)
    client.admit("cycle", "b", code_b)

    def check(code: str, among: list[str] | None) -> novelty_pb2.CollectionMatch:
        request = novelty_pb2.CheckNoveltyRequest(code=code, collections=["cycle"])
        if among is not None:
            request.among.entry_ids.extend(among)
        return client.stub.CheckNovelty(request, timeout=10).matches[0]

    assert check(code_a, None).nearest_entry_id == "a"  # ties: the lower id
    assert check(code_a, ["a-copy", "b"]).nearest_entry_id == "a-copy"
    assert check(code_a, ["a-copy", "b"]).near_duplicate
    outside = check(code_a, ["b"])
    assert not outside.near_duplicate and outside.nearest_entry_id in ("", "b")
    none = check(code_a, [])
    assert (none.near_duplicate, none.nearest_entry_id, none.max_jaccard) == (False, "", 0.0)
