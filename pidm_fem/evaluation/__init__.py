"""Evaluation metrics of generated fields, in plain PyTorch and numpy.

Samples are physical values (B, C, n) on mesh nodes; the physics enters as a
nodal residual callable (B, C, n) -> (B, n) and, optionally, a state solver
(B, C, n) -> (B, n). Physics metrics (mean |r| per sample, the trivial field, the
state error against a solve) live in :mod:`~pidm_fem.evaluation.physics_metrics`,
fidelity to the data distribution (per-field statistics, energy and sliced Wasserstein
distances) in :mod:`~pidm_fem.evaluation.distribution`, and the comparison of
several methods with its Markdown table in :mod:`~pidm_fem.evaluation.report`.
"""

from __future__ import annotations

from pidm_fem.evaluation.distribution import (
    dof_features,
    energy_distance,
    field_statistics,
    fidelity_metrics,
    sliced_wasserstein,
)
from pidm_fem.evaluation.physics_metrics import (
    abs_residual_by_region,
    mean_abs_residual,
    mismatched_pairs,
    relative_state_error,
    residual_summary,
    zero_channel,
)
from pidm_fem.evaluation.report import evaluate_methods, markdown_table

__all__ = [
    "abs_residual_by_region",
    "dof_features",
    "energy_distance",
    "evaluate_methods",
    "fidelity_metrics",
    "field_statistics",
    "markdown_table",
    "mean_abs_residual",
    "mismatched_pairs",
    "relative_state_error",
    "residual_summary",
    "sliced_wasserstein",
    "zero_channel",
]
