"""Timestep experts: one denoiser for the low-noise steps, another for the rest.

An ensemble of expert denoisers (Balaji et al., eDiff-I, 2022) splits the timesteps
between networks, so that each spends its capacity on one range of noise levels. The
last steps of a sampler ask for the most precise estimate (at t = 1 the noise left is
a few percent of the fields' spread), which a network that must also draw whole fields
from pure noise does not give; a low-noise expert does.
"""

from __future__ import annotations

import torch
from torch import nn


class TimestepExperts(nn.Module):
    """``low(x, t)`` for the samples with ``t < split``, ``high(x, t)`` for the others.

    Parameters
    ----------
    low, high
        x0-predicting denoisers ``model(x_t, t, cond=None, scalars=None)`` in the same
        normalised units.
    split
        First timestep of the high-noise expert, at least 1.
    """

    def __init__(self, low: nn.Module, high: nn.Module, split: int):
        super().__init__()
        if not isinstance(split, int) or isinstance(split, bool) or split < 1:
            raise ValueError(f"split must be a positive integer, got {split!r}")
        self.low, self.high, self.split = low, high, split

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None, scalars: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The routed clean estimates of x (B, C, n) at steps t (B,); each sample passes through one expert."""
        is_low = t.to(x.device) < self.split
        out = torch.empty_like(x)
        for mask, expert in ((is_low, self.low), (~is_low, self.high)):
            if mask.any():
                out[mask] = expert(
                    x[mask], t[mask.to(t.device)],
                    cond=None if cond is None else cond[mask],
                    scalars=None if scalars is None else scalars[mask],
                )
        return out
