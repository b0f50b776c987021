"""General path: any taped Firedrake computation, replayed by pyadjoint per sample.

The user's callable computes one sample's output from Firedrake Functions with
any Firedrake operations pyadjoint annotates (assembly, solves, interpolation),
returning a Cofunction (a residual vector), a Function, or a scalar (AdjFloat).
It runs once, on a private tape, at construction; each sample of a batch then
replays that tape through a :class:`pyadjoint.ReducedFunctional` and gets its
vector-Jacobian product from the adjoint. Nothing is recompiled per call.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import firedrake as fd
import firedrake.adjoint as fda
import numpy as np
import pyadjoint

from .layout import FieldLayout, as_layout

#: computes one sample's output from ``{name: Function}`` fields and data
TapedBuilder = Callable[[dict, dict], object]


class TapedOperator:
    """A per-sample pyadjoint computation applied to batches.

    Parameters
    ----------
    fields
        Ordered ``{name: space}`` (or a :class:`FieldLayout`) of the differentiable inputs.
    build
        ``build(fields, data)`` computes the output from Functions; it is taped once.
    data
        Ordered ``{name: space}`` of per-sample inputs that are not differentiated.
    """

    def __init__(
        self,
        fields: FieldLayout | Mapping[str, fd.FunctionSpace],
        build: TapedBuilder,
        data: FieldLayout | Mapping[str, fd.FunctionSpace] | None = None,
    ):
        self.layout = as_layout(fields)
        self.data_layout = as_layout(data) if data else None
        self.tape = pyadjoint.Tape()
        was_annotating = pyadjoint.annotate_tape()
        with pyadjoint.set_working_tape(self.tape):
            fda.continue_annotation()
            try:
                self._fields = {n: fd.Function(s, name=n) for n, s in zip(self.layout.names, self.layout.spaces)}
                self._data = (
                    {n: fd.Function(s, name=n) for n, s in zip(self.data_layout.names, self.data_layout.spaces)}
                    if self.data_layout
                    else {}
                )
                # Non-zero placeholders keep every block of the tape well defined.
                for function in list(self._fields.values()) + list(self._data.values()):
                    function.assign(1.0)
                output = build(dict(self._fields), dict(self._data))
            finally:
                if not was_annotating:
                    fda.pause_annotation()
        self._scalar = isinstance(output, (float, pyadjoint.AdjFloat))
        self._output_space = None if self._scalar else output.function_space()
        controls = [fda.Control(f) for f in list(self._fields.values()) + list(self._data.values())]
        self.reduced = fda.ReducedFunctional(output, controls, tape=self.tape)
        self.output_size = 1 if self._scalar else output.dat.data_ro.size

    def _inputs(self, x: np.ndarray, data: np.ndarray | None, i: int) -> list[fd.Function]:
        """Control values of row ``i``: its fields, then its data."""
        values = list(self.layout.functions(x[i]).values())
        if self.data_layout is not None:
            values += list(self.data_layout.functions(data[i]).values())
        return values

    def _check(self, x: np.ndarray, data: np.ndarray | None) -> np.ndarray:
        x = self.layout.check(x)
        if self.data_layout is not None:
            if data is None:
                raise ValueError(f"this operator needs per-sample data {self.data_layout.names}")
            self.data_layout.check(data)
        return x

    def forward(self, x: np.ndarray, data: np.ndarray | None = None) -> np.ndarray:
        """Replay the tape for every row: (B, total) -> (B, output) or (B,)."""
        x = self._check(x, data)
        out = np.empty((len(x), self.output_size))
        with pyadjoint.stop_annotating():
            for i in range(len(x)):
                value = self.reduced(self._inputs(x, data, i))
                out[i] = float(value) if self._scalar else value.dat.data_ro.ravel()
        return out[:, 0] if self._scalar else out

    def vjp(self, x: np.ndarray, cotangent: np.ndarray, data: np.ndarray | None = None) -> np.ndarray:
        """Adjoint vector-Jacobian product for every row, shape (B, total)."""
        x = self._check(x, data)
        cotangent = np.asarray(cotangent, dtype=float).reshape(len(x), self.output_size)
        n_fields = len(self.layout.names)
        grads = np.empty_like(x, dtype=float)
        with pyadjoint.stop_annotating():
            for i in range(len(x)):
                self.reduced(self._inputs(x, data, i))
                derivatives = self.reduced.derivative(adj_input=self._adj_input(cotangent[i]), apply_riesz=False)
                for name, derivative in zip(self.layout.names, derivatives[:n_fields]):
                    grads[i, self.layout.block(name)] = derivative.dat.data_ro.ravel()
        return grads

    def _adj_input(self, values: np.ndarray):
        if self._scalar:
            return float(values[0])
        # The adjoint input lives in the dual of the output's space: the dual of a
        # dual space (a residual Cofunction) is the primal space itself.
        function = fd.Function(self._output_space.dual()) if isinstance(
            self._output_space, fd.functionspaceimpl.FiredrakeDualSpace
        ) else fd.Cofunction(self._output_space.dual())
        function.dat.data[:] = values.reshape(function.dat.data.shape)
        return function
