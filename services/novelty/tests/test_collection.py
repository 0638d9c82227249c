"""ChannelIndex retrieval equals datasketch's MinHashLSH.query; a non-waiting check yields to writes."""

from __future__ import annotations

import random
import threading

from archloop.lemur import iter_model_sources, lemur_wheel
from services.novelty.collection import ChannelIndex, CollectionConfig
from services.novelty.fingerprint import fingerprint_source
from services.novelty.index import NoveltyIndex, Submission
from services.novelty.store import EntryStore
from services.novelty.tests.variants import make_variant


def test_retrieval_matches_minhashlsh_query_and_survives_removal() -> None:
    rng = random.Random(5)
    sources = [code for _, code in iter_model_sources(lemur_wheel())][:300]
    sources += [make_variant(rng.choice(sources), rng, rng.randint(1, 6))[0] for _ in range(300)]
    channel = ChannelIndex(CollectionConfig())
    prints = [fingerprint_source(code, 10, 256, 1).signature for code in sources]
    for i, signature in enumerate(prints):
        channel.add(f"e{i}", signature)
    for i in range(0, 600, 3):
        channel.remove(f"e{i}")
    for i in range(0, 600, 6):
        channel.add(f"again{i}", prints[i])  # reuses freed rows
    for signature in rng.sample(prints, 60):
        expected = set(channel.lsh.query(channel._minhash(signature)))
        assert channel.retrieve(signature) == expected
        ranked, retrieved = channel.candidates(signature)
        assert retrieved == len(expected) and all(
            not entry.startswith("e") or int(entry[1:]) % 3 for entry, _ in ranked
        )
    assert len(channel) == 600 - 200 + 100


def test_a_check_that_must_not_wait_gives_way_to_a_write_in_progress() -> None:
    index = NoveltyIndex(EntryStore(":memory:"))
    index.create_collection("c", CollectionConfig(), exist_ok=False)
    index.admit("c", Submission("import torch\nx = torch.zeros(3)\n", "a"))
    held, release = threading.Event(), threading.Event()

    def writer() -> None:  # stands for a write holding the collection's lock
        with index.collection("c").lock:
            held.set()
            release.wait(10)

    thread = threading.Thread(target=writer)
    thread.start()
    held.wait(10)
    assert index.check(Submission("import torch\nx = torch.zeros(3)\n"), ["c"], wait=False) is None
    release.set()
    thread.join()
    result = index.check(Submission("import torch\nx = torch.zeros(3)\n"), ["c"], wait=False)
    assert result is not None and result.matches[0].near_duplicate
