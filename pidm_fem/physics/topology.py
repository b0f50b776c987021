"""Topology design as a :class:`~pidm_fem.physics.problem.Problem`: generate (u, rho) given loads, supports, volume.

The samples are SIMP optima of random problems (:mod:`pidm_fem.physics.topology_data`).
The model generates the displacement ``u`` and the density ``rho`` (P1), conditioned on
the strain energy density and von Mises stress of the fully solid design, the volume
fraction, the support mask and the nodal load.

The physics of a row, batched through the bridge, sees the density projected onto [0, 1]
(``clamp``: a generated density outside the range is read as void or solid, and the
physics terms do not push it back; the data term does), so that the SIMP modulus stays
positive:

* the equilibrium residual ``R = K(rho) u - f`` of the plane-stress weak form, with the
  supports imposed (the displacement's supported components are set to zero before the
  residual is assembled, and the residual's there, the reactions, are dropped), reported
  as ``M_L^{-1} R`` (``"strong"``) or R (``"weak"``);
* the volume fraction's mismatch ``integral rho / |Omega| - volfrac`` (equality term);
* the compliance ``u^T K(rho) u`` (objective term).

Designs are judged thresholded, by independent solves (:mod:`pidm_fem.physics.topology_metrics`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from functools import cached_property
from typing import Any

import numpy as np
import torch

from pidm_fem.physics.elasticity import Material, stiffness_form
from pidm_fem.physics.problem import GeneratedProblem, RowFunction, residual_kind
from pidm_fem.physics.topology_metrics import DesignJudge
from pidm_fem.physics.topology_data import (
    CONDITIONS,
    TopologyDataSettings,
    TopologySampleGenerator,
    make_topology_generator,
)

RESIDUAL_KINDS = ("strong", "weak")


class TopologyDesign(GeneratedProblem):
    """Minimum-compliance designs on a mesh, from their data settings."""

    name = "topology"
    coefficient_fields = ("rho",)
    state_fields = ("u",)
    conditions = CONDITIONS
    make_generator = staticmethod(make_topology_generator)

    def __init__(self, settings: TopologyDataSettings, material: Material | None = None):
        self.data_settings = settings
        self.generator = TopologySampleGenerator(settings)
        self.layout = self.generator.layout
        self.material = material or Material()
        self._residuals: dict[str, RowFunction] = {}

    @classmethod
    def from_options(cls, mesh: str, seed: int = 0, **options: Any) -> "TopologyDesign":
        """The problem on the mesh file ``mesh`` with data seed ``seed`` and further settings."""
        return cls(TopologyDataSettings(mesh=str(mesh), seed=seed, **options))

    def with_split(self, split: str) -> "TopologyDesign":
        """The same problem drawing its samples from another split."""
        return TopologyDesign(replace(self.data_settings, split=split), self.material)

    # --- the physics -----------------------------------------------------------------------
    @cached_property
    def _measure(self):
        import firedrake as fd

        return fd.dx(domain=self.generator.mesh, degree=2 + int(np.ceil(self.material.penal)))

    @cached_property
    def lumped_mass(self) -> np.ndarray:
        """(2 n,) lumped mass of the displacement's components, in the row's order."""
        import firedrake as fd

        return np.repeat(fd.assemble(fd.TestFunction(self.generator.P1) * fd.dx).dat.data_ro, 2)

    def _operator(self, test: bool):
        from pidm_fem.bridge import BatchedFormOperator

        spaces = {"u": self.generator.V, "rho": self.generator.P1}
        if test:
            return BatchedFormOperator(
                spaces, lambda f, d, v: stiffness_form(self.material, f["u"], v, f["rho"], self._measure),
                self.generator.V)
        return BatchedFormOperator(
            spaces, lambda f, d, v: stiffness_form(self.material, f["u"], f["u"], f["rho"], self._measure))

    def _blocks(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The row's fields by name, the density projected onto [0, 1]."""
        blocks = {name: x[:, self.layout.block(name)] for name in self.layout.names}
        blocks["rho"] = blocks["rho"].clamp(0.0, 1.0)
        return blocks

    @cached_property
    def judge(self) -> DesignJudge:
        """Thresholded designs of rows: compliance, volume fraction, floating material, load contact."""
        return DesignJudge(self.generator, self.material)

    def torch_residual(self, kind: str = "strong") -> RowFunction:
        """``"strong"``: ``M_L^{-1} (K(rho) u - f)``; ``"weak"``: ``K(rho) u - f``; supports imposed
        (a ValueError for another ``kind``)."""
        if residual_kind(kind, RESIDUAL_KINDS) not in self._residuals:
            from pidm_fem.bridge import TorchFEM

            stiffness = TorchFEM(self._operator(test=True))
            inverse_mass = torch.from_numpy(1.0 / self.lumped_mass)

            def residual(x: torch.Tensor, strong: bool = kind == "strong") -> torch.Tensor:
                blocks = self._blocks(x)
                free = 1.0 - blocks["support"]
                r = (stiffness(torch.cat([blocks["u"] * free, blocks["rho"]], dim=1)) - blocks["load"]) * free
                return r * inverse_mass.to(device=x.device, dtype=x.dtype) if strong else r

            self._residuals[kind] = residual
        return self._residuals[kind]

    def functionals(self) -> Mapping[str, RowFunction]:
        """``equality``: the volume fraction's mismatch; ``objective``: the compliance ``u^T K(rho) u``."""
        from pidm_fem.bridge import TorchFEM

        energy = TorchFEM(self._operator(test=False))
        weights = torch.from_numpy(self.weights() / self.weights().sum())

        def volume_mismatch(x: torch.Tensor) -> torch.Tensor:
            blocks = self._blocks(x)
            return blocks["rho"] @ weights.to(device=x.device, dtype=x.dtype) - blocks["volfrac"][:, 0]

        def compliance(x: torch.Tensor) -> torch.Tensor:
            blocks = self._blocks(x)
            return energy(torch.cat([blocks["u"] * (1.0 - blocks["support"]), blocks["rho"]], dim=1)).reshape(-1)

        return {"equality": volume_mismatch, "objective": compliance}

    def weights(self) -> np.ndarray:
        """The P1 lumped mass (the nodes of every field)."""
        return self.lumped_mass[::2].copy()

    def inadmissible(self, rows: np.ndarray) -> np.ndarray:
        """Rows with a non-finite value or a density outside [0, 1]."""
        rows = self.layout.check(rows)
        rho = rows[:, self.layout.block("rho")]
        return super().inadmissible(rows) | ~((rho >= 0) & (rho <= 1)).all(axis=1)
