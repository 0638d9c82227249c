"""A fine-tune's optimiser, its step, and the job's checkpoints (services.trainer.lora trains with them)."""

from __future__ import annotations

import shutil
from pathlib import Path

from services.trainer.spec import FineTuneSpec

CHECKPOINT = "checkpoint"


def make_optimizer(model, spec: FineTuneSpec, device: str):
    """AdamW over the trainable weights (bitsandbytes' 8-bit paged AdamW on a GPU where it is installed);
    (optimiser, its name)."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    if device == "cuda":
        try:
            import bitsandbytes as bnb

            return bnb.optim.PagedAdamW8bit(
                params, lr=spec.schedule.learning_rate, weight_decay=spec.schedule.weight_decay
            ), "paged_adamw_8bit"
        except ImportError:
            pass
    return torch.optim.AdamW(
        params, lr=spec.schedule.learning_rate, weight_decay=spec.schedule.weight_decay
    ), "adamw"


def save_checkpoint(job_dir: Path, model, optimizer, scheduler, state: dict) -> None:
    """The adapter, optimiser, scheduler, RNG and data position, written to a temporary folder then
    renamed, so a crash leaves the previous checkpoint whole."""
    import torch

    tmp = job_dir / f"{CHECKPOINT}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    torch.save(
        {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "state": state,
        },
        tmp / "trainer_state.pt",
    )
    final = job_dir / CHECKPOINT
    old = job_dir / f"{CHECKPOINT}.old"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(checkpoint: Path, optimizer, scheduler) -> dict:
    """Restore the optimiser, scheduler and RNG of a checkpoint; where the job stood (step, epoch,
    batch, tokens)."""
    import torch

    saved = torch.load(checkpoint / "trainer_state.pt", weights_only=False)
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    torch.set_rng_state(saved["torch_rng"])
    return saved["state"]


def optimiser_step(model, optimizer, scheduler, max_grad_norm: float) -> float:
    """Clip, step the optimiser and the schedule, clear the gradients; the learning rate the step used."""
    import torch

    torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    learning_rate = scheduler.get_last_lr()[0]
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return learning_rate
