"""The mesh-native denoiser: message passing over mesh edges plus physics-attention slices.

Works on any triangle mesh without a raster. A node encoder lifts the noisy fields,
the condition fields and the node coordinates (normalised by the bounding box) to
``width`` features (optionally plus products of two learned linear forms of those
inputs, so that a pointwise product of two input fields is one exact feature); each
block then applies, each under adaptive layer
normalisation (AdaLN: shift, scale and gate from the time + scalar embedding),

* local message passing over the mesh edges, with the relative node positions as
  edge features (scatter-add aggregation, mean over neighbours);
* global mixing by Transolver-style physics attention (Wu et al., ICML 2024): nodes
  are softly assigned to a few slice tokens, the tokens attend to each other and are
  scattered back; tokens are area-weighted averages (lumped P1 mass), so they
  approximate integrals over the domain whatever the mesh resolution;
* a node-wise feed-forward layer.

A decoder maps the features to the output fields. The weights are independent of
the mesh: the same model runs on meshes of any size, and it is equivariant to the
order of the nodes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pidm_fem.models.embeddings import ConditioningEmbedding
from pidm_fem.models.mesh_nodes import MeshNodes, stack_node_inputs

#: edge features: relative position (2) in units of the mean edge length, and its length (1)
EDGE_FEATURES = 3


@dataclass(frozen=True)
class MeshGraph:
    """Tensors a :class:`MeshDenoiser` needs about one mesh, on one device and dtype.

    Attributes
    ----------
    source, target
        Node indices of the directed edges (both directions of every mesh edge), shape (2E,).
    edge_features
        Relative position ``x_source - x_target`` divided by the mean edge length, and
        its length, shape (2E, 3).
    inverse_degree
        One over the number of neighbours of each node, shape (n, 1).
    node_weights
        Lumped P1 mass of each node over the total area (sums to 1), shape (n,).
    coordinates
        Node coordinates mapped to [-1, 1] per axis by the bounding box, shape (n, 2).
    """

    source: torch.Tensor
    target: torch.Tensor
    edge_features: torch.Tensor
    inverse_degree: torch.Tensor
    node_weights: torch.Tensor
    coordinates: torch.Tensor

    @classmethod
    def from_mesh(cls, mesh: MeshNodes, device: torch.device, dtype: torch.dtype) -> MeshGraph:
        """Build the graph tensors of ``mesh``."""
        edges = mesh.edges
        source = np.concatenate([edges[:, 0], edges[:, 1]])
        target = np.concatenate([edges[:, 1], edges[:, 0]])
        relative = mesh.coordinates[source] - mesh.coordinates[target]
        length = np.linalg.norm(relative, axis=1, keepdims=True)
        scale = length.mean()
        degree = np.bincount(target, minlength=mesh.n_nodes)
        lower, upper = mesh.bounding_box

        def tensor(array: np.ndarray, tensor_dtype: torch.dtype = dtype) -> torch.Tensor:
            return torch.as_tensor(np.ascontiguousarray(array), dtype=tensor_dtype, device=device)

        return cls(
            source=tensor(source, torch.int64),
            target=tensor(target, torch.int64),
            edge_features=tensor(np.concatenate([relative, length], axis=1) / scale),
            inverse_degree=tensor(1.0 / degree[:, None]),
            node_weights=tensor(mesh.node_areas / mesh.node_areas.sum()),
            coordinates=tensor(2.0 * (mesh.coordinates - lower) / (upper - lower) - 1.0),
        )


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Adaptive normalisation: ``x * (1 + scale) + shift`` with per-sample (B, 1, W) shift and scale."""
    return x * (1 + scale) + shift


