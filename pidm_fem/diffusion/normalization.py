"""Per-field (per-channel) affine normalisation between physical and network units.

The network sees ``(x - mean_c) / std_c`` for each channel c; the physics always
sees physical values. The statistics travel with checkpoints as a state dict.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch


class FieldNormalizer:
    """Per-channel mean and standard deviation for samples of shape (..., C, n).

    Parameters
    ----------
    mean, std
        One value per channel (C,); every std must be positive and finite.
        Stored as float64 on the CPU and cast to the input's dtype and device on use.
    """

    def __init__(self, mean: torch.Tensor | Sequence[float], std: torch.Tensor | Sequence[float]):
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
        self.mean, self.std = mean, std

    @classmethod
    def fit(cls, data: torch.Tensor) -> "FieldNormalizer":
        """Statistics of each channel over all samples and nodes of ``data`` (B, C, n).

        The standard deviation is the population one (divisor B n).
        """
        if not isinstance(data, torch.Tensor) or data.ndim != 3:
            raise ValueError("FieldNormalizer.fit needs a tensor of shape (B, C, n)")
        values = data.detach().to(dtype=torch.float64).transpose(0, 1).reshape(data.shape[1], -1)
        return cls(values.mean(dim=1), values.std(dim=1, correction=0))

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
        return (x - mean) / std

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Network units (..., C, n) to physical values."""
        mean, std = self._stats_for(x)
        return x * std + mean

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The statistics, as float64 CPU tensors ``{"mean": (C,), "std": (C,)}``."""
        return {"mean": self.mean.clone(), "std": self.std.clone()}

    @classmethod
    def from_state_dict(cls, state: Mapping[str, torch.Tensor]) -> "FieldNormalizer":
        """Rebuild a normaliser from :meth:`state_dict`."""
        missing = {"mean", "std"} - set(state)
        if missing:
            raise KeyError(f"normaliser state lacks {sorted(missing)}")
        return cls(state["mean"], state["std"])
