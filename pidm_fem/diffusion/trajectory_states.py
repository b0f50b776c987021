"""States of the denoiser's own sampling trajectories, for physics terms on the inputs it meets when sampling.

The data loss only ever shows the denoiser noised data ``x_t = q(x_0, t)``. When it
samples, it meets its own states instead, and their clean estimates drift away from
the physics (README, "the sampling trajectory"). :class:`TrajectoryStates` draws a
batch of such states: DDIM chains (deterministic with eta = 0, the ancestral sampler's
variance with eta = 1) of the current weights from pure noise, each sample stopped at
a random visited step below ``max_t``; the batch is kept for ``every`` training steps
and then drawn afresh. Its state (the batch and the call count) goes into checkpoints,
so that a resumed run repeats the original one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from pidm_fem.diffusion.schedule import CosineSchedule, gaussian_noise

Denoise = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``denoise(x_t, t) -> x0_hat`` in normalised units."""


@dataclass
class TrajectoryStates:
    """A batch of states ``(x_t, t)`` on the denoiser's own DDIM trajectories, refreshed every ``every`` calls.

    Parameters
    ----------
    schedule
        The noise schedule of the denoiser.
    every
        Training steps (calls of :meth:`next`) a drawn batch serves; the first call draws.
    n_steps
        Network evaluations along each chain from ``T - 1`` to the data
        (:meth:`CosineSchedule.ddim_timesteps`).
    max_t
        Only states at visited steps ``t < max_t`` are kept; every visited step when None.
    eta
        Stochasticity of the chains' DDIM steps (:meth:`CosineSchedule.ddim_step`); at 0 the
        chains draw no noise after their start.

    Attributes
    ----------
    calls
        Calls of :meth:`next` so far.
    x_t, t
        The current batch (normalised states (B, C, n) and timesteps (B,)), None before the first draw.
    """

    schedule: CosineSchedule
    every: int
    n_steps: int
    max_t: int | None = None
    eta: float = 0.0
    calls: int = 0
    x_t: torch.Tensor | None = field(default=None, repr=False)
    t: torch.Tensor | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        for name in ("every", "n_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not 0 <= self.eta <= 1:
            raise ValueError(f"eta must lie in [0, 1], got {self.eta!r}")
        if self.n_steps > self.schedule.T:
            raise ValueError(f"n_steps must be at most T = {self.schedule.T}, got {self.n_steps}")
        if not self._eligible().any():
            raise ValueError(f"max_t = {self.max_t} keeps none of the chain's steps {self._grid().tolist()}")

    def _grid(self) -> torch.Tensor:
        """The steps every chain visits, from T - 1 down (n_steps of them)."""
        start = torch.full((1,), self.schedule.T - 1, dtype=torch.int64)
        return self.schedule.ddim_timesteps(start, self.n_steps)[:-1, 0]

    def _eligible(self) -> torch.Tensor:
        grid = self._grid()
        return torch.ones_like(grid, dtype=torch.bool) if self.max_t is None else grid < self.max_t

    @torch.no_grad()
    def draw(
        self,
        denoise: Denoise,
        shape: tuple[int, int, int],
        *,
        dtype: torch.dtype,
        device: torch.device | str,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run B chains from pure noise and stop each at a random eligible step.

        Parameters
        ----------
        denoise
            The denoiser, called without gradients.
        shape
            (B, C, n) of the batch.
        dtype, device
            Of the states.
        generator
            Source of the initial noise, of the steps' noise (eta > 0) and of the stopping steps.

        Returns
        -------
        x_t : torch.Tensor
            States (B, C, n) in normalised units.
        t : torch.Tensor
            Their timesteps (B,), int64.
        """
        batch = shape[0]
        grid = self._grid().to(device)
        times = torch.cat([grid, grid.new_full((1,), -1)]).unsqueeze(1).expand(-1, batch)
        x = gaussian_noise(tuple(shape), dtype=dtype, device=device, generator=generator)
        visited = []
        for k in range(self.n_steps):
            visited.append(x)
            noise = None
            if self.eta > 0:
                noise = gaussian_noise(tuple(shape), dtype=dtype, device=device, generator=generator)
            x = self.schedule.ddim_step(denoise(x, times[k]), x, times[k], times[k + 1], self.eta, noise)
        eligible = torch.nonzero(self._eligible()).flatten()
        draw_device = generator.device if generator is not None else "cpu"
        pick = eligible[torch.randint(len(eligible), (batch,), generator=generator, device=draw_device).cpu()]
        states = torch.stack(visited)[pick.to(device), torch.arange(batch, device=device)]
        return states, grid[pick.to(device)]

    def next(
        self,
        denoise: Denoise,
        shape: tuple[int, int, int],
        *,
        dtype: torch.dtype,
        device: torch.device | str,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The current batch, drawn afresh (:meth:`draw`) on the first call and every ``every`` calls."""
        if self.calls % self.every == 0 or self.x_t is None:
            self.x_t, self.t = self.draw(denoise, shape, dtype=dtype, device=device, generator=generator)
        self.calls += 1
        return self.x_t.to(device), self.t.to(device)

    def state_dict(self) -> dict[str, Any]:
        """The call count and the current batch, for checkpoints."""
        return {"calls": self.calls, "x_t": self.x_t, "t": self.t}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore from :meth:`state_dict`."""
        self.calls, self.x_t, self.t = int(state["calls"]), state["x_t"], state["t"]
