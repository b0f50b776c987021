"""Sample files: N samples of packed fields in one HDF5 file, made crash-safe and resumably.

Layout of a finished file::

    attrs   format, fingerprint, settings (JSON), field_names, field_sizes
    samples (N, row) float64, rows packed as the bridge's FieldLayout packs them
    dof_coordinates/<field>  (size, gdim) coordinates of each field's entries

While samples are missing, the finished rows are in ``<path>.partial``, an append-only
journal (:mod:`pidm_fem.data.journal`): a row counts as done only once its whole record
is in that file, so a process killed at any moment loses at most the row it was
writing. When every row is done the HDF5 file is written under a temporary name,
synced and renamed to ``<path>``, so a file under the final name is complete; a resumed
generation gives the same bytes as an uninterrupted one. A damaged journal is set aside
as ``<path>.partial.damaged`` (with a one-line warning) and generation starts again.

Rows are checked when written and when loaded: every value finite, and whatever the
caller's ``reject`` test refuses (the problem's admissibility, K > 0 for Darcy). A file
is refused, with a one-line :class:`DatasetError`, when it is not a sample file, is
damaged, holds a bad row, or its fingerprint or settings differ from what the caller expects.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import h5py
import numpy as np

from pidm_fem.atomic_files import atomic_path
from pidm_fem.errors import ComputationError, InputError, one_line

from .journal import JournalDamaged, RowJournal, fsync_directory

FORMAT = "pidm_fem.samples/2"
LOG = logging.getLogger(__name__)

#: marks rows a problem does not admit: ``reject(rows (N, row)) -> (N,) bool``
RowTest = Callable[[np.ndarray], np.ndarray]


class DatasetError(InputError):
    """A sample file that does not fit: the message names the file and the problem."""

    def __init__(self, path: str | os.PathLike, problem: str):
        super().__init__(f"{path}: {one_line(problem)}")


class BadSample(ComputationError):
    """A generated sample that is not finite or not admissible; the message names the file and the row."""


def partial_path(path: str | os.PathLike) -> Path:
    """Name of the journal of finished rows while samples are still missing."""
    path = Path(path)
    return path.with_name(path.name + ".partial")


def set_aside(path: Path) -> Path:
    """Rename a damaged file to ``<name>.damaged`` (``.damaged.1``, ... if taken); return the new name."""
    target = path.with_name(path.name + ".damaged")
    number = 0
    while target.exists():
        number += 1
        target = path.with_name(f"{path.name}.damaged.{number}")
    os.replace(path, target)
    return target


def bad_rows(rows: np.ndarray, reject: RowTest | None) -> tuple[np.ndarray, str]:
    """Indices of rows with non-finite values or refused by ``reject``, and what is wrong with them."""
    finite = np.isfinite(rows).all(axis=1)
    if not finite.all():
        return np.flatnonzero(~finite), "non-finite values"
    if reject is not None:
        refused = np.asarray(reject(rows), dtype=bool)
        if refused.any():
            return np.flatnonzero(refused), "values the problem does not admit"
    return np.array([], dtype=np.int64), ""


def _header(n_samples: int, fingerprint: str, settings: Mapping, fields: Mapping[str, np.ndarray]) -> dict:
    return {
        "format": FORMAT,
        "fingerprint": fingerprint,
        "settings": json.dumps(settings, sort_keys=True),
        "field_names": list(fields),
        "field_sizes": [len(c) for c in fields.values()],
        "n_rows": int(n_samples),
        "row_size": int(sum(len(c) for c in fields.values())),
    }


class SampleFile:
    """The journal of a sample file being made; use :meth:`open_for_writing`, then :meth:`write` and :meth:`finish`."""

    def __init__(self, path: Path, journal: RowJournal, fields: Mapping[str, np.ndarray], reject: RowTest | None):
        self.path, self.journal, self.reject = path, journal, reject
        self.fields = {name: np.asarray(coords, dtype="f8") for name, coords in fields.items()}

    @classmethod
    def open_for_writing(
        cls,
        path: str | os.PathLike,
        n_samples: int,
        fingerprint: str,
        settings: Mapping,
        fields: Mapping[str, np.ndarray],
        reject: RowTest | None = None,
    ) -> "SampleFile":
        """Create the journal ``<path>.partial``, or reopen it to resume if it matches.

        Parameters
        ----------
        path
            Final file name.
        n_samples
            Number of rows.
        fingerprint
            Fingerprint of the mesh and fields the rows refer to.
        settings
            Generator settings (JSON-serialisable), including the seed.
        fields
            Ordered ``{name: dof_coordinates}``; row length is the sum of their lengths.
        reject
            The problem's test of inadmissible rows, applied to every row written.

        Raises
        ------
        DatasetError
            If an existing journal was made for another mesh, layout, settings or size.
        """
        path = Path(path)
        part = partial_path(path)
        header = _header(n_samples, fingerprint, settings, fields)
        path.parent.mkdir(parents=True, exist_ok=True)
        if part.exists():
            try:
                journal, dropped = RowJournal.reopen(part)
            except (JournalDamaged, OSError) as err:
                aside = set_aside(part)
                LOG.warning("%s: damaged (%s); set aside as %s, generation starts again", part, one_line(err), aside.name)
            else:
                if dropped:
                    LOG.warning("%s: dropped a row torn by an interrupted write (%d bytes)", part, dropped)
                stored = journal.header
                for key in header:
                    if stored.get(key) != header[key]:
                        journal.close()
                        raise DatasetError(
                            part, f"made with another {key.replace('_', ' ')} ({stored.get(key)!r}, expected "
                                  f"{header[key]!r}); remove it to start again"
                        )
                return cls(path, journal, fields, reject)
        return cls(path, RowJournal.create(part, header), fields, reject)

    @property
    def missing(self) -> np.ndarray:
        """Indices of rows not yet written."""
        done = np.zeros(self.journal.n_rows, dtype=bool)
        done[self.journal.done] = True
        return np.flatnonzero(~done)

    def write(self, index: int, row: np.ndarray) -> None:
        """Check and store one finished sample.

        Raises
        ------
        BadSample
            If the row has non-finite values or the problem does not admit it.
        """
        row = np.asarray(row, dtype=float)
        bad, what = bad_rows(row[None, :], self.reject)
        if len(bad):
            raise BadSample(f"{self.path}: the generator gave row {index} with {what}; nothing of it was stored")
        self.journal.append(index, row)

    def flush(self) -> None:
        """Make the written rows durable."""
        self.journal.sync()

    def finish(self) -> Path:
        """If every row is done, write the HDF5 file under its final name and remove the journal.

        Returns the final path when complete, else the journal's path (which a later call resumes).
        """
        journal = self.journal
        if len(self.missing):
            journal.close()
            return partial_path(self.path)
        rows = journal.rows()  # read through the open file: works even if the journal was removed meanwhile
        header = journal.header
        with atomic_path(self.path) as tmp:
            with h5py.File(tmp, "w") as h5:
                for key in ("format", "fingerprint", "settings"):
                    h5.attrs[key] = header[key]
                h5.attrs["field_names"] = json.dumps(header["field_names"])
                h5.attrs["field_sizes"] = json.dumps(header["field_sizes"])
                h5.create_dataset("samples", data=rows)
                group = h5.create_group("dof_coordinates")
                for name, coords in self.fields.items():
                    group.create_dataset(name, data=coords)
            with open(tmp, "rb") as written:
                os.fsync(written.fileno())
        fsync_directory(self.path.parent)
        journal.close()
        journal.path.unlink(missing_ok=True)
        return self.path


def load_samples(
    path: str | os.PathLike,
    fingerprint: str,
    names: Sequence[str],
    settings: Mapping | None = None,
    reject: RowTest | None = None,
) -> tuple[np.ndarray, dict]:
    """Read a complete sample file after checking it matches the caller's mesh and fields.

    Parameters
    ----------
    path
        The file.
    fingerprint, names
        The mesh-and-layout fingerprint and the field names the caller expects.
    settings
        The generator settings expected, or None to accept any.
    reject
        The problem's test of inadmissible rows.

    Returns
    -------
    samples
        (N, row) float64 array.
    settings
        The generator settings stored in the file.

    Raises
    ------
    DatasetError
        If the file is missing, unreadable, made for another mesh, layout or settings, or holds a bad row.
    """
    path = Path(path)
    if not path.is_file():
        hint = " (a partial file exists: resume generation)" if partial_path(path).exists() else ""
        raise DatasetError(path, f"no such sample file{hint}")
    try:
        with h5py.File(path, "r") as h5:
            attrs = dict(h5.attrs)
            if attrs.get("format") != FORMAT:
                raise DatasetError(path, f"not a sample file of this pidm_fem (format {attrs.get('format')!r}, "
                                         f"expected {FORMAT!r}); remove it to generate it again")
            samples = h5["samples"][:]
    except OSError as err:
        raise DatasetError(path, f"cannot read as HDF5 ({one_line(err)})") from None
    except KeyError as err:
        raise DatasetError(path, f"incomplete sample file (no {err})") from None
    if attrs["fingerprint"] != fingerprint:
        raise DatasetError(
            path, f"made for another mesh or field layout (fingerprint {attrs['fingerprint']}, expected {fingerprint})"
        )
    if settings is not None and attrs["settings"] != json.dumps(settings, sort_keys=True):
        raise DatasetError(path, f"made with other settings ({attrs['settings']}, expected "
                                 f"{json.dumps(settings, sort_keys=True)})")
    if json.loads(attrs["field_names"]) != list(names):
        raise DatasetError(path, f"holds fields {attrs['field_names']}, expected {list(names)}")
    bad, what = bad_rows(samples, reject)
    if len(bad):
        rows = ", ".join(map(str, bad[:5])) + (", ..." if len(bad) > 5 else "")
        raise DatasetError(path, f"{len(bad)} rows with {what} (rows {rows}); remove the file to generate it again")
    return samples, json.loads(attrs["settings"])
