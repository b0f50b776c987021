"""Cost of the batched FEM residual against a loop of Firedrake's fem_operator and a network.

For a batch of B Darcy samples on a mesh (default: the embedded unit square),
measured side by side in one run, median of --repeat timings:

  (a) our batched residual, forward + backward (fast path, per chunk size),
  (b) a Python loop of ``firedrake.ml.pytorch.fem_operator`` over the batch,
  (c) forward + backward of a small convolutional net on as many values,

and the ratios (b)/(a) and (a)/(c). Writes results.json to --out.

    python benchmarks/bridge_speed.py [--batch 64] [--mesh PATH] [--out outputs/bridge_speed]
"""

from __future__ import annotations

import argparse
import math
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


def small_convnet(width: int = 64) -> torch.nn.Module:
    """Four 3x3 convolutions with GELU: a stand-in for the denoiser until it exists."""
    return torch.nn.Sequential(
        torch.nn.Conv2d(2, width, 3, padding=1), torch.nn.GELU(),
        torch.nn.Conv2d(width, width, 3, padding=1), torch.nn.GELU(),
        torch.nn.Conv2d(width, width, 3, padding=1), torch.nn.GELU(),
        torch.nn.Conv2d(width, 2, 3, padding=1),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--mesh", type=Path, default=None)
    parser.add_argument("--chunks", type=int, nargs="+", default=[8, 16, 32, 64])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("outputs/bridge_speed"))
    args = parser.parse_args(argv)

    import firedrake as fd
    from firedrake.adjoint import Control, ReducedFunctional, continue_annotation, pause_annotation, set_working_tape
    from firedrake.ml.pytorch import fem_operator
    from tqdm.auto import tqdm

    from pidm_fem.atomic_files import write_json
    from pidm_fem.bridge import TorchFEM
    from pidm_fem.mesh import default_mesh_path, load_mesh
    from pidm_fem.physics.darcy import DarcyProblem
    from pidm_fem.physics.permeability import KarhunenLoeve

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

    side = math.ceil(math.sqrt(n))
    net = small_convnet().double()
    images = torch.randn(B, 2, side, side, dtype=torch.float64)

    def network():
        net.zero_grad()
        net(images).square().mean().backward()

    results["convnet"] = {"input": [B, 2, side, side], "parameters": sum(p.numel() for p in net.parameters()),
                          "fwd_bwd_s": timed(network, args.repeat)}
    best = min(results["chunks"], key=lambda c: results["chunks"][c]["fwd_bwd_s"])
    ours_s = results["chunks"][best]["fwd_bwd_s"]
    results["best_chunk"] = best
    results["ratio_fem_operator_over_ours"] = results["fem_operator_loop_s"] / ours_s
    results["ratio_ours_over_network"] = ours_s / results["convnet"]["fwd_bwd_s"]
    results["torch_threads"] = torch.get_num_threads()
    path = write_json(args.out / "results.json", results)

    print(f"mesh {mesh_path}: {n} DOFs per field, batch {B}")
    for chunk, r in results["chunks"].items():
        print(f"  ours, chunk {chunk:3d}: {r['fwd_bwd_s'] * 1e3:8.1f} ms fwd+bwd (first call {r['first_call_s']:.1f} s)")
    print(f"  fem_operator loop:  {results['fem_operator_loop_s'] * 1e3:8.1f} ms")
    print(f"  conv net:           {results['convnet']['fwd_bwd_s'] * 1e3:8.1f} ms")
    print(f"  (b)/(a) = {results['ratio_fem_operator_over_ours']:.1f}, (a)/(c) = {results['ratio_ours_over_network']:.2f}")
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
