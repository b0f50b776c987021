"""``pidm-fem simp``: classical SIMP topology optimisation of the MBB beam or of a user's mesh."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from .arguments import positive


def simp(args: argparse.Namespace) -> int:
    """Run SIMP and write its outputs."""
    from pidm_fem.errors import InputError
    from pidm_fem.topopt import SIMPSettings, mbb_beam, optimise
    from pidm_fem.topopt.outputs import write_outputs

    overrides = {"volfrac": args.volfrac, "rmin": args.rmin, "filter": args.filter, "optimizer": args.optimizer,
                 "max_iterations": args.max_iterations, "projection": args.projection or None}
    material_overrides = {"penal": args.penal, "E_min": args.emin}
    if args.case == "mbb":
        if args.mesh is not None or args.problem is not None:
            raise InputError("simp mbb makes its own mesh: give either mbb or --mesh and --problem")
        from pidm_fem.physics.elasticity import Material

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
        from pidm_fem.mesh import load_mesh
        from pidm_fem.topopt.problem_file import ProblemFileError, read_problem

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


def add_simp_command(commands) -> None:
    """The ``simp`` command."""
    parser = commands.add_parser("simp", help="classical SIMP topology optimisation: the MBB beam or a user's mesh")
    parser.add_argument("case", nargs="?", choices=["mbb"], help="the 88-line code's MBB half-beam on a grid")
    parser.add_argument("--mesh", type=Path, help="mesh file (with --problem)")
    parser.add_argument("--problem", type=Path, help="problem file: supports, loads, material, settings (YAML)")
    parser.add_argument("--out", type=Path, required=True, help="output folder (replaced whole at the end)")
    parser.add_argument("--nelx", type=positive, default=60, help="mbb: elements along x")
    parser.add_argument("--nely", type=positive, default=20, help="mbb: elements along y")
    parser.add_argument("--quadrilateral", action="store_true", help="mbb: square (bilinear) elements, not triangles")
    parser.add_argument("--volfrac", type=float, help="volume fraction in (0, 1) (default 0.5)")
    parser.add_argument("--penal", type=float, help="SIMP exponent (default 3)")
    parser.add_argument("--emin", type=float, help="Young's modulus of void (default 1e-9)")
    parser.add_argument("--rmin", type=float, help="filter radius in mesh units (default 2.4)")
    parser.add_argument("--filter", choices=["density", "sensitivity", "helmholtz"], help="default density")
    parser.add_argument("--optimizer", choices=["oc", "mma"], help="default oc (optimality criteria)")
    parser.add_argument("--max-iterations", type=positive, help="iteration cap (default 500)")
    parser.add_argument("--projection", action="store_true", help="Heaviside projection with beta continuation")
    parser.add_argument("--solver", choices=["direct", "iterative"], help="MUMPS (default) or CG with GAMG")
    parser.set_defaults(run=simp)
