"""The torch <-> Firedrake bridge: batched, differentiable FEM operators.

* :class:`FieldLayout` packs the fields of a sample in one tensor row.
* :class:`BatchedFormOperator` (fast path) assembles a residual form or a scalar
  functional for a chunk of samples in one kernel, with vector-Jacobian
  products assembled from the adjoint action of the derivative form.
* :class:`TapedOperator` (general path) replays any pyadjoint-taped Firedrake
  computation per sample, PDE solves included.
* :class:`TorchFEM` makes either one a differentiable torch function.
"""

from .batched_form import BatchedFormOperator, pad_rows
from .layout import FieldLayout, space_dof_coordinates
from .taped import TapedOperator
from .torch_op import TorchFEM

__all__ = ["BatchedFormOperator", "FieldLayout", "TapedOperator", "TorchFEM", "pad_rows", "space_dof_coordinates"]
