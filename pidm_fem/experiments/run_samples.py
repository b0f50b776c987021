"""Samples of a run folder's methods as files, and their evaluation against the run's test data.

``samples/<method>.npz`` holds ``rows`` (N, total) in the problem's gauge, the strong-form
nodal ``residual`` of each, the ``dof_coordinates`` of a row's entries, the problem's
``fingerprint`` (mesh and spaces), the sampling ``seed`` and the costs
(``seconds_per_sample``, ``train_seconds_per_step``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from pidm_fem.atomic_files import atomic_path
from pidm_fem.errors import InputError
from pidm_fem.experiments.comparison import SampledRun, sample_run, solved_state_run
from pidm_fem.experiments.methods import METHODS
from pidm_fem.experiments.report import evaluate_runs, write_report
from pidm_fem.experiments.run_folder import RunFolder
from pidm_fem.physics.problem import Problem


def _conditions(experiment, n: int) -> np.ndarray | None:
    """The first ``n`` test rows (cycled) of a problem with condition fields; None without them."""
    if not experiment.problem.conditions:
        return None
    test = experiment.dataset().test
    if len(test) == 0:
        raise InputError(f"the {experiment.problem.name} problem is sampled for test conditions; data.n_test is 0")
    return test[np.arange(n) % len(test)]


def sample_methods(folder: RunFolder, methods: Sequence[str], n: int, out: str | Path,
                   seed: int = 1) -> dict[str, tuple[Path, float]]:
    """Sample each method of ``methods`` ``n`` times into ``out/<method>.npz``.

    A method that samples another's model (the physics-exact reference) uses that model's
    samples of the same seed. Returns ``{method: (file, mean |r|)}``.
    """
    study, problem = folder.build()
    if folder.trained_in is not None:  # the run on another mesh: its run.yaml names the mesh sampled
        folder.save()
    out = Path(out)
    made: dict[str, SampledRun] = {}

    def draw(method: str) -> SampledRun:
        """The samples of a trained method (drawn once per method)."""
        if method not in made:
            experiment = study.experiment(problem, method)
            made[method] = sample_run(experiment, None if problem.conditions else n, seed=seed,
                                      conditions=_conditions(experiment, n))
        return made[method]

    written = {}
    for method in methods:
        record = METHODS[method]
        trained = method if record.trained else record.needs[0]
        experiment = study.experiment(problem, trained)
        run = draw(trained) if record.trained else solved_state_run(experiment, draw(trained))
        with torch.no_grad():  # the physics is evaluated in float64, as the evaluation does
            residual = experiment.strong_residual(
                experiment.fields.to_nodes(torch.as_tensor(run.rows, dtype=torch.float64))).numpy()
        path = out / f"{method}.npz"
        with atomic_path(path) as tmp:
            np.savez(tmp, rows=run.rows, residual=residual, dof_coordinates=problem.layout.dof_coordinates(),
                     fingerprint=problem.fingerprint, method=method, seed=seed,
                     seconds_per_sample=run.sample_seconds_per_sample, train_seconds_per_step=run.seconds_per_step)
        written[method] = path, float(np.abs(residual).mean())
    return written


def load_samples(path: str | Path, problem: Problem) -> dict[str, np.ndarray]:
    """A samples file of ``problem``'s mesh and spaces; InputError naming the file otherwise."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such samples file (make it with pidm-fem sample)")
    with np.load(path) as saved:
        arrays = {key: saved[key] for key in saved.files}
    if str(arrays.get("fingerprint")) != problem.fingerprint:
        raise InputError(f"{path}: samples of another mesh or spaces than this run's ({problem.fingerprint})")
    return arrays


def evaluate_samples(folder: RunFolder, samples: str | Path, report: str | Path | None = None) -> str:
    """Evaluate ``samples/<method>.npz`` of the run's methods into ``report`` (default ``RUN_DIR/report``).

    Returns the Markdown table.
    """
    study, problem = folder.build()
    samples = Path(samples)
    present = [m for m in folder.spec.methods if (samples / f"{m}.npz").is_file()]
    if not present:
        raise InputError(f"{samples}: no samples of this run's methods ({', '.join(folder.spec.methods)}); "
                         f"make them with pidm-fem sample {folder.path}")
    runs = {}
    for method in present:
        saved = load_samples(samples / f"{method}.npz", problem)
        trained = method if METHODS[method].trained else METHODS[method].needs[0]
        log = folder.runs / trained / "log.jsonl"
        runs[method] = SampledRun(saved["rows"], float(saved["train_seconds_per_step"]),
                                  float(saved["seconds_per_sample"]), log if log.is_file() else None)
    experiment = study.experiment(problem, present[0])
    summary, residuals = evaluate_runs(experiment, runs)
    n = min(len(run.rows) for run in runs.values())
    title = f"{Path(study.problem).name} on {Path(study.mesh).name}"
    info = {"run_folder": str(folder.path), "problem": study.problem, "mesh": study.mesh, "methods": present,
            "n_samples": n, "samples": str(samples)}
    return write_report(experiment, runs, summary, residuals, Path(report or folder.path / "report"), title, info)
