"""The PIDM training loss: min-SNR data loss plus physics terms as virtual observations.

For clean physical samples x0 the loss draws t and noise, forms x_t in normalised
units, asks the denoiser for x0_hat and adds

- the data loss ``c_data * mean_b( min(SNR_t, 5) * mean((x0_hat - x0)^2) )`` (normalised units);
- the residual term ``c_residual * mean(r^2 / (2 sigma_t^2))``, ``r = residual(x0_est)``;
- equality constraints ``c_eq * mean(g^2 / (2 sigma_t^2))``;
- inequality constraints ``c_ineq * mean(max(g, 0)^2 / (2 sigma_t^2))``;
- an objective ``lambda_opt * mean(J)`` (an exponential prior on J);
- a state misfit ``c_state * mean_b(sum(m^2))``, ``m = state_misfit(x0_est)`` (e.g. the
  state against the one solved for the estimate's own coefficients, relative: the
  sum of squares is the squared relative state error), on every estimate or, with
  ``state_on="trajectory"``, on the trajectory states' estimates only (below),

where sigma_t^2 is the schedule's posterior variance of each sample's t and x0_est
(in physical units) is the network output ("mean") or the end of a differentiable
DDIM chain from x_t ("sample"). The physics only ever sees physical values; it may be
restricted to low noise (``physics_max_t``) and kept from differentiating chosen
channels (``frozen_channels``: the coefficient fields of a PDE). With ``trajectory``
the physics terms also see the network's estimates of states of its own sampling
trajectories (:class:`~pidm_fem.diffusion.trajectory_states.TrajectoryStates`), the
inputs it meets when sampling and the data loss never shows it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from pidm_fem.diffusion.guidance import PhysicsGuidedConditioning, Residual, detach_channels
from pidm_fem.diffusion.normalization import FieldNormalizer
from pidm_fem.diffusion.schedule import CosineSchedule, gaussian_noise
from pidm_fem.diffusion.trajectory_states import TrajectoryStates

Functional = Callable[[torch.Tensor], torch.Tensor]
"""A differentiable map from physical samples (B, C, n) to values (B,) or (B, k)."""

X0_ESTIMATES = ("mean", "sample")
STATE_ON = ("all", "trajectory")


def _rows(values: torch.Tensor, batch: int, name: str) -> torch.Tensor:
    if values.ndim == 0 or values.shape[0] != batch:
        raise ValueError(f"the {name} returned shape {tuple(values.shape)} for a batch of {batch}")
    return values.reshape(batch, -1)


def virtual_likelihood(
    values: torch.Tensor, variance: torch.Tensor, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """``mean(weight * values^2 / (2 variance))``: negative log-likelihood of observing zero.

    Parameters
    ----------
    values
        Shape (B, k).
    variance
        Per-sample variance, shape (B,).
    weight
        Per-sample weight, shape (B,); 1 when None.
    """
    terms = values.pow(2) / (2 * variance.unsqueeze(1))
    return (terms if weight is None else terms * weight.unsqueeze(1)).mean()


@dataclass
class PIDMLoss:
    """Physics-informed diffusion loss (Bastek et al., ICLR 2025) for an x0-predicting denoiser.

    Parameters
    ----------
    schedule
        The noise schedule.
    normalizer
        Maps physical samples to the network's units and back.
    residual
        Differentiable residual on physical samples, (B, C, n) -> (B, M). Needed when
        ``c_residual > 0``; never called when ``c_residual = 0`` (plain DDPM).
    c_data, c_residual
        Weights of the data loss and of the residual term (1 and 1e-3 in the paper).
    x0_estimate
        "mean": the residual sees the network's x0_hat; "sample": it sees the end of a
        deterministic DDIM chain (eta = 0) from x_t to the data, run through the network
        with gradients.
    sample_steps
        Network evaluations along the "sample" chain (the first is the x0_hat of the
        data loss, reused); each sample's chain spans its own t in one vectorised loop.
    equality, inequality
        Constraint functionals g(x0_est) on physical samples; the inequality counts only
        where ``g > 0``. Weighted by ``c_eq`` and ``c_ineq``; skipped when None or weight 0.
    objective
        Objective J(x0_est) to minimise, weighted by ``lambda_opt``; skipped when None or 0.
    snr_gamma
        Clip of the min-SNR weight (5 in the paper).
    conditioning
        Physics-guided conditioning: the denoiser receives the residual-gradient
        channels of x_t after the user condition fields, dropped per sample with the
        conditioning's dropout probability (one mask per batch, reused, with channels
        recomputed, at every network evaluation of the "sample" chain).
    physics_max_t
        The physics terms act on the samples with ``t < physics_max_t`` only (the others
        count as zero in the batch mean); every step when None. At high noise x0_hat is
        a posterior mean, whose residual is not zero even for an exact model.
    frozen_channels
        Channels of x0_est that the physics terms see as constants: their gradients
        reach the network through the data loss only. Freezing the coefficient fields
        (K of Darcy) differentiates the residual with respect to the state alone, the
        direction in which the forward problem is well posed.
    state_misfit
        Misfit m(x0_est) of the state against the physics, (B, C, n) -> (B, k), weighted
        by ``c_state``; skipped when None or weight 0.
    state_on
        The estimates the state misfit acts on: "all" (those of the noised data and of
        the trajectory states) or "trajectory" (the trajectory states' only: none in
        validation or without ``trajectory``).
    trajectory
        States of the network's own DDIM trajectories: in training (``model.training``)
        the physics terms also act on the network's estimates x0_hat of one batch of them
        per call, whatever ``x0_estimate`` (weighted with the posterior variance of their own t, and not restricted
        by ``physics_max_t``: the trajectory has its own ``max_t``). Needs a problem
        without condition fields, scalars or physics-guided conditioning.
    max_t
        The random timesteps are drawn from ``t < max_t`` (the range of a low-noise
        expert, :class:`~pidm_fem.diffusion.TimestepExperts`); from every step when None.
    """

    schedule: CosineSchedule
    normalizer: FieldNormalizer
    residual: Residual | None = None
    c_data: float = 1.0
    c_residual: float = 1e-3
    x0_estimate: str = "mean"
    sample_steps: int = 4
    equality: Functional | None = None
    c_eq: float = 1.0
    inequality: Functional | None = None
    c_ineq: float = 1.0
    objective: Functional | None = None
    lambda_opt: float = 1.0
    snr_gamma: float = 5.0
    conditioning: PhysicsGuidedConditioning | None = None
    physics_max_t: int | None = None
    frozen_channels: tuple[int, ...] = ()
    state_misfit: Functional | None = None
    c_state: float = 0.0
    state_on: str = "all"
    trajectory: TrajectoryStates | None = None
    max_t: int | None = None

    def __post_init__(self) -> None:
        for name in ("c_data", "c_residual", "c_eq", "c_ineq", "lambda_opt", "snr_gamma", "c_state"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and value >= 0 and value != float("inf")):
                raise ValueError(f"{name} must be a finite non-negative number, got {value!r}")
        if self.x0_estimate not in X0_ESTIMATES:
            raise ValueError(f"x0_estimate must be one of {X0_ESTIMATES}, got {self.x0_estimate!r}")
        if self.state_on not in STATE_ON:
            raise ValueError(f"state_on must be one of {STATE_ON}, got {self.state_on!r}")
        if not isinstance(self.sample_steps, int) or isinstance(self.sample_steps, bool) or self.sample_steps < 1:
            raise ValueError(f"sample_steps must be a positive integer, got {self.sample_steps!r}")
        for name in ("physics_max_t", "max_t"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, int) and 1 <= value <= self.schedule.T):
                raise ValueError(f"{name} must be an integer in [1, T = {self.schedule.T}], got {value!r}")
        if self.c_residual > 0 and self.residual is None:
            raise ValueError("c_residual > 0 needs a residual callable")
        if self.c_state > 0 and self.state_misfit is None:
            raise ValueError("c_state > 0 needs a state_misfit callable")
        if self.trajectory is not None and self.conditioning is not None:
            raise ValueError("trajectory states cannot be combined with physics-guided conditioning")

    def _physics_terms(self) -> list[tuple[str, Functional, float, str]]:
        """(component, functional, weight, kind) of every active physics term."""
        terms = [
            ("residual", self.residual, self.c_residual, "equality"),
            ("constraints", self.equality, self.c_eq, "equality"),
            ("constraints", self.inequality, self.c_ineq, "inequality"),
            ("objective", self.objective, self.lambda_opt, "objective"),
            ("state", self.state_misfit, self.c_state, "state"),
        ]
        return [term for term in terms if term[1] is not None and term[2] > 0]

    def _sample_estimate(
        self,
        denoise: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        x_t: torch.Tensor,
        t: torch.Tensor,
        x0_hat: torch.Tensor,
    ) -> torch.Tensor:
        """End of the differentiable DDIM (eta = 0) chain from (x_t, t) to the data."""
        times = self.schedule.ddim_timesteps(t, self.sample_steps)
        x = x_t
        for k in range(self.sample_steps):
            if k > 0:
                x0_hat = denoise(x, times[k])
            x = self.schedule.ddim_step(x0_hat, x, times[k], times[k + 1])
        return x

    def _add_physics(
        self,
        values: dict[str, torch.Tensor],
        terms: list[tuple[str, Functional, float, str]],
        x0_est: torch.Tensor,
        t: torch.Tensor,
        active: torch.Tensor | None,
        cond: torch.Tensor | None = None,
    ) -> None:
        """Add the physics terms of estimates ``x0_est`` (normalised) at steps ``t`` to ``values``.

        ``active`` (B,) bool masks the samples that count (the others count as zero in the
        batch means); all count when None. ``cond``, the batch's condition fields, is
        passed to every functional as its second argument when given (the physics of a
        conditional problem depends on its loads and supports).
        """
        batch = x0_est.shape[0]
        x_phys = self.normalizer.denormalize(detach_channels(x0_est, self.frozen_channels))
        variance = self.schedule.posterior_variance.to(x_phys.device)[t].to(x_phys.dtype)
        mask = None if active is None else active.to(x_phys.dtype)
        for component, functional, weight_c, kind in terms:
            g = _rows(functional(x_phys) if cond is None else functional(x_phys, cond), batch, component)
            if kind == "objective":
                term = weight_c * (g if mask is None else g * mask.unsqueeze(1)).mean()
            elif kind == "state":
                squares = g.pow(2).sum(dim=1)
                term = weight_c * (squares if mask is None else squares * mask).mean()
            else:
                g = g.clamp(min=0) if kind == "inequality" else g
                term = weight_c * virtual_likelihood(g, variance, mask)
            values[component] = values[component] + term

    def __call__(
        self,
        model: torch.nn.Module,
        x0: torch.Tensor,
        cond: torch.Tensor | None = None,
        scalars: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        t: torch.Tensor | None = None,
        part: slice | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Loss of ``model`` on a batch of clean physical samples.

        Parameters
        ----------
        model
            Denoiser ``model(x_t, t, cond=None, scalars=None) -> x0_hat`` in normalised units.
        x0
            Clean physical samples, shape (B, C, n).
        cond, scalars
            Per-node condition fields (B, C_cond, n) and per-sample scalars (B, S), or None.
            The condition fields are also the second argument of every physics functional.
        generator
            Source of t, the noise and the condition dropout; the global RNG when None.
        t
            Fixed timesteps (B,) instead of random ones (validation at chosen noise levels).
        part
            The rows this process computes in data-parallel training: t, the noise, the
            dropout and the trajectory states are drawn for the whole batch, and the loss is
            the mean over these rows (the processes' mean over equal parts is the batch's).

        Returns
        -------
        total : torch.Tensor
            Scalar loss, differentiable with respect to the model's parameters.
        components : dict[str, float]
            Detached values of the "data", "residual", "constraints", "objective" and
            "state" terms (weights included; 0 when absent) and their sum "total".
        """
        if not isinstance(x0, torch.Tensor) or x0.ndim != 3:
            raise ValueError("PIDMLoss needs clean samples of shape (B, C, n)")
        batch = x0.shape[0]
        if t is None:
            draw_device = generator.device if generator is not None else x0.device
            high = self.schedule.T if self.max_t is None else self.max_t
            t = torch.randint(0, high, (batch,), generator=generator, device=draw_device).to(x0.device)
        elif t.shape != (batch,):
            raise ValueError(f"fixed timesteps must have shape ({batch},), got {tuple(t.shape)}")
        x0_norm = self.normalizer.normalize(x0)
        noise = gaussian_noise(x0_norm.shape, dtype=x0_norm.dtype, device=x0_norm.device, generator=generator)
        x_t = self.schedule.q_sample(x0_norm, t, noise)

        keep = None
        if self.conditioning is not None:
            keep = self.conditioning.draw_keep(batch, x0.device, generator)
        whole = batch
        if part is not None:
            x0, x0_norm, t, x_t = x0[part], x0_norm[part], t[part], x_t[part]
            cond, scalars, keep = (None if v is None else v[part] for v in (cond, scalars, keep))
            batch = x0.shape[0]

        def denoise(x: torch.Tensor, time: torch.Tensor) -> torch.Tensor:
            c = cond if self.conditioning is None else self.conditioning.condition(x, cond, keep)
            return model(x, time, cond=c, scalars=scalars)

        x0_hat = denoise(x_t, t)
        per_sample = (x0_hat - x0_norm).pow(2).flatten(1).mean(dim=1)
        weight = self.schedule.min_snr_weight(t, self.snr_gamma).to(per_sample.dtype)
        data = self.c_data * (weight * per_sample).mean()
        zero = data.new_zeros(())
        values = {"data": data, "residual": zero, "constraints": zero, "objective": zero, "state": zero}

        terms = self._physics_terms()
        on_data = [term for term in terms if term[3] != "state" or self.state_on == "all"]
        if on_data:
            x0_est = x0_hat if self.x0_estimate == "mean" else self._sample_estimate(denoise, x_t, t, x0_hat)
            active = None if self.physics_max_t is None else (t < self.physics_max_t)
            self._add_physics(values, on_data, x0_est, t, active, cond)
        if terms and self.trajectory is not None and model.training:
            if cond is not None or scalars is not None:
                raise ValueError("trajectory states need a problem without condition fields or scalars")
            shape = (whole, *x0_norm.shape[1:])
            states, times = self.trajectory.next(
                denoise, shape, dtype=x0_norm.dtype, device=x0_norm.device, generator=generator
            )
            if part is not None:
                states, times = states[part], times[part]
            self._add_physics(values, terms, denoise(states, times), times, None)

        total = sum(values.values())
        components = {name: float(value.detach()) for name, value in values.items()}
        components["total"] = float(total.detach())
        return total, components
