"""A user's PDE: nonlinear diffusion ``-div((1 + u^2) grad u) = f``, ``u = 0`` on the boundary.

The source f is a random sum of Gaussian bumps on the mesh's bounding box; the state u is
solved by Newton's method (PETSc SNES). Every pidm-fem command takes it as
``--problem examples/nonlinear_diffusion.py:NonlinearDiffusion`` (or ``problem:`` in a run
file), for example::

    pidm-fem data examples/nonlinear_diffusion.py:NonlinearDiffusion --mesh meshes/unit_square.msh --n 64 --out f.h5
    pidm-fem train examples/nonlinear_diffusion.yaml
"""

from __future__ import annotations

import firedrake as fd
import numpy as np
import ufl

from pidm_fem.physics.form_problem import FormProblem


class NonlinearDiffusion(FormProblem):
    """Nonlinear diffusion with a random source: generated fields ``[u, f]``."""

    name = "nonlinear_diffusion"
    fields = {"u": ("CG", 1), "f": ("CG", 1)}
    state_fields = ("u",)
    coefficient_fields = ("f",)
    dirichlet = {"on_boundary": 0.0}
    options = {"bumps": 4, "amplitude": 20.0, "width": 0.15}

    def residual(self, fields, v):
        u, f = fields["u"], fields["f"]
        return (1 + u**2) * ufl.inner(ufl.grad(u), ufl.grad(v)) * ufl.dx - f * v * ufl.dx

    def setup(self) -> None:
        self._f = fd.Function(self.spaces["f"], name="f")
        self._u = fd.Function(self.spaces["u"], name="u")
        form = self.residual({"u": self._u, "f": self._f}, fd.TestFunction(self.test_space))
        bc = fd.DirichletBC(self.test_space, 0.0, "on_boundary")
        self._solver = fd.NonlinearVariationalSolver(
            fd.NonlinearVariationalProblem(form, self._u, bcs=bc),
            solver_parameters={"snes_type": "newtonls", "snes_rtol": 1e-12, "snes_atol": 1e-13,
                               "snes_error_if_not_converged": True, "ksp_type": "preonly", "pc_type": "lu"})
        self._points = fd.Function(fd.VectorFunctionSpace(self.mesh, "CG", 1)).interpolate(
            fd.SpatialCoordinate(self.mesh)).dat.data_ro.copy()

    def draw_coefficients(self, rng):
        low, high = self._points.min(axis=0), self._points.max(axis=0)
        centres = rng.uniform(low, high, size=(self.values["bumps"], 2))
        heights = rng.normal(0.0, self.values["amplitude"], size=self.values["bumps"])
        distance2 = ((self._points[:, None, :] - centres[None]) ** 2).sum(axis=2)
        return {"f": np.exp(-distance2 / (2 * self.values["width"] ** 2)) @ heights}

    def solve(self, coefficients):
        self._f.assign(coefficients["f"])
        self._u.assign(0.0)
        self._solver.solve()
        return {"u": self._u.copy(deepcopy=True)}
