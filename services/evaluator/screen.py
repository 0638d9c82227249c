"""Static checks on candidate source before anything runs: parse, the policy screen, the contract.

The policy is data (`policy.yaml` beside this file): allowed imports, forbidden names, forbidden
attribute chains, allowed dunder attributes. The screen resolves import aliases (`import numpy as
np` makes `np.load` mean `numpy.load`) and reports every violation with its rule, line and text,
so a caller sees all of them at once. The contract check is structural (the LEMUR API,
docs/method.md#model-contract):
`supported_hyperparameters()` at module level and a class `Net` with `__init__(self, in_shape,
out_shape, prm, device)`, `train_setup`, `learn` and `forward`.

This module imports neither grpc nor torch; the evaluator runs it in the service process because
it never executes candidate code.
"""

from __future__ import annotations

import ast
import time
import warnings
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import yaml

POLICY_PATH = Path(__file__).with_name("policy.yaml")
POLICY_V1_PATH = Path(__file__).with_name("policy-v1.yaml")
"""The screen before restricted imports (issue 19); the corpora lemur-v2/-v3 were built with it."""
MAX_DETAIL_CHARS = 120


@dataclass(frozen=True)
class Violation:
    rule: str
    line: int
    detail: str


@dataclass(frozen=True)
class Policy:
    allowed_imports: frozenset[str]
    forbidden_names: dict[str, str]
    forbidden_attributes: dict[str, str]
    forbidden_attribute_names: frozenset[str]
    allowed_dunder_attributes: frozenset[str]
    dunder_name_functions: frozenset[str]
    forbid_private_torch_attributes: bool
    restricted_imports: dict[str, frozenset[str]] = field(default_factory=dict)
    """module → the only uses allowed (`path.join` for os.path.join)."""
    star_imports: frozenset[str] = frozenset()

    @classmethod
    def load(cls, path: Path = POLICY_PATH) -> Policy:
        raw = yaml.safe_load(path.read_text())
        return cls(
            restricted_imports={m: frozenset(u) for m, u in (raw.get("restricted_imports") or {}).items()},
            star_imports=frozenset(raw.get("star_imports") or ()),
            allowed_imports=frozenset(raw["allowed_imports"]),
            forbidden_names=dict(raw["forbidden_names"]),
            forbidden_attributes=dict(raw["forbidden_attributes"]),
            forbidden_attribute_names=frozenset(raw["forbidden_attribute_names"]),
            allowed_dunder_attributes=frozenset(raw["allowed_dunder_attributes"]),
            dunder_name_functions=frozenset(raw["dunder_name_functions"]),
            forbid_private_torch_attributes=bool(raw["forbid_private_torch_attributes"]),
        )


@lru_cache(maxsize=1)
def default_policy() -> Policy:
    return Policy.load()


def _is_dunder(name: str) -> bool:
    return len(name) > 4 and name.startswith("__") and name.endswith("__")


def _short(text: str) -> str:
    return text if len(text) <= MAX_DETAIL_CHARS else text[: MAX_DETAIL_CHARS - 1] + "…"


