"""Dense matrices of the pure-Neumann Laplacian of a scalar field, as a change of coordinates.

For a pressure-like field p in a scalar Lagrange space V, ``q = M_L^{-1} A p`` (A the
stiffness matrix of ``inner(grad(u), grad(v)) * dx``, M_L the lumped mass) is the
strong-form-equivalent nodal value of ``-div(grad(p))``. The map is invertible on
fields of zero mean: ``p = G q`` solves the pure-Neumann problem ``A p = M_L q`` (the
constant part of q, which no p can produce, is dropped) with the gauge
``sum_i w_i p_i = 0``, w the lumped mass (the integral of a P1 field).

A generative model that works on q instead of p makes errors that reach p only
through G, a smoothing operator, so that they are not amplified by the second
derivatives of the residual of an elliptic problem (see
:class:`pidm_fem.diffusion.normalization.LinearChannelMap`).
"""

from __future__ import annotations

import firedrake as fd
import numpy as np

#: largest number of DOFs for which the dense matrices are built (two n x n float64 arrays)
MAX_DENSE_DOFS = 10_000


def neumann_laplacian_maps(V: fd.FunctionSpace) -> tuple[np.ndarray, np.ndarray]:
    """The forward map ``M_L^{-1} A`` and its zero-mean inverse G, each (n, n) float64.

    Parameters
    ----------
    V
        A scalar function space on a serial mesh.

    Raises
    ------
    ValueError
        If V is not scalar or has more than :data:`MAX_DENSE_DOFS` DOFs.
    """
    if V.value_shape:
        raise ValueError(f"the Neumann Laplacian map needs a scalar space, got value shape {V.value_shape}")
    n = V.dof_count
    if n > MAX_DENSE_DOFS:
        raise ValueError(f"the Neumann Laplacian map is dense: {n} DOFs exceed the limit of {MAX_DENSE_DOFS}")
    u, v = fd.TrialFunction(V), fd.TestFunction(V)
    stiffness = fd.assemble(fd.inner(fd.grad(u), fd.grad(v)) * fd.dx).petscmat.convert("dense")
    A = np.array(stiffness.getDenseArray(), dtype=np.float64)
    weights = fd.assemble(v * fd.dx).dat.data_ro.copy()
    saddle = np.zeros((n + 1, n + 1))
    saddle[:n, :n] = A
    saddle[:n, n] = saddle[n, :n] = weights
    rhs = np.zeros((n + 1, n))
    rhs[np.arange(n), np.arange(n)] = weights
    inverse = np.linalg.solve(saddle, rhs)[:n]
    return A / weights[:, None], inverse
