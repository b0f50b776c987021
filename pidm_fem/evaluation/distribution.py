"""Fidelity to the data distribution: per-field statistics and distances between sample sets.

A low residual bought by shrinking the fields ("residual hacking") shows up here:
per-field spreads fall below the reference's and the distance to the reference
distribution grows.

Conventions
-----------
- Node means are domain means: area-weighted with integration weights when they
  are given (e.g. the lumped mass), the plain mean over nodes otherwise. This holds
  for every mean and standard deviation over nodes below and for the feature
  scaling of the distances.
- Distances compare DOF vectors built by :func:`dof_features`: each channel is
  standardised by the REFERENCE's mean and standard deviation (so that a field with
  a large spread, such as K, does not dominate one with a small spread, such as p),
  and node i is scaled by ``sqrt(w_i / C)`` with weights summing to one, so that the
  squared Euclidean norm of a feature vector is the domain mean of the squared
  standardised values, averaged over channels (about 1 for a reference sample). The
  distances are therefore in units of reference standard deviations and comparable
  across meshes of different sizes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from pidm_fem.evaluation.samples import as_samples, normalized_weights


def field_statistics(
    samples: torch.Tensor | np.ndarray, weights: torch.Tensor | np.ndarray | None = None
) -> dict[str, torch.Tensor]:
    """Per-channel mean, standard deviation and within-sample standard deviation.

    Parameters
    ----------
    samples
        Physical samples (B, C, n).
    weights
        Integration weights of the n nodes; ``None`` for equal weights.

    Returns
    -------
    dict
        Float64 tensors of shape (C,): ``"mean"`` (over all samples and nodes),
        ``"std"`` (population standard deviation over all samples and nodes, about
        that mean) and ``"within_std"`` (each sample's population standard deviation
        over its nodes, about its own mean, averaged over samples).
    """
    x = as_samples(samples)
    w = normalized_weights(weights, x.shape[2])
    sample_means = (x * w).sum(dim=2)  # (B, C)
    mean = sample_means.mean(dim=0)
    std = (((x - mean[:, None]) ** 2) * w).sum(dim=2).mean(dim=0).sqrt()
    within_std = (((x - sample_means[:, :, None]) ** 2) * w).sum(dim=2).sqrt().mean(dim=0)
    return {"mean": mean, "std": std, "within_std": within_std}


def dof_features(
    samples: torch.Tensor | np.ndarray,
    reference_mean: torch.Tensor,
    reference_std: torch.Tensor,
    weights: torch.Tensor | np.ndarray | None = None,
) -> torch.Tensor:
    """Flattened, standardised and weighted DOF vectors (B, C n) for the distances.

    Channel c becomes ``(x_c - reference_mean_c) / reference_std_c``; node i is then
    scaled by ``sqrt(w_i / C)`` (weights summing to one; see the module notes).

    Parameters
    ----------
    samples
        Physical samples (B, C, n).
    reference_mean, reference_std
        Per-channel statistics (C,) of the reference set (see :func:`field_statistics`);
        every standard deviation must be positive.
    weights
        Integration weights of the n nodes; ``None`` for equal weights.
    """
    x = as_samples(samples)
    mean = torch.as_tensor(reference_mean, dtype=torch.float64)
    std = torch.as_tensor(reference_std, dtype=torch.float64)
    if mean.shape != (x.shape[1],) or std.shape != (x.shape[1],):
        raise ValueError(f"reference statistics need one value per channel ({x.shape[1]})")
    if not bool((torch.isfinite(std) & (std > 0)).all()):
        raise ValueError("a reference channel has a zero or non-finite standard deviation; cannot standardise")
    w = normalized_weights(weights, x.shape[2])
    z = (x - mean[:, None]) / std[:, None]
    return (z * (w / x.shape[1]).sqrt()).reshape(x.shape[0], -1)


def _as_matrix(points: torch.Tensor | np.ndarray, name: str) -> torch.Tensor:
    m = torch.as_tensor(points).detach().to(device="cpu", dtype=torch.float64)
    if m.ndim != 2 or m.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty matrix (samples, features), got shape {tuple(m.shape)}")
    return m


def energy_distance(x: torch.Tensor | np.ndarray, y: torch.Tensor | np.ndarray) -> float:
    """Energy distance between two point sets, as a V-statistic.

    ``D^2 = 2 E|X - Y| - E|X - X'| - E|Y - Y'|`` (Szekely and Rizzo) with every
    expectation a plain average over all pairs, including the zero self-pairs of
    the within-set terms. This is the energy distance between the two empirical
    distributions: it is non-negative and exactly zero for identical sets; as an
    estimate of the population value it is biased upwards by O(1/B), which is why
    results report it beside a data-against-data floor.

    Parameters
    ----------
    x, y
        Points (B_x, D) and (B_y, D) with the same D.

    Returns
    -------
    float
        ``D^2`` (not its square root), in the units of the features.
    """
    x, y = _as_matrix(x, "x"), _as_matrix(y, "y")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"point sets of different dimensions: {x.shape[1]} and {y.shape[1]}")
    value = 2 * torch.cdist(x, y).mean() - torch.cdist(x, x).mean() - torch.cdist(y, y).mean()
    return max(float(value), 0.0)


def _squared_w2_sorted(xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """Exact squared W2 between 1-D empirical distributions, per column of sorted samples."""
    nx, ny = xs.shape[0], ys.shape[0]
    # quantile levels where either quantile function jumps, as exact integers in units of 1 / (nx ny)
    upper = torch.unique(torch.cat([torch.arange(1, nx + 1) * ny, torch.arange(1, ny + 1) * nx]))
    steps = torch.diff(upper, prepend=upper.new_zeros(1))
    twice_middle = 2 * upper - steps
    ix = twice_middle // (2 * ny)  # the empirical quantile of x is xs[floor(u nx)] inside each interval
    iy = twice_middle // (2 * nx)
    widths = steps.to(torch.float64) / (nx * ny)
    return (widths[:, None] * (xs[ix] - ys[iy]) ** 2).sum(dim=0)


def sliced_wasserstein(
    x: torch.Tensor | np.ndarray, y: torch.Tensor | np.ndarray, n_projections: int = 128, seed: int = 0
) -> float:
    """Sliced Wasserstein-2 distance between two point sets.

    ``SW2 = sqrt(mean_k W2^2(<x, theta_k>, <y, theta_k>))`` over ``n_projections``
    unit directions ``theta_k`` drawn uniformly on the sphere by a generator seeded
    with ``seed`` (the same directions for every call with the same seed and D). Each
    one-dimensional W2 is exact for the two empirical distributions (any sizes).

    Parameters
    ----------
    x, y
        Points (B_x, D) and (B_y, D) with the same D.
    n_projections
        Number of random directions.
    seed
        Seed of the directions.
    """
    x, y = _as_matrix(x, "x"), _as_matrix(y, "y")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"point sets of different dimensions: {x.shape[1]} and {y.shape[1]}")
    if n_projections < 1:
        raise ValueError(f"n_projections must be at least 1, got {n_projections}")
    generator = torch.Generator().manual_seed(seed)
    directions = torch.randn(x.shape[1], n_projections, generator=generator, dtype=torch.float64)
    directions = directions / directions.norm(dim=0, keepdim=True)
    xs = (x @ directions).sort(dim=0).values
    ys = (y @ directions).sort(dim=0).values
    return float(_squared_w2_sorted(xs, ys).mean().sqrt())


def fidelity_metrics(
    generated: torch.Tensor | np.ndarray,
    reference: torch.Tensor | np.ndarray,
    weights: torch.Tensor | np.ndarray | None = None,
    channel_names: Sequence[str] | None = None,
    n_projections: int = 128,
    seed: int = 0,
) -> dict:
    """Fidelity of generated samples to a reference set, as a JSON-serialisable dict.

    Parameters
    ----------
    generated, reference
        Physical samples (B_g, C, n) and (B_r, C, n).
    weights
        Integration weights of the n nodes (domain means, feature scaling); ``None``
        for equal weights.
    channel_names
        One name per channel (default ``"c0"``, ``"c1"``, ...).
    n_projections, seed
        Directions of :func:`sliced_wasserstein`.

    Returns
    -------
    dict
        ``"fields"``: per channel name, the generated and reference ``mean``,
        ``std`` and ``within_std`` (see :func:`field_statistics`; reference values
        prefixed ``reference_``), ``mean_error`` (mean difference in units of the
        reference std, since field means can be zero), ``std_rel_error`` and
        ``within_std_rel_error`` (generated / reference - 1) and
        ``within_std_ratio`` (generated / reference);
        ``"energy_distance"`` and ``"sliced_wasserstein"`` between the
        :func:`dof_features` of both sets (standardised by the reference).
    """
    gen, ref = as_samples(generated, "generated samples"), as_samples(reference, "reference samples")
    if gen.shape[1:] != ref.shape[1:]:
        raise ValueError(
            f"generated samples {tuple(gen.shape[1:])} and reference samples {tuple(ref.shape[1:])} "
            "differ in fields or nodes"
        )
    names = [f"c{c}" for c in range(ref.shape[1])] if channel_names is None else list(channel_names)
    if len(names) != ref.shape[1]:
        raise ValueError(f"got {len(names)} channel names for {ref.shape[1]} channels")
    g, r = field_statistics(gen, weights), field_statistics(ref, weights)
    if not bool((r["within_std"] > 0).all()):
        raise ValueError("a reference channel is constant within every sample; cannot compare spreads")
    fields = {}
    for c, name in enumerate(names):
        gc = {key: float(value[c]) for key, value in g.items()}
        rc = {key: float(value[c]) for key, value in r.items()}
        fields[name] = {
            **gc,
            **{f"reference_{key}": value for key, value in rc.items()},
            "mean_error": (gc["mean"] - rc["mean"]) / rc["std"],
            "std_rel_error": gc["std"] / rc["std"] - 1.0,
            "within_std_rel_error": gc["within_std"] / rc["within_std"] - 1.0,
            "within_std_ratio": gc["within_std"] / rc["within_std"],
        }
    gen_features = dof_features(gen, r["mean"], r["std"], weights)
    ref_features = dof_features(ref, r["mean"], r["std"], weights)
    return {
        "fields": fields,
        "energy_distance": energy_distance(gen_features, ref_features),
        "sliced_wasserstein": sliced_wasserstein(gen_features, ref_features, n_projections, seed),
    }
