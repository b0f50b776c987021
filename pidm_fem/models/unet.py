"""The raster U-Net denoiser: a DDPM-style U-Net on a raster over the mesh's bounding box.

:class:`UNet` is the image network (residual blocks with GroupNorm and SiLU, the
conditioning embedding injected in every block by scale and shift of the second
normalisation, self-attention at the lowest resolutions, skip connections between
the downsampling and upsampling paths). :class:`RasterUNet` wraps it for fields on
mesh nodes: FEM point evaluation onto the raster plus an inside/outside mask
channel, the U-Net, and bilinear interpolation back at the nodes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pidm_fem.models.embeddings import ConditioningEmbedding
from pidm_fem.models.mesh_nodes import MeshNodes, stack_node_inputs
from pidm_fem.models.raster import RasterGrid, bilinear_operator, point_evaluation_operator


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with up to 32 groups: ``gcd(32, channels)`` groups of equal size."""
    return nn.GroupNorm(math.gcd(32, channels), channels)


class ResidualBlock(nn.Module):
    """Residual block: GroupNorm, SiLU, 3x3 conv, embedding-modulated GroupNorm, SiLU, dropout, 3x3 conv.

    Parameters
    ----------
    in_channels, out_channels
        Channels of the input and the output (a 1x1 conv adapts the skip if they differ).
    embedding_dim
        Size of the per-sample conditioning embedding.
    dropout
        Dropout probability before the second convolution.
    """

    def __init__(
        self, in_channels: int, out_channels: int, embedding_dim: int, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.norm1 = group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.modulation = nn.Linear(embedding_dim, 2 * out_channels)
        self.norm2 = group_norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        """Map (B, in, H, W) and the embedding (B, E) to (B, out, H, W)."""
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.modulation(F.silu(embedding))[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class SelfAttention(nn.Module):
    """Multi-head self-attention over the pixels of a feature map, with a residual connection.

    Parameters
    ----------
    channels
        Feature channels.
    head_channels
        Channels per head; one head if ``channels`` is not a multiple of it.
    """

    def __init__(self, channels: int, head_channels: int = 32) -> None:
        super().__init__()
        self.heads = channels // head_channels if channels % head_channels == 0 else 1
        self.norm = group_norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.projection = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map (B, C, H, W) to (B, C, H, W)."""
        batch, channels, height, width = x.shape
        qkv = self.qkv(self.norm(x)).reshape(batch, 3, self.heads, channels // self.heads, height * width)
        query, key, value = qkv.transpose(-1, -2).unbind(dim=1)
        attended = F.scaled_dot_product_attention(query, key, value)
        return x + self.projection(attended.transpose(-1, -2).reshape(batch, channels, height, width))


class _Stage(nn.Module):
    """A residual block, followed by self-attention where asked."""

    def __init__(
        self, in_channels: int, out_channels: int, embedding_dim: int, attention: bool, dropout: float
    ) -> None:
        super().__init__()
        self.block = ResidualBlock(in_channels, out_channels, embedding_dim, dropout)
        self.attention = SelfAttention(out_channels) if attention else nn.Identity()

    def forward(self, x: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        return self.attention(self.block(x, embedding))


class _Upsample(nn.Module):
    """Nearest-neighbour upsampling by 2 followed by a 3x3 convolution."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class UNet(nn.Module):
    """DDPM/improved-diffusion style U-Net on images, conditioned by a per-sample embedding.

    Parameters
    ----------
    in_channels, out_channels
        Channels of the input and output images.
    embedding_dim
        Size of the conditioning embedding given to :meth:`forward`.
    width
        Channels at the finest level.
    channel_mult
        Channel multiplier of each level, finest first; the image is halved between
        levels, so H and W must be multiples of ``2 ** (len(channel_mult) - 1)``.
    num_res_blocks
        Residual blocks per level on the way down (one more on the way up).
    attention_levels
        Indices of the levels with self-attention after each block (the middle
        always has one); default: the two coarsest levels.
    dropout
        Dropout probability in the residual blocks.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        embedding_dim: int,
        width: int = 32,
        channel_mult: Sequence[int] = (1, 2, 4, 8),
        num_res_blocks: int = 2,
        attention_levels: Sequence[int] | None = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if width < 1 or not channel_mult or min(channel_mult) < 1 or num_res_blocks < 1:
            raise ValueError("width, every channel_mult entry and num_res_blocks must be positive")
        n_levels = len(channel_mult)
        if attention_levels is None:
            attention_levels = range(max(0, n_levels - 2), n_levels)
        attention_levels = set(attention_levels)
        if not attention_levels <= set(range(n_levels)):
            raise ValueError(
                f"attention_levels must be level indices in 0..{n_levels - 1}, got {sorted(attention_levels)}"
            )
        self.downsampling_factor = 2 ** (n_levels - 1)

        self.input_conv = nn.Conv2d(in_channels, width, 3, padding=1)
        self.down = nn.ModuleList()
        skip_channels = [width]
        channels = width
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                attention = level in attention_levels
                self.down.append(_Stage(channels, width * mult, embedding_dim, attention, dropout))
                channels = width * mult
                skip_channels.append(channels)
            if level < n_levels - 1:
                self.down.append(nn.Conv2d(channels, channels, 3, stride=2, padding=1))
                skip_channels.append(channels)

        self.middle = nn.ModuleList(
            [
                _Stage(channels, channels, embedding_dim, True, dropout),
                _Stage(channels, channels, embedding_dim, False, dropout),
            ]
        )

        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for _ in range(num_res_blocks + 1):
                attention = level in attention_levels
                self.up.append(_Stage(channels + skip_channels.pop(), width * mult, embedding_dim, attention, dropout))
                channels = width * mult
            if level > 0:
                self.up.append(_Upsample(channels))

        self.output = nn.Sequential(
            group_norm(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1)
        )

    def forward(self, x: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        """Map images (B, in, H, W) and the embedding (B, E) to (B, out, H, W)."""
        factor = self.downsampling_factor
        if x.shape[-1] % factor or x.shape[-2] % factor:
            raise ValueError(f"image sides must be multiples of {factor}, got {tuple(x.shape[-2:])}")
        h = self.input_conv(x)
        skips = [h]
        for module in self.down:
            h = module(h, embedding) if isinstance(module, _Stage) else module(h)
            skips.append(h)
        for stage in self.middle:
            h = stage(h, embedding)
        for module in self.up:
            if isinstance(module, _Stage):
                h = module(torch.cat([h, skips.pop()], dim=1), embedding)
            else:
                h = module(h)
        return self.output(h)


class RasterUNet(nn.Module):
    """Denoiser for fields on mesh nodes through a :class:`UNet` on a raster over the mesh.

    Nodal fields (and condition fields) are evaluated as P1 functions at the raster
    points (0 outside the domain), a mask channel (1 inside, 0 outside) is appended,
    the raster is zero-padded on its high sides to a multiple of the U-Net's
    downsampling factor, and the cropped U-Net output is interpolated bilinearly back
    at the nodes. Predicts x0 directly.

    Parameters
    ----------
    mesh
        The mesh the fields live on (the operators are built for it once).
    in_channels, out_channels
        Number of fields C in and out.
    cond_channels
        Number of condition fields on the mesh (0 for none).
    n_scalars
        Number of per-sample scalar conditions (0 for none).
    n_timesteps
        Number of diffusion steps T (timesteps lie in 0..T-1).
    width
        Channels at the finest U-Net level.
    raster_shape
        (H, W) of the raster; default :func:`~pidm_fem.models.raster.default_raster_shape`.
    channel_mult, num_res_blocks, attention_levels, dropout
        Passed to :class:`UNet`.
    """

    def __init__(
        self,
        mesh: MeshNodes,
        in_channels: int,
        out_channels: int,
        cond_channels: int = 0,
        n_scalars: int = 0,
        n_timesteps: int = 100,
        width: int = 32,
        raster_shape: tuple[int, int] | None = None,
        channel_mult: Sequence[int] = (1, 2, 4, 8),
        num_res_blocks: int = 2,
        attention_levels: Sequence[int] | None = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if in_channels < 1 or out_channels < 1 or cond_channels < 0:
            raise ValueError("in_channels and out_channels must be positive, cond_channels non-negative")
        self.mesh = mesh
        self.in_channels, self.out_channels, self.cond_channels = in_channels, out_channels, cond_channels
        self.grid = RasterGrid.for_mesh(mesh, raster_shape)
        self.to_raster, inside = point_evaluation_operator(mesh, self.grid)
        self.to_mesh = bilinear_operator(self.grid, mesh.coordinates)
        mask = torch.as_tensor(inside.reshape(1, 1, *self.grid.shape), dtype=torch.float32)
        self.register_buffer("mask", mask, persistent=False)
        embedding_dim = 4 * width
        self.embedding = ConditioningEmbedding(n_timesteps, width, embedding_dim, n_scalars)
        self.unet = UNet(
            in_channels + cond_channels + 1, out_channels, embedding_dim, width, channel_mult, num_res_blocks,
            attention_levels, dropout,
        )
        factor = self.unet.downsampling_factor
        raster_height, raster_width = self.grid.shape
        self.padding = (0, -raster_width % factor, 0, -raster_height % factor)

    def forward(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        cond: torch.Tensor | None = None,
        scalars: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict x0 (B, C_out, n) from noisy fields x_t (B, C, n), timesteps t (B,) and conditions.

        Parameters
        ----------
        x_t
            Noisy fields on the mesh nodes, shape (B, in_channels, n).
        t
            Integer timesteps, shape (B,).
        cond
            Condition fields, shape (B, cond_channels, n); required iff cond_channels > 0.
        scalars
            Scalar conditions, shape (B, n_scalars); required iff n_scalars > 0.
        """
        fields = stack_node_inputs(x_t, t, cond, self.in_channels, self.cond_channels, self.mesh.n_nodes)
        embedding = self.embedding(t, scalars)
        batch, height, width = len(x_t), *self.grid.shape
        raster = self.to_raster(fields).reshape(batch, -1, height, width)
        raster = torch.cat([raster, self.mask.to(raster.dtype).expand(batch, 1, height, width)], dim=1)
        output = self.unet(F.pad(raster, self.padding), embedding)[..., :height, :width]
        return self.to_mesh(output.reshape(batch, self.out_channels, height * width))

