"""Darcy physics: convergence, exactness of generated samples, KL statistics, data files."""

import functools
import math

import firedrake as fd
import numpy as np
import pytest

from pidm_fem.data import DatasetError, SampleFile, generate_samples, load_samples
from pidm_fem.mesh import default_mesh_path, load_mesh, unit_square_family
from pidm_fem.physics.darcy import DarcyProblem
from pidm_fem.physics.field_maps import neumann_laplacian_maps
from pidm_fem.physics.darcy_data import DarcyDataSettings, DarcySampleGenerator, make_darcy_generator
from pidm_fem.physics.permeability import KarhunenLoeve, MaternField, dof_coordinates


def test_variable_k_manufactured_solution_rate_two():
    errors, sizes = [], []
    for path in unit_square_family():
        mesh = load_mesh(path)
        x, y = fd.SpatialCoordinate(mesh)
        p_exact = fd.cos(fd.pi * x) * fd.cos(2 * fd.pi * y)  # zero normal flux, zero mean
        K_exact = 1.0 + 0.5 * fd.sin(2 * x + y) ** 2
        problem = DarcyProblem(mesh, source=-fd.div(K_exact * fd.grad(p_exact)))
        p = problem.solve(fd.Function(problem.V).interpolate(K_exact))
        errors.append(math.sqrt(fd.assemble((p - p_exact) ** 2 * fd.dx(degree=6))))
        sizes.append(mesh.cell_sizes.dat.data_ro.max())
    rates = [math.log(errors[i] / errors[i + 1]) / math.log(sizes[i] / sizes[i + 1]) for i in range(2)]
    assert all(1.8 <= r <= 2.2 for r in rates), (errors, rates)


def test_solver_rejects_bad_permeability():
    problem = DarcyProblem(load_mesh(unit_square_family()[0]))
    K = np.ones(problem.V.dof_count)
    K[3] = -1.0
    with pytest.raises(ValueError, match="positive"):
        problem.solve(K)


def test_batched_solves_agree_with_the_single_solver_and_refuse_bad_permeability():
    problem = DarcyProblem(load_mesh(unit_square_family()[0]))
    K = KarhunenLoeve(problem.V).sample(np.random.default_rng(3), 5)
    single = np.stack([problem.solve(k).dat.data_ro for k in K])
    batched = problem.solve_many(K, chunk=2)  # two full chunks and a padded one
    np.testing.assert_allclose(batched, single, rtol=0, atol=1e-11 * np.abs(single).max())
    np.testing.assert_allclose(batched @ problem.lumped_mass(), 0, atol=1e-12)
    assert problem.solve_many(K[:0]).shape == (0, problem.V.dof_count)
    bad = K.copy()
    bad[1, 3] = np.nan
    with pytest.raises(ValueError, match="positive"):
        problem.solve_many(bad)
    with pytest.raises(ValueError, match="shape"):
        problem.solve_many(K[:, :-1])


def test_source_integrates_to_zero_on_other_domains():
    mesh = fd.RectangleMesh(20, 10, 2.0, 1.0)  # not the unit square: bump source
    problem = DarcyProblem(mesh)
    f = problem.f
    assert abs(fd.assemble(f * fd.dx)) < 1e-12 * fd.assemble(abs(f) * fd.dx)
    assert f.dat.data_ro.max() > 1.0 and f.dat.data_ro.min() < -1.0


def test_source_region_is_the_paper_boxes_and_the_bump_cores():
    problem = DarcyProblem(load_mesh(default_mesh_path()))
    region, weights = problem.source_region(), problem.lumped_mass()
    assert 2 * 0.125**2 <= weights[region].sum() <= 2 * 0.15**2  # the two boxes, one element layer around them
    assert np.all(problem.f.dat.data_ro[~region] == 0)
    bumps = DarcyProblem(fd.RectangleMesh(40, 20, 2.0, 1.0))
    share = bumps.lumped_mass()[bumps.source_region()].sum() / 2.0
    assert 0.05 < share < 0.5  # the Gaussians' cores, not the whole domain
    with pytest.raises(ValueError, match="relative must lie in"):
        problem.source_region(1.0)


@pytest.fixture(scope="module")
def generator():
    return DarcySampleGenerator(DarcyDataSettings(mesh=str(default_mesh_path()), seed=11))


