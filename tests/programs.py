"""Candidate programs for the whole-loop tests that need the loop to admit, reject and fail candidates
without a large model: the generator's replay backend serves them (services/generator/replay.py).

`family(n)` writes n valid classifiers that differ in structure (blocks, widths, activation, pooling,
normalisation, head, optimiser, names), so their code is far apart (token 10-shingle Jaccard well
below the 0.90 novelty threshold); `broken()` adds programs that fail at parse and at forward.
"""

from __future__ import annotations

import itertools
from pathlib import Path

ACTIVATIONS = ("nn.ReLU()", "nn.GELU()", "nn.SiLU()", "nn.LeakyReLU(0.1)", "nn.ELU()", "nn.Hardswish()")
POOLS = ("nn.MaxPool2d(2)", "nn.AvgPool2d(2)")
NORMS = ("nn.BatchNorm2d({c})", "nn.GroupNorm(4, {c})")
NAMES = (("stem", "body", "head"), ("encoder", "trunk", "out"), ("front", "middle", "tail"))
OPTIMISERS = (
    "torch.optim.SGD(self.parameters(), lr=prm['lr'], momentum=prm['momentum'])",
    "torch.optim.AdamW(self.parameters(), lr=prm['lr'] * 0.1)",
)


def program(index: int) -> str:
    """The index-th member of the family (deterministic)."""
    combos = list(itertools.product(range(len(ACTIVATIONS)), range(len(POOLS)), range(len(NORMS)), (2, 3)))
    act, pool, norm, blocks = combos[(index * 7) % len(combos)]
    first, second, third = NAMES[index % len(NAMES)]
    width = 8 + 4 * (index % 5)
    layers = []
    channels = "in_shape[1]"
    for b in range(blocks):
        out = width * (2**b)
        kernel, padding = (3, 1) if b % 2 == 0 else (5, 2)
        layers += [
            f"nn.Conv2d({channels}, {out}, kernel_size={kernel}, padding={padding})",
            NORMS[norm].format(c=out),
            ACTIVATIONS[act],
        ]
        if b < blocks - 1:
            layers.append(POOLS[pool])
        channels = str(out)
    body = ",\n            ".join(layers)
    hidden = 16 + 8 * (index % 3)
    head = (
        f"nn.Linear({channels}, {hidden}),\n            {ACTIVATIONS[(act + 1) % len(ACTIVATIONS)]},\n"
        f"            nn.Dropout(prm['dropout']),\n            nn.Linear({hidden}, out_shape[0])"
        if index % 2
        else f"nn.Dropout(prm['dropout']),\n            nn.Linear({channels}, out_shape[0])"
    )
    return f"""import torch
import torch.nn as nn


def supported_hyperparameters():
    return {{'lr', 'momentum', 'dropout'}}


class Net(nn.Module):
    def __init__(self, in_shape, out_shape, prm, device):
        super().__init__()
        self.device = device
        self.{first} = nn.Sequential(
            {body},
        )
        self.{second} = nn.AdaptiveAvgPool2d({1 + index % 2})
        self.{third} = nn.Sequential(
            nn.Flatten(),
            {head.replace(f"nn.Linear({channels},", f"nn.Linear({channels} * {(1 + index % 2) ** 2},", 1)},
        )

    def forward(self, x):
        return self.{third}(self.{second}(self.{first}(x)))

    def train_setup(self, prm):
        self.to(self.device)
        self.criteria = (nn.CrossEntropyLoss().to(self.device),)
        self.optimizer = {OPTIMISERS[index % 2]}

    def learn(self, train_data):
        self.train()
        for inputs, labels in train_data:
            inputs, labels = inputs.to(self.device), labels.to(self.device)
            self.optimizer.zero_grad()
            loss = self.criteria[0](self(inputs), labels)
            loss.backward()
            self.optimizer.step()
"""


def broken() -> dict[str, str]:
    """Programs that fail: at parse, and at forward (channel counts that do not line up)."""
    forward_error = program(0).replace("nn.Conv2d(in_shape[1], 8,", "nn.Conv2d(in_shape[1] + 5, 8,")
    assert forward_error != program(0)
    return {"parse_error": "import torch\nclass Net(nn.Module:\n    pass\n", "forward_error": forward_error}


def write_family(folder: Path, n: int, with_broken: bool = True) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"valid_{i:03d}.py"
        path.write_text(program(i))
        paths.append(path)
    if with_broken:
        for name, code in broken().items():
            path = folder / f"{name}.py"
            path.write_text(code)
            paths.append(path)
    return paths
