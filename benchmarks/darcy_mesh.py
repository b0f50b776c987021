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

import argparse
import os
import sys
import time
from pathlib import Path


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from pidm_fem.errors import OneLineParser, debugging
    from pidm_fem.experiments.methods import METHODS

    parser = OneLineParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_const", dest="mode", const="quick",
                      help="`make demo`: the coarse mesh, 350 steps, the paper's methods (under 10 min)")
    mode.add_argument("--full", action="store_const", dest="mode", const="full",
                      help="the paper's scale (10,000 samples, 300,000 steps, U-Net): for a GPU with --device cuda")
    parser.set_defaults(mode="default")
    parser.add_argument("--mesh", type=Path, default=None, help="mesh file (default: the mode's shipped mesh)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: outputs/darcy_mesh_<mode>)")
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=None,
                        help="methods to compare (default: the mode's); a method needs the methods it uses")
    parser.add_argument("--config", type=Path, default=None,
                        help="YAML run file whose sections update the mode's (see docs/configuration.md)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one configuration key (YAML value), after --config; repeatable")
    parser.add_argument("--device", default=None, help="device of the networks (the FEM stays on the CPU)")
    parser.add_argument("--jobs", type=int, default=None,
                        help="processes training the methods side by side (default: one per available core)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads of this process, which trains the experts, samples and evaluates "
                             "(default 1; more help only on cores that no other process uses)")
    parser.add_argument("--debug", action="store_true", default=debugging(argv),
                        help="show tracebacks of errors (also PIDM_FEM_DEBUG=1)")
    parser.add_argument("--train-only", action="store_true",
                        help="train the methods and stop (a later run resumes, samples and evaluates)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    # Firedrake (which the registry's package loads) hands sys.argv to PETSc: do not report this
    # script's own options as unused PETSc options.
    os.environ.setdefault("PETSC_OPTIONS", "-options_left no")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    args = parse_args(argv)
    from pidm_fem.errors import run_command

    return run_command("darcy_mesh", lambda: _run(args), debug=args.debug)


def _run(args: argparse.Namespace) -> int:
    import torch

    from pidm_fem.experiments.benchmark import prepare, run

    t_start = time.perf_counter()
    jobs = len(os.sched_getaffinity(0)) if args.jobs is None else args.jobs
    plan = prepare("darcy", args.mode, mesh=args.mesh, out=args.out, methods=args.methods, config=args.config,
                   overrides=args.overrides, device=args.device, jobs=jobs, threads=args.threads)
    table = run(plan, train_only=args.train_only, t_start=t_start, set_threads=torch.set_num_threads)
    if table is None:
        print(f"trained in {plan.study.out / 'runs'}; run again without --train-only to sample and evaluate")
        return 0
    print(table)
    print(f"\noutputs in {plan.study.out / 'report'}: results.json, results.md, samples.png, residual_maps.png, "
          f"residual_histogram.png, training_curves.png, fields/*.pvd "
          f"(wall {time.perf_counter() - t_start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
