"""Fill a sample file with a generator, in several processes, resuming partial files."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .store import SampleFile

#: makes a sample generator: ``make()(index) -> row``; must be picklable (spawned workers call it)
GeneratorFactory = Callable[[], Callable[[int], np.ndarray]]

_WORKER_GENERATOR = None


def _init_worker(make: GeneratorFactory) -> None:
    global _WORKER_GENERATOR
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
) -> Path:
    """Generate the missing rows of a sample file; return the complete file's path.

    Each row depends only on its index and the settings (the generator seeds
    itself from both), so the file is the same for any number of workers and
    any interruption. An interrupted run leaves ``<path>.partial``, which the
    next call with the same fingerprint and settings completes.

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
        Rows between flushes to disk.
    progress
        Show a progress bar.
    """
    path = Path(path)
    if path.is_file():
        return path
    store = SampleFile.open_for_writing(path, n_samples, fingerprint, settings, fields)
    missing = store.missing
    bar = tqdm(total=n_samples, initial=n_samples - len(missing), desc=f"samples {path.name}",
               unit="sample", disable=not progress)
    try:
        if workers <= 1:
            generator = make()
            results = ((i, generator(int(i))) for i in missing)
            _store_all(store, results, bar, flush_every)
        else:
            context = multiprocessing.get_context("spawn")
            with context.Pool(workers, initializer=_init_worker, initargs=(make,)) as pool:
                _store_all(store, pool.imap_unordered(_run_worker, missing, chunksize=2), bar, flush_every)
    finally:
        bar.close()
        final = store.finish()
    return final


def _store_all(store: SampleFile, results, bar, flush_every: int) -> None:
    for count, (index, row) in enumerate(results, start=1):
        store.write(index, row)
        bar.update(1)
        if count % flush_every == 0:
            store.flush()
