"""Factor bookkeeping, request validation and delta fallbacks of the candidate maker.

The LLM here is `ScriptedLLM`, a test double that answers from a list: it stands in for the model so
the fallback paths run deterministically (the real backends are exercised in test_service.py).
"""

from __future__ import annotations

import difflib
import hashlib
from pathlib import Path

import pytest

from archloop import prompts
from archloop.errors import InvalidArgument
from archloop.factors import FactorFileError, load_factors, touched_factors
from archloop.prompts import BASELINE_FILE as BASELINE
from archloop.v1 import common_pb2, generator_pb2
from services.generator.backend import Completion
from services.generator.engine import CandidateMaker
from services.generator.plan import plan_from_request

BASE = BASELINE.read_text()
FACTORS = load_factors()


def _edit(*replacements: tuple[str, str]) -> str:
    code = BASE
    for old, new in replacements:
        assert old in code, old
        code = code.replace(old, new)
    return code


@pytest.mark.parametrize(
    ("edit", "touched"),
    [
        (_edit(("nn.ReLU(inplace=True)", "nn.GELU()")), ["activation"]),
        (_edit(("nn.BatchNorm2d(32)", "nn.GroupNorm(8, 32)")), ["normalisation"]),
        (_edit(("nn.MaxPool2d(2)", "nn.AvgPool2d(2)")), ["downsampling"]),
        (_edit(("nn.Dropout(prm['dropout'])", "nn.Dropout(0.5)")), ["regularisation"]),
        (
            _edit(
                ("nn.Conv2d(64, 128", "nn.Conv2d(64, 160"),
                ("nn.BatchNorm2d(128)", "nn.BatchNorm2d(160)"),
                ("nn.Linear(128,", "nn.Linear(160,"),
            ),
            ["width"],
        ),
        (
            _edit(
                (
                    "            nn.Conv2d(64, 128",
                    "            nn.Conv2d(64, 64, 3, padding=1),\n            nn.Conv2d(64, 128",
                )
            ),
            ["depth"],
        ),
        (
            _edit(("        x = self.features(x)\n", "        x = self.features(x) + self.features(x)\n")),
            ["skip_connections"],
        ),
        (
            _edit(("nn.ReLU(inplace=True)", "nn.GELU()"), ("nn.MaxPool2d(2)", "nn.AvgPool2d(2)")),
            ["activation", "downsampling"],
        ),
    ],
    ids=["activation", "normalisation", "downsampling", "regularisation", "width", "depth", "skip", "two"],
)
def test_an_edit_touches_the_factors_it_changes_and_no_others(edit: str, touched: list[str]) -> None:
    assert touched_factors(BASE, edit, FACTORS) == touched


def test_the_factor_file_is_checked(tmp_path: Path) -> None:
    assert list(FACTORS)[:3] == ["normalisation", "activation", "downsampling"] and len(FACTORS) == 8
    bad = tmp_path / "f.yaml"
    for text, words in [
        ("[]", "non-empty list"),
        ("- name: x\n", "needs a name and a description"),
        ("- {name: x, description: y, colour: red, calls: [A]}", "unknown keys"),
        ("- {name: x, description: y}", "nothing to recognise"),
        ("- {name: x, description: [y", "f.yaml"),
    ]:
        bad.write_text(text)
        with pytest.raises(FactorFileError, match=words):
            load_factors(bad)


