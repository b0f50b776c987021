"""Load 2D triangle and quadrilateral meshes from files into Firedrake.

Every file is first read and checked by :func:`~pidm_fem.mesh.checks.read_mesh_arrays`
(one-line :class:`MeshError` for each fault). A gmsh ``.msh`` file (versions 2 and 4)
is then read natively by Firedrake (PETSc's gmsh reader), unless its vertices needed
cleaning (unused vertices, a constant non-zero z); every other format that meshio
reads (``.vtu``, ``.xdmf``, ...) and a cleaned ``.msh`` go from the checked arrays to a
PETSc DMPlex. In both cases boundary markers become Firedrake exterior facet ids: gmsh
physical groups of lines, or meshio ``line`` cells with an integer tag (``gmsh:physical``,
``medit:ref`` or the first integer cell-data array of the line blocks).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from pidm_fem.parallel import solver_comm

from .checks import MeshArrays, MeshError, read_mesh_arrays

if TYPE_CHECKING:
    import firedrake
    from mpi4py import MPI

LOG = logging.getLogger(__name__)

__all__ = ["MeshError", "load_mesh"]


def load_mesh(
    path: str | os.PathLike, *, name: str | None = None, comm: MPI.Comm | None = None
) -> firedrake.MeshGeometry:
    """Load a checked 2D triangle or quadrilateral mesh with its boundary markers.

    Parameters
    ----------
    path
        A gmsh ``.msh`` file or any file meshio reads.
    name
        Name of the Firedrake mesh (defaults to the file stem).
    comm
        MPI communicator (default :func:`pidm_fem.parallel.solver_comm`: ``COMM_WORLD``, or
        ``COMM_SELF`` in a run of several processes, each of which solves its own samples).

    Returns
    -------
    firedrake.MeshGeometry
        The mesh; boundary tags are its exterior facet ids.

    Raises
    ------
    MeshError
        One line naming the file and the fault (see :mod:`pidm_fem.mesh.checks`).
    """
    import firedrake as fd
    from firedrake.petsc import PETSc

    path = Path(path)
    arrays = read_mesh_arrays(path)
    if arrays.dropped_vertices:
        LOG.warning("%s: dropped %d vertices that no cell uses", path, arrays.dropped_vertices)
    comm = comm if comm is not None else solver_comm()
    name = name or path.stem
    if path.suffix.lower() == ".msh" and not arrays.dropped_vertices and arrays.planar_z == 0.0:
        try:
            return fd.Mesh(str(path), name=name, comm=comm)
        except (PETSc.Error, RuntimeError, ValueError) as err:
            raise MeshError(path, f"cannot read gmsh file ({err})") from None
    return fd.Mesh(_plex(path, arrays, comm), name=name, comm=comm)


def _plex(path: Path, arrays: MeshArrays, comm):
    """A DMPlex of the checked arrays with a "Face Sets" label of their boundary lines."""
    from firedrake.petsc import PETSc

    plex = PETSc.DMPlex().createFromCellList(2, arrays.cells.astype(PETSc.IntType), arrays.points, comm=comm)
    plex.createLabel("Face Sets")
    v_start, _ = plex.getDepthStratum(0)
    for edges, tags in arrays.lines:
        for (a, b), tag in zip(edges, tags):
            join = plex.getJoin([v_start + a, v_start + b])
            if len(join) != 1:
                raise MeshError(path, f"boundary line ({a}, {b}) is not an edge of the cells")
            plex.setLabelValue("Face Sets", join[0], int(tag))
    return plex
