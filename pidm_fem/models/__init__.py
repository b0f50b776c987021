"""Denoisers for fields on the nodes of a 2D triangle mesh (plain PyTorch, no Firedrake).

Every denoiser maps ``(x_t (B, C, n), t (B,), cond (B, C_cond, n) | None,
scalars (B, S) | None)`` to a prediction of x0 of shape (B, C_out, n).
"""

from __future__ import annotations

from torch import nn

from pidm_fem.models.mesh_denoiser import MeshDenoiser
from pidm_fem.models.mesh_nodes import MeshNodes
from pidm_fem.models.unet import RasterUNet

__all__ = ["MeshDenoiser", "MeshNodes", "RasterUNet", "count_parameters"]


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters (entries of tensors with ``requires_grad``) of ``module``."""
    return sum(parameter.numel() for parameter in module.parameters() if parameter.requires_grad)
