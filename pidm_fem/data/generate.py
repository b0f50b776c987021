"""Fill a sample file with a generator, in several processes, resuming partial files."""

from __future__ import annotations

import multiprocessing
import os
import signal
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from pidm_fem.errors import ComputationError
from pidm_fem.stop_signals import die_with_parent

from .store import RowTest, SampleFile, partial_path

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
) -> Path:
    """Generate the missing rows of a sample file; return the complete file's path.

    Each row depends only on its index and the settings (the generator seeds
    itself from both), so the file is the same, byte for byte, for any number of
    workers and any interruption. An interrupted run leaves ``<path>.partial``,
    which the next call with the same fingerprint and settings completes.

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
