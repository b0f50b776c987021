"""Evaluation of several generative methods against the data, and its Markdown table.

:func:`evaluate_methods` returns one JSON-serialisable dict with, for the test data,
for the trivial field (one channel, e.g. the pressure, set to zero in the test
samples) and for every method, the same entry::

    {"residual": ..., "trivial_residual": ..., "state_error": ..., "residual_by_region": ..., "fidelity": ...,
     "ratios": ...}

- ``residual``: per-sample domain mean of |r| summarised over samples
  (:func:`~pidm_fem.evaluation.physics_metrics.residual_summary`);
- ``trivial_residual``: the same for the entry's samples with the trivial channel
  set to zero (for a method: p = 0 with its own generated K, what collapsing the
  pressure reaches without solving anything);
- ``state_error``: when a state solver is given, the per-sample relative L2 distance of
  the trivial channel (the state, e.g. the pressure) to the state solved from the
  sample's coefficient fields, summarised over samples
  (:func:`~pidm_fem.evaluation.physics_metrics.relative_state_error`); ``None`` otherwise.
  The ``"data"`` entry then also has ``mismatched_state_error``: the same for the test
  states paired with the coefficients of the previous test sample (what no coupling scores);
- ``residual_by_region``: when regions are given, ``{name: summary}`` of each region's
  share of the per-sample mean |r|
  (:func:`~pidm_fem.evaluation.physics_metrics.abs_residual_by_region`); ``None`` otherwise;
- ``fidelity``: :func:`~pidm_fem.evaluation.distribution.fidelity_metrics` against
  the test set. For the ``"data"`` entry it is the TRAIN set against the test set:
  the floor of the distances, what a perfect model reaches with finitely many samples;
- ``ratios``: mean residual over the baseline method's, over the entry's own trivial
  residual and over the data's; within-sample standard deviation over the test
  set's, per field; each distance over the baseline method's and over the data
  floor. A ratio is ``None`` where its denominator is missing or zero.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from pidm_fem.evaluation.distribution import fidelity_metrics
from pidm_fem.evaluation.physics_metrics import (
    NodalResidual,
    StateSolver,
    abs_residual_by_region,
    mean_abs_residual,
    mismatched_pairs,
    relative_state_error,
    residual_summary,
    zero_channel,
)
from pidm_fem.evaluation.samples import as_samples

DISTANCES = ("energy_distance", "sliced_wasserstein")


def _ratio(numerator: float, denominator: float | None) -> float | None:
    return None if denominator is None or denominator == 0 else numerator / denominator


def _ratios(entry: dict, data: dict, baseline: dict | None) -> dict:
    mean = entry["residual"]["mean"]
    fidelity = entry["fidelity"]
    ratios = {
        "residual_to_baseline": _ratio(mean, baseline["residual"]["mean"] if baseline else None),
        "residual_to_trivial": _ratio(mean, entry["trivial_residual"]["mean"]),
        "residual_to_data": _ratio(mean, data["residual"]["mean"]),
        "within_std_to_test": {name: field["within_std_ratio"] for name, field in fidelity["fields"].items()},
    }
    for distance in DISTANCES:
        ratios[f"{distance}_to_baseline"] = _ratio(
            fidelity[distance], baseline["fidelity"][distance] if baseline else None
        )
        ratios[f"{distance}_to_floor"] = _ratio(fidelity[distance], data["fidelity"][distance])
    return ratios


def evaluate_methods(
    generated: Mapping[str, torch.Tensor | np.ndarray],
    test: torch.Tensor | np.ndarray,
    train: torch.Tensor | np.ndarray,
    residual: NodalResidual,
    weights: torch.Tensor | np.ndarray | None = None,
    channel_names: Sequence[str] | None = None,
    trivial_channel: int = 0,
    state_solver: StateSolver | None = None,
    regions: Mapping[str, np.ndarray] | None = None,
    baseline: str = "ddpm",
    n_projections: int = 128,
    seed: int = 0,
    batch_size: int = 64,
) -> dict:
    """Physics and fidelity metrics of every method, beside the data's and the trivial field's.

    Parameters
    ----------
    generated
        ``{method name: physical samples (B, C, n)}``.
    test
        Held-out data (B_test, C, n): the reference of every fidelity metric and the
        residual floor.
    train
        Training data (B_train, C, n): compared with the test set for the distance floor.
    residual
        Nodal residual of physical samples, (B, C, n) -> (B, n) (e.g. the strong-form
        residual ``M_L^{-1} R``); called under ``torch.no_grad()``.
    weights
        Integration weights of the n nodes (e.g. the lumped mass): every mean over
        the domain is area-weighted with them; ``None`` for plain means over nodes.
    channel_names
        One name per channel, e.g. ``["p", "K"]`` (default ``"c0"``, ``"c1"``, ...).
    trivial_channel
        The state channel (the pressure for Darcy): set to zero for the trivial field,
        and compared with the solved state.
    state_solver
        Solver of physical samples, (B, C, n) -> (B, n): the state that their
        coefficient fields determine, in the samples' gauge; the ``state_error`` entries
        are ``None`` without it.
    regions
        ``{name: boolean mask of the n nodes}`` (e.g. where the source acts and where it
        does not): the ``residual_by_region`` entries split the mean |r| among them;
        ``None`` without them.
    baseline
        Method the ``*_to_baseline`` ratios divide by, when ``generated`` has it.
    n_projections, seed
        Random directions of the sliced Wasserstein distance.
    batch_size
        Largest batch handed to ``residual``.

    Returns
    -------
    dict
        ``{"settings", "data", "trivial", "methods": {name: entry}}`` with the
        entries described in the module notes; JSON-serialisable (non-finite
        values of diverged samples stay ``nan``/``inf``).
    """
    test, train = as_samples(test, "test samples"), as_samples(train, "train samples")
    if train.shape[1:] != test.shape[1:]:
        raise ValueError(f"train samples {tuple(train.shape[1:])} and test samples {tuple(test.shape[1:])} differ")
    generated = {name: as_samples(samples, f"samples of {name!r}") for name, samples in generated.items()}
    for name, samples in generated.items():
        if samples.shape[1:] != test.shape[1:]:
            raise ValueError(
                f"samples of {name!r} {tuple(samples.shape[1:])} and test samples {tuple(test.shape[1:])} "
                "differ in fields or nodes"
            )

    def entry(samples: torch.Tensor, compared: torch.Tensor) -> dict:
        """Residuals of ``samples`` and fidelity of ``compared`` to the test set."""
        mean, shares = abs_residual_by_region(residual, samples, regions or {}, weights, batch_size)
        return {
            "residual": residual_summary(mean),
            "trivial_residual": residual_summary(
                mean_abs_residual(residual, zero_channel(samples, trivial_channel), weights, batch_size)
            ),
            "state_error": None if state_solver is None else residual_summary(
                relative_state_error(state_solver, samples, trivial_channel, weights, batch_size)
            ),
            "residual_by_region": None if regions is None else {
                name: residual_summary(share) for name, share in shares.items()
            },
            "fidelity": fidelity_metrics(compared, test, weights, channel_names, n_projections, seed),
        }

    trivial_test = zero_channel(test, trivial_channel)
    data, trivial = entry(test, train), entry(trivial_test, trivial_test)
    if state_solver is not None:
        mismatched = mismatched_pairs(test, trivial_channel)
        data["mismatched_state_error"] = residual_summary(
            relative_state_error(state_solver, mismatched, trivial_channel, weights, batch_size)
        )
    methods = {name: entry(samples, samples) for name, samples in generated.items()}
    reference = methods.get(baseline)
    for item in (data, trivial, *methods.values()):
        item["ratios"] = _ratios(item, data, reference)
    settings = {
        "channel_names": list(data["fidelity"]["fields"]),
        "trivial_channel": trivial_channel,
        "baseline": baseline if reference is not None else None,
        "node_means": "uniform" if weights is None else "area-weighted",
        "distance_features": "DOF vectors, each field standardised by the test set's mean and std, "
        "node i scaled by sqrt(w_i / C) with weights summing to one",
        "energy_distance": "V-statistic of 2E|X-Y| - E|X-X'| - E|Y-Y'| (squared energy distance)",
        "n_projections": n_projections,
        "seed": seed,
        "n_test": test.shape[0],
        "n_train": train.shape[0],
    }
    return {"settings": settings, "data": data, "trivial": trivial, "methods": methods}


def _cell(value: float | None) -> str:
    return "–" if value is None else f"{value:.3g}"


def markdown_table(results: Mapping) -> str:
    """A Markdown table of :func:`evaluate_methods` results: the two references, then one row per method.

    Columns: mean and median of the per-sample mean |r|, the mean over the
    baseline's and over the trivial field's, the mean relative error of the state
    against the state solved from the sample's coefficients (when evaluated), the
    within-sample standard deviation of each field over the test set's, and both
    distances with their ratio to the baseline's. The ``data`` row's fidelity columns compare the train set with the
    test set (the floor).
    """
    settings = results["settings"]
    names = settings["channel_names"]
    baseline = settings["baseline"] or "baseline"
    trivial_name = names[settings["trivial_channel"]]
    with_state = results["data"].get("state_error") is not None
    header = (
        ["", "mean abs r", "median abs r", f"r / {baseline}", "r / trivial"]
        + ([f"{trivial_name} rel. error to solve"] if with_state else [])
        + [f"{name} within-std / test" for name in names]
        + ["energy dist.", f"ED / {baseline}", "sliced W2", f"SW2 / {baseline}"]
    )
    rows = [
        ("data (test; distances: train vs test)", results["data"]),
        (f"trivial {trivial_name} = 0 (test data)", results["trivial"]),
        *results["methods"].items(),
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, entry in rows:
        ratios, fidelity = entry["ratios"], entry["fidelity"]
        cells = [
            entry["residual"]["mean"],
            entry["residual"]["median"],
            ratios["residual_to_baseline"],
            ratios["residual_to_trivial"],
            *([entry["state_error"]["mean"]] if with_state else []),
            *(ratios["within_std_to_test"][name] for name in names),
            fidelity["energy_distance"],
            ratios["energy_distance_to_baseline"],
            fidelity["sliced_wasserstein"],
            ratios["sliced_wasserstein_to_baseline"],
        ]
        lines.append("| " + " | ".join([label, *map(_cell, cells)]) + " |")
    return "\n".join(lines) + "\n"
