"""Packed sample rows as per-node channel tensors, for scalar and vector fields at the mesh's vertices.

The bridge packs a sample as one row ``[f_1, ..., f_F]`` (:class:`~pidm_fem.bridge.FieldLayout`),
each block in the DOF order of its space (node-major for a vector field); the
diffusion layer and the denoisers work on tensors (B, C, n): one channel per scalar
field and per component of a vector field, on the n nodes of the first field. Fields
may live on different spaces (a P1 vector displacement beside a P1 scalar density) as
long as their nodes are the same points; each field's node order is matched to the
first field's once, by coordinates. Fields whose values sit elsewhere (DG0 cell
values, P2 edge nodes) are refused: the mesh denoisers see vertex fields.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy.spatial import cKDTree

from pidm_fem.bridge import FieldLayout
from pidm_fem.bridge.layout import space_dof_coordinates
from pidm_fem.models import MeshNodes

#: names of the components of a vector field's channels
COMPONENTS = ("x", "y", "z")


def _node_order(reference: np.ndarray, points: np.ndarray, name: str) -> np.ndarray:
    """Indices ``order`` with ``points[order] == reference`` (the same point set), or a ValueError."""
    if len(points) != len(reference):
        raise ValueError(
            f"field {name!r} has {len(points)} nodes, the first field {len(reference)}; "
            "the mesh denoisers need every field at the same nodes"
        )
    distance, order = cKDTree(points).query(reference)
    scale = np.ptp(reference, axis=0).max() or 1.0
    if distance.max() > 1e-10 * scale or len(np.unique(order)) != len(order):
        raise ValueError(f"field {name!r} does not sit at the nodes of the first field")
    return order


class NodeFields:
    """Rows of a layout viewed as (B, C, n) channel tensors on the first field's nodes.

    Parameters
    ----------
    layout
        The packing of a sample row.
    names
        The fields that become channels, in order (default: every field of the layout).

    Raises
    ------
    ValueError
        If a field's values do not sit at the first field's nodes.
    """

    def __init__(self, layout: FieldLayout, names: Sequence[str] | None = None):
        self.layout = layout
        self.fields = tuple(layout.names if names is None else names)
        first = layout.space(self.fields[0])
        per_node = max(1, int(np.prod(first.value_shape, dtype=int)))
        self.node_coordinates = space_dof_coordinates(first)[::per_node]
        #: number of nodes n (values per channel)
        self.n_nodes = len(self.node_coordinates)
        channel_names, channel_fields, index = [], [], []
        for name in self.fields:
            space = layout.space(name)
            components = int(np.prod(space.value_shape, dtype=int)) if space.value_shape else 1
            points = space_dof_coordinates(space)[::components]
            order = _node_order(self.node_coordinates, points, name)
            start = layout.block(name).start
            for component in range(components):
                index.append(start + order * components + component)
                channel_names.append(name if not space.value_shape else f"{name}_{COMPONENTS[component]}")
                channel_fields.append(name)
        self._names = tuple(channel_names)
        self._channel_fields = tuple(channel_fields)
        self._index = torch.from_numpy(np.stack(index))
        #: whether the channels are the whole row in order (then the conversions are reshapes)
        self._reshape = len(self.fields) == len(layout.names) and bool(
            torch.equal(self._index.flatten(), torch.arange(layout.total))
        )

    @property
    def names(self) -> tuple[str, ...]:
        """Channel names, in channel order (a vector field ``u`` gives ``u_x``, ``u_y``)."""
        return self._names

    @property
    def n_channels(self) -> int:
        """Number of channels C."""
        return len(self._names)

    def channel(self, name: str) -> int:
        """Channel index of the channel ``name``."""
        if name not in self._names:
            raise KeyError(f"no channel {name!r}; channels are {self._names}")
        return self._names.index(name)

    def channels_of(self, fields: Sequence[str]) -> tuple[int, ...]:
        """The channels of the fields ``fields`` (every component of a vector field)."""
        return tuple(c for c, name in enumerate(self._channel_fields) if name in fields)

    def to_nodes(self, rows: torch.Tensor) -> torch.Tensor:
        """Packed rows (B, total) to channels (B, C, n) (a view when the channels are the row in order)."""
        if rows.ndim != 2 or rows.shape[1] != self.layout.total:
            raise ValueError(
                f"expected rows of shape (B, {self.layout.total}) for fields {self.layout.names}, "
                f"got {tuple(rows.shape)}"
            )
        if self._reshape:
            return rows.reshape(rows.shape[0], self.n_channels, self.n_nodes)
        return rows[:, self._index.to(rows.device)]

    def to_rows(self, x: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Channels (B, C, n) to packed rows (B, total), differentiable.

        ``rows`` (B, total) holds the values of the fields that are no channels (the
        conditions); needed when there are any.
        """
        if x.ndim != 3 or x.shape[1:] != (self.n_channels, self.n_nodes):
            raise ValueError(f"expected fields of shape (B, {self.n_channels}, {self.n_nodes}), got {tuple(x.shape)}")
        if self._reshape:
            return x.reshape(x.shape[0], self.layout.total)
        if rows is None:
            if len(self.fields) != len(self.layout.names):
                raise ValueError(
                    f"the rows of the fields {self.layout.names} need the values of the non-channel fields"
                )
            rows = x.new_zeros(x.shape[0], self.layout.total)
        index = self._index.to(x.device).flatten().expand(x.shape[0], -1)
        return rows.to(x.dtype).scatter(1, index, x.reshape(x.shape[0], -1))

    def mesh_nodes(self) -> MeshNodes:
        """The mesh as the denoisers see it: the nodes and the triangles of the first field's P1 space.

        Raises
        ------
        ValueError
            If the first field is not P1 (three nodes per triangle).
        """
        triangles = np.asarray(self.layout.space(self.fields[0]).cell_node_list)
        if triangles.ndim != 2 or triangles.shape[1] != 3:
            raise ValueError(
                f"the denoisers need P1 fields (3 nodes per triangle), got {triangles.shape[-1]} nodes per cell"
            )
        return MeshNodes(self.node_coordinates, triangles)
