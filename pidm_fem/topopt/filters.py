"""Density filters of topology optimisation on meshes, each a linear map with its adjoint.

* :class:`DensityFilter`: the 88-line code's filter generalised to meshes: the filtered
  density of cell i is ``sum_j w_ij A_j x_j / sum_j w_ij A_j`` with cone weights
  ``w_ij = max(0, rmin - |c_i - c_j|)`` on the distances of cell centres (A the cell
  areas; on a uniform grid, exactly the 88-line code's ``H x / Hs``). The sparse matrix
  is built once, with scipy's KD-tree.
* :class:`SensitivityFilter`: the 88-line code's sensitivity filter
  ``dc_i <- sum_j w_ij A_j x_j dc_j / (max(1e-3, x_i) sum_j w_ij A_j)``: the design is
  not filtered, the sensitivities are (a heuristic: not the gradient of anything).
* :class:`HelmholtzFilter`: the PDE filter ``-r^2 lap(x~) + x~ = x`` (natural boundary
  conditions) with ``r = rmin / (2 sqrt 3)``, solved in P1 (and averaged back on the
  cells for a DG0 design); factorised once.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla
from scipy.spatial import cKDTree


def cell_centres_and_areas(mesh) -> tuple[np.ndarray, np.ndarray]:
    """(m, 2) centroids of the vertices of each cell and (m,) cell areas, in DG0 order."""
    import firedrake as fd

    D = fd.FunctionSpace(mesh, "DG", 0)
    centres = fd.Function(fd.VectorFunctionSpace(mesh, "DG", 0)).interpolate(fd.SpatialCoordinate(mesh))
    areas = fd.assemble(fd.TestFunction(D) * fd.dx).dat.data_ro.copy()
    return centres.dat.data_ro.copy(), areas


class DensityFilter:
    """The cone-weight density filter on cell centres (see the module description).

    Parameters
    ----------
    centres, areas
        Cell centres and areas (:func:`cell_centres_and_areas`).
    rmin
        Filter radius, in the units of the mesh.
    """

    filters_design = True

    def __init__(self, centres: np.ndarray, areas: np.ndarray, rmin: float):
        if rmin <= 0:
            raise ValueError(f"the filter radius must be positive, got {rmin}")
        pairs = cKDTree(centres).query_pairs(rmin, output_type="ndarray")
        i = np.concatenate([pairs[:, 0], pairs[:, 1], np.arange(len(centres))])
        j = np.concatenate([pairs[:, 1], pairs[:, 0], np.arange(len(centres))])
        weights = np.maximum(0.0, rmin - np.linalg.norm(centres[i] - centres[j], axis=1))
        n = len(centres)
        W = sp.csr_matrix((weights * areas[j], (i, j)), shape=(n, n))
        self.matrix = sp.diags(1.0 / np.asarray(W.sum(axis=1)).ravel()) @ W  # rows sum to one
        self.matrix_T = self.matrix.T.tocsr()

    def apply(self, x: np.ndarray) -> np.ndarray:
        """The filtered design."""
        return self.matrix @ x

    def adjoint(self, g: np.ndarray, x: np.ndarray | None = None) -> np.ndarray:
        """The gradient with respect to the design of a function whose gradient at the filtered design is ``g``."""
        return self.matrix_T @ g


class SensitivityFilter(DensityFilter):
    """The 88-line code's sensitivity filter (the design itself is not filtered)."""

    filters_design = False

    def apply(self, x: np.ndarray) -> np.ndarray:
        return x

    def adjoint(self, g: np.ndarray, x: np.ndarray | None = None) -> np.ndarray:
        return self.matrix @ (x * g) / np.maximum(1e-3, x)


class HelmholtzFilter:
    """The PDE (Helmholtz) filter with ``r = rmin / (2 sqrt 3)``, solved in P1.

    A DG0 design is loaded into P1 by its mass, ``(x, v)``, and the P1 solution is averaged
    back on the cells; a P1 design is filtered in P1 directly.

    Parameters
    ----------
    space
        The design's space: DG0 or P1 on the mesh.
    rmin
        The cone filter's radius that this filter matches.
    """

    filters_design = True

    def __init__(self, space, rmin: float):
        import firedrake as fd

        if rmin <= 0:
            raise ValueError(f"the filter radius must be positive, got {rmin}")
        r = rmin / (2 * np.sqrt(3))
        mesh = space.mesh()
        P1 = fd.FunctionSpace(mesh, "CG", 1)
        u, v = fd.TrialFunction(P1), fd.TestFunction(P1)
        A = _scipy(fd.assemble((r**2 * fd.inner(fd.grad(u), fd.grad(v)) + u * v) * fd.dx))
        # B loads the design into P1, (x, v); "average" maps the P1 solution back to the design's space
        B = _scipy(fd.assemble(fd.TrialFunction(space) * v * fd.dx)).tocsr()
        if space.ufl_element().degree() == 0:
            areas = fd.assemble(fd.TestFunction(space) * fd.dx).dat.data_ro.copy()
            average = (sp.diags(1.0 / areas) @ B.T).tocsr()
        else:
            average = sp.identity(P1.dof_count, format="csr")
        self._lu, self._B, self._average = spla.splu(A.tocsc()), B, average

    def apply(self, x: np.ndarray) -> np.ndarray:
        return self._average @ self._lu.solve(self._B @ x)

    def adjoint(self, g: np.ndarray, x: np.ndarray | None = None) -> np.ndarray:
        return self._B.T @ self._lu.solve(self._average.T @ g, trans="T")


def _scipy(matrix) -> sp.csr_matrix:
    """A Firedrake-assembled matrix as a scipy CSR matrix."""
    indptr, indices, values = matrix.petscmat.getValuesCSR()
    return sp.csr_matrix((values, indices, indptr), shape=matrix.petscmat.getSize())


#: the filters by name, as ``pidm-fem simp --filter`` names them
FILTERS = ("density", "sensitivity", "helmholtz")


def build_filter(kind: str, space, rmin: float):
    """The filter ``kind`` (one of :data:`FILTERS`) of radius ``rmin`` for designs in ``space`` (DG0; P1 for helmholtz)."""
    if kind == "helmholtz":
        return HelmholtzFilter(space, rmin)
    if space.ufl_element().degree() != 0:
        raise ValueError(f"the {kind} filter acts on cell values: use density DG0 (or the helmholtz filter)")
    centres, areas = cell_centres_and_areas(space.mesh())
    if kind == "density":
        return DensityFilter(centres, areas, rmin)
    if kind == "sensitivity":
        return SensitivityFilter(centres, areas, rmin)
    raise ValueError(f"filter must be one of {', '.join(FILTERS)}, got {kind!r}")
