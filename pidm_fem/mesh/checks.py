"""Reading a mesh file into checked arrays: every fault a one-line :class:`MeshError`.

A file is read with meshio and checked before any Firedrake mesh is built: that it
exists, is not empty, has a known format and is readable; that it is 2D (a constant z
is dropped, a varying one refused); that its cells are all triangles or all
quadrilaterals; that its coordinates are finite; that no cell is degenerate (zero
area) or inverted (folded over a neighbour); that it is not torn (cells that share
no edge with any other) nor non-manifold (an edge of three cells); that no two vertices
coincide; that its boundary lines are edges of its cells. Vertices that no cell uses are
dropped, with a warning. :func:`cell_quality` gives the angles and aspect ratios that
``pidm-fem mesh info`` reports.
"""

from __future__ import annotations

import contextlib
import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pidm_fem.errors import InputError, one_line

#: cell-data names searched, in order, for integer boundary tags of line cells
TAG_NAMES = ("gmsh:physical", "medit:ref", "cell_tags", "boundary_ids")
#: meshio's cell types of the two supported kinds, and the name Firedrake gives them
SUPPORTED_CELLS = {"triangle": "triangle", "quad": "quadrilateral"}
_BOUNDARY_CELLS = {"vertex", "line", "line3"}
_3D_CELLS = {"tetra", "tetra10", "hexahedron", "hexahedron20", "hexahedron27", "wedge", "wedge15", "pyramid"}
#: a cell whose area is below this multiple of its longest edge squared is degenerate
DEGENERATE = 1e-10
#: two vertices closer than this multiple of the bounding-box diagonal coincide
COINCIDENT = 1e-10
#: cells with an angle below this (degrees) or an aspect ratio above this are reported as poor
POOR_ANGLE, POOR_ASPECT = 10.0, 10.0


class MeshError(InputError):
    """A mesh file that cannot be used; the message names the file and the problem."""

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path = Path(path)
        self.problem = one_line(problem)
        super().__init__(f"{self.path}: {self.problem}")


@dataclass(frozen=True)
class MeshArrays:
    """A checked 2D mesh.

    Attributes
    ----------
    points
        (n, 2) vertex coordinates, every vertex used by a cell.
    cells
        (m, 3) triangles or (m, 4) quadrilaterals (vertices in cyclic order).
    lines
        ``(edges (k, 2), tags (k,))`` of each tagged block of boundary lines, in the numbering of ``points``.
    dropped_vertices
        Vertices of the file that no cell used (dropped).
    planar_z
        The constant z of the file's points that was dropped (0.0 for 2D files).
    """

    points: np.ndarray
    cells: np.ndarray
    lines: list[tuple[np.ndarray, np.ndarray]]
    dropped_vertices: int
    planar_z: float

    @property
    def cell_type(self) -> str:
        """``"triangle"`` or ``"quadrilateral"``."""
        return "triangle" if self.cells.shape[1] == 3 else "quadrilateral"


def known_suffix(path: Path) -> bool:
    """Whether meshio knows the format of ``path`` from its suffix."""
    from meshio._helpers import extension_to_filetypes

    name = path.name.lower()
    return any(name.endswith(ext) for ext in extension_to_filetypes)


def _read_meshio(path: Path):
    """``meshio.read`` that raises instead of printing and exiting (as meshio does for some files)."""
    import meshio

    file_format = "gmsh" if path.suffix.lower() == ".msh" else None
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            return meshio.read(path, file_format=file_format)
        except SystemExit:
            raise ValueError(f"not a readable {path.suffix} file") from None


