"""Fixtures shared by the system-level tests."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

from archloop import corpus
from archloop.lemur import iter_model_sources, lemur_wheel
from tools import corpus_build
from tools.corpus_architecture import record_architectures


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A corpus folder of the first LEMUR models that pass every stage (the real funnel, fewer files)."""
    out = tmp_path_factory.mktemp("corpus")
    with zipfile.ZipFile(lemur_wheel()) as archive:
        models = corpus_build.image_classification_models(archive)
    sources = list(iter_model_sources(lemur_wheel()))[:200]
    rows = []
    for outcome, code in corpus_build.screen_models(sources, models, 0.90):
        if outcome.stage == "unique":
            rows.extend(corpus.example_records(outcome.model, code, outcome.datasets))
    (out / "examples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    record_architectures(out)  # as `archloop corpus build` does
    return out
