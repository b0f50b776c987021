"""A benchmark run from its options: every check up front (:func:`prepare`), then the work (:func:`run`).

The run file of a benchmark is the mode's sections (:mod:`pidm_fem.experiments.darcy_modes`),
updated by a user's YAML file (``--config``) and then by ``--set section.key=value``
overrides; the result is checked once, for every method, before any data are made.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


from pidm_fem.experiments import darcy_modes, topology_modes
from pidm_fem.experiments.comparison import Study, check_study, train_all, train_and_sample, train_in_parallel
from pidm_fem.experiments.methods import check_methods, method_config
from pidm_fem.experiments.report import evaluate_runs, write_report
from pidm_fem.experiments.run_folder import RunFolder, RunSpec
from pidm_fem.errors import InputError
from pidm_fem.mesh.builtin import MESH_DIR
from pidm_fem.physics.problem import Problem
from pidm_fem.training import ConfigError, config_to_dict
from pidm_fem.training.config import merge_sections, read_yaml, read_yaml_file

#: each problem's benchmark modes
MODES = {"darcy": darcy_modes.MODES, "topology": topology_modes.MODES}


class BenchmarkError(InputError):
    """Bad input to a benchmark: one line naming the option, file or key."""


@dataclass(frozen=True)
class Plan:
    """A checked benchmark run."""

    study: Study
    problem: Problem
    mode: str
    methods: list[str]
    cocogen: tuple[str, ...]
    n_samples: int
    jobs: int
    threads: int


def parse_override(text: str) -> dict[str, dict[str, Any]]:
    """``section.key=value`` (a YAML value) as ``{section: {key: value}}``; BenchmarkError if malformed."""
    name, sep, value = text.partition("=")
    section, dot, key = name.strip().partition(".")
    if not sep or not dot or not section or not key:
        raise BenchmarkError(f"--set {text!r}: expected SECTION.KEY=VALUE")
    try:
        parsed = read_yaml(value)
    except ConfigError as err:
        raise BenchmarkError(f"--set {text!r}: {err}") from None
    return {section: {key: parsed}}


def prepare(problem: str, mode: str, *, mesh: str | os.PathLike | None = None, out: str | os.PathLike | None = None,
            methods: Sequence[str] | None = None, config: str | os.PathLike | None = None,
            overrides: Sequence[str] = (), device: str | None = None, jobs: int = 1, threads: int = 1,
            workers: int = 1, progress: bool = True) -> Plan:
    """Check every option and build the plan of a benchmark run.

    Raises
    ------
    BenchmarkError
        One line: a mesh that does not load, a bad run file or override, an unknown
        method or one without the methods it needs, a jobs or threads count below 1, a
        device this machine lacks, a model that cannot be built, a checkpoint in the
        output folder that cannot be resumed. Nothing is generated or trained before.
    """
    settings = MODES[problem][mode]
    for option, value in (("--jobs", jobs), ("--threads", threads)):
        if value < 1:
            raise BenchmarkError(f"{option} must be at least 1, got {value}")
    mesh_path = Path(mesh) if mesh is not None else MESH_DIR / settings["mesh"]
    source = f"<{mode} mode>"
    try:
        user: dict = {}
        if config is not None:
            user = read_yaml_file(config)
            source = str(config)
        for text in overrides:
            user = merge_sections(user, parse_override(text))
        if device is not None:
            user = merge_sections(user, {"training": {"device": device}})
        names = list(methods or settings["methods"])
        mode_sections = merge_sections({}, settings["config"])
        if "apply_to" in mode_sections.get("cocogen", {}) and "apply_to" not in (user.get("cocogen") or {}):
            # the mode corrects those of its methods that are run
            mode_sections["cocogen"]["apply_to"] = [m for m in mode_sections["cocogen"]["apply_to"] if m in names]
        sections = merge_sections(mode_sections, user)
        resolved = {name: method_config(sections, name, source) for name in names}
        cocogen = resolved[names[0]].cocogen.apply_to
        check_methods(names, cocogen)
        first = resolved[names[0]]
        out_path = Path(out) if out is not None else Path(f"outputs/{problem}_mesh_{mode}")
        study = Study(problem, str(mesh_path), sections, out_path, workers, progress, source)
        built = study.build_problem()
        check_study(study, built, names)
    except BenchmarkError:
        raise
    except InputError as err:
        raise BenchmarkError(str(err)) from None
    return Plan(study, built, mode, names, tuple(cocogen), first.sampling.n_samples, jobs, threads)


def run(plan: Plan, *, train_only: bool = False, t_start: float | None = None,
        set_threads: Callable[[int], None] | None = None) -> str | None:
    """Train, sample, evaluate and write the report of a plan; its Markdown table (None with ``train_only``)."""
    import time

    import torch

    t_start = time.perf_counter() if t_start is None else t_start
    study, problem = plan.study, plan.problem
    # the output folder is a run folder: pidm-fem sample/evaluate/export take its path
    RunFolder(study.out, RunSpec(study.problem, os.path.abspath(study.mesh), tuple(plan.methods),
                                 dict(study.options), study.sections)).save()
    train_in_parallel(study, problem, plan.methods, plan.jobs)
    (set_threads or torch.set_num_threads)(plan.threads)  # after the side-by-side processes (one thread each)
    if train_only:
        train_all(study, problem, plan.methods)
        return None
    runs = train_and_sample(study, problem, plan.methods, plan.n_samples, plan.cocogen)
    experiment = study.experiment(problem, plan.methods[0])
    summary, residuals = evaluate_runs(experiment, runs)
    run_info = {"mode": plan.mode, "mesh": study.mesh, "n_nodes": experiment.fields.n_nodes,
                "n_samples": plan.n_samples, "methods": plan.methods, "cocogen": list(plan.cocogen),
                "config": config_to_dict(method_config(study.sections, plan.methods[0])),
                "sections": study.sections, "jobs": plan.jobs, "torch_threads": torch.get_num_threads(),
                "wall_seconds": time.perf_counter() - t_start}
    title = f"{study.problem} on {Path(study.mesh).name} ({plan.mode} mode, {plan.n_samples} samples per method)"
    return write_report(experiment, runs, summary, residuals, study.out / "report", title, run_info)
