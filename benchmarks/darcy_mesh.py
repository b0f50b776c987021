"""The main job: PIDM against its baselines for Darcy flow on an unstructured mesh.

Generates (or reuses) the Darcy dataset on the mode's mesh (or --mesh PATH), trains
every method of the registry (``pidm_fem.experiments.methods``) with the same seed,
model, optimiser and steps (side by side in --jobs processes), samples each (with
CoCoGen corrections on the methods of ``cocogen.apply_to``), and evaluates physics
(mean |r| of the strong-form residual against the data's own floor and the trivial
field p = 0; the relative L2 error of p against the pressure solved for the sample's
own K), fidelity (within-sample spreads, energy and sliced Wasserstein distances to the
test set, with the train-vs-test floor) and cost. Writes results.json, results.md,
figures (PNG) and fields (PVD/VTU) to --out/report. Every run resumes from its checkpoints.

    python benchmarks/darcy_mesh.py --quick          # `make demo`: under 10 minutes on 2 cores
    python benchmarks/darcy_mesh.py                  # the README's table (hours on 2 cores)
    python benchmarks/darcy_mesh.py --full --device cuda   # the paper's scale, on a GPU
"""

from __future__ import annotations

import os
import sys


def main(argv: list[str] | None = None) -> int:
    # Firedrake (which the registry's package loads) hands sys.argv to PETSc: do not report this
    # script's own options as unused PETSc options.
    os.environ.setdefault("PETSC_OPTIONS", "-options_left no")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from pidm_fem.experiments.benchmark_cli import benchmark_main, parse_benchmark_args
    from pidm_fem.experiments.methods import METHODS

    args = parse_benchmark_args(
        argv, "darcy", __doc__.splitlines()[0],
        quick="`make demo`: the coarse mesh, 350 steps, the paper's methods (under 10 min)",
        full="the paper's scale (10,000 samples, 300,000 steps, U-Net): for a GPU with --device cuda",
        methods=METHODS)
    return benchmark_main("darcy_mesh", "darcy", args, _execute,
                          "results.json, results.md, samples.png, residual_maps.png, residual_histogram.png, "
                          "training_curves.png, fields/*.pvd")


def _execute(plan, args, t_start: float) -> str | None:
    import torch

    from pidm_fem.experiments.benchmark import run

    return run(plan, train_only=args.train_only, t_start=t_start, set_threads=torch.set_num_threads)


if __name__ == "__main__":
    sys.exit(main())
