"""Mesh I/O: loading user meshes into Firedrake and the meshes pidm_fem ships."""

from .builtin import default_mesh_path, structured_grid_mesh, unit_square_family
from .fingerprint import mesh_fingerprint
from .io import MeshError, load_mesh

__all__ = [
    "MeshError",
    "default_mesh_path",
    "load_mesh",
    "mesh_fingerprint",
    "structured_grid_mesh",
    "unit_square_family",
]
