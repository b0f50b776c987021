"""The topology benchmark's modes: the run file, mesh, methods and test sets of each scale.

* ``quick``: the coarse mesh (556 vertices), 96 SIMP optima to train on, 400 steps per
  method, 16 test problems per test set; under 15 minutes on two cores, data generation
  included.
* ``default``: the 1,542-vertex mesh, 1,000 SIMP optima, 3,000 steps per method, 64 test
  problems per test set; hours on two cores.
* ``full``: 10,000 optima and 100,000 steps, for a GPU (``--device cuda``; the FEM stays
  on the CPU).

Each test set has ``data.n_test`` problems; SIMP is rerun and timed on the first
``simp_timed`` of each, and PIDM's designs are refined by ``warm_iterations`` SIMP
iterations.

Every mode trains DDPM and PIDM-mean on the same network (the mesh denoiser, the
conditions as input channels) and compares them with SIMP on an in-distribution and an
out-of-distribution test set. The physics of PIDM is the weak equilibrium residual, the
volume fraction as an equality term and the compliance as a light objective; the network
sees the fields themselves (``representation: nodal``) and the physics gradient reaches
every generated field, the density included (``residual_gradient: all``). The objective
weight is small because the compliance of a noisy estimate is large: a heavier weight
drowns the data term (see ``docs/generated-topologies.md``).
"""

from __future__ import annotations

from typing import Any

#: the methods every mode compares
METHODS = ("ddpm", "pidm_mean")

#: the diffusion keys every mode shares: see the module description
_PHYSICS = {"representation": "nodal", "residual_gradient": "all", "residual": "weak",
            "c_residual": 1e-4, "c_eq": 1.0, "lambda_opt": 1e-5}


def _mode(mesh: str, data: dict[str, int], training: dict[str, Any], simp_timed: int,
          model: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "mesh": mesh,
        "methods": METHODS,
        "config": {"data": data, "model": {"field_views": False, **(model or {})}, "diffusion": _PHYSICS,
                   "training": training},
        "simp_timed": simp_timed,
        "warm_iterations": 10,
    }


MODES: dict[str, dict[str, Any]] = {
    "quick": _mode("topology_2x1_coarse.msh", {"n_train": 96, "n_val": 8, "n_test": 16},
                   {"steps": 400, "ema_start": 200, "val_every": 200, "checkpoint_every": 100}, simp_timed=6),
    "default": _mode("topology_2x1.msh", {"n_train": 1000, "n_val": 32, "n_test": 64}, {"steps": 3000},
                     simp_timed=64),
    "full": _mode("topology_2x1.msh", {"n_train": 10000, "n_val": 256, "n_test": 256},
                  {"steps": 100000, "batch_size": 64, "lr": 1e-4, "ema_start": 1000, "val_every": 5000,
                   "checkpoint_every": 2000, "log_every": 100}, simp_timed=256, model={"width": 64}),
}
