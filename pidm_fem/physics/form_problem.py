"""A problem declared by its fields, its residual form and its solve: the way to add a PDE.

A subclass of :class:`FormProblem` states

* :attr:`~FormProblem.fields`: ``{name: (family, degree)}`` or ``(family, degree, components)``
  (the mesh denoisers need every field at the vertices: P1 scalars and vectors);
* :attr:`~FormProblem.coefficient_fields` and :attr:`~FormProblem.state_fields`;
* :meth:`~FormProblem.residual`: the weak residual F(fields; v) as a UFL 1-form in a test
  function of the first state field's space;
* :meth:`~FormProblem.draw_coefficients` and :meth:`~FormProblem.solve`: a random sample of
  the coefficients and the state that solves the PDE for them;
* optionally :attr:`~FormProblem.dirichlet` (``{boundary id or "on_boundary": value}`` of the
  state), :attr:`~FormProblem.options` (settings with defaults, given on the command line
  as ``--option KEY=VALUE`` or in the run file) and :meth:`~FormProblem.functional_forms`
  (0-forms of the equality, inequality and objective terms).

The base class supplies the rest of the :class:`~pidm_fem.physics.problem.Problem`
interface: the spaces and layout, seeded samples (sample ``i`` draws from the seed sequence
``(seed, i)``), the fingerprint of the mesh and spaces, a factory for worker processes,
the batched residual through the bridge (one assembly per chunk of samples, adjoint
vector-Jacobian products), the strong-form-equivalent scaling ``M_L^{-1} R``, and the
state solve. At a Dirichlet node the residual is the constraint itself, ``u - g`` in
strong scaling, so that a generated state must meet its boundary values.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any, ClassVar

import firedrake as fd
import numpy as np
import torch
import ufl

from pidm_fem.bridge import BatchedFormOperator, FieldLayout, TorchFEM
from pidm_fem.mesh import load_mesh, mesh_fingerprint
from pidm_fem.physics.problem import GeneratorFactory, Problem, RowFunction, residual_kind

#: the residual kinds every form problem offers
RESIDUAL_KINDS = ("strong", "weak")
#: samples per assembly of the batched residual
CHUNK = 32


def lumped_mass(space: fd.FunctionSpace) -> np.ndarray:
    """The row sums of the mass matrix of ``space``, one entry per scalar value (DOF order)."""
    v = fd.TestFunction(space)
    ones = fd.Constant(np.ones(space.value_shape)) if space.value_shape else fd.Constant(1.0)
    return fd.assemble(ufl.inner(ones, v) * fd.dx).dat.data_ro.reshape(-1).copy()


class FormProblem(Problem):
    """A problem from a declaration (see the module description).

    Parameters
    ----------
    mesh
        Mesh file (any format :func:`~pidm_fem.mesh.load_mesh` reads).
    seed
        Data seed.
    **options
        Values of the class's :attr:`options`; the others keep their defaults.

    Raises
    ------
    TypeError
        For an option the class does not declare.
    """

    #: ``{field: (family, degree)}`` or ``(family, degree, components)``, in row order
    fields: ClassVar[Mapping[str, tuple]]
    #: ``{boundary id or "on_boundary": value}`` of the first state field (a number or a tuple)
    dirichlet: ClassVar[Mapping[Any, Any]] = {}
    #: settings of the samples and their defaults
    options: ClassVar[Mapping[str, Any]] = {}

    def __init__(self, mesh: str | os.PathLike, seed: int = 0, **options: Any):
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            raise TypeError(f"unknown option {unknown[0]!r} (options: {', '.join(self.options) or 'none'})")
        self.mesh_path = os.path.abspath(mesh)
        self.seed = int(seed)
        #: the options in effect (the defaults updated by the given ones)
        self.values: dict[str, Any] = {**self.options, **options}
        #: what builds this problem again in a worker process (set by the registry)
        self.spec: str = self.name
        self.mesh = load_mesh(mesh)
        self.spaces = {name: _space(self.mesh, name, declaration) for name, declaration in self.fields.items()}
        self.layout = FieldLayout.from_spaces(self.spaces)
        if not self.state_fields:
            raise TypeError(f"{type(self).__name__} declares no state field")
        #: the residual's test space: that of the first state field
        self.test_space = self.spaces[self.state_fields[0]]
        self._mass = lumped_mass(self.test_space)
        first = self.spaces[self.layout.names[0]]
        self._weights = lumped_mass(first)[::max(1, int(np.prod(first.value_shape, dtype=int)))]
        self._constrained, self._boundary_values = self._dirichlet_values()
        self._residuals: dict[str, RowFunction] = {}
        self._weak: TorchFEM | None = None
        self._functionals: dict[str, RowFunction] | None = None
        self.setup()

    @classmethod
    def from_options(cls, mesh: str, seed: int = 0, **options: Any) -> "FormProblem":
        """The problem on the mesh file ``mesh`` with data seed ``seed`` and further options."""
        return cls(mesh, seed, **options)

    # -- what a subclass states -------------------------------------------------------------

    def setup(self) -> None:
        """Build what the residual and the solve share (sources, solvers); called once, last in ``__init__``."""

    def residual(self, fields: Mapping[str, ufl.core.expr.Expr], v: ufl.core.expr.Expr) -> ufl.Form:
        """The weak residual F(fields; v), a 1-form in the test function ``v``."""
        raise NotImplementedError(f"{type(self).__name__} must define residual(fields, v)")

    def draw_coefficients(self, rng: np.random.Generator) -> Mapping[str, np.ndarray | fd.Function]:
        """One random sample of the coefficient fields, ``{name: values or Function}``."""
        raise NotImplementedError(f"{type(self).__name__} must define draw_coefficients(rng)")

    def solve(self, coefficients: Mapping[str, fd.Function]) -> Mapping[str, np.ndarray | fd.Function]:
        """The state fields that solve the PDE for ``coefficients`` (Functions of :attr:`spaces`)."""
        raise NotImplementedError(f"{type(self).__name__} must define solve(coefficients)")

    def functional_forms(self) -> Mapping[str, Callable[[Mapping[str, ufl.core.expr.Expr]], ufl.Form]]:
        """0-forms of the PIDM loss's scalar terms: ``{"equality" | "inequality" | "objective": fields -> form}``."""
        return {}

    # -- the Problem interface ---------------------------------------------------------------

    @property
    def fingerprint(self) -> str:
        spaces = "-".join(name + "".join(str(part) for part in declaration) for name, declaration in self.fields.items())
        return f"{mesh_fingerprint(self.mesh)}-{spaces}"

    def settings(self) -> dict[str, Any]:
        return {"problem": self.spec, "mesh": self.mesh_path, "seed": self.seed, "options": dict(self.values)}

    def rng(self, index: int) -> np.random.Generator:
        """The random generator of sample ``index``."""
        return np.random.default_rng(np.random.SeedSequence([self.seed, index]))

    def sample(self, index: int) -> np.ndarray:
        coefficients = self.functions(self.draw_coefficients(self.rng(index)))
        state = self.solve(coefficients)
        return self.layout.join({**_values(coefficients), **_values(state)})[0]

    def generator_factory(self) -> GeneratorFactory:
        return partial(_sample_function, self.spec, self.mesh_path, self.seed, dict(self.values))

    def functions(self, values: Mapping[str, np.ndarray | fd.Function]) -> dict[str, fd.Function]:
        """``values`` as Functions of their fields' spaces (Functions are passed through)."""
        out = {}
        for name, value in values.items():
            if isinstance(value, fd.Function):
                out[name] = value
                continue
            function = fd.Function(self.spaces[name], name=name)
            function.dat.data[:] = np.asarray(value, dtype=float).reshape(function.dat.data.shape)
            out[name] = function
        return out

    def torch_residual(self, kind: str = "strong") -> RowFunction:
        """``"strong"`` (``M_L^{-1} R``) or ``"weak"`` (R) residual of packed rows, built once each.

        At the Dirichlet nodes the entries are the constraint ``u - g`` (times the lumped
        mass in the weak kind).
        """
        residual_kind(kind, RESIDUAL_KINDS)
        if kind not in self._residuals:
            self._residuals[kind] = self._build_residual(kind)
        return self._residuals[kind]

    def _build_residual(self, kind: str) -> RowFunction:
        weak = self._torch_weak()
        constrained = torch.from_numpy(self._constrained)
        g = torch.from_numpy(self._boundary_values)
        mass = torch.from_numpy(self._mass)
        state = self.layout.block(self.state_fields[0])

        def residual(rows: torch.Tensor) -> torch.Tensor:
            like = {"dtype": rows.dtype, "device": rows.device}
            r = weak(rows) / mass.to(**like)
            if len(constrained):
                index = constrained.to(rows.device)
                r = r.index_copy(1, index, rows[:, state][:, index] - g.to(**like))
            return r if kind == "strong" else r * mass.to(**like)

        return residual

    def _torch_weak(self) -> TorchFEM:
        """The weak residual through the bridge, compiled once for every kind."""
        if self._weak is None:
            operator = BatchedFormOperator(self.layout, lambda fields, data, v: self.residual(fields, v),
                                           self.test_space, chunk=CHUNK)
            self._weak = TorchFEM(operator)
        return self._weak

    def functionals(self) -> dict[str, RowFunction]:
        """The :meth:`functional_forms` through the bridge, compiled once."""
        if self._functionals is None:
            self._functionals = {
                kind: TorchFEM(BatchedFormOperator(self.layout, lambda fields, data, v, build=build: build(fields),
                                                   chunk=CHUNK))
                for kind, build in self.functional_forms().items()}
        return dict(self._functionals)

    def has_state_solve(self) -> bool:
        return True

    def solve_state(self, rows: np.ndarray) -> np.ndarray:
        """The state fields solved for each row's coefficients; NaN rows where the solve fails."""
        rows = self.layout.check(np.asarray(rows, dtype=np.float64))
        parts = self.layout.split(rows)
        size = sum(self.layout.sizes[self.layout.names.index(name)] for name in self.state_fields)
        out = np.full((len(rows), size), np.nan)
        for i in range(len(rows)):
            if not all(np.isfinite(parts[name][i]).all() for name in self.coefficient_fields):
                continue
            coefficients = self.functions({name: parts[name][i] for name in self.coefficient_fields})
            try:
                state = _values(self.solve(coefficients))
            except fd.ConvergenceError:
                continue
            out[i] = np.concatenate([np.ravel(state[name]) for name in self.state_fields])
        return out

    def torch_state_misfit(self) -> RowFunction:
        """``m = sqrt(w) (u - S(c)) / ||S(c)||_w`` per row, the state fields' lumped mass ``w``.

        S(c) is the state solved for the row's own coefficients (a constant); a row whose
        solve fails has a zero misfit.
        """
        blocks = [self.layout.block(name) for name in self.state_fields]
        weights = torch.from_numpy(np.concatenate([lumped_mass(self.spaces[name]) for name in self.state_fields]))

        def misfit(rows: torch.Tensor) -> torch.Tensor:
            state = torch.cat([rows[:, block] for block in blocks], dim=1)
            w = weights.to(dtype=state.dtype, device=state.device)
            solved = torch.from_numpy(self.solve_state(rows.detach().cpu().double().numpy()))
            solved = solved.to(dtype=state.dtype, device=state.device)
            valid = torch.isfinite(solved).all(dim=1, keepdim=True)
            solved = torch.where(valid, solved, torch.zeros_like(solved))
            norm = (w * solved.pow(2)).sum(dim=1, keepdim=True).sqrt().clamp(min=torch.finfo(state.dtype).tiny)
            return torch.where(valid, w.sqrt() * (state - solved) / norm, torch.zeros_like(state))

        return misfit

    def weights(self) -> np.ndarray:
        """The lumped mass of the first field's nodes (every field sits at those nodes)."""
        return self._weights.copy()

    def _dirichlet_values(self) -> tuple[np.ndarray, np.ndarray]:
        """The constrained entries of the state block (DOF order) and their values."""
        if not self.dirichlet:
            return np.zeros(0, dtype=np.int64), np.zeros(0)
        components = max(1, int(np.prod(self.test_space.value_shape, dtype=int)))
        g = fd.Function(self.test_space)
        entries = []
        for boundary, value in self.dirichlet.items():
            bc = fd.DirichletBC(self.test_space, fd.Constant(value), boundary)
            bc.apply(g)
            entries.append((bc.nodes[:, None] * components + np.arange(components)).ravel())
        index = np.unique(np.concatenate(entries)).astype(np.int64)
        return index, g.dat.data_ro.reshape(-1)[index].copy()


def _space(mesh, name: str, declaration: tuple) -> fd.FunctionSpace:
    """The space of one field's declaration ``(family, degree)`` or ``(family, degree, components)``."""
    if len(declaration) == 2:
        return fd.FunctionSpace(mesh, declaration[0], declaration[1])
    if len(declaration) == 3:
        return fd.VectorFunctionSpace(mesh, declaration[0], declaration[1], dim=declaration[2])
    raise TypeError(f"field {name!r}: expected (family, degree) or (family, degree, components), got {declaration!r}")


def _values(functions: Mapping[str, np.ndarray | fd.Function]) -> dict[str, np.ndarray]:
    """``{name: (1, size) values}`` of Functions or arrays."""
    return {name: (f.dat.data_ro if isinstance(f, fd.Function) else np.asarray(f)).reshape(1, -1)
            for name, f in functions.items()}


def _sample_function(spec: str, mesh: str, seed: int, options: dict) -> Callable[[int], np.ndarray]:
    """The sample function of the problem ``spec``, built again in a worker process."""
    from pidm_fem.physics.problems import build_problem

    return build_problem(spec, mesh, seed=seed, **options).sample