class _Screen(ast.NodeVisitor):
    def __init__(self, policy: Policy, bound: set[str]) -> None:
        self.policy = policy
        self.bound = bound
        self.aliases: dict[str, str] = {}
        self.violations: list[Violation] = []

    def flag(self, rule: str, node: ast.AST, detail: str) -> None:
        self.violations.append(Violation(rule, getattr(node, "lineno", 0), _short(detail)))

    # imports ---------------------------------------------------------------------------------

    def _restricted(self, chain: str) -> str | None:
        """For a chain into a restricted module: None when it is an allowed use, else the rule's text."""
        module, _, use = chain.partition(".")
        uses = self.policy.restricted_imports[module]
        if use in uses:
            return None
        return f"{chain} is not among the uses of {module} a candidate may make ({', '.join(sorted(uses))})"

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            root = alias.name.split(".")[0]
            # a restricted module may be imported: each use of it is judged where it is used
            if root not in self.policy.restricted_imports and alias.name not in self.policy.allowed_imports:
                self.flag("import", node, f"import {alias.name} is not allowed")
            # `import torch.nn as nn` binds nn to torch.nn; `import torch.nn` binds torch to torch
            bound, target = (alias.asname, alias.name) if alias.asname else (root, root)
            self.aliases[bound] = target

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        module = node.module or ""
        if node.level:
            self.flag("import", node, f"relative import from {'.' * node.level}{module}")
            return
        restricted = module.split(".")[0] in self.policy.restricted_imports
        if module not in self.policy.allowed_imports and not restricted:
            self.flag("import", node, f"from {module} import … is not allowed")
        for alias in node.names:
            full = f"{module}.{alias.name}"
            if alias.name == "*":
                if module not in self.policy.star_imports:
                    self.flag("import", node, f"from {module} import * hides what is used")
                continue
            if restricted and (problem := self._restricted(full)):
                self.flag("restricted_module", node, problem)
            self._check_chain(node, full)
            self.aliases[alias.asname or alias.name] = full

    # names and attributes --------------------------------------------------------------------

    def visit_Name(self, node: ast.Name) -> None:
        reason = self.policy.forbidden_names.get(node.id)
        if reason and node.id not in self.bound:
            self.flag("forbidden_name", node, f"{node.id}: {reason}")
        target = self.aliases.get(node.id, "")
        if target.split(".")[0] in self.policy.restricted_imports and (problem := self._restricted(target)):
            # `os` (or `path` from os) used as a value, not through one of its allowed uses
            self.flag("restricted_module", node, problem)

    def _chain(self, node: ast.Attribute) -> str | None:
        parts = [node.attr]
        base: ast.AST = node.value
        while isinstance(base, ast.Attribute):
            parts.append(base.attr)
            base = base.value
        if not isinstance(base, ast.Name):
            return None
        root = self.aliases.get(base.id, base.id)
        return ".".join([root, *reversed(parts)])

    def _check_chain(self, node: ast.AST, chain: str) -> None:
        for prefix, reason in self.policy.forbidden_attributes.items():
            if chain == prefix or chain.startswith(prefix + "."):
                self.flag("forbidden_attribute", node, f"{chain}: {reason}")
                return
        private = any(part.startswith("_") and not _is_dunder(part) for part in chain.split(".")[1:])
        if self.policy.forbid_private_torch_attributes and chain.startswith("torch.") and private:
            self.flag("private_torch", node, f"{chain}: torch internals are off limits")

    def visit_Attribute(self, node: ast.Attribute) -> None:
        """The whole chain once (`torch.hub.load` is one violation, not two), then its base. A chain into a
        restricted module is judged whole (`os.path.join` is allowed, `os.path` alone is not) and its
        base name is not judged again."""
        chain = self._chain(node)
        base: ast.AST = node
        while isinstance(base, ast.Attribute):
            base = base.value
        imported = isinstance(base, ast.Name) and base.id in self.aliases  # not a local called `time`
        restricted = imported and chain is not None and chain.split(".")[0] in self.policy.restricted_imports
        if restricted:
            assert chain is not None
            if problem := self._restricted(chain):
                self.flag("restricted_module", node, problem)
        elif chain is not None:
            self._check_chain(node, chain)
        inner: ast.AST = node
        while isinstance(inner, ast.Attribute):
            if _is_dunder(inner.attr) and inner.attr not in self.policy.allowed_dunder_attributes:
                self.flag("dunder_attribute", inner, f"attribute {inner.attr} is an escape hatch")
            if inner.attr in self.policy.forbidden_attribute_names:
                self.flag("forbidden_attribute", inner, f".{inner.attr} reaches a forbidden module")
            inner = inner.value
        if not restricted:
            self.visit(inner)

    def visit_Call(self, node: ast.Call) -> None:
        if isinstance(node.func, ast.Name) and node.func.id in self.policy.dunder_name_functions:
            for arg in node.args[1:2]:
                for const in ast.walk(arg):
                    if (
                        isinstance(const, ast.Constant)
                        and isinstance(const.value, str)
                        and "__" in const.value
                    ):
                        self.flag("dunder_name", node, f"{node.func.id}(…, {const.value!r}) reaches a dunder")
        self.generic_visit(node)


