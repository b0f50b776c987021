"""An append-only journal of finished rows: what a sample file holds while it is being made.

A journal is one binary file::

    magic   b"PIDMFEM-ROWS/1\\n"
    header  uint64 length, that many bytes of JSON, uint32 CRC-32 of them
    records (int64 row index, float64[row_size] values, uint32 CRC-32 of both), appended

A record is appended in one write and flushed to the operating system at once, so a
killed process loses at most the record it was writing; such a torn last record is
detected by its length or its checksum and dropped on reopening. Damage anywhere else
(a bad header, a bad checksum before the last record, a row index out of range) makes
the journal unusable: :class:`JournalDamaged` says where.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

MAGIC = b"PIDMFEM-ROWS/1\n"
_LENGTH = struct.Struct("<Q")
_CRC = struct.Struct("<I")
_INDEX = struct.Struct("<q")
#: a header longer than this is damage, not a header
_MAX_HEADER = 1 << 24


class JournalDamaged(ValueError):
    """A journal that cannot be trusted; the message says what is wrong with it."""


class RowJournal:
    """A journal open for appending: :meth:`create` a new one or :meth:`reopen` an existing one."""

    def __init__(self, path: Path, handle: BinaryIO, header: Mapping[str, Any], start: int, rows: dict[int, int]):
        self.path, self._file, self.header = path, handle, dict(header)
        self.row_size = int(header["row_size"])
        self.n_rows = int(header["n_rows"])
        self._start = start
        self._offsets = rows  # row index -> file offset of its record

    @property
    def record_size(self) -> int:
        return _INDEX.size + 8 * self.row_size + _CRC.size

    @classmethod
    def create(cls, path: str | os.PathLike, header: Mapping[str, Any]) -> "RowJournal":
        """Write a new journal with ``header`` (JSON; needs ``n_rows`` and ``row_size``), durably."""
        path = Path(path)
        text = json.dumps(dict(header), sort_keys=True).encode()
        tmp = path.with_name(path.name + ".new")
        with open(tmp, "wb") as out:
            out.write(MAGIC + _LENGTH.pack(len(text)) + text + _CRC.pack(zlib.crc32(text)))
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
        fsync_directory(path.parent)
        handle = open(path, "r+b")
        handle.seek(0, os.SEEK_END)
        return cls(path, handle, header, handle.tell(), {})

    @classmethod
    def reopen(cls, path: str | os.PathLike) -> tuple["RowJournal", int]:
        """Open an existing journal to append to it; also returns how many torn bytes were dropped.

        Raises
        ------
        JournalDamaged
            If the header or a record before the last is damaged.
        """
        path = Path(path)
        handle = open(path, "r+b")
        try:
            header, start = _read_header(handle)
            journal = cls(path, handle, header, start, {})
            dropped = journal._scan()
        except Exception:
            handle.close()
            raise
        return journal, dropped

    def _scan(self) -> int:
        """Index every whole record; drop a torn last one. Returns the bytes dropped."""
        size = self._file.seek(0, os.SEEK_END)
        record = self.record_size
        count, tail = divmod(size - self._start, record)
        self._file.seek(self._start)
        for k in range(count):
            offset = self._start + k * record
            data = self._file.read(record)
            index = _INDEX.unpack_from(data)[0]
            if _CRC.unpack_from(data, record - _CRC.size)[0] != zlib.crc32(data[: record - _CRC.size]):
                if k < count - 1:
                    raise JournalDamaged(f"record {k} (of {count}) fails its checksum")
                tail += record  # the last record was torn mid-write
                break
            if not 0 <= index < self.n_rows:
                raise JournalDamaged(f"record {k} holds row {index}, outside 0..{self.n_rows - 1}")
            self._offsets.setdefault(index, offset)
        if tail:
            self._file.truncate(size - tail)
        self._file.seek(0, os.SEEK_END)
        return tail

    @property
    def done(self) -> np.ndarray:
        """Sorted indices of the rows the journal holds."""
        return np.array(sorted(self._offsets), dtype=np.int64)

    def append(self, index: int, row: np.ndarray) -> None:
        """Append one finished row and hand it to the operating system (see :meth:`sync`)."""
        values = np.ascontiguousarray(row, dtype="<f8")
        if values.shape != (self.row_size,):
            raise ValueError(f"row {index} has shape {values.shape}, expected ({self.row_size},)")
        body = _INDEX.pack(int(index)) + values.tobytes()
        offset = self._file.seek(0, os.SEEK_END)
        self._file.write(body + _CRC.pack(zlib.crc32(body)))
        self._file.flush()
        self._offsets.setdefault(int(index), offset)

    def sync(self) -> None:
        """Make the appended rows durable (``fsync``)."""
        self._file.flush()
        os.fsync(self._file.fileno())

    def rows(self) -> np.ndarray:
        """Every row, in index order, as an (n_rows, row_size) array; missing rows raise KeyError."""
        out = np.empty((self.n_rows, self.row_size))
        for index in range(self.n_rows):
            self._file.seek(self._offsets[index] + _INDEX.size)
            out[index] = np.frombuffer(self._file.read(8 * self.row_size), dtype="<f8")
        self._file.seek(0, os.SEEK_END)
        return out

    def close(self) -> None:
        """Sync and close the file."""
        if not self._file.closed:
            self.sync()
            self._file.close()


def _read_header(handle: BinaryIO) -> tuple[dict[str, Any], int]:
    head = handle.read(len(MAGIC) + _LENGTH.size)
    if len(head) < len(MAGIC) + _LENGTH.size or not head.startswith(MAGIC):
        raise JournalDamaged("not a pidm_fem row journal (bad or missing magic bytes)")
    (length,) = _LENGTH.unpack_from(head, len(MAGIC))
    if length > _MAX_HEADER:
        raise JournalDamaged(f"header length {length} is not plausible")
    text = handle.read(length)
    crc = handle.read(_CRC.size)
    if len(text) < length or len(crc) < _CRC.size:
        raise JournalDamaged("the header is truncated")
    if _CRC.unpack(crc)[0] != zlib.crc32(text):
        raise JournalDamaged("the header fails its checksum")
    try:
        header = json.loads(text)
        int(header["n_rows"]), int(header["row_size"])
    except (ValueError, KeyError, TypeError) as err:
        raise JournalDamaged(f"the header is not valid ({err})") from None
    return header, len(head) + length + _CRC.size


def fsync_directory(path: Path) -> None:
    """Make a rename in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
