"""Load 2D triangle meshes from files into Firedrake.

gmsh ``.msh`` files (versions 2 and 4) are read natively by Firedrake (PETSc's
gmsh reader); every other format that meshio reads (``.vtu``, ``.xdmf``, ...)
goes through meshio to a PETSc DMPlex. In both cases boundary markers become
Firedrake exterior facet ids: gmsh physical groups of lines, or meshio ``line``
cells with an integer tag (``gmsh:physical``, ``medit:ref`` or the first
integer cell-data array of the line blocks).
"""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import firedrake
    from mpi4py import MPI

#: cell-data names searched, in order, for integer boundary tags of line cells
TAG_NAMES = ("gmsh:physical", "medit:ref", "cell_tags", "boundary_ids")
_3D_CELLS = {"tetra", "tetra10", "hexahedron", "hexahedron20", "wedge", "pyramid"}


class MeshError(ValueError):
    """A mesh file that cannot be used; the message names the file and the problem."""

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path = Path(path)
        self.problem = " ".join(str(problem).split())  # always one line
        super().__init__(f"{self.path}: {self.problem}")


def load_mesh(
    path: str | os.PathLike, *, name: str | None = None, comm: MPI.Comm | None = None
) -> firedrake.MeshGeometry:
    """Load a 2D triangle mesh with its boundary markers.

    Parameters
    ----------
    path
        A gmsh ``.msh`` file or any file meshio reads.
    name
        Name of the Firedrake mesh (defaults to the file stem).
    comm
        MPI communicator (defaults to ``COMM_WORLD``).

    Returns
    -------
    firedrake.MeshGeometry
        The mesh; boundary tags are its exterior facet ids.

    Raises
    ------
    MeshError
        If the file does not exist, cannot be read, or is not a 2D triangle mesh.
    """
    import firedrake as fd
    from firedrake.petsc import PETSc

    path = Path(path)
    if not path.is_file():
        raise MeshError(path, "no such mesh file")
    comm = comm if comm is not None else fd.COMM_WORLD
    name = name or path.stem
    dim = _gmsh_dimension(path) if path.suffix == ".msh" else None
    if dim is not None:
        if dim != 2:
            raise MeshError(path, f"{dim}D mesh; pidm_fem needs a 2D triangle mesh")
        try:
            mesh = fd.Mesh(str(path), name=name, comm=comm)
        except (PETSc.Error, RuntimeError, ValueError) as err:
            raise MeshError(path, f"cannot read gmsh file ({err})") from None
    else:
        plex = _plex_from_meshio(path, comm)
        mesh = fd.Mesh(plex, name=name, comm=comm)
    if mesh.topological_dimension != 2 or mesh.geometric_dimension != 2:
        raise MeshError(path, f"{mesh.geometric_dimension}D mesh; pidm_fem needs a 2D triangle mesh")
    if mesh.ufl_cell().cellname != "triangle":
        raise MeshError(path, f"{mesh.ufl_cell().cellname} cells; pidm_fem needs triangles")
    return mesh


def _read_meshio(path: Path, file_format: str | None = None):
    """``meshio.read`` that raises instead of printing and exiting.

    meshio prints and calls ``sys.exit`` for some unreadable files, and raises
    many exception types for others.
    """
    import meshio

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            return meshio.read(path, file_format=file_format)
        except SystemExit:
            raise ValueError(f"not a readable {file_format or path.suffix or 'mesh'} file") from None


def _gmsh_dimension(path: Path) -> int | None:
    """Largest element dimension of a gmsh file, or None if it is not a readable gmsh file."""
    try:
        mesh = _read_meshio(path, file_format="gmsh")
    except Exception:  # meshio raises many types; the caller reports the problem
        return None
    return _cell_dimension(mesh)


def _cell_dimension(mesh) -> int:
    types = {block.type for block in mesh.cells}
    if types & _3D_CELLS:
        return 3
    if types & {"triangle", "triangle6", "quad", "quad8", "quad9"}:
        return 2
    return 1


def _plex_from_meshio(path: Path, comm):
    """Build a DMPlex with a "Face Sets" label from a file meshio reads."""
    from firedrake.petsc import PETSc

    try:
        mesh = _read_meshio(path)
    except Exception as err:  # meshio raises many types for unreadable files
        msg = str(err).strip() or type(err).__name__
        raise MeshError(path, f"meshio cannot read this file ({msg})") from None
    if _cell_dimension(mesh) == 3:
        raise MeshError(path, "3D mesh; pidm_fem needs a 2D triangle mesh")
    triangles = [block.data for block in mesh.cells if block.type == "triangle"]
    if not triangles:
        types = sorted({block.type for block in mesh.cells}) or ["none"]
        raise MeshError(path, f"no triangle cells (cell types: {', '.join(types)})")
    points = np.asarray(mesh.points, dtype=float)
    if points.shape[1] == 3 and np.abs(points[:, 2]).max() > 1e-12 * max(1.0, np.abs(points).max()):
        raise MeshError(path, "3D coordinates (z is not zero); pidm_fem needs a planar 2D mesh")
    cells = np.concatenate(triangles).astype(np.int64)
    # Drop points that no triangle uses (gmsh geometry points, for instance).
    used, cells = np.unique(cells, return_inverse=True)
    cells = cells.reshape(-1, 3).astype(PETSc.IntType)
    renumber = -np.ones(len(points), dtype=np.int64)
    renumber[used] = np.arange(len(used))
    coords = points[used, :2].copy()

    plex = PETSc.DMPlex().createFromCellList(2, cells, coords, comm=comm)
    plex.createLabel("Face Sets")
    v_start, _ = plex.getDepthStratum(0)
    for edges, tags in _tagged_lines(mesh):
        for (a, b), tag in zip(renumber[edges], tags):
            if a < 0 or b < 0:
                raise MeshError(path, "a boundary line uses a point that no triangle uses")
            join = plex.getJoin([v_start + a, v_start + b])
            if len(join) != 1:
                raise MeshError(path, f"boundary line ({a}, {b}) is not an edge of the triangulation")
            plex.setLabelValue("Face Sets", join[0], int(tag))
    return plex


def _tagged_lines(mesh):
    """Yield (edges, tags) for every block of line cells that carries integer tags."""
    for index, block in enumerate(mesh.cells):
        if block.type != "line":
            continue
        for tag_name in TAG_NAMES + tuple(sorted(mesh.cell_data)):
            data = mesh.cell_data.get(tag_name)
            if data is not None and np.issubdtype(np.asarray(data[index]).dtype, np.integer):
                yield np.asarray(block.data, dtype=np.int64), np.asarray(data[index]).ravel()
                break