def _bound_names(tree: ast.Module) -> set[str]:
    """Names the module binds itself: parameters, assignment targets, functions and classes."""
    bound: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load):
            bound.add(node.id)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            bound.add(node.name)
    return bound


def parse_source(code: str) -> ast.Module:
    """ast.parse; raises SyntaxError (also for NUL bytes, which ast reports as ValueError).
    The candidate's own compile warnings (invalid escapes, ...) are not ours to print."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return ast.parse(code)
    except ValueError as exc:
        raise SyntaxError(str(exc)) from None


def screen(tree: ast.Module, policy: Policy | None = None) -> list[Violation]:
    """Every policy violation in the module, in source order."""
    checker = _Screen(policy or default_policy(), _bound_names(tree))
    checker.visit(tree)
    return sorted(set(checker.violations), key=lambda v: (v.line, v.rule, v.detail))


@dataclass
class ContractReport:
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


REQUIRED_METHODS = ("__init__", "train_setup", "learn", "forward")
INIT_PARAMETERS = ("self", "in_shape", "out_shape", "prm", "device")


def check_contract(tree: ast.Module) -> ContractReport:
    """The LEMUR model API, checked on the syntax tree (docs/method.md#model-contract)."""
    report = ContractReport()
    functions = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
    if "supported_hyperparameters" not in functions:
        report.problems.append("no module-level function supported_hyperparameters()")
    net = classes.get("Net")
    if net is None:
        report.problems.append("no class Net at module level")
        return report
    methods = {n.name: n for n in net.body if isinstance(n, ast.FunctionDef)}
    for name in REQUIRED_METHODS:
        if name not in methods:
            report.problems.append(f"Net has no method {name}")
    init = methods.get("__init__")
    if init is not None:
        positional = [a.arg for a in init.args.posonlyargs + init.args.args]
        if init.args.vararg is None and len(positional) < len(INIT_PARAMETERS):
            report.problems.append(
                f"Net.__init__ takes ({', '.join(positional)}); the contract passes "
                f"({', '.join(INIT_PARAMETERS)})"
            )
    return report


STATIC_STAGES = ("parse", "static_screen", "contract")
"""The static funnel, in the order a failure is reported: a program that is both unsafe and off the
contract is UNSAFE."""


@dataclass
class StaticCheck:
    """All three static checks of one program (each runs whenever the program parses: both are cheap
    passes over the syntax tree), with the seconds each took."""

    syntax_error: SyntaxError | None = None
    violations: list[Violation] = field(default_factory=list)
    contract: ContractReport = field(default_factory=ContractReport)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def failed_stage(self) -> str | None:
        """The first stage of STATIC_STAGES that fails, or None when the program passes all three."""
        if self.syntax_error is not None:
            return "parse"
        if self.violations:
            return "static_screen"
        if not self.contract.ok:
            return "contract"
        return None


def static_check(code: str, policy: Policy | None = None) -> StaticCheck:
    """Parse, screen and contract-check `code`: the one static funnel, shared by the evaluator and the
    corpus builder (which must keep a program the evaluator would refuse out of the training data)."""
    result = StaticCheck()
    started = time.monotonic()
    try:
        tree = parse_source(code)
    except SyntaxError as exc:
        result.syntax_error = exc
        return result
    result.seconds["parse"] = time.monotonic() - started
    started = time.monotonic()
    result.violations = screen(tree, policy)
    result.seconds["static_screen"] = time.monotonic() - started
    started = time.monotonic()
    result.contract = check_contract(tree)
    result.seconds["contract"] = time.monotonic() - started
    return result
