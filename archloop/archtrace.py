"""Record a model's architecture graph (archloop.archgraph) from one real forward pass.

    record(model, example)  the ArchGraph of `model(example)`

Forward hooks see every call of a built-in layer (a module of torch.nn, Conv2d … MultiheadAttention,
recorded whole); a `torch.overrides.TorchFunctionMode` sees every torch function and tensor method
called outside those layers (`F.relu`, `torch.cat`, `x + y`, `x.mean((2, 3))`). Each tensor the pass
makes is mapped to the nodes it came from, so edges follow the data. Unlike `torch.fx` symbolic tracing
this runs the branch actually taken, so a program with a data- or shape-dependent `if` gets its graph
too; it works on the meta device (shapes only), as the corpus's forward check runs.

Normalisation, so that the graph is the architecture and not the way it is written: a lazy layer is its
eager twin; a functional call is its layer (`F.relu` is `ReLU`); shape-only operations (view, reshape,
flatten, permute, transpose, squeeze, indexing, split, chunk, contiguous, clone, casts, padding,
Identity, Flatten, dropout) make no node, their output keeps their input's sources; an arithmetic op or
cat / stack with fewer than two computed tensors (a scalar scale, a learned bias or scale, one tensor
in a list) makes no node either; a `*_like` or `new_*` tensor has no source; nodes that do not lead to
the output are dropped.
"""

from __future__ import annotations

from typing import Any

from archloop.archgraph import ArchGraph
from archloop.archlabels import CONTAINERS, MERGES, NO_SOURCE, function_kind, module_kind


def record(model: Any, example: Any) -> ArchGraph:
    """Run `model(example)` once (no gradients) and return its architecture graph."""
    import torch

    recorder = _Recorder()
    input_node = recorder.node("input", "input", frozenset())
    recorder.mark(example, frozenset({input_node}))
    hooks = []
    for module in _layers(model):
        hooks.append(module.register_forward_pre_hook(recorder.enter, with_kwargs=True))
        hooks.append(module.register_forward_hook(recorder.leave, with_kwargs=True))
    try:
        with torch.no_grad(), recorder:
            output = model(example)
    finally:
        for hook in hooks:
            hook.remove()
    return recorder.graph(recorder.sources(output))


def _layers(model: Any) -> list[Any]:
    """The built-in layers of `model`, each recorded whole (what they hold inside is not visited)."""
    found: list[Any] = []

    def visit(module: Any) -> None:
        if _builtin(module) and type(module).__name__ not in CONTAINERS:
            found.append(module)
            return
        for child in module.children():
            visit(child)

    visit(model)
    return found


def _builtin(module: Any) -> bool:
    return type(module).__module__.startswith("torch.nn.")


def _name(func: Any) -> str:
    """`torch.Tensor.__iadd__` → 'add', `F.relu_` → 'relu', `torch.cat` → 'cat'."""
    name = getattr(func, "__name__", "") or str(func)
    if name == "__get__":  # a property such as .shape or .T
        name = getattr(getattr(func, "__self__", None), "__name__", name)
    if name.startswith("__") and name.endswith("__"):
        name = name[2:-2]
        if name[:1] in "ir" and name[1:] in MERGES:
            name = name[1:]
    return name.rstrip("_") or name


class _Recorder:
    def __init__(self) -> None:
        import torch
        from torch.overrides import TorchFunctionMode

        self.wiring: list[str] = []
        self.ops: list[str] = []
        self.edges: set[tuple[int, int]] = set()
        self.sources_of: dict[int, frozenset[int]] = {}
        self.kept: list[Any] = []  # every tensor seen stays alive while recording, so ids are not reused
        self.depth = 0  # > 0 inside a built-in layer: what it calls is part of it
        recorder = self

        class Mode(TorchFunctionMode):
            def __torch_function__(self, func, types, args=(), kwargs=None):
                kwargs = kwargs or {}
                out = func(*args, **kwargs)
                if not recorder.depth:
                    recorder.function(func, args, kwargs, out)
                return out

        self.mode = Mode()
        self.tensor_type = torch.Tensor

    def __enter__(self) -> _Recorder:
        self.mode.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.mode.__exit__(*exc)

    # -- tensors and nodes ----------------------------------------------------------------------

    def tensors(self, value: Any) -> list[Any]:
        from torch.utils._pytree import tree_flatten

        return [v for v in tree_flatten(value)[0] if isinstance(v, self.tensor_type)]

    def sources(self, value: Any) -> frozenset[int]:
        found: set[int] = set()
        for tensor in self.tensors(value):
            found |= self.sources_of.get(id(tensor), frozenset())
        return frozenset(found)

    def computed(self, value: Any) -> list[Any]:
        """The distinct tensors of `value` that come from the input (by object)."""
        seen: dict[int, Any] = {}
        for tensor in self.tensors(value):
            if self.sources_of.get(id(tensor)):
                seen.setdefault(id(tensor), tensor)
        return list(seen.values())

    def mark(self, value: Any, sources: frozenset[int]) -> None:
        for tensor in self.tensors(value):
            self.sources_of[id(tensor)] = sources
            self.kept.append(tensor)

    def node(self, wiring: str, op: str, sources: frozenset[int]) -> int:
        index = len(self.wiring)
        self.wiring.append(wiring)
        self.ops.append(op)
        self.edges.update((source, index) for source in sources)
        return index

    # -- what the forward pass calls -------------------------------------------------------------

    def enter(self, module: Any, args: Any, kwargs: Any) -> None:
        self.depth += 1

    def leave(self, module: Any, args: Any, kwargs: Any, output: Any) -> None:
        try:
            if self.depth > 1:
                return
            sources = self.sources((args, kwargs))
            kind = module_kind(module)
            if kind is None or not sources:
                self.mark(output, sources)
            else:
                self.mark(output, frozenset({self.node(*kind, sources)}))
        finally:
            self.depth -= 1

    def function(self, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
        name = _name(func)
        if name in NO_SOURCE or (not self.tensors(out) and name != "setitem"):
            return
        sources = self.sources((args, kwargs))
        if not sources:
            return
        kind = function_kind(name, args, kwargs, len(self.computed((args, kwargs))))
        if name == "setitem":  # x[...] = y: x now holds both
            if kind is not None:
                self.mark(args[0], frozenset({self.node(*kind, sources)}))
            return
        self.mark(out, sources if kind is None else frozenset({self.node(*kind, sources)}))

    def graph(self, output_sources: frozenset[int]) -> ArchGraph:
        """The nodes that lead to the output, renumbered in the order they ran, and an output node."""
        output = self.node("output", "output", output_sources)
        keep = {output}
        frontier = [output]
        into: dict[int, list[int]] = {}
        for source, target in self.edges:
            into.setdefault(target, []).append(source)
        while frontier:
            for source in into.get(frontier.pop(), []):
                if source not in keep:
                    keep.add(source)
                    frontier.append(source)
        order = sorted(keep)
        number = {old: new for new, old in enumerate(order)}
        return ArchGraph(
            [self.wiring[i] for i in order],
            [self.ops[i] for i in order],
            sorted((number[s], number[t]) for s, t in self.edges if s in keep and t in keep),
        )
