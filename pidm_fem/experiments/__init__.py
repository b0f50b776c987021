"""Case studies: the physics, the data, the denoisers and the diffusion method joined into runs.

* :class:`NodeFields` views packed sample rows as the diffusion layer's (B, C, n) tensors.
* :func:`build_denoiser` makes the denoiser a :class:`~pidm_fem.training.config.ModelConfig` asks for.
* :class:`DarcyExperiment` runs the Darcy case study from a run configuration and a mesh.
"""

from pidm_fem.experiments.darcy import DarcyExperiment, DarcySplits, diffusion_loss
from pidm_fem.experiments.denoisers import build_denoiser
from pidm_fem.experiments.node_fields import NodeFields

__all__ = ["DarcyExperiment", "DarcySplits", "NodeFields", "build_denoiser", "diffusion_loss"]