def test_generated_samples_are_exact_discrete_solutions(generator):
    problem, layout = generator.problem, generator.layout
    rows = np.array([generator(i) for i in range(4)])
    f_max = np.abs(problem.f.dat.data_ro).max()
    weak = problem.residual_operator(chunk=4).forward(rows)
    strong = problem.strong_residual(weak)
    assert np.abs(strong).max() < 1e-8 * f_max
    swapped = rows.copy()
    swapped[:, layout.block("K")] = rows[::-1, layout.block("K")]
    swapped_residual = np.abs(problem.strong_residual(problem.residual_operator(chunk=4).forward(swapped)))
    assert swapped_residual.max(axis=1).min() > 0.1 * f_max
    # zero-mean gauge: for P1, integral(p) = sum_i M_L,ii p_i
    p = rows[:, layout.block("p")]
    assert np.abs(p @ problem.lumped_mass()).max() < 1e-12 * np.abs(p).max()


def test_kl_eigenvalues_do_not_depend_on_mesh_density():
    default = load_mesh(default_mesh_path())  # 2,017 vertices
    fine_mesh = fd.MeshHierarchy(default, 1)[-1]  # uniformly refined: 7,905 vertices
    coarse = KarhunenLoeve(fd.FunctionSpace(default, "CG", 1))
    fine = KarhunenLoeve(fd.FunctionSpace(fine_mesh, "CG", 1))
    relative = np.abs(coarse.eigenvalues - fine.eigenvalues) / fine.eigenvalues
    assert relative.max() < 0.02, relative.max()
    # 64 modes of the length-0.1 kernel on the unit square carry about 2/3 of its variance
    assert 0.6 < fine.eigenvalues.sum() < 0.72


def test_kl_empirical_covariance_matches_truncated_covariance():
    kl = KarhunenLoeve(fd.FunctionSpace(load_mesh(unit_square_family()[1]), "CG", 1))
    draws = kl.sample_log(np.random.default_rng(0), 2000)
    empirical = np.cov(draws, rowvar=False)
    exact = kl.truncated_covariance()
    coords = fd.Function(fd.VectorFunctionSpace(kl.space.mesh(), "CG", 1)).interpolate(
        fd.SpatialCoordinate(kl.space.mesh())).dat.data_ro
    distance = np.linalg.norm(coords[:, None, :] - coords[None, :, :], axis=-1)
    for d in (0.05, 0.1, 0.2):
        pairs = np.abs(distance - d) < 0.005
        ratio = empirical[pairs].mean() / exact[pairs].mean()
        assert abs(ratio - 1) < 0.10, (d, ratio)


def test_matern_field_is_seeded_and_has_unit_variance_inside():
    V = fd.FunctionSpace(load_mesh(unit_square_family()[1]), "CG", 1)
    field = MaternField(V, length=0.1)
    draws = field.sample_log(np.random.default_rng(0), 200)
    assert np.array_equal(draws[:2], field.sample_log(np.random.default_rng(0), 2))
    x = dof_coordinates(V)
    interior = np.all((x > 0.25) & (x < 0.75), axis=1)
    assert 0.8 < np.median(draws.var(axis=0)[interior]) < 1.2


def _settings(**kw):
    return DarcyDataSettings(mesh=str(unit_square_family()[0]), seed=5, **kw)


def _generate(path, n, workers, settings):
    generator = DarcySampleGenerator(settings)
    fields = {name: generator.layout.dof_coordinates(name) for name in generator.layout.names}
    return generate_samples(path, n, functools.partial(make_darcy_generator, settings), generator.fingerprint,
                            settings.as_dict(), fields, workers=workers, progress=False), generator


