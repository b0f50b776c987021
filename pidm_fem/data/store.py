"""Sample files: N samples of packed fields in one HDF5 file, resumable.

Layout of a file::

    attrs   format, fingerprint, settings (JSON), field_names, field_sizes
    samples (N, row) float64, rows packed as the bridge's FieldLayout packs them
    done    (N,) bool, which rows hold a finished sample
    dof_coordinates/<field>  (size, gdim) coordinates of each field's entries

While samples are missing the file is ``<path>.partial``; it is renamed to
``<path>`` once every row is done, so a file under the final name is complete.
A file is refused, with a one-line :class:`DatasetError`, when its fingerprint
or its settings differ from what the caller expects.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import h5py
import numpy as np

FORMAT = "pidm_fem.samples/1"


class DatasetError(ValueError):
    """A sample file that does not fit: the message names the file and the problem."""

    def __init__(self, path: str | os.PathLike, problem: str):
        super().__init__(f"{path}: {' '.join(str(problem).split())}")


def partial_path(path: str | os.PathLike) -> Path:
    """Name of the file while samples are still missing."""
    path = Path(path)
    return path.with_name(path.name + ".partial")


class SampleFile:
    """A (possibly partial) HDF5 file of samples; use :meth:`open_for_writing` or :func:`load_samples`."""

    def __init__(self, path: Path, handle: h5py.File):
        self.path, self.h5 = path, handle

    @classmethod
    def open_for_writing(
        cls,
        path: str | os.PathLike,
        n_samples: int,
        fingerprint: str,
        settings: Mapping,
        fields: Mapping[str, np.ndarray],
    ) -> "SampleFile":
        """Create ``<path>.partial``, or reopen it to resume if it matches.

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
        """
        path = Path(path)
        part = partial_path(path)
        settings_json = json.dumps(settings, sort_keys=True)
        if part.exists():
            handle = h5py.File(part, "r+")
            store = cls(part, handle)
            store._check(fingerprint, settings_json, list(fields), n_samples)
            return store
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = part.with_name(part.name + ".new")
        with h5py.File(tmp, "w") as h5:
            h5.attrs["format"] = FORMAT
            h5.attrs["fingerprint"] = fingerprint
            h5.attrs["settings"] = settings_json
            h5.attrs["field_names"] = json.dumps(list(fields))
            h5.attrs["field_sizes"] = json.dumps([len(c) for c in fields.values()])
            row = sum(len(c) for c in fields.values())
            h5.create_dataset("samples", shape=(n_samples, row), dtype="f8", chunks=(1, row))
            h5.create_dataset("done", shape=(n_samples,), dtype=bool, fillvalue=False)
            group = h5.create_group("dof_coordinates")
            for name, coords in fields.items():
                group.create_dataset(name, data=np.asarray(coords, dtype="f8"))
        os.replace(tmp, part)
        return cls(part, h5py.File(part, "r+"))

    def _check(self, fingerprint: str, settings_json: str, names: Sequence[str], n_samples: int | None) -> None:
        attrs = self.h5.attrs
        if attrs.get("format") != FORMAT:
            raise DatasetError(self.path, f"not a pidm_fem sample file (format {attrs.get('format')!r})")
        if attrs["fingerprint"] != fingerprint:
            raise DatasetError(
                self.path,
                f"made for another mesh or field layout (fingerprint {attrs['fingerprint']}, expected {fingerprint})",
            )
        if settings_json is not None and attrs["settings"] != settings_json:
            raise DatasetError(self.path, f"made with other settings ({attrs['settings']}, expected {settings_json})")
        if json.loads(attrs["field_names"]) != list(names):
            raise DatasetError(self.path, f"holds fields {attrs['field_names']}, expected {list(names)}")
        if n_samples is not None and self.h5["samples"].shape[0] != n_samples:
            raise DatasetError(self.path, f"holds {self.h5['samples'].shape[0]} samples, expected {n_samples}")

    @property
    def missing(self) -> np.ndarray:
        """Indices of rows not yet written."""
        return np.flatnonzero(~self.h5["done"][:])

    def write(self, index: int, row: np.ndarray) -> None:
        """Store one finished sample."""
        self.h5["samples"][index] = row
        self.h5["done"][index] = True

    def flush(self) -> None:
        """Push written rows to disk."""
        self.h5.flush()

    def finish(self) -> Path:
        """Close the file and, if every row is done, give it its final name."""
        complete = len(self.missing) == 0
        self.h5.close()
        if not complete:
            return self.path
        final = self.path.with_name(self.path.name.removesuffix(".partial"))
        os.replace(self.path, final)
        self.path = final
        return final


def load_samples(
    path: str | os.PathLike, fingerprint: str, names: Sequence[str], settings: Mapping | None = None
) -> tuple[np.ndarray, dict]:
    """Read a complete sample file after checking it matches the caller's mesh and fields.

    Returns
    -------
    samples
        (N, row) float64 array.
    settings
        The generator settings stored in the file.

    Raises
    ------
    DatasetError
        If the file is missing, incomplete, or made for another mesh, layout or settings.
    """
    path = Path(path)
    if not path.is_file():
        hint = " (a partial file exists: resume generation)" if partial_path(path).exists() else ""
        raise DatasetError(path, f"no such sample file{hint}")
    try:
        handle = h5py.File(path, "r")
    except OSError as err:
        raise DatasetError(path, f"cannot read as HDF5 ({err})") from None
    with handle:
        store = SampleFile(path, handle)
        store._check(fingerprint, json.dumps(settings, sort_keys=True) if settings is not None else None, names, None)
        if len(store.missing):
            raise DatasetError(path, f"{len(store.missing)} samples are missing")
        return handle["samples"][:], json.loads(handle.attrs["settings"])
