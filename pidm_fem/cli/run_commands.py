"""``pidm-fem data``, ``train``, ``sample``, ``evaluate`` and ``export``: the pipeline on run folders.

A run folder (:mod:`pidm_fem.experiments.run_folder`) holds a run's file, data,
checkpoints, samples and report, so that every command after ``train`` takes its path alone.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pidm_fem.errors import InputError
from pidm_fem.parallel import world

from .arguments import non_negative, positive, problem_option


def data(args: argparse.Namespace) -> int:
    """Generate (or resume) a sample file of a problem on a mesh."""
    from pidm_fem.experiments.experiment import problem_rows
    from pidm_fem.physics.problems import ProblemOptionError, build_problem

    rank, size = world()
    if size > 1 and args.workers > 1:
        raise InputError(f"--workers: the {size} processes of this run share the samples; give --workers 1")
    options = dict(problem_option(text) for text in args.option)
    try:
        problem = build_problem(args.problem, str(args.mesh), seed=args.seed, **options)
    except ProblemOptionError as err:
        raise InputError(f"--option: {err}") from None
    rows = problem_rows(problem, args.out, args.n, args.workers)
    if rank == 0:
        print(f"{len(rows)} {args.problem} samples on {args.mesh} (seed {args.seed}) -> {args.out}"
              + (f" ({size} ranks)" if size > 1 else ""))
    return 0


def train(args: argparse.Namespace) -> int:
    """Train (or resume) every method of a run in its run folder."""
    from pidm_fem.experiments.benchmark import parse_override
    from pidm_fem.experiments.comparison import train_all
    from pidm_fem.experiments.run_folder import RunFolder, RunFolderError, start_run
    from pidm_fem.training.config import merge_sections

    if args.run_file.is_dir():
        if args.out is not None or args.set:
            raise RunFolderError(f"{args.run_file}: a run folder resumes as it is (no --out or --set)")
        folder = RunFolder.open(args.run_file)
    else:
        overrides: dict = {}
        for text in args.set:
            overrides = merge_sections(overrides, parse_override(text))
        folder = start_run(args.run_file, args.out or Path("runs") / args.run_file.stem, overrides)
    rank, size = world()
    study, problem = folder.build(args.workers)
    if rank == 0:
        folder.save()
    train_all(study, problem, list(folder.spec.methods))
    if rank == 0:
        print(f"trained {', '.join(folder.spec.methods)} in {folder.path}"
              + (f" ({size} processes)" if size > 1 else "") + f"; next: pidm-fem sample {folder.path}")
    return 0


def _run_folder(args: argparse.Namespace):
    """The run folder of ``args.run_dir``, or its models on ``args.mesh`` (``meshes/<stem>/``) with ``args.option``."""
    from pidm_fem.experiments.run_folder import RunFolder

    folder = RunFolder.open(args.run_dir)
    if args.mesh is None:
        if args.option:
            raise InputError("--option: only with --mesh (a run's own options are in its run.yaml)")
        return folder
    return folder.on_mesh(args.mesh, dict(problem_option(text) for text in args.option))


def sample(args: argparse.Namespace) -> int:
    """Sample the run's methods to ``<out>/<method>.npz``."""
    from pidm_fem.experiments.run_folder import methods_or_all
    from pidm_fem.experiments.run_samples import sample_methods

    folder = _run_folder(args)
    out = args.out or folder.path / "samples"
    written = sample_methods(folder, methods_or_all(folder, args.method), args.n, out, seed=args.seed)
    for method, (path, residual) in written.items():
        print(f"{method}: {args.n} samples -> {path}; mean |r| {residual:.4g}")
    return 0


def evaluate(args: argparse.Namespace) -> int:
    """Evaluate the samples of a run against its test data into ``RUN_DIR/report``."""
    from pidm_fem.experiments.run_samples import evaluate_samples

    folder = _run_folder(args)
    table = evaluate_samples(folder, args.samples or folder.path / "samples")
    print(table)
    print(f"report in {folder.path / 'report'}: results.json, results.md, figures, fields/")
    return 0


def export(args: argparse.Namespace) -> int:
    """Export a run's samples of one method, or a split of its data, to VTU/PVD, XDMF, PNG and NPZ."""
    from pidm_fem.experiments.export import export_rows
    from pidm_fem.experiments.run_samples import load_samples

    folder = _run_folder(args)
    if (args.samples is None) == (args.data is None):
        raise InputError("export: give either --samples METHOD or --data SPLIT")
    study, problem = folder.build()
    if args.samples is not None:
        rows = load_samples(folder.path / "samples" / f"{args.samples}.npz", problem)["rows"]
        label, default_out = args.samples, folder.path / "export" / args.samples
    else:
        splits = study.experiment(problem, folder.spec.methods[0]).dataset()
        rows, label, default_out = getattr(splits, args.data), args.data, folder.path / "export" / f"data_{args.data}"
    rows = rows[: args.n] if args.n else rows
    formats = [f.strip() for f in args.format.split(",") if f.strip()]
    try:
        written = export_rows(problem, rows, args.out or default_out, formats, label=label)
    except ValueError as err:
        raise InputError(f"--format: {err}") from None
    print(f"{len(rows)} rows of {label} -> {', '.join(str(p) for p in written if p.suffix != '.vtu')}")
    return 0


