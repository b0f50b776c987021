"""Darcy flow on a 2D mesh: -div(K grad p) = f, zero normal flux, mean of p zero.

Fields are the pressure ``p`` and the permeability ``K``, both continuous
Lagrange of the same degree (P1 by default). The weak residual is

    R_i(p, K) = integral( K grad p . grad phi_i - f phi_i ) dx,

with the zero-flux condition natural. :meth:`DarcyProblem.strong_residual`
reports the strong-form-equivalent nodal value r = M_L^{-1} R (M_L the lumped
mass matrix), which approximates -div(K grad p) - f pointwise and is
comparable across meshes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

import firedrake as fd
import numpy as np
import torch
import ufl
from ufl.core.expr import Expr

from ..bridge import BatchedFormOperator, FieldLayout, TapedOperator, TorchFEM
from .darcy_batch_solve import NEUMANN_LU, BatchedDarcySolver, constant_nullspace, solve_from_zero, zero_mean
from .field_maps import neumann_laplacian_maps
from .problem import residual_kind

#: amplitude and box size of the paper's source on the unit square
PAPER_SOURCE_AMPLITUDE = 10.0
PAPER_SOURCE_BOX = 0.125
#: what :meth:`DarcyProblem.torch_residual` returns: nodal strong form, weak vector, preconditioned
RESIDUAL_KINDS = ("strong", "weak", "preconditioned")


def darcy_residual(p: Expr, K: Expr, v: Expr, f: Expr) -> ufl.Form:
    """Weak Darcy residual 1-form ``(K grad p . grad v - f v) dx``.

    Works for any UFL expressions ``p``, ``K``, ``f`` and test function ``v``.
    """
    return (K * ufl.inner(ufl.grad(p), ufl.grad(v)) - f * v) * ufl.dx


def _is_unit_square(mesh) -> bool:
    coords = mesh.coordinates.dat.data_ro
    lo, hi = coords.min(axis=0), coords.max(axis=0)
    area = fd.assemble(fd.Constant(1.0) * fd.dx(domain=mesh))
    return np.allclose(lo, 0.0, atol=1e-12) and np.allclose(hi, 1.0, atol=1e-12) and abs(area - 1.0) < 1e-10


def balanced_source(space: fd.FunctionSpace, positive: Expr, negative: Expr) -> fd.Function:
    """``positive - c * negative`` interpolated into ``space``, with c making its integral zero.

    The integrals use the same quadrature as the residual, so the discrete
    pure-Neumann problem is exactly compatible.
    """
    f_pos = fd.Function(space).interpolate(positive)
    f_neg = fd.Function(space).interpolate(negative)
    int_pos, int_neg = fd.assemble(f_pos * fd.dx), fd.assemble(f_neg * fd.dx)
    if int_pos <= 0 or int_neg <= 0:
        raise ValueError("source: a bump lies outside the mesh (zero integral); use a finer mesh")
    return fd.Function(space, name="f").assign(f_pos - (int_pos / int_neg) * f_neg)


def paper_source(space: fd.FunctionSpace) -> fd.Function:
    """The paper's source: +10 on [0, 0.125]^2, -10 on [0.875, 1]^2, zero elsewhere."""
    x, y = fd.SpatialCoordinate(space.mesh())
    a, b = PAPER_SOURCE_BOX, 1.0 - PAPER_SOURCE_BOX
    box_lo = ufl.conditional(ufl.And(ufl.le(x, a + 1e-12), ufl.le(y, a + 1e-12)), 1.0, 0.0)
    box_hi = ufl.conditional(ufl.And(ufl.ge(x, b - 1e-12), ufl.ge(y, b - 1e-12)), 1.0, 0.0)
    return balanced_source(space, PAPER_SOURCE_AMPLITUDE * box_lo, PAPER_SOURCE_AMPLITUDE * box_hi)


def bump_source(space: fd.FunctionSpace) -> fd.Function:
    """Smooth source and sink near two opposite corners of the mesh's bounding box.

    Gaussian bumps of amplitude 10 and width 1/16 of the bounding-box diagonal,
    centred at the mesh vertices nearest to the lower-left and upper-right
    corners (so that they lie in the domain), balanced to integrate to zero.
    """
    mesh = space.mesh()
    coords = mesh.coordinates.dat.data_ro
    lo, hi = coords.min(axis=0), coords.max(axis=0)
    width = np.linalg.norm(hi - lo) / 16.0
    inset = PAPER_SOURCE_BOX / 2 * (hi - lo)
    centres = [coords[np.argmin(np.linalg.norm(coords - corner, axis=1))] for corner in (lo + inset, hi - inset)]
    x = fd.SpatialCoordinate(mesh)
    bumps = [
        PAPER_SOURCE_AMPLITUDE * ufl.exp(-ufl.inner(x - fd.Constant(c), x - fd.Constant(c)) / (2 * width**2))
        for c in centres
    ]
    return balanced_source(space, *bumps)


