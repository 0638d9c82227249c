"""Region mode (archloop/regions.py, docs/edit-modes.md#region-edits): the model writes only the lines of
one factor's site in the parent; the generator splices them in and checks the edit's scope.

    hole      the factor: a seeded choice (as factor mode's) among the plan's factors that have a site in
              the parent; the site: a seeded choice among that factor's sites (replace or insert). The
              parent is taken as `ast.unparse` writes it (the form the region examples were trained on).
    prompt    FIM tokens when the model's tokenizer has them (one token each), else one marker line in a
              ```python block (SmolLM2, 7B models through TGI). A hole whose prompt and answer room do not
              fit the context is that candidate's error (`context: …`), not the request's: another
              candidate's site may fit; nothing is sampled for it, nor for one whose parent has no site
              (`no_site: …`).
    finish    the splice (the parent outside the hole byte for byte) and its scope verdict
              (archloop.regions.scope)
    resample  an answer not in scope (out_of_scope, no_change, does_not_parse) is sampled again with the
              next seed, up to max_reprompts times; the last answer stands. A candidate that ends out of
              scope or unchanged carries no code and says why (rejected, recorded); one that does not
              parse keeps its code, so the evaluator's verdict counts it as the invalid program it is.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from archloop import prompts, regions
from archloop.factors import Factor
from archloop.rewrite import canonical

# room for the answer beyond the lines it replaces: an insertion adds a few lines to a method body
REGION_SLACK_TOKENS = 96


@dataclass
class Hole:
    site: regions.Site
    parent: str  # the canonical parent the site's lines refer to
    prefix: str
    middle: str  # the parent's own lines there (never shown to the model)
    suffix: str
    fim: bool
    verdict: str = ""
    touched: tuple[str, ...] = ()  # the factors the last answer touched (its scope check's)


def choose_hole(
    parent: str, factors: list[Factor], all_factors: dict[str, Factor], key: str, fim: bool
) -> Hole:
    """The factor and site of candidate `key` (its seed and index); ValueError when the parent does not
    parse or no factor of the list has a site in it."""
    try:
        program = canonical(parent)
    except SyntaxError as exc:
        raise ValueError(f"the parent does not parse ({exc.msg}, line {exc.lineno})") from None
    rng = random.Random(key)
    candidates = {f.name: regions.sites(program, f.name, all_factors) for f in factors}
    usable = [f for f in factors if candidates[f.name]]
    if not usable:
        raise ValueError(f"no factor of {[f.name for f in factors]} has a site in the parent")
    factor = rng.choice(usable)
    site = rng.choice(candidates[factor.name])
    prefix, middle, suffix = regions.cut(program, site)
    return Hole(site, program, prefix, middle, suffix, fim)


def messages(task: prompts.Task, hole: Hole, factor: Factor) -> list[dict[str, str]]:
    return prompts.region_messages(task, hole.prefix, hole.suffix, factor.name, factor.description, hole.fim)


def finish(hole: Hole, response: str, factor: str, all_factors: dict[str, Factor]) -> tuple[str, str]:
    """(code, error) of an answer: the spliced child and "" when in scope; what went wrong otherwise."""
    child = regions.splice(hole.prefix, prompts.region_middle(response, hole.fim), hole.suffix)
    scope = regions.scope(hole.parent, child, factor, all_factors)
    hole.verdict, hole.touched = scope.verdict, scope.touched
    if scope.ok or scope.verdict == "does_not_parse":
        return child, ""
    if scope.verdict == "no_change":
        return "", "no_change: the lines written change no factor of the parent"
    return "", f"out_of_scope: the edit touched {', '.join(scope.touched)}, not only {factor}"
