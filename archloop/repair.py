"""Post-generation repair of a generated program: an option an experiment turns on, never hidden.

The reference implementation of the paper renamed the main class to `Net` and added a missing
`import torch.nn.functional as F` without saying so (docs/method.md#model-contract). Here a repair is
recorded on the candidate (its raw code, its repaired code, the list of repairs applied) and reports
show the raw model's valid rate beside the repaired one, so a repair can never pass for what the model wrote.

Repairs, each applied only when it changes something:
    imports     `import torch`, `import torch.nn as nn`, `import torch.nn.functional as F` when the
                program uses the name and never binds it
    class_name  the one `nn.Module` subclass renamed to `Net` when there is no `Net` (and its uses)
    lazy        eager conv / norm / linear layers rewritten to shape-inferring ones (archloop.rewrite):
                input sizes the model got wrong no longer matter

Pure syntax-tree work: nothing here runs the program.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field

from archloop.rewrite import to_lazy

REPAIRS = ("imports", "class_name", "lazy")
_IMPORTS = {
    "torch": "import torch",
    "nn": "import torch.nn as nn",
    "F": "import torch.nn.functional as F",
}


@dataclass(frozen=True)
class Repair:
    code: str  # the repaired program (the input unchanged when nothing applied or it does not parse)
    applied: list[str] = field(default_factory=list)  # in REPAIRS order

    @property
    def changed(self) -> bool:
        return bool(self.applied)


def _bound_names(tree: ast.Module) -> set[str]:
    bound: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            bound.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
        elif isinstance(node, ast.FunctionDef | ast.ClassDef):
            bound.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            bound.add(node.id)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
    return bound


def _missing_imports(tree: ast.Module) -> list[str]:
    used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
    bound = _bound_names(tree)
    return [line for name, line in _IMPORTS.items() if name in used and name not in bound]


def _module_classes(tree: ast.Module) -> list[ast.ClassDef]:
    def is_module(base: ast.expr) -> bool:
        return (isinstance(base, ast.Attribute) and base.attr == "Module") or (
            isinstance(base, ast.Name) and base.id == "Module"
        )

    return [n for n in tree.body if isinstance(n, ast.ClassDef) and any(is_module(b) for b in n.bases)]


def _rename_class(tree: ast.Module) -> bool:
    classes = _module_classes(tree)
    if any(c.name == "Net" for c in tree.body if isinstance(c, ast.ClassDef)) or len(classes) != 1:
        return False
    old = classes[0].name
    classes[0].name = "Net"
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id == old:
            node.id = "Net"
    return True


def repair(code: str) -> Repair:
    """The repaired program and what was done; a program that does not parse is left as it is."""
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return Repair(code)
    applied = []
    missing = _missing_imports(tree)
    if missing:
        tree.body[:0] = ast.parse("\n".join(missing)).body
        applied.append("imports")
    if _rename_class(tree):
        applied.append("class_name")
    text = ast.unparse(tree) + "\n"
    lazy, count = to_lazy(text)
    if count:
        text = lazy
        applied.append("lazy")
    return Repair(text if applied else code, applied)
