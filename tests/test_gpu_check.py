"""bench/gpu_check.py, the one prepared GPU check, runs on a CPU machine in CI's time (43 s alone on 2
cores): every part runs on CPU with small sizes (one embedded cycle included), nothing fails, and the
report says the CUDA part did not run and why."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.slow, pytest.mark.system, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a CUDA machine run bench/gpu_check.py itself")
def test_the_gpu_check_runs_on_cpu_and_says_cuda_did_not_run(tmp_path: Path) -> None:
    out = tmp_path / "gpu_check.json"
    run = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--quick", "--out", str(out)],
        capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL, cwd=ROOT,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["cuda"] is False and r["cuda_detail"].startswith("torch.cuda.is_available() is False")
    assert "CUDA: **did not run** — torch.cuda.is_available() is False" in run.stdout
    for part in ("evaluator", "trainer", "generator", "cycle"):
        assert "error" not in r[part], (part, r[part])
    assert r["evaluator"]["cpu"]["status"] == "OK"
    assert r["trainer"]["trainer_service_tokens_per_second"] > 0
    assert r["generator"]["cpu"]["tokens_per_second"] > 0
    assert r["cycle"]["exit"] == 0 and r["cycle"]["generated"] == 2, r["cycle"]
