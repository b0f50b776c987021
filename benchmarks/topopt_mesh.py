"""Generated topologies on a mesh: a conditional PIDM and DDPM against SIMP, in and out of distribution.

Generates (or reuses) random minimum-compliance problems on the mode's mesh (or --mesh
PATH, a rectangle with boundary ids 1-4) with their SIMP optima, trains DDPM and
PIDM-mean on the same conditional mesh denoiser (side by side in --jobs processes),
draws one design per test problem of an in-distribution and an out-of-distribution
test set, refines PIDM's designs by a few SIMP iterations, and judges every design
thresholded by an independent solve: compliance error against SIMP's design of the same
problem, volume-fraction error, floating material, load disrespect, the equilibrium
residual of (u, rho) beside the data's floor, and the wall time per design. Writes
results.json, results.md, designs.png and fields (PVD/VTU) to --out/report. Every run
resumes from its data files and checkpoints.

    python benchmarks/topopt_mesh.py --quick           # under 15 minutes on 2 cores
    python benchmarks/topopt_mesh.py                   # the README's table (hours on 2 cores)
    python benchmarks/topopt_mesh.py --full --device cuda
"""

from __future__ import annotations

import os
import sys


def main(argv: list[str] | None = None) -> int:
    # Firedrake hands sys.argv to PETSc: do not report this script's own options as unused.
    os.environ.setdefault("PETSC_OPTIONS", "-options_left no")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from pidm_fem.experiments.benchmark_cli import benchmark_main, parse_benchmark_args
    from pidm_fem.experiments.topology_modes import METHODS

    args = parse_benchmark_args(
        argv, "topology", __doc__.splitlines()[0],
        quick="the coarse mesh, 96 training problems, 400 steps, 16 problems per test set (under 15 min)",
        full="10,000 training problems, 100,000 steps, width 64: for a GPU with --device cuda",
        methods=METHODS)
    return benchmark_main("topopt_mesh", "topology", args, _execute, "results.json, results.md, designs.png, "
                          "fields/*.pvd", workers="jobs")


def _execute(plan, args, t_start: float) -> str | None:
    from pidm_fem.experiments import topology_study
    from pidm_fem.experiments.topology_modes import MODES

    return topology_study.run(plan, MODES[args.mode], train_only=args.train_only, t_start=t_start)


if __name__ == "__main__":
    sys.exit(main())
