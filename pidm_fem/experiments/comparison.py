"""Training, sampling and evaluation of several registered methods on one problem and one dataset.

Methods share the seed, model, optimiser, data and number of steps; they differ only
in what their :class:`~pidm_fem.experiments.methods.Method` record sets. Full-range
methods may train side by side in worker processes (each the run a sequential run would
make); low-noise experts train after them, from their frozen models; sampled-only
methods reuse the models they need. Every run resumes from its checkpoints.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pidm_fem.diffusion import FieldNormalizer
from pidm_fem.errors import Interrupted
from pidm_fem.experiments.experiment import Experiment
from pidm_fem.experiments.methods import COCOGEN_SUFFIX, METHODS, method_config, trained_methods
from pidm_fem.physics.problem import Problem
from pidm_fem.physics.problems import build_problem
from pidm_fem.training import CheckpointError, load_checkpoint
from pidm_fem.stop_signals import die_with_parent, stop_requests
from pidm_fem.training.checkpoint import LAST


@dataclass(frozen=True)
class Study:
    """Where a comparison lives and what it runs on.

    Attributes
    ----------
    problem
        The registered problem's name.
    mesh
        The mesh file.
    sections
        The run file's sections (every method's :func:`~pidm_fem.experiments.methods.method_config` reads them).
    out
        The output folder: ``data/`` (sample files), ``runs/<method>/`` (checkpoints, logs).
    workers
        Processes that generate missing samples.
    progress
        Show progress bars.
    source
        What configuration errors name (the run file).
    options
        Settings of the problem's samples (``build_problem``'s options).
    trained_on_other_mesh
        The folder of ``<method>/`` checkpoints trained on another mesh, which this study
        samples on its own (None: the study's own ``out/runs``).
    """

    problem: str
    mesh: str
    sections: Mapping[str, Any]
    out: Path
    workers: int = 1
    progress: bool = True
    source: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    trained_on_other_mesh: Path | None = None

    @property
    def runs(self) -> Path:
        """The folder of the methods' ``<method>/`` checkpoints and logs."""
        return self.out / "runs" if self.trained_on_other_mesh is None else self.trained_on_other_mesh

    def build_problem(self) -> Problem:
        """The problem on the mesh, with the run file's data seed."""
        seed = method_config(self.sections, "ddpm", self.source).data.seed
        return build_problem(self.problem, self.mesh, seed=seed, **self.options)

    def experiment(self, problem: Problem, method: str) -> Experiment:
        """The experiment of ``method``'s run in ``runs/<method>``."""
        return Experiment(problem, method_config(self.sections, method, self.source), data_dir=self.out / "data",
                          run_dir=self.runs / method, workers=self.workers, progress=self.progress,
                          other_mesh=self.trained_on_other_mesh is not None)


def check_study(study: Study, problem: Problem, methods: list[str]) -> None:
    """Run every method's :meth:`~pidm_fem.experiments.experiment.Experiment.check_before_work` (before any data)."""
    for name in trained_methods(methods):
        study.experiment(problem, name).check_before_work()


def require_same_units(sampled: FieldNormalizer, other: FieldNormalizer, method: str) -> None:
    """Raise ValueError unless two models' normalisers hold the same statistics (so one state means one thing)."""
    ours, theirs = sampled.state_dict(), other.state_dict()
    if ours.keys() != theirs.keys() or not all(torch.equal(ours[key], theirs[key]) for key in ours):
        raise ValueError(f"{method}: the models it composes were trained in different normalised units")


def seconds_per_step(log: Path) -> float:
    """Mean wall time of a training step over a run's whole ``log.jsonl``."""
    if not log.is_file():
        return float("nan")
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    times = [line["seconds_per_step"] for line in lines if line.get("split") == "train"]
    return float(np.mean(times)) if times else float("nan")


def train_all(study: Study, problem: Problem, methods: list[str]) -> dict[str, Experiment]:
    """Train each trained method of ``methods`` (resuming finished or partial runs), experts last.

    An expert trains from the finished runs of the methods it needs (frozen, in the same
    normalised units).

    Returns
    -------
    dict
        ``{method: Experiment}`` of the trained methods.
    """
    experiments = {}
    for name in trained_methods(methods):
        experiment = study.experiment(problem, name)
        frozen = []
        own_units = experiment.fit_normalizer() if METHODS[name].needs else None
        for need in METHODS[name].needs:
            model, units = study.experiment(problem, need).load_denoiser()
            require_same_units(own_units, units, name)
            frozen.append(model)
        experiment.train(*frozen)
        experiments[name] = experiment
    return experiments


def _finished(checkpoint: Path, steps: int) -> bool:
    """Whether a run's last checkpoint exists and has reached ``steps``."""
    try:
        return load_checkpoint(checkpoint).step >= steps
    except CheckpointError:
        return False


def balanced_groups(methods: list[str], jobs: int) -> list[list[str]]:
    """The full-range trained methods of ``methods`` split into at most ``jobs`` groups of similar cost.

    Experts are left out (they train after every full-range run). Costliest first, each
    method to the group with the least cost so far (:attr:`~pidm_fem.experiments.methods.Method.step_cost`);
    empty groups are dropped.
    """
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}")
    groups: list[list[str]] = [[] for _ in range(jobs)]
    costs = [0.0] * jobs
    full_range = [m for m in trained_methods(methods) if not METHODS[m].is_expert]
    for name in sorted(full_range, key=lambda m: -METHODS[m].step_cost):
        cheapest = costs.index(min(costs))
        groups[cheapest].append(name)
        costs[cheapest] += METHODS[name].step_cost
    return [sorted(group, key=full_range.index) for group in groups if group]


