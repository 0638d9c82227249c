"""The static screen and the contract check on hand-written and real LEMUR programs."""

from __future__ import annotations

import pytest

from archloop.lemur import iter_model_sources, lemur_wheel
from services.evaluator.screen import check_contract, parse_source, screen
from services.evaluator.tests.test_evaluation import GOOD as EVALUATION_GOOD

# The evaluator tests' model, plus constructs a model may use that the screen must let through.
GOOD = (
    "import torch.nn.functional as F\nfrom collections import OrderedDict\n"
    + EVALUATION_GOOD
    + """

def allowed_extras(model, x):
    blocks = nn.Sequential(OrderedDict(conv=nn.Conv2d(3, 4, 3), act=nn.ReLU()))
    nn.utils.clip_grad_norm_(model.parameters(), 3)
    print(type(model).__name__, torch.__version__, getattr(model, "body"))
    return F.adaptive_avg_pool2d(blocks(x), 1).flatten(1)
"""
)

SCREEN_CASES = {
    "import os\nos.system('id')": ("restricted_module", 2),
    "import os\nprint(os.environ)": ("restricted_module", 2),
    "import os\nos.environ['X'] = '1'": ("restricted_module", 2),
    "import os\nos.makedirs('d')": ("restricted_module", 2),
    "import os\nrun(os)": ("restricted_module", 2),
    "import os.path as osp\nrun(osp)": ("restricted_module", 2),
    "from os import system\nsystem('id')": ("restricted_module", 1),
    "import os as o\no.fork()": ("restricted_module", 2),
    "import os\nos.path.os.system('id')": ("forbidden_attribute", 2),
    "from os import *": ("import", 1),
    "from numpy import *": ("import", 1),
    "import gc\ngc.get_objects()": ("restricted_module", 2),
    "import time\ntime.sleep.__globals__": ("dunder_attribute", 2),
    "import subprocess": ("import", 1),
    "from socket import socket": ("import", 1),
    "import ctypes": ("import", 1),
    "import importlib\nimportlib.import_module('os')": ("import", 1),
    "__import__('os').system('id')": ("forbidden_name", 1),
    "x = open('/etc/passwd').read()": ("forbidden_name", 1),
    "exec('import os')": ("forbidden_name", 1),
    "eval('1+1')": ("forbidden_name", 1),
    "code = compile('1', 'f', 'eval')": ("forbidden_name", 1),
    "print(().__class__.__bases__[0].__subclasses__())": ("dunder_attribute", 1),
    "f = lambda: 0\nprint(f.__globals__)": ("dunder_attribute", 2),
    "print(getattr(int, '__subclasses__')())": ("dunder_name", 1),
    "import torch\ntorch.hub.load('x/y', 'm')": ("forbidden_attribute", 2),
    "import torch\nw = torch.load('weights.pt')": ("forbidden_attribute", 2),
    "from torch import hub": ("forbidden_attribute", 1),
    "import torch.multiprocessing as mp": ("import", 1),
    "import torch as t\nt.save({}, '/tmp/x')": ("forbidden_attribute", 2),
    "import numpy as np\nnp.load('x.npy')": ("forbidden_attribute", 2),
    "import torch\ntorch._C._set_print_stack_traces_on_fatal_signal(True)": ("private_torch", 2),
    "import torch\ntorch.ops.aten.add": ("forbidden_attribute", 2),
    "from . import sibling": ("import", 1),
    "from torch import *": ("import", 1),
    "import sys\nsys.modules": ("import", 1),
    "g = globals()": ("forbidden_name", 1),
    "import torch\ntorch.os.system('id')": ("forbidden_attribute", 2),
    "import typing\ntyping.sys.modules['os']": ("forbidden_attribute", 2),
    "import torch.nn.functional as F\nF.torch.os.getcwd()": ("forbidden_attribute", 2),
    "def forward(self, input):\n    return input": None,
    "breakpoint()": ("forbidden_name", 1),
}

HARMLESS = [  # what real LEMUR models do (FractalNet: os, gc, traceback) and the screen now lets through
    "import gc\ngc.collect()",
    "import os\nroot = os.path.join(os.environ.get('DATA', '.'), 'x')\nn = os.cpu_count()",
    "import os.path as osp\nosp.exists('x')",
    "from os.path import join\njoin('a', 'b')",
    "import traceback\ntry:\n    pass\nexcept Exception:\n    traceback.print_exc()",
    "import time\nstarted = time.perf_counter()",
    "from collections import *\nd = OrderedDict()",
    "class A:\n    def name(self):\n        return self.__class__.__name__ + self.__module__",
    "def scaled(time, gc):\n    return time.real * gc.imag",  # locals that share a restricted module's name
    "from torch.nn.parameter import Parameter\nw = Parameter(torch.zeros(3))",  # 6 LEMUR files (rag-*)
]


def test_a_clean_model_passes_screen_and_contract() -> None:
    tree = parse_source(GOOD)
    assert screen(tree) == []
    assert check_contract(tree).ok


@pytest.mark.parametrize(("source", "expected"), list(SCREEN_CASES.items()))
def test_hostile_code_is_reported_with_rule_and_line(source: str, expected: tuple[str, int] | None) -> None:
    violations = screen(parse_source(source))
    if expected is None:
        assert violations == []
    else:
        assert (violations[0].rule, violations[0].line) == expected, violations


@pytest.mark.parametrize("source", HARMLESS)
def test_harmless_housekeeping_passes(source: str) -> None:
    assert screen(parse_source(source)) == []


def test_every_violation_is_reported() -> None:
    violations = screen(
        parse_source("import os\nimport sys\nx = open('f')\nprint(x.__dict__)\nos.remove('f')\n")
    )
    assert [(v.rule, v.line) for v in violations] == [
        ("import", 2), ("forbidden_name", 3), ("dunder_attribute", 4), ("restricted_module", 5),
    ]  # fmt: skip


def test_the_old_policy_still_builds_the_old_corpora() -> None:
    from services.evaluator.screen import POLICY_V1_PATH, Policy

    old = Policy.load(POLICY_V1_PATH)
    assert [v.rule for v in screen(parse_source("import gc\ngc.collect()"), old)] == ["import"]


def test_nul_bytes_are_a_parse_error() -> None:
    with pytest.raises(SyntaxError):
        parse_source("x = 1\x00")


@pytest.mark.parametrize(
    ("source", "problem"),
    [
        ("class Net:\n    pass\n", "supported_hyperparameters"),
        ("def supported_hyperparameters():\n    return set()\n", "no class Net"),
        (GOOD.replace("def learn", "def learn_epoch"), "no method learn"),
        (GOOD.replace("def __init__(self, in_shape, out_shape, prm, device)", "def __init__(self)"),
         "Net.__init__ takes (self)"),
    ],
)  # fmt: skip
def test_contract_problems_are_named(source: str, problem: str) -> None:
    report = check_contract(parse_source(source))
    assert not report.ok
    assert any(problem in p for p in report.problems), report.problems


def test_lemur_models_mostly_satisfy_the_contract_and_the_policy() -> None:
    checked = contract_ok = screened_ok = 0
    for i, (_, source) in enumerate(iter_model_sources(lemur_wheel())):
        if i % 7:
            continue  # every 7th file: ~1,500 across all families
        checked += 1
        try:
            tree = parse_source(source)
        except SyntaxError:
            continue
        if check_contract(tree).ok:
            contract_ok += 1
            screened_ok += not screen(tree)
    assert contract_ok / checked > 0.9  # the corpus is written to the contract
    assert screened_ok / contract_ok > 0.6  # most of it uses nothing the policy forbids
