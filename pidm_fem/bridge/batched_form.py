"""Fast path: one assembly evaluates a form for a whole chunk of samples.

The samples of a chunk are stored as the components of one Function in a
"batched" space whose value shape is ``(chunk,) + value_shape``. The per-sample
form built by the user's callable is instantiated once per component and the
instances are summed into one form; TSFC compiles it once into a single
kernel, and one cell loop assembles every sample of the chunk. Because the
samples never mix, the sum is block diagonal: assembled against a batched test
function it yields each sample's residual vector, and for scalar functionals the
test functions of a mixed space of ``chunk`` Real spaces yield one number per
sample.

Vector-Jacobian products are assembled directly as the derivative, with respect
to each batched field, of the residual form with its test function replaced by
the cotangent: ``derivative(action(F, lam), u)`` = ``(dF/du)^T lam``.
No finite differences, no tape.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import firedrake as fd
import numpy as np
import ufl
from firedrake.assemble import get_assembler

from .layout import FieldLayout, as_layout, space_size

#: builds a per-sample form from ``{name: field expression}``, ``{name: data expression}``
#: and a test function (1-forms) or ``None`` (0-forms, scalar functionals)
FormBuilder = Callable[[dict, dict, object], ufl.Form]


def batched_space(space: fd.FunctionSpace, chunk: int) -> fd.FunctionSpace:
    """Space whose Functions hold ``chunk`` copies of ``space``'s values as components."""
    element = space.ufl_element()
    shape = tuple(space.value_shape)
    if shape:
        element = element.sub_elements[0]
        return fd.TensorFunctionSpace(space.mesh(), element, shape=(chunk,) + shape)
    return fd.VectorFunctionSpace(space.mesh(), element, dim=chunk)


def component(batched: ufl.core.expr.Expr, i: int, shape: tuple[int, ...]) -> ufl.core.expr.Expr:
    """Sample ``i`` of a batched UFL expression with per-sample value shape ``shape``."""
    if not shape:
        return batched[i]
    if len(shape) == 1:
        return ufl.as_vector([batched[i, j] for j in range(shape[0])])
    raise NotImplementedError("fields of rank 2 and above are not supported by the batched path")


def _scale_integrals(form: ufl.Form, factor) -> ufl.Form:
    """Multiply every integrand of ``form`` by the expression ``factor``."""
    return ufl.Form([itg.reconstruct(integrand=itg.integrand() * factor) for itg in form.integrals()])


class _BatchedFunctions:
    """Batched Functions for a layout, with copies to and from (B, size) arrays."""

    def __init__(self, layout: FieldLayout, chunk: int):
        self.layout, self.chunk = layout, chunk
        self.functions = {
            name: fd.Function(batched_space(space, chunk), name=f"{name}_batch")
            for name, space in zip(layout.names, layout.spaces)
        }

    def samples(self) -> list[dict]:
        """Per-sample UFL expressions ``[{name: expression}]`` for the chunk."""
        return [
            {
                name: component(self.functions[name], i, tuple(space.value_shape))
                for name, space in zip(self.layout.names, self.layout.spaces)
            }
            for i in range(self.chunk)
        ]

    def load(self, x: np.ndarray) -> None:
        """Set the chunk's values from rows ``x`` of shape (n <= chunk, total); pads by repetition."""
        parts = self.layout.split(x)
        for name, values in parts.items():
            data = self.functions[name].dat.data  # (nodes, chunk, *shape)
            padded = pad_rows(values, self.chunk)
            data[:] = np.moveaxis(padded.reshape((self.chunk, data.shape[0]) + data.shape[2:]), 0, 1)


def pad_rows(values: np.ndarray, chunk: int) -> np.ndarray:
    """``values`` (n <= chunk, ...) with the last row repeated up to ``chunk`` rows."""
    n = values.shape[0]
    if n == chunk:
        return values
    return np.concatenate([values, np.repeat(values[-1:], chunk - n, axis=0)])


def _unbatch(data: np.ndarray, n: int) -> np.ndarray:
    """(nodes, chunk, *shape) values of a batched Function -> (n, nodes * prod(shape))."""
    moved = np.moveaxis(data, 1, 0)[:n]
    return moved.reshape(n, -1)