def _train_group(study: Study, methods: list[str]) -> None:
    train_all(study, study.build_problem(), methods)


def train_in_parallel(study: Study, problem: Problem, methods: list[str], jobs: int) -> None:
    """Train the unfinished full-range methods of ``methods`` in up to ``jobs`` processes (none for one group).

    The dataset is generated first, here, so that the processes share one file; each
    process trains its group as :func:`train_all` would, so the runs are those of a
    sequential run, and a later :func:`train_all` resumes them (and trains the experts).
    A failure in any process is raised here; stopping this process stops them all.
    """
    unfinished = [m for m in trained_methods(methods)
                  if not _finished(study.runs / m / LAST, method_config(study.sections, m).training.steps)]
    groups = balanced_groups(unfinished, jobs)
    if len(groups) < 2:
        return
    study.experiment(problem, groups[0][0]).dataset()
    # spawn: a forked child would inherit the parent's initialised PETSc/MPI state. The pool's exit
    # terminates its workers when this process stops on an error or an interrupt; on Linux they are
    # also sent SIGTERM when it dies of a signal, so no training process outlives the benchmark.
    # SIGINT or SIGTERM here is passed on to the training processes, which save their current step;
    # then this process reports where the runs are.
    with stop_requests(also=_forward_to_children) as stop, \
            multiprocessing.get_context("spawn").Pool(len(groups), initializer=die_with_parent) as pool:
        try:
            pool.starmap(_train_group, [(study, group) for group in groups], chunksize=1)
        except Interrupted as err:
            raise Interrupted(f"{stop.name or 'a stop signal'}: the training processes saved their current steps "
                              f"in {study.out / 'runs'}; run the same command again to resume",
                              stop.signum or err.signum) from None
        pool.close()
        pool.join()


def _forward_to_children(signum: int) -> None:
    for child in multiprocessing.active_children():
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.pid, signum)


@dataclass
class SampledRun:
    """One row of the comparison: its samples and costs."""

    rows: np.ndarray
    seconds_per_step: float
    sample_seconds_per_sample: float
    log: Path | None


def train_and_sample(
    study: Study, problem: Problem, methods: list[str], n_samples: int, cocogen: tuple[str, ...] = ()
) -> dict[str, SampledRun]:
    """Train each method (resuming finished or partial runs), then sample it.

    Returns
    -------
    dict
        ``{row name: SampledRun}``: every method of ``methods`` in order, then
        ``<method>+cocogen`` for the methods of ``cocogen``. A sampled-only method has the
        training cost of the model it samples and its own sampling cost (the model's
        sampling included).
    """
    experiments = train_all(study, problem, methods)
    runs: dict[str, SampledRun] = {}
    for name in methods:
        method = METHODS[name]
        if method.trained:
            runs[name] = sample_run(experiments[name], n_samples)
        elif method.after_sampling == "solve_state":
            runs[name] = solved_state_run(experiments[method.needs[0]], runs[method.needs[0]])
    for name in cocogen:
        runs[name + COCOGEN_SUFFIX] = sample_run(experiments[name], n_samples, cocogen=True)
    return {name: runs[name] for name in list(methods) + [m + COCOGEN_SUFFIX for m in cocogen]}


def sample_run(experiment: Experiment, n_samples: int | None, seed: int = 1, cocogen: bool = False,
               conditions: np.ndarray | None = None) -> SampledRun:
    """A trained method's samples (:meth:`Experiment.sample`) with its training and sampling costs."""
    t0 = time.perf_counter()
    rows = experiment.sample(n_samples, seed=seed, cocogen=cocogen, conditions=conditions)
    seconds = time.perf_counter() - t0
    log = experiment.run_dir / "log.jsonl"
    return SampledRun(rows, seconds_per_step(log), seconds / len(rows), log if log.is_file() else None)


def solved_state_run(experiment: Experiment, source: SampledRun) -> SampledRun:
    """The physics-exact reference of a method's samples: their states solved for their coefficients.

    Its costs are the source's training and its sampling plus one solve per sample.
    """
    t0 = time.perf_counter()
    rows = experiment.with_solved_state(source.rows)
    seconds = source.sample_seconds_per_sample + (time.perf_counter() - t0) / len(rows)
    return SampledRun(rows, source.seconds_per_step, seconds, None)
