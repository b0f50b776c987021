"""Darcy samples: a log-normal permeability and the pressure that solves for it."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

import numpy as np

from ..mesh import MeshError, load_mesh, mesh_fingerprint
from .darcy import DarcyProblem
from .permeability import KarhunenLoeve, MaternField


@dataclass(frozen=True)
class DarcyDataSettings:
    """Everything a Darcy sample depends on besides its index.

    Parameters
    ----------
    mesh
        Mesh file the samples live on.
    degree
        Lagrange degree of p and K.
    sampler
        ``"kl"`` (truncated Karhunen-Loeve, dense) or ``"matern"`` (Firedrake's
        autoregressive covariance, no dense matrices).
    length
        Correlation length of log K.
    n_modes
        KL modes (``"kl"`` only).
    seed
        Base seed; sample ``i`` uses the seed sequence ``(seed, i)``.
    source
        Source term kind (see :class:`DarcyProblem`).
    """

    mesh: str
    degree: int = 1
    sampler: str = "kl"
    length: float = 0.1
    n_modes: int = 64
    seed: int = 0
    source: str = "auto"

    def as_dict(self) -> dict:
        """JSON-serialisable settings (the mesh as an absolute path)."""
        out = asdict(self)
        out["mesh"] = os.path.abspath(self.mesh)
        return out


class DarcySampleGenerator:
    """Sample ``i`` as a row ``[p, K]`` (fields packed by :attr:`layout`)."""

    def __init__(self, settings: DarcyDataSettings, mesh=None):
        self.settings = settings
        self.mesh = mesh if mesh is not None else load_mesh(settings.mesh)
        self.problem = DarcyProblem(self.mesh, degree=settings.degree, source=settings.source)
        V = self.problem.V
        self.layout = self.problem.layout
        if settings.sampler == "kl":
            if V.dim() <= settings.n_modes:
                raise MeshError(settings.mesh, f"{V.dim()} nodes are too few for the Darcy permeability's "
                                               f"{settings.n_modes} KL modes (it needs more nodes than modes)")
            self.field = KarhunenLoeve(V, length=settings.length, n_modes=settings.n_modes)
        elif settings.sampler == "matern":
            self.field = MaternField(V, length=settings.length)
        else:
            raise ValueError(f"sampler must be 'kl' or 'matern', got {settings.sampler!r}")

    @property
    def fingerprint(self) -> str:
        """Fingerprint of the mesh and field degree the rows refer to."""
        return f"{mesh_fingerprint(self.mesh)}-P{self.settings.degree}"

    def rng(self, index: int) -> np.random.Generator:
        """The random generator of sample ``index``."""
        return np.random.default_rng(np.random.SeedSequence([self.settings.seed, index]))

    def __call__(self, index: int) -> np.ndarray:
        K = self.field.sample(self.rng(index), 1)[0]
        p = self.problem.solve(K)
        return self.layout.join({"p": p.dat.data_ro[None, :], "K": K[None, :]})[0]


def make_darcy_generator(settings: DarcyDataSettings) -> DarcySampleGenerator:
    """Picklable factory for worker processes (use with ``functools.partial``)."""
    return DarcySampleGenerator(settings)
