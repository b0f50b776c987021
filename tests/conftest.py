"""Shared fixtures. Firedrake runs single-threaded (OMP_NUM_THREADS=1)."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

# Firedrake hands sys.argv (pytest's options) to PETSc; do not list them as unused at exit.
os.environ.setdefault("PETSC_OPTIONS", "-options_left no")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def default_mesh():
    from pidm_fem.mesh import default_mesh_path, load_mesh

    return load_mesh(default_mesh_path())
