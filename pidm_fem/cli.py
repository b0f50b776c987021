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


def _study(args: argparse.Namespace):
    """The study folder of a command's run file, problem and mesh, and the problem itself."""
    from .experiments.comparison import Study
    from .experiments.methods import check_methods
    from .mesh import default_mesh_path
    from .training.config import read_yaml_file

    sections = read_yaml_file(args.config)
    mesh = str(args.mesh or default_mesh_path())
    study = Study(args.problem, mesh, sections, args.out, workers=args.workers, source=str(args.config))
    check_methods(_with_needs(args.method), ())
    return study, study.build_problem()


def _with_needs(name: str) -> list[str]:
    """The methods whose models ``name`` uses, then ``name``."""
    from .experiments.methods import METHODS

    return [*METHODS[name].needs, name]


def _train(args: argparse.Namespace) -> int:
    from .experiments.comparison import train_all
    from .experiments.methods import METHODS

    study, problem = _study(args)
    if not METHODS[args.method].trained:
        print(f"pidm-fem: {args.method} trains nothing of its own (it samples {', '.join(METHODS[args.method].needs)})")
        return 0
    train_all(study, problem, [args.method])
    print(f"trained {args.method}; run folder {study.out / 'runs' / args.method}")
    return 0


def _sample(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from .atomic_files import atomic_path
    from .experiments.comparison import train_and_sample

    study, problem = _study(args)
    methods = _with_needs(args.method)
    run = train_and_sample(study, problem, methods, args.n)[args.method]
    experiment = study.experiment(problem, methods[0])
    with torch.no_grad():
        r = experiment.strong_residual(experiment.node_tensor(run.rows)).numpy()
    with atomic_path(args.samples) as tmp:
        np.savez(tmp, rows=run.rows, residual=r, dof_coordinates=problem.layout.dof_coordinates())
    print(f"{len(run.rows)} samples of {args.method} -> {args.samples}; mean |r| {np.abs(r).mean():.4g}, "
          f"median of per-sample mean |r| {np.median(np.abs(r).mean(axis=1)):.4g}")
    return 0


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    from .experiments.methods import METHODS
    from .physics.problems import PROBLEMS

    parser.add_argument("config", type=Path, help="run file (YAML sections; missing keys take the library defaults)")
    parser.add_argument("--method", choices=list(METHODS), default="pidm_mean", help="method of the registry")
    parser.add_argument("--problem", choices=list(PROBLEMS), default="darcy", help="registered problem")
    parser.add_argument("--mesh", type=Path, default=None, help="mesh file (default: the embedded unit square)")
    parser.add_argument("--out", type=Path, default=Path("runs/darcy"),
                        help="study folder: data/ (sample files) and runs/<method>/ (checkpoints, log.jsonl)")
    parser.add_argument("--workers", type=int, default=1, help="processes generating missing samples")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``pidm-fem``."""
    parser = argparse.ArgumentParser(prog="pidm-fem", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    info = commands.add_parser("mesh-info", help="load a mesh and print its size and boundary ids")
    info.add_argument("path", help="mesh file (.msh, or any format meshio reads)")
    info.set_defaults(run=_mesh_info)
    train = commands.add_parser("train", help="train (or resume) one method of the registry on a problem")
    _add_run_arguments(train)
    train.set_defaults(run=_train)
    sample = commands.add_parser("sample", help="sample a trained method (training what is missing) to an NPZ")
    _add_run_arguments(sample)
    sample.add_argument("--n", type=int, default=64, help="number of samples")
    sample.add_argument("--samples", type=Path, default=Path("samples.npz"), help="output NPZ file")
    sample.set_defaults(run=_sample)
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
