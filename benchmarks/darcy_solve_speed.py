"""Cost of the Darcy state solves: one Firedrake solve per sample against block-diagonal chunks.

For B permeabilities (KL samples) on each mesh (default: the quick and the default
modes' meshes), measured side by side in one run, median of --repeat timings:

  (a) a loop of ``DarcyProblem.solve`` (one MUMPS solve per sample),
  (b) ``DarcyProblem.solve_many`` for each --chunks size (one solve per chunk),

the ratios (a)/(b) and the largest difference between the two, relative to the
largest pressure. The training loss's state misfit solves one batch per estimate.
Writes results.json to --out.

    python benchmarks/darcy_solve_speed.py [--batch 32] [--chunks 4 8 16 32] [--out outputs/darcy_solve_speed]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
from bridge_speed import timed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--meshes", type=Path, nargs="+", default=None,
                        help="mesh files (default: the quick and the default modes' meshes)")
    parser.add_argument("--chunks", type=int, nargs="+", default=[4, 8, 16, 32])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("outputs/darcy_solve_speed"))
    args = parser.parse_args(argv)
    # Firedrake hands sys.argv to PETSc: do not report this script's own options as unused PETSc options.
    os.environ.setdefault("PETSC_OPTIONS", "-options_left no")

    from tqdm.auto import tqdm

    from pidm_fem.atomic_files import write_json
    from pidm_fem.mesh import default_mesh_path, load_mesh, unit_square_family
    from pidm_fem.physics.darcy import DarcyProblem
    from pidm_fem.physics.permeability import KarhunenLoeve

    meshes = args.meshes or [unit_square_family()[1], default_mesh_path()]
    results = {"batch": args.batch, "repeat": args.repeat, "meshes": []}
    for mesh_path in tqdm(meshes, desc="meshes"):
        problem = DarcyProblem(load_mesh(mesh_path))
        K = KarhunenLoeve(problem.V).sample(np.random.default_rng(0), args.batch)
        single = np.stack([problem.solve(k).dat.data_ro for k in K])
        loop_s = timed(lambda: [problem.solve(k) for k in K], args.repeat)
        entry = {"mesh": str(mesh_path), "n_dofs": problem.V.dof_count, "loop_s": loop_s, "chunks": {}}
        for chunk in args.chunks:
            batched = problem.solve_many(K, chunk)
            seconds = timed(lambda chunk=chunk: problem.solve_many(K, chunk), args.repeat)
            entry["chunks"][chunk] = {
                "seconds": seconds,
                "ratio_loop_over_batched": loop_s / seconds,
                "max_relative_difference": float(np.abs(batched - single).max() / np.abs(single).max()),
            }
        results["meshes"].append(entry)
    path = write_json(args.out / "results.json", results)

    for entry in results["meshes"]:
        print(f"{entry['mesh']}: {entry['n_dofs']} DOFs, batch {args.batch}: loop {entry['loop_s'] * 1e3:.0f} ms")
        for chunk, r in entry["chunks"].items():
            print(f"  chunk {chunk:3d}: {r['seconds'] * 1e3:6.0f} ms, "
                  f"loop / batched {r['ratio_loop_over_batched']:.2f}, "
                  f"max rel. difference {r['max_relative_difference']:.1e}")
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
