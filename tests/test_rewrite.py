"""Program rewrites (archloop.rewrite) and the check that a rewrite is the same network (forwardcheck)."""

from __future__ import annotations

import ast

import pytest

from archloop import forwardcheck, rewrite
from archloop.lemur import iter_model_sources, lemur_wheel

CNN = """\
import torch
import torch.nn as nn


def supported_hyperparameters():
    return {'lr', 'momentum'}


class Net(nn.Module):
    def __init__(self, in_shape, out_shape, prm, device):
        super().__init__()
        self.device = device
        self.features = nn.Sequential(
            nn.Conv2d(in_shape[1], 64, 3, padding=1),  # positional sizes
            nn.BatchNorm2d(64),
            nn.ReLU(),
            nn.Conv2d(in_channels=64, out_channels=128, kernel_size=3, stride=2),
            nn.BatchNorm2d(num_features=128, momentum=0.2),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
        )
        self.head = nn.Sequential(
            nn.Flatten(), torch.nn.Linear(128, 256), nn.ReLU(), nn.Linear(256, out_shape[0])
        )

    def forward(self, x):
        return self.head(self.features(x))

    def train_setup(self, prm):
        self.criteria = (nn.CrossEntropyLoss(),)
        self.optimizer = torch.optim.SGD(self.parameters(), lr=prm['lr'], momentum=prm['momentum'])

    def learn(self, train_data):
        for inputs, labels in train_data:
            self.optimizer.zero_grad()
            self.criteria[0](self(inputs), labels).backward()
            self.optimizer.step()
"""

INIT_LOOP = CNN.replace(
    "    def forward(self, x):",
    "        for m in self.modules():\n"
    "            if isinstance(m, nn.Conv2d):\n"
    "                nn.init.kaiming_normal_(m.weight)\n\n"
    "    def forward(self, x):",
)


def _calls(code: str) -> list[str]:
    return [
        ast.unparse(n) for n in ast.walk(ast.parse(code)) if isinstance(n, ast.Call) and rewrite.layer_name(n)
    ]


def test_the_lazy_rewrite_drops_exactly_the_input_sizes() -> None:
    lazy, count = rewrite.to_lazy(CNN)
    assert count == 6
    calls = _calls(lazy)
    assert "nn.LazyConv2d(64, 3, padding=1)" in calls
    assert "nn.LazyConv2d(out_channels=128, kernel_size=3, stride=2)" in calls
    assert "nn.LazyBatchNorm2d()" in calls and "nn.LazyBatchNorm2d(momentum=0.2)" in calls
    assert "torch.nn.LazyLinear(256)" in calls and "nn.LazyLinear(out_shape[0])" in calls
    assert "# positional sizes" not in lazy  # canonical text: ast.unparse
    assert rewrite.lazy_layer_count(lazy) == 6 and rewrite.lazy_layer_count(CNN) == 0


def test_calls_the_rewrite_cannot_read_are_left_alone() -> None:
    code = (
        "import torch.nn as nn\nargs = (3, 8, 3)\nconv = nn.Conv2d(*args)\n"
        "fc = nn.Linear(**dict(in_features=2, out_features=3))\ngn = nn.GroupNorm(2, 8)\n"
    )
    lazy, count = rewrite.to_lazy(code)
    assert count == 0 and lazy == rewrite.canonical(code)


def test_width_scaling_divides_literal_widths_but_never_the_logits() -> None:
    lazy, _ = rewrite.to_lazy(CNN.replace("nn.Linear(256, out_shape[0])", "nn.Linear(256, 10)"))
    scaled, changed = rewrite.scale_widths(lazy, 2)
    calls = _calls(scaled)
    assert changed == 3
    assert "nn.LazyConv2d(16, 3, padding=1)" in calls and "torch.nn.LazyLinear(64)" in calls
    assert "nn.LazyConv2d(out_channels=32, kernel_size=3, stride=2)" in calls
    assert "nn.LazyLinear(10)" in calls  # the last linear layer writes the logits
    tiny, _ = rewrite.scale_widths(lazy, 10)
    assert "nn.LazyConv2d(1, 3, padding=1)" in _calls(tiny)  # never below one channel
    assert rewrite.scale_widths(lazy, 0) == (lazy, 0)
    with pytest.raises(ValueError, match="shift"):
        rewrite.scale_widths(lazy, -1)


def test_a_proven_lazy_rewrite_has_the_same_parameters_and_output() -> None:
    lazy, _ = rewrite.to_lazy(CNN)
    proven = forwardcheck.check_forward(lazy, (3, 32, 32), 10, reference=CNN)
    plain = forwardcheck.check_forward(CNN, (3, 32, 32), 10)
    assert proven.ok and proven.parameters == plain.parameters > 0, proven


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        (lambda lazy: lazy.replace("LazyLinear(256)", "LazyLinear(255)"), "compare: "),  # another network
        (
            lambda lazy: lazy.replace(
                "nn.LazyBatchNorm2d(momentum=0.2)", "nn.LazyBatchNorm2d(momentum=0.2, affine=False)"
            ),
            "compare: ",
        ),
        (
            lambda lazy: lazy.replace("return self.head(", "return 2 * self.head("),
            "compare: the output differs",
        ),
    ],
)
def test_a_rewrite_that_changes_the_network_is_not_proven(edit, reason: str) -> None:
    lazy, _ = rewrite.to_lazy(CNN)
    result = forwardcheck.check_forward(edit(lazy), (3, 32, 32), 10, reference=CNN)
    assert not result.ok and result.reason.startswith(reason), result


def test_an_init_loop_over_weights_fails_the_lazy_rewrite_with_its_reason() -> None:
    lazy, _ = rewrite.to_lazy(INIT_LOOP)
    result = forwardcheck.check_forward(lazy, (3, 32, 32), 10, reference=INIT_LOOP)
    assert not result.ok and result.reason.startswith("instantiate: RuntimeError: Can't access"), result


def test_lemur_programs_rewrite_identically_in_worker_processes() -> None:
    """A sample of real LEMUR files through the worker pool the corpus build uses."""
    picked = []
    for name, code in iter_model_sources(lemur_wheel()):
        if name.startswith(("rag-", "alt-")) and len(code) < 6000:
            lazy, count = rewrite.to_lazy(code)
            if count:
                picked.append((name, code, lazy))
        if len(picked) == 6:
            break
    items = [(name, lazy, (3, 32, 32), 10, code) for name, code, lazy in picked]
    results = forwardcheck.check_many(items)
    proven = [name for name, *_ in items if results[name].ok]
    assert len(proven) >= 4, {k: r.reason for k, r in results.items()}
    for name, code, _lazy in picked:
        if results[name].ok:
            assert results[name].parameters == forwardcheck.check_forward(code, (3, 32, 32), 10).parameters
