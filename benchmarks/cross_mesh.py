"""Models across meshes: a run's mesh-denoiser models sampled on other meshes, against data made there.

Samples each method of a run folder on the run's own mesh and on every ``--mesh``
(as ``pidm-fem sample RUN --mesh M`` does), evaluates each set against test data
generated on that mesh (the data are kept in ``RUN/meshes/<mesh>/data``), and writes
``results.json``, ``results.md`` and ``samples.png`` (test data and a sample of each
method on each mesh) to ``--out``, with each mesh's samples and full report in
``--out/<mesh>/``. The run's own report is left as it is.

    python benchmarks/cross_mesh.py [--run outputs/darcy_mesh_default]
        [--mesh meshes/unit_square_r3.msh meshes/square_with_hole.msh]
        [--methods ddpm pidm_mean ddpm_k_fem_p] [--n 64] [--option source=paper] [--out outputs/cross_mesh]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

MESHES = ("meshes/unit_square_r3.msh", "meshes/square_with_hole.msh")
#: metrics of the table: (column, path in a method's evaluation entry)
COLUMNS = (
    ("mean abs r", ("residual", "mean")),
    ("r / trivial", ("ratios", "residual_to_trivial")),
    ("state error", ("state_error", "mean")),
    ("energy dist.", ("fidelity", "energy_distance")),
)


def _value(entry: dict, path: tuple[str, ...]) -> float:
    for key in path:
        entry = (entry or {}).get(key)
    return float("nan") if entry is None else float(entry)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=Path("outputs/darcy_mesh_default"),
                        help="run folder (a benchmark's output folder or one of pidm-fem train)")
    parser.add_argument("--mesh", type=Path, nargs="+", default=[Path(m) for m in MESHES], help="other meshes")
    parser.add_argument("--methods", nargs="+", default=["ddpm", "pidm_mean", "ddpm_k_fem_p"])
    parser.add_argument("--n", type=int, default=64, help="samples per method and mesh")
    parser.add_argument("--option", action="append", default=["source=paper"], metavar="KEY=VALUE",
                        help="problem settings on the other meshes (default: the paper's Darcy source)")
    parser.add_argument("--out", type=Path, default=Path("outputs/cross_mesh"))
    args = parser.parse_args(argv)
    os.environ.setdefault("PETSC_OPTIONS", "-options_left no")

    from pidm_fem.atomic_files import write_json
    from pidm_fem.cli.arguments import problem_option
    from pidm_fem.experiments.report import field_functions
    from pidm_fem.experiments.run_folder import RunFolder, methods_or_all
    from pidm_fem.experiments.run_samples import evaluate_samples, load_samples, sample_methods
    from pidm_fem.viz import plot_fields

    home = RunFolder.open(args.run)
    methods = methods_or_all(home, args.methods)
    options = dict(problem_option(text) for text in args.option)
    folders = {Path(home.spec.mesh).name + " (trained on)": home,
               **{mesh.name: home.on_mesh(mesh, options) for mesh in args.mesh}}
    results, grid, titles = {}, [], []
    for label, folder in folders.items():
        print(f"== {label}")
        there = args.out / Path(folder.spec.mesh).stem
        sample_methods(folder, methods, args.n, there / "samples")
        print(evaluate_samples(folder, there / "samples", there / "report"))
        summary = json.loads((there / "report" / "results.json").read_text())
        study, problem = folder.build(progress=False)
        experiment = study.experiment(problem, methods[0])
        results[label] = {
            "mesh": folder.spec.mesh, "n_vertices": experiment.fields.n_nodes,
            "data": {column: _value(summary["data"], path) for column, path in COLUMNS},
            "methods": {m: {column: _value(summary["methods"][m], path) for column, path in COLUMNS}
                        | {f"{c} spread": summary["methods"][m]["ratios"]["within_std_to_test"][c]
                           for c in experiment.fields.names}
                        for m in methods},
        }
        rows = {"test data": experiment.dataset().test[0],
                **{m: load_samples(there / "samples" / f"{m}.npz", problem)["rows"][0] for m in methods}}
        fields = {source: field_functions(experiment, row) for source, row in rows.items()}
        grid.append([fields[source][c] for source in rows for c in experiment.fields.names])
        titles.append([f"{label.split(' ')[0]}: {source} {c}" for source in rows for c in experiment.fields.names])
    plot_fields(grid, args.out / "samples.png", titles)
    write_json(args.out / "results.json", {"run": str(home.path), "methods": methods, "n_samples": args.n,
                                           "options": options, "meshes": results})
    names = list(results[next(iter(results))]["methods"][methods[0]])
    lines = ["| mesh | vertices | method | " + " | ".join(names) + " |", "|---|---|---|" + "---|" * len(names)]
    for label, entry in results.items():
        lines.append(f"| {label} | {entry['n_vertices']} | data (test) | "
                     + " | ".join(f"{entry['data'][n]:.3g}" if n in entry["data"] else "" for n in names) + " |")
        for m in methods:
            lines.append(f"| | | {m} | " + " | ".join(f"{entry['methods'][m][n]:.3g}" for n in names) + " |")
    table = "\n".join(lines) + "\n"
    (args.out / "results.md").write_text(f"# {home.spec.problem} models of {home.path} on other meshes\n\n{table}")
    print(table)
    print(f"results: {args.out / 'results.json'}, {args.out / 'results.md'}, {args.out / 'samples.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
