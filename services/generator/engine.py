"""From a request to candidates: prompts per mode, batches to the backend, code out of the answers.

    full    the paper's prompt (archloop.prompts.chat_messages) → a complete program
    delta   the baseline in the prompt → a unified diff → applied (services.generator.delta); on failure
            the configured fallback: none (the candidate carries the error), re-prompt with the error
            (up to max_reprompts), or a full program
    factor  one factor per candidate (seeded choice from the request's list or the service's), an edit of
            that factor only → a complete program; which factors it touched, and whether it is entangled

Delta and factor candidates edit a parent: the request's `baseline_code`, or with `parents` candidate k's
own (an archive's choice); each records the parent's id and sha256. Prompts must fit the model's context
(prompt + the least room the answer needs: a short diff, or the parent's own length for factor mode):
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
from archloop.v1 import common_pb2, generator_pb2
from services.generator.backend import Completion, Decoding
from services.generator.delta import DeltaError, apply_response, extract_diff

DEFAULT_DECODING = Decoding()
MODES = {
    common_pb2.GENERATION_MODE_FULL: "full",
    common_pb2.GENERATION_MODE_DELTA: "delta",
    common_pb2.GENERATION_MODE_FACTOR: "factor",
}
FALLBACKS = {
    generator_pb2.DELTA_FALLBACK_UNSPECIFIED: "reprompt",
    generator_pb2.DELTA_FALLBACK_NONE: "none",
    generator_pb2.DELTA_FALLBACK_REPROMPT: "reprompt",
    generator_pb2.DELTA_FALLBACK_FULL: "full",
}
DEFAULT_REPROMPTS = 2  # the reference re-prompted up to twice (docs/method.md#generation-modes)
MAX_REPROMPTS = 10  # each round samples again: a bound keeps a failing request from running for ever
MAX_BASELINE_CHARS = 256 * 1024
RESPONSE_SEPARATOR = "\n\n# ----- re-prompt -----\n\n"
BASELINE_PARENT = "baseline"
# the least room an answer needs beyond its prompt: a diff of a few changed lines; a whole new program
MIN_DIFF_TOKENS = 128
MIN_PROGRAM_TOKENS = 384
FACTOR_SLACK_TOKENS = 32  # a factor edit's answer is the parent's length give or take a few lines


@dataclass
class Plan:
    experiment_id: str
    cycle: int
    task: prompts.Task
    mode: str
    decoding: Decoding
    adapter: str
    seed: int
    n: int
    start_index: int = 0
    baseline: str = ""
    factors: list[Factor] = field(default_factory=list)
    fallback: str = "reprompt"
    max_reprompts: int = DEFAULT_REPROMPTS
    repair: bool = False  # archloop.repair on each program, recorded on the candidate
    adapter_sha256: str = ""  # filled in once the backend has the adapter
    parents: list[tuple[str, str]] = field(default_factory=list)  # (id, code) per candidate, or none

    def parent(self, index: int) -> tuple[str, str]:
        """(id, code) of the program candidate `index` edits."""
        if self.parents:
            return self.parents[index - self.start_index]
        return BASELINE_PARENT, self.baseline


def decoding_from_proto(given: common_pb2.DecodingParams, field_name: str = "decoding") -> Decoding:
    """Zero → the paper's default, except a temperature that is set (0 = greedy); negative or
    out-of-range values name the field."""
    checks = {
        "temperature": given.temperature < 0,
        "top_k": given.top_k < 0,
        "top_p": not 0 <= given.top_p <= 1,
        "max_new_tokens": given.max_new_tokens < 0,
        "repetition_penalty": given.repetition_penalty < 0,
    }
    for name, bad in checks.items():
        if bad:
            raise InvalidArgument(f"{field_name}.{name}", f"{getattr(given, name)} is out of range")
    d = DEFAULT_DECODING
    return Decoding(
        given.temperature if given.HasField("temperature") else d.temperature,
        given.top_k or d.top_k,
        given.top_p or d.top_p,
        given.max_new_tokens or d.max_new_tokens,
        given.repetition_penalty or d.repetition_penalty,
    )


def decoding_to_proto(decoding: Decoding) -> common_pb2.DecodingParams:
    return common_pb2.DecodingParams(
        temperature=decoding.temperature,
        top_k=decoding.top_k,
        top_p=decoding.top_p,
        max_new_tokens=decoding.max_new_tokens,
        repetition_penalty=decoding.repetition_penalty,
    )


def plan_from_request(
    request: generator_pb2.GenerateCandidatesRequest, max_candidates: int, factors: dict[str, Factor]
) -> Plan:
    if not 1 <= request.n <= max_candidates:
        raise InvalidArgument("n", f"{request.n} is not in 1..{max_candidates}")
    mode = MODES.get(request.mode)
    if mode is None:
        raise InvalidArgument("mode", f"{request.mode} is not full, delta or factor")
    if request.cycle < 0 or request.start_index < 0:
        raise InvalidArgument("cycle" if request.cycle < 0 else "start_index", "must not be negative")
    task = task_from_spec(request.task)
    baseline = request.baseline_code
    parents = [(p.parent_id, p.code) for p in request.parents]
    if parents and mode == "full":
        raise InvalidArgument("parents", "full mode edits no program; leave parents empty")
    if parents and len(parents) != request.n:
        raise InvalidArgument(
            "parents", f"{len(parents)} entries for n = {request.n}; give one per candidate"
        )
    for i, (parent_id, code) in enumerate(parents):
        if not parent_id:
            raise InvalidArgument(f"parents[{i}].parent_id", "is empty")
        parents[i] = (parent_id, _program(code, f"parents[{i}].code", mode))
    if mode in ("delta", "factor") and not parents:
        baseline = _program(baseline, "baseline_code", mode)
    chosen: list[Factor] = []
    if mode == "factor":
        names = list(request.factors) or list(factors)
        unknown = [name for name in names if name not in factors]
        if unknown:
            raise InvalidArgument("factors", f"unknown factor(s) {unknown}; known: {sorted(factors)}")
        chosen = [factors[name] for name in names]
    if not 0 <= request.max_reprompts <= MAX_REPROMPTS:
        raise InvalidArgument("max_reprompts", f"{request.max_reprompts} is not in 0..{MAX_REPROMPTS}")
    fallback = FALLBACKS.get(request.delta_fallback)
    if fallback is None:
        raise InvalidArgument("delta_fallback", f"{request.delta_fallback} is not a known fallback")
    return Plan(
        experiment_id=request.experiment_id,
        cycle=request.cycle,
        task=task,
        mode=mode,
        decoding=decoding_from_proto(request.decoding),
        adapter=request.adapter.name,
        seed=request.seed,
        n=request.n,
        start_index=request.start_index,
        baseline=baseline,
        factors=chosen,
        fallback=fallback,
        max_reprompts=request.max_reprompts or DEFAULT_REPROMPTS,
        repair=request.repair,
        parents=parents,
    )


def task_from_spec(spec: common_pb2.TaskSpec) -> prompts.Task:
    """The prompt's task of a request's TaskSpec (zero fields: CIFAR-10 shapes, 10 classes, 500k)."""
    dataset = spec.dataset or "cifar10"
    shape = tuple(spec.input_shape) or (1, 3, 32, 32)
    if len(shape) != 4 or shape[0] != 1 or min(shape) < 1:
        raise InvalidArgument("task.input_shape", f"{list(shape)} is not [1, C, H, W]")
    if spec.num_classes < 0 or spec.param_budget < 0:
        raise InvalidArgument(
            "task.num_classes" if spec.num_classes < 0 else "task.param_budget", "must be positive"
        )
    return prompts.task_for(dataset, shape, spec.num_classes or 10, spec.param_budget or 500_000)


def _program(code: str, field_name: str, mode: str) -> str:
    if not code.strip():
        raise InvalidArgument(field_name, f"{mode} mode edits a program; it is empty")
    if len(code) > MAX_BASELINE_CHARS:
        raise InvalidArgument(field_name, f"{len(code):,} characters, over {MAX_BASELINE_CHARS:,}")
    return code.strip("\n") + "\n"


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

    def prompt_tokens(self, messages: list[dict[str, str]]) -> int:
        return self.count_tokens(self.render(messages))

    def answer_tokens(self, mode: str, parent: str) -> int:
        """The least room an answer needs beyond its prompt."""
        if mode == "delta":
            return MIN_DIFF_TOKENS
        if mode == "factor":
            return self.count_tokens(parent) + FACTOR_SLACK_TOKENS
        return MIN_PROGRAM_TOKENS

    def fits(self, messages: list[dict[str, str]], mode: str, parent: str) -> tuple[bool, int, int]:
        """(fits, prompt tokens, answer tokens) of a prompt in the model's context."""
        prompt, answer = self.prompt_tokens(messages), self.answer_tokens(mode, parent)
        return prompt + answer <= self.context_tokens, prompt, answer

    def parent_fits(self, task: prompts.Task, mode: str, code: str) -> tuple[bool, int, int]:
        """Would `code` fit as the parent of a `mode` candidate? (factor mode: with the longest factor
        prompt of this maker's factors)"""
        parent = code.strip("\n") + "\n"
        if mode == "delta":
            return self.fits(prompts.delta_messages(task, parent), mode, parent)
        longest = max(self.factors.values(), key=lambda f: len(f.name) + len(f.description))
        messages = prompts.factor_messages(task, parent, longest.name, longest.description)
        return self.fits(messages, mode, parent)

    def first_work(self, plan: Plan, index: int) -> _Work:
        if plan.mode == "full":
            return _Work(index, "", "", prompts.chat_messages(plan.task))
        parent_id, parent = plan.parent(index)
        work = _Work(index, parent_id, parent, mode=plan.mode)
        if plan.mode == "delta":
            work.messages = prompts.delta_messages(plan.task, parent)
        else:
            factor = random.Random(f"{plan.seed}:{index}").choice(plan.factors)
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
            for work, completion in zip(
                works, self._sample(plan, works, [w.messages for w in works]), strict=True
            ):
                work.add(completion)
                self._finish(work)
            self._retry_deltas(plan, [w for w in works if w.mode == "delta"])
            for work in works:
                yield self._candidate(plan, work)

    def _finish(self, work: _Work) -> None:
        response = work.responses[-1]
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
        )
        if work.mode == "delta":
            info.diff_length_chars = work.diff_length
            info.full_length_chars = len(work.code)
        if work.factor is not None:
            info.factor = work.factor.name
            if work.code:
                try:
                    touched = touched_factors(work.parent, work.code, self.factors)
                except SyntaxError:
                    touched = []
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
