"""The main job: Darcy flow on the embedded default mesh (or --mesh PATH).

At this stage of the project it draws one log-normal permeability (truncated
KL expansion, exponential covariance, length 0.1, 64 modes), solves Darcy flow
for it with zero normal flux and zero-mean pressure, checks the discrete
residual, and writes a PNG, a PVD/VTU pair and results.json to --out.
The diffusion benchmark replaces this when it lands.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Darcy flow on a mesh (pidm_fem demo)")
    parser.add_argument("--mesh", type=Path, default=None, help="mesh file (default: the embedded unit square)")
    parser.add_argument("--out", type=Path, default=Path("outputs/darcy_mesh"), help="output folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="the quick mode of `make demo`")
    args = parser.parse_args(argv)
    # Firedrake hands sys.argv to PETSc: do not report this script's own options as unused PETSc options.
    os.environ.setdefault("PETSC_OPTIONS", "-options_left no")

    import firedrake as fd

    from pidm_fem.atomic_files import atomic_directory, write_json
    from pidm_fem.mesh import MeshError, default_mesh_path, load_mesh
    from pidm_fem.physics.darcy import DarcyProblem
    from pidm_fem.physics.permeability import KarhunenLoeve
    from pidm_fem.viz import plot_fields

    mesh_path = args.mesh or default_mesh_path()
    try:
        mesh = load_mesh(mesh_path)
    except MeshError as err:
        print(f"darcy_mesh: error: {err}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    problem = DarcyProblem(mesh)
    kl = KarhunenLoeve(problem.V, length=0.1, n_modes=64)
    t_kl = time.perf_counter() - t0
    K = fd.Function(problem.V, name="K")
    K.dat.data[:] = kl.sample(np.random.default_rng(args.seed), 1)[0]
    t0 = time.perf_counter()
    p = problem.solve(K)
    t_solve = time.perf_counter() - t0
    r = problem.strong_residual(problem.weak_residual(p, K))
    f_max = float(np.abs(problem.f.dat.data_ro).max())

    results = {
        "mesh": str(mesh_path),
        "n_vertices": mesh.num_vertices(),
        "n_cells": mesh.num_cells(),
        "n_dofs": problem.V.dof_count,
        "seed": args.seed,
        "kl_eigenvalues_first5": kl.eigenvalues[:5].tolist(),
        "kl_setup_seconds": t_kl,
        "solve_seconds": t_solve,
        "max_abs_strong_residual": float(np.abs(r).max()),
        "max_abs_source": f_max,
        "p_std": float(p.dat.data_ro.std()),
        "log_K_std": float(np.log(K.dat.data_ro).std()),
    }
    out = args.out
    with atomic_directory(out) as tmp:
        plot_fields([[K, p]], tmp / "darcy_sample.png", titles=[["permeability K", "pressure p"]])
        fd.VTKFile(str(tmp / "fields" / "darcy_sample.pvd")).write(p, K)
        write_json(tmp / "results.json", results)
    print(f"mesh {mesh_path}: {results['n_vertices']} vertices, {results['n_cells']} cells")
    print(f"KL setup {t_kl:.2f} s, solve {t_solve * 1e3:.1f} ms, max |r| = {results['max_abs_strong_residual']:.2e}")
    print(f"outputs: {out}/darcy_sample.png, {out}/fields/darcy_sample.pvd, {out}/results.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
