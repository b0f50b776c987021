"""Reverse-process sampling: ancestral DDPM and DDIM, with the baselines as options.

One loop serves both methods: at each step the denoiser (or the classifier-free
guided combination of :class:`~pidm_fem.diffusion.guidance.PhysicsGuidedConditioning`)
gives x0_hat, the schedule takes the step, and an optional
:class:`~pidm_fem.diffusion.guidance.CoCoGenCorrector` corrects the sample during the
last steps and after the loop. The loop runs in normalised units; the result is
returned in physical units.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from tqdm.auto import tqdm

from pidm_fem.diffusion.guidance import CoCoGenCorrector, PhysicsGuidedConditioning
from pidm_fem.diffusion.normalization import FieldNormalizer
from pidm_fem.diffusion.schedule import CosineSchedule, gaussian_noise

METHODS = ("ddpm", "ddim")


def sampling_timesteps(schedule: CosineSchedule, method: str, n_steps: int | None, batch: int) -> torch.Tensor:
    """Time grid (n_steps + 1, batch) from T-1 down to -1 (the clean data).

    DDPM visits every step (``n_steps`` must be None or T); DDIM visits ``n_steps``
    of them (default T) as in :meth:`CosineSchedule.ddim_timesteps`.
    """
    if method not in METHODS:
        raise ValueError(f"sampling method must be one of {METHODS}, got {method!r}")
    if method == "ddpm":
        if n_steps not in (None, schedule.T):
            raise ValueError(f"ancestral DDPM sampling visits all T = {schedule.T} steps, got n_steps = {n_steps!r}")
        n_steps = schedule.T
    elif n_steps is None:
        n_steps = schedule.T
    elif not isinstance(n_steps, int) or isinstance(n_steps, bool) or not 1 <= n_steps <= schedule.T:
        raise ValueError(f"DDIM n_steps must be an integer in 1..{schedule.T}, got {n_steps!r}")
    start = torch.full((batch,), schedule.T - 1, dtype=torch.int64)
    return schedule.ddim_timesteps(start, n_steps)


@torch.no_grad()
def sample(
    model: torch.nn.Module,
    schedule: CosineSchedule,
    normalizer: FieldNormalizer,
    shape: tuple[int, int, int],
    *,
    method: str = "ddpm",
    n_steps: int | None = None,
    eta: float = 0.0,
    cond: torch.Tensor | None = None,
    scalars: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    corrector: CoCoGenCorrector | None = None,
    guidance: PhysicsGuidedConditioning | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    progress: bool = True,
    on_step: Callable[[int, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Draw a batch of samples from an x0-predicting denoiser.

    The caller puts the model in evaluation mode (and swaps in EMA weights) first.

    Parameters
    ----------
    model
        Denoiser ``model(x_t, t, cond=None, scalars=None) -> x0_hat`` in normalised units.
    schedule
        The schedule the model was trained with.
    normalizer
        The normaliser of the training data; the samples are returned denormalised.
    shape
        (B, C, n) of the batch to draw.
    method
        "ddpm": ancestral sampling with the posterior mean from x0_hat and fixed
        variance beta_t, no noise at the last step. "ddim": DDIM with ``n_steps``
        steps (default T) and stochasticity ``eta`` (0 deterministic).
    n_steps
        Number of DDIM steps, in 1..T; DDPM always takes all T.
    eta
        DDIM noise level (ignored by DDPM).
    cond, scalars
        Per-node condition fields (B, C_cond, n) and per-sample scalars (B, S), passed
        to the model at every step.
    generator
        Source of the initial and per-step noise; the global RNG when None.
    corrector
        CoCoGen corrections during the last ``corrector.n_during`` steps and
        ``corrector.n_after`` times after the loop.
    guidance
        Physics-guided conditioning: residual-gradient channels appended to ``cond`` and
        classifier-free guidance with ``guidance.scale``.
    dtype, device
        Of the samples (and of the model's inputs).
    progress
        Show a tqdm progress bar.
    on_step
        Called as ``on_step(t, x0_hat)`` at every step with the step's timestep and the
        denoiser's clean estimate in physical units (B, C, n), before any correction:
        the trajectory of the estimates, whose last one is the sample when nothing
        corrects it.

    Returns
    -------
    torch.Tensor
        Physical samples, shape (B, C, n).
    """
    if len(shape) != 3 or shape[1] != normalizer.n_channels:
        raise ValueError(f"shape must be (B, {normalizer.n_channels}, n), got {tuple(shape)}")
    times = sampling_timesteps(schedule, method, n_steps, shape[0]).to(device)
    steps = times.shape[0] - 1
    x = gaussian_noise(tuple(shape), dtype=dtype, device=device, generator=generator)
    for k in tqdm(range(steps), desc=f"{method} sampling", disable=not progress, leave=False):
        t, t_prev = times[k], times[k + 1]
        if guidance is None:
            x0_hat = model(x, t, cond=cond, scalars=scalars)
        else:
            x0_hat = guidance.predict(model, x, t, cond=cond, scalars=scalars)
        if on_step is not None:
            on_step(int(t[0]), normalizer.denormalize(x0_hat))
        stochastic = method == "ddpm" or eta > 0
        noise = gaussian_noise(x.shape, dtype=dtype, device=device, generator=generator) if stochastic else None
        if method == "ddpm":  # the step itself adds no noise at t = 0
            x = schedule.ddpm_step(x0_hat, x, t, noise)
        else:
            x = schedule.ddim_step(x0_hat, x, t, t_prev, eta=eta, noise=noise)
        if corrector is not None and k >= steps - corrector.n_during:
            x = corrector.correct(x)
    if corrector is not None:
        x = corrector.correct(x, corrector.n_after)
    return normalizer.denormalize(x)
