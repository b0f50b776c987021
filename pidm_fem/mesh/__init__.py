"""Mesh I/O: checking and loading user meshes into Firedrake, and the meshes pidm_fem ships."""

from .builtin import default_mesh_path, structured_grid_mesh, unit_square_family
from .checks import MeshArrays, MeshError, cell_quality, read_mesh_arrays
from .fingerprint import mesh_fingerprint, spaces_of
from .io import load_mesh

__all__ = [
    "MeshArrays",
    "MeshError",
    "cell_quality",
    "default_mesh_path",
    "load_mesh",
    "mesh_fingerprint",
    "spaces_of",
    "read_mesh_arrays",
    "structured_grid_mesh",
    "unit_square_family",
]
