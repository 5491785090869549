"""Exact deduplication: a 128-bit BLAKE2b digest of each document's canonical cleaned form
(:func:`fastprep.stages.records.dedupe_key`), first occurrence kept.

128 bits make an accidental collision negligible (~1e-20 for 1e9 documents), unlike the 64-bit
hashes some pipelines use (a collision per ~4e9 pairs means real data loss at 1e5+ documents).
The digests live in a compact numba hash table (:mod:`fastprep.kernels.exact`), 34 bytes per
kept document at worst; hashing runs in C (``hashlib``), a small cost next to tokenization.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np


class ExactDeduper:
    """Callable: ``keys (str) -> bool array``, True where the document is seen for the first time."""

    def __init__(self, capacity: int = 1 << 16) -> None:
        cap = 1 << max(4, int(capacity - 1).bit_length())
        self._table = np.zeros((cap, 2), dtype=np.uint64)
        self._used = np.zeros(cap, dtype=np.uint8)
        self.count = 0

    @staticmethod
    def digests(keys: Sequence[str]) -> np.ndarray:
        blob = b"".join(hashlib.blake2b(k.encode("utf-8", "surrogatepass"), digest_size=16).digest()
                        for k in keys)
        return np.frombuffer(blob, dtype="<u8").reshape(-1, 2)

    def _grow(self, need: int) -> None:
        cap = self._table.shape[0]
        if need * 2 <= cap:
            return
        while need * 2 > cap:
            cap *= 2
        old_keys = self._table[self._used.astype(np.bool_)]
        self._table = np.zeros((cap, 2), dtype=np.uint64)
        self._used = np.zeros(cap, dtype=np.uint8)
        from ..kernels.exact import insert_keys

        scratch = np.zeros(len(old_keys), dtype=np.bool_)
        self.count = insert_keys(self._table, self._used, 0, old_keys, scratch)

    def __call__(self, keys: Sequence[str]) -> np.ndarray:
        return self.insert(self.digests(keys))

    def insert(self, d: np.ndarray) -> np.ndarray:
        """Insert digests ``[n, 2]`` (from :meth:`digests`) in order; True where first seen."""
        d = np.ascontiguousarray(d, dtype=np.uint64).reshape(-1, 2)
        self._grow(self.count + len(d))
        from ..kernels.exact import insert_keys  # numba only where the table lives (the parent)

        is_new = np.zeros(len(d), dtype=np.bool_)
        self.count = insert_keys(self._table, self._used, self.count, d, is_new)
        return is_new

    @property
    def nbytes(self) -> int:
        return self._table.nbytes + self._used.nbytes
