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
    """Callable: ``keys (str) -> bool array``, True where the document is seen for the first time.

    With ``track=True`` it also remembers each first occurrence's id (8 more bytes per slot,
    for ``--dedupe-report``): :meth:`insert` given ids sets :attr:`matches`, the first
    occurrence of every copy in the call."""

    def __init__(self, capacity: int = 1 << 16, track: bool = False) -> None:
        cap = 1 << max(4, int(capacity - 1).bit_length())
        self._table = np.zeros((cap, 2), dtype=np.uint64)
        self._used = np.zeros(cap, dtype=np.uint8)
        self._first = np.zeros(cap, dtype=np.int64) if track else None
        self.matches = np.zeros(0, dtype=np.int64)
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
        was_used = self._used.astype(np.bool_)
        old_keys = self._table[was_used]
        self._table = np.zeros((cap, 2), dtype=np.uint64)
        self._used = np.zeros(cap, dtype=np.uint8)
        from ..kernels.exact import insert_keys

        scratch = np.zeros(len(old_keys), dtype=np.bool_)
        slots = np.zeros(len(old_keys), dtype=np.int64)
        self.count = insert_keys(self._table, self._used, 0, old_keys, scratch, slots)
        if self._first is not None:  # the values move with their keys
            first = np.zeros(cap, dtype=np.int64)
            first[slots] = self._first[was_used]
            self._first = first

    def __call__(self, keys: Sequence[str]) -> np.ndarray:
        return self.insert(self.digests(keys))

    def insert(self, d: np.ndarray, ids: np.ndarray | None = None) -> np.ndarray:
        """Insert digests ``[n, 2]`` (from :meth:`digests`) in order; True where first seen.
        With ``ids`` (a tracking deduper), :attr:`matches` becomes the id of the first
        occurrence of each document that was not new, in order."""
        d = np.ascontiguousarray(d, dtype=np.uint64).reshape(-1, 2)
        self._grow(self.count + len(d))
        from ..kernels.exact import insert_keys  # numba only where the table lives (the parent)

        is_new = np.zeros(len(d), dtype=np.bool_)
        slots = np.zeros(len(d), dtype=np.int64)
        self.count = insert_keys(self._table, self._used, self.count, d, is_new, slots)
        if self._first is not None:
            if ids is None:
                raise TypeError("a tracking ExactDeduper needs the documents' ids")
            # new keys first: a copy later in the same call finds its original's id
            self._first[slots[is_new]] = np.asarray(ids, dtype=np.int64)[is_new]
            self.matches = self._first[slots[~is_new]]
        return is_new

    @property
    def nbytes(self) -> int:
        extra = self._first.nbytes if self._first is not None else 0
        return self._table.nbytes + self._used.nbytes + extra