def add_run_commands(commands) -> None:
    """The ``data``, ``train``, ``sample``, ``evaluate`` and ``export`` commands."""
    from pidm_fem.experiments.export import FORMATS

    problem_help = "registered problem (darcy, topology) or a problem file path/to/file.py:NAME"
    parser = commands.add_parser("data", help="generate (or resume) a sample file of a problem on a mesh")
    parser.add_argument("problem", help=problem_help)
    parser.add_argument("--mesh", type=Path, required=True, help="mesh file (.msh, or any format meshio reads)")
    parser.add_argument("--n", type=positive, required=True, help="number of samples")
    parser.add_argument("--out", type=Path, required=True,
                        help="sample file (HDF5); while incomplete, finished rows are in OUT.partial")
    parser.add_argument("--seed", type=non_negative, default=0, help="data seed (row i depends on it and on i only)")
    parser.add_argument("--workers", type=positive, default=1, help="processes solving samples")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="a setting of the problem's samples (YAML value), e.g. split=out_of_distribution or "
                             "max_iterations=100 for topology (docs/topopt.md); repeatable")
    parser.set_defaults(run=data)

    parser = commands.add_parser("train", help="train (or resume) the methods of a run file in its run folder")
    parser.add_argument("run_file", type=Path, metavar="RUN",
                        help="run file (YAML: a run section with problem, mesh, methods, options, and the "
                             "configuration sections) or a run folder to resume")
    parser.add_argument("--out", type=Path, help="run folder (default runs/<run file's name>)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a configuration key of the run file (YAML value); repeatable")
    parser.add_argument("--workers", type=positive, default=1, help="processes generating missing samples")
    parser.set_defaults(run=train)

    parser = commands.add_parser("sample", help="sample the trained methods of a run folder")
    parser.add_argument("run_dir", type=Path, help="run folder (made by pidm-fem train)")
    parser.add_argument("--n", type=positive, default=16, help="samples per method (conditional problems: "
                                                              "for the first N test conditions, cycled)")
    parser.add_argument("--method", action="append", help="a method of the run (default: all); repeatable")
    parser.add_argument("--out", type=Path, help="folder of <method>.npz (default RUN_DIR/samples)")
    parser.add_argument("--seed", type=non_negative, default=1, help="seed of the sampling noise")
    _add_mesh_options(parser)
    parser.set_defaults(run=sample)

    parser = commands.add_parser("evaluate", help="evaluate a run's samples against its test data")
    parser.add_argument("run_dir", type=Path, help="run folder")
    parser.add_argument("--samples", type=Path, help="folder of <method>.npz (default RUN_DIR/samples)")
    _add_mesh_options(parser)
    parser.set_defaults(run=evaluate)

    parser = commands.add_parser("export", help="write samples or data as VTU/PVD, XDMF, PNG and NPZ files")
    parser.add_argument("run_dir", type=Path, help="run folder")
    parser.add_argument("--samples", metavar="METHOD", help="the samples of METHOD (RUN_DIR/samples/METHOD.npz)")
    parser.add_argument("--data", choices=["train", "val", "test"], help="a split of the run's data")
    parser.add_argument("--n", type=non_negative, default=0, help="the first N rows (default: all)")
    parser.add_argument("--format", default=",".join(FORMATS),
                        help=f"comma-separated formats among {', '.join(FORMATS)} (default: all)")
    parser.add_argument("--out", type=Path, help="output folder (default RUN_DIR/export/<samples or data_SPLIT>)")
    _add_mesh_options(parser)
    parser.set_defaults(run=export)


def _add_mesh_options(parser: argparse.ArgumentParser) -> None:
    """``--mesh`` and ``--option``: the run's models on another mesh."""
    parser.add_argument("--mesh", type=Path,
                        help="another mesh to work on (the same fields and boundary ids): the run's mesh-denoiser "
                             "models sampled there, with data generated there, all in RUN_DIR/meshes/<mesh name>/; "
                             "a mesh-bound model (model.kind: unet) is refused")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="with --mesh: a problem setting for that mesh (YAML value), e.g. source=paper for "
                             "Darcy; repeatable")
