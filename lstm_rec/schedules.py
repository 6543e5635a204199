"""Learning-rate schedules that need the run's length: linear warm-up, an optional hold at the base rate, then
cosine or linear decay."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

DECAYS = ("cosine", "linear", "none")


class WarmupDecay:
    """The factor on the base learning rate at optimizer step `step` (picklable, unlike a lambda)."""

    def __init__(
        self, total_steps: int, warmup_steps: int, decay: str, min_factor: float, hold_fraction: float = 0.0
    ) -> None:
        if decay not in DECAYS:
            raise ValueError(f"model.scheduler.decay must be one of {DECAYS}, got {decay!r}")
        if warmup_steps < 0 or not 0.0 <= min_factor <= 1.0:
            raise ValueError(
                f"model.scheduler needs warmup_steps >= 0 and min_factor in [0, 1], got {warmup_steps}, {min_factor}"
            )
        if not 0.0 <= hold_fraction < 1.0:
            raise ValueError(f"model.scheduler.hold_fraction must be in [0, 1), got {hold_fraction}")
        self.total_steps, self.warmup_steps = total_steps, warmup_steps
        self.decay, self.min_factor, self.hold_fraction = decay, min_factor, hold_fraction

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps  # linear up to the base rate, never 0
        if self.decay == "none":
            return 1.0
        after_warmup = max(1, self.total_steps - self.warmup_steps)
        hold = self.hold_fraction * after_warmup
        progress = min(1.0, max(0.0, step - self.warmup_steps - hold) / max(1.0, after_warmup - hold))
        shape = 0.5 * (1.0 + math.cos(math.pi * progress)) if self.decay == "cosine" else 1.0 - progress
        return self.min_factor + (1.0 - self.min_factor) * shape


def warmup_decay(
    optimizer: Optimizer,
    total_steps: int,
    warmup_steps: int = 100,
    decay: str = "cosine",
    min_factor: float = 0.0,
    hold_fraction: float = 0.0,
) -> LambdaLR:
    """Per-step schedule over `total_steps` optimizer steps (the module passes the run's count): warm-up, then the
    base rate for `hold_fraction` of the remaining steps, then the decay over the rest."""
    return LambdaLR(optimizer, WarmupDecay(total_steps, warmup_steps, decay, min_factor, hold_fraction))
