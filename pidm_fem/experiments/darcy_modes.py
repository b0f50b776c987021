"""The Darcy benchmark's modes: the run file, mesh, methods and sample count of each scale.

* ``quick`` (``make demo``): the coarse mesh, 256 training samples, 350 steps; the
  paper's methods and the physics-exact reference, CoCoGen on DDPM and PIDM-mean;
  under 10 minutes on two cores.
* ``default``: the default mesh, 1,000 training samples, 1,000 steps; every method,
  the low-noise expert of ``ddpm_k_pidm_p`` for 300 steps (each of its steps runs three
  networks on trajectory states); about 1.5 hours on two cores.
* ``full``: the paper's scale (10,000 samples, 300,000 steps, a U-Net of width 64,
  ancestral sampling), for a GPU (``--device cuda``).
"""

from __future__ import annotations

from typing import Any

#: every first-class method, in table order
ALL_METHODS = ("ddpm", "pidm_mean", "pidm_sample", "physics_guided", "pidm_trajectory", "ddpm_k_pidm_p", "ddpm_k_fem_p")

MODES: dict[str, dict[str, Any]] = {
    "quick": {
        "mesh": "unit_square_r1.msh",
        "methods": ("ddpm", "pidm_mean", "pidm_sample", "physics_guided", "ddpm_k_fem_p"),
        "config": {
            "data": {"n_train": 256, "n_val": 32, "n_test": 64},
            "training": {"steps": 350, "ema_start": 175, "val_every": 175, "checkpoint_every": 175},
            "sampling": {"n_samples": 64},
            "cocogen": {"apply_to": ["ddpm", "pidm_mean"], "after": 200},
        },
    },
    "default": {
        "mesh": "unit_square.msh",
        "methods": ALL_METHODS,
        "config": {
            "data": {"n_train": 1000, "n_val": 64, "n_test": 128},
            "training": {"steps": 1000},
            "sampling": {"n_samples": 128},
            "expert": {"steps": 300},
            "cocogen": {"apply_to": ["ddpm", "pidm_mean"]},
        },
    },
    "full": {
        "mesh": "unit_square.msh",
        "methods": ALL_METHODS,
        "config": {
            "data": {"n_train": 10000, "n_val": 256, "n_test": 256},
            "model": {"kind": "unet", "width": 64, "input_products": False},
            "diffusion": {"sample_steps": 4},
            "training": {"steps": 300000, "batch_size": 64, "lr": 1e-4, "ema_start": 1000, "val_every": 5000,
                         "checkpoint_every": 2000, "log_every": 100},
            "sampling": {"sampler": "ddpm", "n_samples": 256},
            "expert": {"steps": 300000, "lr": 1e-4},
            "cocogen": {"apply_to": ["ddpm", "pidm_mean"]},
        },
    },
}
