"""Files written atomically, and positioned reads of many ranges of a flat binary file.

Atomic writes (:class:`AtomicFile`, :func:`atomic_write_bytes`): every file fastprep publishes
(shards, manifest, quarantine, task results, shuffle partitions, checkpoints) is written under a
temporary name beside its final one, fsynced and renamed into place, so a reader sees the old
file, the new one or none, never half of one. The temporary name is hidden (a leading dot) and
unique per process and thread (``.NAME.PID-TID.tmp``): an orphaned worker of a killed run may
still be finishing the same task file as its successor, and each renames only its own complete
file (both hold identical bytes).

Positioned reads (:func:`read_ranges`) are used where a memory map would do the same job but
leave every page it touched counted in the process's RSS for as long as the map lives (the
write stage reads row pieces from the token spill; the band shuffle's store reads candidate
documents' signatures and shingle sets). Pages read this way stay in the page cache, which the
kernel reclaims at will, and the process holds only the array it asked for.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from types import TracebackType
from typing import IO, BinaryIO

import numpy as np


def temp_path(path: str | os.PathLike[str]) -> Path:
    """The temporary name :class:`AtomicFile` writes ``path`` under (same folder, hidden)."""
    p = Path(path)
    return p.with_name(f".{p.name}.{os.getpid()}-{threading.get_native_id()}.tmp")


def is_temp_name(name: str) -> bool:
    """Whether a file name is one of :func:`temp_path`'s (left behind by a killed writer)."""
    return name.startswith(".") and name.endswith(".tmp")


class AtomicFile:
    """A binary file that appears at ``path`` complete or not at all.

    Use as a context manager (committed when the block ends normally, discarded on an
    exception) or call :meth:`commit` / :meth:`discard` yourself::

        with AtomicFile(out / "manifest.json") as f:
            f.write(data)
    """

    def __init__(self, path: str | os.PathLike[str], direct: bool = False) -> None:
        """``direct``: write whole aligned blocks past the page cache (``O_DIRECT``, Linux),
        for large sequential outputs such as shards: buffered writes slow down once the page
        cache fills, direct ones do not (``benchmarks/README.md``, "Component figures").
        Anything unaligned, and filesystems without ``O_DIRECT``, are written the usual way."""
        self.path = Path(path)
        self.tmp = temp_path(self.path)
        self._direct = -1
        if direct and hasattr(os, "O_DIRECT"):
            try:
                self._direct = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_DIRECT,
                                       0o644)
            except OSError:
                self._direct = -1
        self.file: BinaryIO = (os.fdopen(self._direct, "wb", buffering=0) if self._direct >= 0
                               else open(self.tmp, "wb"))

    def write(self, data: bytes | memoryview) -> int:
        if self._direct >= 0:
            view = memoryview(data).cast("B")
            if len(view) % _BLOCK or _address(view) % _BLOCK:
                self._stop_direct()
            else:
                done = 0
                while done < len(view):  # a raw write may be short
                    done += os.write(self._direct, view[done:])
                return done
        return self.file.write(data)

    def _stop_direct(self) -> None:
        """Back to ordinary writes for the rest of the file (its unaligned tail)."""
        import fcntl

        flags = fcntl.fcntl(self._direct, fcntl.F_GETFL)
        fcntl.fcntl(self._direct, fcntl.F_SETFL, flags & ~os.O_DIRECT)
        self._direct = -1

    def commit(self) -> Path:
        """fsync, close and rename into place; returns the final path."""
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        os.replace(self.tmp, self.path)
        return self.path

    def discard(self) -> None:
        """Close and remove the temporary file; ``path`` is left as it was."""
        self.file.close()
        try:
            self.tmp.unlink()
        except FileNotFoundError:
            pass

    def __enter__(self) -> AtomicFile:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        if kind is None:
            self.commit()
        else:
            self.discard()


_BLOCK = 4096  # O_DIRECT's alignment of addresses and sizes (the common logical block)


def _address(view: memoryview) -> int:
    import ctypes

    if view.readonly:  # read-only buffers cannot be addressed this way: take the slow path
        return 1
    return ctypes.addressof(ctypes.c_char.from_buffer(view))


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` through :class:`AtomicFile`."""
    with AtomicFile(path) as f:
        f.write(data)


def write_ones(f: IO[bytes] | AtomicFile, n: int) -> None:
    """Append ``n`` bytes of value 1 (a loss mask of all targets) in bounded chunks."""
    chunk = np.ones(min(n, 1 << 24), np.uint8).tobytes()
    while n:
        k = min(n, len(chunk))
        f.write(chunk[:k] if k < len(chunk) else chunk)
        n -= k


def read_ranges(f: IO[bytes], starts: np.ndarray, lens: np.ndarray, out: np.ndarray,
                offset: int = 0) -> np.ndarray:
    """Concatenate the element ranges ``[start, start + len)`` of the file (elements of
    ``out``'s dtype, element 0 at byte ``offset``) into the front of ``out``, in the order
    given; ranges that continue one another merge into one read (ascending ranges read the file
    in one forward pass). Returns that front of ``out``. ``OSError`` if the file is short."""
    starts = np.asarray(starts, dtype=np.int64)
    lens = np.asarray(lens, dtype=np.int64)
    total = int(lens.sum())
    if total > out.shape[0]:
        raise ValueError(f"the ranges hold {total} elements, more than the buffer's {out.shape[0]}")
    out = out[:total]
    if not len(lens):
        return out
    ends = starts + lens
    # a new read starts wherever a range does not begin where the previous one ended
    breaks = np.flatnonzero(starts[1:] != ends[:-1]) + 1
    first = np.concatenate([[0], breaks])
    last = np.concatenate([breaks, [len(lens)]]) - 1
    view = memoryview(out).cast("B")
    pos = 0
    size = out.dtype.itemsize
    # one positioned read per run where the OS has it (no seek, no buffer copy: the write
    # stage makes one call per packed piece)
    preadv = getattr(os, "preadv", None)
    fd = f.fileno() if preadv is not None else -1
    for i, j in zip(first.tolist(), last.tolist()):
        nbytes = int(ends[j] - starts[i]) * size
        at = offset + int(starts[i]) * size
        if preadv is not None:
            got = 0
            while got < nbytes:  # a read may return less than asked before the end
                k = preadv(fd, [view[pos + got:pos + nbytes]], at + got)
                if k <= 0:
                    break  # end of file: a truncated work file, reported below
                got += k
        else:
            f.seek(at)
            got = f.readinto(view[pos:pos + nbytes])
        if got != nbytes:
            raise OSError(f"{f.name} is shorter than expected (truncated work file)")
        pos += nbytes
    return out
