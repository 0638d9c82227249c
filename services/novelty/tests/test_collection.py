"""ChannelIndex: retrieval returns exactly what datasketch's MinHashLSH.query returns; removal frees rows."""

from __future__ import annotations

import random

from archloop.lemur import iter_model_sources, lemur_wheel
from services.novelty.collection import ChannelIndex, CollectionConfig
from services.novelty.fingerprint import fingerprint_source
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
