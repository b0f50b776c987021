"""Plane elasticity: patch test, cantilever against beam theory, loads, Taylor tests, the residual, stresses."""

import firedrake as fd
import numpy as np
import pytest
import ufl

from pidm_fem.mesh import load_mesh, unit_square_family
from pidm_fem.physics.elasticity import (
    BodyForce,
    Elasticity,
    Material,
    PointLoad,
    Support,
    Traction,
)

#: the coefficients of the linear displacement of the patch test
A = np.array([[0.01, 0.02, -0.03], [-0.02, 0.015, 0.005]])


def _linear(x):
    return ufl.as_vector([A[i, 0] + A[i, 1] * x[0] + A[i, 2] * x[1] for i in range(2)])


@pytest.mark.parametrize("mesh_kind, degree", [("unstructured", 1), ("unstructured", 2), ("quadrilateral", 1)])
def test_patch_test_reproduces_a_linear_field_to_round_off(mesh_kind, degree):
    mesh = (load_mesh(unit_square_family()[1]) if mesh_kind == "unstructured"
            else fd.UnitSquareMesh(5, 4, quadrilateral=True))
    supports = [Support("fixed", boundary=i, value=_linear) for i in (1, 2, 3, 4)]
    problem = Elasticity(mesh, supports, [BodyForce((0.0, 0.0))], degree=degree)
    u = problem.solve(np.ones(problem.D.dof_count))
    exact = fd.Function(problem.V).interpolate(_linear(fd.SpatialCoordinate(mesh)))
    assert np.abs(u.dat.data_ro - exact.dat.data_ro).max() < 1e-12


def test_cantilever_tip_deflection_matches_beam_theory_with_its_shear_correction():
    length, height, force, nu = 10.0, 1.0, -1e-3, 0.3
    mesh = fd.RectangleMesh(80, 8, length, height)
    problem = Elasticity(mesh, [Support("fixed", boundary=1)], [Traction(2, (0.0, force / height))],
                         material=Material(nu=nu), degree=2)
    u = problem.solve(np.ones(problem.D.dof_count))
    tip = fd.assemble(u[1] * fd.ds(2)) / height
    bending = force * length**3 / (3 * 1.0 * height**3 / 12)  # Euler-Bernoulli, E = 1
    shear = force * length / (5 / 6 * 1.0 / (2 * (1 + nu)) * height)  # Timoshenko's shear term
    assert 0 < (tip - bending) / shear < 2.0, (tip, bending, shear)  # the shear correction, as large as expected
    assert abs(tip / (bending + shear) - 1) < 0.005


def test_loads_integrate_to_the_given_forces():
    mesh = load_mesh(unit_square_family()[0])
    problem = Elasticity(mesh, [Support("fixed", boundary=1)],
                         [PointLoad((0.3, 0.7), (0.5, -2.0)), Traction(2, (0.25, 0.0)), BodyForce((0.0, -1.5))])
    F = problem.load_vector().dat.data_ro
    assert np.allclose(F.sum(axis=0), [0.5 + 0.25 * 1.0, -2.0 - 1.5 * 1.0], atol=1e-12)
    node = np.argmin(np.linalg.norm(problem.nodes - [0.3, 0.7], axis=1))
    assert np.allclose(problem.point_load_vector()[node], [0.5, -2.0])  # whole, at the nearest vertex


def _taylor_rates(f, grad, x, direction):
    f0, slope = f(x), grad(x) @ direction
    errors = [abs(f(x + h * direction) - f0 - h * slope) for h in (1e-2, 5e-3, 2.5e-3, 1.25e-3)]
    return np.log2(np.array(errors[:-1]) / np.array(errors[1:]))


