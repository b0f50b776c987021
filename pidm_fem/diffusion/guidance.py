"""The paper's physics baselines that act at sampling time: CoCoGen and physics-guided conditioning.

Both take the physics residual as a callable ``residual(x_phys) -> (B, M)`` on physical
samples (B, C, n), differentiable by torch autograd, and work on samples in the
network's normalised units, going through a :class:`FieldNormalizer`.

- :class:`CoCoGenCorrector` (Jacobsen et al., arXiv 2312.10527): gradient steps on
  the squared residual norm during the last denoising steps and/or after sampling.
- :class:`PhysicsGuidedConditioning` (Shu et al., JCP 2023): the denoiser receives
  the gradient of the residual norm at the noisy sample as extra condition
  channels; trained with condition dropout, sampled with classifier-free guidance.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from pidm_fem.diffusion.normalization import FieldNormalizer

Residual = Callable[[torch.Tensor], torch.Tensor]
"""A differentiable map from physical samples (B, C, n) to residuals (B, M)."""


def squared_residual_norms(residual: Residual, normalizer: FieldNormalizer, x: torch.Tensor) -> torch.Tensor:
    """Per-sample ``||R(denormalize(x_b))||^2`` (B,) of normalised samples ``x`` (B, C, n); differentiable."""
    r = residual(normalizer.denormalize(x))
    if r.shape[0] != x.shape[0]:
        raise ValueError(f"the residual returned {r.shape[0]} rows for a batch of {x.shape[0]}")
    return r.pow(2).flatten(1).sum(dim=1)


def squared_residual_and_gradient(
    residual: Residual, normalizer: FieldNormalizer, x: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample ``||R(denormalize(x_b))||^2`` (B,) and the gradient of half their sum.

    The residual is evaluated on physical values; the gradient is taken with respect
    to the network's normalised variables (the chain rule through the denormalisation
    multiplies channel c of the physical gradient by ``std_c``). Each sample's row is
    the gradient of its own residual. Both results are detached.

    Parameters
    ----------
    residual
        Differentiable residual on physical samples, (B, C, n) -> (B, M).
    normalizer
        Maps normalised samples to physical ones.
    x
        Samples in normalised units, shape (B, C, n).
    """
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        squared = squared_residual_norms(residual, normalizer, x)
        (grad,) = torch.autograd.grad(0.5 * squared.sum(), x)
    return squared.detach(), grad.detach()


def squared_residual_gradient(residual: Residual, normalizer: FieldNormalizer, x: torch.Tensor) -> torch.Tensor:
    """Gradient of ``sum_b ||R(denormalize(x_b))||^2 / 2`` with respect to normalised ``x``; detached.

    See :func:`squared_residual_and_gradient`.
    """
    return squared_residual_and_gradient(residual, normalizer, x)[1]


def detach_channels(x: torch.Tensor, channels: tuple[int, ...]) -> torch.Tensor:
    """``x`` (B, C, n) with the given channels detached from the autograd graph (same values).

    The physics terms use it to treat coefficient fields as given: the residual is
    differentiated with respect to the remaining (state) channels only.
    """
    if not channels:
        return x
    frozen = torch.zeros(x.shape[1], dtype=torch.bool, device=x.device)
    frozen[list(channels)] = True
    return torch.where(frozen.reshape(1, -1, *([1] * (x.ndim - 2))), x.detach(), x)


