"""Figures: fields on the mesh (tripcolor through firedrake.pyplot), histograms, training curves."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .atomic_files import atomic_path  # noqa: E402


def _save(fig, path: str | os.PathLike, dpi: int) -> None:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    plt.close(fig)


def plot_fields(
    rows: Sequence[Sequence], path: str | os.PathLike, titles: Sequence[Sequence[str]] | None = None, dpi: int = 110
) -> None:
    """Draw a grid of Firedrake Functions with tripcolor and save it as a PNG.

    Parameters
    ----------
    rows
        Rows of scalar Functions; every row has the same length (``None`` leaves a blank).
    path
        Output PNG (written atomically).
    titles
        Titles with the same layout as ``rows``.
    dpi
        Resolution of the PNG.
    """
    from firedrake.pyplot import tripcolor

    n_rows, n_cols = len(rows), len(rows[0])
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(3.6 * n_cols, 3.1 * n_rows), squeeze=False)
    for i, row in enumerate(rows):
        for j, function in enumerate(row):
            ax = axes[i][j]
            if function is None:
                ax.axis("off")
                continue
            artist = tripcolor(function, axes=ax, cmap="viridis", shading="gouraud")
            fig.colorbar(artist, ax=ax, shrink=0.85)
            if titles is not None:
                ax.set_title(titles[i][j], fontsize=9)
            ax.set_aspect("equal")
            ax.set_xticks([])
            ax.set_yticks([])
    _save(fig, path, dpi)


def plot_sample_grid(
    columns: Mapping[str, Sequence[Mapping[str, object]]],
    path: str | os.PathLike,
    limits: Mapping[str, tuple[float, float]],
    dpi: int = 90,
) -> None:
    """Samples of several sources side by side: one column per source, one row per field and sample.

    Every panel of a field shares one colour scale (``limits[field]``) and one colour
    bar at the end of its row, so that amplitudes compare at a glance.

    Parameters
    ----------
    columns
        ``{source name: [{field name: scalar Function}, ...]}``, the same number of samples
        and the fields of ``limits`` in each (the test data first, typically).
    path
        Output PNG (written atomically).
    limits
        ``{field name: (low, high)}`` of each field's colour scale, in row order.
    dpi
        Resolution of the PNG.
    """
    from firedrake.pyplot import tripcolor

    names = list(columns)
    n_samples = len(columns[names[0]])
    fields = list(limits)
    n_rows, n_cols = len(fields) * n_samples, len(names)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(1.9 * n_cols + 0.8, 1.8 * n_rows), squeeze=False)
    for f, field_name in enumerate(fields):
        low, high = limits[field_name]
        for i in range(n_samples):
            row = f * n_samples + i
            for j, name in enumerate(names):
                ax = axes[row][j]
                artist = tripcolor(columns[name][i][field_name], axes=ax, cmap="viridis", shading="gouraud",
                                   vmin=low, vmax=high)
                ax.set_aspect("equal")
                ax.set_xticks([])
                ax.set_yticks([])
                if row == 0:
                    ax.set_title(name, fontsize=8)
                if j == 0:
                    ax.set_ylabel(f"{field_name} #{i + 1}", fontsize=8)
            fig.colorbar(artist, ax=list(axes[row]), shrink=0.85, pad=0.01)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    plt.close(fig)


def plot_histograms(
    values: Mapping[str, np.ndarray],
    path: str | os.PathLike,
    xlabel: str,
    references: Mapping[str, float] | None = None,
    dpi: int = 110,
) -> None:
    """Overlaid histograms (log-spaced bins) of positive values per method, with reference lines."""
    positive = {name: np.asarray(v)[np.asarray(v) > 0] for name, v in values.items()}
    everything = np.concatenate([v for v in positive.values() if len(v)])
    bins = np.logspace(np.log10(everything.min()), np.log10(everything.max()), 30)
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for name, v in positive.items():
        ax.hist(v, bins=bins, histtype="step", linewidth=1.6, label=name)
    for name, value in (references or {}).items():
        ax.axvline(value, color="black", linestyle="--", linewidth=1.0)
        ax.annotate(name, (value, ax.get_ylim()[1] * 0.95), rotation=90, ha="right", va="top", fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("samples")
    ax.legend(fontsize=8)
    _save(fig, path, dpi)


def plot_training_curves(logs: Mapping[str, str | os.PathLike], path: str | os.PathLike, dpi: int = 110) -> None:
    """Data and residual loss components against the step, one line per run's ``log.jsonl``."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for name, log in logs.items():
        lines = [json.loads(line) for line in Path(log).read_text().splitlines() if line.strip()]
        train = [line for line in lines if line.get("split") == "train"]
        steps = [line["step"] for line in train]
        for ax, key in zip(axes, ("data", "residual")):
            values = [line["components"].get(key, 0.0) for line in train]
            if any(v > 0 for v in values):
                ax.plot(steps, values, ".-", label=name)
    for ax, key in zip(axes, ("data loss (min-SNR weighted)", "residual term")):
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_title(key, fontsize=10)
        ax.legend(fontsize=8)
    _save(fig, path, dpi)


def plot_trajectories(
    panels: Mapping[str, Mapping[str, tuple[Sequence[float], Sequence[float], str]]],
    path: str | os.PathLike,
    xlabel: str,
    references: Mapping[str, Mapping[str, float]] | None = None,
    dpi: int = 110,
    decreasing: bool = True,
) -> None:
    """Side-by-side panels of curves against a shared x axis (decreasing by default), log-scaled y.

    Parameters
    ----------
    panels
        ``{panel title: {curve label: (x values, y values, matplotlib line style)}}``.
    path
        Output PNG (written atomically).
    xlabel
        Label of the shared x axis.
    references
        ``{panel title: {label: value}}`` drawn as horizontal dashed lines.
    decreasing
        Draw the x axis decreasing, as a reverse process runs (a timestep axis).
    """
    fig, axes = plt.subplots(1, len(panels), figsize=(5.4 * len(panels), 4.0), squeeze=False)
    for ax, (title, curves) in zip(axes[0], panels.items()):
        for label, (x, y, style) in curves.items():
            ax.plot(x, y, style, label=label, linewidth=1.4, markersize=3)
        ax.set_yscale("log")
        if decreasing:
            ax.invert_xaxis()
        for name, value in (references or {}).get(title, {}).items():
            ax.axhline(value, color="black", linestyle="--", linewidth=1.0)
            ax.annotate(name, (ax.get_xlim()[0], value), ha="left", va="bottom", fontsize=8)
        ax.set_xlabel(xlabel)
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=7)
    _save(fig, path, dpi)
