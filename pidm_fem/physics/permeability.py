"""Log-normal permeability fields K = exp(G) on a mesh.

Two generators of the Gaussian field G:

* :class:`KarhunenLoeve`: truncated Karhunen-Loeve expansion of the exponential
  covariance exp(-|x - x'| / length), computed on the mesh as the generalized
  eigenproblem (M C M) phi = lambda M phi, with C the kernel at the DOF points and
  M the lumped mass matrix. The eigenvalues approximate those of the integral
  operator, so they do not depend on node density. Dense kernel matrix: for
  meshes up to ~10^4 DOFs.
* :class:`MaternField`: Firedrake's white-noise generator and autoregressive
  (Matern-type) covariance operator from ``firedrake.adjoint``; no dense matrix,
  for large meshes.
"""

from __future__ import annotations

import firedrake as fd
import numpy as np
import scipy.linalg
import scipy.sparse.linalg
import scipy.spatial


def dof_coordinates(space: fd.FunctionSpace) -> np.ndarray:
    """Coordinates of the DOFs of a scalar Lagrange space, shape (n_dofs, gdim)."""
    mesh = space.mesh()
    vector = fd.VectorFunctionSpace(mesh, space.ufl_element())
    return fd.Function(vector).interpolate(fd.SpatialCoordinate(mesh)).dat.data_ro.copy()


class KarhunenLoeve:
    """Truncated KL expansion of G with exponential covariance.

    The covariance operator's eigenpairs are computed from the generalized
    eigenproblem ``(M C M) phi = lambda M phi`` with ``C`` the kernel at the DOF
    points and ``M`` the lumped P1 mass matrix (Nystrom's method with the nodal
    quadrature), solved as the symmetric problem ``S u = lambda u``,
    ``S = M^1/2 C M^1/2``, ``phi = M^-1/2 u``. The eigenvalues approximate those of
    the integral operator, so they converge under refinement instead of growing
    with the number of nodes. (The consistent mass matrix smooths the kernel's
    cusp at x = x' and converges much more slowly for the higher modes.)

    Parameters
    ----------
    space
        Scalar P1 space of K.
    length
        Correlation length of exp(-|x - x'| / length).
    n_modes
        Number of KL modes kept.
    variance
        Pointwise variance of the untruncated kernel.
    """

    def __init__(self, space: fd.FunctionSpace, length: float = 0.1, n_modes: int = 64, variance: float = 1.0):
        if space.ufl_element().degree() != 1 or space.value_shape:
            raise ValueError("KarhunenLoeve needs a scalar P1 space (nodal quadrature)")
        self.space, self.length, self.n_modes, self.variance = space, length, n_modes, variance
        x = dof_coordinates(space)
        n = len(x)
        if not 0 < n_modes < n:
            raise ValueError(f"n_modes={n_modes} must be between 1 and the {n} DOFs of the space")
        root_mass = np.sqrt(fd.assemble(fd.TestFunction(space) * fd.dx).dat.data_ro)
        s = scipy.spatial.distance.cdist(x, x)
        np.multiply(s, -1.0 / length, out=s)
        np.exp(s, out=s)
        s *= variance * root_mass[:, None]
        s *= root_mass[None, :]
        if 3 * n_modes < n:
            # A fixed start vector keeps ARPACK (and so every draw) deterministic.
            values, vectors = scipy.sparse.linalg.eigsh(s, k=n_modes, which="LA", tol=1e-13, v0=root_mass)
        else:
            values, vectors = scipy.linalg.eigh(s, subset_by_index=(n - n_modes, n - 1))
        order = np.argsort(values)[::-1]
        # Sign convention: each mode's largest-magnitude entry is positive.
        vectors *= np.sign(vectors[np.abs(vectors).argmax(axis=0), np.arange(vectors.shape[1])])
        #: eigenvalues of the covariance operator, largest first
        self.eigenvalues = values[order]
        #: lumped-mass-orthonormal eigenfunctions as DOF vectors, shape (n_dofs, n_modes)
        self.modes = vectors[:, order] / root_mass[:, None]

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


class _SeededNoise:
    """White noise drawn from a fixed seed, for one call of a covariance's ``sample``."""

    def __init__(self, noise, seed: int):
        from firedrake.randomfunctiongen import PCG64, RandomGenerator

        self.noise, self.generator = noise, RandomGenerator(PCG64(seed=seed))

    def sample(self, apply_riesz: bool = False, tensor=None):
        return self.noise.sample(rng=self.generator, apply_riesz=apply_riesz, tensor=tensor)


class MaternField:
    """Matern-type G from Firedrake's white noise and autoregressive covariance.

    G = B^1/2 w with w white noise (mass-matrix square root, element by element)
    and B the m-th order autoregressive covariance, applied as m/2 implicit
    diffusion solves: no dense matrix, so it serves large meshes.

    Parameters
    ----------
    space
        Scalar Lagrange space of K.
    length
        Correlation length (Daley length scale).
    smoothness
        Order m of the autoregressive kernel: even, at least 4 in 2D.
    variance
        Pointwise variance of G (away from the boundary).
    """

    def __init__(self, space: fd.FunctionSpace, length: float = 0.1, smoothness: int = 4, variance: float = 1.0):
        from firedrake.adjoint import AutoregressiveCovariance, WhiteNoiseGenerator

        self.space = space
        self.noise = WhiteNoiseGenerator(space, seed=0)
        self.covariance = AutoregressiveCovariance(
            space, length, sigma=float(np.sqrt(variance)), m=smoothness, rng=self.noise,
            solver_parameters={"ksp_type": "cg", "ksp_rtol": 1e-12, "pc_type": "icc"},
        )

    def sample_log(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` draws of G as DOF vectors, shape (n, n_dofs); each seeded from ``rng``."""
        out = np.empty((n, self.space.dof_count))
        for i in range(n):
            noise = _SeededNoise(self.noise, int(rng.integers(2**63 - 1)))
            out[i] = self.covariance.sample(rng=noise).dat.data_ro
        return out

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` draws of K = exp(G) as DOF vectors, shape (n, n_dofs)."""
        return np.exp(self.sample_log(rng, n))
