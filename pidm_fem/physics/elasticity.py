"""Plane linear elasticity with a SIMP-interpolated Young's modulus, on triangle or quadrilateral meshes.

The displacement ``u`` is continuous Lagrange of degree 1 (2 as an option), vector
valued; the density ``rho`` lives in DG0 (one value per cell, the classical choice) or
P1. The material is isotropic with

    E(rho) = E_min + rho^p (E0 - E_min),    E0 = 1, nu = 0.3, p = 3, E_min = 1e-9,

in plane stress (the default) or plane strain. The weak equilibrium residual is

    R(u, rho; v) = integral( sigma(u, rho) : eps(v) ) dx - F(v),

with F the loads: point loads (each applied, whole, at the mesh vertex nearest its
position, as the 88-line code applies its load at a node), edge tractions on boundary
ids and body forces. Supports fix both components (``fixed``) or one (``roller_x``,
``roller_y``), on a boundary id, at the vertex nearest a point, or on the vertices of a
segment. The compliance ``c = F(u)`` and the volume fraction are scalar functionals of
``(u, rho)``; the strong-form-equivalent nodal residual is ``M_L^{-1} R`` as for Darcy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal

import firedrake as fd
import numpy as np
import ufl

#: the PETSc options of the two solvers: a direct factorisation, and CG with smoothed aggregation
DIRECT = {"ksp_type": "preonly", "pc_type": "lu", "pc_factor_mat_solver_type": "mumps"}
ITERATIVE = {"ksp_type": "cg", "ksp_rtol": 1e-10, "ksp_max_it": 2000, "pc_type": "gamg",
             "pc_gamg_threshold": 0.01, "mg_levels_ksp_type": "chebyshev", "mg_levels_pc_type": "jacobi"}
SOLVERS = {"direct": DIRECT, "iterative": ITERATIVE}
#: which displacement components each kind of support fixes
SUPPORT_COMPONENTS = {"fixed": (0, 1), "roller_x": (0,), "roller_y": (1,)}


@dataclass(frozen=True)
class Material:
    """Isotropic material with SIMP interpolation of Young's modulus.

    Attributes
    ----------
    E0, nu
        Young's modulus of solid material and Poisson's ratio.
    penal
        SIMP exponent p.
    E_min
        Young's modulus of void (1e-9; the 88-line code's 1e-3 is also common).
    plane
        ``"stress"`` or ``"strain"``.
    """

    E0: float = 1.0
    nu: float = 0.3
    penal: float = 3.0
    E_min: float = 1e-9
    plane: Literal["stress", "strain"] = "stress"

    def __post_init__(self) -> None:
        if self.plane not in ("stress", "strain"):
            raise ValueError(f"plane must be 'stress' or 'strain', got {self.plane!r}")
        if not (self.E0 > self.E_min >= 0 and -1 < self.nu < 0.5 and self.penal >= 1):
            raise ValueError(f"need E0 > E_min >= 0, -1 < nu < 0.5 and penal >= 1, got {self}")

    def modulus(self, rho: ufl.core.expr.Expr) -> ufl.core.expr.Expr:
        """E(rho) = E_min + rho^p (E0 - E_min)."""
        return self.E_min + rho**self.penal * (self.E0 - self.E_min)

    def lame(self, E: ufl.core.expr.Expr) -> tuple[Any, Any]:
        """Lamé's (lambda, mu) of modulus E, with the plane-stress lambda when ``plane == "stress"``."""
        nu = self.nu
        mu = E / (2 * (1 + nu))
        lam = E * nu / ((1 + nu) * (1 - 2 * nu))
        if self.plane == "stress":
            lam = 2 * mu * lam / (lam + 2 * mu)
        return lam, mu

    def stress(self, u: ufl.core.expr.Expr, E: ufl.core.expr.Expr) -> ufl.core.expr.Expr:
        """The in-plane Cauchy stress sigma(u) of modulus E."""
        lam, mu = self.lame(E)
        eps = ufl.sym(ufl.grad(u))
        return lam * ufl.tr(eps) * ufl.Identity(2) + 2 * mu * eps


