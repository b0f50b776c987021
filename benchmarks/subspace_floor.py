"""How many directions the Darcy data need: the residual of test fields confined to M modes per field.

Each field of the benchmark's test split is projected, in the network's units (the
pressure's Neumann Laplacian and log K, normalised), onto the mean and M leading
directions of a basis, orthonormal in the lumped-mass inner product, and scored by the
benchmark's metrics (area-weighted mean |r| of the strong-form residual, relative state
error). Two bases: the principal components of the training split (what
``--output-modes M`` of darcy_mesh confines a denoiser to) and the mesh's smoothest
modes (eigenvectors of the Neumann Laplacian, which need no data). A denoiser whose
estimates live in the subspace cannot produce samples below its floor. Writes
``subspace_floor/subspace_floor.json`` and ``subspace_floor/subspace_floor.png`` to
the output folder (its ``data/`` is darcy_mesh's cache, shared).

    python benchmarks/subspace_floor.py --quick --modes 32 64 128 256
    python benchmarks/subspace_floor.py --modes 128 256 512 1024
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
    parser.add_argument("--modes", type=int, nargs="+", default=[64, 128, 256, 512],
                        help="numbers of directions per field")
    return parser.parse_args(argv)


def laplacian_modes(experiment, modes: int):
    """The constant and the ``modes - 1`` smoothest Neumann Laplacian eigenvectors, lumped-mass orthonormal."""
    import numpy as np
    import scipy.linalg
    import torch

    forward, _ = experiment.problem.laplacian_maps
    mass = experiment.problem.lumped_mass()
    stiffness = forward * mass[:, None]
    _, vectors = scipy.linalg.eigh(0.5 * (stiffness + stiffness.T), np.diag(mass), subset_by_index=[0, modes - 1])
    return torch.from_numpy(vectors)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("PETSC_OPTIONS", "-options_left no")
    import torch
    from darcy_mesh import data_experiment, output_folder_and_mesh
    from sampling_trajectory import scores
    from tqdm.auto import tqdm

    from pidm_fem.atomic_files import atomic_directory, write_json
    from pidm_fem.diffusion import FieldSubspaces
    from pidm_fem.evaluation import zero_channel

    out, mesh = output_folder_and_mesh(args, "subspace_floor")
    experiment = data_experiment(args, mesh, out, "subspace_floor")
    n_nodes = experiment.fields.n_nodes
    if any(not 1 <= m <= n_nodes for m in args.modes):
        print(f"subspace_floor: error: --modes must lie in [1, {n_nodes}] (the mesh's nodes)", file=sys.stderr)
        return 2
    n_train = len(experiment.dataset().train)
    normalizer = experiment.fit_normalizer()
    train = normalizer.normalize(experiment.node_tensor(experiment.dataset().train)).double()
    test_physical = experiment.fields.to_nodes(torch.as_tensor(experiment.dataset().test))
    test = normalizer.normalize(test_physical)
    weights = experiment.problem.lumped_mass()
    means = [train[:, channel].mean(dim=0) for channel in range(2)]

    def floor(subspaces: FieldSubspaces) -> dict[str, float]:
        return scores(experiment, normalizer.denormalize(subspaces.project(test)))

    trivial = scores(experiment, zero_channel(test_physical, experiment.fields.channel("p")))
    results = {"principal_components": {}, "laplacian_modes": {}}
    smoothest = FieldSubspaces([(mean, laplacian_modes(experiment, max(args.modes))) for mean in means], weights)
    pca_modes = [m for m in args.modes if m <= n_train]
    principal = experiment.principal_subspaces(normalizer, max(pca_modes)) if pca_modes else None
    for m in tqdm(sorted(args.modes), desc="modes", unit="M"):
        if m <= n_train:
            results["principal_components"][m] = floor(principal.leading(m))
        results["laplacian_modes"][m] = floor(smoothest.leading(m))
    summary = {"mesh": str(mesh), "n_nodes": n_nodes, "n_train": n_train, "n_test": len(test),
               "trivial": trivial, **results}
    from pidm_fem.viz import plot_trajectories

    panels = {title: {basis.replace("_", " "): (list(curve), [curve[m][key] for m in curve], style)
                      for (basis, curve), style in zip(results.items(), ("-o", "--s")) if curve}
              for title, key in (("mean |r| (strong form)", "residual"), ("relative state error", "state_error"))}
    with atomic_directory(out / "subspace_floor") as tmp:
        write_json(tmp / "subspace_floor.json", summary)
        plot_trajectories(panels, tmp / "subspace_floor.png", "directions per field M",
                          {"mean |r| (strong form)": {"trivial p = 0": trivial["residual"]}}, decreasing=False)
    print("| M | principal components: r | r / trivial | state err. | Laplacian modes: r | r / trivial | "
          "state err. |\n|---|---|---|---|---|---|---|")
    for m in sorted(args.modes):
        cells = []
        for basis in results.values():
            entry = basis.get(m)
            cells += ["-"] * 3 if entry is None else [f"{entry['residual']:.3g}",
                                                      f"{entry['residual'] / trivial['residual']:.3g}",
                                                      f"{entry['state_error']:.3g}"]
        print(f"| {m} | " + " | ".join(cells) + " |")
    print(f"trivial p = 0: mean |r| {trivial['residual']:.3g}; outputs in {out / 'subspace_floor'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
