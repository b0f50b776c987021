"""Darcy sample generation speed: samples per second for 1 and several worker processes.

Generates the same --n samples (KL permeability, exact Darcy solve) on a mesh
(default: the embedded unit square) once per worker count, side by side in one
run, checks the files are identical, and writes results.json to --out.

    python benchmarks/darcy_dataset.py [--n 128] [--workers 1 2] [--mesh PATH] [--out outputs/darcy_dataset]
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=128, help="samples per run")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--mesh", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=Path("outputs/darcy_dataset"))
    args = parser.parse_args(argv)
    # Firedrake hands sys.argv to PETSc: do not report this script's own options as unused PETSc options.
    os.environ.setdefault("PETSC_OPTIONS", "-options_left no")

    from pidm_fem.atomic_files import write_json
    from pidm_fem.data import generate_samples, load_samples
    from pidm_fem.mesh import default_mesh_path
    from pidm_fem.physics.darcy_data import DarcyDataSettings, DarcySampleGenerator, make_darcy_generator

    settings = DarcyDataSettings(mesh=str(args.mesh or default_mesh_path()), seed=0)
    t0 = time.perf_counter()
    generator = DarcySampleGenerator(settings)
    setup = time.perf_counter() - t0
    fields = {name: generator.layout.dof_coordinates(name) for name in generator.layout.names}
    results = {"mesh": settings.mesh, "n_dofs_per_field": generator.problem.V.dof_count, "n_samples": args.n,
               "setup_seconds": setup, "runs": {}}
    first = None
    with tempfile.TemporaryDirectory(dir=args.out.parent if args.out.parent.exists() else None) as tmp:
        for workers in args.workers:
            path = Path(tmp) / f"darcy_w{workers}.h5"
            t0 = time.perf_counter()
            generate_samples(path, args.n, functools.partial(make_darcy_generator, settings), generator.fingerprint,
                             settings.as_dict(), fields, workers=workers)
            seconds = time.perf_counter() - t0
            rows, _ = load_samples(path, generator.fingerprint, generator.layout.names)
            first = rows if first is None else first
            results["runs"][workers] = {"seconds": seconds, "samples_per_second": args.n / seconds,
                                        "identical_to_first_run": bool(np.array_equal(rows, first))}
    base = results["runs"][args.workers[0]]["samples_per_second"]
    for workers, run in results["runs"].items():
        run["speed_up"] = run["samples_per_second"] / base
    path = write_json(args.out / "results.json", results)
    print(f"mesh {settings.mesh}: {results['n_dofs_per_field']} DOFs per field, KL set-up {setup:.2f} s")
    for workers, run in results["runs"].items():
        print(f"  {workers} worker(s): {run['samples_per_second']:6.1f} samples/s (x{run['speed_up']:.2f}), "
              f"identical: {run['identical_to_first_run']}")
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
