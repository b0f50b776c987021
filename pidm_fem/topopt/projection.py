"""Heaviside projection of a filtered density, with continuation of its sharpness beta."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class HeavisideProjection:
    """``x_bar = (tanh(beta eta) + tanh(beta (x - eta))) / (tanh(beta eta) + tanh(beta (1 - eta)))``.

    ``beta`` doubles every ``every`` iterations, and as soon as the design change falls below
    the stopping tolerance, up to ``beta_max``; the optimiser stops only at ``beta_max``.
    """

    beta: float = 1.0
    eta: float = 0.5
    beta_max: float = 32.0
    every: int = 50

    def apply(self, x: np.ndarray) -> np.ndarray:
        b, e = self.beta, self.eta
        return (np.tanh(b * e) + np.tanh(b * (x - e))) / (np.tanh(b * e) + np.tanh(b * (1 - e)))

    def derivative(self, x: np.ndarray) -> np.ndarray:
        b, e = self.beta, self.eta
        return b * (1 - np.tanh(b * (x - e)) ** 2) / (np.tanh(b * e) + np.tanh(b * (1 - e)))

    @property
    def finished(self) -> bool:
        """Whether beta has reached its maximum."""
        return self.beta >= self.beta_max

    def continue_(self, iteration: int, converged: bool) -> bool:
        """Double beta when due (every ``every`` iterations or on convergence); whether it changed."""
        if self.finished or not (converged or iteration % self.every == 0):
            return False
        self.beta = min(2 * self.beta, self.beta_max)
        return True
