"""Fixed linear views of the noisy sample, handed to the denoiser as extra input channels.

Under elliptic coordinates (:class:`~pidm_fem.diffusion.normalization.LinearChannelMap`)
the network generates ``q = M_L^{-1} A p``, and the pressure is a global smoothing of
what it generates, ``p = G q``. The physics couples the two: the Darcy residual is
``-div(K grad p) - f = K q - grad K . grad p - f``, a local relation once ``grad p`` is
known, but ``grad p`` at a node depends on q everywhere, which a network of local message
passing and a few global tokens can only approximate. :class:`LinearViewInputs` hands the
network ``G x_t`` (in normalised units, so a smoothed copy of the noisy channel, the
pressure up to scale and shift) beside x_t itself: the same information, in the
coordinates in which the coupling is local. It adds no knowledge of the equation: the
view is the inverse of the change of coordinates that the representation already uses.
Views of the fields' recovered gradients (``D G x_t``, ``D x_t`` for a field the network
generates directly) hand it the other factor of the coupling, ``grad K . grad p``, at
the nodes: mesh geometry, again no knowledge of the equation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

#: power iterations that estimate a view's spectral norm (its scale)
POWER_ITERATIONS = 100


def spectral_norm_estimate(matrix: torch.Tensor, iterations: int = POWER_ITERATIONS) -> float:
    """Largest singular value of a square matrix by power iteration on ``M^T M`` (deterministic start).

    Parameters
    ----------
    matrix
        A square (n, n) matrix, not identically zero.
    iterations
        Number of power iterations.
    """
    n = matrix.shape[1]
    v = torch.linspace(1.0, 2.0, n, dtype=torch.float64)
    m = matrix.to(torch.float64)
    for _ in range(iterations):
        v = m.T @ (m @ v)
        v = v / v.norm()
    return float((m @ v).norm())


class LinearViewInputs(nn.Module):
    """A denoiser whose network also sees fixed linear maps of chosen channels of its input.

    ``forward(x, t, cond, scalars)`` calls ``network(x, t, cond=[cond, V_1 x_c1, V_2 x_c2, ...])``:
    for each pair ``(channel, V)`` of ``views``, the channel of x (B, C, n) mapped by the
    (n, n) matrix V divided by its spectral norm (so that the view of a unit-variance
    input has at most unit variance), appended after any given condition channels.
    The matrices are kept in torch's default dtype (moved with the module) and are not
    part of the state dict: they are rebuilt from the mesh.

    Parameters
    ----------
    network
        ``network(x, t, cond=None, scalars=None)`` built with ``len(views)`` more
        condition channels than the caller passes.
    views
        ``(channel index, (n, n) matrix)`` pairs, at least one; a channel may have several views.
    norms
        The views' :func:`spectral_norm_estimate` values, when the caller has them (a model
        built again on the same mesh); estimated here when None.
    """

    def __init__(self, network: nn.Module, views: Sequence[tuple[int, torch.Tensor]],
                 norms: Sequence[float] | None = None):
        super().__init__()
        if not views:
            raise ValueError("LinearViewInputs needs at least one view")
        if norms is not None and len(norms) != len(views):
            raise ValueError(f"{len(norms)} norms for {len(views)} views")
        self.network = network
        self.channels = tuple(channel for channel, _ in views)
        for i, (_, matrix) in enumerate(views):
            matrix = torch.as_tensor(matrix, dtype=torch.float64)
            if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
                raise ValueError(f"a view must be a square matrix, got shape {tuple(matrix.shape)}")
            norm = spectral_norm_estimate(matrix) if norms is None else norms[i]
            scaled = (matrix / norm).to(torch.get_default_dtype())
            self.register_buffer(f"view_{i}", scaled, persistent=False)

    @property
    def n_views(self) -> int:
        """Number of extra condition channels."""
        return len(self.channels)

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None, scalars: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The network's output for x (B, C, n) at steps t (B,) with the views appended to ``cond``."""
        views = [
            x[:, channel] @ getattr(self, f"view_{i}").to(device=x.device, dtype=x.dtype).T
            for i, channel in enumerate(self.channels)
        ]
        extra = torch.stack(views, dim=1)
        cond = extra if cond is None else torch.cat([cond, extra], dim=1)
        return self.network(x, t, cond=cond, scalars=scalars)
