"""PyTorch autograd wrapper of a batched Firedrake operator.

An *operator* is any object with ``forward(x, data) -> y`` and
``vjp(x, cotangent, data) -> x_bar`` on NumPy float64 arrays, with ``x`` of
shape (B, n_in) and ``y`` of shape (B, n_out) or (B,) (see
:class:`~pidm_fem.bridge.batched_form.BatchedFormOperator` and
:class:`~pidm_fem.bridge.taped.TapedOperator`). :class:`TorchFEM` makes it a
differentiable torch function: inputs of any float dtype and device are
computed in float64 on the CPU and the results returned in the input's dtype
on the input's device.
"""

from __future__ import annotations

import numpy as np
import torch


def _to_numpy(t: torch.Tensor | None) -> np.ndarray | None:
    if t is None:
        return None
    return t.detach().to(device="cpu", dtype=torch.float64).contiguous().numpy()


class _FEMFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, operator, x: torch.Tensor, data: torch.Tensor | None) -> torch.Tensor:
        x_np, data_np = _to_numpy(x), _to_numpy(data)
        y = operator.forward(x_np, data_np)
        ctx.operator, ctx.x_np, ctx.data_np = operator, x_np, data_np
        ctx.dtype, ctx.device = x.dtype, x.device
        return torch.from_numpy(np.ascontiguousarray(y)).to(device=x.device, dtype=x.dtype)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        grad = ctx.operator.vjp(ctx.x_np, _to_numpy(grad_out), ctx.data_np)
        return None, torch.from_numpy(grad).to(device=ctx.device, dtype=ctx.dtype), None


class TorchFEM:
    """Differentiable torch function ``x -> operator(x)`` for batches of samples.

    Parameters
    ----------
    operator
        A batched Firedrake operator (``forward`` and ``vjp`` on NumPy arrays).

    Examples
    --------
    >>> residual = TorchFEM(problem.residual_operator())   # doctest: +SKIP
    >>> r = residual(x)            # x: (B, n_p + n_K), r: (B, n_p)
    >>> (r ** 2).sum().backward()  # exact adjoint gradients reach x
    """

    def __init__(self, operator):
        self.operator = operator

    def __call__(self, x: torch.Tensor, data: torch.Tensor | None = None) -> torch.Tensor:
        if not torch.is_floating_point(x):
            raise TypeError(f"TorchFEM needs a floating-point tensor, got {x.dtype}")
        if x.ndim != 2:
            raise ValueError(f"TorchFEM needs a batch of shape (B, n), got {tuple(x.shape)}")
        return _FEMFunction.apply(self.operator, x, data)
