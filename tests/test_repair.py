"""Post-generation repairs (archloop.repair): each one alone, and what is left alone."""

from __future__ import annotations

import pytest

from archloop.repair import repair

NET = """\
import torch
import torch.nn as nn


class Net(nn.Module):
    def forward(self, x):
        return torch.relu(x)
"""


@pytest.mark.parametrize(
    ("code", "applied", "expect"),
    [
        (NET.replace("import torch.nn as nn\n", ""), ["imports"], "import torch.nn as nn"),
        (NET.replace("torch.relu(x)", "F.relu(x)"), ["imports"], "import torch.nn.functional as F"),
        (NET.replace("class Net", "class Classifier"), ["class_name"], "class Net(nn.Module)"),
        (NET + "\nlayer = nn.Linear(3, 4)\n", ["lazy"], "nn.LazyLinear(4)"),
    ],
    ids=["nn import", "functional import", "class name", "lazy layers"],
)
def test_each_repair_applies_alone(code: str, applied: list[str], expect: str) -> None:
    fixed = repair(code)
    assert fixed.applied == applied and fixed.changed and expect in fixed.code


@pytest.mark.parametrize(
    "code",
    [
        NET,  # nothing to do
        "def broken(:\n",  # does not parse: left for the evaluator to reject
        NET + "\nclass Other(nn.Module):\n    pass\n",  # Net exists: no rename
        NET.replace("class Net", "class A") + "\nclass B(nn.Module):\n    pass\n",  # two candidates: no guess
    ],
    ids=["valid", "syntax error", "net exists", "ambiguous"],
)
def test_programs_with_nothing_safe_to_repair_are_returned_unchanged(code: str) -> None:
    fixed = repair(code)
    assert not fixed.changed and fixed.code == code
