"""Positioned reads of many element ranges of a flat binary file into one array.

Used where a memory map would do the same job but leave every page it touched counted in the
process's RSS for as long as the map lives (``fastprep prepare``'s write stage reads row pieces
from the token spill; :class:`fastprep.lsh_shuffle.FileStore` reads candidate documents'
signatures and shingle sets). Pages read this way stay in the page cache, which the kernel
reclaims at will, and the process holds only the array it asked for.
"""

from __future__ import annotations

from typing import IO

import numpy as np


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
    for i, j in zip(first.tolist(), last.tolist()):
        nbytes = int(ends[j] - starts[i]) * size
        f.seek(offset + int(starts[i]) * size)
        if f.readinto(view[pos:pos + nbytes]) != nbytes:
            raise OSError(f"{f.name} is shorter than expected (truncated work file)")
        pos += nbytes
    return out
