"""The corpus's forward stage: checks run in worker processes, survive hangs and crashes, and the packaged
table for the pinned LEMUR wheel agrees with checks run now."""

from __future__ import annotations

import hashlib

from archloop import forwardcheck
from archloop.lemur import iter_model_sources, lemur_wheel
from archloop.prompts import BASELINE_FILE as BASELINE

SHAPE, CLASSES = (3, 32, 32), 10

HANGS = BASELINE.read_text().replace(
    "        super().__init__()\n", "        super().__init__()\n        while True:\n            pass\n", 1
)
CRASHES = "import os\nos._exit(3)\n"
WRONG_SHAPE = BASELINE.read_text().replace("nn.Linear(128, out_shape[0])", "nn.Linear(128, 7)")
# .item() cannot run on the meta device: decided by the real CPU check instead
DATA_DEPENDENT = BASELINE.read_text().replace(
    "        x = self.features(x)\n",
    "        x = self.features(x)\n        if float(x.mean().item()) > 1e9:\n            x = x * 0\n",
)


def test_the_pool_checks_on_meta_then_cpu_and_survives_hangs_and_crashes() -> None:
    items = [
        ("ok", BASELINE.read_text(), SHAPE, CLASSES),
        ("mnist", BASELINE.read_text(), (1, 28, 28), CLASSES),
        ("hangs", HANGS, SHAPE, CLASSES),
        ("crashes", CRASHES, SHAPE, CLASSES),
        ("wrong-shape", WRONG_SHAPE, SHAPE, CLASSES),
        ("data-dependent", DATA_DEPENDENT, SHAPE, CLASSES),
        ("after-the-crash", BASELINE.read_text(), SHAPE, CLASSES),
    ]
    results = forwardcheck.check_many(items, workers=2, timeout_seconds=3)
    assert results["ok"] == forwardcheck.ForwardResult(True, 94_986, "", "meta")
    assert results["mnist"].ok and results["mnist"].parameters == 94_410
    assert not results["hangs"].ok and results["hangs"].reason.startswith("timeout")
    assert not results["crashes"].ok and results["crashes"].reason.startswith("crash")
    assert not results["wrong-shape"].ok and "expected (2, 10)" in results["wrong-shape"].reason
    assert results["data-dependent"].ok and results["data-dependent"].device == "cpu"
    assert results["after-the-crash"].ok


def test_the_packaged_table_agrees_with_checks_run_now() -> None:
    table = forwardcheck.load_table()
    assert len(table) > 8000
    passed = sorted(sha for sha, r in table.items() if r["cifar-10"].ok)[:5]
    failed = sorted(sha for sha, r in table.items() if not r["cifar-10"].ok)[:5]
    wanted = set(passed + failed)
    codes = {}
    for _name, code in iter_model_sources(lemur_wheel()):
        sha = hashlib.sha256(code.encode()).hexdigest()
        if sha in wanted:
            codes[sha] = code
    assert set(codes) == wanted
    live = forwardcheck.check_many([(sha, codes[sha], SHAPE, CLASSES) for sha in sorted(wanted)], workers=2)
    for sha in wanted:
        assert (live[sha].ok, live[sha].parameters) == (
            table[sha]["cifar-10"].ok,
            table[sha]["cifar-10"].parameters,
        )
