"""The ``pidm-fem`` command line.

Exit codes: 0 on success, 2 for bad input (a file, an option, a configuration key), 1 for
a computation that failed; each failure is one line on stderr (a traceback only with
``--debug`` or ``PIDM_FEM_DEBUG=1``). SIGINT or SIGTERM during training saves the step
under way and exits with 128 + the signal's number.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path
from typing import Any


def _mesh_info(args: argparse.Namespace) -> int:
    import firedrake as fd
    import numpy as np

    from .mesh import cell_quality, load_mesh, read_mesh_arrays
    from .mesh.checks import POOR_ANGLE, POOR_ASPECT

    arrays = read_mesh_arrays(args.path)
    mesh = load_mesh(args.path)
    ids = sorted(int(i) for i in mesh.exterior_facets.unique_markers)
    lengths = {i: fd.assemble(fd.Constant(1.0) * fd.ds(i, domain=mesh)) for i in ids}
    area = fd.assemble(fd.Constant(1.0) * fd.dx(domain=mesh))
    low, high = arrays.points.min(axis=0), arrays.points.max(axis=0)
    angles, aspect = cell_quality(arrays.points, arrays.cells)
    print(f"{args.path}: {len(arrays.points)} vertices, {len(arrays.cells)} {arrays.cell_type}s, area {area:.6g}")
    print(f"  bounding box: [{low[0]:.6g}, {high[0]:.6g}] x [{low[1]:.6g}, {high[1]:.6g}]")
    for i, length in lengths.items():
        print(f"  boundary id {i}: length {length:.6g}")
    print(f"  cell quality: minimum angle {angles.min():.3g} degrees, largest aspect ratio {aspect.max():.3g}")
    poor = int(np.sum((angles < POOR_ANGLE) | (aspect > POOR_ASPECT)))
    if poor:
        print(f"pidm-fem: warning: {args.path}: {poor} poor cells (an angle below {POOR_ANGLE:g} degrees or an "
              f"aspect ratio above {POOR_ASPECT:g})", file=sys.stderr)
    return 0


def _data(args: argparse.Namespace) -> int:
    from .errors import InputError
    from .experiments.experiment import problem_rows
    from .physics.problems import build_problem

    options = dict(_problem_option(text) for text in args.option)
    try:
        problem = build_problem(args.problem, str(args.mesh), seed=args.seed, **options)
    except TypeError as err:
        raise InputError(f"--option: the {args.problem} problem has no such setting ({err})") from None
    except ValueError as err:
        raise InputError(f"--option: {err}") from None
    rows = problem_rows(problem, args.out, args.n, args.workers)
    print(f"{len(rows)} {args.problem} samples on {args.mesh} (seed {args.seed}) -> {args.out}")
    return 0


def _problem_option(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` (a YAML value) as a problem setting; InputError if malformed."""
    from .config_files import ConfigError, read_yaml
    from .errors import InputError

    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise InputError(f"--option {text!r}: expected KEY=VALUE")
    try:
        return key.strip(), read_yaml(value)
    except ConfigError as err:
        raise InputError(f"--option {text!r}: {err}") from None


def _simp(args: argparse.Namespace) -> int:
    from .errors import InputError
    from .topopt import SIMPSettings, mbb_beam, optimise
    from .topopt.outputs import write_outputs

    overrides = {"volfrac": args.volfrac, "rmin": args.rmin, "filter": args.filter, "optimizer": args.optimizer,
                 "max_iterations": args.max_iterations, "projection": args.projection or None}
    material_overrides = {"penal": args.penal, "E_min": args.emin}
    if args.case == "mbb":
        if args.mesh is not None or args.problem is not None:
            raise InputError("simp mbb makes its own mesh: give either mbb or --mesh and --problem")
        from .physics.elasticity import Material

        try:
            material = Material(**{k: v for k, v in material_overrides.items() if v is not None})
            settings = SIMPSettings(**{"rmin": 2.4, **{k: v for k, v in overrides.items() if v is not None}})
            elasticity = mbb_beam(args.nelx, args.nely, quadrilateral=args.quadrilateral, material=material,
                                  solver=args.solver or "direct")
        except ValueError as err:
            raise InputError(f"simp mbb: {err}") from None
        problem = {"case": "mbb", "nelx": args.nelx, "nely": args.nely, "quadrilateral": args.quadrilateral}
    else:
        if args.mesh is None or args.problem is None:
            raise InputError("simp needs the case mbb, or --mesh PATH and --problem PROBLEM.yaml")
        from .mesh import load_mesh
        from .topopt.problem_file import ProblemFileError, read_problem

        mesh = load_mesh(args.mesh)
        elasticity, settings = read_problem(args.problem, mesh, **overrides)
        if any(v is not None for v in material_overrides.values()) or args.solver:
            try:
                elasticity = dataclasses.replace(
                    elasticity, material=dataclasses.replace(
                        elasticity.material, **{k: v for k, v in material_overrides.items() if v is not None}),
                    solver=args.solver or elasticity.solver)
            except ValueError as err:
                raise ProblemFileError(args.problem, str(err)) from None
        problem = {"mesh": str(args.mesh), "problem_file": str(args.problem)}
    result = optimise(elasticity, settings)
    write_outputs(args.out, elasticity, result, settings, problem)
    print(f"compliance {result.compliance:.6g}, volume fraction {result.volume_fraction:.4f}, "
          f"{result.iterations} iterations{'' if result.converged else ' (the cap)'} in {result.seconds:.1f} s; "
          f"outputs in {args.out}: results.json, history.json, design.png, fields/design.pvd")
    return 0


