"""The torch <-> Firedrake bridge: exact gradients, agreement between paths, dtypes."""

import firedrake as fd
import numpy as np
import pytest
import torch

from pidm_fem.bridge import BatchedFormOperator, FieldLayout, TapedOperator, TorchFEM
from pidm_fem.mesh import load_mesh, unit_square_family
from pidm_fem.physics.darcy import DarcyProblem


@pytest.fixture(scope="module")
def problem():
    return DarcyProblem(load_mesh(unit_square_family()[0]))


def _batch(problem, n, seed=0):
    rng = np.random.default_rng(seed)
    coords = problem.layout.dof_coordinates("p")
    rows = []
    for _ in range(n):
        a, b, c = rng.normal(size=3)
        p = a * np.cos(np.pi * coords[:, 0]) + b * np.sin(2 * coords[:, 1]) + 0.1 * rng.normal(size=len(coords))
        K = np.exp(0.5 * np.sin(3 * coords[:, 0] + c) + 0.1 * rng.normal(size=len(coords)))
        rows.append(np.concatenate([p, K]))
    return np.array(rows)


def test_fast_path_matches_pyadjoint_path(problem):
    x = _batch(problem, 5)
    fast = problem.residual_operator(chunk=4)  # 5 rows: one full chunk and one padded chunk
    taped = problem.taped_residual_operator()
    y_fast, y_taped = fast.forward(x), taped.forward(x)
    assert np.linalg.norm(y_fast - y_taped) <= 1e-12 * np.linalg.norm(y_taped)
    w = np.random.default_rng(1).normal(size=y_fast.shape)
    g_fast, g_taped = fast.vjp(x, w), taped.vjp(x, w)
    assert np.linalg.norm(g_fast - g_taped) <= 1e-12 * np.linalg.norm(g_taped)


def test_matches_firedrake_fem_operator_for_one_sample(problem):
    from firedrake.adjoint import Control, ReducedFunctional, continue_annotation, pause_annotation, set_working_tape
    from firedrake.ml.pytorch import fem_operator, to_torch

    x = _batch(problem, 1, seed=3)
    V = problem.V
    with set_working_tape():
        continue_annotation()
        p, K = fd.Function(V), fd.Function(V)
        p.dat.data[:], K.dat.data[:] = x[0, : V.dof_count], x[0, V.dof_count:]
        R = fd.assemble(problem.residual(p, K, fd.TestFunction(V)))
        pause_annotation()
        op = fem_operator(ReducedFunctional(R, [Control(p), Control(K)]))
        p_t = to_torch(p).requires_grad_(True)
        K_t = to_torch(K).requires_grad_(True)
        y_ref = op(p_t, K_t)
        w = torch.from_numpy(np.random.default_rng(2).normal(size=y_ref.shape))
        (y_ref * w).sum().backward()
    ours = TorchFEM(problem.residual_operator(chunk=2))
    x_t = torch.from_numpy(x).requires_grad_(True)
    y = ours(x_t)
    (y * w.reshape(1, -1)).sum().backward()
    ref_grad = torch.cat([p_t.grad.reshape(-1), K_t.grad.reshape(-1)])
    assert torch.linalg.norm(y[0] - y_ref.reshape(-1)) <= 1e-12 * torch.linalg.norm(y_ref)
    assert torch.linalg.norm(x_t.grad[0] - ref_grad) <= 1e-12 * torch.linalg.norm(ref_grad)


@pytest.mark.parametrize("fields", [("p",), ("K",), ("p", "K")])
def test_gradient_finite_differences_and_taylor(problem, fields):
    """R is bilinear in (p, K): linear along p or K alone, quadratic along both."""
    op = TorchFEM(problem.residual_operator(chunk=4))
    x = torch.from_numpy(_batch(problem, 3, seed=4))
    w = torch.from_numpy(np.random.default_rng(5).normal(size=(3, problem.V.dof_count)))
    direction = torch.zeros_like(x)
    rng = np.random.default_rng(6)
    for field in fields:
        block = problem.layout.block(field)
        direction[:, block] = torch.from_numpy(rng.normal(size=(3, block.stop - block.start)))

    def J(z):
        return (op(z) * w).sum()

    x_req = x.clone().requires_grad_(True)
    J(x_req).backward()
    dJ = (x_req.grad * direction).sum().item()
    J0 = J(x).item()
    h = 1e-6  # central finite difference of the directional derivative
    fd_value = (J(x + h * direction).item() - J(x - h * direction).item()) / (2 * h)
    assert abs(fd_value - dJ) <= 1e-6 * abs(dJ)
    # Taylor remainders |J(x + s d) - J(x) - s dJ.d|
    steps = [1e-1 / 2**k for k in range(4)]
    remainders = np.array([abs(J(x + s * direction).item() - J0 - s * dJ) for s in steps])
    if len(fields) == 1:  # linear direction: the first-order expansion is exact
        assert remainders.max() <= 1e-10 * abs(J0)
    else:
        rates = np.log2(remainders[:-1] / remainders[1:])
        assert np.all(np.abs(rates - 2) < 0.1), rates


