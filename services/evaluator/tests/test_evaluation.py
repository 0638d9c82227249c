"""The evaluator end to end in its real sandbox: verdicts, determinism, and hostile programs.

Hostile programs are run two ways: through Evaluator.evaluate (the static screen stops most of them)
and straight through Sandbox.run with the screen bypassed, so the sandbox itself is tested as the
second line of defence.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from archloop.lemur import iter_model_sources, lemur_wheel
from services.evaluator.evaluation import Evaluator, Protocol
from services.evaluator.sandbox import UID_RANGE, Sandbox

pytestmark = pytest.mark.slow

GOOD = """
import torch
import torch.nn as nn


def supported_hyperparameters():
    return {"lr", "momentum"}


class Net(nn.Module):
    def __init__(self, in_shape, out_shape, prm, device):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_shape[1], 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(4), nn.Flatten(),
            nn.Linear(32 * 4 * 4, out_shape[0]),
        )

    def train_setup(self, prm):
        self.criteria = (nn.CrossEntropyLoss(),)
        self.optimizer = torch.optim.SGD(self.parameters(), lr=prm["lr"], momentum=prm["momentum"])

    def learn(self, train_data):
        for x, y in train_data:
            self.optimizer.zero_grad()
            loss = self.criteria[0](self(x), y)
            loss.backward()
            self.optimizer.step()

    def forward(self, x):
        return self.body(x)
