"""The denoiser's clean estimates of noised data: what it does on the inputs its training saw.

Compared with the estimates along a sampling trajectory (``sample(..., on_step=...)``),
they separate the two sources of a sample's error: the denoiser's own error on the
inputs of its training (noised data), and the drift of the trajectory away from them.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from pidm_fem.diffusion.normalization import FieldNormalizer
from pidm_fem.diffusion.schedule import CosineSchedule, gaussian_noise


@torch.no_grad()
def noised_data_estimates(
    model: torch.nn.Module,
    schedule: CosineSchedule,
    normalizer: FieldNormalizer,
    x0: torch.Tensor,
    timesteps: Iterable[int],
    *,
    generator: torch.Generator | None = None,
    cond: torch.Tensor | None = None,
    scalars: torch.Tensor | None = None,
) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """The noised data and the denoiser's clean estimate of it, at each of ``timesteps``.

    One noise draw serves every timestep, so that the estimates differ only by the
    noise level.

    Parameters
    ----------
    model
        Denoiser ``model(x_t, t, cond=None, scalars=None) -> x0_hat`` in normalised units,
        in evaluation mode.
    schedule
        The schedule the model was trained with.
    normalizer
        The normaliser of the training data.
    x0
        Clean physical samples (B, C, n).
    timesteps
        Noise levels, each in 0..T-1.
    generator
        Source of the noise; the global RNG when None.
    cond, scalars
        Condition fields and scalars passed to the model.

    Returns
    -------
    dict
        ``{t: (x_t, x0_hat)}``, both physical (B, C, n): the noised input mapped back to
        physical units, and the estimate.
    """
    x0_norm = normalizer.normalize(x0)
    noise = gaussian_noise(x0_norm.shape, dtype=x0_norm.dtype, device=x0_norm.device, generator=generator)
    estimates = {}
    for t in timesteps:
        t_batch = torch.full((x0.shape[0],), int(t), dtype=torch.int64, device=x0.device)
        x_t = schedule.q_sample(x0_norm, t_batch, noise)
        x0_hat = model(x_t, t_batch, cond=cond, scalars=scalars)
        estimates[int(t)] = (normalizer.denormalize(x_t), normalizer.denormalize(x0_hat))
    return estimates
