"""Mesh files from one format to another, through the checked arrays (boundary tags kept).

The domain cells and the tagged boundary lines are written as meshio cell blocks with a
``gmsh:physical`` tag (the domain's is 1), which :func:`~pidm_fem.mesh.load_mesh` reads
back as exterior facet ids from every format; ``.msh`` files are written as gmsh 2.2.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .checks import MeshError, known_suffix, read_mesh_arrays


#: writer options per format: text gmsh files, XDMF with its values inline (no HDF5 file beside it)
_WRITE_OPTIONS = {"gmsh22": {"binary": False}, "xdmf": {"data_format": "XML"}}


def convert_mesh(source: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Write the mesh of ``source`` to ``target`` in the format of its suffix (atomically).

    Raises
    ------
    MeshError
        If ``source`` is not a usable mesh or the suffix of ``target`` names no format.
    """
    import meshio

    from pidm_fem.atomic_files import atomic_path

    target = Path(target)
    if not known_suffix(target):
        raise MeshError(target, f"unknown mesh format {target.suffix or '(no suffix)'!r} to write")
    arrays = read_mesh_arrays(source)
    cell_type = "triangle" if arrays.cells.shape[1] == 3 else "quad"
    cells = [(cell_type, arrays.cells)]
    tags = [np.ones(len(arrays.cells), dtype=np.int32)]
    for edges, line_tags in arrays.lines:
        cells.append(("line", edges))
        tags.append(np.asarray(line_tags, dtype=np.int32))
    points = np.column_stack([arrays.points, np.zeros(len(arrays.points))])
    mesh = meshio.Mesh(points, cells, cell_data={"gmsh:physical": tags, "gmsh:geometrical": tags})
    file_format = "gmsh22" if target.suffix.lower() == ".msh" else meshio._helpers._filetypes_from_path(target)[0]
    with atomic_path(target) as tmp:
        meshio.write(tmp, mesh, file_format=file_format, **_WRITE_OPTIONS.get(file_format, {}))
    return target
