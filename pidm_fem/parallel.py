"""The processes of a distributed run: MPI ranks (``mpiexec``, ``srun``) or ``torchrun``'s processes.

In a run of several processes every process solves its own PDEs: its meshes live on
``COMM_SELF`` (:func:`solver_comm`), sample generation splits the rows over the MPI
ranks (:func:`data_comm`), and training splits each batch over the processes
(:mod:`pidm_fem.training.distributed`). One process alone is the plain case:
``COMM_WORLD`` and no splitting.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mpi4py import MPI

#: the variables torchrun (and torch.distributed's other launchers) set in each process
TORCH_RANK, TORCH_WORLD_SIZE = "RANK", "WORLD_SIZE"


def mpi_world() -> "MPI.Comm":
    """MPI's ``COMM_WORLD`` (size 1 in a process not started by an MPI launcher)."""
    from mpi4py import MPI

    return MPI.COMM_WORLD


def world() -> tuple[int, int]:
    """``(rank, size)`` of this process in its run: MPI's when launched by MPI, else torchrun's, else (0, 1)."""
    comm = mpi_world()
    if comm.size > 1:
        return comm.rank, comm.size
    return int(os.environ.get(TORCH_RANK, 0)), int(os.environ.get(TORCH_WORLD_SIZE, 1))


def is_distributed() -> bool:
    """Whether this process is one of several of a run."""
    return world()[1] > 1


def solver_comm() -> "MPI.Comm":
    """The communicator of this process's meshes: ``COMM_SELF`` in a distributed run, else ``COMM_WORLD``."""
    from mpi4py import MPI

    return MPI.COMM_SELF if is_distributed() else MPI.COMM_WORLD


def data_comm() -> "MPI.Comm | None":
    """The MPI communicator whose ranks share sample generation; None when there is one rank."""
    comm = mpi_world()
    return comm if comm.size > 1 else None