def test_float32_and_shape_checks(problem):
    op = TorchFEM(problem.residual_operator(chunk=4))
    x64 = torch.from_numpy(_batch(problem, 2))
    x32 = x64.float().requires_grad_(True)
    y32 = op(x32)
    assert y32.dtype == torch.float32
    y64 = op(x32.detach().double())  # the same float32 values, computed in float64
    assert torch.allclose(y32.double(), y64, rtol=1e-6, atol=1e-6 * y64.abs().max().item())
    y32.sum().backward()
    assert x32.grad.dtype == torch.float32
    with pytest.raises(ValueError, match="expected a batch of shape"):
        op(x64[:, :-1])


def test_scalar_functional_batched_matches_per_sample(problem):
    """0-forms: one number per sample through a batched Real test space."""
    layout = problem.layout

    def energy(fields, data, v):
        return fields["K"] * fd.inner(fd.grad(fields["p"]), fd.grad(fields["p"])) * fd.dx

    fast = BatchedFormOperator(layout, energy, test_space=None, chunk=4)
    taped = TapedOperator(layout, lambda f, d: fd.assemble(energy(f, d, None)))
    x = _batch(problem, 6, seed=7)
    values = fast.forward(x)
    assert values.shape == (6,)
    for i in range(6):
        functions = layout.functions(x[i])
        expected = fd.assemble(energy(functions, {}, None))
        assert abs(values[i] - expected) <= 1e-12 * abs(expected)
    w = np.arange(1.0, 7.0)
    assert np.allclose(fast.vjp(x, w), taped.vjp(x, w), rtol=0, atol=1e-12 * np.abs(taped.vjp(x, w)).max())


def test_taped_operator_with_a_pde_solve_taylor(problem):
    """The general path differentiates through a solve: J(K) = int p(K)^2 with p solving Darcy."""
    V = problem.V
    layout = FieldLayout.from_spaces({"K": V})

    def build(fields, data):
        p, v = fd.Function(V), fd.TestFunction(V)
        q = fd.TrialFunction(V)
        a = fields["K"] * fd.inner(fd.grad(q), fd.grad(v)) * fd.dx + q * v * fd.dx
        fd.solve(a == problem.f * v * fd.dx, p)
        return fd.assemble(p * p * fd.dx)

    op = TapedOperator(layout, build)
    K = _batch(problem, 2, seed=8)[:, V.dof_count:]
    dK = np.random.default_rng(9).normal(size=K.shape) * K * 0.1
    J0 = op.forward(K)
    grad = op.vjp(K, np.ones(2))
    slope = (grad * dK).sum(axis=1)
    remainders = np.array([np.abs(op.forward(K + s * dK) - J0 - s * slope) for s in (0.1, 0.05, 0.025)])
    rates = np.log2(remainders[:-1] / remainders[1:])
    assert np.all(rates > 1.9), rates


def test_dof_coordinates_document_the_ordering(problem):
    layout = problem.layout
    coords = layout.dof_coordinates()
    assert coords.shape == (layout.total, 2)
    x = fd.SpatialCoordinate(problem.mesh)
    p = fd.Function(problem.V).interpolate(x[0] + 2 * x[1])
    row = np.zeros(layout.total)
    row[layout.block("p")] = coords[layout.block("p"), 0] + 2 * coords[layout.block("p"), 1]
    assert np.allclose(row[layout.block("p")], p.dat.data_ro, atol=1e-14)
    vector = fd.VectorFunctionSpace(problem.mesh, "CG", 1)
    vlayout = FieldLayout.from_spaces({"u": vector})
    vcoords = vlayout.dof_coordinates("u")
    u = fd.Function(vector).interpolate(x)
    assert np.allclose(vcoords[0::2, 0], u.dat.data_ro[:, 0]) and np.allclose(vcoords[1::2, 1], u.dat.data_ro[:, 1])


def test_per_sample_data_fast_and_taped_paths_agree(problem):
    """Per-sample inputs that are not differentiated (here a source term per sample)."""
    from pidm_fem.physics.darcy import darcy_residual

    V = problem.V
    data_layout = FieldLayout.from_spaces({"f": V})

    def build(fields, data, v):
        return darcy_residual(fields["p"], fields["K"], v, data["f"])

    fast = BatchedFormOperator(problem.layout, build, V, data=data_layout, chunk=4)
    taped = TapedOperator(problem.layout, lambda f, d: fd.assemble(build(f, d, fd.TestFunction(V))), data=data_layout)
    x = _batch(problem, 5, seed=10)
    sources = np.random.default_rng(11).normal(size=(5, V.dof_count))
    y = fast.forward(x, sources)
    assert np.linalg.norm(y - taped.forward(x, sources)) <= 1e-12 * np.linalg.norm(y)
    # the source enters linearly: changing only sample 2's source changes only sample 2's residual
    changed = sources.copy()
    changed[2] += 1.0
    delta = fast.forward(x, changed) - y
    assert np.abs(delta[[0, 1, 3, 4]]).max() == 0 and np.abs(delta[2]).max() > 0
    w = np.random.default_rng(12).normal(size=y.shape)
    g = fast.vjp(x, w, sources)
    assert np.linalg.norm(g - taped.vjp(x, w, sources)) <= 1e-12 * np.linalg.norm(g)
    with pytest.raises(ValueError, match="needs per-sample data"):
        fast.forward(x)
