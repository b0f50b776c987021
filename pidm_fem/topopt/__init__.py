"""Classical SIMP topology optimisation on Firedrake meshes: filters, projection, OC and MMA."""

from .filters import FILTERS, DensityFilter, HelmholtzFilter, SensitivityFilter, build_filter
from .mbb import mbb_beam
from .simp import OPTIMIZERS, SIMPResult, SIMPSettings, optimality_criteria, optimise

__all__ = [
    "FILTERS",
    "OPTIMIZERS",
    "DensityFilter",
    "HelmholtzFilter",
    "SIMPResult",
    "SIMPSettings",
    "SensitivityFilter",
    "build_filter",
    "mbb_beam",
    "optimality_criteria",
    "optimise",
]
