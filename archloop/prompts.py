"""The generator's prompt template: the one place that says what the LLM is asked
(docs/method.md#model-contract).

The corpus builder renders every LEMUR training pair with it and the generator samples with it, so
a prompt change shows up in both (and in the corpus manifest's `prompt_sha256`). A prompt is a chat:
a system message, a user message describing the task, and (in training pairs) the assistant's
answer, which is the program in one ```python block with real newlines.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from archloop import datasets

PROMPT_VERSION = "full-v1"

SYSTEM_PROMPT = (
    "You are an expert deep learning engineer. You write compact PyTorch image classifiers that "
    "learn fast and run on edge devices."
)


@dataclass(frozen=True)
class Task:
    """What the program must classify."""

    dataset: str
    input_shape: tuple[int, int, int]  # (C, H, W) of one image
    num_classes: int
    description: str
    max_parameters: int = 500_000


def _paper_task(name: str) -> Task:
    entry = datasets.lookup(name)
    assert entry is not None, name
    return Task(name, entry.input_shape, entry.num_classes, entry.description)


# The two user descriptions per code of the paper (docs/method.md#corpus-and-fine-tuning), keyed by
# LEMUR's spelling of the dataset, which their text keeps.
TASKS: dict[str, Task] = {name: _paper_task(name) for name in ("cifar-10", "mnist")}
_TASK_OF = {entry.name: task for name, task in TASKS.items() if (entry := datasets.lookup(name))}

CONTRACT = """\
The file must:
- start with `import torch` and `import torch.nn as nn`;
- define `supported_hyperparameters()` returning {'lr', 'momentum'};
- define `class Net(nn.Module)` with `__init__(self, in_shape, out_shape, prm, device)` where in_shape is \
(1, C, H, W), out_shape is (num_classes,) and prm holds 'lr', 'momentum' and 'dropout';
- define `train_setup(self, prm)` that sets `self.optimizer` and `self.criteria` (a tuple whose first \
item is the loss);
- define `learn(self, train_data)` that trains one epoch over (inputs, labels) batches;
- define `forward(self, x)` returning the logits."""


def task_for(dataset: str, input_shape: tuple[int, ...], num_classes: int, max_parameters: int = 0) -> Task:
    """The prompt's task for an evaluator dataset and shapes (input_shape (1, C, H, W) or (C, H, W))."""
    shape = tuple(input_shape[-3:])
    if len(shape) != 3:
        raise ValueError(f"input_shape {tuple(input_shape)} is not (1, C, H, W)")
    entry = datasets.lookup(dataset)
    known = _TASK_OF.get(entry.name) if entry else None
    if known and known.input_shape == shape and known.num_classes == num_classes:
        task = known
    else:
        c, h, w = shape
        generic = f"the {dataset} dataset ({h}×{w} images, {c} channels, {num_classes} classes)"
        description = entry.description if entry else generic
        task = Task(dataset, shape, num_classes, description)
    if max_parameters and max_parameters != task.max_parameters:
        task = Task(task.dataset, task.input_shape, task.num_classes, task.description, max_parameters)
    return task


def user_prompt(task: Task) -> str:
    c, h, w = task.input_shape
    return (
        f"Design an image classifier for {task.description}. Inputs are tensors of shape (N, {c}, {h}, {w}); "
        f"the output is {task.num_classes} logits per image.\n"
        "Use only standard convolution, pooling, normalisation, linear and activation layers; no pretrained "
        "weights and no external feature extractors. "
        f"Use at most {task.max_parameters:,} parameters and keep inference latency low.\n"
        f"{CONTRACT}\n"
        "Answer with one Python module in a single ```python block and nothing else: no data loading, no "
        "training script."
    )


def assistant_answer(code: str) -> str:
    return f"```python\n{code.strip()}\n```"


def chat_messages(task: Task, code: str | None = None) -> list[dict[str, str]]:
    """The chat for `task`; with `code`, the training pair (prompt and answer)."""
    messages = [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": user_prompt(task)},
    ]
    if code is not None:
        messages.append({"role": "assistant", "content": assistant_answer(code)})
    return messages


