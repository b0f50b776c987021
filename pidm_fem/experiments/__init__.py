"""Case studies: the physics, the data, the denoisers and the diffusion method joined into runs.

* :class:`Experiment` runs one method on one :class:`~pidm_fem.physics.problem.Problem`:
  data, training, sampling and the physics of its samples.
* :data:`METHODS` is the registry of compared methods; :func:`method_config` gives a method's
  run configuration from a run file's sections.
* :mod:`~pidm_fem.experiments.comparison` trains, samples and evaluates several methods;
  :mod:`~pidm_fem.experiments.benchmark` runs a benchmark mode with every check up front.
* :class:`NodeFields` views packed sample rows as the diffusion layer's (B, C, n) tensors.
"""

from pidm_fem.experiments.denoisers import build_denoiser
from pidm_fem.experiments.experiment import Experiment, ModelParts, Splits, diffusion_loss
from pidm_fem.experiments.methods import METHODS, Method, method_config
from pidm_fem.experiments.node_fields import NodeFields

__all__ = ["METHODS", "Experiment", "Method", "ModelParts", "NodeFields", "Splits", "build_denoiser",
           "diffusion_loss", "method_config"]
