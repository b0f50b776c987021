"""How the fields of one sample are packed in one row of a tensor.

A row is the concatenation of the fields in their declared order. Each field's
block is Firedrake's DOF order of its function space: ``Function.dat.data``
flattened, so for a vector field it is node-major, ``[u0_x, u0_y, u1_x, ...]``.
:meth:`FieldLayout.dof_coordinates` gives the coordinates of every entry of a
block (a vector field repeats each node's coordinates once per component), so
that models and data files can agree on the ordering.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import firedrake as fd
import numpy as np


def space_size(space: fd.FunctionSpace) -> int:
    """Number of scalar values of a Function in ``space`` (nodes times value size)."""
    return space.node_count * int(np.prod(space.value_shape, dtype=int))


def space_dof_coordinates(space: fd.FunctionSpace) -> np.ndarray:
    """Coordinates of every scalar value of a Function in ``space``, shape (size, gdim).

    Works for point-evaluation (Lagrange, including DG0) elements of any value shape.
    """
    mesh = space.mesh()
    element = space.ufl_element()
    scalar = element.sub_elements[0] if element.sub_elements and space.value_shape else element
    nodes = fd.Function(fd.VectorFunctionSpace(mesh, scalar)).interpolate(fd.SpatialCoordinate(mesh))
    per_node = int(np.prod(space.value_shape, dtype=int))
    return np.repeat(nodes.dat.data_ro, per_node, axis=0)


@dataclass(frozen=True)
class FieldLayout:
    """Names, spaces and offsets of the fields packed in a tensor row.

    Parameters
    ----------
    fields
        Ordered mapping from field name to its Firedrake function space.
    """

    names: tuple[str, ...]
    spaces: tuple[fd.FunctionSpace, ...]

    @classmethod
    def from_spaces(cls, fields: Mapping[str, fd.FunctionSpace]) -> "FieldLayout":
        """Build a layout from an ordered ``{name: space}`` mapping."""
        if not fields:
            raise ValueError("a layout needs at least one field")
        meshes = {id(space.mesh()) for space in fields.values()}
        if len(meshes) != 1:
            raise ValueError("all fields of a layout must live on one mesh")
        return cls(tuple(fields), tuple(fields.values()))

    @property
    def mesh(self) -> fd.MeshGeometry:
        """The mesh of the fields."""
        return self.spaces[0].mesh()

    @property
    def sizes(self) -> tuple[int, ...]:
        """Number of values of each field."""
        return tuple(space_size(space) for space in self.spaces)

    @property
    def offsets(self) -> tuple[int, ...]:
        """Start of each field's block in a row (and the row length last)."""
        return tuple(int(v) for v in np.concatenate([[0], np.cumsum(self.sizes)]))

    @property
    def total(self) -> int:
        """Length of a row."""
        return self.offsets[-1]

    def space(self, name: str) -> fd.FunctionSpace:
        """Function space of field ``name``."""
        return self.spaces[self._index(name)]

    def block(self, name: str) -> slice:
        """Slice of field ``name`` in a row."""
        i = self._index(name)
        return slice(self.offsets[i], self.offsets[i + 1])

    def split(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Split a batch of rows, shape (B, total), into ``{name: (B, size)}`` views."""
        x = self.check(x)
        return {name: x[:, self.block(name)] for name in self.names}

    def join(self, parts: Mapping[str, np.ndarray]) -> np.ndarray:
        """Inverse of :meth:`split`."""
        return np.concatenate([np.asarray(parts[name]) for name in self.names], axis=1)

    def check(self, x: np.ndarray) -> np.ndarray:
        """Return ``x`` as a (B, total) array or raise a ValueError naming the mismatch."""
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[1] != self.total:
            raise ValueError(f"expected a batch of shape (B, {self.total}) for fields {self.names}, got {x.shape}")
        return x

    def dof_coordinates(self, name: str | None = None) -> np.ndarray:
        """Coordinates of the entries of field ``name``'s block, or of a whole row if None."""
        if name is None:
            return np.concatenate([space_dof_coordinates(space) for space in self.spaces])
        return space_dof_coordinates(self.space(name))

    def functions(self, row: np.ndarray) -> dict[str, fd.Function]:
        """Firedrake Functions holding one row's fields."""
        row = self.check(np.asarray(row).reshape(1, -1))[0]
        out = {}
        for name, space in zip(self.names, self.spaces):
            function = fd.Function(space, name=name)
            function.dat.data[:] = row[self.block(name)].reshape(function.dat.data.shape)
            out[name] = function
        return out

    def _index(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError:
            raise KeyError(f"no field {name!r}; fields are {self.names}") from None


def as_layout(fields: "FieldLayout | Mapping[str, fd.FunctionSpace] | Sequence") -> FieldLayout:
    """Accept a layout or an ordered ``{name: space}`` mapping."""
    return fields if isinstance(fields, FieldLayout) else FieldLayout.from_spaces(dict(fields))
