"""Recipe for the shipped unit-square meshes (run with the project's venv).

Makes an unstructured triangulation of [0, 1]^2 with gmsh (frontal-Delaunay,
target size ``--h``) and two uniform refinements of it, so that the three
files form a nested family with mesh sizes h, h/2, h/4, and a third refinement (h/8):

    unit_square_r0.msh   coarse, the base triangulation
    unit_square_r1.msh   one uniform refinement
    unit_square.msh      two uniform refinements: the embedded default mesh
    unit_square_r3.msh   three uniform refinements (models of the default mesh sampled finer)

Boundary edges carry gmsh physical groups with Firedrake's UnitSquareMesh
numbering: 1 left (x = 0), 2 right (x = 1), 3 bottom (y = 0), 4 top (y = 1);
the surface is physical group 10. Files are gmsh format 4.1, ASCII.

    python meshes/make_unit_square.py [--h 0.1] [--out meshes]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import gmsh

BOUNDARY_IDS = {"left": 1, "right": 2, "bottom": 3, "top": 4}
SURFACE_ID = 10


def build(h: float, out: Path) -> list[Path]:
    """Mesh the unit square at size ``h`` and write it with three refinements."""
    gmsh.initialize()
    try:
        gmsh.option.setNumber("General.Terminal", 0)
        gmsh.option.setNumber("Mesh.Algorithm", 6)  # frontal-Delaunay
        gmsh.option.setNumber("Mesh.RandomSeed", 1)
        gmsh.option.setNumber("Mesh.MshFileVersion", 4.1)
        gmsh.model.add("unit_square")
        occ = gmsh.model.geo
        pts = [occ.addPoint(x, y, 0, h) for x, y in ((0, 0), (1, 0), (1, 1), (0, 1))]
        bottom = occ.addLine(pts[0], pts[1])
        right = occ.addLine(pts[1], pts[2])
        top = occ.addLine(pts[2], pts[3])
        left = occ.addLine(pts[3], pts[0])
        loop = occ.addCurveLoop([bottom, right, top, left])
        surface = occ.addPlaneSurface([loop])
        occ.synchronize()
        for name, curve in (("left", left), ("right", right), ("bottom", bottom), ("top", top)):
            gmsh.model.addPhysicalGroup(1, [curve], BOUNDARY_IDS[name], name=name)
        gmsh.model.addPhysicalGroup(2, [surface], SURFACE_ID, name="domain")
        gmsh.model.mesh.generate(2)
        written = []
        for name in ("unit_square_r0.msh", "unit_square_r1.msh", "unit_square.msh", "unit_square_r3.msh"):
            if written:
                gmsh.model.mesh.refine()
            path = out / name
            gmsh.write(str(path))
            written.append(path)
        return written
    finally:
        gmsh.finalize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--h", type=float, default=0.1, help="target size of the coarse mesh")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    args = parser.parse_args()
    for path in build(args.h, args.out):
        print(path)


if __name__ == "__main__":
    main()
