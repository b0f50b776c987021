"""The meshes pidm_fem ships or builds: the embedded default and the paper's grid."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import firedrake
    from mpi4py import MPI

#: folder of the shipped meshes (``meshes/`` at the top of the project)
MESH_DIR = Path(__file__).resolve().parents[2] / "meshes"
#: the nested unstructured unit-square family, coarse to fine (h, h/2, h/4)
UNIT_SQUARE_FAMILY = ("unit_square_r0.msh", "unit_square_r1.msh", "unit_square.msh")


def default_mesh_path() -> Path:
    """Path of the embedded default mesh: the unstructured unit square (about 2,000 vertices)."""
    return MESH_DIR / UNIT_SQUARE_FAMILY[-1]


def unit_square_family() -> list[Path]:
    """Paths of the shipped nested unit-square meshes, coarse to fine."""
    return [MESH_DIR / name for name in UNIT_SQUARE_FAMILY]


def structured_grid_mesh(nodes_per_side: int = 64, comm: MPI.Comm | None = None) -> firedrake.MeshGeometry:
    """Structured triangulation of the unit square whose P1 nodes form a grid.

    Parameters
    ----------
    nodes_per_side
        Number of P1 nodes along each side (64 reproduces the paper's 64x64 grid).
    comm
        MPI communicator (defaults to ``COMM_WORLD``).

    Returns
    -------
    firedrake.MeshGeometry
        ``UnitSquareMesh`` with ``nodes_per_side - 1`` cells per side and boundary
        ids 1 (x = 0), 2 (x = 1), 3 (y = 0), 4 (y = 1), like the shipped meshes.
    """
    import firedrake as fd

    if nodes_per_side < 2:
        raise ValueError(f"nodes_per_side must be at least 2, got {nodes_per_side}")
    kwargs = {"comm": comm} if comm is not None else {}
    return fd.UnitSquareMesh(nodes_per_side - 1, nodes_per_side - 1, name=f"grid{nodes_per_side}", **kwargs)
