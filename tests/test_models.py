"""Tests of the denoisers and their mesh <-> raster operators (plain PyTorch, no Firedrake)."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pidm_fem.models import MeshDenoiser, MeshNodes, RasterUNet, count_parameters
from pidm_fem.models.embeddings import sinusoidal_embedding
from pidm_fem.models.raster import (
    RasterGrid,
    bilinear_operator,
    default_raster_shape,
    locate_points,
    point_evaluation_operator,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from attention_speed import forward_backward, textbook_attention  # noqa: E402  (not a package)


def grid_triangulation(n_side: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes of an n_side x n_side grid on the unit square and two triangles per cell."""
    xs = np.linspace(0.0, 1.0, n_side)
    x, y = np.meshgrid(xs, xs)
    coordinates = np.stack([x.ravel(), y.ravel()], axis=1)
    index = np.arange(n_side * n_side).reshape(n_side, n_side)
    a, b = index[:-1, :-1].ravel(), index[:-1, 1:].ravel()
    c, d = index[1:, :-1].ravel(), index[1:, 1:].ravel()
    triangles = np.concatenate([np.stack([a, b, d], axis=1), np.stack([a, d, c], axis=1)])
    return coordinates, triangles


def permuted(coordinates: np.ndarray, triangles: np.ndarray, rng: np.random.Generator):
    """The same mesh with its nodes and triangles in random order; also the node permutation."""
    permutation = rng.permutation(len(coordinates))
    new_index = np.argsort(permutation)
    triangles = new_index[triangles][rng.permutation(len(triangles))]
    return MeshNodes(coordinates[permutation], triangles), permutation


def structured_mesh(n_side: int, seed: int = 0) -> MeshNodes:
    """Grid mesh of the unit square with its nodes in random order."""
    return permuted(*grid_triangulation(n_side), np.random.default_rng(seed))[0]


def l_shaped_mesh(n_side: int = 11, seed: int = 1) -> MeshNodes:
    """Unstructured mesh of [0,1]^2 minus (0.5,1]^2: a grid with cells removed, interior nodes moved."""
    rng = np.random.default_rng(seed)
    coordinates, triangles = grid_triangulation(n_side)
    centroids = coordinates[triangles].mean(axis=1)
    triangles = triangles[~((centroids[:, 0] > 0.5) & (centroids[:, 1] > 0.5))]
    used = np.unique(triangles)
    coordinates = coordinates[used]
    triangles = np.searchsorted(used, triangles)
    x, y = coordinates[:, 0], coordinates[:, 1]
    boundary = (x == 0) | (x == 1) | (y == 0) | (y == 1) | ((x == 0.5) & (y >= 0.5)) | ((y == 0.5) & (x >= 0.5))
    spacing = 1.0 / (n_side - 1)
    coordinates[~boundary] += rng.uniform(-0.2, 0.2, size=(int((~boundary).sum()), 2)) * spacing
    return permuted(coordinates, triangles, rng)[0]


def linear_function(points: np.ndarray) -> np.ndarray:
    return 0.3 + 1.7 * points[:, 0] - 2.2 * points[:, 1]


def assert_all_gradients(model: torch.nn.Module) -> None:
    """Every parameter has a finite gradient, and (almost) all of them are nonzero somewhere."""
    nonzero = 0
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, name
        assert torch.isfinite(parameter.grad).all(), name
        nonzero += bool(parameter.grad.abs().sum() > 0)
    assert nonzero == len(list(model.parameters()))


# --- mesh description -------------------------------------------------------------------------


def test_mesh_nodes_derived_quantities_and_validation():
    mesh = MeshNodes(*grid_triangulation(3))
    assert mesh.edges.shape == (16, 2) and (mesh.edges[:, 0] < mesh.edges[:, 1]).all()
    lower, upper = mesh.bounding_box
    np.testing.assert_array_equal(lower, [0, 0])
    np.testing.assert_array_equal(upper, [1, 1])
    assert mesh.node_areas.sum() == pytest.approx(1.0)
    assert copy.deepcopy(mesh) is mesh
    with pytest.raises(ValueError, match="coordinates must have shape"):
        MeshNodes(np.zeros((4, 3)), [[0, 1, 2]])
    with pytest.raises(ValueError, match="node indices"):
        MeshNodes(np.eye(3)[:, :2], [[0, 1, 3]])
    with pytest.raises(ValueError, match="degenerate"):
        MeshNodes([[0, 0], [1, 0], [2, 0]], [[0, 1, 2]])


