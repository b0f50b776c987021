"""The benchmark's network trained as a supervised surrogate solver K -> p: what it reaches when K is given.

A generated pair (p, K) has a low strong-form residual only if the network draws,
at the nodal scale, the pressure of its own permeability. This tool measures how
well the benchmark's network (the mode's model and representation, optimiser,
batch, steps and EMA) learns that map when K is handed to it exactly: its K channel
gets the normalised log K of a training sample, its pressure channel zeros, its
timestep 0, and it is trained to output the sample's normalised pressure
coordinates (the pressure's Neumann Laplacian) by mean squared error, plus, with
``--c-residual C``, C times the mean squared strong-form residual of its pressure
with that K (a physics-informed surrogate). Its test outputs are scored like the
benchmark's samples (area-weighted mean |r|, relative state error) beside the
trivial field p = 0. It is a reference point, not a bound: the surrogate maps K to
p in one pass, while a diffusion model's low-noise steps refine an estimate of p
they are given, which can do better (or worse).
Writes ``surrogate_solver/report/surrogate_solver.json`` and ``surrogate_solver.png``
beside it (a test sample: the solved and the predicted pressure, and the
prediction's |r|) to the output folder, whose ``data/`` is darcy_mesh's cache; the
runs are resumable in ``surrogate_solver/runs/c_residual_<C>``.

    python benchmarks/surrogate_solver.py --quick --steps 1500 --c-residual 0 1e-3
    python benchmarks/surrogate_solver.py --c-residual 0 1e-3
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from darcy_mesh import add_model_arguments, add_output_folder_arguments

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_output_folder_arguments(parser, "output folder, whose data/ is reused")
    add_model_arguments(parser)
    # dest "weights": base_config reads a "c_residual" attribute as the diffusion model's weight
    parser.add_argument("--c-residual", type=float, nargs="+", default=[0.0], dest="weights",
                        help="weights of the residual term, one solver each (0: mean squared error alone)")
    return parser.parse_args(argv)


class PressureSolver:
    """The benchmark's denoiser used as a deterministic map from K to the pressure coordinates.

    Parameters
    ----------
    experiment
        The :class:`~pidm_fem.experiments.DarcyExperiment` of the data and the model.
    normalizer
        The normaliser of its training split (the network's units).
    """

    def __init__(self, experiment, normalizer):
        self.experiment, self.normalizer = experiment, normalizer
        self.p_channel = experiment.fields.channel("p")

    def predict(self, model, x0):
        """The network's clean estimate (B, 2, n) for normalised fields x0 whose pressure it must supply.

        The pressure channel of the estimate is the network's; the K channel is x0's own.
        """
        import torch

        given = x0.clone()
        given[:, self.p_channel] = 0.0
        estimate = model(given, torch.zeros(len(x0), dtype=torch.long, device=x0.device))
        keep = torch.zeros_like(x0)
        keep[:, self.p_channel] = 1.0
        return keep * estimate + (1 - keep) * x0

    def loss(self, c_residual: float):
        """The trainer's loss: the pressure's mean squared error (+ c_residual times the mean squared residual)."""
        import torch

        def loss_fn(model, batch, generator):
            x0 = self.normalizer.normalize(batch["x0"])
            estimate = self.predict(model, x0)
            data = (estimate - x0)[:, self.p_channel].pow(2).mean()
            components = {"data": float(data)}
            if not c_residual:
                return data, components
            physical = self.normalizer.denormalize(estimate).to(torch.float64)
            residual = self.experiment.residual(physical).pow(2).mean()
            components["residual"] = float(residual)
            return data + c_residual * residual.to(data.dtype), components

        return loss_fn


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("PETSC_OPTIONS", "-options_left no")
    import torch
    from darcy_mesh import base_config, output_folder_and_mesh
    from darcy_methods import seconds_per_step
    from sampling_trajectory import scores

    from pidm_fem.atomic_files import atomic_directory, write_json
    from pidm_fem.evaluation import zero_channel
    from pidm_fem.experiments import DarcyExperiment
    from pidm_fem.experiments.darcy import NORMALIZER_KEY
    from pidm_fem.training import Trainer, config_from_dict
    from pidm_fem.training.checkpoint import LAST
    from pidm_fem.training.trainer import LOG

    if any(c < 0 for c in args.weights):
        print("surrogate_solver: error: --c-residual weights must be non-negative", file=sys.stderr)
        return 2
    out, mesh = output_folder_and_mesh(args, "surrogate_solver")
    sections = base_config(args)
    sections["diffusion"] = {**sections["diffusion"], "method": "ddpm", "prediction": "x0"}
    config = config_from_dict(sections, source="<surrogate_solver>")
    folder = out / "surrogate_solver"
    experiment = DarcyExperiment(config, mesh, data_dir=out / "data", run_dir=folder)
    normalizer = experiment.fit_normalizer()
    solver = PressureSolver(experiment, normalizer)
    splits = experiment.dataset()
    test = experiment.node_tensor(splits.test).to(torch.device(args.device))
    test_physical = experiment.fields.to_nodes(torch.as_tensor(splits.test))

    results, predictions = {}, {}
    for c_residual in args.weights:
        name = f"c_residual_{c_residual:g}"
        run_dir = folder / "runs" / name
        Trainer(experiment.build_model(normalizer), solver.loss(c_residual),
                {"x0": experiment.node_tensor(splits.train)}, config, run_dir,
                mesh_fingerprint=experiment.fingerprint, extra={NORMALIZER_KEY: normalizer.state_dict()}).train()
        model, _ = experiment.load_denoiser(run_dir / LAST)
        with torch.no_grad():
            estimate = normalizer.denormalize(solver.predict(model, normalizer.normalize(test)))
        predictions[name] = estimate.cpu().double()
        results[name] = {"c_residual": c_residual, "seconds_per_step": seconds_per_step(run_dir / LOG),
                         **scores(experiment, predictions[name])}
    trivial = scores(experiment, zero_channel(test_physical, solver.p_channel))
    summary = {"mesh": str(mesh), "n_nodes": experiment.fields.n_nodes, "n_test": len(test),
               "config": sections, "trivial": trivial, "solvers": results}

    import firedrake as fd

    from pidm_fem.viz import plot_fields

    layout, V = experiment.generator.layout, experiment.problem.V
    panels, titles = [], []
    for name, estimate in predictions.items():
        rows = experiment.remove_pressure_mean(experiment.fields.to_rows(estimate[:1]).numpy())
        residual = fd.Function(V)
        with torch.no_grad():
            nodes = experiment.fields.to_nodes(torch.from_numpy(rows))
            residual.dat.data[:] = experiment.strong_residual(nodes)[0].abs().numpy()
        panels.append([layout.functions(splits.test[0])["p"], layout.functions(rows[0])["p"], residual])
        titles.append(["solved p (test #0)", f"{name}: predicted p", f"{name}: |r|"])
    with atomic_directory(folder / "report") as tmp:
        write_json(tmp / "surrogate_solver.json", summary)
        plot_fields(panels, tmp / "surrogate_solver.png", titles)
    print("| solver | mean abs r | r / trivial | state err. | s / step |\n|---|---|---|---|---|")
    for name, entry in results.items():
        print(f"| {name} | {entry['residual']:.3g} | {entry['residual'] / trivial['residual']:.3g} | "
              f"{entry['state_error']:.3g} | {entry['seconds_per_step']:.3g} |")
    print(f"trivial p = 0: mean |r| {trivial['residual']:.3g}; outputs in {folder / 'report'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
