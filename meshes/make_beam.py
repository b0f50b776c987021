"""Recipe for the shipped beam meshes (run with the project's venv).

Unstructured triangulations (gmsh, frontal-Delaunay, target size ``h``) of a rectangle
[0, L] x [0, H], optionally with a circular hole:

    mbb_beam_60x20.msh     the 88-line code's MBB half-beam, 60 x 20, h = 1 (its element size)
    beam_with_hole.msh     a 60 x 20 beam with a hole of radius 4 at (30, 10), h = 1
    topology_2x1.msh       the topology case study's 2 x 1 rectangle, h = 0.04
    topology_2x1_coarse.msh  the same rectangle at h = 0.07 (its quick mode)
    square_with_hole.msh   the unit square with a hole of radius 0.2 at its centre, h = 0.025
                           (the default Darcy mesh's size: a domain its models were not trained on)

Boundary edges carry gmsh physical groups with Firedrake's RectangleMesh numbering:
1 left (x = 0), 2 right (x = L), 3 bottom (y = 0), 4 top (y = H), and 5 the hole; the
surface is physical group 10. The corners are mesh vertices (the MBB supports and load
act there). Files are gmsh format 4.1, ASCII.

    python meshes/make_beam.py [--out meshes]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import gmsh

BOUNDARY_IDS = {"left": 1, "right": 2, "bottom": 3, "top": 4, "hole": 5}
SURFACE_ID = 10
#: name -> (length, height, element size, hole (x, y, radius) or None)
BEAMS = {
    "mbb_beam_60x20.msh": (60.0, 20.0, 1.0, None),
    "beam_with_hole.msh": (60.0, 20.0, 1.0, (30.0, 10.0, 4.0)),
    "topology_2x1.msh": (2.0, 1.0, 0.04, None),
    "topology_2x1_coarse.msh": (2.0, 1.0, 0.07, None),
    "square_with_hole.msh": (1.0, 1.0, 0.025, (0.5, 0.5, 0.2)),
}


def build(path: Path, length: float, height: float, h: float, hole: tuple[float, float, float] | None) -> Path:
    """Mesh one beam and write it to ``path``."""
    gmsh.initialize()
    try:
        gmsh.option.setNumber("General.Terminal", 0)
        gmsh.option.setNumber("Mesh.Algorithm", 6)  # frontal-Delaunay
        gmsh.option.setNumber("Mesh.RandomSeed", 1)
        gmsh.option.setNumber("Mesh.MshFileVersion", 4.1)
        gmsh.option.setNumber("Mesh.CharacteristicLengthMin", h)
        gmsh.option.setNumber("Mesh.CharacteristicLengthMax", h)
        gmsh.model.add(path.stem)
        geo = gmsh.model.geo
        pts = [geo.addPoint(x, y, 0, h) for x, y in ((0, 0), (length, 0), (length, height), (0, height))]
        bottom, right = geo.addLine(pts[0], pts[1]), geo.addLine(pts[1], pts[2])
        top, left = geo.addLine(pts[2], pts[3]), geo.addLine(pts[3], pts[0])
        loops = [geo.addCurveLoop([bottom, right, top, left])]
        curves = {"left": [left], "right": [right], "bottom": [bottom], "top": [top]}
        if hole is not None:
            cx, cy, r = hole
            centre = geo.addPoint(cx, cy, 0, h)
            ring = [geo.addPoint(cx + dx, cy + dy, 0, h) for dx, dy in ((r, 0), (0, r), (-r, 0), (0, -r))]
            arcs = [geo.addCircleArc(ring[k], centre, ring[(k + 1) % 4]) for k in range(4)]
            loops.append(geo.addCurveLoop(arcs))
            curves["hole"] = arcs
        surface = geo.addPlaneSurface(loops)
        geo.synchronize()
        for name, tags in curves.items():
            gmsh.model.addPhysicalGroup(1, tags, BOUNDARY_IDS[name], name=name)
        gmsh.model.addPhysicalGroup(2, [surface], SURFACE_ID, name="domain")
        gmsh.model.mesh.generate(2)
        gmsh.write(str(path))
        return path
    finally:
        gmsh.finalize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    args = parser.parse_args()
    for name, (length, height, h, hole) in BEAMS.items():
        print(build(args.out / name, length, height, h, hole))


if __name__ == "__main__":
    main()
