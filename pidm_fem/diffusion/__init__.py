"""The diffusion core of pidm_fem, in plain PyTorch.

A sample is a tensor (C, n): C fields on n mesh nodes; batches are (B, C, n).
Denoisers are modules ``model(x_t, t, cond=None, scalars=None) -> x0_hat`` in
normalised units; physics enters as differentiable callables on physical samples.
"""

from __future__ import annotations

from pidm_fem.diffusion.conditions import StandardisedConditions
from pidm_fem.diffusion.experts import ChannelExperts, TimestepExperts
from pidm_fem.diffusion.guidance import CoCoGenCorrector, PhysicsGuidedConditioning, Residual
from pidm_fem.diffusion.input_views import LinearViewInputs, spectral_norm_estimate
from pidm_fem.diffusion.losses import Functional, PIDMLoss
from pidm_fem.diffusion.normalization import ChannelMap, FieldNormalizer, LinearChannelMap, LogChannelMap
from pidm_fem.diffusion.parameterization import VPredictionDenoiser, x0_denoiser
from pidm_fem.diffusion.samplers import sample
from pidm_fem.diffusion.schedule import CosineSchedule
from pidm_fem.diffusion.trajectory_states import TrajectoryStates

__all__ = [
    "ChannelExperts",
    "ChannelMap",
    "CoCoGenCorrector",
    "CosineSchedule",
    "FieldNormalizer",
    "Functional",
    "LinearChannelMap",
    "LinearViewInputs",
    "spectral_norm_estimate",
    "LogChannelMap",
    "PIDMLoss",
    "PhysicsGuidedConditioning",
    "Residual",
    "StandardisedConditions",
    "TimestepExperts",
    "TrajectoryStates",
    "VPredictionDenoiser",
    "sample",
    "x0_denoiser",
]