def prompt_sha256(messages: list[dict[str, str]] | None = None) -> str:
    """Identity of the template: the rendered prompts of every task; with `messages`, of that prompt."""
    if messages is not None:
        return hashlib.sha256(json.dumps(messages, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
    rendered = json.dumps({name: chat_messages(task) for name, task in sorted(TASKS.items())}, sort_keys=True)
    return hashlib.sha256(f"{PROMPT_VERSION}\n{rendered}".encode()).hexdigest()


# Edit modes (docs/method.md#generation-modes): delta asks for a unified diff against a parent program,
# factor for the whole program with one functional factor changed. Their prompts state the task in one
# line: the parent shows the file contract, and the full prompt's contract (~175 tokens) would not leave
# the tiny model's 1,536-token context room for parent and answer. The mutation engine's training pairs
# (tools/edit_pairs.py) are rendered with these same functions.
EDIT_PROMPT_VERSION = "edit-v1"
BASELINE_NAME = "model.py"
# The packaged baseline (a valid ~95k-parameter CNN) that delta / factor mode edit when none is given.
BASELINE_FILE = Path(__file__).parent / "data" / "baseline_cnn.py"


def edit_task(task: Task) -> str:
    c, h, w = task.input_shape
    return (
        f"Task: an image classifier for {task.description}; inputs (N, {c}, {h}, {w}), "
        f"{task.num_classes} logits, at most {task.max_parameters:,} parameters."
    )


def _edit_user(task: Task, parent: str, instruction: str) -> str:
    return (
        f"{edit_task(task)}\nHere is {BASELINE_NAME}, a working program for it:\n{assistant_answer(parent)}\n"
        f"{instruction}"
    )


DELTA_INSTRUCTION = (
    "Change its architecture into a new classifier that learns well; keep the file's interface. "
    f"Answer with a unified diff against {BASELINE_NAME} in a single ```diff block."
)


def delta_messages(task: Task, baseline: str, error: str = "", previous: str = "") -> list[dict[str, str]]:
    """Ask for a unified diff against `baseline`; with `error`, a re-prompt that shows `previous` (what
    the model answered, as much of it as the caller chose to echo) and what went wrong."""
    messages = [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": _edit_user(task, baseline, DELTA_INSTRUCTION)},
    ]
    if error:
        messages.append({"role": "assistant", "content": previous})
        messages.append(
            {
                "role": "user",
                "content": f"That diff could not be used: {error}\nAnswer with a corrected diff.",
            }
        )
    return messages


def factor_messages(task: Task, baseline: str, factor: str, description: str) -> list[dict[str, str]]:
    """SPARK (docs/method.md#generation-modes): an edit of the baseline scoped to one functional factor."""
    instruction = (
        f"Change only its {factor} ({description}); leave everything else as it is. "
        "Answer with the whole edited file in a single ```python block."
    )
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": _edit_user(task, baseline, instruction)},
    ]


# Region edits (archloop.regions, docs/edit-modes.md#region-edits): the parent with one site cut out, the
# model writes only the missing lines. A model whose tokenizer has the FIM tokens (the tiny model trained
# on region examples) sees the hole in them (fill-in-the-middle, Bavarian et al. 2022); any other model
# sees the parent in a ```python block with one marker line where the hole is, and answers in a block.
REGION_PROMPT_VERSION = "region-v1"
FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE = "<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"
FIM_TOKENS = (FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE)
HOLE_MARKER = "# >>> THE MISSING LINES GO HERE <<<"


def region_instruction(factor: str = "", description: str = "") -> str:
    if not factor:
        return "Write the missing lines of this program."
    return f"Write the missing lines so that the program changes only its {factor} ({description})."


def region_messages(
    task: Task, prefix: str, suffix: str, factor: str = "", description: str = "", fim: bool = True
) -> list[dict[str, str]]:
    """The parent around a hole (`prefix`, `suffix`), and what the missing lines must do (no factor: a
    fill-in-the-middle example of a corpus program, which keeps full generation's skill)."""
    instruction = region_instruction(factor, description)
    if fim:
        body = f"{FIM_PREFIX}{prefix}{FIM_SUFFIX}{suffix}{FIM_MIDDLE}"
    else:
        body = (
            f"{assistant_answer(prefix + HOLE_MARKER + chr(10) + suffix)}\n"
            "Answer with only the lines that replace the marker line, indented as in the file, in a single "
            "```python block."
        )
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": f"{edit_task(task)}\n{instruction}\n{body}"},
    ]


def region_answer(middle: str, fim: bool = True) -> str:
    """The answer of a region example: the missing lines as they are (FIM) or in a ```python block."""
    return middle if fim else f"```python\n{middle.rstrip(chr(10))}\n```"


def region_middle(response: str, fim: bool = True) -> str:
    """The lines a region answer holds: the text up to the end of the turn (FIM), else the first block."""
    if fim:
        return response
    match = _FENCE.search(response)
    return match.group(1) if match else response


def unified_diff(parent: str, child: str, context_lines: int = 1) -> str:
    """The unified diff from `parent` to `child` as delta mode's answers spell it (---/+++ model.py)."""
    lines = difflib.unified_diff(
        parent.splitlines(), child.splitlines(), BASELINE_NAME, BASELINE_NAME, n=context_lines, lineterm=""
    )
    return "\n".join(lines) + "\n"


def diff_answer(diff: str) -> str:
    return f"```diff\n{diff.strip(chr(10))}\n```"


def edit_pair(
    task: Task, mode: str, parent: str, child: str, factor: str = "", description: str = ""
) -> list:
    """The training chat of an edit from `parent` to `child` as the generator asks for it: delta (the
    unified diff as the answer) or factor (`factor` named in the prompt, the edited program as the answer)."""
    if mode == "delta":
        messages = delta_messages(task, parent)
        answer = diff_answer(unified_diff(parent, child))
    else:
        messages = factor_messages(task, parent, factor, description)
        answer = assistant_answer(child)
    return [*messages, {"role": "assistant", "content": answer}]


_FENCE = re.compile(r"```(?:python|py)?[ \t]*\n(.*?)(?:\n```|\Z)", re.DOTALL)


def extract_code(response: str) -> tuple[str, str]:
    """(code, how): the first ```python block (an unclosed one runs to the end: a truncated answer),
    else the whole response. `how` is "fence" or "raw"."""
    match = _FENCE.search(response)
    if match:
        return match.group(1).strip("\n") + "\n", "fence"
    return response.strip("\n") + "\n", "raw"
