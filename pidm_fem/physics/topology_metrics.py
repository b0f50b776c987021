"""What a generated design is worth: independent solves and checks of thresholded designs.

A design row (generated or SIMP's) is judged as a manufacturer would build it: each cell
is solid when the mean of its nodal densities is at least 0.5 and void otherwise (E_min).
Its supports and load are rebuilt from the row's condition fields (the support mask and
the nodal load), so that any row can be judged, whatever produced it. Per design:

* ``compliance``: ``F(u)`` of an independent Firedrake solve of the thresholded design
  (a DG0 density), and ``compliance_error = (c - c_ref) / c_ref`` against the reference
  design of the same problem judged the same way (signed: negative is stiffer);
* ``volume_fraction`` of the thresholded design, and
  ``volume_fraction_error = |VF - VF_target| / VF_target``;
* ``floating``: the solid cells form more than one connected component (cells are
  neighbours when they share an edge), with the component count;
* ``load_disrespect``: no solid cell touches a loaded vertex.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components

from pidm_fem.physics.elasticity import Elasticity, Material, PointLoad, Support, vertex_nodes

#: a cell is solid when the mean of its nodal densities reaches this
THRESHOLD = 0.5


class DesignJudge:
    """Thresholded designs of the topology problem's rows: compliance, volume, connectivity, load.

    Parameters
    ----------
    generator
        The problem's sample generator (its mesh, P1 and vector spaces and layout).
    material
        The material of the solves.
    """

    def __init__(self, generator: Any, material: Material):
        import firedrake as fd

        self.layout = generator.layout
        self.mesh = generator.mesh
        self.material = material
        self.P1 = generator.P1
        self.cells = self.P1.cell_node_map().values  # (n_cells, vertices per cell), P1 node indices
        self.cell_areas = fd.assemble(fd.TestFunction(fd.FunctionSpace(self.mesh, "DG", 0)) * fd.dx).dat.data_ro.copy()
        self.nodes = vertex_nodes(generator.V)

    @cached_property
    def cell_adjacency(self) -> csr_matrix:
        """Cells x cells, 1 where two cells share an edge (two vertices)."""
        n_cells, per_cell = self.cells.shape
        incidence = csr_matrix((np.ones(self.cells.size), (np.repeat(np.arange(n_cells), per_cell), self.cells.ravel())),
                               shape=(n_cells, self.P1.dof_count))
        shared = (incidence @ incidence.T).tocoo()
        keep = (shared.data >= 2) & (shared.row != shared.col)
        return csr_matrix((np.ones(int(keep.sum())), (shared.row[keep], shared.col[keep])), shape=(n_cells, n_cells))

    def solid_cells(self, row: np.ndarray) -> np.ndarray:
        """Boolean per cell: the mean of the cell's nodal densities is at least 0.5."""
        rho = row[self.layout.block("rho")]
        return rho[self.cells].mean(axis=1) >= THRESHOLD

    def solid_components(self, solid: np.ndarray) -> int:
        """The number of connected components of the solid cells (0 for an empty design)."""
        if not solid.any():
            return 0
        return int(connected_components(self.cell_adjacency[solid][:, solid], directed=False)[0])

    def elasticity(self, row: np.ndarray) -> Elasticity:
        """The row's problem with a DG0 design: supports from its mask, point loads from its nodal load."""
        fields = self.layout.split(row[None])
        mask = fields["support"][0].reshape(-1, 2) > 0.5
        load = fields["load"][0].reshape(-1, 2)
        supports = []
        for kind, nodes in (("fixed", mask[:, 0] & mask[:, 1]), ("roller_x", mask[:, 0] & ~mask[:, 1]),
                            ("roller_y", ~mask[:, 0] & mask[:, 1])):
            if nodes.any():
                supports.append(Support(kind, nodes=tuple(int(i) for i in np.flatnonzero(nodes))))
        loads = [PointLoad(tuple(self.nodes[i]), tuple(load[i])) for i in np.flatnonzero(np.abs(load).sum(axis=1) > 0)]
        return Elasticity(self.mesh, supports, loads, material=self.material, density="DG0")

    def loaded_nodes(self, row: np.ndarray) -> np.ndarray:
        """Indices of the nodes with a nonzero load."""
        return np.flatnonzero(np.abs(row[self.layout.block("load")].reshape(-1, 2)).sum(axis=1) > 0)

    def judge(self, row: np.ndarray) -> dict[str, Any]:
        """The thresholded design's compliance, volume fraction and its error, connectivity and load contact."""
        solid = self.solid_cells(row)
        elasticity = self.elasticity(row)
        elasticity.solve(solid.astype(float))
        target = float(row[self.layout.block("volfrac")][0])
        volume = float(self.cell_areas @ solid / self.cell_areas.sum())
        components = self.solid_components(solid)
        touching = np.isin(self.cells, self.loaded_nodes(row)).any(axis=1)
        return {
            "compliance": elasticity.compliance(),
            "volume_fraction": volume,
            "volume_fraction_error": abs(volume - target) / target,
            "solid_components": components,
            "floating": components > 1,
            "load_disrespect": not bool((solid & touching).any()),
        }

    def compare(self, rows: np.ndarray, references: np.ndarray) -> list[dict[str, Any]]:
        """:meth:`judge` of each row with its ``compliance_error`` against the reference row of the same problem."""
        judged = []
        for row, reference in zip(rows, references):
            entry = self.judge(row)
            c_ref = self.judge(reference)["compliance"]
            entry["compliance_error"] = (entry["compliance"] - c_ref) / c_ref
            judged.append(entry)
        return judged