class BatchedFormOperator:
    """A per-sample form evaluated and differentiated for batches of samples.

    Parameters
    ----------
    fields
        Ordered ``{name: space}`` (or a :class:`FieldLayout`) of the differentiable inputs.
    build
        ``build(fields, data, v)`` returns the per-sample form: a 1-form in the
        test function ``v`` (a residual) or, when ``test_space`` is None, a
        0-form (a scalar functional; ``v`` is then None).
    test_space
        Space of the residual's test function, or None for a scalar functional.
    data
        Ordered ``{name: space}`` of per-sample inputs that are not differentiated
        (source terms, loads, conditions).
    chunk
        Samples per assembly. Larger chunks mean fewer, longer kernels and a
        longer one-off compilation.

    Notes
    -----
    Inputs are rows packed by :class:`FieldLayout`; outputs are residual
    vectors in the test space's DOF order (shape (B, size)) or scalars (B,).
    Forms are built, preprocessed and compiled once, at construction; a call
    only copies values and runs the compiled kernels.
    """

    def __init__(
        self,
        fields: FieldLayout | Mapping[str, fd.FunctionSpace],
        build: FormBuilder,
        test_space: fd.FunctionSpace | None = None,
        data: FieldLayout | Mapping[str, fd.FunctionSpace] | None = None,
        chunk: int = 32,
    ):
        if chunk < 1:
            raise ValueError(f"chunk must be positive, got {chunk}")
        self.layout = as_layout(fields)
        self.data_layout = as_layout(data) if data else None
        self.test_space, self.chunk = test_space, chunk
        self._fields = _BatchedFunctions(self.layout, chunk)
        self._data = _BatchedFunctions(self.data_layout, chunk) if self.data_layout else None
        mesh = self.layout.mesh
        if test_space is None:
            out_space = fd.MixedFunctionSpace([fd.FunctionSpace(mesh, "R", 0)] * chunk)
            tests = fd.TestFunctions(out_space)
        else:
            out_space = batched_space(test_space, chunk)
            v = fd.TestFunction(out_space)
            tests = [component(v, i, tuple(test_space.value_shape)) for i in range(chunk)]
        field_samples = self._fields.samples()
        data_samples = self._data.samples() if self._data else [{}] * chunk
        terms = []
        for i in range(chunk):
            if test_space is None:
                terms.append(_scale_integrals(build(field_samples[i], data_samples[i], None), tests[i]))
            else:
                terms.append(build(field_samples[i], data_samples[i], tests[i]))
        self.form = sum(terms[1:], terms[0])
        self._cotangent = fd.Function(out_space, name="cotangent")
        weighted = ufl.action(self.form, self._cotangent)
        self.vjp_forms = {
            name: ufl.derivative(weighted, function, fd.TestFunction(function.function_space()))
            for name, function in self._fields.functions.items()
        }
        self._out = fd.Cofunction(out_space.dual())
        self._vjp_out = {name: fd.Cofunction(f.function_space().dual()) for name, f in self._fields.functions.items()}
        # UFL preprocessing (derivative expansion, form analysis) of these large
        # forms costs far more than their assembly: do it once, here.
        self._assembler = get_assembler(self.form)
        self._vjp_assemblers = {name: get_assembler(form) for name, form in self.vjp_forms.items()}

    @property
    def output_size(self) -> int:
        """Length of one sample's output (1 for a scalar functional)."""
        return 1 if self.test_space is None else space_size(self.test_space)

    def _chunks(self, x: np.ndarray, data: np.ndarray | None):
        x = self.layout.check(x)
        if self.data_layout is not None:
            if data is None:
                raise ValueError(f"this operator needs per-sample data {self.data_layout.names}")
            data = self.data_layout.check(data)
            if data.shape[0] != x.shape[0]:
                raise ValueError(f"data has {data.shape[0]} rows, fields have {x.shape[0]}")
        for start in range(0, x.shape[0], self.chunk):
            stop = min(start + self.chunk, x.shape[0])
            self._fields.load(x[start:stop])
            if self._data is not None:
                self._data.load(data[start:stop])
            yield start, stop

    def forward(self, x: np.ndarray, data: np.ndarray | None = None) -> np.ndarray:
        """Evaluate the form for every row of ``x``: (B, total) -> (B, output) or (B,)."""
        out = np.empty((len(x), self.output_size))
        for start, stop in self._chunks(x, data):
            self._assembler.assemble(tensor=self._out)
            out[start:stop] = self._values(self._out, stop - start)
        return out[:, 0] if self.test_space is None else out

    def vjp(self, x: np.ndarray, cotangent: np.ndarray, data: np.ndarray | None = None) -> np.ndarray:
        """Vector-Jacobian product ``(d out / d x)^T cotangent`` for every row, shape (B, total)."""
        cotangent = np.asarray(cotangent, dtype=float).reshape(len(x), self.output_size)
        grads = {name: np.empty((len(x), size)) for name, size in zip(self.layout.names, self.layout.sizes)}
        for start, stop in self._chunks(x, data):
            n = stop - start
            padded = np.zeros((self.chunk, self.output_size))
            padded[:n] = cotangent[start:stop]
            self._set_cotangent(padded)
            for name in self.vjp_forms:
                self._vjp_assemblers[name].assemble(tensor=self._vjp_out[name])
                grads[name][start:stop] = _unbatch(self._vjp_out[name].dat.data_ro, n)
        return self.layout.join(grads)

    def _set_cotangent(self, padded: np.ndarray) -> None:
        """Load (chunk, output_size) cotangent values into the batched cotangent Function."""
        if self.test_space is None:
            for i, values in enumerate(self._cotangent.dat.data):
                values[:] = padded[i, 0]
            return
        lam = self._cotangent.dat.data
        lam[:] = np.moveaxis(padded.reshape((self.chunk, lam.shape[0]) + lam.shape[2:]), 0, 1)

    def _values(self, cofunction: fd.Cofunction, n: int) -> np.ndarray:
        if self.test_space is None:
            return np.array([values[0] for values in cofunction.dat.data_ro[:n]]).reshape(n, 1)
        return _unbatch(cofunction.dat.data_ro, n)
