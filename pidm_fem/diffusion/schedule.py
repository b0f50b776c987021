"""The cosine noise schedule of the forward process and its reverse-step formulas.

Timesteps are integers ``t = 0, ..., T-1``; ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps``.
All tables are float64 on the CPU; every formula that acts on a tensor gathers
the per-sample coefficients, moves them to the tensor's device and casts them to
its dtype, so the schedule serves float32 training and float64 tests alike.
Per-sample timesteps are ``(B,)`` integer tensors and samples any ``(B, ...)`` tensor.
"""

from __future__ import annotations

import math

import torch


def gaussian_noise(
    shape: tuple[int, ...],
    *,
    dtype: torch.dtype,
    device: torch.device | str,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Standard normal noise drawn from ``generator`` and placed on ``device``.

    The draw happens on the generator's device (the CPU for a CPU generator), so a
    seeded CPU generator gives the same noise whatever device the model runs on.

    Parameters
    ----------
    shape
        Shape of the noise tensor.
    dtype, device
        Of the returned tensor.
    generator
        Source of randomness; the global RNG when None.
    """
    draw_device = generator.device if generator is not None else device
    noise = torch.randn(shape, generator=generator, dtype=dtype, device=draw_device)
    return noise.to(device)


class CosineSchedule:
    """Cosine noise schedule (Nichol and Dhariwal 2021), as in the PIDM reference.

    ``abar(s) = cos^2(((s / T + offset) / (1 + offset)) pi / 2)`` normalised by its
    value at ``s = 0``, evaluated at ``s = 0, ..., T``; ``beta_t = 1 - abar(t+1) / abar(t)``
    clipped to ``[0, max_beta]``, and the cumulative products are rebuilt from the
    clipped betas.

    Parameters
    ----------
    T
        Number of diffusion steps (at least 2).
    s
        Offset of the cosine (0.008 in the paper).
    max_beta
        Upper clip of the betas (0.999 in the paper), so that ``abar_{T-1} > 0``.

    Attributes
    ----------
    betas, alphas, alpha_bar, alpha_bar_prev : torch.Tensor
        Float64 tables of length T; ``alpha_bar_prev[0] = 1``.
    posterior_variance : torch.Tensor
        ``sigma_t^2 = beta_t (1 - abar_{t-1}) / (1 - abar_t)`` with the t = 0 entry
        (which is 0) replaced by the t = 1 entry: the variance of the virtual
        observation of the physics residual.
    snr : torch.Tensor
        Signal-to-noise ratio ``abar_t / (1 - abar_t)``.
    """

    def __init__(self, T: int = 100, s: float = 0.008, max_beta: float = 0.999):
        if not isinstance(T, int) or isinstance(T, bool) or T < 2:
            raise ValueError(f"T must be an integer of at least 2, got {T!r}")
        if not s > 0:
            raise ValueError(f"the cosine offset s must be positive, got {s!r}")
        if not 0 < max_beta < 1:
            raise ValueError(f"max_beta must lie in (0, 1), got {max_beta!r}")
        self.T, self.s, self.max_beta = T, float(s), float(max_beta)
        steps = torch.arange(T + 1, dtype=torch.float64)
        f = torch.cos((steps / T + s) / (1 + s) * math.pi / 2) ** 2
        continuous = f / f[0]
        self.betas = (1 - continuous[1:] / continuous[:-1]).clamp(0.0, max_beta)
        self.alphas = 1 - self.betas
        self.alpha_bar = torch.cumprod(self.alphas, dim=0)
        self.alpha_bar_prev = torch.cat([torch.ones(1, dtype=torch.float64), self.alpha_bar[:-1]])
        variance = self.betas * (1 - self.alpha_bar_prev) / (1 - self.alpha_bar)
        variance[0] = variance[1]
        self.posterior_variance = variance
        self.snr = self.alpha_bar / (1 - self.alpha_bar)
        # abar with an entry for t = -1 (abar = 1, the clean data) in front.
        self._alpha_bar_from_minus_one = torch.cat([torch.ones(1, dtype=torch.float64), self.alpha_bar])

    def _check_timesteps(self, t: torch.Tensor, lowest: int) -> None:
        if not isinstance(t, torch.Tensor) or t.ndim != 1 or t.dtype.is_floating_point or t.dtype == torch.bool:
            raise TypeError("timesteps must be a (B,) integer tensor")
        if t.numel() and (int(t.min()) < lowest or int(t.max()) > self.T - 1):
            raise ValueError(f"timesteps must lie in {lowest}..{self.T - 1}, got {int(t.min())}..{int(t.max())}")

    def at(self, table: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Per-sample entries ``table[t]`` shaped to broadcast against ``like``.

        Parameters
        ----------
        table
            One of the schedule's float64 tables of length T.
        t
            Timesteps, shape (B,), in 0..T-1.
        like
            Tensor of shape (B, ...) whose dtype, device and rank the result takes.

        Returns
        -------
        torch.Tensor
            Shape (B, 1, ..., 1) with ``like.ndim`` dimensions.
        """
        self._check_timesteps(t, 0)
        values = table.to(like.device)[t.to(like.device)].to(like.dtype)
        return values.reshape(-1, *([1] * (like.ndim - 1)))

    def _alpha_bar_at(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """``abar_t`` for t in -1..T-1 (``abar_{-1} = 1``), shaped like :meth:`at`."""
        self._check_timesteps(t, -1)
        values = self._alpha_bar_from_minus_one.to(like.device)[t.to(like.device) + 1].to(like.dtype)
        return values.reshape(-1, *([1] * (like.ndim - 1)))

    def min_snr_weight(self, t: torch.Tensor, gamma: float = 5.0) -> torch.Tensor:
        """Min-SNR loss weight ``min(SNR_t, gamma)`` (Hang et al. 2023), float64, shape (B,)."""
        self._check_timesteps(t, 0)
        return self.snr.clamp(max=gamma).to(t.device)[t]

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Noisy sample ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise``."""
        alpha_bar = self.at(self.alpha_bar, t, x0)
        return alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * noise

    def predict_noise(self, x_t: torch.Tensor, t: torch.Tensor, x0_hat: torch.Tensor) -> torch.Tensor:
        """The noise implied by a clean estimate: ``(x_t - sqrt(abar_t) x0_hat) / sqrt(1 - abar_t)``."""
        alpha_bar = self.at(self.alpha_bar, t, x_t)
        return (x_t - alpha_bar.sqrt() * x0_hat) / (1 - alpha_bar).sqrt()

    def posterior_mean(self, x0_hat: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Mean of ``q(x_{t-1} | x_t, x0 = x0_hat)``.

        ``beta_t sqrt(abar_{t-1}) / (1 - abar_t) x0_hat + (1 - abar_{t-1}) sqrt(alpha_t) / (1 - abar_t) x_t``;
        at t = 0 this is ``x0_hat`` itself.
        """
        beta = self.at(self.betas, t, x_t)
        alpha_bar = self.at(self.alpha_bar, t, x_t)
        alpha_bar_prev = self.at(self.alpha_bar_prev, t, x_t)
        alpha = self.at(self.alphas, t, x_t)
        return (beta * alpha_bar_prev.sqrt() * x0_hat + (1 - alpha_bar_prev) * alpha.sqrt() * x_t) / (1 - alpha_bar)

    def ddpm_step(
        self, x0_hat: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, noise: torch.Tensor
    ) -> torch.Tensor:
        """Ancestral step ``x_{t-1} = mean + sqrt(beta_t) noise``, without noise where t = 0.

        The variance is the fixed ``beta_t`` of the reference implementation.
        """
        beta = self.at(self.betas, t, x_t)
        not_last = (t > 0).to(device=x_t.device, dtype=x_t.dtype).reshape(beta.shape)
        return self.posterior_mean(x0_hat, x_t, t) + not_last * beta.sqrt() * noise

    def ddim_step(
        self,
        x0_hat: torch.Tensor,
        x_t: torch.Tensor,
        t: torch.Tensor,
        t_prev: torch.Tensor,
        eta: float = 0.0,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """DDIM step (Song et al. 2021) from ``t`` to an earlier ``t_prev``.

        ``x_prev = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev - sigma^2) eps_hat + sigma noise``
        with ``sigma = eta sqrt((1 - abar_prev) / (1 - abar_t) (1 - abar_t / abar_prev))``.
        ``t_prev = -1`` stands for the clean data (``abar = 1``), where the step returns
        ``x0_hat``; ``t_prev = t`` leaves ``x_t`` unchanged (up to round-off) when eta = 0.

        Parameters
        ----------
        x0_hat, x_t
            Clean estimate and current sample, shape (B, ...).
        t, t_prev
            Per-sample timesteps, shape (B,), with ``-1 <= t_prev <= t``.
        eta
            0 for the deterministic DDIM, 1 for the DDPM posterior variance.
        noise
            Standard normal noise like ``x_t``; needed only when eta > 0.
        """
        if eta < 0:
            raise ValueError(f"eta must be non-negative, got {eta!r}")
        if bool((t_prev > t).any()):
            raise ValueError("a DDIM step must go back in time: t_prev <= t")
        alpha_bar = self.at(self.alpha_bar, t, x_t)
        alpha_bar_prev = self._alpha_bar_at(t_prev, x_t)
        eps_hat = (x_t - alpha_bar.sqrt() * x0_hat) / (1 - alpha_bar).sqrt()
        x_prev = alpha_bar_prev.sqrt() * x0_hat
        if eta > 0:
            if noise is None:
                raise ValueError("a DDIM step with eta > 0 needs noise")
            sigma2 = eta**2 * (1 - alpha_bar_prev) / (1 - alpha_bar) * (1 - alpha_bar / alpha_bar_prev)
            return x_prev + (1 - alpha_bar_prev - sigma2).clamp(min=0).sqrt() * eps_hat + sigma2.sqrt() * noise
        return x_prev + (1 - alpha_bar_prev).sqrt() * eps_hat

    def ddim_timesteps(self, t_start: torch.Tensor, n_steps: int) -> torch.Tensor:
        """Per-sample DDIM time grids from ``t_start`` down to -1 (the clean data).

        ``tau_k = ceil((t_start + 1) (n_steps - k) / n_steps) - 1`` for ``k = 0..n_steps``:
        ``tau_0 = t_start``, ``tau_{n_steps} = -1``, and every earlier ``tau_k >= 0`` is a
        valid network input. Grids of small ``t_start`` repeat times; a repeated time is an
        identity DDIM step (eta = 0), so all samples advance in one vectorised loop.

        Parameters
        ----------
        t_start
            Starting timesteps, shape (B,).
        n_steps
            Number of network evaluations along the chain, at least 1.

        Returns
        -------
        torch.Tensor
            int64, shape (n_steps + 1, B).
        """
        if not isinstance(n_steps, int) or isinstance(n_steps, bool) or n_steps < 1:
            raise ValueError(f"the number of DDIM steps must be a positive integer, got {n_steps!r}")
        self._check_timesteps(t_start, 0)
        k = torch.arange(n_steps + 1, device=t_start.device).unsqueeze(1)
        numerator = (t_start.to(torch.int64) + 1).unsqueeze(0) * (n_steps - k)
        return (numerator + n_steps - 1) // n_steps - 1
