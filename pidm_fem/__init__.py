"""pidm_fem: physics-informed diffusion models trained on exact Firedrake weak forms."""

import warnings

__version__ = "0.1.0"

# Firedrake 2026.10.0 pins petsc4py 3.26.0, which runs on PETSc 3.26.1 (a patch
# release of the same minor version); petsctools warns about the difference.
warnings.filterwarnings(
    "ignore", message=r"The PETSc version \(3\.26\.1\) does not match the petsc4py version \(3\.26\.0\)"
)
