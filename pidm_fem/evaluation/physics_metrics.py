"""Physics metrics: the per-sample mean absolute residual, the state error, and their summary over samples.

The residual is a callable on physical samples (B, C, n) returning the
strong-form-equivalent nodal residual (B, n) (for Darcy ``r = M_L^{-1} R``, an
approximation of ``-div(K grad p) - f`` at the nodes). The per-sample value is the
domain mean of ``|r|``: area-weighted with integration weights when they are given,
the plain mean over nodes otherwise.

The state error compares a sample's state field (for Darcy, the pressure) with the
state that a solver computes from the sample's own coefficient fields (the pressure
solved for the generated K): ``||p - S(K)|| / ||S(K)||`` in the (weighted) L2 norm.
Where the residual weighs the finest scales most (it takes second derivatives), the
state error weighs the coarse ones: it is 0 for samples that obey the equation and 1
for the trivial field p = 0; a pressure paired with another sample's permeability
scores what the pressures' shared shape allows (0.54 and 0.52 for the Darcy test sets
of the default and quick modes; reported by ``evaluate_methods`` as ``mismatched_state_error``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

import numpy as np
import torch

from pidm_fem.evaluation.samples import as_samples, normalized_weights

NodalResidual = Callable[[torch.Tensor], torch.Tensor]
"""A map from physical samples (B, C, n) to nodal residuals (B, n)."""

StateSolver = Callable[[torch.Tensor], torch.Tensor]
"""A map from physical samples (B, C, n) to the state solved for their coefficient fields (B, n)."""


def mean_abs_residual(
    residual: NodalResidual,
    samples: torch.Tensor | np.ndarray,
    weights: torch.Tensor | np.ndarray | None = None,
    batch_size: int = 64,
) -> np.ndarray:
    """Per-sample domain mean of the absolute nodal residual.

    Parameters
    ----------
    residual
        Nodal residual of physical samples, (B, C, n) -> (B, n); called under
        ``torch.no_grad()`` on float64 CPU batches of at most ``batch_size`` samples.
    samples
        Physical samples (B, C, n).
    weights
        Integration weights of the n nodes (e.g. the lumped mass), for an
        area-weighted mean; ``None`` for the plain mean over nodes.
    batch_size
        Largest batch handed to ``residual`` at once.

    Returns
    -------
    numpy.ndarray
        Shape (B,): ``sum_i w_i |r_i| / sum_i w_i`` for each sample.
    """
    return abs_residual_by_region(residual, samples, {}, weights, batch_size)[0]


def abs_residual_by_region(
    residual: NodalResidual,
    samples: torch.Tensor | np.ndarray,
    regions: Mapping[str, np.ndarray],
    weights: torch.Tensor | np.ndarray | None = None,
    batch_size: int = 64,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Per-sample domain mean of |r| and the share of it that each region of nodes holds, in one pass.

    Parameters
    ----------
    residual, samples, weights, batch_size
        As for :func:`mean_abs_residual`.
    regions
        ``{name: boolean mask of the n nodes}``; for regions that partition the nodes,
        the shares add up to :func:`mean_abs_residual`.

    Returns
    -------
    mean : numpy.ndarray
        Shape (B,): :func:`mean_abs_residual`.
    shares : dict
        ``{name: (B,) array}`` with ``sum_{i in region} w_i |r_i| / sum_i w_i`` for each sample.

    Raises
    ------
    ValueError
        If a mask is not a boolean array of one entry per node.
    """
    x = as_samples(samples)
    w = normalized_weights(weights, x.shape[2])
    masks = {}
    for name, mask in regions.items():
        mask = np.asarray(mask)
        if mask.dtype != bool or mask.shape != (x.shape[2],):
            raise ValueError(f"region {name!r}: needs a boolean mask of {x.shape[2]} nodes, got {mask.dtype} "
                             f"{mask.shape}")
        masks[name] = torch.from_numpy(mask)
    means: list[torch.Tensor] = []
    shares: dict[str, list[torch.Tensor]] = {name: [] for name in masks}
    for _, r in _nodal_batches(residual, x, batch_size, "the residual"):
        weighted = r.abs() * w
        means.append(weighted.sum(dim=1))
        for name, mask in masks.items():
            shares[name].append((weighted * mask).sum(dim=1))
    return torch.cat(means).numpy(), {name: torch.cat(values).numpy() for name, values in shares.items()}


