"""Many Darcy solves in one: a block-diagonal system for a chunk of permeabilities.

The pressure for each of ``chunk`` permeabilities is a component of one Function in
a mixed space of ``chunk`` copies of the field space. One assembly builds the
block-diagonal stiffness matrix of every sample (the samples never couple), and one
MUMPS factorisation solves them all, the constant of each block in the nullspace.
Solving sample by sample pays a Firedrake solver call, an assembly and a
factorisation per sample; for the small systems of the training meshes much of that
is overhead, not arithmetic (``benchmarks/darcy_solve_speed.py``: 4.3x on 525 DOFs,
1.6x on 2,017).
"""

from __future__ import annotations

import firedrake as fd
import numpy as np
import ufl

from ..bridge import pad_rows

#: direct solve of a singular pure-Neumann system: MUMPS detects the null pivots
#: (ICNTL(24)) and the Krylov wrapper removes the nullspace from the solution
NEUMANN_LU = {
    "ksp_type": "preonly",
    "pc_type": "lu",
    "pc_factor_mat_solver_type": "mumps",
    "mat_mumps_icntl_24": 1,
    "ksp_error_if_not_converged": True,
}


def constant_nullspace(space: fd.FunctionSpace) -> fd.VectorSpaceBasis | fd.MixedVectorSpaceBasis:
    """The constants of ``space``, or of each of its subspaces for a mixed space."""
    if len(space) == 1:
        return fd.VectorSpaceBasis(constant=True, comm=space.mesh().comm)
    return fd.MixedVectorSpaceBasis(space, [fd.VectorSpaceBasis(constant=True, comm=space.mesh().comm)
                                            for _ in range(len(space))])


def solve_from_zero(solver: fd.LinearVariationalSolver, solution: fd.Function) -> None:
    """Run ``solver`` from a zero ``solution`` (the solve updates the current value: reproducible bits).

    Raises
    ------
    firedrake.ConvergenceError
        If PETSc reports a failure.
    """
    solution.assign(0.0)
    try:
        solver.solve()
    except fd.petsc.PETSc.Error as err:
        raise fd.ConvergenceError(f"Darcy solve failed: {err}") from err


def zero_mean(p: np.ndarray, lumped_mass: np.ndarray) -> np.ndarray:
    """Pressures ``p`` (..., n) less their means ``sum_i m_i p_i / sum_i m_i``.

    With ``lumped_mass`` the integrals of the basis functions, ``sum_i m_i p_i`` is the
    exact integral of the field (for any degree), and ``sum_i m_i`` the domain's area.
    """
    return p - (p @ lumped_mass)[..., None] / lumped_mass.sum()


class BatchedDarcySolver:
    """Zero-mean pressures of -div(K grad p) = f with zero flux, for a chunk of K at a time.

    Parameters
    ----------
    space
        The scalar field space of p and K.
    source
        The source f in ``space``; it must integrate to zero.
    lumped_mass
        Diagonal of the lumped mass matrix of ``space`` (the integrals of its basis
        functions), for the zero-mean gauge.
    chunk
        Samples per block-diagonal system; a smaller batch is padded.
    """

    def __init__(self, space: fd.FunctionSpace, source: fd.Function, lumped_mass: np.ndarray, chunk: int = 16):
        if chunk < 1:
            raise ValueError(f"chunk must be at least 1, got {chunk}")
        self.chunk = chunk
        batched = fd.MixedFunctionSpace([space] * chunk)
        self._K = fd.Function(batched, name="K_batch")
        self._p = fd.Function(batched, name="p_batch")
        u, v, K = fd.TrialFunctions(batched), fd.TestFunctions(batched), fd.split(self._K)
        a = sum(K[i] * ufl.inner(ufl.grad(u[i]), ufl.grad(v[i])) for i in range(chunk)) * ufl.dx
        L = sum(source * v[i] for i in range(chunk)) * ufl.dx
        nullspace = constant_nullspace(batched)
        problem = fd.LinearVariationalProblem(a, L, self._p, constant_jacobian=False)
        self._solver = fd.LinearVariationalSolver(
            problem, solver_parameters=NEUMANN_LU, nullspace=nullspace, transpose_nullspace=nullspace
        )
        self._mass = np.asarray(lumped_mass, dtype=float)

    def solve(self, K: np.ndarray) -> np.ndarray:
        """Pressures (B, n) with zero mean for permeabilities ``K`` (B, n), finite and positive.

        Raises
        ------
        ValueError
            If ``K`` has the wrong shape or a value that is not finite and positive.
        firedrake.ConvergenceError
            If the linear solver fails.
        """
        K = np.asarray(K, dtype=float)
        n = self._mass.shape[0]
        if K.ndim != 2 or K.shape[1] != n:
            raise ValueError(f"K has shape {K.shape}, expected (B, {n})")
        if not np.all(np.isfinite(K)) or (K.size and K.min() <= 0):
            raise ValueError("K must be finite and positive at every DOF")
        pressures = [self._solve_chunk(K[start:start + self.chunk]) for start in range(0, len(K), self.chunk)]
        return np.concatenate(pressures) if pressures else np.empty((0, n))

    def _solve_chunk(self, K: np.ndarray) -> np.ndarray:
        rows = len(K)
        for values, data in zip(pad_rows(K, self.chunk), self._K.dat.data):
            data[:] = values
        solve_from_zero(self._solver, self._p)
        return zero_mean(np.stack(self._p.dat.data_ro[:rows]), self._mass)
