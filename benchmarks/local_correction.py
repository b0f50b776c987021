"""How far the equation's own local correction takes noised data: the residual after k Jacobi steps.

In the benchmark's elliptic coordinates the network generates the pressure's Neumann
Laplacian q = M_L^{-1} A p, and the strong-form residual reads, in the continuum,
``r = K q - grad K . grad p - f``: pointwise in q up to the smooth coupling through
grad p. The correction ``q <- q - r / K`` (a Jacobi step with the continuum diagonal
K) is therefore a local function of fields a denoiser sees at low noise. This tool
applies k such steps, K held fixed, to the benchmark's test data noised as the
training noises them at steps t (the same draw for every t) and scores each by the
benchmark's metrics (area-weighted mean |r|, relative state error). The first step's
residual is what a last denoising step that had learned the equation's local form
exactly would leave; the benchmark's trained denoisers leave the "bound" of
sampling_trajectory.py. Writes ``local_correction/local_correction.json`` and
``local_correction.png`` to the output folder (its ``data/`` is darcy_mesh's cache).

    python benchmarks/local_correction.py --quick --t 0 1 3 --steps 5
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
    parser.add_argument("--t", type=int, nargs="+", default=[0, 1, 3], help="noise levels (timesteps)")
    parser.add_argument("--steps", type=int, default=5, help="Jacobi steps after the noised data")
    return parser.parse_args(argv)


def jacobi_steps(experiment, x, steps: int) -> list:
    """``x`` (physical (B, 2, n), elliptic representation) and each of ``steps`` corrections ``q <- q - r / K``.

    The pressure's Laplacian q is corrected with K held fixed; each returned state is
    physical (B, 2, n).
    """
    import torch

    p, k = experiment.fields.channel("p"), experiment.fields.channel("K")
    laplacian = experiment.channel_maps()[p]
    q = laplacian.forward(x[:, p])
    states = [x]
    for _ in range(steps):
        with torch.no_grad():
            q = q - experiment.strong_residual(states[-1]) / x[:, k]
        state = x.clone()
        state[:, p] = laplacian.inverse(q)
        states.append(state)
    return states


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("PETSC_OPTIONS", "-options_left no")
    import torch
    from darcy_mesh import data_experiment, output_folder_and_mesh
    from sampling_trajectory import scores

    from pidm_fem.atomic_files import atomic_directory, write_json
    from pidm_fem.diffusion.schedule import gaussian_noise
    from pidm_fem.viz import plot_trajectories

    out, mesh = output_folder_and_mesh(args, "local_correction")
    experiment = data_experiment(args, mesh, out, "local_correction")
    T = experiment.schedule.T
    if any(not 0 <= t < T for t in args.t) or args.steps < 1:
        print(f"local_correction: error: --t must lie in [0, {T}) and --steps be at least 1", file=sys.stderr)
        return 2
    normalizer = experiment.fit_normalizer()
    test = experiment.fields.to_nodes(torch.as_tensor(experiment.dataset().test))
    x0 = normalizer.normalize(test)
    noise = gaussian_noise(x0.shape, dtype=x0.dtype, device=x0.device, generator=torch.Generator().manual_seed(3))
    curves = {}
    for t in args.t:
        x_t = experiment.schedule.q_sample(x0, torch.full((len(x0),), t, dtype=torch.int64), noise)
        states = jacobi_steps(experiment, normalizer.denormalize(x_t), args.steps)
        curves[t] = [scores(experiment, state) for state in states]
    summary = {"mesh": str(mesh), "n_test": len(test), "steps": args.steps, "corrections": curves}
    panels = {title: {f"t = {t}": (list(range(args.steps + 1)), [s[key] for s in curve], "-o")
                      for t, curve in curves.items()}
              for title, key in (("mean |r| (strong form)", "residual"), ("relative state error", "state_error"))}
    with atomic_directory(out / "local_correction") as tmp:
        write_json(tmp / "local_correction.json", summary)
        plot_trajectories(panels, tmp / "local_correction.png", "Jacobi steps q <- q - r / K", decreasing=False)
    print("| t | " + " | ".join(f"r after {k}" for k in range(args.steps + 1)) + " |")
    print("|---|" + "---|" * (args.steps + 1))
    for t, curve in curves.items():
        print(f"| {t} | " + " | ".join(f"{s['residual']:.3g}" for s in curve) + " |")
    print(f"outputs in {out / 'local_correction'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
