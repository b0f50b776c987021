"""A fingerprint of a mesh and its numbering, for refusing mismatched data files."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import firedrake


def mesh_fingerprint(mesh: firedrake.MeshGeometry) -> str:
    """SHA-256 (hex, 16 characters) of the mesh's coordinates, cells and boundary markers.

    Two loads of the same file give the same fingerprint; any change of a
    vertex, of the connectivity, of the numbering or of a marker changes it.
    Coordinates are rounded to 12 significant digits so that the value does not
    depend on the file format the mesh came from.
    """
    digest = hashlib.sha256()
    coords = mesh.coordinates
    digest.update(np.array([mesh.topological_dimension, mesh.geometric_dimension]).tobytes())
    digest.update(np.asarray([float(f"{c:.12g}") for c in coords.dat.data_ro.ravel()]).tobytes())
    digest.update(np.ascontiguousarray(coords.function_space().cell_node_list, dtype=np.int64).tobytes())
    digest.update(np.asarray(sorted(mesh.exterior_facets.unique_markers), dtype=np.int64).tobytes())
    return digest.hexdigest()[:16]


def spaces_of(fingerprint: str) -> str:
    """The spaces part of a problem's fingerprint: what follows its mesh's ``mesh_fingerprint`` and a dash.

    A problem's fingerprint is ``<mesh fingerprint>-<spaces>`` (``"...-P1"``); two problems
    on different meshes with the same fields on the same spaces have equal spaces parts.
    """
    return fingerprint.partition("-")[2]
