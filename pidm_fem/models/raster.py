"""Fixed linear operators between fields on mesh nodes and a raster over the mesh's bounding box.

* mesh -> raster: FEM point evaluation, the P1 interpolant evaluated at each raster
  point (barycentric weights in the triangle that contains it); raster points outside
  the domain get 0 and are flagged by a mask.
* raster -> mesh: bilinear interpolation of the raster at the node coordinates.

The raster spans the bounding box including its edges, so on a structured grid whose
nodes coincide with the raster points both operators are exact permutations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.sparse
import torch
from torch import nn

from pidm_fem.models.mesh_nodes import MeshNodes

#: barycentric coordinates within this of 0 count as on the edge (and are snapped to 0)
_TOLERANCE = 1e-10


def default_raster_shape(n_nodes: int) -> tuple[int, int]:
    """Square raster for a mesh of ``n_nodes`` nodes: the power of two >= sqrt(n), at least 16."""
    if n_nodes < 1:
        raise ValueError(f"n_nodes must be positive, got {n_nodes}")
    side = max(16, 1 << math.ceil(math.log2(math.sqrt(n_nodes))))
    return side, side


@dataclass(frozen=True)
class RasterGrid:
    """A raster of H x W points spanning a box, edges included.

    Point (i, j) sits at ``x = lower[0] + j * (upper[0] - lower[0]) / (W - 1)`` and
    ``y = lower[1] + i * (upper[1] - lower[1]) / (H - 1)``; flattened index ``i * W + j``.

    Parameters
    ----------
    shape
        (H, W), both at least 2.
    lower, upper
        Corners of the box, each of length 2, with ``upper > lower``.
    """

    shape: tuple[int, int]
    lower: tuple[float, float]
    upper: tuple[float, float]

    def __post_init__(self) -> None:
        if len(self.shape) != 2 or min(self.shape) < 2:
            raise ValueError(f"raster shape must be (H, W) with H, W >= 2, got {self.shape}")
        if not all(hi > lo for lo, hi in zip(self.lower, self.upper)):
            raise ValueError(f"raster box must have upper > lower, got {self.lower} and {self.upper}")

    @classmethod
    def for_mesh(cls, mesh: MeshNodes, shape: tuple[int, int] | None = None) -> RasterGrid:
        """Raster over the bounding box of ``mesh``, of ``shape`` or :func:`default_raster_shape`."""
        lower, upper = mesh.bounding_box
        shape = default_raster_shape(mesh.n_nodes) if shape is None else tuple(int(s) for s in shape)
        return cls(shape, tuple(map(float, lower)), tuple(map(float, upper)))

    @property
    def n_points(self) -> int:
        """Number of raster points H * W."""
        return self.shape[0] * self.shape[1]

    def points(self) -> np.ndarray:
        """Coordinates of the raster points in flattened order, shape (H * W, 2)."""
        xs = np.linspace(self.lower[0], self.upper[0], self.shape[1])
        ys = np.linspace(self.lower[1], self.upper[1], self.shape[0])
        x, y = np.meshgrid(xs, ys)
        return np.stack([x.ravel(), y.ravel()], axis=1)


class GatherOperator(nn.Module):
    """A sparse matrix with at most k entries per row, applied by gathering.

    ``(A x)[r] = sum_k weight[r, k] * x[index[r, k]]``, applied to the last axis of a tensor.
    The index and weight tensors are non-persistent buffers: they follow the module
    across devices but are not part of its state dict (they derive from the mesh).

    Parameters
    ----------
    index
        Column indices, shape (rows, k).
    weight
        Weights, shape (rows, k) (stored in float64, cast to the input's dtype).
    n_columns
        Number of columns (length of the vectors it applies to).
    """

    def __init__(self, index: np.ndarray, weight: np.ndarray, n_columns: int) -> None:
        super().__init__()
        if index.shape != weight.shape or index.ndim != 2:
            raise ValueError(f"index and weight must share a shape (rows, k), got {index.shape} and {weight.shape}")
        if index.size and (index.min() < 0 or index.max() >= n_columns):
            raise ValueError(f"column indices must lie in [0, {n_columns - 1}]")
        self.n_columns = n_columns
        self.register_buffer("index", torch.as_tensor(index, dtype=torch.int64), persistent=False)
        self.register_buffer("weight", torch.as_tensor(weight, dtype=torch.float64), persistent=False)

    @property
    def n_rows(self) -> int:
        """Number of rows (length of the result)."""
        return self.index.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the matrix to the last axis: (..., n_columns) -> (..., n_rows)."""
        if x.shape[-1] != self.n_columns:
            raise ValueError(f"the last axis must have length {self.n_columns}, got {x.shape[-1]}")
        return (x[..., self.index] * self.weight.to(x.dtype)).sum(dim=-1)

    def to_scipy(self) -> scipy.sparse.csr_matrix:
        """The matrix as a SciPy CSR matrix (float64, explicit zeros removed)."""
        rows = np.repeat(np.arange(self.n_rows), self.index.shape[1])
        matrix = scipy.sparse.csr_matrix(
            (self.weight.cpu().numpy().ravel(), (rows, self.index.cpu().numpy().ravel())),
            shape=(self.n_rows, self.n_columns),
        )
        matrix.eliminate_zeros()
        return matrix


def locate_points(mesh: MeshNodes, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Find the triangle of ``mesh`` that contains each point, and its barycentric coordinates.

    A vectorised bucket search: the triangles are binned by their bounding boxes on
    a uniform grid of buckets, and each point is tested against the triangles of its
    bucket only. A point on an edge shared by triangles gets the one it is most inside
    of; barycentric coordinates within 1e-10 of 0 are snapped to 0 (so that a point at
    a node gets the exact weights (1, 0, 0)).

    Parameters
    ----------
    mesh
        The mesh.
    points
        Query points, shape (p, 2).

    Returns
    -------
    triangle : numpy.ndarray
        Index of the containing triangle, -1 for points outside the mesh, shape (p,).
    barycentric : numpy.ndarray
        Barycentric coordinates in that triangle's corner order (zeros outside), shape (p, 3).
    """
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 2:
        raise ValueError(f"points must have shape (p, 2), got {points.shape}")
    corners = mesh.coordinates[mesh.triangles]
    lower, upper = mesh.bounding_box
    n_side = max(1, math.ceil(math.sqrt(mesh.n_triangles / 2)))
    cell = (upper - lower) / n_side
    margin = _TOLERANCE * (upper - lower).max()

    # bucket -> triangles, as CSR arrays (start offsets into bucket_triangles)
    first = _bucket_coordinates(corners.min(axis=1) - margin, lower, cell, n_side)
    last = _bucket_coordinates(corners.max(axis=1) + margin, lower, cell, n_side)
    span = last - first + 1
    pair_triangle, within = _expand(span[:, 0] * span[:, 1])
    pair_x = first[pair_triangle, 0] + within % span[pair_triangle, 0]
    pair_y = first[pair_triangle, 1] + within // span[pair_triangle, 0]
    pair_bucket = pair_y * n_side + pair_x
    order = np.argsort(pair_bucket, kind="stable")
    bucket_triangles = pair_triangle[order]
    bucket_start = np.concatenate([[0], np.cumsum(np.bincount(pair_bucket, minlength=n_side * n_side))])

    # point -> candidate triangles of its bucket
    in_box = ((points >= lower - margin) & (points <= upper + margin)).all(axis=1)
    point_xy = _bucket_coordinates(points, lower, cell, n_side)
    point_bucket = point_xy[:, 1] * n_side + point_xy[:, 0]
    n_candidates = np.where(in_box, bucket_start[point_bucket + 1] - bucket_start[point_bucket], 0)
    pair_point, within = _expand(n_candidates)
    candidate = bucket_triangles[bucket_start[point_bucket[pair_point]] + within]
    weights = _barycentric(points[pair_point], corners[candidate])

    # keep, for each point, the candidate it is most inside of
    score = weights.min(axis=1)
    order = np.lexsort((-score, pair_point))
    _, first_of_point = np.unique(pair_point[order], return_index=True)
    best = order[first_of_point]
    best = best[score[best] >= -_TOLERANCE]

    triangle = np.full(len(points), -1, dtype=np.int64)
    barycentric = np.zeros((len(points), 3))
    triangle[pair_point[best]] = candidate[best]
    snapped = np.where(weights[best] <= _TOLERANCE, 0.0, weights[best])
    barycentric[pair_point[best]] = snapped / snapped.sum(axis=1, keepdims=True)
    return triangle, barycentric


def _bucket_coordinates(xy: np.ndarray, lower: np.ndarray, cell: np.ndarray, n_side: int) -> np.ndarray:
    """Integer bucket coordinates (column, row) of points, clipped to the grid, shape (p, 2)."""
    return np.clip(np.floor((xy - lower) / cell).astype(np.int64), 0, n_side - 1)


def _expand(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For groups of sizes ``counts``: the group of each member and its rank within the group."""
    owner = np.repeat(np.arange(len(counts)), counts)
    offsets = np.cumsum(counts) - counts
    return owner, np.arange(len(owner)) - offsets[owner]


def _barycentric(points: np.ndarray, corners: np.ndarray) -> np.ndarray:
    """Barycentric coordinates of points (q, 2) in triangles (q, 3, 2), shape (q, 3)."""
    a, b, c = corners[:, 0], corners[:, 1], corners[:, 2]

    def cross(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        return u[:, 0] * v[:, 1] - u[:, 1] * v[:, 0]

    area = cross(b - a, c - a)
    weight_b = cross(points - a, c - a) / area
    weight_c = cross(b - a, points - a) / area
    return np.stack([1.0 - weight_b - weight_c, weight_b, weight_c], axis=1)


def point_evaluation_operator(mesh: MeshNodes, grid: RasterGrid) -> tuple[GatherOperator, np.ndarray]:
    """Mesh -> raster operator: the P1 interpolant of nodal values evaluated at the raster points.

    Parameters
    ----------
    mesh
        The mesh whose nodal values are evaluated.
    grid
        The raster.

    Returns
    -------
    operator : GatherOperator
        Maps (..., n) nodal values to (..., H * W) raster values; 0 outside the domain.
    inside : numpy.ndarray
        Boolean mask of the raster points inside the domain, shape (H * W,).
    """
    triangle, barycentric = locate_points(mesh, grid.points())
    inside = triangle >= 0
    index = np.where(inside[:, None], mesh.triangles[np.maximum(triangle, 0)], 0)
    return GatherOperator(index, barycentric, mesh.n_nodes), inside


def bilinear_operator(grid: RasterGrid, points: np.ndarray) -> GatherOperator:
    """Raster -> points operator: bilinear interpolation of raster values at ``points``.

    Parameters
    ----------
    grid
        The raster.
    points
        Where to interpolate, shape (p, 2), inside the raster's box.

    Returns
    -------
    GatherOperator
        Maps (..., H * W) raster values to (..., p) values at the points.
    """
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 2:
        raise ValueError(f"points must have shape (p, 2), got {points.shape}")
    height, width = grid.shape
    sizes = np.array([width - 1, height - 1], dtype=np.float64)
    lower, upper = np.array(grid.lower), np.array(grid.upper)
    position = (points - lower) / (upper - lower) * sizes
    if (position < -_TOLERANCE * sizes).any() or (position > sizes * (1 + _TOLERANCE)).any():
        raise ValueError("points to interpolate at must lie inside the raster's box")
    nearest = np.round(position)
    position = np.clip(np.where(np.abs(position - nearest) <= 1e-9, nearest, position), 0, sizes)
    start = np.minimum(np.floor(position), sizes - 1).astype(np.int64)
    fraction = position - start
    j, i = start[:, 0], start[:, 1]
    a, b = fraction[:, 0], fraction[:, 1]
    index = np.stack([i * width + j, i * width + j + 1, (i + 1) * width + j, (i + 1) * width + j + 1], axis=1)
    weight = np.stack([(1 - a) * (1 - b), a * (1 - b), (1 - a) * b, a * b], axis=1)
    return GatherOperator(index, weight, grid.n_points)
