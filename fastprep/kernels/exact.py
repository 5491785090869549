"""Numba kernels for exact deduplication: an open-addressing set of 128-bit keys.

Keys are 128-bit digests stored as two uint64 words; the table is two flat arrays (keys [cap, 2],
used [cap] uint8), linear probing, capacity a power of two kept at most half full, so a lookup
costs one or two cache misses and a kept document costs 2 * 17 = 34 bytes at worst (vs ~100+
bytes per entry for a Python ``set`` of ``bytes``). Digests are uniformly distributed, so the low
word is the slot index directly.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def insert_keys(table: np.ndarray, used: np.ndarray, count: int, keys: np.ndarray,
                is_new: np.ndarray, slots: np.ndarray) -> int:
    """Insert ``keys`` [n, 2] in order; ``is_new[i]`` = key i was not present before (earlier keys of
    the same call count as present), ``slots[i]`` = the table slot that holds key i (where a
    caller keeps a value per key: the first occurrence's document id). Returns the new element
    count. The caller guarantees room: count + n <= capacity / 2."""
    mask = table.shape[0] - 1
    for i in range(keys.shape[0]):
        a = keys[i, 0]
        b = keys[i, 1]
        slot = np.int64(a & np.uint64(mask))
        while True:
            if used[slot] == 0:
                used[slot] = 1
                table[slot, 0] = a
                table[slot, 1] = b
                count += 1
                is_new[i] = True
                slots[i] = slot
                break
            if table[slot, 0] == a and table[slot, 1] == b:
                is_new[i] = False
                slots[i] = slot
                break
            slot = (slot + 1) & mask
    return count


def insert_keys_reference(seen: set[tuple[int, int]], keys: np.ndarray) -> np.ndarray:
    """Pure-Python twin of :func:`insert_keys` over a ``set``; tests compare the two."""
    out = np.zeros(len(keys), dtype=np.bool_)
    for i, (a, b) in enumerate(keys.tolist()):
        if (a, b) not in seen:
            seen.add((a, b))
            out[i] = True
    return out
