"""The stack imports, and Firedrake converges at the right rate on the shipped meshes."""

import math

import numpy as np


def test_stack_imports():
    import firedrake  # noqa: F401
    import pyadjoint  # noqa: F401
    import torch

    import pidm_fem

    assert torch.__version__.startswith("2.13.0")
    assert pidm_fem.__version__


def test_petsc_and_petsc4py_are_one_version():
    import warnings

    import petsc4py
    from petsc4py import PETSc

    library = ".".join(map(str, PETSc.Sys.getVersion()))
    assert library == petsc4py.__version__, f"PETSc {library} beside petsc4py {petsc4py.__version__}"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # petsctools warns on a mismatch
        import firedrake  # noqa: F401


def test_poisson_p1_rate_two_on_shipped_unstructured_family():
    import firedrake as fd

    from pidm_fem.mesh import load_mesh, unit_square_family

    errors, sizes = [], []
    for path in unit_square_family():
        mesh = load_mesh(path)
        V = fd.FunctionSpace(mesh, "CG", 1)
        x, y = fd.SpatialCoordinate(mesh)
        exact = fd.sin(2 * fd.pi * x) * fd.exp(y) + x * y
        u, v = fd.TrialFunction(V), fd.TestFunction(V)
        f = -fd.div(fd.grad(exact))
        uh = fd.Function(V)
        bc = fd.DirichletBC(V, exact, (1, 2, 3, 4))
        fd.solve(fd.inner(fd.grad(u), fd.grad(v)) * fd.dx == f * v * fd.dx, uh, bcs=bc,
                 solver_parameters={"ksp_type": "preonly", "pc_type": "lu"})
        errors.append(math.sqrt(fd.assemble((uh - exact) ** 2 * fd.dx(degree=6))))
        sizes.append(mesh.cell_sizes.dat.data_ro.max())
    rates = [math.log(errors[i] / errors[i + 1]) / math.log(sizes[i] / sizes[i + 1]) for i in range(2)]
    assert np.allclose(np.array(sizes[:-1]) / np.array(sizes[1:]), 2.0, rtol=0.05), sizes
    assert all(1.8 <= r <= 2.2 for r in rates), (errors, rates)
