"""The MBB half-beam of the 88-line code on a grid of unit square elements (or triangles)."""

from __future__ import annotations

from pidm_fem.physics.elasticity import Elasticity, Load, Material, PointLoad, Support

#: boundary id of the left edge of Firedrake's RectangleMesh
LEFT = 1


def mbb_conditions(length: float, height: float) -> tuple[list[Support], list[Load]]:
    """The MBB half-beam's supports and load on [0, length] x [0, height] (left edge: boundary id 1)."""
    supports = [Support("roller_x", boundary=LEFT), Support("roller_y", point=(float(length), 0.0))]
    return supports, [PointLoad((0.0, float(height)), (0.0, -1.0))]


def mbb_beam(nelx: int = 60, nely: int = 20, quadrilateral: bool = True, material: Material | None = None,
             solver: str | dict = "direct") -> Elasticity:
    """The MBB half-beam: ``nelx`` x ``nely`` elements of size 1.

    The left edge is a roller in x (symmetry), the bottom-right corner a roller in y, and a
    unit downward load acts at the top-left corner, as in the 88-line code. With
    ``quadrilateral=False`` each square is cut into two triangles.
    """
    import firedrake as fd

    if nelx < 1 or nely < 1:
        raise ValueError(f"nelx and nely must be positive, got {nelx} and {nely}")
    mesh = fd.RectangleMesh(nelx, nely, float(nelx), float(nely), quadrilateral=quadrilateral)
    supports, loads = mbb_conditions(nelx, nely)
    return Elasticity(mesh, supports, loads, material=material or Material(), solver=solver)
