"""Fill a sample file with a generator, in several processes, resuming partial files."""

from __future__ import annotations

import multiprocessing
import os
import signal
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm.auto import tqdm

from pidm_fem.errors import ComputationError
from pidm_fem.stop_signals import die_with_parent

from .store import RowTest, SampleFile, partial_path

if TYPE_CHECKING:
    from mpi4py import MPI

#: makes a sample generator: ``make()(index) -> row``; must be picklable (spawned workers call it)
GeneratorFactory = Callable[[], Callable[[int], np.ndarray]]

_WORKER_GENERATOR = None


def _init_worker(make: GeneratorFactory) -> None:
    global _WORKER_GENERATOR
    die_with_parent(signal.SIGKILL)  # its rows would go nowhere: the journal is written by the parent
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle (it keeps the rows done)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    _WORKER_GENERATOR = make()


def _run_worker(index: int) -> tuple[int, np.ndarray]:
    return index, _WORKER_GENERATOR(int(index))


def generate_samples(
    path: str | os.PathLike,
    n_samples: int,
    make: GeneratorFactory,
    fingerprint: str,
    settings: Mapping,
    fields: Mapping[str, np.ndarray],
    workers: int = 1,
    flush_every: int = 32,
    progress: bool = True,
    reject: RowTest | None = None,
    comm: "MPI.Comm | None" = None,
) -> Path:
    """Generate the missing rows of a sample file; return the complete file's path.

    Each row depends only on its index and the settings (the generator seeds
    itself from both), so the file is the same, byte for byte, for any number of
    workers or MPI ranks and any interruption. An interrupted run leaves
    ``<path>.partial``, which the next call with the same fingerprint and settings
    completes.

    Parameters
    ----------
    path
        Final file name (HDF5).
    n_samples
        Number of rows.
    make
        Picklable factory of the generator ``index -> row``.
    fingerprint, settings, fields
        Stored in the file and checked on resume (see :class:`SampleFile`).
    workers
        Worker processes (spawned; each builds its own generator).
    flush_every
        Rows between syncs to disk (each row reaches the operating system at once).
    progress
        Show a progress bar.
    reject
        The problem's test of inadmissible rows; a generated row it refuses stops generation.
    comm
        MPI communicator whose ranks share the rows (every rank calls this function with
        its own ``make``, solving on its own communicator; rank 0 alone writes the
        file); None for one process. With several ranks ``workers`` must be 1.

    Raises
    ------
    BadSample
        If the generator gives a non-finite or inadmissible row (rows before it are kept).
    ComputationError
        If a worker process dies (the rows finished before are kept).
    """
    path = Path(path)
    if path.is_file():  # complete by construction (renamed only once written); a journal left is stale
        partial_path(path).unlink(missing_ok=True)
        return path
    if comm is not None and comm.size > 1:
        if workers > 1:
            raise ValueError(f"{path}: {comm.size} MPI ranks generate the samples; give workers=1")
        return _over_ranks(path, n_samples, make, fingerprint, settings, fields, flush_every, progress, reject,
                           comm)
    store = SampleFile.open_for_writing(path, n_samples, fingerprint, settings, fields, reject)
    missing = store.missing
    bar = tqdm(total=n_samples, initial=n_samples - len(missing), desc=f"samples {path.name}",
               unit="sample", disable=not progress)
    try:
        if workers <= 1:
            generator = make()
            _store_all(store, ((i, generator(int(i))) for i in missing), bar, flush_every)
        else:
            _store_all(store, _in_processes(make, missing, workers), bar, flush_every)
    except BrokenProcessPool:
        raise ComputationError(
            f"{partial_path(path)}: a worker process died; the {n_samples - len(store.missing)} rows "
            "finished are kept, run again to resume"
        ) from None
    finally:
        bar.close()
        final = store.finish()
    return final


def _over_ranks(path: Path, n_samples: int, make: GeneratorFactory, fingerprint: str, settings: Mapping,
                fields: Mapping[str, np.ndarray], flush_every: int, progress: bool, reject: RowTest | None,
                comm: "MPI.Comm") -> Path:
    """:func:`generate_samples` over the ranks of ``comm``: rank r solves the missing rows r, r + size, ...

    Rank 0 opens (or resumes) the journal and tells every rank the missing rows; in each
    round every rank solves its ``flush_every // size`` rows of the round (so that the
    rounds' uneven solve times, SIMP's iteration counts, even out) and rank 0 gathers and
    journals them. A rank whose row fails sends the error instead: rank 0 keeps the good
    rows, every rank stops after the round, and rank 0 raises it (the others raise a
    ComputationError that points to it).
    """
    store = None
    opened: BaseException | None = None
    if comm.rank == 0:
        try:
            store = SampleFile.open_for_writing(path, n_samples, fingerprint, settings, fields, reject)
        except BaseException as err:  # every rank must hear of it, or they wait for rank 0 forever
            opened = err
    opened = comm.bcast(opened, root=0)
    if opened is not None:
        if comm.rank == 0:
            raise opened
        raise ComputationError(f"{path}: rank 0 could not open the sample file (its error is above)")
    missing = comm.bcast(None if store is None else store.missing, root=0)
    generator = make()
    bar = tqdm(total=n_samples, initial=n_samples - len(missing), desc=f"samples {path.name} ({comm.size} ranks)",
               unit="sample", disable=not progress or comm.rank != 0)
    failure: BaseException | None = None
    per_round = comm.size * max(1, flush_every // comm.size)
    try:
        for start in range(0, len(missing), per_round):
            results: list[tuple[int, np.ndarray] | BaseException] = []
            for index in missing[start + comm.rank : start + per_round : comm.size]:
                try:
                    results.append((int(index), generator(int(index))))
                except Exception as err:  # noqa: BLE001  sent to rank 0, which raises it
                    results.append(err)
                    break
            gathered = comm.gather(results, root=0)
            if comm.rank == 0:
                for item in (item for rank_results in gathered for item in rank_results):
                    if isinstance(item, BaseException):
                        failure = failure or item
                        continue
                    try:
                        store.write(*item)
                    except Exception as err:  # noqa: BLE001  an inadmissible row
                        failure = failure or err
                    bar.update(1)
                store.flush()
            if comm.bcast(failure is not None, root=0):
                break
    finally:
        bar.close()
        final = store.finish() if comm.rank == 0 else None
    complete = comm.bcast(final == path if comm.rank == 0 else None, root=0)
    if failure is not None:
        raise failure
    if not complete:
        raise ComputationError(f"{partial_path(path)}: generation stopped on rank 0 (its error is above); the rows "
                               "finished are kept, run again to resume")
    return path


def _in_processes(make: GeneratorFactory, indices: np.ndarray, workers: int) -> Iterator[tuple[int, np.ndarray]]:
    """``(index, row)`` in the order they finish, from ``workers`` spawned processes, a few tasks ahead."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker, initargs=(make,)) as pool:
        pending = iter(int(i) for i in indices)
        running = set()
        try:
            while True:
                for index in pending:
                    running.add(pool.submit(_run_worker, index))
                    if len(running) >= 4 * workers:
                        break
                if not running:
                    return
                finished, running = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    yield future.result()
        finally:
            for future in running:
                future.cancel()


def _store_all(store: SampleFile, results, bar, flush_every: int) -> None:
    for count, (index, row) in enumerate(results, start=1):
        store.write(index, row)
        bar.update(1)
        if count % flush_every == 0:
            store.flush()