class LocalMessagePassing(nn.Module):
    """Mean of nonlinear messages over mesh edges, then a node update.

    ``m_ij = SiLU(A h_i + B h_j + C e_ij)``, ``a_i = mean_j m_ij``,
    ``out_i = MLP([h_i, a_i])``. The first layer is split into node terms computed once
    per node and gathered per edge, which keeps the per-edge memory at one layer.

    Parameters
    ----------
    width
        Node feature size.
    """

    def __init__(self, width: int) -> None:
        super().__init__()
        self.node_terms = nn.Linear(width, 2 * width)
        self.edge_term = nn.Linear(EDGE_FEATURES, width, bias=False)
        self.update = nn.Sequential(nn.Linear(2 * width, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, h: torch.Tensor, graph: MeshGraph) -> torch.Tensor:
        """Map node features (B, n, W) to (B, n, W)."""
        target_term, source_term = self.node_terms(h).chunk(2, dim=-1)
        messages = F.silu(
            target_term.index_select(1, graph.target)
            + source_term.index_select(1, graph.source)
            + self.edge_term(graph.edge_features)
        )
        aggregated = torch.zeros_like(target_term).index_add(1, graph.target, messages) * graph.inverse_degree
        return self.update(torch.cat([h, aggregated], dim=-1))


class PhysicsAttention(nn.Module):
    """Transolver-style physics attention with area-weighted slice tokens.

    Each head softly assigns every node to ``n_slices`` slices (softmax over slices of
    a learned projection, with a learned temperature); a slice token is the
    area-weighted mean of the node features it holds; the tokens attend to each other
    (multi-head scaled dot-product attention); each node receives the mix of the
    tokens given by its own slice weights.

    Parameters
    ----------
    width
        Node feature size (a multiple of ``n_heads``).
    n_slices
        Number of slice tokens per head.
    n_heads
        Number of heads.
    """

    def __init__(self, width: int, n_slices: int, n_heads: int) -> None:
        super().__init__()
        if width % n_heads:
            raise ValueError(f"width ({width}) must be a multiple of n_heads ({n_heads})")
        self.n_heads, self.head_dim = n_heads, width // n_heads
        self.slice_features = nn.Linear(width, width)
        self.values = nn.Linear(width, width)
        self.slice_logits = nn.Linear(self.head_dim, n_slices)
        self.log_temperature = nn.Parameter(torch.full((n_heads, 1), float(np.log(0.5))))
        self.query = nn.Linear(self.head_dim, self.head_dim, bias=False)
        self.key = nn.Linear(self.head_dim, self.head_dim, bias=False)
        self.value = nn.Linear(self.head_dim, self.head_dim, bias=False)
        self.output = nn.Linear(width, width)

    def forward(self, h: torch.Tensor, node_weights: torch.Tensor) -> torch.Tensor:
        """Map node features (B, n, W), with node weights (n,) summing to 1, to (B, n, W).

        The slice weights, the only (B, heads, n, slices) tensor, are made and used in one
        layout, each pass over them a batched matrix product: the temperature and the bias
        are folded into the slice projection (a column of ones on the features), and one
        product gives each token's weighted sum and its weight (a column of node weights
        on the values). The same function as the textbook form, 2-4x faster
        (``benchmarks/attention_speed.py``).
        """
        batch, n_nodes, width = h.shape
        heads, head_dim = self.n_heads, self.head_dim
        features = self.slice_features(h).view(batch, n_nodes, heads, head_dim).transpose(1, 2)
        values = self.values(h).view(batch, n_nodes, heads, head_dim).transpose(1, 2)
        projection = torch.cat([self.slice_logits.weight.T, self.slice_logits.bias[None]])
        projection = projection * (-self.log_temperature).exp()[:, :, None]
        ones = h.new_ones(()).expand(batch, heads, n_nodes, 1)
        slice_weights = torch.softmax(torch.cat([features, ones], dim=-1) @ projection, dim=-1)
        weights = node_weights[:, None].expand(batch, heads, n_nodes, 1)
        pooled = torch.cat([values * weights, weights], dim=-1).transpose(-1, -2) @ slice_weights
        tokens = (pooled[..., :head_dim, :] / (pooled[..., head_dim:, :] + 1e-6)).transpose(-1, -2)
        tokens = F.scaled_dot_product_attention(self.query(tokens), self.key(tokens), self.value(tokens))
        mixed = (slice_weights @ tokens).transpose(1, 2).reshape(batch, n_nodes, width)
        return self.output(mixed)


class MeshBlock(nn.Module):
    """Local message passing, physics attention and a feed-forward layer, each AdaLN-conditioned.

    Each sub-layer ``f`` updates ``h <- h + gate * f(LN(h) * (1 + scale) + shift)`` with
    shift, scale and gate computed from the conditioning embedding.

    Parameters
    ----------
    width
        Node feature size.
    embedding_dim
        Size of the conditioning embedding.
    n_slices, n_heads
        Passed to :class:`PhysicsAttention`.
    """

    def __init__(self, width: int, embedding_dim: int, n_slices: int, n_heads: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False)
        self.modulation = nn.Linear(embedding_dim, 9 * width)
        self.local = LocalMessagePassing(width)
        self.attention = PhysicsAttention(width, n_slices, n_heads)
        self.feedforward = nn.Sequential(nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width))

    def forward(self, h: torch.Tensor, embedding: torch.Tensor, graph: MeshGraph) -> torch.Tensor:
        """Map node features (B, n, W) to (B, n, W) given the embedding (B, E)."""
        (shift1, scale1, gate1, shift2, scale2, gate2, shift3, scale3, gate3) = self.modulation(
            F.silu(embedding)
        )[:, None, :].chunk(9, dim=-1)
        h = h + gate1 * self.local(_modulate(self.norm(h), shift1, scale1), graph)
        h = h + gate2 * self.attention(_modulate(self.norm(h), shift2, scale2), graph.node_weights)
        return h + gate3 * self.feedforward(_modulate(self.norm(h), shift3, scale3))


