"""Condition fields as the network sees them: standardised per channel with the training split's statistics."""

from __future__ import annotations

import torch
from torch import nn


class StandardisedConditions(nn.Module):
    """``network(x, t, cond=(cond - mean) / std)``: the first ``n_channels`` condition channels standardised.

    The statistics are buffers (saved in checkpoints); :meth:`fit` sets them from the
    training split's condition fields. Channels after the first ``n_channels`` (those of
    physics-guided conditioning) pass unchanged.

    Parameters
    ----------
    network
        ``network(x, t, cond, scalars)`` built with ``n_channels`` condition channels (or more).
    n_channels
        Number of condition channels the caller passes.
    """

    def __init__(self, network: nn.Module, n_channels: int):
        super().__init__()
        self.network = network
        self.register_buffer("mean", torch.zeros(1, n_channels, 1))
        self.register_buffer("std", torch.ones(1, n_channels, 1))

    @torch.no_grad()
    def fit(self, cond: torch.Tensor) -> "StandardisedConditions":
        """Set the statistics from condition fields (N, C, n): per-channel mean and standard deviation.

        A channel that is constant keeps the standard deviation 1.
        """
        mean = cond.mean(dim=(0, 2), keepdim=True)
        std = cond.std(dim=(0, 2), keepdim=True)
        self.mean.copy_(mean.to(self.mean.dtype))
        self.std.copy_(torch.where(std > 0, std, torch.ones_like(std)).to(self.std.dtype))
        return self

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None, scalars: torch.Tensor | None = None
    ) -> torch.Tensor:
        n = self.mean.shape[1]
        if cond is None or cond.shape[1] < n:
            got = None if cond is None else tuple(cond.shape)
            raise ValueError(f"the model needs at least {n} condition channels, got {got}")
        scaled = (cond[:, :n] - self.mean.to(cond.dtype)) / self.std.to(cond.dtype)
        return self.network(x, t, cond=torch.cat([scaled, cond[:, n:]], dim=1), scalars=scalars)
