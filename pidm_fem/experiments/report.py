"""The evaluation of a comparison and its outputs: results.json, results.md, figures and VTU fields."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pidm_fem.atomic_files import atomic_directory, write_json
from pidm_fem.evaluation import evaluate_methods, markdown_table
from pidm_fem.experiments.comparison import SampledRun
from pidm_fem.experiments.experiment import Experiment
from pidm_fem.experiments.export import vertex_function

#: samples of each source in the samples figure
FIGURE_SAMPLES = 2
#: percentiles of the test data that bound each field's colour scale
COLOUR_PERCENTILES = (1, 99)


def evaluate_runs(experiment: Experiment, runs: Mapping[str, SampledRun]) -> tuple[dict, dict[str, np.ndarray]]:
    """Metrics of every row's samples against the experiment's test and train splits.

    Returns
    -------
    summary : dict
        :func:`~pidm_fem.evaluation.evaluate_methods` results, with each row's cost.
    residuals : dict
        ``{row: strong-form nodal residual (n_samples, m)}`` of the samples.
    """
    def float64_nodes(rows: np.ndarray) -> torch.Tensor:  # the physics is evaluated in float64
        return experiment.fields.to_nodes(torch.as_tensor(rows, dtype=torch.float64))

    problem = experiment.problem
    splits = experiment.dataset()
    nodes = {name: float64_nodes(run.rows) for name, run in runs.items()}
    state = experiment.fields.channels_of(problem.state_fields)
    summary = evaluate_methods(
        nodes, float64_nodes(splits.test), float64_nodes(splits.train), experiment.strong_residual,
        weights=problem.weights(), channel_names=experiment.fields.names, trivial_channel=state[0] if state else 0,
        state_solver=experiment.solve_state if problem.has_state_solve() else None, regions=problem.regions() or None,
    )
    for name, run in runs.items():
        summary["methods"][name]["cost"] = {"train_seconds_per_step": run.seconds_per_step,
                                            "sample_seconds_per_sample": run.sample_seconds_per_sample}
    with torch.no_grad():
        residuals = {name: experiment.strong_residual(x).numpy() for name, x in nodes.items()}
    return summary, residuals


def _residual_function(experiment: Experiment, values: np.ndarray, name: str):
    """A Function on the first field's nodes holding one sample's nodal residual ``values`` (node-major)."""
    return vertex_function(experiment.problem.layout.mesh, values.reshape(experiment.fields.n_nodes, -1), name)


def write_fields(experiment: Experiment, runs: Mapping[str, SampledRun], residuals: Mapping, folder: Path) -> None:
    """The first sample of each row (its fields and |r|) as a PVD/VTU series per row."""
    import firedrake as fd

    layout = experiment.problem.layout
    for name, run in runs.items():
        functions = layout.functions(run.rows[0])
        r = _residual_function(experiment, np.abs(residuals[name][0]), "abs_residual")
        fd.VTKFile(str(folder / f"{name.replace('+', '_')}.pvd")).write(*functions.values(), r)


def field_functions(experiment: Experiment, row: np.ndarray) -> dict:
    """One row's generated channels as scalar Functions on the first field's nodes, by channel name."""
    x = experiment.fields.to_nodes(torch.as_tensor(row[None], dtype=torch.float64))[0].numpy()
    return {name: _residual_function(experiment, x[c], name) for c, name in enumerate(experiment.fields.names)}


def write_figures(experiment: Experiment, runs: Mapping[str, SampledRun], residuals: Mapping, summary: dict,
                  folder: Path) -> None:
    """The samples grid, the residual maps, the residual histogram and the training curves."""
    from pidm_fem.viz import plot_fields, plot_histograms, plot_sample_grid, plot_training_curves

    test = experiment.dataset().test
    sources = {"test data": test, **{name: run.rows for name, run in runs.items()}}
    columns = {name: [field_functions(experiment, row) for row in rows[:FIGURE_SAMPLES]]
               for name, rows in sources.items()}
    channels = experiment.fields.to_nodes(torch.as_tensor(test, dtype=torch.float64)).numpy()
    limits = {name: tuple(float(v) for v in np.percentile(channels[:, c], COLOUR_PERCENTILES))
              for c, name in enumerate(experiment.fields.names)}
    plot_sample_grid(columns, folder / "samples.png", limits)

    maps, titles = [], []
    for name in runs:
        r = _residual_function(experiment, np.log10(np.abs(residuals[name][0]) + 1e-16), name)
        maps.append(r)
        titles.append(f"{name}: log10 |r|")
    per_row = 4
    grid = [maps[i:i + per_row] for i in range(0, len(maps), per_row)]
    grid_titles = [titles[i:i + per_row] for i in range(0, len(maps), per_row)]
    grid[-1] += [None] * (per_row - len(grid[-1]))
    grid_titles[-1] += [""] * (per_row - len(grid_titles[-1]))
    plot_fields(grid, folder / "residual_maps.png", grid_titles)

    per_sample = {name: np.asarray(summary["methods"][name]["residual"]["per_sample"]) for name in runs}
    references = {"trivial field": summary["trivial"]["residual"]["mean"]}
    xlabel = f"per-sample mean |r| (the data's own: {summary['data']['residual']['mean']:.1e})"
    plot_histograms(per_sample, folder / "residual_histogram.png", xlabel, references)
    plot_training_curves({name: run.log for name, run in runs.items() if run.log is not None and "+" not in name},
                         folder / "training_curves.png")


def write_report(experiment: Experiment, runs: Mapping[str, SampledRun], summary: dict,
                 residuals: Mapping, folder: Path, title: str, run_info: dict[str, Any]) -> str:
    """Write results.json, results.md, the figures and fields/*.pvd into ``folder`` (atomically); the table.

    ``run_info`` is stored as ``results.json``'s ``run`` entry.
    """
    table = markdown_table(summary)
    with atomic_directory(folder) as tmp:
        (tmp / "fields").mkdir()
        write_fields(experiment, runs, residuals, tmp / "fields")
        write_figures(experiment, runs, residuals, summary, tmp)
        summary["run"] = run_info
        write_json(tmp / "results.json", summary)
        (tmp / "results.md").write_text(f"# {title}\n\n{table}\n")
    return table
