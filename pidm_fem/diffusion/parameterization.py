"""What the network predicts: the clean sample itself, or the velocity v (skip-connected x0).

Losses and samplers always see an x0-predicting denoiser ``model(x_t, t, cond, scalars)``.
With the "v" parameterisation (Salimans & Ho, 2022) the network F predicts
``v = sqrt(abar_t) eps - sqrt(1 - abar_t) x0`` and the clean estimate is

    x0_hat = sqrt(abar_t) x_t - sqrt(1 - abar_t) F(x_t, t),

a skip connection whose network part is scaled by the noise level: at low noise the
estimate is the (rescaled) input plus a small correction, so the network's own error
reaches x0_hat multiplied by ``sqrt(1 - abar_t)`` instead of in full. For data of unit
variance (normalised fields) the min-SNR weighted x0 loss is then exactly the min-SNR
weighted v loss, ``min(SNR, gamma) |x0 error|^2 = min(SNR, gamma) / (SNR + 1) |v error|^2``.
"""

from __future__ import annotations

import torch
from torch import nn

from pidm_fem.diffusion.schedule import CosineSchedule

PREDICTIONS = ("x0", "v")


class VPredictionDenoiser(nn.Module):
    """An x0-predicting denoiser made of a network that predicts v.

    Parameters
    ----------
    network
        ``network(x_t, t, cond=None, scalars=None) -> v_hat`` in normalised units.
    schedule
        The noise schedule whose ``alpha_bar`` defines v.
    """

    def __init__(self, network: nn.Module, schedule: CosineSchedule):
        super().__init__()
        self.network = network
        # Not part of the state dict: the schedule is rebuilt from the configuration.
        self.register_buffer("alpha_bar", schedule.alpha_bar.clone(), persistent=False)

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None, scalars: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``sqrt(abar_t) x - sqrt(1 - abar_t) network(x, t)`` for samples x (B, C, n) at steps t (B,)."""
        alpha_bar = self.alpha_bar.to(device=x.device, dtype=x.dtype)[t.to(x.device)]
        alpha_bar = alpha_bar.reshape(-1, *([1] * (x.ndim - 1)))
        v_hat = self.network(x, t, cond=cond, scalars=scalars)
        return alpha_bar.sqrt() * x - (1 - alpha_bar).sqrt() * v_hat


def x0_denoiser(network: nn.Module, prediction: str, schedule: CosineSchedule) -> nn.Module:
    """The x0-predicting denoiser of a network that predicts ``prediction`` ("x0" or "v")."""
    if prediction == "x0":
        return network
    if prediction == "v":
        return VPredictionDenoiser(network, schedule)
    raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
