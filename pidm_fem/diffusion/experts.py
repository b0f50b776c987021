"""Experts: denoisers that share the work of one sampler, by timestep or by channel.

An ensemble of expert denoisers (Balaji et al., eDiff-I, 2022) splits the timesteps
between networks, so that each spends its capacity on one range of noise levels. The
last steps of a sampler ask for the most precise estimate (at t = 1 the noise left is
a few percent of the fields' spread), which a network that must also draw whole fields
from pure noise does not give; a low-noise expert does.

Channel experts split the fields instead: each channel of the clean estimate comes from
the denoiser trained for it, e.g. the pressure from a physics-informed model and the
coefficient from a standard one, both seeing the same noisy state at every step.
"""

from __future__ import annotations

import torch
from torch import nn


def _checked_channels(channels: tuple[int, ...]) -> tuple[int, ...]:
    """``channels`` as a tuple, or a ValueError unless they are distinct non-negative integers, at least one."""
    channels = tuple(channels)
    if not channels or len(set(channels)) != len(channels) or any(
        not isinstance(c, int) or isinstance(c, bool) or c < 0 for c in channels
    ):
        raise ValueError(f"channels must be distinct non-negative integers, at least one, got {channels!r}")
    return channels


def _channel_mask(channels: tuple[int, ...], x: torch.Tensor) -> torch.Tensor:
    """A (C, 1) boolean mask of ``channels`` among the channels of x (B, C, n), broadcastable against x."""
    if max(channels) >= x.shape[1]:
        raise ValueError(f"channels {channels} out of range for {x.shape[1]} channels")
    mask = torch.zeros(x.shape[1], 1, dtype=torch.bool, device=x.device)
    mask[list(channels)] = True
    return mask


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


class ChannelExperts(nn.Module):
    """``other(x, t)``'s estimate for the channels ``channels``, ``base(x, t)``'s for the others.

    Both denoisers see the whole state (and the same ``cond`` and ``scalars``) at every
    call, so that each estimate is the one its model would give in a sampler of its own;
    only the channels of the result are composed.

    Parameters
    ----------
    base, other
        x0-predicting denoisers ``model(x_t, t, cond=None, scalars=None)`` in the same
        normalised units (the caller checks that their normalisers agree).
    channels
        Distinct non-negative channel indices taken from ``other``; at least one.
    """

    def __init__(self, base: nn.Module, other: nn.Module, channels: tuple[int, ...]):
        super().__init__()
        self.base, self.other, self.channels = base, other, _checked_channels(channels)

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None, scalars: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The composed clean estimates of x (B, C, n) at steps t (B,)."""
        return torch.where(_channel_mask(self.channels, x), self.other(x, t, cond=cond, scalars=scalars),
                           self.base(x, t, cond=cond, scalars=scalars))
