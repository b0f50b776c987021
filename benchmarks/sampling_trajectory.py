"""Where a sample's residual comes from: the denoiser's estimates along its sampling trajectory.

For each trained run of a darcy_mesh output folder (ddpm, the PIDM runs and the
low-noise experts, which sample as their pair of denoisers), at
every --every-th step of the run's own sampler (the benchmark's samples, seed 1):

* the clean estimate x0_hat along the sampling trajectory,
* the clean estimate of the noised test data at the same noise level (the inputs the
  training saw), and the noised test data itself,

each scored by the mean |r| of the strong-form residual and the relative state error
(the pressure against the one solved for the field's own K). Where the two estimates
part, the trajectory has left the inputs the denoiser was trained on; the noised-data
estimate at the last step bounds what any sample of this denoiser can reach.
Writes ``trajectory/trajectory.json`` and ``trajectory/trajectory.png`` to the folder.

    python benchmarks/sampling_trajectory.py --quick --out outputs/darcy_mesh_quick
    python benchmarks/sampling_trajectory.py --out outputs/darcy_mesh_default
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

#: trained methods whose denoiser takes no condition channels (physics-guided needs its guidance)
UNCONDITIONED = ("ddpm", "pidm_mean", "pidm_sample", "pidm_trajectory", "ddpm_expert", "pidm_trajectory_expert",
                 "pidm_trajectory_expert_on_ddpm_k", "pidm_trajectory_expert_on_ddpm_k_high",
                 "pidm_trajectory_expert_given_ddpm_k")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from darcy_mesh import add_output_folder_arguments, add_sampler_arguments

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_output_folder_arguments(parser, "darcy_mesh output folder with runs/<method>/last.pt")
    parser.add_argument("--methods", nargs="+", choices=UNCONDITIONED, default=None,
                        help="runs to trace (default: every one of them the folder holds)")
    parser.add_argument("--n-samples", type=int, default=32, help="samples and test fields per method")
    parser.add_argument("--every", type=int, default=5, help="score every k-th sampler step (and the last)")
    add_sampler_arguments(parser)
    return parser.parse_args(argv)


def scores(experiment, x) -> dict[str, float]:
    """Mean |r| and mean relative state error of physical fields (B, 2, n), pressure gauge removed."""
    import torch

    from pidm_fem.evaluation import mean_abs_residual, relative_state_error

    rows = experiment.remove_pressure_mean(experiment.fields.to_rows(x.detach().cpu().double()).numpy())
    nodes = experiment.fields.to_nodes(torch.from_numpy(rows))
    weights = experiment.problem.lumped_mass()
    residual = mean_abs_residual(experiment.strong_residual, nodes, weights)
    state = relative_state_error(experiment.solve_state, nodes, experiment.fields.channel("p"), weights)
    return {"residual": float(np.mean(residual)), "state_error": float(np.nanmean(state))}


def trace(experiment, n_samples: int, every: int) -> dict[str, dict[int, dict[str, float]]]:
    """The scores of the sampling estimates, the noised-data estimates and the noised data, per timestep."""
    import torch

    from pidm_fem.diffusion import SubspaceDenoiser, noised_data_estimates

    recorded: dict[int, list] = {}
    experiment.sample(n_samples, seed=1, on_step=lambda t, x0_hat: recorded.setdefault(t, []).append(x0_hat))
    steps = sorted(recorded, reverse=True)
    chosen = sorted(set(steps[::every]) | {steps[-1]}, reverse=True)
    model, normalizer = experiment.load_denoiser()
    device = next(model.parameters()).device
    test = experiment.node_tensor(experiment.dataset().test[:n_samples]).to(device)
    noised = noised_data_estimates(model, experiment.schedule, normalizer, test, chosen,
                                   generator=torch.Generator(device).manual_seed(3))
    curves = {
        "sampling_estimate": {t: scores(experiment, torch.cat(recorded[t])) for t in chosen},
        "noised_data_estimate": {t: scores(experiment, noised[t][1]) for t in chosen},
        "noised_data": {t: scores(experiment, noised[t][0]) for t in chosen},
    }
    if isinstance(model, SubspaceDenoiser):  # what a perfect model confined to the subspace reaches
        projected = normalizer.denormalize(model.subspaces.project(normalizer.normalize(test)))
        curves["subspace_floor"] = scores(experiment, projected)
    return curves


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("PETSC_OPTIONS", "-options_left no")
    import dataclasses

    import torch
    from darcy_mesh import MODES, SAMPLER_OPTIONS

    from pidm_fem.atomic_files import atomic_directory, write_json
    from pidm_fem.evaluation import zero_channel
    from pidm_fem.experiments import DarcyExperiment
    from pidm_fem.mesh.builtin import MESH_DIR
    from pidm_fem.training import CheckpointError, ConfigError, config_from_dict, load_checkpoint
    from pidm_fem.training.checkpoint import LAST
    from pidm_fem.viz import plot_trajectories

    out = args.out or Path(f"outputs/darcy_mesh_{args.mode}")
    mesh = args.mesh or MESH_DIR / MODES[args.mode]["mesh"]
    if args.n_samples < 1 or args.every < 1:
        print("sampling_trajectory: error: --n-samples and --every must be positive", file=sys.stderr)
        return 2
    methods = args.methods or [m for m in UNCONDITIONED if (out / "runs" / m / LAST).is_file()]
    if not methods:
        print(f"sampling_trajectory: error: {out / 'runs'}: no trained run of {', '.join(UNCONDITIONED)}",
              file=sys.stderr)
        return 2
    results, experiment = {}, None
    for method in methods:
        run_dir = out / "runs" / method
        try:
            config = config_from_dict(load_checkpoint(run_dir / LAST).config, source=str(run_dir / LAST))
            sampling = {key: getattr(args, key) for key in SAMPLER_OPTIONS if getattr(args, key) is not None}
            config = dataclasses.replace(config, sampling=dataclasses.replace(config.sampling, **sampling))
        except (CheckpointError, ConfigError) as err:
            print(f"sampling_trajectory: error: {err}", file=sys.stderr)
            return 2
        experiment = DarcyExperiment(config, mesh, data_dir=out / "data", run_dir=run_dir, progress=False)
        print(f"tracing {method} ({args.n_samples} samples)", flush=True)
        results[method] = trace(experiment, args.n_samples, args.every)
    test = experiment.fields.to_nodes(torch.as_tensor(experiment.dataset().test[:args.n_samples]))
    trivial = scores(experiment, zero_channel(test, experiment.fields.channel("p")))
    summary = {"mesh": str(mesh), "n_samples": args.n_samples, "trivial": trivial, "methods": results}

    panels = {"mean |r| (strong form)": {}, "relative state error": {}}
    for method, curves in results.items():
        for curve, style in (("sampling_estimate", "-o"), ("noised_data_estimate", "--s")):
            times = list(curves[curve])
            for title, key in zip(panels, ("residual", "state_error")):
                panels[title][f"{method}: {curve.replace('_', ' ')}"] = (
                    times, [curves[curve][t][key] for t in times], style)
    noised = next(iter(results.values()))["noised_data"]
    for title, key in zip(panels, ("residual", "state_error")):
        panels[title]["noised test data"] = (list(noised), [noised[t][key] for t in noised], ":k")
    references = {"mean |r| (strong form)": {"trivial p = 0": trivial["residual"]}}
    with atomic_directory(out / "trajectory") as tmp:
        write_json(tmp / "trajectory.json", summary)
        plot_trajectories(panels, tmp / "trajectory.png", "timestep t of the sampler", references)
    print("| method | t | r: sampling x0_hat | r: noised-data x0_hat | r: noised data | state: sampling | "
          "state: noised data x0_hat |\n|---|---|---|---|---|---|---|")
    for method, curves in results.items():
        for t in curves["sampling_estimate"]:
            s, d, n = (curves[c][t] for c in ("sampling_estimate", "noised_data_estimate", "noised_data"))
            print(f"| {method} | {t} | {s['residual']:.3g} | {d['residual']:.3g} | {n['residual']:.3g} | "
                  f"{s['state_error']:.3g} | {d['state_error']:.3g} |")
    for method, curves in results.items():
        if "subspace_floor" in curves:
            floor = curves["subspace_floor"]
            print(f"{method}: the test data projected on its output subspace: mean |r| {floor['residual']:.3g}, "
                  f"state error {floor['state_error']:.3g}")
    print(f"trivial p = 0: mean |r| {trivial['residual']:.3g}; outputs in {out / 'trajectory'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
