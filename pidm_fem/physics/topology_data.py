"""Random minimum-compliance problems on a mesh and their SIMP optima: the topology case study's samples.

A problem is drawn from the sample's index and the data seed, on a rectangular domain
[x0, x1] x [y0, y1] whose edges carry Firedrake's RectangleMesh boundary ids (1 left,
2 right, 3 bottom, 4 top):

* **supports**, one family of three, equally likely: ``clamped`` (the left edge fixed),
  ``pinned`` (both bottom corners fixed), ``rollers`` (the left edge a roller in x, the
  bottom-right corner a roller in y: the MBB half-beam's);
* **load**: one point load of unit size on the path along the top edge (left to right)
  and down the right edge, at a fraction ``s`` of its length, pointing at an angle drawn
  uniformly in [-180, 0] degrees (downwards, from the +x axis);
* **volume fraction** uniform in the split's range.

A problem whose load lands on a supported vertex (the top-left corner of a clamped or
roller-supported edge, the bottom-right corner of pinned or roller supports) does no work
on any design; it is drawn again from the same stream, so sample i stays a function of i.

The in-distribution split draws ``s`` in [0, 0.4) or [0.5, 1] and the volume fraction in
[0.3, 0.5]; the out-of-distribution split draws ``s`` in [0.4, 0.5) (load positions never
seen in training) and the volume fraction in [0.2, 0.3) or (0.5, 0.6].

Each problem is solved by SIMP with a P1 density and the Helmholtz filter (optimality
criteria, change 0.01, at most ``max_iterations``); the density, cut to [0, 1], is solved
once more for its displacement, so that every row is an exact equilibrium. A sample row packs, on the P1 nodes:
the generated fields ``u`` (displacement, vector) and ``rho`` (density), and the condition
fields ``strain_energy`` and ``von_mises`` (of the fully solid design, cell values taken to
the nodes by the lumped L2 projection), ``volfrac``
(constant), ``support`` (per node and component, 1 where fixed) and ``load`` (the nodal
force). :meth:`TopologySampleGenerator.record` also gives the compliance, the iteration
count and whether SIMP hit its cap.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from pidm_fem.mesh import load_mesh, mesh_fingerprint
from pidm_fem.physics.elasticity import Elasticity, Material, PointLoad, Support, vertex_nodes

#: the support families
SUPPORT_FAMILIES = ("clamped", "pinned", "rollers")
#: ranges of the load position s and the volume fraction, per split
SPLITS = {
    "in_distribution": {"s": ((0.0, 0.4), (0.5, 1.0)), "volfrac": ((0.3, 0.5),)},
    "out_of_distribution": {"s": ((0.4, 0.5),), "volfrac": ((0.2, 0.3), (0.5, 0.6))},
}
#: the layout's fields: generated, then conditions
GENERATED = ("u", "rho")
CONDITIONS = ("strain_energy", "von_mises", "volfrac", "support", "load")


@dataclass(frozen=True)
class TopologyDataSettings:
    """Settings of the topology samples (see the module description).

    Attributes
    ----------
    mesh
        The domain's mesh file (a rectangle with boundary ids 1-4).
    seed
        Data seed: sample i is drawn from (seed, split, i).
    split
        ``in_distribution`` or ``out_of_distribution``.
    rmin
        Helmholtz filter radius (mesh units).
    max_iterations
        SIMP's iteration cap.
    """

    mesh: str
    seed: int = 0
    split: Literal["in_distribution", "out_of_distribution"] = "in_distribution"
    rmin: float = 0.08
    max_iterations: int = 200

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {self.split!r}")

    def as_dict(self) -> dict[str, Any]:
        """JSON-serialisable settings (the mesh as an absolute path)."""
        return {**dataclasses.asdict(self), "mesh": os.path.abspath(self.mesh)}


@dataclass(frozen=True)
class RandomProblem:
    """One drawn problem: support family, load position s, angle (degrees), volume fraction."""

    family: str
    s: float
    angle: float
    volfrac: float


def _uniform_in(rng: np.random.Generator, intervals: tuple[tuple[float, float], ...]) -> float:
    lengths = np.array([b - a for a, b in intervals])
    k = rng.choice(len(intervals), p=lengths / lengths.sum())
    return float(rng.uniform(*intervals[k]))


def draw_problem(rng: np.random.Generator, split: str) -> RandomProblem:
    """A random problem of ``split`` (see the module description)."""
    family = SUPPORT_FAMILIES[rng.integers(len(SUPPORT_FAMILIES))]
    s = _uniform_in(rng, SPLITS[split]["s"])
    angle = float(rng.uniform(-180.0, 0.0))
    return RandomProblem(family, s, angle, _uniform_in(rng, SPLITS[split]["volfrac"]))


def load_position(s: float, low: np.ndarray, high: np.ndarray) -> tuple[float, float]:
    """The point at fraction ``s`` of the path along the top edge (left to right), then down the right edge."""
    width, height = high - low
    distance = s * (width + height)
    if distance <= width:
        return float(low[0] + distance), float(high[1])
    return float(high[0]), float(high[1] - (distance - width))


def conditions_of(problem: RandomProblem, low: np.ndarray, high: np.ndarray) -> tuple[list, list]:
    """The supports and the load of a drawn problem on the box [low, high]."""
    if problem.family == "clamped":
        supports = [Support("fixed", boundary=1)]
    elif problem.family == "pinned":
        supports = [Support("fixed", point=(float(low[0]), float(low[1]))),
                    Support("fixed", point=(float(high[0]), float(low[1])))]
    else:
        supports = [Support("roller_x", boundary=1), Support("roller_y", point=(float(high[0]), float(low[1])))]
    angle = np.radians(problem.angle)
    force = (float(np.cos(angle)), float(np.sin(angle)))
    return supports, [PointLoad(load_position(problem.s, low, high), force)]


class TopologySampleGenerator:
    """Sample ``i``: a random problem, its SIMP optimum and its conditions, as one packed row."""

    def __init__(self, settings: TopologyDataSettings, mesh=None):
        import firedrake as fd

        from pidm_fem.bridge import FieldLayout

        self.settings = settings
        self.mesh = mesh if mesh is not None else load_mesh(settings.mesh)
        self.P1 = fd.FunctionSpace(self.mesh, "CG", 1)
        self.V = fd.VectorFunctionSpace(self.mesh, "CG", 1)
        spaces = {"u": self.V, "rho": self.P1, "strain_energy": self.P1, "von_mises": self.P1,
                  "volfrac": self.P1, "support": self.V, "load": self.V}
        self.layout = FieldLayout.from_spaces(spaces)
        self.vertices = vertex_nodes(self.P1)
        self.low, self.high = self.vertices.min(axis=0), self.vertices.max(axis=0)

    @property
    def fingerprint(self) -> str:
        """Fingerprint of the mesh and the P1 fields the rows refer to."""
        return f"{mesh_fingerprint(self.mesh)}-topology-P1"

    def problem(self, index: int) -> RandomProblem:
        """The problem of sample ``index``: drawn again (from the same stream) while its load acts on a support."""
        split = list(SPLITS).index(self.settings.split)
        rng = np.random.default_rng([self.settings.seed, split, index])
        while True:
            drawn = draw_problem(rng, self.settings.split)
            if not self._load_on_support(drawn):
                return drawn

    def _nearest_vertex(self, point) -> np.ndarray:
        return self.vertices[np.argmin(np.linalg.norm(self.vertices - np.asarray(point), axis=1))]

    def _load_on_support(self, problem: RandomProblem) -> bool:
        """Whether the load's vertex is a supported one (its work, then, is lost in the reaction)."""
        supports, loads = conditions_of(problem, self.low, self.high)
        at = self._nearest_vertex(loads[0].position)
        for support in supports:
            if support.boundary == 1 and np.isclose(at[0], self.low[0]):
                return True
            if support.point is not None and np.array_equal(at, self._nearest_vertex(support.point)):
                return True
        return False

    def elasticity(self, problem: RandomProblem) -> Elasticity:
        """The elasticity problem (P1 density, plane stress, E_min 1e-9) of a drawn problem."""
        supports, loads = conditions_of(problem, self.low, self.high)
        return Elasticity(self.mesh, supports, loads, material=Material(), density="P1")

    def simp_settings(self, problem: RandomProblem, max_iterations: int | None = None):
        """SIMP's settings for a drawn problem: its volume fraction, the Helmholtz filter, the iteration cap."""
        from pidm_fem.topopt import SIMPSettings

        cap = self.settings.max_iterations if max_iterations is None else max_iterations
        return SIMPSettings(volfrac=problem.volfrac, rmin=self.settings.rmin, filter="helmholtz", max_iterations=cap)

    def record(self, index: int) -> dict[str, Any]:
        """Sample ``index`` with its bookkeeping: ``row``, ``problem``, ``compliance``, ``iterations``, ``capped``."""
        from pidm_fem.topopt import optimise

        problem = self.problem(index)
        elasticity = self.elasticity(problem)
        solid = elasticity.solid_fields()
        result = optimise(elasticity, self.simp_settings(problem), progress=False)
        density = np.clip(result.density, 0.0, 1.0)  # the Helmholtz filter may overshoot 1 by a little
        u = elasticity.solve(density)
        support = np.zeros((self.P1.dof_count, 2))
        for bc in elasticity.bcs:
            component = bc.function_space().component
            support[bc.nodes, slice(None) if component is None else component] = 1.0
        fields = {
            "u": u.dat.data_ro.copy(), "rho": density,
            "strain_energy": self._nodal(solid["strain_energy_density"]),
            "von_mises": self._nodal(solid["von_mises"]),
            "volfrac": np.full(self.P1.dof_count, problem.volfrac),
            "support": support, "load": elasticity.point_load_vector(),
        }
        row = self.layout.join({name: np.asarray(value).reshape(1, -1) for name, value in fields.items()})[0]
        return {"row": row, "problem": problem, "compliance": elasticity.compliance(),
                "iterations": result.iterations, "capped": not result.converged}

    def __call__(self, index: int) -> np.ndarray:
        return self.record(index)["row"]

    def _nodal(self, field) -> np.ndarray:
        """A cell field on the P1 nodes by the lumped L2 projection ``M_L^{-1} (f, phi_i)`` (keeps its sign)."""
        import firedrake as fd

        v = fd.TestFunction(self.P1)
        return fd.assemble(field * v * fd.dx).dat.data_ro / fd.assemble(v * fd.dx).dat.data_ro


def make_topology_generator(settings: TopologyDataSettings) -> TopologySampleGenerator:
    """Picklable factory of worker processes' generators."""
    return TopologySampleGenerator(settings)