def test_nodal_gradient_is_exact_for_linear_fields_and_converges_inside():
    mesh = l_shaped_mesh()
    gradient = mesh.nodal_gradient
    assert gradient.shape == (2, mesh.n_nodes, mesh.n_nodes) and not gradient.flags.writeable
    np.testing.assert_allclose(gradient @ linear_function(mesh.coordinates), [[1.7], [-2.2]] * np.ones(mesh.n_nodes),
                               atol=1e-12)
    errors = []
    for n_side in (9, 17, 33):
        coordinates, triangles = grid_triangulation(n_side)
        fine = MeshNodes(coordinates, triangles)
        x, y = coordinates.T
        interior = (x > 0.2) & (x < 0.8) & (y > 0.2) & (y < 0.8)
        recovered = fine.nodal_gradient @ (np.sin(3 * x) * np.cos(2 * y))
        exact = np.stack([3 * np.cos(3 * x) * np.cos(2 * y), -2 * np.sin(3 * x) * np.sin(2 * y)])
        errors.append(np.abs(recovered - exact)[:, interior].max())
    rates = np.log2(np.array(errors[:-1]) / np.array(errors[1:]))
    assert (rates > 0.9).all(), (errors, rates)


# --- raster operators -------------------------------------------------------------------------


def test_default_raster_shape():
    assert default_raster_shape(100) == (16, 16)
    assert default_raster_shape(2000) == (64, 64)
    assert default_raster_shape(4096) == (64, 64)
    assert default_raster_shape(4097) == (128, 128)


@pytest.mark.parametrize("n_side", [16, 64])
def test_raster_operators_are_permutations_on_a_structured_grid(n_side):
    mesh = structured_mesh(n_side)
    grid = RasterGrid.for_mesh(mesh)
    assert grid.shape == (n_side, n_side)
    to_raster, inside = point_evaluation_operator(mesh, grid)
    to_mesh = bilinear_operator(grid, mesh.coordinates)
    assert inside.all()
    for operator in (to_raster, to_mesh):
        matrix = operator.to_scipy()
        assert matrix.shape == (n_side**2, n_side**2)
        assert (matrix.data == 1.0).all()
        assert (np.diff(matrix.indptr) == 1).all()
        assert len(np.unique(matrix.indices)) == n_side**2
    # each raster point takes the value of the node at its position
    node_at = to_raster.to_scipy().indices
    np.testing.assert_array_equal(mesh.coordinates[node_at], grid.points())
    fields = torch.randn(3, 2, mesh.n_nodes, dtype=torch.float64)
    assert torch.equal(to_mesh(to_raster(fields)), fields)


def test_point_evaluation_on_an_unstructured_l_shape():
    mesh = l_shaped_mesh()
    grid = RasterGrid.for_mesh(mesh, (23, 17))
    points = grid.points()
    to_raster, inside = point_evaluation_operator(mesh, grid)
    outside_exactly = (points[:, 0] > 0.5 + 1e-9) & (points[:, 1] > 0.5 + 1e-9)
    np.testing.assert_array_equal(inside, ~outside_exactly)
    assert 0 < outside_exactly.sum() < len(points)
    values = to_raster(torch.as_tensor(linear_function(mesh.coordinates))).numpy()
    np.testing.assert_allclose(values[inside], linear_function(points[inside]), rtol=0, atol=1e-12)
    assert (values[~inside] == 0).all()
    # rows are convex combinations of the corners of one triangle
    matrix = to_raster.to_scipy()
    np.testing.assert_allclose(np.asarray(matrix.sum(axis=1)).ravel(), inside.astype(float), atol=1e-14)
    assert matrix.data.min() >= 0 and np.diff(matrix.indptr).max() <= 3


def test_locate_points_finds_the_containing_triangle():
    mesh = l_shaped_mesh()
    rng = np.random.default_rng(3)
    triangle_index = rng.integers(mesh.n_triangles, size=50)
    weights = rng.dirichlet(np.ones(3), size=50)
    points = np.einsum("pk,pkd->pd", weights, mesh.coordinates[mesh.triangles[triangle_index]])
    points = np.concatenate([points, [[0.9, 0.9], [2.0, 0.1], [-1.0, -1.0]]])
    triangle, barycentric = locate_points(mesh, points)
    np.testing.assert_array_equal(triangle[:50], triangle_index)
    np.testing.assert_allclose(barycentric[:50], weights, atol=1e-12)
    np.testing.assert_array_equal(triangle[50:], -1)


