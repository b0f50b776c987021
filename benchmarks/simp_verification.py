"""SIMP verification: the MBB half-beam against the 88-line code's published compliances.

The 60 x 20 MBB half-beam (volfrac 0.5, penal 3, rmin 2.4, E_min 1e-9) with each filter and
optimiser, on square bilinear elements, on the same grid cut into triangles, and on the
shipped unstructured triangle mesh of the beam (``meshes/mbb_beam_60x20.msh``, 2,790
triangles of size about 1). Beside each row, the NumPy port of the 88-line code
(``benchmarks/top88_numpy.py``) where it applies, and the published 233.71 (density filter)
and 216.81 (sensitivity filter). Writes results.json and results.md to --out.

    python benchmarks/simp_verification.py [--out outputs/simp_verification]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

#: the 88-line code's published compliances of the 60 x 20 MBB half-beam
PUBLISHED = {"density": 233.71, "sensitivity": 216.81}
#: (mesh, filter, optimizer) of each row
ROWS = (
    ("quadrilaterals", "density", "oc"), ("quadrilaterals", "sensitivity", "oc"),
    ("quadrilaterals", "helmholtz", "oc"), ("quadrilaterals", "density", "mma"),
    ("structured triangles", "density", "oc"), ("structured triangles", "helmholtz", "oc"),
    ("unstructured triangles", "density", "oc"), ("unstructured triangles", "helmholtz", "oc"),
)


def _problem(mesh_kind: str):
    from pidm_fem.mesh import load_mesh
    from pidm_fem.mesh.builtin import MESH_DIR
    from pidm_fem.physics.elasticity import Elasticity
    from pidm_fem.topopt import mbb_beam
    from pidm_fem.topopt.mbb import mbb_conditions

    if mesh_kind == "unstructured triangles":
        return Elasticity(load_mesh(MESH_DIR / "mbb_beam_60x20.msh"), *mbb_conditions(60, 20))
    return mbb_beam(60, 20, quadrilateral=mesh_kind == "quadrilaterals")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("outputs/simp_verification"))
    args = parser.parse_args(argv)
    os.environ.setdefault("PETSC_OPTIONS", "-options_left no")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from top88_numpy import top88

    from pidm_fem.atomic_files import atomic_path, write_json
    from pidm_fem.topopt import SIMPSettings, optimise

    ports = {kind: top88(60, 20, 0.5, 3.0, 2.4, ft) for kind, ft in (("sensitivity", 1), ("density", 2))}
    rows = []
    for mesh_kind, filter_kind, optimizer in ROWS:
        problem = _problem(mesh_kind)
        result = optimise(problem, SIMPSettings(filter=filter_kind, optimizer=optimizer), progress=False)
        reference = PUBLISHED.get(filter_kind, PUBLISHED["density"])
        port = ports.get(filter_kind) if mesh_kind == "quadrilaterals" and optimizer == "oc" else None
        rows.append({"mesh": mesh_kind, "cells": problem.mesh.num_cells(), "filter": filter_kind,
                     "optimizer": optimizer, **result.summary(), "published": reference,
                     "relative_to_published": result.compliance / reference - 1,
                     "port_compliance": port["compliance"] if port else None,
                     "port_iterations": port["iterations"] if port else None})
        print(f"{mesh_kind}, {filter_kind}, {optimizer}: c = {result.compliance:.3f} "
              f"({100 * rows[-1]['relative_to_published']:+.2f}%), {result.iterations} iterations", flush=True)
    lines = ["| mesh (cells) | filter | optimiser | compliance | vs published | iterations | 88-line port: c, iterations |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        port = f"{row['port_compliance']:.2f}, {row['port_iterations']}" if row["port_compliance"] else ""
        lines.append(f"| {row['mesh']} ({row['cells']}) | {row['filter']} | {row['optimizer']} | "
                     f"{row['compliance']:.2f} | {100 * row['relative_to_published']:+.2f}% of {row['published']} | "
                     f"{row['iterations']} | {port} |")
    table = "\n".join(lines)
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "results.json", rows)
    with atomic_path(args.out / "results.md") as tmp:
        tmp.write_text(table + "\n")
    print("\n" + table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