def read_mesh_arrays(path: str | os.PathLike) -> MeshArrays:
    """Read and check a mesh file; see the module's description of the checks.

    Raises
    ------
    MeshError
        One line naming the file and its first fault.
    """
    path = Path(path)
    if not path.exists():
        raise MeshError(path, "no such mesh file")
    if not path.is_file():
        raise MeshError(path, "not a file")
    if not os.access(path, os.R_OK):
        raise MeshError(path, "cannot read the file (permission denied)")
    if path.stat().st_size == 0:
        raise MeshError(path, "empty file")
    if not known_suffix(path):
        raise MeshError(path, f"unknown mesh format {path.suffix or '(no suffix)'!r}: use .msh (gmsh) or a format "
                              "meshio reads (.vtu, .xdmf, .vtk, .mesh, ...)")
    try:
        mesh = _read_meshio(path)
    except Exception as err:  # meshio raises many types for unreadable files
        raise MeshError(path, f"cannot read this file as {path.suffix} ({one_line(err) or type(err).__name__})") from None
    cells = _domain_cells(path, mesh)
    points = np.asarray(mesh.points, dtype=float)
    if points.ndim != 2 or points.shape[1] not in (2, 3) or len(points) == 0:
        raise MeshError(path, f"no usable vertex coordinates (shape {points.shape})")
    bad = np.flatnonzero(~np.isfinite(points).all(axis=1))
    if len(bad):
        raise MeshError(path, f"{len(bad)} vertices with non-finite coordinates (first: vertex {bad[0]})")
    if cells.max() >= len(points) or cells.min() < 0:
        raise MeshError(path, f"cells refer to vertex {cells.max()}, but the file has {len(points)} vertices")
    planar_z = _planar_z(path, points, cells)
    used, inverse = np.unique(cells, return_inverse=True)
    cells = inverse.reshape(cells.shape).astype(np.int64)
    renumber = -np.ones(len(points), dtype=np.int64)
    renumber[used] = np.arange(len(used))
    points = points[used, :2].copy()
    _check_geometry(path, points, cells)
    lines = list(_tagged_lines(path, mesh, renumber, cells))
    return MeshArrays(points, cells, lines, int(len(renumber) - len(used)), planar_z)


def _domain_cells(path: Path, mesh) -> np.ndarray:
    """The one block type of 2D cells, concatenated; MeshError for anything else."""
    types = [block.type for block in mesh.cells]
    if not types:
        raise MeshError(path, "no cells")
    solid = sorted({t for t in types if t in _3D_CELLS})
    if solid:
        raise MeshError(path, f"3D cells ({', '.join(solid)}); pidm_fem needs a 2D mesh")
    domain = sorted({t for t in types if t not in _BOUNDARY_CELLS})
    if not domain:
        raise MeshError(path, f"boundary cells only ({', '.join(sorted(set(types)))}), no 2D cells")
    unsupported = [t for t in domain if t not in SUPPORTED_CELLS]
    if unsupported:
        raise MeshError(path, f"unsupported cell type {', '.join(unsupported)}; pidm_fem takes linear triangles "
                              "or quadrilaterals")
    if len(domain) > 1:
        raise MeshError(path, f"mixed cell types ({', '.join(domain)}); pidm_fem needs cells of one type")
    blocks = [np.asarray(block.data, dtype=np.int64) for block in mesh.cells if block.type == domain[0]]
    return np.concatenate(blocks)


def _planar_z(path: Path, points: np.ndarray, cells: np.ndarray) -> float:
    """The constant z of the cells' vertices (0.0 for 2D points); MeshError if z varies."""
    if points.shape[1] == 2:
        return 0.0
    z = points[np.unique(cells), 2]
    scale = max(1.0, float(np.abs(points).max()))
    if np.ptp(z) > 1e-12 * scale:
        raise MeshError(path, f"not planar: z varies from {z.min():.6g} to {z.max():.6g}; pidm_fem needs a 2D mesh")
    return float(z[0])


def signed_areas(points: np.ndarray, cells: np.ndarray) -> np.ndarray:
    """Signed area of each cell (shoelace formula; positive for counter-clockwise vertices)."""
    x, y = points[cells, 0], points[cells, 1]
    return 0.5 * (x * np.roll(y, -1, axis=1) - np.roll(x, -1, axis=1) * y).sum(axis=1)


def _edge_lengths(points: np.ndarray, cells: np.ndarray) -> np.ndarray:
    """(m, k) length of the edge from each vertex of a cell to the next."""
    corners = points[cells]
    return np.linalg.norm(np.roll(corners, -1, axis=1) - corners, axis=2)


