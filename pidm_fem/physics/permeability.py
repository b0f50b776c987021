"""Log-normal permeability fields K = exp(G) on a mesh.

Two generators of the Gaussian field G:

* :class:`KarhunenLoeve`: truncated Karhunen-Loeve expansion of the exponential
  covariance exp(-|x - x'| / length), computed on the mesh as the generalized
  eigenproblem (M C M) phi = lambda M phi, with C the kernel at the DOF points and
  M the mass matrix. The eigenvalues approximate those of the integral operator,
  so they do not depend on node density. Dense: for meshes up to ~10^4 DOFs.
* :class:`MaternField`: Firedrake's white-noise generator and autoregressive
  (Matern-type) covariance operator from ``firedrake.adjoint``; no dense matrix,
  for large meshes.
"""

from __future__ import annotations

import firedrake as fd
import numpy as np
import scipy.linalg
import scipy.spatial


def dof_coordinates(space: fd.FunctionSpace) -> np.ndarray:
    """Coordinates of the DOFs of a scalar Lagrange space, shape (n_dofs, gdim)."""
    mesh = space.mesh()
    vector = fd.VectorFunctionSpace(mesh, space.ufl_element())
    return fd.Function(vector).interpolate(fd.SpatialCoordinate(mesh)).dat.data_ro.copy()


def mass_matrix(space: fd.FunctionSpace) -> np.ndarray:
    """Dense consistent mass matrix of ``space``."""
    u, v = fd.TrialFunction(space), fd.TestFunction(space)
    return fd.assemble(u * v * fd.dx).petscmat.convert("dense").getDenseArray().copy()


class KarhunenLoeve:
    """Truncated KL expansion of G with exponential covariance.

    Parameters
    ----------
    space
        Scalar Lagrange space of K.
    length
        Correlation length of exp(-|x - x'| / length).
    n_modes
        Number of KL modes kept.
    variance
        Pointwise variance of the untruncated kernel.
    """

    def __init__(self, space: fd.FunctionSpace, length: float = 0.1, n_modes: int = 64, variance: float = 1.0):
        self.space, self.length, self.n_modes, self.variance = space, length, n_modes, variance
        x = dof_coordinates(space)
        if n_modes > len(x):
            raise ValueError(f"n_modes={n_modes} exceeds the {len(x)} DOFs of the space")
        kernel = variance * np.exp(-scipy.spatial.distance.cdist(x, x) / length)
        mass = mass_matrix(space)
        a = mass @ kernel @ mass
        n = len(x)
        values, vectors = scipy.linalg.eigh(a, mass, subset_by_index=(n - n_modes, n - 1))
        order = np.argsort(values)[::-1]
        #: eigenvalues of the covariance operator, largest first
        self.eigenvalues = values[order]
        #: M-orthonormal eigenfunctions as DOF vectors, shape (n_dofs, n_modes)
        self.modes = vectors[:, order]

    def truncated_covariance(self) -> np.ndarray:
        """Covariance sum_k lambda_k phi_k(x) phi_k(x') between DOFs, shape (n, n)."""
        scaled = self.modes * self.eigenvalues
        return scaled @ self.modes.T

    def sample_log(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` draws of G as DOF vectors, shape (n, n_dofs)."""
        xi = rng.standard_normal((n, self.n_modes))
        return (xi * np.sqrt(self.eigenvalues)) @ self.modes.T

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` draws of K = exp(G) as DOF vectors, shape (n, n_dofs)."""
        return np.exp(self.sample_log(rng, n))


class MaternField:
    """Matern-type G from Firedrake's white noise and autoregressive covariance.

    Parameters
    ----------
    space
        Scalar Lagrange space of K.
    length
        Correlation length.
    smoothness
        Number of autoregressive (Helmholtz) steps; 1 is the exponential-like case.
    variance
        Pointwise variance of G.
    """

    def __init__(self, space: fd.FunctionSpace, length: float = 0.1, smoothness: int = 2, variance: float = 1.0):
        from firedrake.adjoint import AutoregressiveCovariance

        self.space = space
        self.covariance = AutoregressiveCovariance(space, length, sigma=np.sqrt(variance), m=smoothness, seed=None)

    def sample_log(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` draws of G as DOF vectors, shape (n, n_dofs)."""
        out = np.empty((n, self.space.dof_count))
        for i in range(n):
            seed = int(rng.integers(2**31 - 1))
            out[i] = self.covariance.sample(rng=seed).dat.data_ro
        return out

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` draws of K = exp(G) as DOF vectors, shape (n, n_dofs)."""
        return np.exp(self.sample_log(rng, n))
