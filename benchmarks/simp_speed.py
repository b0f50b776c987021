"""SIMP speed: the project's Firedrake SIMP against a NumPy/SciPy port of the 88-line code, side by side.

The MBB half-beam (volfrac 0.5, penal 3, rmin 2.4 elements, density filter, optimality
criteria) on grids of 60 x 20, 150 x 50, 300 x 100 and 600 x 200 square bilinear elements,
run by both codes one after the other in this process: seconds per iteration, seconds in
all, iterations and compliance of each. The two smaller grids run to convergence (a design
change of at most 0.01), the two larger for ``--iterations`` iterations each. The project's
time in all includes building its problem and filter (Firedrake's compiled kernels come from
its disk cache after the first run); the port's includes building its filter.

Then one unstructured triangle mesh of the MBB beam of at least 100,000 cells (the shipped
60 x 20 beam refined three times, 178,560 cells) with the iterative solver (CG, GAMG with the
rigid-body near-nullspace) and the Helmholtz filter: seconds per iteration.

    python benchmarks/simp_speed.py [--iterations 20] [--out outputs/simp_speed]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

#: grid sizes, and whether they run to convergence (else for --iterations iterations)
GRIDS = ((60, 20, True), (150, 50, True), (300, 100, False), (600, 200, False))


def _project(nelx: int, nely: int, max_iterations: int) -> dict:
    from pidm_fem.topopt import SIMPSettings, mbb_beam, optimise

    started = time.perf_counter()
    problem = mbb_beam(nelx, nely, quadrilateral=True)
    result = optimise(problem, SIMPSettings(max_iterations=max_iterations), progress=False)
    total = time.perf_counter() - started
    return {"compliance": result.compliance, "iterations": result.iterations, "seconds": total,
            "seconds_per_iteration": result.seconds / result.iterations}


def _port(nelx: int, nely: int, max_iterations: int) -> dict:
    from top88_numpy import top88

    out = top88(nelx, nely, 0.5, 3.0, 2.4, 2, max_iterations=max_iterations)
    return {"compliance": out["compliance"], "iterations": out["iterations"], "seconds": out["seconds"],
            "seconds_per_iteration": out["seconds"] / out["iterations"]}


def _unstructured(iterations: int) -> dict:
    import firedrake as fd

    from pidm_fem.mesh import load_mesh
    from pidm_fem.mesh.builtin import MESH_DIR
    from pidm_fem.physics.elasticity import Elasticity
    from pidm_fem.topopt import SIMPSettings, optimise
    from pidm_fem.topopt.mbb import mbb_conditions

    started = time.perf_counter()
    mesh = fd.MeshHierarchy(load_mesh(MESH_DIR / "mbb_beam_60x20.msh"), 3)[-1]
    problem = Elasticity(mesh, *mbb_conditions(60, 20), solver="iterative")
    result = optimise(problem, SIMPSettings(filter="helmholtz", max_iterations=iterations), progress=False)
    return {"cells": mesh.num_cells(), "displacement_dofs": problem.V.dof_count, "iterations": result.iterations,
            "compliance": result.compliance, "seconds": time.perf_counter() - started,
            "seconds_per_iteration": result.seconds / result.iterations}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=20, help="iterations of the two larger grids and the mesh")
    parser.add_argument("--out", type=Path, default=Path("outputs/simp_speed"))
    args = parser.parse_args(argv)
    # Firedrake hands sys.argv to PETSc: do not report this script's own options as unused PETSc options.
    os.environ.setdefault("PETSC_OPTIONS", "-options_left no")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from pidm_fem.atomic_files import atomic_path, write_json

    _project(12, 4, 2)  # fills Firedrake's kernel cache, so that no row pays for compilation
    rows = []
    for nelx, nely, converge in GRIDS:
        cap = 10_000 if converge else args.iterations
        ours, port = _project(nelx, nely, cap), _port(nelx, nely, cap)
        rows.append({"grid": f"{nelx} x {nely}", "project": ours, "numpy_port": port,
                     "wall_ratio": ours["seconds"] / port["seconds"],
                     "per_iteration_ratio": ours["seconds_per_iteration"] / port["seconds_per_iteration"]})
        print(f"{nelx} x {nely}: project {ours['seconds']:.2f} s ({ours['iterations']} it, c {ours['compliance']:.2f}),"
              f" port {port['seconds']:.2f} s ({port['iterations']} it, c {port['compliance']:.2f})", flush=True)
    mesh = _unstructured(args.iterations)
    print(f"unstructured {mesh['cells']} cells, iterative solver: {mesh['seconds_per_iteration']:.2f} s per iteration")
    lines = ["| grid | iterations (project / port) | s per iteration (project / port) | s in all (project / port) "
             "| ratio in all | compliance (project / port) |", "|---|---|---|---|---|---|"]
    for row in rows:
        ours, port = row["project"], row["numpy_port"]
        lines.append(f"| {row['grid']} | {ours['iterations']} / {port['iterations']} | "
                     f"{ours['seconds_per_iteration']:.3f} / {port['seconds_per_iteration']:.3f} | "
                     f"{ours['seconds']:.2f} / {port['seconds']:.2f} | {row['wall_ratio']:.2f} | "
                     f"{ours['compliance']:.2f} / {port['compliance']:.2f} |")
    lines.append(f"\nUnstructured MBB mesh, {mesh['cells']} triangles ({mesh['displacement_dofs']} displacement DOFs), "
                 f"CG + GAMG, Helmholtz filter: {mesh['seconds_per_iteration']:.2f} s per iteration "
                 f"({mesh['iterations']} iterations).")
    table = "\n".join(lines)
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "results.json", {"grids": rows, "unstructured": mesh, "iterations_cap": args.iterations})
    with atomic_path(args.out / "results.md") as tmp:
        tmp.write_text(table + "\n")
    print("\n" + table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
