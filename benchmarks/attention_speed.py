"""Cost of the mesh denoiser's physics attention: its fused layout against the textbook form.

:class:`~pidm_fem.models.mesh_denoiser.PhysicsAttention` computes the Transolver slice
attention with its (B, heads, n, slices) slice weights made and used in one layout, every
pass over them a batched matrix product. :func:`textbook_forward` is the same function
written as in the paper (division by the temperature, mass products and einsums over a
(B, n, heads, slices) tensor). Measured side by side in one run, median of --repeat
timings, forward + backward of a sum of squares, on the nodes of a mesh (default: the
embedded unit square, the default mode's):

  (a) one attention layer, both forms, and the largest difference of outputs and gradients;
  (b) the whole mesh denoiser (the default mode's width and batch), with every layer in either form.

Writes results.json to --out.

    python benchmarks/attention_speed.py [--batch 16] [--width 16] [--mesh PATH] [--out outputs/attention_speed]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pidm_fem.models.mesh_denoiser import MeshDenoiser, PhysicsAttention


def textbook_forward(attention: PhysicsAttention, h: torch.Tensor, node_weights: torch.Tensor) -> torch.Tensor:
    """:meth:`PhysicsAttention.forward` as the paper writes it: the reference of the fused layout."""
    batch, n_nodes, width = h.shape
    features = attention.slice_features(h).view(batch, n_nodes, attention.n_heads, attention.head_dim)
    values = attention.values(h).view(batch, n_nodes, attention.n_heads, attention.head_dim)
    slice_weights = torch.softmax(attention.slice_logits(features) / attention.log_temperature.exp(), dim=-1)
    mass = slice_weights * node_weights[:, None, None]
    tokens = torch.einsum("bnhs,bnhd->bhsd", mass, values) / (mass.sum(dim=1)[..., None] + 1e-6)
    query, key, value = attention.query(tokens), attention.key(tokens), attention.value(tokens)
    tokens = F.scaled_dot_product_attention(query, key, value)
    mixed = torch.einsum("bnhs,bhsd->bnhd", slice_weights, tokens).reshape(batch, n_nodes, width)
    return attention.output(mixed)


@contextlib.contextmanager
def textbook_attention():
    """Within the block, every :class:`PhysicsAttention` computes :func:`textbook_forward`."""
    fused = PhysicsAttention.forward
    PhysicsAttention.forward = textbook_forward
    try:
        yield
    finally:
        PhysicsAttention.forward = fused


def forward_backward(module: torch.nn.Module, *inputs: torch.Tensor) -> list[torch.Tensor]:
    """Output and gradients (inputs that require them, then parameters) of the sum of squares."""
    module.zero_grad()
    for x in inputs:
        x.grad = None
    output = module(*inputs)
    output.square().sum().backward()
    return [output.detach()] + [x.grad.clone() for x in inputs if x.requires_grad] + [
        p.grad.clone() for p in module.parameters()
    ]


def seconds(fn) -> float:
    """Wall time of one call of ``fn``."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def largest_relative_difference(first: list[torch.Tensor], second: list[torch.Tensor]) -> float:
    """Largest ``max|a - b| / max|a|`` over pairs of tensors."""
    return max(float((a - b).abs().max() / a.abs().max().clamp_min(1e-30)) for a, b in zip(first, second))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--width", type=int, default=16, help="width of the mesh denoiser")
    parser.add_argument("--mesh", type=Path, default=None)
    parser.add_argument("--repeat", type=int, default=9)
    parser.add_argument("--out", type=Path, default=Path("outputs/attention_speed"))
    args = parser.parse_args(argv)
    os.environ.setdefault("PETSC_OPTIONS", "-options_left no")

    from pidm_fem.atomic_files import write_json
    from pidm_fem.experiments.node_fields import NodeFields
    from pidm_fem.mesh import default_mesh_path, load_mesh
    from pidm_fem.physics.darcy import DarcyProblem

    mesh_path = args.mesh or default_mesh_path()
    nodes = NodeFields(DarcyProblem(load_mesh(mesh_path)).layout).mesh_nodes()
    torch.manual_seed(0)
    denoiser = MeshDenoiser(2, 2, width=args.width, mesh=nodes)
    attention = denoiser.blocks[0].attention
    node_weights = denoiser.graph(nodes).node_weights
    h = torch.randn(args.batch, nodes.n_nodes, args.width, requires_grad=True)
    x_t = torch.randn(args.batch, 2, nodes.n_nodes)
    t = torch.randint(0, 100, (args.batch,))

    def layer() -> list[torch.Tensor]:
        return forward_backward(attention, h, node_weights)

    def network() -> list[torch.Tensor]:
        return forward_backward(denoiser, x_t, t)

    results = {"mesh": str(mesh_path), "n_nodes": nodes.n_nodes, "batch": args.batch, "width": args.width,
               "threads": torch.get_num_threads()}
    for name, fn in (("layer", layer), ("network", network)):
        fused_values = fn()  # also the warm-up of each form
        with textbook_attention():
            textbook_values = fn()
        fused_times, textbook_times = [], []
        for _ in range(args.repeat):  # alternate, so that the machine's noise falls on both
            fused_times.append(seconds(fn))
            with textbook_attention():
                textbook_times.append(seconds(fn))
        fused, textbook = float(np.median(fused_times)), float(np.median(textbook_times))
        results[name] = {"fused_s": fused, "textbook_s": textbook, "speedup": textbook / fused,
                         "largest_relative_difference": largest_relative_difference(textbook_values, fused_values)}
        print(f"{name}: textbook {textbook * 1e3:.1f} ms, fused {fused * 1e3:.1f} ms, speedup {textbook / fused:.2f}x, "
              f"largest relative difference {results[name]['largest_relative_difference']:.1e}")
    write_json(args.out / "results.json", results)
    print(f"results: {args.out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