def _edges(cells: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct edges (e, 2) of the cells, sorted, and each cell edge's index among them (m, k)."""
    pairs = np.stack([cells, np.roll(cells, -1, axis=1)], axis=2).reshape(-1, 2)
    pairs.sort(axis=1)
    edges, index = np.unique(pairs, axis=0, return_inverse=True)
    return edges, index.reshape(cells.shape)


def _check_geometry(path: Path, points: np.ndarray, cells: np.ndarray) -> None:
    from scipy.spatial import cKDTree

    area = signed_areas(points, cells)
    longest = _edge_lengths(points, cells).max(axis=1)
    degenerate = np.flatnonzero(np.abs(area) <= DEGENERATE * longest**2)
    if len(degenerate):
        raise MeshError(path, f"{len(degenerate)} degenerate (zero-area) cells (first: cell {degenerate[0]})")
    _, index = _edges(cells)
    uses = np.bincount(index.ravel())
    if (uses > 2).any():
        raise MeshError(path, f"not a manifold mesh: {(uses > 2).sum()} edges are shared by more than two cells")
    folded = _folded_cells(cells, area, index, uses)
    if len(folded):
        raise MeshError(path, f"{len(folded)} inverted cells, folded over a neighbour (first: cell {folded[0]})")
    if len(cells) > 1:
        isolated = np.flatnonzero((uses[index] == 1).all(axis=1))
        if len(isolated):
            raise MeshError(path, f"torn mesh: {len(isolated)} of {len(cells)} cells share no edge with another cell "
                                  f"(first: cell {isolated[0]}); neighbouring cells must share their vertices")
    diagonal = float(np.linalg.norm(np.ptp(points, axis=0)))
    pairs = cKDTree(points).query_pairs(COINCIDENT * diagonal, output_type="ndarray")
    if len(pairs):
        x, y = points[pairs[0, 0]]
        raise MeshError(path, f"{len(np.unique(pairs))} duplicate vertices (the same coordinates as another; first "
                              f"at ({x:.6g}, {y:.6g}))")


def _folded_cells(cells: np.ndarray, area: np.ndarray, index: np.ndarray, uses: np.ndarray) -> np.ndarray:
    """Cells that overlap a neighbour: with every cell turned counter-clockwise, an edge two cells
    share is walked in opposite directions by a flat mesh and in the same direction across a fold.

    The vertex order of a cell is free (files and Firedrake differ), so orientation alone says nothing.
    """
    ccw = np.where(area[:, None] > 0, cells, cells[:, ::-1])
    ccw_index = np.where(area[:, None] > 0, index, np.roll(index[:, ::-1], -1, axis=1))
    forward = (ccw < np.roll(ccw, -1, axis=1)).ravel()  # whether each cell edge runs from its lower vertex
    edge = ccw_index.ravel()
    shared = uses[edge] == 2
    order = np.argsort(edge[shared], kind="stable")
    cell_of = np.repeat(np.arange(len(cells)), cells.shape[1])[shared][order]
    pairs_forward = forward[shared][order].reshape(-1, 2)
    same = pairs_forward[:, 0] == pairs_forward[:, 1]
    return np.unique(cell_of.reshape(-1, 2)[same])


def _tagged_lines(path: Path, mesh, renumber: np.ndarray, cells: np.ndarray):
    """Yield (edges, tags) of every block of line cells that carries integer tags, checked against the cells."""
    edges = None
    for index, block in enumerate(mesh.cells):
        if block.type != "line":
            continue
        for tag_name in TAG_NAMES + tuple(sorted(mesh.cell_data)):
            data = mesh.cell_data.get(tag_name)
            if data is None or not np.issubdtype(np.asarray(data[index]).dtype, np.integer):
                continue
            lines = renumber[np.asarray(block.data, dtype=np.int64)]
            if (lines < 0).any():
                raise MeshError(path, "a boundary line uses a vertex that no cell uses")
            if edges is None:
                edges = {tuple(edge) for edge in _edges(cells)[0]}
            for a, b in lines:
                if (min(a, b), max(a, b)) not in edges:
                    raise MeshError(path, f"boundary line ({a}, {b}) is not an edge of the cells")
            yield lines, np.asarray(data[index]).ravel()
            break


def cell_quality(points: np.ndarray, cells: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Smallest interior angle (degrees) and aspect ratio of each cell.

    The aspect ratio of a triangle is its longest edge over ``2 sqrt(3)`` times its
    inradius (1 for an equilateral triangle); that of a quadrilateral its longest
    edge over its shortest.
    """
    corners = points[cells]
    forward = np.roll(corners, -1, axis=1) - corners
    backward = np.roll(corners, 1, axis=1) - corners
    cosine = (forward * backward).sum(axis=2) / (
        np.linalg.norm(forward, axis=2) * np.linalg.norm(backward, axis=2)
    )
    angles = np.degrees(np.arccos(np.clip(cosine, -1.0, 1.0))).min(axis=1)
    lengths = _edge_lengths(points, cells)
    if cells.shape[1] == 3:
        inradius = 2 * np.abs(signed_areas(points, cells)) / lengths.sum(axis=1)
        aspect = lengths.max(axis=1) / (2 * np.sqrt(3) * inradius)
    else:
        aspect = lengths.max(axis=1) / lengths.min(axis=1)
    return angles, aspect
