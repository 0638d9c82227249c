"""Region mode of the candidate maker (services/generator/region.py): the hole, the prompt in FIM tokens
or with a marker line, the splice, the scope verdict and the re-samples.

The LLM here is `ScriptedLLM` (test_engine.py), a test double that answers from a list, so each verdict
path runs deterministically; the real tiny model writes regions in bench/edit_modes.py.
"""

from __future__ import annotations

from archloop import prompts, regions
from archloop.factors import load_factors
from archloop.rewrite import canonical
from archloop.v1 import common_pb2
from services.generator.engine import CandidateMaker
from services.generator.plan import plan_from_request
from services.generator.tests.test_engine import BASE, ScriptedLLM, _request

FACTORS = load_factors()
PARENT = canonical(BASE)


def _run(answers: list[str], fim: bool = True, **fields) -> tuple[list[common_pb2.Candidate], ScriptedLLM]:
    llm = ScriptedLLM(answers)
    maker = CandidateMaker(llm, "scripted", "scripted", 8, FACTORS, fim=fim)
    fields.setdefault("mode", common_pb2.GENERATION_MODE_REGION)
    fields.setdefault("baseline_code", BASE)
    return list(maker.run(plan_from_request(_request(**fields), 64, FACTORS))), llm


def _site(factor: str) -> regions.Site:
    (site,) = [s for s in regions.sites(PARENT, factor, FACTORS) if s.kind != "insert" or factor != "depth"]
    return site


def test_an_in_scope_answer_is_spliced_into_the_parent_and_recorded() -> None:
    site = _site("activation")
    _, middle, _ = regions.cut(PARENT, site)
    candidates, llm = _run(
        [middle.replace("nn.ReLU(inplace=True)", "nn.SiLU()")], n=1, factors=["activation"]
    )
    (c,) = candidates
    prefix, _, suffix = regions.cut(PARENT, site)
    assert c.code.startswith(prefix) and c.code.endswith(suffix) and "nn.SiLU()" in c.code
    g = c.generation
    assert (g.factor, g.region_site, g.region_kind, g.region_verdict) == (
        "activation", site.key, "replace", "in_scope",
    )  # fmt: skip
    assert list(g.touched_factors) == ["activation"] and not g.entangled and g.region_fim
    shown = llm.prompts[0][-1]["content"]
    assert shown.endswith(f"{prompts.FIM_PREFIX}{prefix}{prompts.FIM_SUFFIX}{suffix}{prompts.FIM_MIDDLE}")
    assert middle not in shown  # the hole hides the parent's own lines


def test_out_of_scope_and_unchanged_answers_are_resampled_then_rejected_with_the_reason() -> None:
    site = _site("activation")
    _, middle, _ = regions.cut(PARENT, site)
    entangled = middle.replace("nn.ReLU(inplace=True)", "nn.SiLU()").replace(
        "nn.MaxPool2d(2)", "nn.AvgPool2d(2)"
    )
    fixed = middle.replace("nn.ReLU(inplace=True)", "nn.GELU()")
    candidates, llm = _run([entangled, fixed], n=1, factors=["activation"])
    (first,) = candidates  # out of scope, then in scope on its first re-sample
    assert "nn.GELU()" in first.code and first.generation.reprompt_count == 1
    assert first.generation.region_verdict == "in_scope" and len(llm.prompts) == 2
    assert llm.prompts[0] == llm.prompts[1]  # the same prompt, the next seed
    # two candidates, never in scope: the default two re-samples each, then rejected with the reason
    answers = [middle, entangled, entangled, middle, middle, entangled]
    candidates, _ = _run(answers, n=2, factors=["activation"])
    assert all(c.code == "" and c.generation.reprompt_count == 2 for c in candidates)
    assert candidates[0].generation_error.startswith("no_change")
    assert candidates[0].generation.region_verdict == "no_change"
    assert candidates[1].generation_error == (
        "out_of_scope: the edit touched activation, downsampling, not only activation"
    )


def test_an_unparsable_answer_keeps_its_code_for_the_evaluator_and_a_factor_without_site_is_skipped() -> None:
    candidates, _ = _run(["        x = (\n"] * 3, n=1, factors=["skip_connections"])
    (c,) = candidates
    assert c.generation.region_verdict == "does_not_parse" and c.code and not c.generation_error
    assert c.generation.region_kind == "insert"  # the baseline has no skip: its forward body is the site
    no_gate = PARENT.replace("nn.ReLU(inplace=True)", "nn.Identity()")
    candidates, llm = _run([], n=1, factors=["activation"], baseline_code=no_gate)
    assert candidates[0].generation_error.startswith("no_site") and not llm.prompts


def test_without_fim_tokens_the_hole_is_one_marker_line_and_the_answer_a_block() -> None:
    site = _site("regularisation")
    _, middle, _ = regions.cut(PARENT, site)
    answer = prompts.region_answer(
        middle.replace("nn.Dropout(prm['dropout'])", "nn.Dropout(p=0.3)"), fim=False
    )
    candidates, llm = _run([answer], fim=False, n=1, factors=["regularisation"])
    assert "nn.Dropout(p=0.3)" in candidates[0].code and not candidates[0].generation.region_fim
    assert (
        prompts.HOLE_MARKER in llm.prompts[0][-1]["content"] and "<|fim" not in llm.prompts[0][-1]["content"]
    )


def test_a_factor_chosen_by_the_caller_is_the_one_edited_and_its_reason_recorded() -> None:
    import pytest

    from archloop.errors import InvalidArgument
    from archloop.v1 import generator_pb2

    site = _site("regularisation")
    _, middle, _ = regions.cut(PARENT, site)
    answer = middle.replace("nn.Dropout(prm['dropout'])", "nn.Dropout(p=0.3)")
    parents = [
        generator_pb2.ParentProgram(
            parent_id="baseline", code=BASE, factor="regularisation", factor_choice="thompson 0.9: …"
        )
    ] * 2
    candidates, _ = _run([answer, answer], n=2, parents=parents, baseline_code="")
    assert [c.generation.factor for c in candidates] == ["regularisation"] * 2
    assert all(c.generation.factor_choice == "thompson 0.9: …" and c.code for c in candidates)
    bad = [generator_pb2.ParentProgram(parent_id="baseline", code=BASE, factor="colour")]
    with pytest.raises(InvalidArgument, match=r"parents\[0\]\.factor"):
        _run([], n=1, parents=bad, baseline_code="")
    full = [generator_pb2.ParentProgram(parent_id="baseline", code=BASE, factor="width")]
    with pytest.raises(InvalidArgument, match=r"parents\[0\]\.factor"):
        _run([], n=1, parents=full, baseline_code="", mode=common_pb2.GENERATION_MODE_DELTA)
