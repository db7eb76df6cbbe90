"""The released flow-matching schedule (FlowMatchDiscreteScheduler with the SD3 time shift)."""

from __future__ import annotations

import torch

NUM_TRAIN_TIMESTEPS = 1000


def flow_sigmas(steps: int, shift: float) -> torch.Tensor:
    """steps + 1 sigmas from 1 to 0: s' = shift * s / (1 + (shift - 1) * s) on linspace(1, 0)."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    s = torch.linspace(1, 0, steps + 1)  # float32, as the released scheduler computes it
    return (shift * s) / (1 + (shift - 1) * s)


def timesteps(sigmas: torch.Tensor) -> torch.Tensor:
    """The model's timestep input for each step (sigma * 1000), as the released scheduler gives it."""
    return sigmas[:-1] * NUM_TRAIN_TIMESTEPS


def euler_step(x: torch.Tensor, velocity: torch.Tensor, sigma: float, sigma_next: float) -> torch.Tensor:
    """One flow-matching Euler step: x + (sigma_next - sigma) * v."""
    return x + (sigma_next - sigma) * velocity


def cfg(positive: torch.Tensor, negative: torch.Tensor, scale: float) -> torch.Tensor:
    """True classifier-free guidance: neg + scale * (pos - neg)."""
    return negative + scale * (positive - negative)
