"""Packed sample rows as per-node channel tensors, for scalar fields that share one space.

The bridge packs a sample as one row ``[f_1, ..., f_C]`` (:class:`~pidm_fem.bridge.FieldLayout`),
each block in the DOF order of its space; the diffusion layer and the denoisers
work on tensors (B, C, n), one channel per field on the n mesh nodes. When every
field is scalar and lives in the same space, the blocks have the same length and
the same node order, so the conversion is a reshape ``(B, C n) <-> (B, C, n)``.
Other layouts (vector fields, fields in different spaces) are refused.
"""

from __future__ import annotations

import numpy as np
import torch

from pidm_fem.bridge import FieldLayout
from pidm_fem.models import MeshNodes


class NodeFields:
    """Rows of a layout of same-space scalar fields viewed as (B, C, n) tensors.

    Parameters
    ----------
    layout
        The packing of a sample row; every field must be scalar and in one space.

    Raises
    ------
    ValueError
        If a field is not scalar or lives in another space than the first field.
    """

    def __init__(self, layout: FieldLayout):
        first = layout.spaces[0]
        for name, space in zip(layout.names, layout.spaces):
            if space.value_shape:
                raise ValueError(
                    f"field {name!r} has value shape {tuple(space.value_shape)}; "
                    "NodeFields covers scalar fields only"
                )
            if space != first:
                raise ValueError(
                    f"field {name!r} lives in another space than field {layout.names[0]!r}; "
                    "NodeFields covers fields that share one space"
                )
        self.layout = layout
        #: number of nodes n (values per field)
        self.n_nodes = layout.sizes[0]

    @property
    def names(self) -> tuple[str, ...]:
        """Field names, in channel order."""
        return self.layout.names

    @property
    def n_channels(self) -> int:
        """Number of fields C."""
        return len(self.layout.names)

    def channel(self, name: str) -> int:
        """Channel index of field ``name``."""
        if name not in self.names:
            raise KeyError(f"no field {name!r}; fields are {self.names}")
        return self.names.index(name)

    def to_nodes(self, rows: torch.Tensor) -> torch.Tensor:
        """Packed rows (B, C n) to per-node channels (B, C, n) (a view when possible)."""
        if rows.ndim != 2 or rows.shape[1] != self.layout.total:
            raise ValueError(
                f"expected rows of shape (B, {self.layout.total}) for fields {self.names}, got {tuple(rows.shape)}"
            )
        return rows.reshape(rows.shape[0], self.n_channels, self.n_nodes)

    def to_rows(self, x: torch.Tensor) -> torch.Tensor:
        """Per-node channels (B, C, n) to packed rows (B, C n) (a view when possible)."""
        if x.ndim != 3 or x.shape[1:] != (self.n_channels, self.n_nodes):
            raise ValueError(
                f"expected fields of shape (B, {self.n_channels}, {self.n_nodes}), got {tuple(x.shape)}"
            )
        return x.reshape(x.shape[0], self.layout.total)

    def mesh_nodes(self) -> MeshNodes:
        """The mesh as the denoisers see it: DOF coordinates and the triangles of the P1 space.

        Raises
        ------
        ValueError
            If the space is not P1 (three nodes per triangle).
        """
        space = self.layout.spaces[0]
        triangles = np.asarray(space.cell_node_list)
        if triangles.ndim != 2 or triangles.shape[1] != 3:
            raise ValueError(
                f"the denoisers need P1 fields (3 nodes per triangle), got {triangles.shape[-1]} nodes per cell"
            )
        return MeshNodes(self.layout.dof_coordinates(self.names[0]), triangles)
