"""A cycle's fine-tuning set: LEMUR sample, edit pairs in the share asked, and an admitted edit's own pair."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from archloop import corpus, prompts
from services.controller.trainset import Admitted, write_training_set
from services.generator.delta import apply_response

BASE = prompts.BASELINE_FILE.read_text()
GELU = BASE.replace("nn.ReLU(inplace=True)", "nn.GELU()")
TASK = prompts.task_for("digits", (1, 3, 32, 32), 10)


def _corpus(tmp_path: Path) -> Path:
    folder = tmp_path / "lemur-v3"
    folder.mkdir()
    rows = [r for i in range(10) for r in corpus.example_records(f"m{i}", BASE + f"# {i}\n", {"cifar-10": 1})]
    (folder / "examples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    edits = corpus.edits_dir(folder)
    edits.mkdir()
    pairs = [{"id": f"e{i}", "model": f"m{i}~width", "parent": f"m{i}", "messages": []} for i in range(20)]
    (edits / "edits.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    return folder


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_edit_pairs_join_in_the_share_asked_and_admitted_edits_bring_their_own(tmp_path: Path) -> None:
    folder = _corpus(tmp_path)
    admitted = [
        Admitted("x-c1-0000", GELU, "delta", BASE),
        Admitted("x-c1-0001", GELU, "factor", BASE, "activation"),
        Admitted("x-c1-0002", GELU),  # full mode: no parent
    ]
    path = tmp_path / "train.jsonl"
    count = write_training_set(path, folder, 8, 1, TASK, admitted, corpus.edits_dir(folder), 0.5)
    rows = _read(path)
    assert count == len(rows) == 8 + 4 + 3 + 2
    assert sum(r["id"].startswith("e") for r in rows) == 4  # half the 8 LEMUR pairs
    delta = next(r for r in rows if r["id"] == "x-c1-0000#delta")
    assert delta["messages"][:-1] == prompts.delta_messages(TASK, BASE)
    assert apply_response(BASE, delta["messages"][-1]["content"])[0] == GELU  # the diff the model made
    factor = next(r for r in rows if r["id"] == "x-c1-0001#factor")
    assert "Change only its activation" in factor["messages"][1]["content"]
    assert prompts.extract_code(factor["messages"][-1]["content"])[0] == GELU
    # written once: a restarted controller reuses the file as it is
    assert write_training_set(path, folder, 8, 2, TASK, [], None, 0.0) == count


def test_a_share_without_edit_pairs_is_a_clear_error(tmp_path: Path) -> None:
    folder = _corpus(tmp_path)
    with pytest.raises(corpus.CorpusError, match="run `archloop corpus edits`"):
        write_training_set(tmp_path / "t.jsonl", folder, 8, 1, TASK, [], tmp_path / "nowhere", 0.3)
    assert not (tmp_path / "t.jsonl").exists()


def test_an_admitted_region_edit_brings_its_region_example_in_the_form_it_was_asked() -> None:
    from archloop import regions
    from archloop.factors import load_factors
    from archloop.rewrite import canonical
    from services.controller.trainset import region_examples

    parent = canonical(prompts.BASELINE_FILE.read_text())
    (site,) = regions.sites(parent, "regularisation", load_factors())
    prefix, middle, suffix = regions.cut(parent, site)
    child = regions.splice(prefix, middle.replace("nn.Dropout(prm['dropout'])", "nn.Dropout(p=0.2)"), suffix)
    task = prompts.TASKS["mnist"]
    for fim in (True, False):
        (example,) = region_examples(
            Admitted("e-c1-0003", child, "region", parent, "regularisation", fim), task
        )
        content = example["messages"][1]["content"]
        assert (prompts.FIM_MIDDLE in content) is fim and (prompts.HOLE_MARKER in content) is not fim
        written = prompts.region_middle(example["messages"][-1]["content"], fim)
        assert regions.splice(prefix, written, suffix) == child
    # a change no site of the recorded factor holds brings none (the admitted child is still a chat pair)
    assert region_examples(Admitted("e-c1-0004", child, "region", parent, "skip_connections"), task) == []