@pytest.mark.parametrize("density", ["DG0", "P1"])
def test_compliance_and_volume_gradients_pass_taylor_tests(density):
    mesh = load_mesh(unit_square_family()[0])
    problem = Elasticity(mesh, [Support("fixed", boundary=1)], [Traction(2, (0.0, -1.0))], density=density)
    rng = np.random.default_rng(0)
    rho = rng.uniform(0.3, 0.9, problem.D.dof_count)
    direction = rng.uniform(-1, 1, problem.D.dof_count)

    def compliance(x):
        problem.solve(x)
        return problem.compliance()

    def gradient(x):
        problem.solve(x)
        return problem.compliance_gradient()

    assert np.all(_taylor_rates(compliance, gradient, rho, direction) > 1.9)
    volume_rates = _taylor_rates(lambda x: problem.volume_fraction(x) + (x @ x) * 1e-3,
                                 lambda x: problem.volume_weights + 2e-3 * x, rho, direction)
    assert np.all(volume_rates > 1.9)  # a quadratic term added so that the error is not round-off


def test_the_strong_residual_of_a_solution_is_round_off_and_sees_a_wrong_one():
    mesh = load_mesh(unit_square_family()[0])
    problem = Elasticity(mesh, [Support("fixed", boundary=1)], [PointLoad((1.0, 0.5), (0.0, -1.0)),
                                                              BodyForce((0.1, 0.0))])
    rho = fd.Function(problem.D).assign(0.7)
    u = problem.solve(rho.dat.data_ro).copy(deepcopy=True)
    scale = np.abs(problem.load_vector().dat.data_ro / problem.lumped_mass).max()
    assert np.abs(problem.strong_residual(u, rho)).max() < 1e-10 * scale
    u.dat.data[:] *= 1.01
    assert np.abs(problem.strong_residual(u, rho)).max() > 1e-3 * scale


@pytest.mark.parametrize("plane", ["stress", "strain"])
def test_solid_fields_of_uniaxial_tension(plane):
    """A bar pulled by a traction t: sigma_xx = t everywhere, von Mises t (plane stress), W = t eps_xx / 2."""
    t = 0.2
    mesh = fd.RectangleMesh(12, 4, 3.0, 1.0)
    problem = Elasticity(mesh, [Support("roller_x", boundary=1), Support("roller_y", point=(0.0, 0.0))],
                         [Traction(2, (t, 0.0))], material=Material(plane=plane))
    fields = problem.solid_fields()
    nu = problem.material.nu
    if plane == "stress":
        mises, strain = t, t / 1.0
    else:  # sigma_zz = nu t; eps_xx = (1 - nu^2) t / E
        mises, strain = t * np.sqrt(1 - nu + nu**2), (1 - nu**2) * t
    assert np.allclose(fields["von_mises"].dat.data_ro, mises, rtol=1e-8)
    assert np.allclose(fields["strain_energy_density"].dat.data_ro, 0.5 * t * strain, rtol=1e-8)


def test_iterative_solver_agrees_with_the_direct_one():
    mesh = load_mesh(unit_square_family()[1])
    common = ([Support("fixed", boundary=1)], [Traction(2, (0.0, -1.0))])
    rho = np.random.default_rng(1).uniform(0.5, 1.0, mesh.num_cells())
    direct = Elasticity(mesh, *common).solve(rho).dat.data_ro.copy()
    iterative = Elasticity(mesh, *common, solver="iterative").solve(rho).dat.data_ro
    assert np.abs(iterative - direct).max() < 1e-7 * np.abs(direct).max()


@pytest.mark.parametrize("support, loads, message", [
    (Support("fixed", boundary=9), [BodyForce((0.0, -1.0))], "no boundary id 9"),
    (Support("fixed", boundary=1), [PointLoad((2.0, 0.5), (0.0, -1.0))], "off the domain"),
    (Support("fixed", boundary=1), [Traction(7, (0.0, -1.0))], "no boundary id 7"),
    (Support("fixed", segment=((5.0, 5.0), (6.0, 6.0))), [BodyForce((0.0, -1.0))], "no mesh vertex"),
])
def test_bad_supports_and_loads_are_refused(support, loads, message):
    with pytest.raises(ValueError, match=message):
        Elasticity(load_mesh(unit_square_family()[0]), [support], loads)
