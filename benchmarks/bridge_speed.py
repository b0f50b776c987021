"""Cost of the batched FEM residual against a loop of Firedrake's fem_operator and a network.

For a batch of B Darcy samples on a mesh (default: the embedded unit square),
measured side by side in one run, median of --repeat timings:

  (a) our batched residual, forward + backward (fast path, per chunk size),
  (b) a Python loop of ``firedrake.ml.pytorch.fem_operator`` over the batch,
  (c) forward + backward (float32) of the project's denoisers on the same fields:
      the raster U-Net and the mesh-native denoiser at --width, with their
      parameter counts,

and the ratios (b)/(a) and (a)/(c). Writes results.json to --out.

    python benchmarks/bridge_speed.py [--batch 64] [--width 32] [--mesh PATH] [--out outputs/bridge_speed]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch


def timed(fn, repeat: int) -> float:
    """Median wall time of ``fn()`` over ``repeat`` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--mesh", type=Path, default=None)
    parser.add_argument("--chunks", type=int, nargs="+", default=[8, 16, 32, 64])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--width", type=int, default=32, help="width of the denoisers")
    parser.add_argument("--net-repeat", type=int, default=2, help="timed calls of each denoiser")
    parser.add_argument("--out", type=Path, default=Path("outputs/bridge_speed"))
    args = parser.parse_args(argv)
    # Firedrake hands sys.argv to PETSc: do not report this script's own options as unused PETSc options.
    os.environ.setdefault("PETSC_OPTIONS", "-options_left no")

    import firedrake as fd
    from firedrake.adjoint import Control, ReducedFunctional, continue_annotation, pause_annotation, set_working_tape
    from firedrake.ml.pytorch import fem_operator
    from tqdm.auto import tqdm

    from pidm_fem.atomic_files import write_json
    from pidm_fem.bridge import TorchFEM
    from pidm_fem.experiments import NodeFields, build_denoiser
    from pidm_fem.models import count_parameters
    from pidm_fem.mesh import default_mesh_path, load_mesh
    from pidm_fem.physics.darcy import DarcyProblem
    from pidm_fem.physics.permeability import KarhunenLoeve
    from pidm_fem.training.config import ModelConfig

    mesh_path = args.mesh or default_mesh_path()
    problem = DarcyProblem(load_mesh(mesh_path))
    V, B, n = problem.V, args.batch, problem.V.dof_count
    rng = np.random.default_rng(0)
    K = KarhunenLoeve(V).sample(rng, B)
    x = torch.from_numpy(np.concatenate([rng.normal(size=(B, n)), K], axis=1))
    w = torch.from_numpy(rng.normal(size=(B, n)))
    results = {"mesh": str(mesh_path), "n_dofs_per_field": n, "batch": B, "repeat": args.repeat, "chunks": {}}

    for chunk in tqdm(args.chunks, desc="chunk sizes"):
        t0 = time.perf_counter()
        op = TorchFEM(problem.residual_operator(chunk=chunk))
        xr = x.clone().requires_grad_(True)
        (op(xr) * w).sum().backward()  # first call compiles (or loads from the disk cache)
        first_call = time.perf_counter() - t0

        def ours(op=op):
            xr = x.clone().requires_grad_(True)
            (op(xr) * w).sum().backward()

        results["chunks"][chunk] = {"first_call_s": first_call, "fwd_bwd_s": timed(ours, args.repeat)}

    with set_working_tape():
        continue_annotation()
        p_c, K_c = fd.Function(V), fd.Function(V)
        p_c.assign(1.0), K_c.assign(1.0)
        R = fd.assemble(problem.residual(p_c, K_c, fd.TestFunction(V)))
        pause_annotation()
        reference = fem_operator(ReducedFunctional(R, [Control(p_c), Control(K_c)]))

        def loop():
            for b in range(B):
                p_b = x[b, :n].clone().requires_grad_(True)
                K_b = x[b, n:].clone().requires_grad_(True)
                (reference(p_b, K_b) * w[b]).sum().backward()

        results["fem_operator_loop_s"] = timed(loop, max(1, args.repeat // 2))

    nodes = NodeFields(problem.layout).mesh_nodes()
    x_nodes = torch.randn(B, 2, n)
    t = torch.randint(0, 100, (B,))
    results["denoisers"] = {}
    for kind in tqdm(("unet", "mesh"), desc="denoisers"):
        net = build_denoiser(ModelConfig(kind=kind, width=args.width), nodes, 2)

        def network(net=net):
            net.zero_grad()
            net(x_nodes, t).square().mean().backward()

        results["denoisers"][kind] = {"width": args.width, "parameters": count_parameters(net),
                                      "fwd_bwd_s": timed(network, args.net_repeat)}
    best = min(results["chunks"], key=lambda c: results["chunks"][c]["fwd_bwd_s"])
    ours_s = results["chunks"][best]["fwd_bwd_s"]
    results["best_chunk"] = best
    results["ratio_fem_operator_over_ours"] = results["fem_operator_loop_s"] / ours_s
    for kind, r in results["denoisers"].items():
        results[f"ratio_ours_over_{kind}"] = ours_s / r["fwd_bwd_s"]
    results["torch_threads"] = torch.get_num_threads()
    path = write_json(args.out / "results.json", results)

    print(f"mesh {mesh_path}: {n} DOFs per field, batch {B}")
    for chunk, r in results["chunks"].items():
        print(f"  ours, chunk {chunk:3d}: {r['fwd_bwd_s'] * 1e3:8.1f} ms fwd+bwd "
              f"(first call {r['first_call_s']:.1f} s)")
    print(f"  fem_operator loop:  {results['fem_operator_loop_s'] * 1e3:8.1f} ms")
    for kind, r in results["denoisers"].items():
        print(f"  denoiser {kind:4s} (width {r['width']}, {r['parameters']:,} parameters): "
              f"{r['fwd_bwd_s'] * 1e3:8.1f} ms fwd+bwd, (a)/(c) = {results[f'ratio_ours_over_{kind}']:.4f}")
    print(f"  (b)/(a) = {results['ratio_fem_operator_over_ours']:.1f}")
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
