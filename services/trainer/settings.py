"""Settings of the trainer service (flags and ARCHLOOP_* variables; see archloop.settings)."""

from dataclasses import dataclass

from archloop.settings import ServiceSettings, non_negative, one_of, port_number, positive, setting
from services.trainer.precision import AUTOCAST_CHOICES


@dataclass(frozen=True)
class TrainerSettings(ServiceSettings):
    port: int = setting(50055, "gRPC port; 0 picks a free one", check=port_number)
    state_dir: str = setting("trainer-state", "job database, job folders, checkpoints and worker logs")
    artifacts_dir: str = setting("artifacts", "adapters are written to <experiment>/cycle-<n>/ under it")
    slots: int = setting(1, "fine-tunes run at once (one per GPU, or one on a CPU machine)", check=positive)
    checkpoint_every_steps: int = setting(
        50, "optimiser steps between checkpoints of a running job (0: only at shutdown)", check=non_negative
    )
    worker_threads: int = setting(0, "torch threads of a worker (0: torch's default)", check=non_negative)
    warm_workers: bool = setting(
        True,
        "keep a worker process warm between jobs (its torch and peft imports done once, ~6 s a job on "
        "2 CPU cores); off: a fresh worker per job",
    )
    cancel_grace_seconds: float = setting(
        10.0, "how long a cancelled worker may take to stop before it is killed", check=positive
    )
    autocast: str = setting(
        "auto",
        "CPU arithmetic of a fine-tune: bf16 autocast where the CPU has native bf16 and the loss-parity "
        "check passes (auto), bf16 autocast after the check on any CPU (bf16), or fp32 (off)",
        check=one_of(*AUTOCAST_CHOICES),
    )
