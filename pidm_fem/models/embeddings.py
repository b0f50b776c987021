"""Timestep and scalar-condition embeddings shared by the denoisers."""

from __future__ import annotations

import math

import torch
from torch import nn

#: the number of steps whose timestep range the sinusoid frequencies are designed for
_REFERENCE_STEPS = 1000


def sinusoidal_embedding(t: torch.Tensor, dim: int, n_timesteps: int) -> torch.Tensor:
    """Transformer-style sinusoidal embedding of diffusion timesteps.

    The timestep is first rescaled to ``t * 1000 / n_timesteps`` so that the
    frequencies ``10000^(-k / (dim/2))`` cover the same range whatever the number of
    diffusion steps (the usual embedding is tuned for 1000 steps).

    Parameters
    ----------
    t
        Timesteps, shape (B,), integer or float, in ``[0, n_timesteps)``.
    dim
        Embedding size (even).
    n_timesteps
        Number of diffusion steps T.

    Returns
    -------
    torch.Tensor
        Shape (B, dim): cosines in the first half, sines in the second.
    """
    if dim % 2:
        raise ValueError(f"the embedding size must be even, got {dim}")
    half = dim // 2
    exponents = torch.arange(half, dtype=torch.float32, device=t.device) / half
    frequencies = torch.exp(-math.log(10000.0) * exponents)
    angles = (t.to(torch.float32) * (_REFERENCE_STEPS / n_timesteps))[:, None] * frequencies[None, :]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)


class ConditioningEmbedding(nn.Module):
    """Embedding of the timestep and the per-sample scalars into one vector per sample.

    ``MLP(sinusoid(t)) + MLP(scalars)``, each MLP being ``Linear, SiLU, Linear``.

    Parameters
    ----------
    n_timesteps
        Number of diffusion steps T; timesteps must lie in ``0..T-1``.
    base_dim
        Size of the sinusoidal embedding (even).
    out_dim
        Size of the output embedding.
    n_scalars
        Number of per-sample scalar conditions (0 for none).
    """

    def __init__(self, n_timesteps: int, base_dim: int, out_dim: int, n_scalars: int = 0) -> None:
        super().__init__()
        if n_timesteps < 1:
            raise ValueError(f"n_timesteps must be positive, got {n_timesteps}")
        if base_dim < 2 or base_dim % 2:
            raise ValueError(f"the sinusoidal embedding size must be even and positive, got {base_dim}")
        if n_scalars < 0:
            raise ValueError(f"n_scalars must be non-negative, got {n_scalars}")
        self.n_timesteps = n_timesteps
        self.base_dim = base_dim
        self.n_scalars = n_scalars
        self.time_mlp = nn.Sequential(nn.Linear(base_dim, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim))
        self.scalar_mlp = (
            nn.Sequential(nn.Linear(n_scalars, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim))
            if n_scalars
            else None
        )

    def forward(self, t: torch.Tensor, scalars: torch.Tensor | None = None) -> torch.Tensor:
        """Embed timesteps (B,) and scalars (B, n_scalars) into shape (B, out_dim)."""
        if t.ndim != 1 or t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
            raise ValueError(f"t must be an integer tensor of shape (B,), got {t.dtype} {tuple(t.shape)}")
        if bool(((t < 0) | (t >= self.n_timesteps)).any()):
            raise ValueError(f"timesteps must lie in 0..{self.n_timesteps - 1}")
        embedding = self.time_mlp(sinusoidal_embedding(t, self.base_dim, self.n_timesteps).to(self._dtype()))
        if self.scalar_mlp is None:
            if scalars is not None:
                raise ValueError("scalars were given to a model built with n_scalars = 0")
            return embedding
        if scalars is None:
            raise ValueError(f"the model needs scalars of shape (B, {self.n_scalars})")
        if scalars.shape != (len(t), self.n_scalars):
            raise ValueError(
                f"scalars must have shape ({len(t)}, {self.n_scalars}), got {tuple(scalars.shape)}"
            )
        return embedding + self.scalar_mlp(scalars.to(self._dtype()))

    def _dtype(self) -> torch.dtype:
        return self.time_mlp[0].weight.dtype
