"""Data-parallel training over processes with ``torch.distributed`` (gloo on CPUs, NCCL on GPUs).

Launched by ``torchrun --nproc-per-node N pidm-fem train RUN.yaml`` or ``mpiexec -n N
pidm-fem train RUN.yaml``. Every process draws the same global batch, timesteps and
noise from the run's generator (so the processes stay in step), computes the loss on
its own slice of the batch's rows (its PDE residuals solved on its own communicator),
and ``DistributedDataParallel`` averages the gradients. With equal slices this is the
one-process step on the global batch, to the order of floating-point sums. Rank 0
writes the checkpoints and the log; a checkpoint holds nothing of a rank, so a run
resumes with any number of processes.

Under ``torchrun`` the rendezvous comes from its variables (``MASTER_ADDR``,
``MASTER_PORT``); under an MPI launcher rank 0 picks a free port on its host and tells
the others over MPI (set ``MASTER_ADDR`` where rank 0's host name does not resolve
from the other nodes).
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from pidm_fem.parallel import mpi_world, world
from pidm_fem.training.config import ConfigError


@dataclass(frozen=True)
class DataParallel:
    """This process's share of data-parallel training.

    Attributes
    ----------
    rank, size
        The process's rank and the number of processes.
    """

    rank: int
    size: int

    def part(self, batch: int) -> slice:
        """The rows of a batch of ``batch`` rows this process computes (ConfigError unless ``size`` divides it)."""
        if batch % self.size:
            raise ConfigError(f"training.batch_size: {batch} rows do not split evenly over {self.size} processes")
        share = batch // self.size
        return slice(self.rank * share, (self.rank + 1) * share)

    def mean(self, loss: float, components: dict[str, float]) -> tuple[float, dict[str, float]]:
        """The mean over the processes of a step's loss and of each component (the same on every process)."""
        keys = sorted(components)
        tensor = torch.tensor([loss, *(float(components[key]) for key in keys)], dtype=torch.float64)
        dist.all_reduce(tensor)
        tensor /= self.size
        return float(tensor[0]), {key: float(v) for key, v in zip(keys, tensor[1:])}

    @property
    def writes(self) -> bool:
        """Whether this process writes the run's files (rank 0)."""
        return self.rank == 0


def _rendezvous_over_mpi() -> str:
    """``tcp://host:port`` of rank 0, chosen there and broadcast over MPI."""
    comm = mpi_world()
    address = None
    if comm.rank == 0:
        with socket.socket() as probe:
            probe.bind(("", 0))
            port = probe.getsockname()[1]
        address = f"tcp://{os.environ.get('MASTER_ADDR', socket.gethostname())}:{port}"
    return comm.bcast(address, root=0)


def data_parallel(device: torch.device) -> DataParallel | None:
    """This process's :class:`DataParallel` in a run of several processes (the process group joined once); None alone."""
    rank, size = world()
    if size == 1:
        return None
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if mpi_world().size > 1:
            dist.init_process_group(backend, init_method=_rendezvous_over_mpi(), rank=rank, world_size=size)
        else:
            dist.init_process_group(backend)
    return DataParallel(rank, size)


def wait_for_file(path: Path, poll_seconds: float = 1.0) -> None:
    """Wait until rank 0 has written ``path`` (the processes of a torchrun run share no MPI communicator)."""
    while not path.is_file():
        time.sleep(poll_seconds)