@dataclass
class CoCoGenCorrector:
    """CoCoGen residual corrections ``x <- x - step_size * grad ||R(x)||^2``.

    Steps are taken on the normalised sample (the space the sampler works in), with
    the gradient of the physical residual norm with respect to the normalised values
    (see :func:`squared_residual_gradient`): plain gradient descent in the sampler's
    coordinates. The useful step size depends on the residual's scale; too large a
    step diverges. For a strong-form residual of an elliptic problem the squared norm
    is badly conditioned (its largest curvature grows like h^-4), so a fixed step that
    is safe for every sample barely moves the smooth components; with
    ``line_search`` each sample's step starts at ``step_size`` (within one call of
    :meth:`correct`, at twice its last accepted step) and is halved until the squared
    residual decreases by the Armijo
    condition ``f(x - s g) <= f(x) - 1e-4 s |g|^2`` (g = grad f, f = |R|^2); a sample
    for which 40 halvings fail is left unchanged. Channels in ``frozen_channels``
    (coefficient fields) are never changed: the corrections then solve for the state
    given the coefficients.

    Parameters
    ----------
    residual
        Differentiable residual on physical samples, (B, C, n) -> (B, M).
    normalizer
        The normaliser of the model's data.
    step_size
        ``eps`` of the update, positive.
    n_during
        Correct the sample after each of the last ``n_during`` denoising steps (N).
    n_after
        Correction steps applied after sampling (M).
    line_search
        Per-sample backtracking (Armijo) from ``step_size`` instead of the fixed step.
    frozen_channels
        Channels the corrections leave as they are (their gradient is dropped).
    """

    residual: Residual
    normalizer: FieldNormalizer
    step_size: float
    n_during: int = 0
    n_after: int = 0
    line_search: bool = False
    frozen_channels: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not self.step_size > 0:
            raise ValueError(f"CoCoGen step_size must be positive, got {self.step_size!r}")
        for name in ("n_during", "n_after"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"CoCoGen {name} must be a non-negative integer, got {value!r}")

    def correct(self, x: torch.Tensor, n_times: int = 1) -> torch.Tensor:
        """Apply ``n_times`` correction steps to normalised samples ``x`` (B, C, n); detached."""
        steps = torch.full((x.shape[0],), float(self.step_size), dtype=x.dtype, device=x.device)  # line search
        for _ in range(n_times):
            squared, half_grad = squared_residual_and_gradient(self.residual, self.normalizer, x)
            grad = 2.0 * half_grad  # the gradient of ||R||^2
            grad[:, list(self.frozen_channels)] = 0
            if self.line_search:
                x, steps = self._backtrack(x.detach(), squared, grad, steps)
            else:
                x = x.detach() - self.step_size * grad
        return x.detach()

    def _backtrack(
        self, x: torch.Tensor, f0: torch.Tensor, grad: torch.Tensor, steps: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One Armijo step per sample from ``f0 = ||R(x)||^2``; returns the new samples and next trial steps."""
        shape = (-1, *([1] * (x.ndim - 1)))
        slope = grad.pow(2).flatten(1).sum(dim=1)
        accepted = torch.zeros_like(f0, dtype=torch.bool)
        new = x.clone()
        for _ in range(40):
            trial = x - steps.reshape(shape) * grad
            with torch.no_grad():
                f = squared_residual_norms(self.residual, self.normalizer, trial)
            ok = ~accepted & torch.isfinite(f) & (f <= f0 - 1e-4 * steps * slope)
            new[ok] = trial[ok]
            accepted |= ok
            if bool(accepted.all()):
                break
            steps = torch.where(accepted, steps, steps / 2)
        return new, torch.where(accepted, 2 * steps, steps)


@dataclass
class PhysicsGuidedConditioning:
    """Residual-gradient condition channels with classifier-free guidance (Shu et al.).

    The extra channels are ``grad_x |R(x_t)|`` at the current noisy sample, one per
    field (C of them), appended after any user condition fields: the denoiser must
    accept ``C_cond + C`` condition channels. The residual is evaluated on physical
    values and differentiated with respect to the normalised sample (what the network
    sees), then each sample's gradient is divided by its root mean square over all
    channels and nodes, so that its entries are O(1) at every noise level; a zero
    gradient stays zero. Because of that normalisation the gradient of ``|R|`` and of
    ``|R|^2 / 2`` give the same channels (they differ by the factor ``|R|`` per sample);
    the latter is used, as it stays defined at ``R = 0``.

    The "null" condition replaces the gradient channels by zeros (user condition
    fields are kept). Training drops the gradient channels with probability
    ``dropout`` per sample; sampling combines
    ``x0 = (1 + scale) f(x, t, cond) - scale f(x, t, null)``.

    Parameters
    ----------
    residual
        Differentiable residual on physical samples, (B, C, n) -> (B, M).
    normalizer
        The normaliser of the model's data.
    dropout
        Probability of the null condition per training sample, in [0, 1].
    scale
        Guidance scale w (3 in the reference); w = 0 is the plain conditional model.
    """

    residual: Residual
    normalizer: FieldNormalizer
    dropout: float = 0.1
    scale: float = 3.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.dropout <= 1.0:
            raise ValueError(f"condition dropout must lie in [0, 1], got {self.dropout!r}")
        if not self.scale >= 0.0:
            raise ValueError(f"guidance scale must be non-negative, got {self.scale!r}")

    @property
    def n_channels(self) -> int:
        """Number of condition channels this adds (one per field)."""
        return self.normalizer.n_channels

    def gradient_channels(self, x_t: torch.Tensor) -> torch.Tensor:
        """RMS-normalised ``grad |R|`` at normalised noisy samples ``x_t`` (B, C, n); detached."""
        grad = squared_residual_gradient(self.residual, self.normalizer, x_t)
        tiny = torch.finfo(grad.dtype).tiny
        shape = (-1, *([1] * (grad.ndim - 1)))
        # Scale by the peak first so that squaring cannot underflow.
        unit = grad / grad.abs().flatten(1).amax(dim=1).clamp(min=tiny).reshape(shape)
        rms = unit.pow(2).flatten(1).mean(dim=1).sqrt()
        return unit / rms.clamp(min=tiny).reshape(shape)

    def draw_keep(
        self, batch: int, device: torch.device | str, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Per-sample training mask: False (with probability ``dropout``) drops the gradient channels."""
        draw_device = generator.device if generator is not None else device
        return (torch.rand(batch, generator=generator, device=draw_device) >= self.dropout).to(device)

    def condition(
        self, x_t: torch.Tensor, cond: torch.Tensor | None = None, keep: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Condition tensor ``[cond, gradient channels]`` of shape (B, C_cond + C, n).

        Parameters
        ----------
        x_t
            Normalised noisy samples (B, C, n).
        cond
            User condition fields (B, C_cond, n), or None.
        keep
            Boolean (B,) mask; where False the gradient channels are zeros (the null
            condition). None keeps all.
        """
        channels = self.gradient_channels(x_t)
        if keep is not None:
            channels = channels * keep.to(device=channels.device, dtype=channels.dtype).reshape(-1, 1, 1)
        return channels if cond is None else torch.cat([cond.to(channels.dtype), channels], dim=1)

    def predict(
        self,
        model: torch.nn.Module,
        x_t: torch.Tensor,
        t: torch.Tensor,
        cond: torch.Tensor | None = None,
        scalars: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Classifier-free guided clean estimate ``(1 + w) f(x, t, cond) - w f(x, t, null)``.

        The conditional and null predictions come from one model call on a doubled batch.
        """
        full = self.condition(x_t, cond)
        null = full.clone()
        null[:, full.shape[1] - self.n_channels :] = 0
        both = model(
            torch.cat([x_t, x_t]),
            torch.cat([t, t]),
            cond=torch.cat([full, null]),
            scalars=None if scalars is None else torch.cat([scalars, scalars]),
        )
        conditional, unconditional = both.chunk(2)
        return (1 + self.scale) * conditional - self.scale * unconditional
