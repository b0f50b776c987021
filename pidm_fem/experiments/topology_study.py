"""The topology comparison: generated designs against SIMP's, on an in- and an out-of-distribution test set.

For each test problem (supports, load, volume fraction) the trained methods draw one
design in one sampling pass; SIMP's optimum of the same problem is the reference. A
further row refines PIDM's design by a few SIMP iterations started from it (the
generative-design workflow). Each design is judged thresholded by an independent solve
(:class:`~pidm_fem.physics.topology_metrics.DesignJudge`), and its (u, rho) by the
strong-form-equivalent equilibrium residual, beside the SIMP data's own (the floor).
Wall time per design: sampling (per design, in batches) against SIMP's run, timed here
on a subset of the test problems in this process.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from pidm_fem.errors import ComputationError
from pidm_fem.experiments.experiment import Experiment, data_file, problem_rows
from pidm_fem.physics.topology import TopologyDesign

#: suffix of the rows refined by SIMP from a method's designs
WARM_SUFFIX = "+simp"
#: the reference row: SIMP's optima (the test data)
SIMP = "simp"


@dataclass(frozen=True)
class TestSet:
    """One test set: its problem (split), the test problems' sample indices and SIMP's optima of them."""

    name: str
    problem: TopologyDesign
    indices: np.ndarray
    rows: np.ndarray


def test_sets(experiment: Experiment, workers: int = 1, progress: bool = True) -> list[TestSet]:
    """The in-distribution test rows of ``experiment`` and as many out-of-distribution ones (generated if missing)."""
    problem = experiment.problem
    data = experiment.config.data
    start, n_ood = data.n_train + data.n_val, data.n_test
    ood = problem.with_split("out_of_distribution")
    ood_rows = problem_rows(ood, data_file(experiment.data_dir, ood, n_ood), n_ood, workers, progress)
    return [TestSet("in_distribution", problem, np.arange(start, start + data.n_test), experiment.dataset().test),
            TestSet("out_of_distribution", ood, np.arange(n_ood), ood_rows)]


def time_simp(test: TestSet, n: int, progress: bool = True) -> dict[str, Any]:
    """SIMP rerun on the first ``n`` test problems of ``test``: seconds, iterations and the share at the cap.

    Raises
    ------
    ComputationError
        If a rerun's design differs from the stored one (the data are not reproducible).
    """
    seconds, iterations, capped = [], [], []
    generator = test.problem.generator
    for index, row in tqdm(list(zip(test.indices[:n], test.rows[:n])), desc=f"SIMP ({test.name})", unit="design",
                           disable=not progress, dynamic_ncols=True):
        started = time.perf_counter()
        record = generator.record(int(index))
        seconds.append(time.perf_counter() - started)
        if not np.allclose(record["row"], row, rtol=1e-9, atol=1e-12):
            raise ComputationError(f"SIMP's rerun of {test.name} problem {index} differs from its stored design")
        iterations.append(record["iterations"])
        capped.append(record["capped"])
    return {"timed": len(seconds), "seconds_per_design": float(np.mean(seconds)),
            "iterations_mean": float(np.mean(iterations)), "capped_share": float(np.mean(capped)),
            "max_iterations": generator.settings.max_iterations}


def refine_with_simp(test: TestSet, rows: np.ndarray, iterations: int, progress: bool = True) -> np.ndarray:
    """``rows`` whose densities seed ``iterations`` SIMP iterations of their problems; the results, re-solved."""
    from pidm_fem.topopt import optimise

    generator, layout = test.problem.generator, test.problem.layout
    refined = np.array(rows, dtype=np.float64)
    for row, index in tqdm(list(zip(refined, test.indices)), desc=f"SIMP from designs ({test.name})",
                           unit="design", disable=not progress, dynamic_ncols=True):
        drawn = generator.problem(int(index))
        elasticity = generator.elasticity(drawn)
        result = optimise(elasticity, generator.simp_settings(drawn, iterations), progress=False,
                          x0=row[layout.block("rho")])
        density = np.clip(result.density, 0.0, 1.0)
        row[layout.block("rho")] = density
        row[layout.block("u")] = elasticity.solve(density).dat.data_ro.ravel()
    return refined


def residual_per_design(problem: TopologyDesign, rows: np.ndarray) -> np.ndarray:
    """Area-weighted mean over the nodes of |M_L^{-1} R| (the nodal residual vector's length), per row."""
    residual = problem.torch_residual("strong")
    weights = problem.weights() / problem.weights().sum()
    with torch.no_grad():
        r = residual(torch.as_tensor(rows, dtype=torch.float64)).numpy()
    return np.linalg.norm(r.reshape(len(rows), -1, 2), axis=2) @ weights


def judge_rows(problem: TopologyDesign, rows: np.ndarray, reference_compliance: np.ndarray,
               progress: bool = True, label: str = "") -> dict[str, Any]:
    """Every metric of ``rows`` (means, medians, shares) and the per-design values."""
    judged = [problem.judge.judge(row) for row in tqdm(rows, desc=f"judging {label}", unit="design",
                                                       disable=not progress, dynamic_ncols=True)]
    compliance = np.array([entry["compliance"] for entry in judged])
    per_design = {
        "compliance": compliance.tolist(),
        "compliance_error": ((compliance - reference_compliance) / reference_compliance).tolist(),
        "volume_fraction_error": [entry["volume_fraction_error"] for entry in judged],
        "floating": [entry["floating"] for entry in judged],
        "load_disrespect": [entry["load_disrespect"] for entry in judged],
        "residual": residual_per_design(problem, rows).tolist(),
    }
    summary: dict[str, Any] = {}
    for key in ("compliance_error", "volume_fraction_error", "residual"):
        values = np.array(per_design[key])
        summary[f"{key}_mean"], summary[f"{key}_median"] = float(values.mean()), float(np.median(values))
    for key in ("floating", "load_disrespect"):
        summary[f"{key}_share"] = float(np.mean(per_design[key]))
    return {**summary, "per_design": per_design}


def compare(experiments: Mapping[str, Experiment], tests: Sequence[TestSet], warm_from: str | None,
            warm_iterations: int, simp_timed: int, progress: bool = True) -> tuple[dict, dict]:
    """Sample, refine and judge every method on every test set.

    Returns
    -------
    results
        ``{test set: {row: metrics}}`` with the rows ``simp`` (the test data), each method,
        and ``<warm_from>+simp``.
    designs
        ``{test set: {row: rows}}``, the designs themselves.
    """
    results: dict[str, dict] = {}
    designs: dict[str, dict] = {}
    for test in tests:
        problem = test.problem
        reference = np.array([problem.judge.judge(row)["compliance"] for row in test.rows])
        simp = time_simp(test, simp_timed, progress)
        rows = {SIMP: test.rows}
        seconds = {SIMP: simp["seconds_per_design"]}
        for name, experiment in experiments.items():
            started = time.perf_counter()
            rows[name] = experiment.sample(conditions=test.rows, seed=0)
            seconds[name] = (time.perf_counter() - started) / len(test.rows)
        if warm_from is not None:
            started = time.perf_counter()
            rows[warm_from + WARM_SUFFIX] = refine_with_simp(test, rows[warm_from], warm_iterations, progress)
            seconds[warm_from + WARM_SUFFIX] = seconds[warm_from] + (time.perf_counter() - started) / len(test.rows)
        results[test.name] = {}
        for name, generated in rows.items():
            entry = judge_rows(problem, generated, reference, progress, f"{name} ({test.name})")
            entry["seconds_per_design"] = seconds[name]
            if name == SIMP:
                entry["simp"] = simp
            results[test.name][name] = entry
        designs[test.name] = rows
    return results, designs


#: the columns of the Markdown tables: (key, heading, format)
COLUMNS = (
    ("compliance_error_mean", "compliance error, mean", "{:+.3g}"),
    ("compliance_error_median", "median", "{:+.3g}"),
    ("volume_fraction_error_mean", "VF error, mean", "{:.3f}"),
    ("volume_fraction_error_median", "median", "{:.3f}"),
    ("floating_share", "floating", "{:.0%}"),
    ("load_disrespect_share", "load missed", "{:.0%}"),
    ("residual_mean", "residual, mean", "{:.3g}"),
    ("residual_median", "median", "{:.3g}"),
    ("seconds_per_design", "s / design", "{:.3g}"),
)


def markdown_tables(results: Mapping[str, Mapping[str, Mapping]]) -> str:
    """One Markdown table per test set, a row per method."""
    parts = []
    for test, rows in results.items():
        parts.append(f"**{test.replace('_', '-')}** ({len(next(iter(rows.values()))['per_design']['residual'])} problems)\n")
        parts.append("| design | " + " | ".join(heading for _, heading, _ in COLUMNS) + " |")
        parts.append("|---" * (len(COLUMNS) + 1) + "|")
        for name, entry in rows.items():
            label = "SIMP (the data)" if name == SIMP else f"`{name}`"
            parts.append(f"| {label} | " + " | ".join(fmt.format(entry[key]) for key, _, fmt in COLUMNS) + " |")
        parts.append("")
    return "\n".join(parts)


def plot_designs(problem: TopologyDesign, tests: Sequence[TestSet], designs: Mapping[str, Mapping[str, np.ndarray]],
                 path: Path, n_problems: int = 3) -> None:
    """A grid of designs: per test problem, its condition and each row's density.

    The condition panel shows the solid design's von Mises stress (log scale), the
    supported nodes (triangles) and the load (arrow).
    """
    import firedrake as fd
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from firedrake.pyplot import tripcolor

    judge, layout = problem.judge, problem.layout
    nodal = fd.Function(problem.generator.P1)

    def show(ax, values, **options):
        nodal.dat.data[:] = values
        tripcolor(nodal, axes=ax, **options)

    names = list(next(iter(designs.values())))
    shown = [(test, k) for test in tests for k in range(min(n_problems, len(test.rows)))]
    fig, axes = plt.subplots(len(shown), len(names) + 1, figsize=(2.6 * (len(names) + 1), 1.5 * len(shown) + 0.4),
                             squeeze=False)
    for i, (test, k) in enumerate(shown):
        row = test.rows[k]
        fields = layout.split(row[None])
        ax = axes[i, 0]
        stress = fields["von_mises"][0]
        show(ax, np.log10(np.maximum(stress, 1e-4 * stress.max())), cmap="viridis")  # the stress spans decades
        support = fields["support"][0].reshape(-1, 2).max(axis=1) > 0.5
        ax.plot(judge.nodes[support, 0], judge.nodes[support, 1], "^", color="tab:red", ms=3)
        load = fields["load"][0].reshape(-1, 2)
        at = np.flatnonzero(np.abs(load).sum(axis=1) > 0)
        ax.quiver(judge.nodes[at, 0], judge.nodes[at, 1], load[at, 0], load[at, 1], color="tab:red",
                  scale=4, width=0.012)
        ax.set_ylabel(f"{test.name.replace('_', '-')}\nVF {fields['volfrac'][0, 0]:.2f}", fontsize=7)
        for j, name in enumerate(names):
            rho = designs[test.name][name][k][layout.block("rho")]
            show(axes[i, j + 1], np.clip(rho, 0, 1), cmap="gray_r", vmin=0, vmax=1)
        for ax in axes[i]:
            ax.set_aspect("equal")
            ax.set_xticks([])
            ax.set_yticks([])
    for j, title in enumerate(["condition"] + [("SIMP" if n == SIMP else n) for n in names]):
        axes[0, j].set_title(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_fields(problem: TopologyDesign, designs: Mapping[str, Mapping[str, np.ndarray]], folder: Path) -> None:
    """The first design of each row and test set, with its conditions, as a PVD/VTU file."""
    import firedrake as fd

    folder.mkdir(parents=True, exist_ok=True)
    for test, rows in designs.items():
        for name, generated in rows.items():
            functions = problem.layout.functions(generated[0])
            fd.VTKFile(str(folder / f"{test}_{name.replace('+', '_')}.pvd")).write(*functions.values())


def run(plan: Any, settings: Mapping[str, Any], *, train_only: bool = False, t_start: float | None = None) -> str | None:
    """Train the plan's methods, compare them with SIMP and write the report; its Markdown tables.

    ``settings`` is the mode's (``simp_timed``, ``warm_iterations``). None with
    ``train_only``.
    """
    from pidm_fem.atomic_files import atomic_directory, write_json
    from pidm_fem.experiments.comparison import seconds_per_step, train_all, train_in_parallel
    from pidm_fem.training import config_to_dict

    t_start = time.perf_counter() if t_start is None else t_start
    study, problem = plan.study, plan.problem
    first = study.experiment(problem, plan.methods[0])
    generating = not first.data_path().exists()
    started = time.perf_counter()
    first.dataset()
    data_seconds = time.perf_counter() - started if generating else None
    train_in_parallel(study, problem, plan.methods, plan.jobs)
    torch.set_num_threads(plan.threads)
    experiments = train_all(study, problem, plan.methods)
    if train_only:
        return None
    tests = test_sets(first, study.workers, study.progress)
    warm_from = next((m for m in plan.methods if m != "ddpm"), None)
    results, designs = compare(experiments, tests, warm_from, settings["warm_iterations"], settings["simp_timed"],
                               study.progress)
    table = markdown_tables(results)
    n_train = first.config.data.n_train
    info = {
        "mode": plan.mode, "mesh": study.mesh, "n_nodes": problem.generator.P1.dof_count,
        "n_cells": int(problem.judge.cells.shape[0]), "methods": plan.methods,
        "warm_start": {"from": warm_from, "iterations": settings["warm_iterations"]},
        "data": {"n_train": n_train, "generation_seconds": data_seconds, "workers": study.workers,
                 "samples_per_second": None if data_seconds is None else first.n_rows / data_seconds,
                 "settings": problem.settings()},
        "seconds_per_training_step": {m: seconds_per_step(e.run_dir / "log.jsonl") for m, e in experiments.items()},
        "config": config_to_dict(first.config), "sections": study.sections, "jobs": plan.jobs,
        "torch_threads": torch.get_num_threads(), "wall_seconds": time.perf_counter() - t_start,
    }
    title = f"topology on {Path(study.mesh).name} ({plan.mode} mode)"
    with atomic_directory(study.out / "report") as tmp:
        write_fields(problem, designs, tmp / "fields")
        plot_designs(problem, tests, designs, tmp / "designs.png")
        write_json(tmp / "results.json", {"results": results, "run": info})
        (tmp / "results.md").write_text(f"# {title}\n\n{table}\n")
    return table
