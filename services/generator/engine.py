"""From a request to candidates: prompts per mode, batches to the backend, code out of the answers.

    full    the paper's prompt (archloop.prompts.chat_messages) → a complete program
    delta   the baseline in the prompt → a unified diff → applied (services.generator.delta); on failure
            the configured fallback: none (the candidate carries the error), re-prompt with the error
            (up to max_reprompts), or a full program
    factor  one factor per candidate (seeded choice from the request's list or the service's), an edit of
            that factor only → a complete program; which factors it touched, and whether it is entangled
    region  one factor and one of its sites in the parent cut out; the model writes only those lines,
            spliced back and scope-checked, re-sampled while out of scope (services.generator.region)

Delta, factor and region candidates edit a parent: the request's `baseline_code`, or with `parents`
candidate k's own (an archive's choice); each records the parent's id and sha256. Prompts must fit the
model's context (prompt + the least room the answer needs: a short diff, or the parent's own length for
factor mode, the site's lines and a little more for region mode):
a first prompt that does not fit fails the request before anything is sampled, with one sentence naming
the sizes, unless the fallback is `full` (that candidate is then a full program, recorded as
`context_fit: full_fallback`); a re-prompt echoes only the failed diff, shortened or dropped until it fits.

With `repair`, each program goes through archloop.repair; the candidate keeps the raw code, the repaired
code and which repairs applied. Candidate k of a request has index start_index + k and id
`<experiment>-c<cycle>-<index:04d>`, so a resumed cycle continues its numbering. Every candidate
records the raw answer(s), the prompt's sha256, adapter, tokens in and out, and latency.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from archloop import ids, prompts
from archloop.errors import InvalidArgument
from archloop.factors import Factor, touched_factors
from archloop.repair import repair
from archloop.v1 import common_pb2
from services.generator import region
from services.generator.backend import Completion, Decoding
from services.generator.delta import DeltaError, apply_response, extract_diff
from services.generator.plan import MODES, Plan, decoding_to_proto

RESPONSE_SEPARATOR = "\n\n# ----- re-prompt -----\n\n"
# the least room an answer needs beyond its prompt: a diff of a few changed lines; a whole new program
MIN_DIFF_TOKENS = 128
MIN_PROGRAM_TOKENS = 384
FACTOR_SLACK_TOKENS = 32  # a factor edit's answer is the parent's length give or take a few lines


def candidate_seed(seed: int, index: int) -> int:
    """A per-candidate seed (TGI samples each request with its own; the local backend seeds a batch)."""
    return (seed * 1_000_003 + index) % (1 << 63)


@dataclass
class _Work:
    index: int
    parent_id: str
    parent: str  # the program edited ("" in full mode)
    messages: list[dict[str, str]] = field(default_factory=list)
    factor: Factor | None = None
    mode: str = "full"  # the plan's, or "full" after a context fallback
    context_fit: str = ""
    responses: list[str] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency: float = 0.0
    reprompts: int = 0
    code: str = ""
    extraction: str = ""
    error: str = ""
    failure_kind: str = ""
    diff_length: int = 0
    hole: region.Hole | None = None  # region mode
    factor_choice: str = ""  # why `factor`, when the caller chose it

    def add(self, completion: Completion) -> None:
        self.responses.append(completion.text)
        self.prompt_tokens += completion.prompt_tokens
        self.completion_tokens += completion.completion_tokens
        self.latency += completion.latency_seconds


Generate = Callable[[list[list[dict[str, str]]], Decoding, list[int], str], list[Completion]]


class CandidateMaker:
    def __init__(
        self,
        generate: Generate,
        backend_name: str,
        model_id: str,
        batch_size: int,
        factors: dict[str, Factor],
        context_tokens: int = 1 << 30,
        count_tokens: Callable[[str], int] = lambda text: 0,
        render: Callable[[list[dict[str, str]]], str] = lambda messages: "",
        fim: bool = False,
    ) -> None:
        self.generate = generate
        # all of them: an edit is judged against every factor, not only the chosen list
        self.factors = factors
        self.backend_name = backend_name
        self.model_id = model_id
        self.batch_size = batch_size
        self.context_tokens = context_tokens
        self.count_tokens = count_tokens
        self.render = render
        self.fim = fim  # the model's tokenizer has the FIM tokens: region prompts use them

    def prompt_tokens(self, messages: list[dict[str, str]]) -> int:
        return self.count_tokens(self.render(messages))

    def answer_tokens(self, mode: str, parent: str) -> int:
        """The least room an answer needs beyond its prompt."""
        if mode == "delta":
            return MIN_DIFF_TOKENS
        if mode == "factor":
            return self.count_tokens(parent) + FACTOR_SLACK_TOKENS
        if mode == "region":  # `parent`: the lines of the site
            return self.count_tokens(parent) + region.REGION_SLACK_TOKENS
        return MIN_PROGRAM_TOKENS

    def fits(self, messages: list[dict[str, str]], mode: str, parent: str) -> tuple[bool, int, int]:
        """(fits, prompt tokens, answer tokens) of a prompt in the model's context."""
        prompt, answer = self.prompt_tokens(messages), self.answer_tokens(mode, parent)
        return prompt + answer <= self.context_tokens, prompt, answer

    def parent_fits(self, task: prompts.Task, mode: str, code: str) -> tuple[bool, int, int]:
        """Would `code` fit as the parent of a `mode` candidate? (factor and region mode: with the longest
        factor prompt of this maker's factors)"""
        parent = code.strip("\n") + "\n"
        if mode == "delta":
            return self.fits(prompts.delta_messages(task, parent), mode, parent)
        longest = max(self.factors.values(), key=lambda f: len(f.name) + len(f.description))
        if mode == "region":  # the prompt holds the parent less its site, the answer the site's lines:
            # together about the parent and the answer's slack
            messages = prompts.region_messages(task, parent, "", longest.name, longest.description, self.fim)
            return self.fits(messages, mode, "")
        messages = prompts.factor_messages(task, parent, longest.name, longest.description)
        return self.fits(messages, mode, parent)

    def first_work(self, plan: Plan, index: int) -> _Work:
        if plan.mode == "full":
            return _Work(index, "", "", prompts.chat_messages(plan.task))
        parent_id, parent = plan.parent(index)
        work = _Work(index, parent_id, parent, mode=plan.mode)
        if plan.mode == "region":
            return self._region_work(plan, work)
        if plan.mode == "delta":
            work.messages = prompts.delta_messages(plan.task, parent)
        else:
            listed, work.factor_choice = plan.factor_for(index)
            factor = random.Random(f"{plan.seed}:{index}").choice(listed)
            work.factor = factor
            work.messages = prompts.factor_messages(plan.task, parent, factor.name, factor.description)
        fits, prompt, answer = self.fits(work.messages, plan.mode, parent)
        if fits:
            return work
        if plan.fallback == "full":
            work.mode, work.context_fit, work.factor = "full", "full_fallback", None
            work.messages = prompts.chat_messages(plan.task)
            return work
        where = f"parents[{index - plan.start_index}].code" if plan.parents else "baseline_code"
        raise InvalidArgument(
            where,
            f"the {plan.mode} prompt for {parent_id!r} is {prompt:,} tokens and its answer needs at least "
            f"{answer:,} more, over the model's context of {self.context_tokens:,} tokens",
        )

    def _region_work(self, plan: Plan, work: _Work) -> _Work:
        """A region candidate's hole and prompt; the candidate carries the error when its parent has no
        site for the plan's factors (nothing is sampled for it)."""
        key = f"{plan.seed}:{work.index}"
        listed, work.factor_choice = plan.factor_for(work.index)
        try:
            hole = region.choose_hole(work.parent, listed, self.factors, key, self.fim)
        except ValueError as exc:
            work.error = f"no_site: {exc}"
            return work
        work.hole, work.factor = hole, self.factors[hole.site.factor]
        work.messages = region.messages(plan.task, hole, work.factor)
        fits, prompt, answer = self.fits(work.messages, "region", hole.middle)
        if not fits:
            work.error = (
                f"context: the region prompt is {prompt:,} tokens and its answer needs at least {answer:,} "
                f"more, over the model's context of {self.context_tokens:,} tokens"
            )
        return work

    def _sample(
        self, plan: Plan, works: list[_Work], messages: list[list[dict[str, str]]]
    ) -> list[Completion]:
        seeds = [candidate_seed(plan.seed, w.index) + 7919 * w.reprompts for w in works]
        return self.generate(messages, plan.decoding, seeds, plan.adapter)

    def run(self, plan: Plan, stop: Callable[[], bool] = lambda: False) -> Iterator[common_pb2.Candidate]:
        """Candidates in index order, a batch at a time; every prompt is checked against the context
        before the first is sampled."""
        all_works = [
            self.first_work(plan, index) for index in range(plan.start_index, plan.start_index + plan.n)
        ]
        for start in range(0, len(all_works), self.batch_size):
            if stop():
                return
            works = all_works[start : start + self.batch_size]
            sampled = [w for w in works if not (w.mode == "region" and w.error)]
            for work, completion in zip(
                sampled,
                self._sample(plan, sampled, [w.messages for w in sampled]) if sampled else [],
                strict=True,
            ):
                work.add(completion)
                self._finish(work)
            self._retry_deltas(plan, [w for w in works if w.mode == "delta"])
            self._resample_regions(plan, [w for w in sampled if w.mode == "region"])
            for work in works:
                yield self._candidate(plan, work)

    def _finish(self, work: _Work) -> None:
        response = work.responses[-1]
        if work.hole is not None and work.factor is not None:
            work.code, work.error = region.finish(work.hole, response, work.factor.name, self.factors)
            work.extraction = "region"
            return
        if work.mode == "delta" and not work.extraction:
            try:
                work.code, diff = apply_response(work.parent, response)
            except DeltaError as exc:
                work.error, work.failure_kind = f"{exc.kind}: {exc}", exc.kind
                return
            work.extraction, work.diff_length, work.error = "diff", len(diff), ""
            return
        code, how = prompts.extract_code(response)
        work.code, work.extraction = (code, how) if code.strip() else ("", how)
        work.error = "" if code.strip() else "empty: the answer holds no code"

    def reprompt_messages(self, plan: Plan, work: _Work) -> list[dict[str, str]] | None:
        """The re-prompt of a failed diff: the diff it answered (not the whole answer), shortened from the
        end or dropped until the prompt fits; None when even without it the prompt does not fit."""
        echo = extract_diff(work.responses[-1]) or work.responses[-1]
        lines = echo.splitlines()
        while True:
            shown = "\n".join(lines)
            messages = prompts.delta_messages(plan.task, work.parent, work.error, shown)
            if self.fits(messages, "delta", work.parent)[0]:
                if len(lines) < len(echo.splitlines()):
                    work.context_fit = "echo_shortened" if lines else "echo_dropped"
                return messages
            if not lines:
                return None
            lines = lines[: len(lines) // 2]

    def _retry_deltas(self, plan: Plan, works: list[_Work]) -> None:
        if plan.fallback == "none":
            return
        rounds = plan.max_reprompts if plan.fallback == "reprompt" else 1
        for _ in range(rounds):
            failed, batch = [], []
            for work in works:
                if not work.error:
                    continue
                messages = (
                    self.reprompt_messages(plan, work)
                    if plan.fallback == "reprompt"
                    else prompts.chat_messages(plan.task)
                )
                if messages is not None:
                    failed.append(work)
                    batch.append(messages)
            if not failed:
                return
            for work in failed:
                work.reprompts += 1
            for work, completion in zip(failed, self._sample(plan, failed, batch), strict=True):
                work.add(completion)
                if plan.fallback == "full":
                    code, work.extraction = prompts.extract_code(completion.text)
                    work.code = code if code.strip() else ""
                    work.error = "" if code.strip() else "empty: the full-program fallback holds no code"
                else:
                    self._finish(work)

    def _resample_regions(self, plan: Plan, works: list[_Work]) -> None:
        """Answers not in scope are sampled again (the next seed), up to max_reprompts times."""
        for _ in range(plan.max_reprompts):
            again = [w for w in works if w.hole is not None and w.hole.verdict != "in_scope"]
            if not again:
                return
            for work in again:
                work.reprompts += 1
            for work, completion in zip(
                again, self._sample(plan, again, [w.messages for w in again]), strict=True
            ):
                work.add(completion)
                self._finish(work)

    def _touched(self, work: _Work) -> list[str]:
        try:
            return touched_factors(work.parent, work.code, self.factors)
        except SyntaxError:
            return []

    def _candidate(self, plan: Plan, work: _Work) -> common_pb2.Candidate:
        info = common_pb2.GenerationInfo(
            mode=next(k for k, v in MODES.items() if v == work.mode),
            adapter_name=plan.adapter,
            adapter_weights_sha256=plan.adapter_sha256,
            prompt_sha256=prompts.prompt_sha256(work.messages),
            raw_response=RESPONSE_SEPARATOR.join(work.responses),
            prompt_tokens=work.prompt_tokens,
            completion_tokens=work.completion_tokens,
            latency_seconds=work.latency,
            extraction=work.extraction,
            decoding=decoding_to_proto(plan.decoding),
            seed=plan.seed,
            backend=self.backend_name,
            model_id=self.model_id,
            reprompt_count=work.reprompts,
            delta_failure_kind=work.failure_kind,
            parent_id=work.parent_id,
            parent_sha256=hashlib.sha256(work.parent.encode()).hexdigest() if work.parent else "",
            context_fit=work.context_fit,
            factor_choice=work.factor_choice,
        )
        if work.hole is not None:
            info.region_site, info.region_kind = work.hole.site.key, work.hole.site.kind
            info.region_verdict, info.region_fim = work.hole.verdict, work.hole.fim
        if work.mode == "delta":
            info.diff_length_chars = work.diff_length
            info.full_length_chars = len(work.code)
        if work.factor is not None:
            info.factor = work.factor.name
            if work.code:
                touched = list(work.hole.touched) if work.hole is not None else self._touched(work)
                info.touched_factors.extend(touched)
                info.entangled = any(name != work.factor.name for name in touched)
        code = work.code
        if plan.repair and code:
            fixed = repair(code)
            info.raw_code, info.repaired = code, fixed.changed
            info.repairs.extend(fixed.applied)
            code = fixed.code
        return common_pb2.Candidate(
            candidate_id=ids.candidate_id(plan.experiment_id, plan.cycle, work.index),
            experiment_id=plan.experiment_id,
            cycle=plan.cycle,
            index=work.index,
            code=code,
            generation=info,
            generation_error=work.error,
        )