def _nodal_batches(
    fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, batch_size: int, name: str
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(batch, fn(batch))`` over batches of x, the output checked to be (B, n) and cast to float64 CPU."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    with torch.no_grad():
        for batch in x.split(batch_size):
            values = torch.as_tensor(fn(batch)).detach().to(device="cpu", dtype=torch.float64)
            if values.shape != (batch.shape[0], x.shape[2]):
                raise ValueError(
                    f"{name} must return one value per node, shape {(batch.shape[0], x.shape[2])}, "
                    f"got {tuple(values.shape)}"
                )
            yield batch, values


def relative_state_error(
    solve_state: StateSolver,
    samples: torch.Tensor | np.ndarray,
    state_channel: int = 0,
    weights: torch.Tensor | np.ndarray | None = None,
    batch_size: int = 64,
) -> np.ndarray:
    """Per-sample relative L2 distance of the state field to the state solved from the sample's coefficients.

    Parameters
    ----------
    solve_state
        Solver of physical samples, (B, C, n) -> (B, n): the state (in the same gauge
        as the samples', e.g. zero mean) that the sample's coefficient fields determine,
        NaN for a sample without one (its error is then NaN); called on float64 CPU
        batches of at most ``batch_size`` samples.
    samples
        Physical samples (B, C, n).
    state_channel
        Channel of the state field.
    weights
        Integration weights of the n nodes, for the area-weighted L2 norm; ``None``
        for the plain Euclidean norm over nodes.
    batch_size
        Largest batch handed to ``solve_state`` at once.

    Returns
    -------
    numpy.ndarray
        Shape (B,): ``||x_state - S(x)||_w / ||S(x)||_w`` for each sample.

    Raises
    ------
    ValueError
        If the solver returns the wrong shape or a solved state is zero.
    """
    x = as_samples(samples)
    if not 0 <= state_channel < x.shape[1]:
        raise ValueError(f"state channel {state_channel} is out of range for samples with {x.shape[1]} channels")
    w = normalized_weights(weights, x.shape[2])
    values = []
    for batch, solved in _nodal_batches(solve_state, x, batch_size, "the state solver"):
        reference = (solved.pow(2) * w).sum(dim=1).sqrt()
        if bool((reference == 0).any()):
            raise ValueError("a solved state is identically zero: its relative error is undefined")
        error = ((batch[:, state_channel] - solved).pow(2) * w).sum(dim=1).sqrt()
        values.append(error / reference)
    return torch.cat(values).numpy()


def residual_summary(per_sample: np.ndarray) -> dict[str, float | int | list[float]]:
    """Mean and median over samples of per-sample values (residuals, state errors), JSON-serialisable.

    Parameters
    ----------
    per_sample
        One value per sample, e.g. from :func:`mean_abs_residual` or :func:`relative_state_error`.

    Returns
    -------
    dict
        ``{"mean", "median", "n_samples", "per_sample"}``; ``per_sample`` is the
        list of values (for histograms).
    """
    values = np.asarray(per_sample, dtype=np.float64)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"per-sample residuals must be a non-empty 1-D array, got shape {values.shape}")
    return {
        "mean": float(values.mean()),
        "median": float(np.median(values)),
        "n_samples": int(values.size),
        "per_sample": values.tolist(),
    }


def zero_channel(samples: torch.Tensor | np.ndarray, channel: int) -> torch.Tensor:
    """A copy of the samples with one channel set to zero (the "trivial field" reference).

    For Darcy, ``zero_channel(samples, 0)`` is the field p = 0 with the samples'
    permeability: the residual a model reaches by collapsing the pressure instead
    of solving the equation.

    Parameters
    ----------
    samples
        Physical samples (B, C, n); left unchanged.
    channel
        Index of the channel to zero, in ``[0, C)``.
    """
    x = as_samples(samples).clone()
    if not 0 <= channel < x.shape[1]:
        raise ValueError(f"channel {channel} is out of range for samples with {x.shape[1]} channels")
    x[:, channel] = 0.0
    return x


def mismatched_pairs(samples: torch.Tensor | np.ndarray, state_channel: int) -> torch.Tensor:
    """A copy of the samples whose state is paired with the previous sample's coefficients.

    Each state keeps its realistic shape but belongs to other coefficients: what a model
    that draws the fields independently, without their coupling, produces.

    Parameters
    ----------
    samples
        Physical samples (B, C, n), B >= 2; left unchanged.
    state_channel
        Index of the state channel (the pressure of Darcy), in ``[0, C)``.
    """
    x = as_samples(samples)
    if not 0 <= state_channel < x.shape[1]:
        raise ValueError(f"channel {state_channel} is out of range for samples with {x.shape[1]} channels")
    paired = x.roll(1, dims=0)
    paired[:, state_channel] = x[:, state_channel]
    return paired