def _request(**fields) -> generator_pb2.GenerateCandidatesRequest:
    values = {"experiment_id": "e", "cycle": 2, "n": 3, "mode": common_pb2.GENERATION_MODE_FULL, "seed": 5}
    values.update(fields)
    return generator_pb2.GenerateCandidatesRequest(**values)


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"n": 0}, "n"),
        ({"n": 65}, "n"),
        ({"mode": 0}, "mode"),
        ({"mode": 7}, "mode"),
        ({"mode": common_pb2.GENERATION_MODE_DELTA}, "baseline_code"),
        ({"mode": common_pb2.GENERATION_MODE_FACTOR, "baseline_code": "  \n"}, "baseline_code"),
        (
            {"mode": common_pb2.GENERATION_MODE_FACTOR, "baseline_code": BASE, "factors": ["colour"]},
            "factors",
        ),
        ({"decoding": common_pb2.DecodingParams(temperature=-1)}, "decoding.temperature"),
        ({"decoding": common_pb2.DecodingParams(top_p=1.5)}, "decoding.top_p"),
        ({"task": common_pb2.TaskSpec(input_shape=[3, 32, 32])}, "task.input_shape"),
        ({"max_reprompts": -1}, "max_reprompts"),
        ({"max_reprompts": 2**31 - 1}, "max_reprompts"),  # each round samples again: found by the fuzzer
        ({"delta_fallback": 9}, "delta_fallback"),
    ],
)
def test_bad_requests_name_the_field(fields: dict, field: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        plan_from_request(_request(**fields), 64, FACTORS)
    assert caught.value.field == field


def test_zero_decoding_means_the_papers_defaults() -> None:
    plan = plan_from_request(_request(), 64, FACTORS)
    d = plan.decoding
    assert (d.temperature, d.top_k, d.top_p, d.max_new_tokens) == (0.2, 50, 0.9, 2048)
    assert plan.task.input_shape == (3, 32, 32) and plan.task.max_parameters == 500_000


class ScriptedLLM:
    """Test double for the LLM: answers prompts in order from `answers`; records the prompts it saw."""

    def __init__(self, answers: list[str]) -> None:
        self.answers = list(answers)
        self.prompts: list[list[dict[str, str]]] = []

    def __call__(self, chats, decoding, seeds, adapter):
        self.prompts.extend(chats)
        return [Completion(self.answers.pop(0), 100, 20, 0.5, True) for _ in chats]


def _diff(new: str) -> str:
    return (
        "```diff\n"
        + "".join(difflib.unified_diff(BASE.splitlines(True), new.splitlines(True), "a", "b"))
        + "```"
    )


GELU = _edit(("nn.ReLU(inplace=True)", "nn.GELU()"))


def _run(answers: list[str], **fields) -> tuple[list[common_pb2.Candidate], ScriptedLLM]:
    llm = ScriptedLLM(answers)
    maker = CandidateMaker(llm, "scripted", "scripted", 8, FACTORS)
    fields.setdefault("mode", common_pb2.GENERATION_MODE_DELTA)
    fields.setdefault("baseline_code", BASE)
    return list(maker.run(plan_from_request(_request(**fields), 64, FACTORS))), llm


def test_delta_records_lengths_and_reprompts_with_the_error_until_a_diff_applies() -> None:
    broken = "```diff\n@@ -1 +1 @@\n-import tensorflow\n+import jax\n```"
    candidates, llm = _run([_diff(GELU), broken, "no idea", _diff(GELU), broken, "prose"], n=3)
    first, second, third = candidates
    assert first.code == GELU and first.generation.extraction == "diff" and not first.generation_error
    assert 0 < first.generation.diff_length_chars < first.generation.full_length_chars == len(GELU)
    # candidate 2: broken, re-prompted with the error, fixed on the first re-prompt
    assert second.code == GELU and second.generation.reprompt_count == 1
    assert "context_not_found" in llm.prompts[3][-1]["content"]
    assert second.generation.delta_failure_kind == "context_not_found"
    # candidate 3: no diff, then broken, then prose: two re-prompts (the default) and it gives up
    assert (
        third.code == ""
        and third.generation.reprompt_count == 2
        and third.generation_error.startswith("no_diff")
    )
    assert third.generation.raw_response.count("re-prompt") == 2
    assert [c.candidate_id for c in candidates] == ["e-c2-0000", "e-c2-0001", "e-c2-0002"]


def test_delta_falls_back_to_a_full_program_or_to_nothing_as_asked() -> None:
    candidates, llm = _run(
        ["prose", f"```python\n{GELU}```"], n=1, delta_fallback=generator_pb2.DELTA_FALLBACK_FULL
    )
    assert candidates[0].code == GELU and candidates[0].generation.delta_failure_kind == "no_diff"
    assert "Answer with one Python module" in llm.prompts[1][-1]["content"]
    candidates, _ = _run(["prose"], n=1, delta_fallback=generator_pb2.DELTA_FALLBACK_NONE)
    assert candidates[0].code == "" and candidates[0].generation.reprompt_count == 0


def test_factor_mode_records_the_choice_and_entanglement() -> None:
    both = _edit(("nn.ReLU(inplace=True)", "nn.GELU()"), ("nn.MaxPool2d(2)", "nn.AvgPool2d(2)"))
    answers = [f"```python\n{GELU}```", f"```python\n{both}```"]
    candidates, llm = _run(answers, n=2, mode=common_pb2.GENERATION_MODE_FACTOR, factors=["activation"])
    assert [c.generation.factor for c in candidates] == ["activation", "activation"]
    assert "Change only its activation" in llm.prompts[0][-1]["content"]
    assert (
        list(candidates[0].generation.touched_factors) == ["activation"]
        and not candidates[0].generation.entangled
    )
    assert list(candidates[1].generation.touched_factors) == ["activation", "downsampling"]
    assert candidates[1].generation.entangled


def test_factor_choice_is_seeded_and_spread_over_the_list() -> None:
    answers = [f"```python\n{BASE}```"] * 16
    first, _ = _run(list(answers), n=16, mode=common_pb2.GENERATION_MODE_FACTOR)
    again, _ = _run(list(answers), n=16, mode=common_pb2.GENERATION_MODE_FACTOR)
    chosen = [c.generation.factor for c in first]
    assert chosen == [c.generation.factor for c in again] and len(set(chosen)) >= 4


def test_factor_signatures_read_shape_inferring_layers() -> None:
    lazy = (
        "import torch.nn as nn\n"
        "layers = [nn.LazyConv2d(32, 3), nn.LazyBatchNorm2d(), nn.ReLU(), nn.LazyLinear(10)]\n"
    )
    wider = lazy.replace("LazyConv2d(32, 3)", "LazyConv2d(48, 3)")
    deeper = lazy.replace("nn.ReLU()", "nn.ReLU(), nn.LazyConv2d(32, 3)")
    no_norm = lazy.replace("nn.LazyBatchNorm2d(), ", "")
    assert touched_factors(lazy, wider, FACTORS) == ["width"]  # the kernel size is not a width
    assert touched_factors(lazy, deeper, FACTORS) == ["depth"]
    assert touched_factors(lazy, no_norm, FACTORS) == ["normalisation"]


SLOPPY = """\
class Model(nn.Module):
    def __init__(self, in_shape, out_shape, prm, device):
        super(Model, self).__init__()
        self.conv = nn.Conv2d(5, 16, 3)
        self.fc = nn.Linear(999, out_shape[0])

    def forward(self, x):
        return self.fc(torch.flatten(F.relu(self.conv(x)), 1))
"""


def test_repair_is_recorded_beside_the_raw_code_and_only_when_asked() -> None:
    answer = f"```python\n{SLOPPY}```"
    plain, _ = _run([answer], n=1, mode=common_pb2.GENERATION_MODE_FULL)
    assert plain[0].code == SLOPPY and not plain[0].generation.repaired and not plain[0].generation.raw_code
    fixed, _ = _run(
        [answer, "```python\nimport torch\n```"], n=2, mode=common_pb2.GENERATION_MODE_FULL, repair=True
    )
    info = fixed[0].generation
    assert info.raw_code == SLOPPY and info.repaired
    assert list(info.repairs) == ["imports", "class_name", "lazy"]
    code = fixed[0].code
    assert code.startswith("import torch\nimport torch.nn as nn\nimport torch.nn.functional as F\n")
    assert "class Net(nn.Module)" in code and "super(Net, self)" in code
    assert "nn.LazyConv2d(16, 3)" in code and "nn.LazyLinear(out_shape[0])" in code
    # nothing to repair: raw code recorded, flag off
    assert (
        fixed[1].generation.raw_code == fixed[1].code == "import torch\n" and not fixed[1].generation.repaired
    )


def _words(text: str) -> int:
    """A stand-in tokenizer for the fit rule: a token per whitespace-separated word."""
    return len(text.split())


def _render(messages: list[dict[str, str]]) -> str:
    return "\n".join(m["content"] for m in messages)


TASK = prompts.task_for("cifar10", (1, 3, 32, 32), 10)


def _fitted(answers: list[str], context: int, **fields) -> tuple[list[common_pb2.Candidate], ScriptedLLM]:
    llm = ScriptedLLM(answers)
    maker = CandidateMaker(llm, "scripted", "scripted", 8, FACTORS, context, _words, _render)
    fields.setdefault("mode", common_pb2.GENERATION_MODE_DELTA)
    fields.setdefault("baseline_code", BASE)
    return list(maker.run(plan_from_request(_request(**fields), 64, FACTORS))), llm


def test_each_candidate_edits_its_own_parent_and_records_it() -> None:
    parents = [
        generator_pb2.ParentProgram(parent_id=f"p{i}", code=code) for i, code in enumerate([BASE, GELU])
    ]
    answers = [_diff(GELU), f"```diff\n--- a\n+++ b\n@@ -1 +1 @@\n-{GELU.splitlines()[0]}\n+import math\n```"]
    candidates, llm = _run(answers, n=2, parents=parents, baseline_code="")
    assert [c.generation.parent_id for c in candidates] == ["p0", "p1"]
    assert candidates[0].code == GELU and candidates[1].code.startswith("import math\n")
    assert candidates[1].generation.parent_sha256 == hashlib.sha256(GELU.encode()).hexdigest()
    assert "nn.GELU()" in llm.prompts[1][-1]["content"]  # the second prompt shows its own parent
    baseline, _ = _run([_diff(GELU)], n=1)
    assert baseline[0].generation.parent_id == "baseline"


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"parents": [generator_pb2.ParentProgram(parent_id="p", code=BASE)]}, "parents"),  # n = 3
        ({"parents": [generator_pb2.ParentProgram(parent_id="", code=BASE)], "n": 1}, "parents[0].parent_id"),
        ({"parents": [generator_pb2.ParentProgram(parent_id="p", code=" ")], "n": 1}, "parents[0].code"),
        (
            {"parents": [generator_pb2.ParentProgram(parent_id="p", code=BASE)], "n": 1, "mode": 1},
            "parents",
        ),
    ],
)
def test_bad_parents_name_the_field(fields: dict, field: str) -> None:
    fields.setdefault("mode", common_pb2.GENERATION_MODE_DELTA)
    with pytest.raises(InvalidArgument) as caught:
        plan_from_request(_request(**fields), 64, FACTORS)
    assert caught.value.field == field