@dataclass
class DarcyProblem:
    """Darcy flow on a mesh: spaces, source, residual forms and the solver.

    Parameters
    ----------
    mesh
        A 2D Firedrake mesh.
    degree
        Lagrange degree of both fields.
    source
        ``"auto"`` (the paper's source on the unit square, bumps elsewhere),
        ``"paper"``, ``"bumps"``, or a UFL expression (interpolated, then
        shifted by a constant so that it integrates to zero).
    """

    mesh: object
    degree: int = 1
    source: object = "auto"
    V: fd.FunctionSpace = field(init=False)
    f: fd.Function = field(init=False)
    #: packing of a sample row: ``[p, K]``, each in the DOF order of :attr:`V`
    layout: FieldLayout = field(init=False)

    def __post_init__(self):
        self.V = fd.FunctionSpace(self.mesh, "CG", self.degree)
        self.layout = FieldLayout.from_spaces({"p": self.V, "K": self.V})
        self.area = fd.assemble(fd.Constant(1.0) * fd.dx(domain=self.mesh))
        self.f = self._make_source(self.source)
        self._lumped_mass = fd.assemble(fd.TestFunction(self.V) * fd.dx).dat.data_ro.copy()
        self._K = fd.Function(self.V, name="K")
        self._p = fd.Function(self.V, name="p")
        self._solver = self._make_solver()
        self._batch_solvers: dict[int, BatchedDarcySolver] = {}
        self._torch_weak: dict[int, TorchFEM] = {}

    def _make_source(self, source) -> fd.Function:
        if not isinstance(source, str):
            f = fd.Function(self.V, name="f").interpolate(source)
            return f.assign(f - fd.assemble(f * fd.dx) / self.area)
        kind = source
        if kind == "auto":
            kind = "paper" if _is_unit_square(self.mesh) else "bumps"
        builders = {"paper": paper_source, "bumps": bump_source}
        if kind not in builders:
            raise ValueError(f"source must be 'auto', 'paper', 'bumps' or a UFL expression, got {source!r}")
        return builders[kind](self.V)

    def residual(self, p: Expr, K: Expr, v: Expr) -> ufl.Form:
        """Weak residual 1-form for fields ``p``, ``K`` and test function ``v``."""
        return darcy_residual(p, K, v, self.f)

    def residual_operator(self, chunk: int = 32) -> BatchedFormOperator:
        """Batched weak residual (fast path): rows ``[p, K]`` -> weak residual vectors."""
        return BatchedFormOperator(
            self.layout, lambda fields, data, v: self.residual(fields["p"], fields["K"], v), self.V, chunk=chunk
        )

    def taped_residual_operator(self) -> TapedOperator:
        """The same residual through pyadjoint (general path; a reference for the fast path)."""
        v = fd.TestFunction(self.V)
        return TapedOperator(self.layout, lambda fields, data: fd.assemble(self.residual(fields["p"], fields["K"], v)))

    def torch_residual(self, kind: str = "strong", chunk: int = 32) -> Callable[[torch.Tensor], torch.Tensor]:
        """Differentiable torch residual of batches of rows ``[p, K]``.

        Parameters
        ----------
        kind
            ``"strong"``: the strong-form-equivalent nodal residual ``r = M_L^{-1} R``;
            ``"weak"``: the weak residual vector ``R``; ``"preconditioned"``:
            ``z = G r``, G the zero-mean inverse of the unit-coefficient Neumann
            Laplacian (:func:`~pidm_fem.physics.field_maps.neumann_laplacian_maps`), so
            that ``z = A_1^{-1} R`` is the pressure error the residual would cause under
            unit permeability (for K = 1, exactly ``p - solve(K)``). Its squared norm
            weighs every mode of the pressure error alike (within the range of K),
            where r's weighs mode k by its squared eigenvalue (dense: at most
            :data:`~pidm_fem.physics.field_maps.MAX_DENSE_DOFS` DOFs).
        chunk
            Samples per assembly of the fast path.

        Raises
        ------
        ValueError
            If ``kind`` is not one of :data:`RESIDUAL_KINDS`.
        """
        residual_kind(kind, RESIDUAL_KINDS)
        if chunk not in self._torch_weak:  # one compiled operator serves every kind
            self._torch_weak[chunk] = TorchFEM(self.residual_operator(chunk))
        weak = self._torch_weak[chunk]
        if kind == "weak":
            return weak
        inverse_mass = torch.from_numpy(1.0 / self._lumped_mass)
        preconditioner = None
        if kind == "preconditioned":
            preconditioner = torch.from_numpy(self.laplacian_maps[1].T.copy())

        def residual(x: torch.Tensor) -> torch.Tensor:
            r = weak(x) * inverse_mass.to(device=x.device, dtype=x.dtype)
            return r if preconditioner is None else r @ preconditioner.to(device=x.device, dtype=x.dtype)

        return residual

    @cached_property
    def laplacian_maps(self) -> tuple[np.ndarray, np.ndarray]:
        """The dense unit-coefficient Neumann Laplacian ``M_L^{-1} A`` of :attr:`V` and its inverse G (built once).

        See :func:`~pidm_fem.physics.field_maps.neumann_laplacian_maps`.
        """
        return neumann_laplacian_maps(self.V)

    def lumped_mass(self) -> np.ndarray:
        """Diagonal of the lumped mass matrix of the field space (a copy)."""
        return self._lumped_mass.copy()

    def source_region(self, relative: float = 0.01) -> np.ndarray:
        """Boolean mask of the nodes where the source acts: ``|f| >= relative * max |f|``.

        For the paper's source, the two boxes in the corners; for the bumps, their cores.
        The evaluation splits the residual between this region and the rest.
        """
        if not 0 < relative < 1:
            raise ValueError(f"relative must lie in (0, 1), got {relative!r}")
        f = np.abs(self.f.dat.data_ro)
        return f >= relative * f.max()

    def strong_residual(self, weak: np.ndarray) -> np.ndarray:
        """Strong-form-equivalent nodal residual ``M_L^{-1} R`` of weak residual vectors."""
        return np.asarray(weak) / self._lumped_mass

    def weak_residual(self, p: fd.Function, K: fd.Function) -> np.ndarray:
        """Assembled weak residual vector for Functions ``p`` and ``K``."""
        return fd.assemble(self.residual(p, K, fd.TestFunction(self.V))).dat.data_ro.copy()

    def _make_solver(self) -> fd.LinearVariationalSolver:
        """Direct (MUMPS) solver of the pure-Neumann problem with its constant nullspace.

        MUMPS detects the single null pivot of the singular stiffness matrix
        (ICNTL(24)) and the Krylov wrapper removes the constant from the
        solution; the right-hand side is compatible by construction (the source
        integrates to zero), so the result is an exact discrete solution, up to
        the gauge that :meth:`solve` fixes. A direct factorisation is also
        deterministic, so a sample does not depend on what was solved before it.
        """
        u, v = fd.TrialFunction(self.V), fd.TestFunction(self.V)
        a = self._K * fd.inner(fd.grad(u), fd.grad(v)) * fd.dx
        L = self.f * v * fd.dx
        nullspace = constant_nullspace(self.V)
        problem = fd.LinearVariationalProblem(a, L, self._p, constant_jacobian=False)
        return fd.LinearVariationalSolver(
            problem, solver_parameters=NEUMANN_LU, nullspace=nullspace, transpose_nullspace=nullspace
        )

    def solve(self, K: fd.Function | np.ndarray) -> fd.Function:
        """Pressure with zero mean for permeability ``K`` (a Function or DOF values).

        Raises
        ------
        ValueError
            If ``K`` is not positive everywhere.
        firedrake.ConvergenceError
            If the linear solver does not converge.
        """
        values = K.dat.data_ro if isinstance(K, fd.Function) else np.asarray(K, dtype=float)
        if values.shape != self._K.dat.data_ro.shape:
            raise ValueError(f"K has shape {values.shape}, expected {self._K.dat.data_ro.shape}")
        if not np.all(np.isfinite(values)) or values.min() <= 0:
            raise ValueError("K must be finite and positive at every DOF")
        self._K.dat.data[:] = values
        solve_from_zero(self._solver, self._p)
        p = fd.Function(self.V, name="p")
        p.dat.data[:] = zero_mean(self._p.dat.data_ro, self._lumped_mass)
        return p

    def solve_many(self, K: np.ndarray, chunk: int = 16) -> np.ndarray:
        """Pressures with zero mean (B, n) for permeability DOF values ``K`` (B, n).

        The same solutions as :meth:`solve` (up to round-off), ``chunk`` samples per
        block-diagonal system (:class:`~pidm_fem.physics.darcy_batch_solve.BatchedDarcySolver`):
        several times faster for batches of the training meshes' size. Raises as
        :meth:`BatchedDarcySolver.solve <pidm_fem.physics.darcy_batch_solve.BatchedDarcySolver.solve>`.
        """
        if chunk not in self._batch_solvers:
            self._batch_solvers[chunk] = BatchedDarcySolver(self.V, self.f, self._lumped_mass, chunk)
        return self._batch_solvers[chunk].solve(K)