def test_bilinear_interpolation_reproduces_linear_functions():
    mesh = l_shaped_mesh()
    grid = RasterGrid.for_mesh(mesh, (9, 14))
    to_mesh = bilinear_operator(grid, mesh.coordinates)
    raster_values = torch.as_tensor(linear_function(grid.points()))
    np.testing.assert_allclose(to_mesh(raster_values).numpy(), linear_function(mesh.coordinates), atol=1e-12)
    with pytest.raises(ValueError, match="inside the raster's box"):
        bilinear_operator(grid, np.array([[1.5, 0.5]]))


# --- denoisers -------------------------------------------------------------------------------


def test_sinusoidal_embedding_shape_and_range():
    embedding = sinusoidal_embedding(torch.tensor([0, 5, 99]), 16, 100)
    assert embedding.shape == (3, 16)
    np.testing.assert_allclose(embedding[0, :8].numpy(), 1.0)
    assert not torch.allclose(embedding[1], embedding[2])


def test_raster_unet_outputs_and_gradients():
    torch.manual_seed(0)
    mesh = l_shaped_mesh()
    model = RasterUNet(
        mesh, in_channels=2, out_channels=2, cond_channels=1, n_scalars=2, n_timesteps=50, width=8,
        raster_shape=(13, 10), channel_mult=(1, 2, 2), num_res_blocks=1,
    )
    assert model.padding == (0, 2, 0, 3)
    x_t = torch.randn(3, 2, mesh.n_nodes)
    output = model(x_t, torch.tensor([0, 10, 49]), torch.randn(3, 1, mesh.n_nodes), torch.randn(3, 2))
    assert output.shape == (3, 2, mesh.n_nodes)
    output.square().mean().backward()
    assert_all_gradients(model)
    assert count_parameters(model) == sum(p.numel() for p in model.parameters())
    assert not any(name.startswith("to_") or name == "mask" for name in model.state_dict())


def test_raster_unet_default_network_on_the_structured_grid():
    torch.manual_seed(0)
    mesh = structured_mesh(16)
    model = RasterUNet(mesh, in_channels=2, out_channels=2, width=8)
    fields = torch.randn(2, 2, mesh.n_nodes)
    assert torch.equal(model.to_mesh(model.to_raster(fields)), fields)
    assert model(fields, torch.tensor([3, 7])).shape == (2, 2, mesh.n_nodes)


def test_denoisers_reject_bad_inputs():
    mesh = l_shaped_mesh()
    models = [
        RasterUNet(mesh, 2, 2, cond_channels=1, width=8, raster_shape=(8, 8), channel_mult=(1, 2), num_res_blocks=1),
        MeshDenoiser(2, 2, cond_channels=1, width=8, n_blocks=1, n_heads=2, mesh=mesh),
    ]
    x_t, cond, t = torch.randn(2, 2, mesh.n_nodes), torch.randn(2, 1, mesh.n_nodes), torch.tensor([1, 2])
    for model in models:
        with pytest.raises(ValueError, match="x_t must have shape"):
            model(x_t[:, :1], t, cond)
        with pytest.raises(ValueError, match="needs cond"):
            model(x_t, t)
        with pytest.raises(ValueError, match="timesteps must lie in"):
            model(x_t, torch.tensor([0, 100]), cond)
        with pytest.raises(ValueError, match="n_scalars = 0"):
            model(x_t, t, cond, torch.zeros(2, 1))


def test_mesh_denoiser_outputs_gradients_and_two_meshes():
    torch.manual_seed(0)
    small, large = l_shaped_mesh(7), structured_mesh(12)
    model = MeshDenoiser(2, 3, cond_channels=1, n_scalars=2, width=16, n_blocks=2, n_slices=8, n_heads=2)
    with pytest.raises(ValueError, match="no mesh"):
        model(torch.randn(1, 2, small.n_nodes), torch.tensor([0]), torch.randn(1, 1, small.n_nodes), torch.randn(1, 2))
    model.set_mesh(small)
    losses = []
    for mesh in (small, large):
        x_t, cond = torch.randn(4, 2, mesh.n_nodes), torch.randn(4, 1, mesh.n_nodes)
        output = model(x_t, torch.tensor([0, 3, 50, 99]), cond, torch.randn(4, 2), mesh=mesh)
        assert output.shape == (4, 3, mesh.n_nodes)
        losses.append(output.square().mean())
    assert model.mesh is small
    sum(losses).backward()
    assert_all_gradients(model)
    assert model.graph(large) is model.graph(large)


