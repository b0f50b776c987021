"""Clean estimates confined to the principal subspace of the training data.

With v prediction the clean estimate at low noise is the (rescaled) input plus a small
correction, so whatever part of the input's noise the network does not predict passes
into the estimate. On a mesh that noise lives mostly at the nodal scale, where the
residual of an elliptic problem weighs it most. :class:`SubspaceDenoiser` projects each
channel of the estimate onto the span of the training data's leading principal
components (in the network's units, orthogonal in the lumped-mass inner product of
the mesh), which removes every direction the data do not use, noise included, and
leaves the network a linear model of the fields with ``modes`` coefficients per
channel ("diffusion on a linear principal-component basis").
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def principal_subspace(
    data: torch.Tensor | np.ndarray, weights: torch.Tensor | np.ndarray, modes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and leading principal directions of samples of one field, in a weighted inner product.

    Parameters
    ----------
    data
        Samples (N, n) of the field.
    weights
        Positive node weights (n,) of the inner product ``<a, b> = sum_i w_i a_i b_i``
        (the lumped mass: the L2 inner product of P1 fields).
    modes
        Number of directions kept, at most ``min(N, n)``.

    Returns
    -------
    mean : torch.Tensor
        (n,) float64.
    basis : torch.Tensor
        (n, modes) float64, orthonormal in the weighted inner product, ordered by the
        variance of the data along each direction.

    Raises
    ------
    ValueError
        If the shapes disagree, a weight is not positive or ``modes`` is out of range.
    """
    x = torch.as_tensor(data, dtype=torch.float64)
    w = torch.as_tensor(weights, dtype=torch.float64)
    if x.ndim != 2 or w.shape != (x.shape[1],):
        raise ValueError(f"need data (N, n) and weights (n,), got {tuple(x.shape)} and {tuple(w.shape)}")
    if not torch.all(w > 0):
        raise ValueError("the weights of the inner product must be positive")
    if not 1 <= modes <= min(x.shape):
        raise ValueError(f"modes must lie in [1, {min(x.shape)}] for data of shape {tuple(x.shape)}, got {modes}")
    mean = x.mean(dim=0)
    root = w.sqrt()
    _, _, directions = torch.linalg.svd((x - mean) * root, full_matrices=False)
    return mean, directions[:modes].T / root[:, None]


class FieldSubspaces(nn.Module):
    """An affine subspace per channel of samples (B, C, n), and the projection onto them.

    Channel c of a sample becomes ``mean_c + B_c B_c^T W (x_c - mean_c)``, B_c
    orthonormal in the weighted inner product W (:func:`principal_subspace`).

    Parameters
    ----------
    subspaces
        ``(mean (n,), basis (n, M_c))`` of every channel, in channel order.
    weights
        Node weights (n,) of the inner product.
    """

    def __init__(self, subspaces: list[tuple[torch.Tensor, torch.Tensor]], weights: torch.Tensor | np.ndarray):
        super().__init__()
        weights = torch.as_tensor(weights, dtype=torch.float64)
        for channel, (mean, basis) in enumerate(subspaces):
            if mean.shape != weights.shape or basis.ndim != 2 or basis.shape[0] != weights.shape[0]:
                raise ValueError(f"channel {channel}: the subspace does not match the {weights.shape[0]} nodes")
            # Not in the state dict: rebuilt from the training data with the model.
            self.register_buffer(f"mean_{channel}", mean.clone(), persistent=False)
            self.register_buffer(f"basis_{channel}", basis.clone(), persistent=False)
            self.register_buffer(f"dual_{channel}", (basis * weights[:, None]).clone(), persistent=False)
        self.register_buffer("weights", weights.clone(), persistent=False)
        self.n_channels = len(subspaces)

    def leading(self, modes: int) -> FieldSubspaces:
        """The subspaces of the first ``modes`` directions of each basis (for a basis ordered by importance).

        Raises
        ------
        ValueError
            If a basis has fewer than ``modes`` directions, or ``modes`` is not positive.
        """
        bases = [getattr(self, f"basis_{channel}") for channel in range(self.n_channels)]
        if not 1 <= modes <= min(basis.shape[1] for basis in bases):
            raise ValueError(f"modes must lie in [1, {min(basis.shape[1] for basis in bases)}], got {modes}")
        return FieldSubspaces(
            [(getattr(self, f"mean_{channel}"), basis[:, :modes]) for channel, basis in enumerate(bases)], self.weights
        )

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """Samples (B, C, n) with each channel projected onto its subspace."""
        if x.shape[1] != self.n_channels:
            raise ValueError(f"the samples have {x.shape[1]} channels, the subspaces are {self.n_channels}")
        channels = []
        for channel in range(self.n_channels):
            mean, basis, dual = (getattr(self, f"{name}_{channel}").to(x.dtype) for name in ("mean", "basis", "dual"))
            channels.append(mean + ((x[:, channel] - mean) @ dual) @ basis.T)
        return torch.stack(channels, dim=1)


class SubspaceDenoiser(nn.Module):
    """An x0 denoiser whose estimate of each channel is projected onto an affine subspace.

    Parameters
    ----------
    denoiser
        ``denoiser(x_t, t, cond=None, scalars=None) -> x0_hat`` (B, C, n).
    subspaces
        The subspaces of the estimate's channels.
    """

    def __init__(self, denoiser: nn.Module, subspaces: FieldSubspaces):
        super().__init__()
        self.denoiser = denoiser
        self.subspaces = subspaces

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None, scalars: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The denoiser's estimate for samples x (B, C, n) at steps t (B,), each channel projected."""
        return self.subspaces.project(self.denoiser(x, t, cond=cond, scalars=scalars))
