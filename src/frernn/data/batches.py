"""Minibatches of tensors already on the device."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from frernn.errors import FrernnError


def batches(
    x: torch.Tensor, y: torch.Tensor, batch_size: int, generator: torch.Generator
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch of minibatches in a fresh order drawn from ``generator`` now (one call per
    epoch); the last partial batch is kept."""
    if batch_size < 1:
        raise FrernnError(f"batch size must be positive, got {batch_size}")
    order = torch.randperm(len(x), generator=generator, device=generator.device).to(x.device)
    return ((x[index], y[index]) for index in order.split(batch_size))
