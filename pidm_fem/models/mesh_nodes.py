"""A triangle mesh as the denoisers see it: node coordinates and triangles, no Firedrake.

The physics layer builds a :class:`MeshNodes` from Firedrake's P1 space, with the
nodes in the order of the data; the models only ever use this plain description.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch


@dataclass(frozen=True, eq=False)
class MeshNodes:
    """Nodes and triangles of a 2D P1 mesh, in the order of the data.

    Instances are immutable (their arrays are read-only copies) and compare and
    hash by identity, so that models can cache per-mesh tensors keyed by the object;
    copying (also ``copy.deepcopy`` of a model that holds one) returns the object itself.

    Parameters
    ----------
    coordinates
        Node coordinates, shape (n, 2); converted to float64.
    triangles
        Node indices of each triangle, shape (m, 3); converted to int64.
    """

    coordinates: np.ndarray
    triangles: np.ndarray

    def __post_init__(self) -> None:
        coordinates = np.array(self.coordinates, dtype=np.float64)
        triangles = np.array(self.triangles)
        if coordinates.ndim != 2 or coordinates.shape[1] != 2 or len(coordinates) < 3:
            raise ValueError(f"coordinates must have shape (n >= 3, 2), got {coordinates.shape}")
        if not np.isfinite(coordinates).all():
            raise ValueError("coordinates contain NaN or inf")
        if triangles.ndim != 2 or triangles.shape[1] != 3 or len(triangles) == 0:
            raise ValueError(f"triangles must have shape (m >= 1, 3), got {triangles.shape}")
        if not np.issubdtype(triangles.dtype, np.integer):
            raise ValueError(f"triangles must hold integer node indices, got dtype {triangles.dtype}")
        triangles = triangles.astype(np.int64)
        if triangles.min() < 0 or triangles.max() >= len(coordinates):
            raise ValueError(f"triangle node indices must lie in [0, {len(coordinates) - 1}]")
        if len(np.unique(triangles)) != len(coordinates):
            raise ValueError("every node must belong to at least one triangle")
        corners = coordinates[triangles]
        doubled_areas = _doubled_signed_areas(corners)
        scale = np.ptp(coordinates, axis=0).max() ** 2
        if (np.abs(doubled_areas) <= 1e-14 * scale).any():
            raise ValueError("the mesh has degenerate (zero-area) triangles")
        coordinates.flags.writeable = False
        triangles.flags.writeable = False
        object.__setattr__(self, "coordinates", coordinates)
        object.__setattr__(self, "triangles", triangles)

    def __copy__(self) -> MeshNodes:
        return self

    def __deepcopy__(self, memo: dict) -> MeshNodes:
        return self

    @property
    def n_nodes(self) -> int:
        """Number of nodes n."""
        return len(self.coordinates)

    @property
    def n_triangles(self) -> int:
        """Number of triangles m."""
        return len(self.triangles)

    @property
    def bounding_box(self) -> tuple[np.ndarray, np.ndarray]:
        """Lower and upper corners of the axis-aligned bounding box, each shape (2,)."""
        return self.coordinates.min(axis=0), self.coordinates.max(axis=0)

    @cached_property
    def edges(self) -> np.ndarray:
        """Unique undirected edges as node pairs (i, j) with i < j, shape (E, 2), sorted."""
        pairs = self.triangles[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2)
        pairs = np.sort(pairs, axis=1)
        edges = np.unique(pairs, axis=0)
        edges.flags.writeable = False
        return edges

    @cached_property
    def triangle_areas(self) -> np.ndarray:
        """Area of each triangle, shape (m,)."""
        areas = 0.5 * np.abs(_doubled_signed_areas(self.coordinates[self.triangles]))
        areas.flags.writeable = False
        return areas

    @cached_property
    def node_areas(self) -> np.ndarray:
        """Lumped P1 mass of each node (a third of the area of its triangles), shape (n,)."""
        areas = np.zeros(self.n_nodes)
        np.add.at(areas, self.triangles.ravel(), np.repeat(self.triangle_areas / 3.0, 3))
        areas.flags.writeable = False
        return areas

    @cached_property
    def nodal_gradient(self) -> np.ndarray:
        """The recovered gradient of P1 fields: matrices (2, n, n) mapping nodal values to d/dx and d/dy at the nodes.

        Each component at a node is the area-weighted mean of the (constant) P1 gradient
        over the node's triangles, the lumped L2 projection of the gradient onto P1.
        Exact for linear fields. Dense, like the other per-mesh views (meshes of a few
        thousand nodes).
        """
        corners = self.coordinates[self.triangles]
        doubled = _doubled_signed_areas(corners)
        # grad phi_i on a triangle: the opposite edge turned by -90 degrees over twice the signed area
        opposite = np.roll(corners, -1, axis=1) - np.roll(corners, 1, axis=1)
        basis_gradients = np.stack([opposite[..., 1], -opposite[..., 0]]) / doubled[None, :, None]
        # each triangle's share of its nodes' lumped mass, (m, 3): the weights of the mean
        weights = self.triangle_areas[:, None] / (3.0 * self.node_areas[self.triangles])
        rows = np.broadcast_to(self.triangles[:, :, None], (self.n_triangles, 3, 3))
        columns = np.broadcast_to(self.triangles[:, None, :], (self.n_triangles, 3, 3))
        gradient = np.zeros((2, self.n_nodes, self.n_nodes))
        for axis in range(2):
            np.add.at(gradient[axis], (rows, columns), weights[:, :, None] * basis_gradients[axis][:, None, :])
        gradient.flags.writeable = False
        return gradient


def _doubled_signed_areas(corners: np.ndarray) -> np.ndarray:
    """Twice the signed area of triangles given by their corners, shape (m, 3, 2) -> (m,)."""
    edge1 = corners[:, 1] - corners[:, 0]
    edge2 = corners[:, 2] - corners[:, 0]
    return edge1[:, 0] * edge2[:, 1] - edge1[:, 1] * edge2[:, 0]


def check_node_fields(fields: torch.Tensor, name: str, channels: int, n_nodes: int) -> None:
    """Raise a ValueError unless ``fields`` is a floating tensor of shape (B, channels, n_nodes).

    Parameters
    ----------
    fields
        The tensor to check.
    name
        Name of the argument, used in the error message.
    channels
        Expected number of channels.
    n_nodes
        Expected number of mesh nodes.
    """
    if not isinstance(fields, torch.Tensor) or not fields.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor")
    if fields.ndim != 3 or fields.shape[1] != channels or fields.shape[2] != n_nodes:
        raise ValueError(
            f"{name} must have shape (B, {channels}, {n_nodes}), got {tuple(fields.shape)}"
        )


def stack_node_inputs(
    x_t: torch.Tensor,
    t: torch.Tensor,
    cond: torch.Tensor | None,
    in_channels: int,
    cond_channels: int,
    n_nodes: int,
) -> torch.Tensor:
    """Check a denoiser's node inputs and concatenate x_t and cond along the channels.

    Parameters
    ----------
    x_t
        Noisy fields, shape (B, in_channels, n_nodes).
    t
        Timesteps; only its length B is checked here.
    cond
        Condition fields, shape (B, cond_channels, n_nodes); must be None iff cond_channels is 0.
    in_channels, cond_channels, n_nodes
        What the model expects.

    Returns
    -------
    torch.Tensor
        Shape (B, in_channels + cond_channels, n_nodes), in the dtype of x_t.
    """
    check_node_fields(x_t, "x_t", in_channels, n_nodes)
    if t.shape != (len(x_t),):
        raise ValueError(f"t must have shape ({len(x_t)},), one timestep per sample, got {tuple(t.shape)}")
    if cond_channels == 0:
        if cond is not None:
            raise ValueError("cond was given to a model built with cond_channels = 0")
        return x_t
    if cond is None:
        raise ValueError(f"the model needs cond of shape (B, {cond_channels}, {n_nodes})")
    check_node_fields(cond, "cond", cond_channels, n_nodes)
    if len(cond) != len(x_t):
        raise ValueError(f"cond must have one entry per sample ({len(x_t)}), got {len(cond)}")
    return torch.cat([x_t, cond.to(x_t.dtype)], dim=1)
