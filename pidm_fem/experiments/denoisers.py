"""The denoiser a run configuration asks for."""

from __future__ import annotations

from torch import nn

from pidm_fem.models import MeshDenoiser, MeshNodes, RasterUNet
from pidm_fem.training.config import ConfigError, ModelConfig

#: attention heads of the mesh denoiser's physics attention (its width must be a multiple)
MESH_HEADS = 4


def build_denoiser(
    config: ModelConfig,
    mesh: MeshNodes,
    n_fields: int,
    *,
    cond_channels: int = 0,
    n_timesteps: int = 100,
) -> nn.Module:
    """Make the denoiser of ``config`` for ``n_fields`` fields on ``mesh``.

    ``kind: unet`` gives a :class:`~pidm_fem.models.RasterUNet` (default raster and
    levels); ``attention: false`` removes the self-attention of its levels (the
    middle block keeps its one). ``kind: mesh`` gives a
    :class:`~pidm_fem.models.MeshDenoiser` with its default depth and slices and,
    with ``input_products``, the products of its inputs; its global mixing is its
    attention, so it refuses ``attention: false``. Both take
    ``width`` from the configuration. Weights are drawn from the global torch RNG.

    Parameters
    ----------
    config
        The ``model`` section of the run configuration.
    mesh
        The mesh the fields live on.
    n_fields
        Number of generated fields C (channels in and out).
    cond_channels
        Number of per-node condition channels (C for physics-guided conditioning).
    n_timesteps
        Number of diffusion steps T.

    Raises
    ------
    ConfigError
        If the width does not suit the denoiser, a mesh denoiser is asked to drop attention, or a
        U-Net to take input products.
    """
    width = config.width
    if width % 2:
        raise ConfigError(f"model.width: must be even (the time embedding has width entries), got {width}")
    if config.kind == "unet":
        if config.input_products:
            raise ConfigError("model.input_products: only the mesh denoiser has them (kind: mesh); got kind: unet")
        return RasterUNet(
            mesh,
            n_fields,
            n_fields,
            cond_channels=cond_channels,
            n_timesteps=n_timesteps,
            width=width,
            attention_levels=None if config.attention else (),
        )
    if not config.attention:
        raise ConfigError("model.attention: the mesh denoiser needs its attention (its global mixing); got false")
    if width % MESH_HEADS:
        raise ConfigError(f"model.width: must be a multiple of {MESH_HEADS} for the mesh denoiser, got {width}")
    return MeshDenoiser(
        n_fields,
        n_fields,
        cond_channels=cond_channels,
        n_timesteps=n_timesteps,
        width=width,
        n_heads=MESH_HEADS,
        input_products=config.input_products,
        mesh=mesh,
    )
