"""A GenerateCandidates request, checked and read: the Plan the candidate maker runs (its mode, decoding,
parents and factors), and the request's errors, each naming its field (INVALID_ARGUMENT)."""

from __future__ import annotations

from dataclasses import dataclass, field

from archloop import prompts
from archloop.errors import InvalidArgument
from archloop.factors import Factor
from archloop.v1 import common_pb2, generator_pb2
from services.generator.backend import Decoding

DEFAULT_DECODING = Decoding()
EDITS = ("delta", "factor", "region")  # the modes that edit a parent
MODES = {
    common_pb2.GENERATION_MODE_FULL: "full",
    common_pb2.GENERATION_MODE_DELTA: "delta",
    common_pb2.GENERATION_MODE_FACTOR: "factor",
    common_pb2.GENERATION_MODE_REGION: "region",
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
BASELINE_PARENT = "baseline"


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
    # factor / region: (factor, why) per candidate when the caller chose them (a bandit), or none
    chosen_factors: list[tuple[str, str]] = field(default_factory=list)

    def factor_for(self, index: int) -> tuple[list[Factor], str]:
        """The factors candidate `index` chooses from (the caller's one, else the plan's list) and why."""
        if self.chosen_factors and self.chosen_factors[index - self.start_index][0]:
            name, why = self.chosen_factors[index - self.start_index]
            return [f for f in self.factors if f.name == name], why
        return self.factors, ""

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
        raise InvalidArgument("mode", f"{request.mode} is not full, delta, factor or region")
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
    chosen_factors = _chosen_factors(request, mode, factors)
    if mode in EDITS and not parents:
        baseline = _program(baseline, "baseline_code", mode)
    chosen: list[Factor] = []
    if mode in ("factor", "region"):
        names = list(request.factors) or list(factors)
        unknown = [name for name in names if name not in factors]
        if unknown:
            raise InvalidArgument("factors", f"unknown factor(s) {unknown}; known: {sorted(factors)}")
        chosen = [factors[name] for name in names]
        chosen += [factors[n] for n, _ in chosen_factors if n and factors[n] not in chosen]  # the caller's
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
        chosen_factors=chosen_factors if any(name for name, _ in chosen_factors) else [],
    )


def _chosen_factors(
    request: generator_pb2.GenerateCandidatesRequest, mode: str, factors: dict[str, Factor]
) -> list[tuple[str, str]]:
    """(factor, why) the caller chose per parent ("" = none), each checked."""
    chosen = [(p.factor, p.factor_choice) for p in request.parents]
    for i, (name, _) in enumerate(chosen):
        if name and mode not in ("factor", "region"):
            raise InvalidArgument(
                f"parents[{i}].factor", f"{mode} mode edits no single factor; leave it empty"
            )
        if name and name not in factors:
            raise InvalidArgument(
                f"parents[{i}].factor", f"unknown factor {name!r}; known: {sorted(factors)}"
            )
    return chosen


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