def stiffness_form(material: Material, u: Any, v: Any, rho: Any, measure: Any) -> ufl.Form:
    """``integral sigma(u, E(rho)) : eps(v)`` over ``measure``: the SIMP stiffness as a form of (u, v, rho)."""
    return ufl.inner(material.stress(u, material.modulus(rho)), ufl.sym(ufl.grad(v))) * measure


@dataclass(frozen=True)
class Support:
    """Zero (or prescribed) displacement on part of the boundary.

    Exactly one of ``boundary``, ``point``, ``segment`` and ``nodes`` is given.

    Attributes
    ----------
    kind
        ``fixed``, ``roller_x`` (u_x prescribed) or ``roller_y`` (u_y prescribed).
    boundary
        A boundary id of the mesh.
    point
        A position; the support acts at the nearest vertex.
    segment
        Two end points; the support acts at every vertex within ``tolerance`` of the segment.
    nodes
        Indices of the displacement space's nodes (for example those a support mask marks).
    value
        The prescribed displacement: 0 (default), a constant per fixed component, or a
        callable of the spatial coordinate giving a UFL vector (for manufactured solutions).
    tolerance
        Distance (relative to the mesh's bounding-box diagonal) that counts as "on the segment".
    """

    kind: Literal["fixed", "roller_x", "roller_y"] = "fixed"
    boundary: int | None = None
    point: tuple[float, float] | None = None
    segment: tuple[tuple[float, float], tuple[float, float]] | None = None
    nodes: tuple[int, ...] | None = None
    value: Any = 0.0
    tolerance: float = 1e-9

    def __post_init__(self) -> None:
        if self.kind not in SUPPORT_COMPONENTS:
            raise ValueError(f"support kind must be one of {', '.join(SUPPORT_COMPONENTS)}, got {self.kind!r}")
        if sum(x is not None for x in (self.boundary, self.point, self.segment, self.nodes)) != 1:
            raise ValueError("a support needs exactly one of boundary, point, segment and nodes")


@dataclass(frozen=True)
class PointLoad:
    """A force applied, whole, at the mesh vertex nearest ``position``."""

    position: tuple[float, float]
    force: tuple[float, float]


@dataclass(frozen=True)
class Traction:
    """A traction (force per length) on the boundary id ``boundary``."""

    boundary: int
    traction: tuple[float, float]


@dataclass(frozen=True)
class BodyForce:
    """A body force (force per area) on the whole domain."""

    force: tuple[float, float]


Load = PointLoad | Traction | BodyForce


def vertex_nodes(space: fd.FunctionSpace) -> np.ndarray:
    """(n_nodes, 2) coordinates of the nodes of a (vector) Lagrange space."""
    mesh = space.mesh()
    scalar = fd.FunctionSpace(mesh, space.ufl_element().sub_elements[0] if space.value_shape else space.ufl_element())
    xy = fd.Function(fd.VectorFunctionSpace(mesh, scalar.ufl_element())).interpolate(fd.SpatialCoordinate(mesh))
    return xy.dat.data_ro.copy()


class NodalBC(fd.DirichletBC):
    """A Dirichlet condition on a given set of nodes (a point or the nodes of a segment)."""

    def __init__(self, V: fd.FunctionSpace, g: Any, nodes: np.ndarray):
        self._given_nodes = np.unique(np.asarray(nodes, dtype=np.int32))
        super().__init__(V, g, "on_boundary")

    @cached_property
    def nodes(self) -> np.ndarray:
        return self._given_nodes

    def reconstruct(self, field=None, V=None, g=None, sub_domain=None, use_split=False, indices=()):
        if field is None and V is None and g is None and sub_domain is None and not indices:
            return self
        raise NotImplementedError("a nodal support cannot be moved to another space")


