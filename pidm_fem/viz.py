"""Figures of fields on the mesh (matplotlib tripcolor through firedrake.pyplot)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .atomic_files import atomic_path  # noqa: E402


def plot_fields(
    rows: Sequence[Sequence], path: str | os.PathLike, titles: Sequence[Sequence[str]] | None = None, dpi: int = 110
) -> None:
    """Draw a grid of Firedrake Functions with tripcolor and save it as a PNG.

    Parameters
    ----------
    rows
        Rows of scalar Functions; every row has the same length.
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
            artist = tripcolor(function, axes=ax, cmap="viridis", shading="gouraud")
            fig.colorbar(artist, ax=ax, shrink=0.85)
            if titles is not None:
                ax.set_title(titles[i][j], fontsize=9)
            ax.set_aspect("equal")
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    plt.close(fig)
