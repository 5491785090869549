"""Exact deduplication: a 128-bit BLAKE2b digest of each document's canonical cleaned form
(:func:`fastprep.records.dedupe_key`), first occurrence kept.

128 bits make an accidental collision negligible (~1e-20 for 1e9 documents), unlike the 64-bit
hashes some pipelines use (a collision per ~4e9 pairs means real data loss at 1e5+ documents).
The digests live in a compact numba hash table (:mod:`fastprep._exact_kernels`), 34 bytes per
kept document at worst; hashing runs in C (``hashlib``) at ~1 GB/s, a small cost next to
tokenization.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

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
        from ._exact_kernels import insert_keys

        scratch = np.zeros(len(old_keys), dtype=np.bool_)
        self.count = insert_keys(self._table, self._used, 0, old_keys, scratch)

    def __call__(self, keys: Sequence[str]) -> np.ndarray:
        return self.insert(self.digests(keys))

    def insert(self, d: np.ndarray) -> np.ndarray:
        """Insert digests ``[n, 2]`` (from :meth:`digests`) in order; True where first seen."""
        d = np.ascontiguousarray(d, dtype=np.uint64).reshape(-1, 2)
        self._grow(self.count + len(d))
        from ._exact_kernels import insert_keys  # numba only where the table lives (the parent)

        is_new = np.zeros(len(d), dtype=np.bool_)
        self.count = insert_keys(self._table, self._used, self.count, d, is_new)
        return is_new

    @property
    def nbytes(self) -> int:
        return self._table.nbytes + self._used.nbytes


@dataclass(frozen=True)
class DedupeConfig:
    """CLI: --dedupe {none,exact,minhash}, --threshold, --num-perm, --ngram, --dedupe-report.

    exact: remove exact duplicates (after cleaning) first; on unless ``--dedupe none``.
    minhash: near-duplicate parameters, or None for no near-duplicate removal.
    report: a JSONL file listing every removed near duplicate with the document it matched.
    near_method: how MinHash decisions are made, with the same result either way: "stream" (one
        index in the driver, documents in input order), "shuffle" (band-partitioned candidate
        pairs verified in parallel, Ray tasks under ``--executor ray``: see
        :mod:`fastprep.lsh_shuffle`), or "auto" (shuffle under Ray, stream otherwise).
    """

    exact: bool = True
    minhash: Any = None  # fastprep.minhash.MinHashConfig; Any keeps the import lazy
    report: str | None = None
    near_method: Literal["auto", "stream", "shuffle"] = "auto"

    def __post_init__(self) -> None:
        if self.near_method not in ("auto", "stream", "shuffle"):
            raise ValueError(f"--near-method must be auto, stream or shuffle, not {self.near_method!r}")
        if self.report is not None and self.minhash is None:
            raise ValueError("--dedupe-report needs --dedupe minhash")
