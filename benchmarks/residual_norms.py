"""Which fields each residual norm prefers: the data, wrong pressures, or the trivial field p = 0.

On the test split of a darcy_mesh mode's dataset (generated if missing, into the
same folder as darcy_mesh.py uses), the mean squared residual of each kind the
physics terms can see (``diffusion.residual``: strong, preconditioned) for

* the test samples themselves (zero up to round-off),
* test pressures paired with the previous test sample's K (a realistic wrong pressure),
* the trivial field p = 0 with the test K,

and the ratio of the last two: how much the norm rewards collapsing the pressure.
Writes ``residual_norms.json`` to --out.

    python benchmarks/residual_norms.py --quick
    python benchmarks/residual_norms.py          # the default mesh
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

KINDS = ("strong", "preconditioned")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_const", dest="mode", const="quick", default="default",
                        help="the quick mode's mesh and dataset")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder of the dataset and the result (default: outputs/darcy_mesh_<mode>)")
    parser.add_argument("--workers", type=int, default=1, help="processes generating a missing dataset")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("PETSC_OPTIONS", "-options_left no")
    import torch
    from darcy_mesh import MODES, base_config
    from darcy_mesh import parse_args as parse_benchmark_args
    from darcy_methods import method_config

    from pidm_fem.atomic_files import write_json
    from pidm_fem.evaluation import mismatched_pairs, zero_channel
    from pidm_fem.experiments import DarcyExperiment
    from pidm_fem.mesh.builtin import MESH_DIR

    out = args.out or Path(f"outputs/darcy_mesh_{args.mode}")
    base = base_config(parse_benchmark_args(["--quick"] if args.mode == "quick" else []))
    base["diffusion"]["residual"] = "strong"
    experiment = DarcyExperiment(method_config(base, "pidm_mean"), MESH_DIR / MODES[args.mode]["mesh"],
                                 data_dir=out / "data", run_dir=out / "runs" / "unused",
                                 workers=args.workers, progress=True)
    test = experiment.fields.to_nodes(torch.as_tensor(experiment.dataset().test, dtype=torch.float64))
    pressure = experiment.fields.channel("p")
    cases = {"data": test, "mismatched": mismatched_pairs(test, pressure), "p=0": zero_channel(test, pressure)}
    results = {}
    for kind in KINDS:
        residual = experiment.problem.torch_residual(kind)
        with torch.no_grad():
            values = {name: float(residual(experiment.fields.to_rows(x)).pow(2).mean()) for name, x in cases.items()}
        values["reward_for_collapse"] = values["mismatched"] / values["p=0"]
        results[kind] = values
    path = write_json(out / "residual_norms.json", {"mode": args.mode, "mean_squared_residual": results})
    print("| residual | data | test p, another K | p = 0 | reward for collapse |\n|---|---|---|---|---|")
    for kind, v in results.items():
        print(f"| {kind} | {v['data']:.3g} | {v['mismatched']:.3g} | {v['p=0']:.3g} | {v['reward_for_collapse']:.3g} |")
    print(f"results in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
