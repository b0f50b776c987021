"""What the benchmark's network can learn of the solution operator: the same network trained as a solver K -> p.

A generated pair (p, K) has a low strong-form residual only if the network draws,
at the nodal scale, the pressure of its own permeability. This tool asks how well
the benchmark's network (the mode's model and representation, optimiser, batch,
steps and EMA) does that when K is handed to it exactly: its K channel gets the
normalised log K of a training sample, its pressure channel zeros, its timestep 0,
and it is trained to output the sample's normalised pressure coordinates (the
pressure's Neumann Laplacian) by mean squared error, plus, with ``--c-residual C``,
C times the mean squared strong-form residual of its pressure with that K (the
physics term on a deterministic output, where no noise level weighs it). Its test
outputs are scored like the benchmark's samples (area-weighted mean |r|, relative
state error) beside the trivial field p = 0. A generative model has the harder task
(it also draws K, and must make p consistent with it along its trajectory), so a
residual this solver does not reach is out of reach of that network and budget.
Writes ``solver_bound/report/solver_bound.json`` and ``solver_bound.png`` beside it
(a test sample: the solved and the predicted pressure, and the prediction's |r|) to
the output folder, whose ``data/`` is darcy_mesh's cache; the runs are resumable in
``solver_bound/runs/c_residual_<C>``.

    python benchmarks/solver_bound.py --quick --steps 1500 --c-residual 0 1e-3
    python benchmarks/solver_bound.py --c-residual 0 1e-3
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from darcy_mesh import add_output_folder_arguments

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_output_folder_arguments(parser, "output folder, whose data/ is reused")
    parser.add_argument("--steps", type=int, default=None, help="override the mode's training steps")
    parser.add_argument("--width", type=int, default=None, help="override the network's width")
    parser.add_argument("--gradient-views", action="store_const", const=True, default=None,
                        help="the network also sees the recovered nodal gradient of every field")
    # dest "weights": base_config reads a "c_residual" attribute as the diffusion model's weight
    parser.add_argument("--c-residual", type=float, nargs="+", default=[0.0], dest="weights",
                        help="weights of the residual term, one solver each (0: mean squared error alone)")
    parser.add_argument("--device", default="cpu", help="device of the network (the FEM stays on the CPU)")
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
    from darcy_mesh import MODES, base_config
    from sampling_trajectory import scores

    from pidm_fem.atomic_files import atomic_directory, write_json
    from pidm_fem.evaluation import zero_channel
    from pidm_fem.experiments import DarcyExperiment
    from pidm_fem.mesh import MeshError, load_mesh
    from pidm_fem.mesh.builtin import MESH_DIR
    from pidm_fem.training import Trainer, config_from_dict, load_checkpoint
    from pidm_fem.training.checkpoint import LAST

    if any(c < 0 for c in args.weights):
        print("solver_bound: error: --c-residual weights must be non-negative", file=sys.stderr)
        return 2
    mode = MODES[args.mode]
    out = args.out or Path(f"outputs/darcy_mesh_{args.mode}")
    mesh = args.mesh or MESH_DIR / mode["mesh"]
    try:
        load_mesh(mesh)
    except MeshError as err:
        print(f"solver_bound: error: {err}", file=sys.stderr)
        return 2
    sections = base_config(args)
    sections["diffusion"] = {**sections["diffusion"], "method": "ddpm", "prediction": "x0"}
    config = config_from_dict(sections, source="<solver_bound>")
    folder = out / "solver_bound"
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
        trainer = Trainer(experiment.build_model(normalizer), solver.loss(c_residual),
                          {"x0": experiment.node_tensor(splits.train)}, config, run_dir,
                          mesh_fingerprint=experiment.fingerprint)
        summary = trainer.train()
        model = experiment.build_model(normalizer)
        model.load_state_dict(load_checkpoint(run_dir / LAST, experiment.fingerprint).ema["shadow"])
        model = model.to(torch.device(args.device)).eval()
        with torch.no_grad():
            estimate = normalizer.denormalize(solver.predict(model, normalizer.normalize(test)))
        predictions[name] = estimate.cpu().double()
        results[name] = {"c_residual": c_residual, "seconds_per_step": summary.seconds_per_step,
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
        write_json(tmp / "solver_bound.json", summary)
        plot_fields(panels, tmp / "solver_bound.png", titles)
    print("| solver | mean abs r | r / trivial | state err. | s / step |\n|---|---|---|---|---|")
    for name, entry in results.items():
        print(f"| {name} | {entry['residual']:.3g} | {entry['residual'] / trivial['residual']:.3g} | "
              f"{entry['state_error']:.3g} | {entry['seconds_per_step']:.3g} |")
    print(f"trivial p = 0: mean |r| {trivial['residual']:.3g}; outputs in {folder / 'report'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
