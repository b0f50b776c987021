"""Classical SIMP topology optimisation: minimum compliance under a volume constraint.

The loop is the 88-line code's (Andreassen et al. 2011) on any mesh:

1. filter (and optionally project) the design x into the physical density, kept non-negative;
2. solve the elasticity problem, compute the compliance and its sensitivities
   (self-adjoint: ``dc/drho = -u^T dK/drho u``, assembled from the UFL derivative of the
   strain energy);
3. take the sensitivities back through the projection and the filter;
4. update x: optimality criteria (move limit 0.2, bisection on the volume multiplier)
   or MMA (Svanberg's method of moving asymptotes, from mmapy);
5. stop when the largest change of x is at most 0.01, or at the iteration cap.

The compliance reported is that of the last design solved, as the 88-line code prints it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from tqdm.auto import tqdm

from pidm_fem.errors import ComputationError
from pidm_fem.physics.elasticity import Elasticity
from pidm_fem.topopt.filters import FILTERS, build_filter
from pidm_fem.topopt.projection import HeavisideProjection

OPTIMIZERS = ("oc", "mma")


@dataclass(frozen=True)
class SIMPSettings:
    """The settings of a SIMP run.

    Attributes
    ----------
    volfrac
        Volume fraction of the design, in (0, 1).
    rmin
        Filter radius (mesh units; the 88-line code's in element sizes).
    filter
        ``density``, ``sensitivity`` or ``helmholtz``.
    optimizer
        ``oc`` (optimality criteria) or ``mma``.
    move
        Move limit of the optimality criteria.
    tolerance
        Stop when the largest change of the design is at most this.
    max_iterations
        The iteration cap.
    projection
        Heaviside projection of the filtered density (beta 1 doubling to ``beta_max``).
    beta_max
        The final sharpness of the projection.
    """

    volfrac: float = 0.5
    rmin: float = 2.4
    filter: Literal["density", "sensitivity", "helmholtz"] = "density"
    optimizer: Literal["oc", "mma"] = "oc"
    move: float = 0.2
    tolerance: float = 0.01
    max_iterations: int = 500
    projection: bool = False
    beta_max: float = 32.0

    def __post_init__(self) -> None:
        if not 0 < self.volfrac < 1:
            raise ValueError(f"volfrac must lie in (0, 1), got {self.volfrac}")
        if not self.rmin > 0:
            raise ValueError(f"rmin must be positive, got {self.rmin}")
        if self.filter not in FILTERS:
            raise ValueError(f"filter must be one of {', '.join(FILTERS)}, got {self.filter!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.projection and self.filter == "sensitivity":
            raise ValueError("the projection needs a filtered density (filter density or helmholtz)")
        if not (0 < self.move <= 1 and self.tolerance > 0 and self.max_iterations >= 1):
            raise ValueError("need 0 < move <= 1, tolerance > 0 and max_iterations >= 1")


@dataclass
class SIMPResult:
    """The outcome of a SIMP run.

    Attributes
    ----------
    design, density
        The design variables x and the physical density (filtered, projected) of the last iteration.
    compliance
        Compliance of the last design solved (the 88-line code's printed value).
    volume_fraction
        Volume fraction of ``density``.
    iterations, seconds, converged
        Iterations (FE solves), wall time, and whether the change tolerance was met before the cap.
    history
        Per iteration: compliance, volume fraction, change, beta and seconds.
    """

    design: np.ndarray
    density: np.ndarray
    compliance: float
    volume_fraction: float
    iterations: int
    seconds: float
    converged: bool
    history: list[dict[str, float]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """JSON-ready scalars of the result."""
        return {"compliance": self.compliance, "volume_fraction": self.volume_fraction,
                "iterations": self.iterations, "seconds": self.seconds, "converged": self.converged,
                "seconds_per_iteration": self.seconds / max(self.iterations, 1)}


class _Design:
    """The chain design -> filtered -> projected density, with its adjoint."""

    def __init__(self, elasticity: Elasticity, settings: SIMPSettings):
        self.filter = build_filter(settings.filter, elasticity.D, settings.rmin)
        self.projection = HeavisideProjection(beta_max=settings.beta_max) if settings.projection else None

    def physical(self, x: np.ndarray) -> np.ndarray:
        """The density the physics sees: filtered, projected, and kept non-negative.

        The Helmholtz filter is not monotone (its consistent mass), so it can leave [0, 1]
        by a little. E(rho) of a negative density would be negative, so it is cut at 0; a
        density a little above 1 is harmless (cutting it too would make the optimality
        criteria oscillate between the cut and the move limit).
        """
        filtered = self.filter.apply(x)
        projected = filtered if self.projection is None else self.projection.apply(filtered)
        return np.maximum(projected, 0.0)

    def pull_back(self, x: np.ndarray, g: np.ndarray) -> np.ndarray:
        """The gradient with respect to x of a function whose gradient at the physical density is g."""
        filtered = self.filter.apply(x)
        projected = filtered if self.projection is None else self.projection.apply(filtered)
        g = np.where(projected >= 0.0, g, 0.0)
        if self.projection is not None:
            g = g * self.projection.derivative(filtered)
        return self.filter.adjoint(g, x)

    def pull_back_volume(self, x: np.ndarray, g: np.ndarray) -> np.ndarray:
        """As :meth:`pull_back` for the volume (whose sensitivities the sensitivity filter leaves alone)."""
        return self.pull_back(x, g) if self.filter.filters_design else g


def optimality_criteria(x: np.ndarray, dc: np.ndarray, dv: np.ndarray, volume: Callable[[np.ndarray], float],
                        volfrac: float, move: float) -> np.ndarray:
    """The 88-line code's update: bisection on the multiplier until the volume fraction is met.

    ``dv`` is scaled to mean one, so that on a uniform grid the bisection is the 88-line code's.
    """
    ratio = np.maximum(0.0, -dc / (dv / dv.mean()))
    if not (ratio > 0).any():
        raise ComputationError("SIMP: the loads do no work on the design (is every load on a support?)")
    low, high = 0.0, 1e9
    while high - low > 1e-3 * (low + high) and high > 1e-40:  # the fullest update may still lack volume
        mid = 0.5 * (low + high)
        xnew = np.maximum(0.0, np.maximum(x - move, np.minimum(1.0, np.minimum(x + move, x * np.sqrt(ratio / mid)))))
        if volume(xnew) > volfrac:
            low = mid
        else:
            high = mid
    return xnew


def optimise(elasticity: Elasticity, settings: SIMPSettings, progress: bool = True,
             x0: np.ndarray | None = None) -> SIMPResult:
    """Minimise the compliance of ``elasticity`` at volume fraction ``settings.volfrac``.

    Parameters
    ----------
    elasticity
        The problem: mesh, supports, loads, material (its density space is the design's).
    settings
        See :class:`SIMPSettings`.
    progress
        Show a tqdm bar with the compliance, volume and change.
    x0
        The starting design (default: ``volfrac`` everywhere), e.g. a generated design to refine.
    """
    design = _Design(elasticity, settings)
    x = np.full(elasticity.D.dof_count, settings.volfrac) if x0 is None else np.clip(np.asarray(x0, float), 0, 1)
    weights = elasticity.volume_weights
    run = _optimise_mma if settings.optimizer == "mma" else _optimise_oc
    started = time.perf_counter()
    with tqdm(total=settings.max_iterations, desc="SIMP", unit="it", disable=not progress, dynamic_ncols=True) as bar:
        x, history, converged = run(elasticity, settings, design, x, weights, bar)
    density = design.physical(x)
    last = history[-1]
    return SIMPResult(x, density, last["compliance"], float(weights @ density), len(history),
                      time.perf_counter() - started, converged, history)


def _record(history: list, bar, started: float, c: float, volume: float, change: float, beta: float) -> None:
    history.append({"iteration": len(history) + 1, "compliance": c, "volume_fraction": volume, "change": change,
                    "beta": beta, "seconds": time.perf_counter() - started})
    bar.update(1)
    bar.set_postfix(c=f"{c:.5g}", vol=f"{volume:.4f}", change=f"{change:.3f}")


def _optimise_oc(elasticity, settings, design, x, weights, bar):
    history: list[dict[str, float]] = []
    started = time.perf_counter()
    volume = lambda candidate: float(weights @ design.physical(candidate))  # noqa: E731
    for iteration in range(1, settings.max_iterations + 1):
        physical = design.physical(x)
        elasticity.solve(physical)
        c = elasticity.compliance()
        dc = design.pull_back(x, elasticity.compliance_gradient())
        dv = design.pull_back_volume(x, weights)
        xnew = optimality_criteria(x, dc, dv, volume, settings.volfrac, settings.move)
        change = float(np.abs(xnew - x).max())
        x = xnew
        beta = design.projection.beta if design.projection is not None else 0.0
        _record(history, bar, started, c, float(weights @ physical), change, beta)
        converged = change <= settings.tolerance
        if design.projection is not None and not design.projection.finished:
            design.projection.continue_(iteration, converged)
            continue
        if converged:
            return x, history, True
    return x, history, False


def _optimise_mma(elasticity, settings, design, x, weights, bar):
    from mmapy import mmasub

    history: list[dict[str, float]] = []
    started = time.perf_counter()
    n = len(x)
    xval = x[:, None].copy()
    xmin, xmax = np.zeros((n, 1)), np.ones((n, 1))
    xold1, xold2, low, upp = xval.copy(), xval.copy(), xmin.copy(), xmax.copy()
    # Svanberg's choices for one constraint: a0 = 1, a = 0, c = 1000, d = 1
    a0, a, c_mma, d = 1.0, np.zeros((1, 1)), np.full((1, 1), 1000.0), np.ones((1, 1))
    scale = None
    for iteration in range(1, settings.max_iterations + 1):
        physical = design.physical(xval[:, 0])
        elasticity.solve(physical)
        c = elasticity.compliance()
        scale = c if scale is None else scale  # the objective in units of the first compliance
        df0dx = design.pull_back(xval[:, 0], elasticity.compliance_gradient())[:, None] / scale
        volume = float(weights @ physical)
        fval = np.array([[volume / settings.volfrac - 1.0]])
        dfdx = design.pull_back_volume(xval[:, 0], weights)[None, :] / settings.volfrac
        xmma, *_, low, upp = mmasub(1, n, iteration, xval, xmin, xmax, xold1, xold2, c / scale, df0dx, fval, dfdx,
                                    low, upp, a0, a, c_mma, d, move=settings.move)
        xold2, xold1, xval = xold1, xval, xmma
        change = float(np.abs(xval - xold1).max())
        _record(history, bar, started, c, volume, change, 0.0)
        if change <= settings.tolerance:
            return xval[:, 0], history, True
    return xval[:, 0], history, False
