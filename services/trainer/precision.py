"""The fine-tune's arithmetic on a CPU: bf16 autocast where the CPU multiplies bf16 natively, after a
loss-parity check against fp32 on the job's own first example.

On a CPU with AVX-512 BF16 (or AMX) the matrix products and attention of a training step run about
a quarter faster under `torch.autocast("cpu", dtype=torch.bfloat16)` than in fp32
(docs/benchmarks.md#fine-tune-speed-and-the-loops-wall-clock); the weights, the LoRA parameters,
their gradients and the optimiser stay fp32. Without native support bf16 is emulated and slower, so
`auto` keeps fp32 there. Before training, the job's first example is scored in fp32 and under
autocast (no dropout); a relative difference over PARITY_TOLERANCE keeps fp32 for the job. A GPU
run already holds the model in bf16 and is not touched.

This module imports neither grpc nor peft.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

AUTOCAST_CHOICES = ("auto", "bf16", "off")
PARITY_TOLERANCE = 0.02  # relative difference of the first example's loss, bf16 autocast vs fp32
CPUINFO = Path("/proc/cpuinfo")


@dataclass(frozen=True)
class Precision:
    autocast: str  # "bf16" or "off"
    loss_fp32: float | None = None  # the parity check's figures (None: not run)
    loss_bf16: float | None = None
    reason: str = ""  # why autocast is off, when it is

    def context(self):
        import torch

        if self.autocast == "bf16":
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def as_json(self) -> dict:
        return {"autocast": self.autocast, "parity_loss_fp32": self.loss_fp32,
                "parity_loss_bf16": self.loss_bf16, "reason": self.reason}  # fmt: skip


def native_bf16(cpuinfo: Path = CPUINFO) -> bool:
    """Whether the CPU has bf16 instructions (x86 avx512_bf16 or amx_bf16; read from /proc/cpuinfo)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return False
    flags = next(
        (line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []
    )
    return "avx512_bf16" in flags or "amx_bf16" in flags


def choose(wanted: str, device: str, model, ids, labels, mask) -> Precision:
    """The precision of this job: `wanted` (auto | bf16 | off) checked against the machine and the
    loss-parity check on one example (ids, labels, mask: a collated batch)."""
    import torch

    if device != "cpu":
        return Precision("off", reason=f"on {device} the model is held in its own dtype")
    if wanted == "off":
        return Precision("off", reason="autocast off by setting")
    if wanted == "auto" and not native_bf16():
        return Precision("off", reason="this CPU has no native bf16")
    was_training = model.training
    model.eval()
    with torch.no_grad():
        fp32 = float(model(input_ids=ids, attention_mask=mask, labels=labels).loss)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = float(model(input_ids=ids, attention_mask=mask, labels=labels).loss)
    model.train(was_training)
    if not abs(bf16 - fp32) <= PARITY_TOLERANCE * abs(fp32):
        reason = f"bf16 loss {bf16:.5f} vs fp32 {fp32:.5f}: over the {PARITY_TOLERANCE:.0%} parity tolerance"
        return Precision("off", fp32, bf16, reason)
    return Precision("bf16", fp32, bf16)
