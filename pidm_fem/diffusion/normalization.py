"""Per-field (per-channel) coordinates of the network: an optional map, then affine normalisation.

The network sees ``(m_c(x_c) - mean_c) / std_c`` for each channel c, where ``m_c`` is
the channel's :class:`ChannelMap` (the identity when None); the physics always sees
physical values. Maps let a problem choose coordinates in which errors of the network
are benign: a linear map such as the discrete Laplacian of a pressure (so that the
network's errors reach the pressure only through the inverse, smoothing operator), or
the logarithm of a positive field (whose samples are then positive by construction).
The statistics travel with checkpoints as a state dict; the maps are rebuilt by the
caller (they depend on the mesh, not on the data).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

import numpy as np
import torch


class ChannelMap(Protocol):
    """An invertible map of one channel's values (..., n) between physical and network coordinates."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Physical values (..., n) to the network's coordinates (..., n)."""

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        """The network's coordinates (..., n) back to physical values (..., n), differentiably."""


class LinearChannelMap:
    """``y = A x`` and ``x = B y`` with dense matrices A (forward) and B (inverse), each (n, n).

    B need only be a left inverse of A on the physical values of interest (for a
    pure-Neumann Laplacian, the fields of zero mean). Both are stored as float64 and
    cast to the input's dtype and device on first use (cached).
    """

    def __init__(self, forward: np.ndarray | torch.Tensor, inverse: np.ndarray | torch.Tensor):
        self._matrices = {
            "forward": torch.as_tensor(forward, dtype=torch.float64).detach().cpu(),
            "inverse": torch.as_tensor(inverse, dtype=torch.float64).detach().cpu(),
        }
        shapes = {tuple(matrix.shape) for matrix in self._matrices.values()}
        if len(shapes) != 1 or len(next(iter(shapes))) != 2 or len(set(next(iter(shapes)))) != 1:
            raise ValueError(f"forward and inverse must be square matrices of one size, got shapes {sorted(shapes)}")
        self._cache: dict[tuple[str, torch.device, torch.dtype], torch.Tensor] = {}

    def _matrix(self, which: str, like: torch.Tensor) -> torch.Tensor:
        key = (which, like.device, like.dtype)
        if key not in self._cache:
            self._cache[key] = self._matrices[which].to(device=like.device, dtype=like.dtype)
        return self._cache[key]

    @property
    def inverse_matrix(self) -> torch.Tensor:
        """The inverse map B, (n, n) float64 (a copy)."""
        return self._matrices["inverse"].clone()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``A x`` for each row of x (..., n)."""
        return x @ self._matrix("forward", x).T

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        """``B y`` for each row of y (..., n)."""
        return y @ self._matrix("inverse", y).T


class LogChannelMap:
    """``y = log x`` and ``x = exp y``: for positive fields, whose samples stay positive."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``log x``.

        Raises
        ------
        ValueError
            If some value is not positive.
        """
        if not bool((x > 0).all()):
            raise ValueError("the log map needs positive values")
        return torch.log(x)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        """``exp y``."""
        return torch.exp(y)


def _map_channels(maps: Sequence[ChannelMap | None], x: torch.Tensor, direction: str) -> torch.Tensor:
    """Apply each channel's map (``direction``: "forward" or "inverse") to samples (..., C, n)."""
    if len(maps) != x.shape[-2]:
        raise ValueError(f"expected samples of shape (..., {len(maps)}, n), got {tuple(x.shape)}")
    if all(m is None for m in maps):
        return x
    channels = [x[..., c, :] if m is None else getattr(m, direction)(x[..., c, :]) for c, m in enumerate(maps)]
    return torch.stack(channels, dim=-2)


class FieldNormalizer:
    """Per-channel map, then mean and standard deviation, for samples of shape (..., C, n).

    Parameters
    ----------
    mean, std
        One value per channel (C,) of the mapped values; every std must be positive and
        finite. Stored as float64 on the CPU and cast to the input's dtype and device on use.
    maps
        One :class:`ChannelMap` or None (the identity) per channel; all identities when None.
    """

    def __init__(
        self,
        mean: torch.Tensor | Sequence[float],
        std: torch.Tensor | Sequence[float],
        maps: Sequence[ChannelMap | None] | None = None,
    ):
        mean = torch.as_tensor(mean, dtype=torch.float64).detach().cpu().clone()
        std = torch.as_tensor(std, dtype=torch.float64).detach().cpu().clone()
        if mean.ndim != 1 or mean.shape != std.shape or mean.numel() == 0:
            raise ValueError(
                f"mean and std must be non-empty 1-D with one value per channel, got {tuple(mean.shape)} "
                f"and {tuple(std.shape)}"
            )
        if not bool(torch.isfinite(mean).all()):
            raise ValueError("the channel means must be finite")
        bad = torch.nonzero(~(torch.isfinite(std) & (std > 0))).flatten().tolist()
        if bad:
            raise ValueError(f"channel(s) {bad} have a zero or non-finite standard deviation; cannot normalise")
        maps = [None] * mean.numel() if maps is None else list(maps)
        if len(maps) != mean.numel():
            raise ValueError(f"got {len(maps)} channel maps for {mean.numel()} channels")
        self.mean, self.std, self.maps = mean, std, maps

    @classmethod
    def fit(cls, data: torch.Tensor, maps: Sequence[ChannelMap | None] | None = None) -> "FieldNormalizer":
        """Statistics of each mapped channel over all samples and nodes of ``data`` (B, C, n).

        The standard deviation is the population one (divisor B n).
        """
        if not isinstance(data, torch.Tensor) or data.ndim != 3:
            raise ValueError("FieldNormalizer.fit needs a tensor of shape (B, C, n)")
        maps = [None] * data.shape[1] if maps is None else list(maps)
        mapped = _map_channels(maps, data.detach().to(dtype=torch.float64), "forward")
        values = mapped.transpose(0, 1).reshape(data.shape[1], -1)
        return cls(values.mean(dim=1), values.std(dim=1, correction=0), maps)

    @property
    def n_channels(self) -> int:
        """Number of channels C."""
        return self.mean.numel()

    def _stats_for(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x.ndim < 2 or x.shape[-2] != self.n_channels:
            raise ValueError(
                f"expected samples of shape (..., {self.n_channels}, n), got {tuple(x.shape)}"
            )
        mean = self.mean.to(device=x.device, dtype=x.dtype).unsqueeze(-1)
        std = self.std.to(device=x.device, dtype=x.dtype).unsqueeze(-1)
        return mean, std

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Physical values (..., C, n) to network units."""
        mean, std = self._stats_for(x)
        return (_map_channels(self.maps, x, "forward") - mean) / std

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Network units (..., C, n) to physical values."""
        mean, std = self._stats_for(x)
        return _map_channels(self.maps, x * std + mean, "inverse")

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The statistics, as float64 CPU tensors ``{"mean": (C,), "std": (C,)}``."""
        return {"mean": self.mean.clone(), "std": self.std.clone()}

    @classmethod
    def from_state_dict(
        cls, state: Mapping[str, torch.Tensor], maps: Sequence[ChannelMap | None] | None = None
    ) -> "FieldNormalizer":
        """Rebuild a normaliser from :meth:`state_dict` and the channel maps it was fitted with."""
        missing = {"mean", "std"} - set(state)
        if missing:
            raise KeyError(f"normaliser state lacks {sorted(missing)}")
        return cls(state["mean"], state["std"], maps)
