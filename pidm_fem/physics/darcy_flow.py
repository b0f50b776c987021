"""Darcy flow as a :class:`~pidm_fem.physics.problem.Problem`: the generated fields ``[p, K]``.

Samples are a log-normal permeability K and the pressure p that solves
``-div(K grad p) = f`` for it (zero flux, zero mean); the residual is the weak form's
strong-form-equivalent nodal scaling ``M_L^{-1} R``; the state solve is the FEM
pressure of a sample's own K; the network may see elliptic coordinates (the
pressure's Neumann Laplacian and log K).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import torch

from pidm_fem.physics.darcy_data import DarcyDataSettings, DarcySampleGenerator, make_darcy_generator
from pidm_fem.physics.problem import (
    Coordinates,
    GeneratedProblem,
    LinearCoordinates,
    LogCoordinates,
    RowFunction,
)


class DarcyFlow(GeneratedProblem):
    """Darcy flow on a mesh, from its data settings (:class:`~pidm_fem.physics.darcy_data.DarcyDataSettings`).

    Parameters
    ----------
    settings
        The mesh file and the permeability and source settings.
    """

    name = "darcy"
    coefficient_fields = ("K",)
    state_fields = ("p",)
    make_generator = staticmethod(make_darcy_generator)

    def __init__(self, settings: DarcyDataSettings):
        self.data_settings = settings
        self.generator = DarcySampleGenerator(settings)
        #: the PDE (:class:`~pidm_fem.physics.darcy.DarcyProblem`): spaces, forms, solvers
        self.pde = self.generator.problem
        self.layout = self.generator.layout
        self._residuals: dict[str, RowFunction] = {}

    @classmethod
    def from_options(cls, mesh: str, seed: int = 0, **options: Any) -> "DarcyFlow":
        """The problem on the mesh file ``mesh`` with data seed ``seed`` and further settings."""
        return cls(DarcyDataSettings(mesh=str(mesh), seed=seed, **options))

    def with_seed(self, seed: int) -> "DarcyFlow":
        """The same problem with another data seed (itself when the seed is its own)."""
        return self if seed == self.data_settings.seed else DarcyFlow(replace(self.data_settings, seed=seed))

    def torch_residual(self, kind: str = "strong") -> RowFunction:
        """``"strong"`` (``M_L^{-1} R``), ``"weak"`` (R) or ``"preconditioned"`` (see
        :meth:`~pidm_fem.physics.darcy.DarcyProblem.torch_residual`), built once each."""
        if kind not in self._residuals:
            self._residuals[kind] = self.pde.torch_residual(kind)
        return self._residuals[kind]

    def has_state_solve(self) -> bool:
        return True

    def solve_state(self, rows: np.ndarray) -> np.ndarray:
        """The zero-mean pressure solved for each row's K; NaN where K is not finite and positive."""
        permeability = self.layout.split(np.asarray(rows, dtype=np.float64))["K"]
        solved = np.full(permeability.shape, np.nan)
        valid = np.all(np.isfinite(permeability), axis=1) & (permeability.min(axis=1) > 0)
        if valid.any():
            solved[valid] = self.pde.solve_many(permeability[valid])
        return solved

    def torch_state_misfit(self) -> RowFunction:
        """``m = sqrt(w) (p - mean_w(p) - S(K)) / ||S(K)||_w`` per row, with the lumped mass ``w``.

        ``sum(m^2)`` is the squared relative state error the evaluation reports.
        Differentiable with respect to p; S(K), the pressure solved for the row's own K,
        is a constant (K is the sample's coefficient). A row without a finite positive K
        has a zero misfit.
        """

        def misfit(rows: torch.Tensor) -> torch.Tensor:
            p = rows[:, self.layout.block("p")]
            weights = torch.as_tensor(self.pde.lumped_mass(), dtype=p.dtype, device=p.device)
            solved = torch.from_numpy(self.solve_state(rows.detach().cpu().double().numpy()))
            solved = solved.to(dtype=p.dtype, device=p.device)
            valid = torch.isfinite(solved).all(dim=1, keepdim=True)
            solved = torch.where(valid, solved, torch.zeros_like(solved))
            norm = (weights * solved.pow(2)).sum(dim=1, keepdim=True).sqrt().clamp(min=torch.finfo(p.dtype).tiny)
            gauged = p - (p * weights).sum(dim=1, keepdim=True) / weights.sum()
            return torch.where(valid, weights.sqrt() * (gauged - solved) / norm, torch.zeros_like(p))

        return misfit

    def channel_maps(self, representation: str) -> dict[str, Coordinates]:
        """``"nodal"``: p and K themselves; ``"elliptic"``: the pressure's Neumann Laplacian
        ``M_L^{-1} A p`` (so that the network's errors reach p through the smoothing inverse)
        and ``log K`` (so that K stays positive)."""
        if representation == "elliptic":
            return {"p": LinearCoordinates(*self.pde.laplacian_maps), "K": LogCoordinates()}
        return super().channel_maps(representation)

    def weights(self) -> np.ndarray:
        return self.pde.lumped_mass()

    def gauge(self, rows: np.ndarray) -> np.ndarray:
        """A copy of ``rows`` whose pressure has zero mean over the domain.

        The mean is the integral of the P1 pressure over the area: the lumped mass
        entries are the integrals of the basis functions, so ``M_L . p / sum(M_L)`` is
        exact (the gauge :meth:`~pidm_fem.physics.darcy.DarcyProblem.solve` uses).
        """
        rows = super().gauge(rows)
        weights = self.pde.lumped_mass()
        pressure = rows[:, self.layout.block("p")]
        pressure -= (pressure @ weights / weights.sum())[:, None]
        return rows

    def regions(self) -> dict[str, np.ndarray]:
        """Where the source acts (:meth:`~pidm_fem.physics.darcy.DarcyProblem.source_region`) and elsewhere."""
        source = self.pde.source_region()
        return {"source": source, "elsewhere": ~source}

    def inadmissible(self, rows: np.ndarray) -> np.ndarray:
        """Rows with a non-finite value or a permeability that is not positive everywhere."""
        rows = self.layout.check(rows)
        return super().inadmissible(rows) | ~(rows[:, self.layout.block("K")] > 0).all(axis=1)