def _study(args: argparse.Namespace):
    """The study folder of a command's run file, problem and mesh, and the problem, checked before any work."""
    from .experiments.comparison import Study, check_study
    from .experiments.methods import check_methods
    from .mesh import default_mesh_path
    from .training.config import read_yaml_file

    sections = read_yaml_file(args.config)
    mesh = str(args.mesh or default_mesh_path())
    study = Study(args.problem, mesh, sections, args.out, workers=args.workers, source=str(args.config))
    methods = _with_needs(args.method)
    check_methods(methods, ())
    problem = study.build_problem()
    check_study(study, problem, methods)
    return study, problem


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


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {value}")
    return value


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    from .experiments.methods import METHODS
    from .physics.problems import PROBLEMS

    parser.add_argument("config", type=Path, help="run file (YAML sections; missing keys take the library defaults)")
    parser.add_argument("--method", choices=list(METHODS), default="pidm_mean", help="method of the registry")
    parser.add_argument("--problem", choices=list(PROBLEMS), default="darcy", help="registered problem")
    parser.add_argument("--mesh", type=Path, default=None, help="mesh file (default: the embedded unit square)")
    parser.add_argument("--out", type=Path, default=Path("runs/darcy"),
                        help="study folder: data/ (sample files) and runs/<method>/ (checkpoints, log.jsonl)")
    parser.add_argument("--workers", type=_positive, default=1, help="processes generating missing samples")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``pidm-fem``."""
    from .errors import OneLineParser
    from .physics.problems import PROBLEMS

    parser = OneLineParser(prog="pidm-fem", description=__doc__.split("\n\n")[0])
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an error (anywhere on the line; also PIDM_FEM_DEBUG=1)")
    commands = parser.add_subparsers(dest="command", required=True)
    info = commands.add_parser("mesh-info", help="check a mesh and print its size, boundary ids and cell quality")
    info.add_argument("path", help="mesh file (.msh, or any format meshio reads)")
    info.set_defaults(run=_mesh_info)
    data = commands.add_parser("data", help="generate (or resume) a sample file of a problem on a mesh")
    data.add_argument("problem", choices=list(PROBLEMS), help="registered problem")
    data.add_argument("--mesh", type=Path, required=True, help="mesh file (.msh, or any format meshio reads)")
    data.add_argument("--n", type=_positive, required=True, help="number of samples")
    data.add_argument("--out", type=Path, required=True,
                      help="sample file (HDF5); while incomplete, finished rows are in OUT.partial")
    data.add_argument("--seed", type=_non_negative, default=0, help="data seed (row i depends on it and on i only)")
    data.add_argument("--workers", type=_positive, default=1, help="processes solving samples")
    data.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                      help="a setting of the problem's samples (YAML value), e.g. split=out_of_distribution or "
                           "max_iterations=100 for topology (docs/topopt.md); repeatable")
    data.set_defaults(run=_data)
    simp = commands.add_parser("simp", help="classical SIMP topology optimisation: the MBB beam or a user's mesh")
    simp.add_argument("case", nargs="?", choices=["mbb"], help="the 88-line code's MBB half-beam on a grid")
    simp.add_argument("--mesh", type=Path, help="mesh file (with --problem)")
    simp.add_argument("--problem", type=Path, help="problem file: supports, loads, material, settings (YAML)")
    simp.add_argument("--out", type=Path, required=True, help="output folder (replaced whole at the end)")
    simp.add_argument("--nelx", type=_positive, default=60, help="mbb: elements along x")
    simp.add_argument("--nely", type=_positive, default=20, help="mbb: elements along y")
    simp.add_argument("--quadrilateral", action="store_true", help="mbb: square (bilinear) elements, not triangles")
    simp.add_argument("--volfrac", type=float, help="volume fraction in (0, 1) (default 0.5)")
    simp.add_argument("--penal", type=float, help="SIMP exponent (default 3)")
    simp.add_argument("--emin", type=float, help="Young's modulus of void (default 1e-9)")
    simp.add_argument("--rmin", type=float, help="filter radius in mesh units (default 2.4)")
    simp.add_argument("--filter", choices=["density", "sensitivity", "helmholtz"], help="default density")
    simp.add_argument("--optimizer", choices=["oc", "mma"], help="default oc (optimality criteria)")
    simp.add_argument("--max-iterations", type=_positive, help="iteration cap (default 500)")
    simp.add_argument("--projection", action="store_true", help="Heaviside projection with beta continuation")
    simp.add_argument("--solver", choices=["direct", "iterative"], help="MUMPS (default) or CG with GAMG")
    simp.set_defaults(run=_simp)
    train = commands.add_parser("train", help="train (or resume) one method of the registry on a problem")
    _add_run_arguments(train)
    train.set_defaults(run=_train)
    sample = commands.add_parser("sample", help="sample a trained method (training what is missing) to an NPZ")
    _add_run_arguments(sample)
    sample.add_argument("--n", type=_positive, default=64, help="number of samples")
    sample.add_argument("--samples", type=Path, default=Path("samples.npz"), help="output NPZ file")
    sample.set_defaults(run=_sample)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``pidm-fem``; see the module's description of exit codes and error lines."""
    from .errors import debugging, run_command

    # Firedrake (which building the parser loads) hands sys.argv to PETSc: do not report our own
    # options as unused PETSc options.
    os.environ.setdefault("PETSC_OPTIONS", "-options_left no")
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # Firedrake's recommendation
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = debugging(argv)
    args = build_parser().parse_args([a for a in argv if a != "--debug"])
    return run_command("pidm-fem", lambda: args.run(args), debug=debug)


if __name__ == "__main__":
    sys.exit(main())