class MeshDenoiser(nn.Module):
    """Mesh-native denoiser predicting x0 on the nodes of any triangle mesh.

    The mesh is set with :meth:`set_mesh` (or the constructor) or given to
    :meth:`forward`; the graph tensors of each mesh are built once per device and
    dtype and cached (keyed by the :class:`MeshNodes` object).

    Parameters
    ----------
    in_channels, out_channels
        Number of fields C in and out.
    cond_channels
        Number of condition fields on the mesh (0 for none).
    n_scalars
        Number of per-sample scalar conditions (0 for none).
    n_timesteps
        Number of diffusion steps T (timesteps lie in 0..T-1).
    width
        Node feature size (a multiple of ``n_heads``).
    n_blocks
        Number of :class:`MeshBlock`.
    n_slices, n_heads
        Slice tokens and heads of the physics attention.
    input_products
        Add to the encoder's features the elementwise products ``(A u) * (B u)`` of two
        learned linear maps of the node inputs u: every quadratic form of the inputs
        (e.g. the dot product of two gradient fields) is then representable exactly
        in the first layer, where an MLP would only approximate it.
    mesh
        Default mesh (optional).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        cond_channels: int = 0,
        n_scalars: int = 0,
        n_timesteps: int = 100,
        width: int = 64,
        n_blocks: int = 4,
        n_slices: int = 32,
        n_heads: int = 4,
        input_products: bool = False,
        mesh: MeshNodes | None = None,
    ) -> None:
        super().__init__()
        if in_channels < 1 or out_channels < 1 or cond_channels < 0:
            raise ValueError("in_channels and out_channels must be positive, cond_channels non-negative")
        if width < 1 or n_blocks < 1 or n_slices < 1 or n_heads < 1:
            raise ValueError("width, n_blocks, n_slices and n_heads must be positive")
        self.in_channels, self.out_channels, self.cond_channels = in_channels, out_channels, cond_channels
        embedding_dim = 4 * width
        self.embedding = ConditioningEmbedding(n_timesteps, width, embedding_dim, n_scalars)
        n_inputs = in_channels + cond_channels + 2
        self.encoder = nn.Sequential(nn.Linear(n_inputs, width), nn.SiLU(), nn.Linear(width, width))
        self.input_products = nn.Linear(n_inputs, 2 * width) if input_products else None
        self.blocks = nn.ModuleList(MeshBlock(width, embedding_dim, n_slices, n_heads) for _ in range(n_blocks))
        self.final_norm = nn.LayerNorm(width, elementwise_affine=False)
        self.final_modulation = nn.Linear(embedding_dim, 2 * width)
        self.decoder = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, out_channels))
        self._graphs: dict[tuple[MeshNodes, torch.device, torch.dtype], MeshGraph] = {}
        self.mesh: MeshNodes | None = None
        if mesh is not None:
            self.set_mesh(mesh)

    def set_mesh(self, mesh: MeshNodes) -> None:
        """Make ``mesh`` the default mesh of :meth:`forward` (and build its graph tensors)."""
        self.graph(mesh)
        self.mesh = mesh

    def graph(self, mesh: MeshNodes) -> MeshGraph:
        """The (cached) graph tensors of ``mesh`` on this model's device and dtype."""
        if not isinstance(mesh, MeshNodes):
            raise ValueError(f"mesh must be a MeshNodes, got {type(mesh).__name__}")
        reference = self.decoder[0].weight
        key = (mesh, reference.device, reference.dtype)
        if key not in self._graphs:
            self._graphs[key] = MeshGraph.from_mesh(mesh, reference.device, reference.dtype)
        return self._graphs[key]

    def encode(self, inputs: torch.Tensor) -> torch.Tensor:
        """Node features (B, n, width) of the node inputs (B, n, in + cond + 2): fields, conditions, coordinates."""
        h = self.encoder(inputs)
        if self.input_products is not None:
            left, right = self.input_products(inputs).chunk(2, dim=-1)
            h = h + left * right
        return h

    def forward(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        cond: torch.Tensor | None = None,
        scalars: torch.Tensor | None = None,
        mesh: MeshNodes | None = None,
    ) -> torch.Tensor:
        """Predict x0 (B, C_out, n) from noisy fields x_t (B, C, n), timesteps t (B,) and conditions.

        Parameters
        ----------
        x_t
            Noisy fields on the mesh nodes, shape (B, in_channels, n).
        t
            Integer timesteps, shape (B,).
        cond
            Condition fields, shape (B, cond_channels, n); required iff cond_channels > 0.
        scalars
            Scalar conditions, shape (B, n_scalars); required iff n_scalars > 0.
        mesh
            The mesh of this call; default: the one set with :meth:`set_mesh`.
        """
        mesh = self.mesh if mesh is None else mesh
        if mesh is None:
            raise ValueError("no mesh: pass mesh= or call set_mesh first")
        graph = self.graph(mesh)
        fields = stack_node_inputs(x_t, t, cond, self.in_channels, self.cond_channels, mesh.n_nodes)
        embedding = self.embedding(t, scalars)
        coordinates = graph.coordinates.expand(len(x_t), -1, -1)
        h = self.encode(torch.cat([fields.transpose(1, 2), coordinates.to(fields.dtype)], dim=-1))
        for block in self.blocks:
            h = block(h, embedding, graph)
        shift, scale = self.final_modulation(F.silu(embedding))[:, None, :].chunk(2, dim=-1)
        return self.decoder(_modulate(self.final_norm(h), shift, scale)).transpose(1, 2)
