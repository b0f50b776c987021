"""Input checks shared by the evaluation metrics: sample batches and node weights.

Samples are physical values of shape (B, C, n) (C fields on n mesh nodes), given
as torch tensors or numpy arrays; node weights are integration weights (n,), such
as the diagonal of the lumped mass matrix. Everything is evaluated in float64 on
the CPU.
"""

from __future__ import annotations

import numpy as np
import torch


def as_samples(samples: torch.Tensor | np.ndarray, name: str = "samples") -> torch.Tensor:
    """Samples (B, C, n) as a detached float64 CPU tensor.

    Parameters
    ----------
    samples
        Physical values, a tensor or an array of shape (B, C, n) with B >= 1.
    name
        How the input is called in the error message.
    """
    x = torch.as_tensor(samples).detach().to(device="cpu", dtype=torch.float64)
    if x.ndim != 3 or x.shape[0] == 0 or x.shape[2] == 0:
        raise ValueError(f"{name} must have shape (B, C, n) with B >= 1 and n >= 1, got {tuple(x.shape)}")
    return x


def normalized_weights(weights: torch.Tensor | np.ndarray | None, n: int) -> torch.Tensor:
    """Node weights (n,) scaled to sum to one, so that ``(w * v).sum(-1)`` is a domain mean.

    Parameters
    ----------
    weights
        Positive finite integration weights, one per node; ``None`` gives equal
        weights (the plain mean over nodes).
    n
        Number of nodes of the samples they will weigh.
    """
    if weights is None:
        return torch.full((n,), 1.0 / n, dtype=torch.float64)
    w = torch.as_tensor(weights).detach().to(device="cpu", dtype=torch.float64)
    if w.shape != (n,):
        raise ValueError(f"node weights must have shape ({n},), one per node, got {tuple(w.shape)}")
    if not bool((torch.isfinite(w) & (w > 0)).all()):
        raise ValueError("node weights must be positive and finite")
    return w / w.sum()
