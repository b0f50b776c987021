"""The command line that every case study's benchmark script shares: modes, mesh, methods, run file, processes."""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path


def parse_benchmark_args(argv: list[str] | None, problem: str, description: str, quick: str, full: str,
                         methods: Sequence[str]) -> argparse.Namespace:
    """The options of ``benchmarks/<problem>_mesh.py``; ``quick`` and ``full`` say what those modes are."""
    from pidm_fem.errors import OneLineParser, debugging

    parser = OneLineParser(description=description)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_const", dest="mode", const="quick", help=quick)
    mode.add_argument("--full", action="store_const", dest="mode", const="full", help=full)
    parser.set_defaults(mode="default")
    parser.add_argument("--mesh", type=Path, default=None, help="mesh file (default: the mode's shipped mesh)")
    parser.add_argument("--out", type=Path, default=None, help=f"output folder (default: outputs/{problem}_mesh_<mode>)")
    parser.add_argument("--methods", nargs="+", choices=list(methods), default=None,
                        help="methods to compare (default: the mode's); a method needs the methods it uses")
    parser.add_argument("--config", type=Path, default=None,
                        help="YAML run file whose sections update the mode's (see docs/configuration.md)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one configuration key (YAML value), after --config; repeatable")
    parser.add_argument("--device", default=None, help="device of the networks (the FEM stays on the CPU)")
    parser.add_argument("--jobs", type=int, default=None,
                        help="processes training the methods side by side and generating samples "
                             "(default: one per available core)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads of this process, which trains the experts, samples and evaluates "
                             "(default 1; more help only on cores that no other process uses)")
    parser.add_argument("--debug", action="store_true", default=debugging(argv),
                        help="show tracebacks of errors (also PIDM_FEM_DEBUG=1)")
    parser.add_argument("--train-only", action="store_true",
                        help="train the methods and stop (a later run resumes, samples and evaluates)")
    return parser.parse_args(argv)


def prepare_from_args(problem: str, args: argparse.Namespace, workers: int | None = None):
    """The checked :class:`~pidm_fem.experiments.benchmark.Plan` of parsed benchmark options.

    ``workers``: processes that generate samples (default 1; ``--jobs`` when ``workers`` is ``"jobs"``).
    """
    from pidm_fem.experiments.benchmark import prepare

    jobs = len(os.sched_getaffinity(0)) if args.jobs is None else args.jobs
    return prepare(problem, args.mode, mesh=args.mesh, out=args.out, methods=args.methods, config=args.config,
                   overrides=args.overrides, device=args.device, jobs=jobs, threads=args.threads,
                   workers=jobs if workers == "jobs" else (workers or 1))


def benchmark_main(script: str, problem: str, args: argparse.Namespace, execute: Callable, outputs: str,
                   workers: int | str | None = None) -> int:
    """Plan, run and report a benchmark: ``execute(plan, args, t_start)`` returns its table (None when only trained).

    ``outputs`` names what the report folder holds; errors are one line prefixed ``script``.
    """
    from pidm_fem.errors import run_command

    def body() -> int:
        t_start = time.perf_counter()
        plan = prepare_from_args(problem, args, workers)
        table = execute(plan, args, t_start)
        if table is None:
            print(f"trained in {plan.study.out / 'runs'}; run again without --train-only to sample and evaluate")
            return 0
        print(table)
        print(f"\noutputs in {plan.study.out / 'report'}: {outputs} (wall {time.perf_counter() - t_start:.0f} s)")
        return 0

    return run_command(script, body, debug=args.debug)