"""

# Real LEMUR files (nn-dataset 2.1.2) that pass the screen and the contract, chosen by
# evaluating a shuffled sample on digits: two that fit the budget and learn, and three that fail
# in the ways the statuses name.
LEMUR_EXPECTED = {
    "alt-nn4-7fb211a89133a73eec56d047c3885973": "OK",
    "rl-init1-f3c760a7925c17c31db153e09a0b903e": "OK",
    "ga-mut-724": "OVER_BUDGET",
    "alt-nn2-e7121a00551229fef2ce116056f3b40a": "WRONG_OUTPUT_SHAPE",
    "ast-dimension-AlexNet-9fe9771e1ac501507b637fade7f75de9": "FORWARD_ERROR",
}


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    box = Sandbox(tmp_path_factory.mktemp("evaluator") / "jobs")
    box.start()
    if box.network_isolation != "namespace" or not box.is_root:
        box.stop()
        pytest.skip("the sandbox tests need root (network and mount namespaces, a dedicated uid)")
    yield box
    box.stop()


@pytest.fixture(scope="module")
def evaluator(sandbox, tmp_path_factory) -> Evaluator:
    return Evaluator(sandbox, tmp_path_factory.mktemp("data"))


def test_a_small_model_learns_and_is_deterministic(evaluator) -> None:
    protocol = Protocol(epochs=3, learning_rate=0.05)  # ~0.9 validation accuracy on digits
    first = evaluator.evaluate("good", GOOD, protocol, want_structural_tokens=True)
    assert first.status == "OK", first.stages
    assert first.accuracy > 0.6  # chance is 0.1
    assert len(first.epoch_accuracies) == 3
    # the architecture graph recorded in the sandbox, hashed by the service
    assert first.structural_tokens[0].startswith("d1:") and len(first.architecture["wiring_hash"]) == 32
    assert json.loads(first.architecture["graph"])["wiring"][:2] == ["input", "conv"]
    assert [s.stage for s in first.stages] == [
        "parse", "static_screen", "contract", "instantiate", "forward", "param_budget", "train", "accuracy",
    ]  # fmt: skip
    second = evaluator.evaluate("good", GOOD, protocol)
    assert (second.accuracy, second.train_loss) == (first.accuracy, first.train_loss)
    other_seed = evaluator.evaluate("good", GOOD, Protocol(epochs=3, learning_rate=0.05, seed=1))
    assert other_seed.accuracy != first.accuracy


def test_real_lemur_models_get_the_right_verdicts(evaluator) -> None:
    sources = dict(iter_model_sources(lemur_wheel()))
    for name, expected in LEMUR_EXPECTED.items():
        result = evaluator.evaluate(name, sources[name], Protocol(epochs=2, time_limit_seconds=120))
        assert result.status == expected, (name, result.stages[-1])
        if expected == "OK":
            assert result.accuracy > 0.2 and 0 < result.param_count <= 500_000


HEAD = "nn.Linear(32 * 4 * 4, out_shape[0])"
LOSS = "loss = self.criteria[0](self(x), y)"
FAILURES = [
    ("parse", lambda c: c.replace("def forward(self, x):", "def forward(self, x)"), "PARSE_ERROR", "parse"),
    ("unsafe", lambda c: "import subprocess\n" + c, "UNSAFE", "static_screen"),
    ("contract", lambda c: c.replace("def learn", "def fit"), "CONTRACT_ERROR", "contract"),
    ("init", lambda c: c.replace("super().__init__()", "super().__init__()\n        1 / 0"),
     "INSTANTIATE_ERROR", "instantiate"),
    ("shape", lambda c: c.replace(HEAD, "nn.Linear(512, 7)"), "WRONG_OUTPUT_SHAPE", "forward"),
    ("budget", lambda c: c.replace(HEAD, "nn.Linear(512, 2000), nn.Linear(2000, 10)"), "OVER_BUDGET",
     "param_budget"),
    ("nan", lambda c: c.replace(LOSS, LOSS.replace("self(x)", "self(x) * float('nan')")), "NON_FINITE_LOSS",
     "train"),
    ("train", lambda c: c.replace("self.optimizer.step()", "self.optimizer.step(1, 2, 3)"), "TRAIN_ERROR",
     "train"),
    ("loop", lambda c: c.replace("return self.body(x)", "while True:\n            pass"), "TIMEOUT",
     "forward"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "edit", "status", "stage"), FAILURES, ids=[f[0] for f in FAILURES])
def test_each_failure_gets_its_status_and_stage(evaluator, name, edit, status, stage) -> None:
    started = time.monotonic()
    result = evaluator.evaluate(name, edit(GOOD), Protocol(time_limit_seconds=8))
    assert (result.status, result.stages[-1].stage) == (status, stage), result.stages[-1]
    assert result.stages[-1].message.startswith(stage)
    assert "/work/" not in result.stages[-1].message and len(result.stages[-1].message) <= 500
    assert time.monotonic() - started < 8 + 5


LAZY = (
    GOOD.replace(
        "nn.Conv2d(in_shape[1], 16, 3, padding=1)", "nn.LazyConv2d(16, 3, padding=1), nn.LazyBatchNorm2d()"
    )
    .replace("nn.Conv2d(16, 32, 3, padding=1)", "nn.LazyConv2d(32, 3, padding=1)")
    .replace(HEAD, "nn.LazyLinear(out_shape[0])")
)


def test_shape_inferring_layers_train_and_are_counted_after_the_forward_pass(evaluator) -> None:
    eager = evaluator.evaluate("eager", GOOD, Protocol(time_limit_seconds=60))
    lazy = evaluator.evaluate("lazy", LAZY, Protocol(time_limit_seconds=60))
    assert eager.status == lazy.status == "OK", lazy.stages[-1]
    # the same network as GOOD plus one batch norm over 16 channels (weight and bias)
    assert lazy.param_count == eager.param_count + 2 * 16
    assert lazy.accuracy > 0.2
    over = evaluator.evaluate(
        "lazy-over", LAZY.replace("nn.LazyLinear(out_shape[0])", "nn.LazyLinear(4000), nn.LazyLinear(10)"),
        Protocol(time_limit_seconds=60),
    )  # fmt: skip
    assert over.status == "OVER_BUDGET" and over.param_count > 500_000


def test_a_shape_inferring_layer_forward_never_calls_gets_its_own_status(evaluator) -> None:
    unused = LAZY.replace("super().__init__()", "super().__init__()\n        self.spare = nn.LazyLinear(64)")
    result = evaluator.evaluate("lazy-unused", unused, Protocol(time_limit_seconds=60))
    last = result.stages[-1]
    assert (result.status, last.stage) == ("UNUSED_LAZY_LAYER", "param_budget"), last
    assert "never called by forward" in last.message and "spare (LazyLinear)" in last.message


def _bypass(sandbox: Sandbox, body: str, time_limit: float = 8.0):
    """Run `body` inside Net.__init__ through the sandbox alone (no static screen)."""
    code = GOOD.replace(
        "super().__init__()",
        "super().__init__()\n" + "\n".join("        " + line for line in body.splitlines()),
    )
    job = {"code": code, "structural_tokens": False,
           "protocol": {**Protocol(time_limit_seconds=time_limit).__dict__, "threads": 1}}  # fmt: skip
    dataset = {"name": "digits", "validation_fraction": 0.2, "seed": 0, "max_train_images": 0, "data_dir": "",
               "allow_download": False}  # fmt: skip
    started = time.monotonic()
    outcome = sandbox.run(job, dataset, time_limit)
    return outcome, time.monotonic() - started


def _instantiate_message(outcome) -> str:
    return (outcome.result or {}).get("stages", [{}])[-1].get("message", "")


def _sandbox_processes() -> list[psutil.Process]:
    """Live processes of the sandbox uids (zombies hold no resources and are reaped by the template)."""
    time.sleep(0.2)
    return [
        p for p in psutil.process_iter(["uids", "status"])
        if p.info["uids"] and 61000 <= p.info["uids"].real < 61000 + UID_RANGE
        and p.info["status"] != psutil.STATUS_ZOMBIE
    ]  # fmt: skip


def test_sandbox_has_no_network(sandbox) -> None:
    outcome, _ = _bypass(sandbox, "import socket\nsocket.socket().connect(('127.0.0.1', 22))")
    assert outcome.network_isolation == "namespace"
    assert "Network is unreachable" in _instantiate_message(outcome)


def test_sandbox_writes_nothing_outside_its_directory(sandbox, tmp_path) -> None:
    targets = [tmp_path / "escaped.txt", Path("/tmp/archloop-escaped.txt"), Path("/dev/shm/archloop-escaped")]
    # /tmp and /dev/shm are private, empty tmpfs mounts inside the sandbox: writing there works but
    # nothing reaches the host's directories.
    _bypass(sandbox, "\n".join(f"open({str(t)!r}, 'w').write('x')" for t in targets[1:]))
    assert not any(t.exists() for t in targets)
    denied, _ = _bypass(sandbox, f"open({str(targets[0])!r}, 'w').write('x')")
    assert "Permission denied" in _instantiate_message(denied) or "No such file" in _instantiate_message(
        denied
    )
    assert not targets[0].exists()


def test_sandbox_environment_is_scrubbed(sandbox, monkeypatch) -> None:
    os.environ["ARCHLOOP_TEST_SECRET"] = "hunter2"
    try:
        outcome, _ = _bypass(sandbox, "import os\nprint(sorted(os.environ.items()))")
    finally:
        del os.environ["ARCHLOOP_TEST_SECRET"]
    assert "PATH" in outcome.stdout_tail and "hunter2" not in outcome.stdout_tail


@pytest.mark.parametrize(
    ("body", "check"),
    [
        ("import os\nos._exit(3)", lambda o: o.exit_code == 3 and o.result is None),
        ("import ctypes\nctypes.string_at(0)", lambda o: o.signal_number == 11),
        ("import time\ntime.sleep(60)", lambda o: o.timed_out),
        ("x = bytearray(16 * 2**30)", lambda o: "MemoryError" in _instantiate_message(o)),
        ("print('x' * 2**20 * 100)", lambda o: o.result is not None and len(o.stdout_tail) <= 4100),
        ("import os\nwhile True:\n    os.fork()", lambda o: o.timed_out or o.result is not None),
    ],
    ids=["os_exit", "segfault", "sleep", "memory_bomb", "huge_stdout", "fork_bomb"],
)
def test_sandbox_survives_hostile_programs(sandbox, body, check) -> None:
    outcome, seconds = _bypass(sandbox, body, time_limit=6.0)
    assert check(outcome), outcome
    assert seconds < 6.0 + 5
    assert not _sandbox_processes()


def test_processes_that_outlive_the_candidate_are_killed(sandbox) -> None:
    body = "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(300)\n"
    outcome, _ = _bypass(sandbox, body)
    assert outcome.result is not None
    assert not _sandbox_processes()


def _spin_after(anchor: str, indent: int) -> Callable[[str], str]:
    pad = " " * indent
    return lambda code: code.replace(anchor, f"{anchor}\n{pad}while True:\n{pad}    pass")


SLOW_BATCH = (
    LOSS + "\n            for _ in range(30):\n                torch.randn(400, 400) @ torch.randn(400, 400)"
)
STALL_AFTER_5 = """self.optimizer.step()
            self.batches = getattr(self, "batches", 0) + 1
            while self.batches > 5:
                pass"""
STALL_IN_EVAL = """def forward(self, x):
        while not self.training and hasattr(self, "optimizer"):
            pass"""
HANGS = [  # a spin at each step ends at that step's deadline (4 s), long before the time limit (60 s)
    ("init", _spin_after("super().__init__()", 8), 1, "STAGE_TIMEOUT", "instantiate"),
    ("module", lambda c: c + "\nwhile True:\n    pass\n", 1, "STAGE_TIMEOUT", "instantiate"),
    ("forward", _spin_after("def forward(self, x):", 8), 1, "STAGE_TIMEOUT", "forward"),
    ("setup", _spin_after("def train_setup(self, prm):", 8), 1, "STAGE_TIMEOUT", "train"),
    ("first_batch", _spin_after("self.optimizer.step()", 12), 1, "NO_PROGRESS", "train"),
    # 100 epochs of ~0.1 s batches: the first batches project it far past 60 s
    ("too_slow", lambda c: c.replace(LOSS, SLOW_BATCH), 100, "TOO_SLOW", "train"),
    # stalls after its first batches (at the batch deadline, 4 s, after the last batch it finished)
    (
        "after_5_batches",
        lambda c: c.replace("self.optimizer.step()", STALL_AFTER_5),
        1,
        "NO_PROGRESS",
        "train",
    ),
    # stalls in the accuracy pass after training (eval mode, once train_setup has run)
    (
        "accuracy_pass",
        lambda c: c.replace("def forward(self, x):", STALL_IN_EVAL),
        1,
        "NO_PROGRESS",
        "accuracy",
    ),
]


@pytest.mark.parametrize(("name", "edit", "epochs", "status", "stage"), HANGS, ids=[h[0] for h in HANGS])
def test_a_hang_ends_at_its_stage_deadline_not_the_time_limit(
    sandbox, tmp_path, name, edit, epochs, status, stage
) -> None:
    from services.evaluator.watchdog import Deadlines

    evaluator = Evaluator(sandbox, tmp_path, deadlines=Deadlines(4, 4, 4, 4, 3, batch_seconds=4))
    started = time.monotonic()
    result = evaluator.evaluate(name, edit(GOOD), Protocol(time_limit_seconds=60, epochs=epochs))
    assert time.monotonic() - started < 30, "the verdict waited for the time limit"
    # its own status, not TIMEOUT: the watchdog decided, not the 60 s time limit
    assert (result.status, result.stages[-1].stage) == (status, stage), result.stages[-1]
    assert result.stages[-1].message.startswith(stage)
    assert not _sandbox_processes()


def test_a_loss_named_criterion_is_watched_too(evaluator) -> None:
    """LEMUR models keep their loss in `criteria` or `criterion`; both train and both are watched (184 of
    2,151 corpus programs were TRAIN_ERROR while only `criteria` was looked for)."""
    code = GOOD.replace("self.criteria", "self.criterion")
    ok = evaluator.evaluate("criterion", code, Protocol())
    assert ok.status == "OK" and ok.train_loss > 0, ok.stages[-1]
    broken_loss = LOSS.replace("criteria", "criterion")
    nan = code.replace(broken_loss, broken_loss.replace("self(x)", "self(x) * float('nan')"))
    assert evaluator.evaluate("criterion-nan", nan, Protocol()).status == "NON_FINITE_LOSS"
