"""The ``pidm-fem`` command line.

Exit codes: 0 on success, 2 for bad input (a file, an option, a configuration key), 1 for
a computation that failed; each failure is one line on stderr (a traceback only with
``--debug`` or ``PIDM_FEM_DEBUG=1``). SIGINT or SIGTERM during training saves the step
under way and exits with 128 + the signal's number.
"""

from __future__ import annotations

import argparse
import os
import sys


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``pidm-fem``."""
    from pidm_fem.errors import OneLineParser

    from .mesh_commands import add_mesh_commands
    from .run_commands import add_run_commands
    from .simp_command import add_simp_command

    parser = OneLineParser(prog="pidm-fem", description="Physics-informed diffusion models on finite element "
                           "meshes: meshes, sample files, training, sampling, evaluation, export and SIMP.")
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an error (anywhere on the line; also PIDM_FEM_DEBUG=1)")
    commands = parser.add_subparsers(dest="command", required=True)
    add_mesh_commands(commands)
    add_run_commands(commands)
    add_simp_command(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``pidm-fem``; see the module's description of exit codes and error lines."""
    from pidm_fem.errors import debugging, run_command

    # Firedrake (which building the parser loads) hands sys.argv to PETSc: do not report our own
    # options as unused PETSc options.
    os.environ.setdefault("PETSC_OPTIONS", "-options_left no")
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # Firedrake's recommendation
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = debugging(argv)
    args = build_parser().parse_args([a for a in argv if a != "--debug"])
    return run_command("pidm-fem", lambda: args.run(args), debug=debug)

