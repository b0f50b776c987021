"""What a SIMP run leaves: results.json, history.json, design.png and fields/design.pvd, written atomically."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from pidm_fem.atomic_files import atomic_directory, write_json
from pidm_fem.physics.elasticity import Elasticity
from pidm_fem.topopt.simp import SIMPResult, SIMPSettings


def plot_design(elasticity: Elasticity, density, path: str | os.PathLike, title: str) -> None:
    """The density on the mesh (black solid, white void) as a PNG."""
    import firedrake as fd
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from firedrake.pyplot import tripcolor

    rho = fd.Function(elasticity.D, name="rho")
    rho.dat.data[:] = density
    low, high = elasticity.nodes.min(axis=0), elasticity.nodes.max(axis=0)
    width = 8.0
    fig, ax = plt.subplots(figsize=(width, max(1.5, width * (high[1] - low[1]) / (high[0] - low[0])) + 0.6))
    tripcolor(rho, axes=ax, cmap="gray_r", vmin=0.0, vmax=1.0)
    ax.set_aspect("equal")
    ax.set_axis_off()
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=130, bbox_inches="tight")
    plt.close(fig)


def write_outputs(out: str | os.PathLike, elasticity: Elasticity, result: SIMPResult, settings: SIMPSettings,
                  problem: dict[str, Any]) -> Path:
    """Write a run's outputs into ``out`` (replaced whole, so that it is never half-written).

    ``out/results.json`` holds the compliance, volume fraction, iterations, seconds and
    convergence, the settings and the problem's description; ``out/history.json`` the
    iterations; ``out/design.png`` the design; ``out/fields/design.pvd`` the density and the
    displacement of the final design, for ParaView.
    """
    import firedrake as fd

    out = Path(out)
    with atomic_directory(out) as tmp:
        write_json(tmp / "results.json", {**result.summary(), "settings": dataclasses.asdict(settings),
                                          "material": dataclasses.asdict(elasticity.material),
                                          "problem": problem, "n_cells": elasticity.mesh.num_cells(),
                                          "n_displacement_dofs": elasticity.V.dof_count})
        write_json(tmp / "history.json", result.history)
        title = (f"c = {result.compliance:.5g}, volume {result.volume_fraction:.3f}, "
                 f"{result.iterations} iterations ({settings.filter} filter, {settings.optimizer})")
        plot_design(elasticity, result.density, tmp / "design.png", title)
        rho = fd.Function(elasticity.D, name="density")
        rho.dat.data[:] = result.density
        u = elasticity.solve(result.density).copy(deepcopy=True)
        u.rename("displacement")
        (tmp / "fields").mkdir()
        fd.VTKFile(str(tmp / "fields" / "design.pvd")).write(rho, u)
    return out