def test_input_products_make_a_product_of_two_inputs_one_exact_feature():
    torch.manual_seed(0)
    mesh = l_shaped_mesh(7)
    plain = MeshDenoiser(1, 1, cond_channels=2, width=8, n_blocks=1, n_slices=4, n_heads=2, mesh=mesh)
    model = MeshDenoiser(1, 1, cond_channels=2, width=8, n_blocks=1, n_slices=4, n_heads=2, input_products=True,
                         mesh=mesh)
    assert plain.input_products is None
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in plain.parameters()) + 5 * 16 + 16
    inputs = torch.randn(2, mesh.n_nodes, 5)  # field, two conditions, two coordinates
    with torch.no_grad():
        model.input_products.weight.zero_()
        model.input_products.bias.zero_()
        model.input_products.weight[0, 1] = 1.0  # left feature 0: the first condition
        model.input_products.weight[8, 2] = 1.0  # right feature 0: the second condition
    products = model.encode(inputs) - model.encoder(inputs)
    torch.testing.assert_close(products[..., 0], inputs[..., 1] * inputs[..., 2])
    assert float(products[..., 1:].detach().abs().max()) == 0.0
    out = model(torch.randn(2, 1, mesh.n_nodes), torch.tensor([0, 5]), torch.randn(2, 2, mesh.n_nodes))
    out.square().sum().backward()
    assert float(model.input_products.weight.grad.abs().max()) > 0


def test_physics_attention_is_the_textbook_function_with_its_gradients():
    torch.manual_seed(0)
    mesh = l_shaped_mesh(9)
    # float64: in float32 the two orders of summation differ by round-off (up to 3e-6 of a gradient's largest
    # entry, machine-dependent), which would hide a wrong formula of that size
    model = MeshDenoiser(2, 2, width=12, n_blocks=2, n_slices=6, n_heads=3, mesh=mesh).double()
    with torch.no_grad():
        for block in model.blocks:
            block.attention.log_temperature.uniform_(-2.0, 1.0)
            block.modulation.weight.normal_(0.0, 0.1)  # open the gates: the attention must change the output
    x = torch.randn(3, 2, mesh.n_nodes, dtype=torch.float64, requires_grad=True)
    inputs = (x, torch.tensor([0, 40, 99]))
    fused = forward_backward(model, *inputs)
    with textbook_attention():
        textbook = forward_backward(model, *inputs)
    assert len(fused) == 2 + len(list(model.parameters()))
    assert all(float(gradient.abs().max()) > 0 for gradient in fused[1:])  # every parameter takes part
    for a, b in zip(textbook, fused):
        torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-12 * float(a.abs().max()))


def test_mesh_denoiser_is_equivariant_to_node_order():
    torch.manual_seed(0)
    rng = np.random.default_rng(7)
    mesh = l_shaped_mesh()
    reordered, permutation = permuted(mesh.coordinates, mesh.triangles, rng)
    model = MeshDenoiser(2, 2, cond_channels=1, n_scalars=1, width=16, n_blocks=2, n_slices=8, n_heads=2)
    x_t, cond = torch.randn(2, 2, mesh.n_nodes), torch.randn(2, 1, mesh.n_nodes)
    t, scalars = torch.tensor([5, 60]), torch.randn(2, 1)
    output = model(x_t, t, cond, scalars, mesh=mesh)
    reordered_output = model(x_t[..., permutation], t, cond[..., permutation], scalars, mesh=reordered)
    torch.testing.assert_close(reordered_output, output[..., permutation], rtol=1e-4, atol=1e-5)


def test_mesh_denoiser_deepcopy_keeps_the_mesh_and_the_function():
    torch.manual_seed(0)
    mesh = l_shaped_mesh()
    model = MeshDenoiser(1, 1, width=8, n_blocks=1, n_heads=2, mesh=mesh)
    twin = copy.deepcopy(model)
    assert twin.mesh is mesh
    x_t, t = torch.randn(2, 1, mesh.n_nodes), torch.tensor([1, 2])
    assert torch.equal(twin(x_t, t), model(x_t, t))