def test_a_prompt_that_cannot_fit_fails_before_sampling_with_the_sizes() -> None:
    prompt = _words(_render(prompts.delta_messages(TASK, BASE)))
    with pytest.raises(InvalidArgument) as caught:
        _fitted([_diff(GELU)] * 3, prompt + 100)  # a diff needs 128 tokens of room
    assert caught.value.field == "baseline_code"
    assert f"is {prompt:,} tokens and its answer needs at least 128 more" in str(caught.value)
    candidates, llm = _fitted([_diff(GELU)], prompt + 128, n=1)  # exactly enough
    assert candidates[0].code == GELU and not candidates[0].generation.context_fit
    # factor mode: the answer is a whole program, so the parent's own length must fit again
    with pytest.raises(InvalidArgument, match="needs at least"):
        _fitted([], prompt + 128, n=1, mode=common_pb2.GENERATION_MODE_FACTOR)
    # with the full fallback, a candidate whose prompt cannot fit becomes a full program, recorded so
    full, llm = _fitted(
        [f"```python\n{GELU}```"], prompt, n=1, delta_fallback=generator_pb2.DELTA_FALLBACK_FULL
    )
    assert full[0].code == GELU and full[0].generation.context_fit == "full_fallback"
    assert full[0].generation.mode == common_pb2.GENERATION_MODE_FULL and len(llm.prompts) == 1


def test_a_reprompt_echoes_only_as_much_of_the_failed_diff_as_fits() -> None:
    long_broken = "```diff\n@@ -1 +1 @@\n" + "".join(f"-line {i} of nothing\n" for i in range(200)) + "```"
    prompt = _words(_render(prompts.delta_messages(TASK, BASE, "x" * 20, "")))
    candidates, llm = _fitted(["prose then\n" + long_broken, _diff(GELU)], prompt + 128 + 300, n=1)
    assert candidates[0].code == GELU and candidates[0].generation.reprompt_count == 1
    assert candidates[0].generation.context_fit == "echo_shortened"
    echoed = llm.prompts[1][-2]["content"]
    assert echoed.startswith("@@ -1 +1 @@") and "prose" not in echoed  # the diff, not the whole answer
    assert 0 < echoed.count("of nothing") < 200
    assert _words(_render(llm.prompts[1])) + 128 <= prompt + 128 + 300