@dataclass
class Elasticity:
    """Plane elasticity on a mesh with its supports and loads.

    Parameters
    ----------
    mesh
        A 2D Firedrake mesh (triangles or quadrilaterals).
    supports, loads
        See :class:`Support`, :class:`PointLoad`, :class:`Traction`, :class:`BodyForce`.
    material
        The material and its SIMP interpolation.
    degree
        Lagrange degree of the displacement (1 or 2).
    density
        ``"DG0"`` (one value per cell) or ``"P1"``.
    solver
        ``"direct"`` (MUMPS) or ``"iterative"`` (CG, GAMG with the rigid-body near-nullspace),
        or a dictionary of PETSc options.
    """

    mesh: Any
    supports: Sequence[Support]
    loads: Sequence[Load]
    material: Material = field(default_factory=Material)
    degree: int = 1
    density: Literal["DG0", "P1"] = "DG0"
    solver: str | dict = "direct"

    def __post_init__(self) -> None:
        if self.degree not in (1, 2):
            raise ValueError(f"degree must be 1 or 2, got {self.degree}")
        if self.density not in ("DG0", "P1"):
            raise ValueError(f"density must be 'DG0' or 'P1', got {self.density!r}")
        if isinstance(self.solver, str) and self.solver not in SOLVERS:
            raise ValueError(f"solver must be one of {', '.join(SOLVERS)} or PETSc options, got {self.solver!r}")
        self.V = fd.VectorFunctionSpace(self.mesh, "CG", self.degree)
        self.D = fd.FunctionSpace(self.mesh, "DG", 0) if self.density == "DG0" else fd.FunctionSpace(self.mesh, "CG", 1)
        self.rho = fd.Function(self.D, name="rho")
        # exact for the stiffness of a DG0 design (polynomial of degree 2 * degree per direction);
        # rho^p of a P1 design adds p
        degree = 2 * self.degree + (int(np.ceil(self.material.penal)) if self.density == "P1" else 0)
        self.dx = fd.dx(domain=self.mesh, degree=degree)
        self.u = fd.Function(self.V, name="u")
        self.area = float(fd.assemble(fd.Constant(1.0) * fd.dx(domain=self.mesh)))
        self.bcs = [self._bc(support) for support in self.supports]
        self._check_loads()

    # --- the problem ------------------------------------------------------------------------
    @cached_property
    def nodes(self) -> np.ndarray:
        """(n, 2) coordinates of the displacement nodes."""
        return vertex_nodes(self.V)

    def _nearest_node(self, position: Sequence[float]) -> int:
        distance = np.linalg.norm(self.nodes - np.asarray(position, dtype=float), axis=1)
        return int(np.argmin(distance))

    def _bc(self, support: Support) -> fd.DirichletBC:
        components = SUPPORT_COMPONENTS[support.kind]
        value = support.value
        if callable(value):
            value = value(fd.SpatialCoordinate(self.mesh))
        if len(components) == 1:
            space = self.V.sub(components[0])
            g = value if not isinstance(value, (tuple, list)) else value[0]
        else:
            space = self.V
            g = fd.as_vector([value, value]) if np.isscalar(value) else value
        if support.boundary is not None:
            if support.boundary not in self.boundary_ids:
                raise ValueError(f"no boundary id {support.boundary} (the mesh has {sorted(self.boundary_ids)})")
            return fd.DirichletBC(space, g, support.boundary)
        if support.point is not None:
            nodes = [self._nearest_node(support.point)]
        elif support.nodes is not None:
            nodes = list(support.nodes)
            if not nodes or min(nodes) < 0 or max(nodes) >= len(self.nodes):
                raise ValueError(f"support nodes must be indices below {len(self.nodes)}, got {support.nodes!r}")
        else:
            nodes = self._segment_nodes(*support.segment, support.tolerance)
            if not len(nodes):
                raise ValueError(f"no mesh vertex on the support segment {support.segment}")
        return NodalBC(space, g, np.asarray(nodes))

    def _segment_nodes(self, a: Sequence[float], b: Sequence[float], tolerance: float) -> np.ndarray:
        a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
        along = b - a
        t = np.clip((self.nodes - a) @ along / max(along @ along, 1e-300), 0.0, 1.0)
        distance = np.linalg.norm(self.nodes - (a + t[:, None] * along), axis=1)
        scale = float(np.linalg.norm(np.ptp(self.nodes, axis=0)))
        return np.flatnonzero(distance <= tolerance * scale)

    @cached_property
    def boundary_ids(self) -> set[int]:
        """The boundary ids of the mesh."""
        return {int(i) for i in self.mesh.exterior_facets.unique_markers}

    def _check_loads(self) -> None:
        for load in self.loads:
            if isinstance(load, Traction) and load.boundary not in self.boundary_ids:
                raise ValueError(f"no boundary id {load.boundary} for a traction (the mesh has "
                                 f"{sorted(self.boundary_ids)})")
            if isinstance(load, PointLoad) and self.mesh.locate_cell(np.asarray(load.position, float),
                                                                     tolerance=1e-9) is None:
                raise ValueError(f"the point load at {tuple(load.position)} is off the domain")

    # --- forms ------------------------------------------------------------------------------
    def modulus(self, rho: ufl.core.expr.Expr) -> ufl.core.expr.Expr:
        """E(rho) of the material."""
        return self.material.modulus(rho)

    def stress(self, u: ufl.core.expr.Expr, rho: ufl.core.expr.Expr) -> ufl.core.expr.Expr:
        """sigma(u) of the design rho."""
        return self.material.stress(u, self.modulus(rho))

    def bilinear(self, u: Any, v: Any, rho: ufl.core.expr.Expr) -> ufl.Form:
        """``a(rho; u, v) = integral sigma(u, rho) : eps(v) dx``."""
        return stiffness_form(self.material, u, v, rho, self.dx)

    def distributed_loads(self, v: Any) -> ufl.Form | None:
        """The tractions and body forces as a linear form of ``v`` (None if there are none)."""
        terms = []
        for load in self.loads:
            if isinstance(load, Traction):
                terms.append(ufl.inner(fd.Constant(load.traction), v) * fd.ds(load.boundary, domain=self.mesh))
            elif isinstance(load, BodyForce):
                terms.append(ufl.inner(fd.Constant(load.force), v) * fd.dx(domain=self.mesh))
        return sum(terms[1:], terms[0]) if terms else None

    def point_load_vector(self) -> np.ndarray:
        """(n_nodes, 2) nodal forces of the point loads (each at its nearest vertex)."""
        f = np.zeros((len(self.nodes), 2))
        for load in self.loads:
            if isinstance(load, PointLoad):
                f[self._nearest_node(load.position)] += load.force
        return f

    def load_vector(self) -> fd.Cofunction:
        """The assembled loads F as a cofunction of V (distributed loads plus point loads)."""
        v = fd.TestFunction(self.V)
        form = self.distributed_loads(v)
        F = fd.assemble(form) if form is not None else fd.Cofunction(self.V.dual())
        F.dat.data[:] += self.point_load_vector()
        return F

    def residual(self, u: Any, rho: Any, v: Any) -> ufl.Form:
        """The weak residual without point loads, ``a(rho; u, v) - (tractions and body forces)(v)``."""
        form = self.bilinear(u, v, rho)
        loads = self.distributed_loads(v)
        return form - loads if loads is not None else form

    # --- solves -----------------------------------------------------------------------------
    @cached_property
    def _load(self) -> fd.Cofunction:
        return self.load_vector()

    @cached_property
    def _matrix(self):
        return fd.assemble(self.bilinear(fd.TrialFunction(self.V), fd.TestFunction(self.V), self.rho), bcs=self.bcs)

    @cached_property
    def _solver(self) -> fd.LinearSolver:
        options = SOLVERS[self.solver] if isinstance(self.solver, str) else dict(self.solver)
        nullspace = rigid_body_modes(self.V) if options.get("pc_type") == "gamg" else None
        return fd.LinearSolver(self._matrix, solver_parameters=options, near_nullspace=nullspace,
                               options_prefix="pidm_fem_elasticity_")

    def solve(self, rho: np.ndarray | None = None) -> fd.Function:
        """The displacement of the design ``rho`` (values of the density space; the current one if None)."""
        if rho is not None:
            self.rho.dat.data[:] = rho
        fd.assemble(self.bilinear(fd.TrialFunction(self.V), fd.TestFunction(self.V), self.rho), bcs=self.bcs,
                    tensor=self._matrix)
        self._solver.solve(self.u, self._load)
        return self.u

    def compliance(self, u: fd.Function | None = None) -> float:
        """``c = F(u)``, the work of the loads (``u^T K u`` under homogeneous supports)."""
        u = self.u if u is None else u
        return float(self._load.dat.data_ro.ravel() @ u.dat.data_ro.ravel())

    def compliance_gradient(self, u: fd.Function | None = None) -> np.ndarray:
        """dc/drho of the design whose displacement is ``u`` (compliance is self-adjoint: ``-u^T dK/drho u``)."""
        u = self.u if u is None else u
        energy = self.bilinear(u, u, self.rho)
        return -fd.assemble(fd.derivative(energy, self.rho, fd.TestFunction(self.D))).dat.data_ro.copy()

    @cached_property
    def volume_weights(self) -> np.ndarray:
        """d(volume fraction)/d(rho): ``integral phi_i dx / |Omega|`` for each density DOF."""
        return fd.assemble(fd.TestFunction(self.D) * fd.dx).dat.data_ro.copy() / self.area

    def volume_fraction(self, rho: np.ndarray | None = None) -> float:
        """``integral rho dx / |Omega|``."""
        values = self.rho.dat.data_ro if rho is None else rho
        return float(self.volume_weights @ values)

    # --- conditioning fields ----------------------------------------------------------------
    def solid_fields(self) -> dict[str, fd.Function]:
        """Strain energy density and von Mises stress of the fully solid design, in DG0 (the paper's conditions).

        Returns ``{"strain_energy_density": W, "von_mises": s, "u": u}`` with
        ``W = sigma : eps / 2`` and, in plane stress, ``s = sqrt(sxx^2 - sxx syy + syy^2 + 3 sxy^2)``
        (plane strain adds ``szz = nu (sxx + syy)``).
        """
        u = self.solve(np.ones(self.D.dof_count)).copy(deepcopy=True)
        sigma = self.stress(u, fd.Constant(1.0))
        eps = ufl.sym(ufl.grad(u))
        W0 = fd.FunctionSpace(self.mesh, "DG", 0)
        energy = fd.Function(W0, name="strain_energy_density").project(0.5 * ufl.inner(sigma, eps))
        sxx, syy, sxy = sigma[0, 0], sigma[1, 1], sigma[0, 1]
        szz = self.material.nu * (sxx + syy) if self.material.plane == "strain" else 0.0
        mises = ufl.sqrt(0.5 * ((sxx - syy) ** 2 + (syy - szz) ** 2 + (szz - sxx) ** 2) + 3 * sxy**2)
        von_mises = fd.Function(W0, name="von_mises").project(mises)
        return {"strain_energy_density": energy, "von_mises": von_mises, "u": u}

    # --- the strong-form-equivalent residual ----------------------------------------------------
    @cached_property
    def lumped_mass(self) -> np.ndarray:
        """(n_nodes, 2) lumped mass of the displacement space (row sums of the vector mass matrix)."""
        ones = fd.Function(self.V).assign(fd.Constant((1.0, 1.0)))
        return fd.assemble(ufl.inner(ones, fd.TestFunction(self.V)) * fd.dx).dat.data_ro.copy()

    def strong_residual(self, u: fd.Function, rho: fd.Function) -> np.ndarray:
        """``M_L^{-1} R`` (n_nodes, 2) of (u, rho), with the supported components set to zero (their reactions)."""
        R = fd.assemble(self.residual(u, rho, fd.TestFunction(self.V))).dat.data_ro.copy() - self.point_load_vector()
        r = R / self.lumped_mass
        for bc in self.bcs:
            component = bc.function_space().component
            if component is None:
                r[bc.nodes] = 0.0
            else:
                r[bc.nodes, component] = 0.0
        return r


def rigid_body_modes(V: fd.FunctionSpace) -> fd.VectorSpaceBasis:
    """The three rigid-body modes of a 2D vector space (two translations, one rotation), orthonormalised."""
    x, y = fd.SpatialCoordinate(V.mesh())
    modes = [fd.Function(V).interpolate(fd.as_vector(m)) for m in ((1.0, 0.0), (0.0, 1.0), (-y, x))]
    basis = fd.VectorSpaceBasis(modes)
    basis.orthonormalize()
    return basis