def test_dataset_deterministic_resumable_and_refuses_other_mesh(tmp_path):
    settings = _settings()
    path_1, generator = _generate(tmp_path / "one.h5", 6, 1, settings)
    path_2, _ = _generate(tmp_path / "two.h5", 6, 2, settings)
    a, stored = load_samples(path_1, generator.fingerprint, generator.layout.names)
    b, _ = load_samples(path_2, generator.fingerprint, generator.layout.names)
    assert np.array_equal(a, b) and stored == settings.as_dict()
    # an interrupted file (3 of 6 rows) is completed, not restarted, and equals the full one
    fields = {name: generator.layout.dof_coordinates(name) for name in generator.layout.names}
    partial = SampleFile.open_for_writing(tmp_path / "three.h5", 6, generator.fingerprint, settings.as_dict(), fields)
    for i in (0, 2, 4):
        partial.write(i, a[i])
    assert partial.finish().name == "three.h5.partial"
    path_3, _ = _generate(tmp_path / "three.h5", 6, 1, settings)
    c, _ = load_samples(path_3, generator.fingerprint, generator.layout.names)
    assert np.array_equal(a, c)
    # another mesh's fingerprint is refused with a one-line error naming the file
    other = DarcySampleGenerator(DarcyDataSettings(mesh=str(unit_square_family()[1])))
    with pytest.raises(DatasetError) as info:
        load_samples(path_1, other.fingerprint, other.layout.names)
    assert "another mesh" in str(info.value) and str(path_1) in str(info.value) and "\n" not in str(info.value)
    # a partial file made with other settings is refused rather than mixed
    SampleFile.open_for_writing(tmp_path / "four.h5", 6, generator.fingerprint, settings.as_dict(), fields).finish()
    with pytest.raises(DatasetError, match="other settings"):
        SampleFile.open_for_writing(tmp_path / "four.h5", 6, generator.fingerprint, _settings(length=0.2).as_dict(),
                                    fields)


def test_neumann_laplacian_maps_invert_and_converge():
    """G q solves the pure-Neumann problem: rate 2 in L2 for q = -div(grad(p)); G M_L^{-1} A = identity on zero mean."""
    errors, sizes = [], []
    for path in unit_square_family():
        mesh = load_mesh(path)
        V = fd.FunctionSpace(mesh, "CG", 1)
        forward, inverse = neumann_laplacian_maps(V)
        x, y = fd.SpatialCoordinate(mesh)
        p_exact = fd.cos(fd.pi * x) * fd.cos(2 * fd.pi * y)  # zero normal flux, zero mean
        q = fd.Function(V).interpolate(5 * fd.pi**2 * p_exact)  # -div(grad(p_exact))
        p = fd.Function(V)
        p.dat.data[:] = inverse @ q.dat.data_ro
        errors.append(math.sqrt(fd.assemble((p - p_exact) ** 2 * fd.dx(degree=6))))
        sizes.append(mesh.cell_sizes.dat.data_ro.max())
        weights = fd.assemble(fd.TestFunction(V) * fd.dx).dat.data_ro
        field = np.random.default_rng(0).standard_normal(V.dof_count)
        field -= field @ weights / weights.sum()
        assert np.allclose(inverse @ (forward @ field), field, atol=1e-10 * np.abs(field).max())
        assert abs(weights @ p.dat.data_ro) < 1e-12
    rates = [math.log(errors[i] / errors[i + 1]) / math.log(sizes[i] / sizes[i + 1]) for i in range(2)]
    assert all(1.8 <= r <= 2.2 for r in rates), (errors, rates)
    with pytest.raises(ValueError, match="scalar space"):
        neumann_laplacian_maps(fd.VectorFunctionSpace(mesh, "CG", 1))


def test_preconditioned_residual_is_the_pressure_error_under_constant_permeability():
    """z = A_1^{-1} R: for constant K = c, z = c (p - solve(K)), zero for the solution; bad kinds refused."""
    import torch

    problem = DarcyProblem(load_mesh(unit_square_family()[0]))
    residual = problem.torch_residual("preconditioned")
    weights = problem.lumped_mass()
    noise = np.random.default_rng(3).standard_normal(problem.V.dof_count)
    for c in (1.0, 2.0):
        K = np.full(problem.V.dof_count, c)
        solved = problem.solve(K).dat.data_ro.copy()
        p = solved + noise - (noise @ weights) / weights.sum()
        rows = torch.from_numpy(np.stack([np.concatenate([p, K]), np.concatenate([solved, K])]))
        z = residual(rows).numpy()
        assert np.abs(z[0] - c * (p - solved)).max() < 1e-10 * np.abs(noise).max()
        assert np.abs(z[1]).max() < 1e-10 * np.abs(solved).max()
    with pytest.raises(ValueError, match="residual kind must be one of"):
        problem.torch_residual("H1")
