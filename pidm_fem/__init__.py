"""pidm_fem: physics-informed diffusion models trained on exact Firedrake weak forms."""

__version__ = "0.1.0"
