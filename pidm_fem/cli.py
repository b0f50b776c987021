"""The ``pidm-fem`` command line."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def _mesh_info(args: argparse.Namespace) -> int:
    import firedrake as fd

    from .mesh import load_mesh

    mesh = load_mesh(args.path)
    ids = sorted(int(i) for i in mesh.exterior_facets.unique_markers)
    lengths = {i: fd.assemble(fd.Constant(1.0) * fd.ds(i, domain=mesh)) for i in ids}
    area = fd.assemble(fd.Constant(1.0) * fd.dx(domain=mesh))
    print(f"{args.path}: {mesh.num_vertices()} vertices, {mesh.num_cells()} triangles, area {area:.6g}")
    for i, length in lengths.items():
        print(f"  boundary id {i}: length {length:.6g}")
    return 0


def _darcy_experiment(args: argparse.Namespace):
    from .experiments import DarcyExperiment
    from .training import load_config

    return DarcyExperiment(load_config(args.config), args.mesh, data_dir=args.data_dir, run_dir=args.run_dir,
                           workers=args.workers)


def _darcy_train(args: argparse.Namespace) -> int:
    summary = _darcy_experiment(args).train()
    print(f"trained steps {summary.first_step}..{summary.last_step} "
          f"({summary.seconds_per_step:.3f} s/step); run folder {args.run_dir}")
    return 0


def _darcy_sample(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from .atomic_files import atomic_path

    experiment = _darcy_experiment(args)
    rows = experiment.sample(args.n, seed=args.seed)
    with torch.no_grad():
        r = experiment.strong_residual(experiment.node_tensor(rows)).numpy()
    with atomic_path(args.out) as tmp:
        np.savez(tmp, rows=rows, residual=r, dof_coordinates=experiment.generator.layout.dof_coordinates())
    print(f"{len(rows)} samples -> {args.out}; mean |r| {np.abs(r).mean():.4g}, median of per-sample "
          f"mean |r| {np.median(np.abs(r).mean(axis=1)):.4g}")
    return 0


def _add_darcy_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", type=Path, help="run configuration (YAML)")
    parser.add_argument("--mesh", type=Path, default=None, help="mesh file (default: the embedded unit square)")
    parser.add_argument("--run-dir", type=Path, default=Path("runs/darcy"), help="checkpoints and log.jsonl")
    parser.add_argument("--data-dir", type=Path, default=Path("data"), help="cached sample files")
    parser.add_argument("--workers", type=int, default=1, help="processes generating missing samples")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``pidm-fem``."""
    parser = argparse.ArgumentParser(prog="pidm-fem", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    info = commands.add_parser("mesh-info", help="load a mesh and print its size and boundary ids")
    info.add_argument("path", help="mesh file (.msh, or any format meshio reads)")
    info.set_defaults(run=_mesh_info)
    train = commands.add_parser("darcy-train", help="train (or resume) a diffusion model of Darcy fields [p, K]")
    _add_darcy_arguments(train)
    train.set_defaults(run=_darcy_train)
    sample = commands.add_parser("darcy-sample", help="sample a trained Darcy model to an NPZ with residuals")
    _add_darcy_arguments(sample)
    sample.add_argument("--n", type=int, default=None, help="number of samples (default: sampling.n_samples)")
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--out", type=Path, default=Path("samples.npz"))
    sample.set_defaults(run=_darcy_sample)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``pidm-fem``; errors in the input are one line on stderr and exit code 2."""
    args = build_parser().parse_args(argv)
    # Firedrake hands sys.argv to PETSc: do not report our own options as unused PETSc options.
    os.environ.setdefault("PETSC_OPTIONS", "-options_left no")
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # Firedrake's recommendation
    from .data import DatasetError
    from .mesh import MeshError
    from .training import CheckpointError, ConfigError

    try:
        return args.run(args)
    except (MeshError, DatasetError, ConfigError, CheckpointError) as err:
        print(f"pidm-fem: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
