"""Rows of a problem (generated samples or data) as files other tools read.

* ``vtu``: ``fields.pvd`` and its VTU files (Firedrake's writer), one time step per row, every
  field of the layout on its own space;
* ``xdmf``: ``fields.xdmf`` (meshio's time-series writer, values inline), one time step per row,
  the fields at the vertices (vector fields as 2-component arrays);
* ``png``: ``fields.png``, the first rows (one per line) and their channels on the mesh;
* ``npz``: ``fields.npz``, the packed ``rows``, each field as ``field_<name>`` of shape
  (rows, nodes) or (rows, nodes, components) and its DOF coordinates as ``coordinates_<name>``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pidm_fem.atomic_files import atomic_directory
from pidm_fem.experiments.node_fields import NodeFields
from pidm_fem.physics.problem import Problem

#: the formats :func:`export_rows` writes
FORMATS = ("vtu", "xdmf", "png", "npz")
#: rows drawn in the PNG
PNG_ROWS = 4


def vertex_function(mesh, values: np.ndarray, name: str):
    """A P1 Function (scalar for (n,) or (n, 1) values, vector for (n, k)) holding ``values`` at the vertices."""
    import firedrake as fd

    values = np.asarray(values)
    if values.ndim == 1 or values.shape[1] == 1:
        space = fd.FunctionSpace(mesh, "CG", 1)
    else:
        space = fd.VectorFunctionSpace(mesh, "CG", 1, dim=values.shape[1])
    function = fd.Function(space, name=name)
    function.dat.data[:] = values.reshape(function.dat.data.shape)
    return function


def export_rows(problem: Problem, rows: np.ndarray, out: str | Path, formats: Sequence[str] = FORMATS,
                label: str = "row") -> list[Path]:
    """Write ``rows`` (N, total) of ``problem`` into the folder ``out`` (replaced whole) in ``formats``.

    Returns
    -------
    list of Path
        The files written, in ``out``.
    """
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown:
        raise ValueError(f"unknown export format {unknown[0]!r} (formats: {', '.join(FORMATS)})")
    rows = problem.layout.check(np.asarray(rows, dtype=np.float64))
    writers = {"vtu": _vtu, "xdmf": _xdmf, "png": _png, "npz": _npz}
    out = Path(out)
    with atomic_directory(out) as tmp:
        for name in formats:
            writers[name](problem, rows, tmp, label)
        written = sorted(p.relative_to(tmp) for p in tmp.rglob("*") if p.is_file())
    return [out / p for p in written]


def _vtu(problem: Problem, rows: np.ndarray, folder: Path, label: str) -> None:
    import firedrake as fd

    series = fd.VTKFile(str(folder / "fields.pvd"))
    for i, row in enumerate(rows):
        series.write(*problem.layout.functions(row).values(), time=float(i))


def _xdmf(problem: Problem, rows: np.ndarray, folder: Path, label: str) -> None:
    import meshio

    fields = NodeFields(problem.layout)
    nodes = fields.mesh_nodes()
    per_field = _vertex_values(problem, fields, rows)
    with meshio.xdmf.TimeSeriesWriter(str(folder / "fields.xdmf"), data_format="XML") as writer:
        writer.write_points_cells(nodes.coordinates, [("triangle", nodes.triangles)])
        for i in range(len(rows)):
            writer.write_data(float(i), point_data={name: values[i] for name, values in per_field.items()})


def _png(problem: Problem, rows: np.ndarray, folder: Path, label: str) -> None:
    from pidm_fem.viz import plot_fields

    fields = NodeFields(problem.layout)
    mesh = problem.layout.mesh
    channels = fields.to_nodes(_tensor(rows[:PNG_ROWS])).numpy()
    grid = [[vertex_function(mesh, x[c], name) for c, name in enumerate(fields.names)] for x in channels]
    titles = [[f"{label} {i}: {name}" for name in fields.names] for i in range(len(channels))]
    plot_fields(grid, folder / "fields.png", titles)


def _npz(problem: Problem, rows: np.ndarray, folder: Path, label: str) -> None:
    layout = problem.layout
    arrays = {"rows": rows}
    for name, values in layout.split(rows).items():
        space = layout.space(name)
        components = int(np.prod(space.value_shape, dtype=int)) if space.value_shape else 1
        shape = (len(rows), -1, components) if components > 1 else (len(rows), -1)
        arrays[f"field_{name}"] = values.reshape(shape)
        arrays[f"coordinates_{name}"] = layout.dof_coordinates(name)[::components]
    np.savez(folder / "fields.npz", **arrays)


def _vertex_values(problem: Problem, fields: NodeFields, rows: np.ndarray) -> dict[str, np.ndarray]:
    """``{field: (N, n) or (N, n, k)}`` values at the first field's nodes, in the node order of the P1 mesh."""
    channels = fields.to_nodes(_tensor(rows)).numpy()
    out = {}
    for name in problem.layout.names:
        index = list(fields.channels_of([name]))
        out[name] = channels[:, index[0]] if len(index) == 1 else np.moveaxis(channels[:, index], 1, -1)
    return out


def _tensor(rows: np.ndarray):
    import torch

    return torch.as_tensor(rows, dtype=torch.float64)
