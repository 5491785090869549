"""Near-duplicate removal: MinHash signatures + banded LSH + verification, streaming, first-wins.

Algorithm (kernels in :mod:`fastprep.kernels.minhash`, which documents normalisation and hashing
byte by byte):

1. Texts become one UTF-8 buffer plus int64 offsets (``pyarrow.array(texts, large_string())``
   buffers, a C loop, faster than per-text ``encode`` + ``b"".join``); a ``pyarrow`` string
   array is accepted as-is.
2. Per document, in parallel (``prange`` over tasks of 16 documents, handed out dynamically):
   normalise (ASCII lower-case, digits -> 0, punctuation/whitespace collapse to one space,
   Latin-1 case folding, Unicode spaces and punctuation as separators), cut into word 5-grams
   (or character n-grams), hash each shingle to 64 bits, and take K = 128 minima of
   ``(a_i x + b_i mod 2**64) >> 32``; the band keys of step 3 are computed in the same region.
   A document with fewer than n tokens is one shingle (all its tokens), so short documents get a
   real signature; an empty one gets all-0xFFFFFFFF, which no non-empty signature can share.
3. The signature is cut into ``bands`` bands of ``rows`` values; each band is hashed to a uint64
   key. :func:`choose_bands` picks them for recall: the largest ``rows`` (fewest spurious
   candidates, so least verification work) whose ``bands = K // rows`` still finds a pair at the
   threshold with probability >= 98%: 18 x 7 at 0.8 (98.6%), 25 x 5 at 0.7 (99.0%), 11 x 11 at
   0.9 (98.4%), where datatrove's 14 x 8 finds 92.4% and NeMo Curator's 20 x 13 68% at 0.8.
4. Documents are processed in input order against an index of *kept* documents: per band an
   open-addressing table (band key -> newest kept slot) with per-slot chains for kept documents
   sharing a key. Every candidate is verified before it counts: by default the exact Jaccard
   of the two shingle sets (a merge of two sorted arrays) must reach the threshold; with
   ``verify="signature"`` the fraction of equal signature values (the unbiased MinHash
   estimate of Jaccard, standard error sqrt(J(1-J)/K) = 0.035 at J = 0.8, K = 128) must.
   Candidates are rare, so exact verification costs the sorting of each document's shingles
   (~50 ns per shingle, in the workers) and the storage of the kept sets, not comparison time.
   There is no all-pairs expansion inside a bucket and no union-find.

Keep policy, deterministic: a document is removed iff it verifies as similar to a document that
was *kept* before it (earlier batches, or earlier in the same batch); otherwise it is kept and
inserted. Only kept documents enter the index, so similarity does not chain: with A kept and
B ~ A removed, a later C ~ B that is not ~ A is kept (it is compared with A only). This bounds
every removal by one verified similarity to a document that is actually in the output, and it
makes the result independent of how the input is cut into batches. Among several verified kept
matches the most similar is reported (ties: the earliest kept).

Memory (``MinHashDeduper.nbytes``, allocated capacity, K = 128, 18 bands): per kept document
8 B doc id + 72 B chain links + 4 B verification stamp, plus 18 tables of 12 B cells kept at
most half full (cells are a power of two), plus, with ``verify="signature"`` only, the 512 B
signature; capacity is reserved for a whole batch and doubles. ``verify="exact"`` also keeps
every kept document's shingle set: 4 B per distinct shingle, about 4 B per word.
``fastprep prepare`` keeps them in a memory-mapped file of its work folder (``sets_file``):
disk and evictable page cache, not heap; ``prepare --json`` reports its size
(``near_dedupe.sets_file_bytes``). Bytes per document as measured, speed against datasketch and
pair recall/precision at 0.8 (``benchmarks/eval_minhash.py``) are in ``benchmarks/README.md``.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from ..flags import option

if TYPE_CHECKING:
    import pyarrow as pa

    Texts = Sequence[str] | pa.Array | pa.ChunkedArray

__all__ = [
    "MinHashConfig",
    "MinHashDeduper",
    "MinHashResult",
    "candidate_probability",
    "check_sets",
    "choose_bands",
    "concat_sets",
    "jaccard_exact",
    "signatures",
    "signatures_and_sets",
    "take_sets",
]


def _kernels() -> Any:
    """The numba kernels, imported on first use: a process that only reads a MinHashConfig
    (the driver's configuration, a worker without MinHash) does not pay numba's import."""
    from ..kernels import minhash

    return minhash


def _chunksize() -> Any:
    import numba

    return numba.parallel_chunksize(_CHUNK)
ShingleSets = tuple[np.ndarray, np.ndarray]  # (values uint32, offsets int64 [n + 1]), per document

# recall floor of choose_bands: probability that a pair at exactly the threshold is a candidate
MIN_RECALL = 0.98
# prange iterations (tasks of 16 documents) handed out at a time: documents vary 1000x in length,
# so static halves would leave one core idle at the end of a batch
_CHUNK = 2


def candidate_probability(j: float | np.ndarray, bands: int, rows: int) -> float | np.ndarray:
    """P(a pair of Jaccard ``j`` shares at least one band) = 1 - (1 - j**rows)**bands."""
    return 1.0 - (1.0 - np.asarray(j, dtype=np.float64) ** rows) ** bands


def choose_bands(threshold: float, num_perm: int, min_recall: float = MIN_RECALL) -> tuple[int, int]:
    """(bands, rows) for high recall at ``threshold`` with the least false-positive work.

    For each ``rows`` r the most bands ``num_perm // r`` are used (extra bands only add recall;
    verification removes the false candidates they bring). Fewer rows means higher recall and
    more candidates below the threshold, so the false-negative rate at the threshold is
    minimised subject to a bounded false-positive cost, expressed as: the largest r whose recall
    at the threshold is >= ``min_recall``. If no r reaches it, r = 1 (all bands of one row).
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"--threshold must be in (0, 1], got {threshold}")
    best = (num_perm, 1)
    for rows in range(1, num_perm + 1):
        bands = num_perm // rows
        if candidate_probability(threshold, bands, rows) >= min_recall:
            best = (bands, rows)
    return best


@dataclass(frozen=True)
class MinHashConfig:
    """Near-duplicate stage configuration (one frozen record; the manifest stores ``params()``)."""

    threshold: float = option(0.8, "MinHash: Jaccard similarity (of shingle sets) at or above "
                              "which a document is a near duplicate of a kept one")
    num_perm: int = option(128, "MinHash permutations K (standard error of the estimate "
                           "sqrt(J(1-J)/K): 0.035 at J = 0.8, K = 128)")
    ngram: int = option(5, "shingle length in words (characters with --char-ngrams)")
    char_ngrams: bool = option(False, "character instead of word n-grams (scripts written "
                               "without spaces)")
    bands: int | None = option(None, "LSH bands (with --band-rows; default: chosen from "
                               "--threshold for >= 98%% recall)")
    band_rows: int | None = option(None, "rows (signature values) per LSH band, with --bands",
                                   aliases=("--rows",))
    seed: int = option(0, "MinHash permutation seed", flag="--minhash-seed")
    verify: Literal["signature", "exact"] = option(
        "exact", "confirm a candidate by the exact Jaccard of the two shingle sets (the kept "
        "documents' sets go to a file in the work folder, ~4 B per word) or by the signature "
        "estimate (no file, ~2%% of removals wrong at 0.8)")

    def __post_init__(self) -> None:
        if not isinstance(self.threshold, numbers.Real) or not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"--threshold must be a Jaccard similarity in (0, 1], got {self.threshold!r}")
        if not isinstance(self.num_perm, numbers.Integral) or not 1 <= self.num_perm <= 4096:
            raise ValueError(f"--num-perm must be an integer in [1, 4096], got {self.num_perm!r} "
                             "(128 gives a standard error of 0.035 at Jaccard 0.8)")
        if not isinstance(self.ngram, numbers.Integral) or self.ngram < 1:
            raise ValueError(f"--ngram must be a positive integer, got {self.ngram!r} (default 5)")
        if (self.bands is None) != (self.band_rows is None):
            raise ValueError("--bands/--band-rows must be given together (or neither, to choose "
                             f"them from --threshold); got bands={self.bands!r}, "
                             f"band_rows={self.band_rows!r}")
        if self.bands is not None:
            if not (isinstance(self.bands, numbers.Integral)
                    and isinstance(self.band_rows, numbers.Integral)
                    and self.bands >= 1 and self.band_rows >= 1):
                raise ValueError(f"--bands/--band-rows must be positive integers, got "
                                 f"{self.bands!r}/{self.band_rows!r}")
            if self.bands * self.band_rows > self.num_perm:
                raise ValueError(f"--bands/--band-rows: bands * rows = "
                                 f"{self.bands * self.band_rows} exceeds --num-perm "
                                 f"{self.num_perm}; lower them or raise --num-perm")
        if not isinstance(self.seed, numbers.Integral) or not 0 <= self.seed < 2**64:
            raise ValueError(f"--minhash-seed must be an integer in [0, 2**64), got {self.seed!r}")
        if self.verify not in ("signature", "exact"):
            raise ValueError(f"--verify must be 'signature' or 'exact', got {self.verify!r}")

    def banding(self) -> tuple[int, int]:
        """The (bands, rows per band) in effect: the configured ones or :func:`choose_bands`."""
        if self.bands is not None and self.band_rows is not None:
            return self.bands, self.band_rows
        return choose_bands(self.threshold, self.num_perm)

    # The verification rule, used by the streaming index and the band shuffle alike: a
    # candidate counts iff exact Jaccard >= threshold (verify="exact"), or iff at least
    # signature_need() of the K signature values are equal (verify="signature"; an integer
    # count, so no float rounding decides a pair at the boundary).
    def signature_need(self) -> int:
        """Equal signature values a candidate needs under ``verify="signature"``."""
        return max(1, math.ceil(self.threshold * self.num_perm - 1e-9))

    def params(self) -> dict[str, Any]:
        """JSON-able parameters for the manifest (banding as resolved)."""
        bands, rows = self.banding()
        return {"threshold": float(self.threshold), "num_perm": int(self.num_perm),
                "ngram": int(self.ngram), "char_ngrams": bool(self.char_ngrams),
                "bands": int(bands), "band_rows": int(rows), "seed": int(self.seed),
                "verify": str(self.verify)}


@dataclass(frozen=True)
class MinHashResult:
    """Per document of a batch: keep flag, matched kept doc id (-1 if kept) and its similarity."""

    keep: np.ndarray        # bool [n]
    match: np.ndarray       # int64 [n]: doc id of the kept document a removed one matched; else -1
    similarity: np.ndarray  # float32 [n]: estimated (or exact) Jaccard with that match; else 0


def _splitmix64(state: int, count: int) -> list[int]:
    # a fixed generator (not numpy's) so signatures stay identical across numpy versions
    out = []
    for _ in range(count):
        state = (state + 0x9E3779B97F4A7C15) & _kernels().MASK64
        out.append(_kernels().fmix64_reference(state ^ (state >> 31)))
    return out


def permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(a, b) uint64 [num_perm]; a odd so x -> a x + b is a bijection of 64-bit words."""
    vals = _splitmix64(int(seed), 2 * int(num_perm))
    a = np.array([v | 1 for v in vals[:num_perm]], dtype=np.uint64)
    b = np.array(vals[num_perm:], dtype=np.uint64)
    return a, b


def utf8_buffer(texts: Texts) -> tuple[np.ndarray, np.ndarray]:
    """(buf uint8, offsets int64 [n + 1]) without a Python loop over documents. Nulls are empty."""
    import pyarrow as pa

    if isinstance(texts, pa.ChunkedArray):
        texts = texts.combine_chunks() if texts.num_chunks != 1 else texts.chunk(0)
    if isinstance(texts, pa.Array):
        arr = texts.cast(pa.large_string()) if texts.type != pa.large_string() else texts
    else:
        try:
            arr = pa.array(texts, type=pa.large_string())
        except (UnicodeEncodeError, pa.ArrowException):
            # lone surrogates cannot be encoded strictly; keep their bytes (surrogatepass)
            arr = pa.array([None if t is None else t.encode("utf-8", "surrogatepass") for t in texts],
                           type=pa.large_binary())
    n = len(arr)
    bufs = arr.buffers()
    offsets = np.frombuffer(bufs[1], dtype=np.int64, count=n + 1, offset=arr.offset * 8)
    data = bufs[2]
    buf = (np.frombuffer(data, dtype=np.uint8) if data is not None and data.size
           else np.zeros(1, dtype=np.uint8))
    return buf, offsets


def signatures(texts: Texts, cfg: MinHashConfig) -> np.ndarray:
    """uint32 [n, cfg.num_perm] MinHash signatures, computed on every core."""
    return signatures_and_sets(texts, cfg)[0]


def signatures_and_sets(texts: Texts, cfg: MinHashConfig
                        ) -> tuple[np.ndarray, ShingleSets | None]:
    """Signatures and, when ``cfg.verify == "exact"``, the shingle sets that verification
    compares (see :func:`shingle_sets`), from one pass over the text. This is what worker
    processes compute; :meth:`MinHashDeduper.add` takes both."""
    buf, offsets = utf8_buffer(texts)
    a, b = permutations(cfg.num_perm, cfg.seed)
    want = cfg.verify == "exact"
    with _chunksize():
        sigs, _, vals, off = _kernels().minhash_signatures(buf, offsets, cfg.ngram, cfg.char_ngrams, a, b,
                                                  0, 0, want)
    return sigs, ((vals, off) if want else None)


def shingle_sets(texts: Texts, cfg: MinHashConfig) -> ShingleSets:
    """Per document, its distinct shingles as sorted 32-bit ids (the high half of each 64-bit
    shingle hash): (values uint32, offsets int64 [n + 1]). The kernel the workers use, with no
    permutations: one code path builds every set that is compared."""
    buf, offsets = utf8_buffer(texts)
    none = np.zeros(0, dtype=np.uint64)
    with _chunksize():
        _, _, vals, off = _kernels().minhash_signatures(buf, offsets, cfg.ngram, cfg.char_ngrams, none,
                                               none, 0, 0, True)
    return vals, off


def jaccard_exact(a: str, b: str, cfg: MinHashConfig) -> float:
    """Exact Jaccard of the two documents' shingle sets (the shingles MinHash estimates on)."""
    vals, off = shingle_sets([a, b], cfg)
    return float(_kernels().jaccard_sorted(vals[off[0]:off[1]], vals[off[1]:off[2]]))


def _grow(arr: np.ndarray, rows: int, fill: int | None = None) -> np.ndarray:
    new = np.empty((rows,) + arr.shape[1:], dtype=arr.dtype) if fill is None else \
        np.full((rows,) + arr.shape[1:], fill, dtype=arr.dtype)
    new[: arr.shape[0]] = arr
    return new


class MinHashDeduper:
    """Streaming near-duplicate filter: call it on batches in order; it remembers kept documents.

    >>> dedupe = MinHashDeduper(MinHashConfig(threshold=0.8))
    >>> res = dedupe(texts, doc_ids)          # res.keep, res.match, res.similarity
    """

    _INITIAL_SLOTS = 1024
    _INITIAL_SET_VALUES = 1 << 16

    def __init__(self, cfg: MinHashConfig, sets_file: str | os.PathLike[str] | None = None) -> None:
        """``sets_file`` (``verify="exact"`` only): keep the kept documents' shingle sets in this
        file, memory-mapped (page cache the OS can evict, not heap); None keeps them in RAM."""
        self.cfg = cfg
        self._sets_file = Path(sets_file) if sets_file is not None and cfg.verify == "exact" else None
        self._bands, self._rows = cfg.banding()
        self._a, self._b = permutations(cfg.num_perm, cfg.seed)
        # J_est = equal / K >= threshold, as an integer count (no float rounding at the boundary)
        self._need = cfg.signature_need()
        self._exact = cfg.verify == "exact"
        cap = self._INITIAL_SLOTS
        self._n_kept = 0
        # exact verification never reads a kept signature: no columns (512 B per kept
        # document less at K = 128); its rows still count the capacity
        self._kept_sigs = np.empty((cap, 0 if self._exact else cfg.num_perm), dtype=np.uint32)
        self._kept_ids = np.empty(cap, dtype=np.int64)
        self._nexts = np.empty((cap, self._bands), dtype=np.int32)
        self._stamp = np.full(cap, -1, dtype=np.int32)
        self._stamp_base = 0
        self._tab_keys = np.zeros((self._bands, 2 * cap), dtype=np.uint64)
        self._tab_heads = np.full((self._bands, 2 * cap), -1, dtype=np.int32)
        self._kept_sets = self._set_store(self._INITIAL_SET_VALUES if self._exact else 0)
        self._kept_set_off = np.zeros(cap + 1 if self._exact else 1, dtype=np.int64)

    @property
    def docs_indexed(self) -> int:
        """Number of kept documents in the index."""
        return self._n_kept

    @property
    def nbytes(self) -> int:
        """Bytes of RAM held by the index (allocated capacity of tables, signatures, links, and
        the shingle sets unless they live in ``sets_file``)."""
        arrays = [self._kept_sigs, self._kept_ids, self._nexts, self._stamp, self._tab_keys,
                  self._tab_heads, self._kept_set_off]
        if self._sets_file is None:
            arrays.append(self._kept_sets)
        return int(sum(x.nbytes for x in arrays))

    @property
    def sets_file_bytes(self) -> int:
        """Bytes of kept shingle sets in ``sets_file`` (0 without one)."""
        return 0 if self._sets_file is None else int(self._kept_set_off[self._n_kept]) * 4

    def _set_store(self, size: int, old: np.ndarray | None = None) -> np.ndarray:
        """uint32 storage for kept shingle sets with room for ``size`` values, keeping ``old``'s."""
        if self._sets_file is None:
            new = np.empty(size, dtype=np.uint32)
            if old is not None:
                new[: old.shape[0]] = old
            return new
        if old is not None and isinstance(old, np.memmap):
            old.flush()
        mode = "r+b" if old is not None else "w+b"
        with open(self._sets_file, mode) as f:  # growing the file keeps what is written
            f.truncate(size * 4)
        return np.memmap(self._sets_file, dtype=np.uint32, mode="r+", shape=(size,))

    @property
    def bytes_per_doc(self) -> float:
        """``nbytes`` per indexed (kept) document."""
        return self.nbytes / max(1, self._n_kept)

    def _reserve(self, n: int, n_set_values: int) -> None:
        """Room for n more kept documents (worst case: all kept) before the sequential kernel."""
        need = self._n_kept + n
        cap = self._kept_sigs.shape[0]
        if need > cap:
            while cap < need:
                cap *= 2
            self._kept_sigs = _grow(self._kept_sigs, cap)
            self._kept_ids = _grow(self._kept_ids, cap)
            self._nexts = _grow(self._nexts, cap)
            self._stamp = _grow(self._stamp, cap, fill=-1)
            if self._exact:
                self._kept_set_off = _grow(self._kept_set_off, cap + 1)
        cells = self._tab_keys.shape[1]
        if 2 * need > cells:  # load factor <= 1/2: short probe sequences
            while cells < 2 * need:
                cells *= 2
            self._tab_keys, self._tab_heads = _kernels().rehash_tables(self._tab_keys, self._tab_heads, cells)
        if self._exact:
            used = int(self._kept_set_off[self._n_kept])
            size = self._kept_sets.shape[0]
            if used + n_set_values > size:
                while size < used + n_set_values:
                    size *= 2
                self._kept_sets = self._set_store(size, self._kept_sets)
        if self._stamp_base + n >= 2**31 - 1:
            self._stamp.fill(-1)
            self._stamp_base = 0

    def __call__(self, texts: Texts, doc_ids: np.ndarray) -> MinHashResult:
        """Deduplicate one batch, in input order, against everything kept so far."""
        n = len(texts)
        doc_ids = self._check_ids(doc_ids, n)
        buf, offsets = utf8_buffer(texts)
        cfg = self.cfg
        with _chunksize():
            sigs, keys, vals, off = _kernels().minhash_signatures(buf, offsets, cfg.ngram, cfg.char_ngrams,
                                                         self._a, self._b, self._bands,
                                                         self._rows, self._exact)
        return self._insert(sigs, keys, doc_ids, vals if self._exact else None,
                            off if self._exact else None)

    def add(self, sigs: np.ndarray, doc_ids: np.ndarray,
            sets: ShingleSets | None = None) -> MinHashResult:
        """Like ``__call__`` but from what :func:`signatures_and_sets` computed with this config
        (e.g. in worker processes): only the sequential index work runs here.
        ``verify="exact"`` also needs the batch's shingle ``sets``."""
        sigs = np.ascontiguousarray(sigs)
        n = sigs.shape[0]
        if sigs.dtype != np.uint32 or sigs.ndim != 2 or sigs.shape[1] != self.cfg.num_perm:
            raise ValueError(f"sigs must be uint32 [n, {self.cfg.num_perm}] from "
                             f"fastprep.minhash.signatures with the same config, got "
                             f"{sigs.dtype} {sigs.shape}")
        doc_ids = self._check_ids(doc_ids, n)
        vals = off = None
        if self._exact:
            if sets is None:
                raise ValueError("verify='exact' compares shingle sets: pass the batch's sets "
                                 "from signatures_and_sets to add(sigs, doc_ids, sets)")
            vals, off = check_sets(sets, n)
        return self._insert(sigs, _kernels().band_keys(sigs, self._bands, self._rows), doc_ids, vals, off)

    @staticmethod
    def _check_ids(doc_ids: np.ndarray, n: int) -> np.ndarray:
        doc_ids = np.asarray(doc_ids, dtype=np.int64)
        if doc_ids.shape != (n,):
            raise ValueError(f"doc_ids must be int64 [{n}] (one id per document), got shape "
                             f"{doc_ids.shape}")
        return doc_ids

    def _insert(self, sigs: np.ndarray, keys: np.ndarray, doc_ids: np.ndarray,
                sets: np.ndarray | None, set_off: np.ndarray | None) -> MinHashResult:
        n = sigs.shape[0]
        if sets is None or set_off is None:
            sets, set_off = np.empty(0, dtype=np.uint32), np.zeros(n + 1, dtype=np.int64)
        self._reserve(n, sets.shape[0])
        keep = np.empty(n, dtype=np.bool_)
        slot = np.empty(n, dtype=np.int64)
        sim = np.empty(n, dtype=np.float32)
        old = self._n_kept
        self._n_kept = _kernels().lsh_dedupe_batch(
            sigs, keys, self._need, float(self.cfg.threshold), self._exact, sets, set_off,
            self._n_kept, self._kept_sigs, self._tab_keys, self._tab_heads, self._nexts,
            self._stamp, self._stamp_base, self._kept_sets, self._kept_set_off, keep, slot, sim)
        self._stamp_base += n
        self._kept_ids[old:self._n_kept] = doc_ids[keep]
        match = np.where(keep, np.int64(-1), self._kept_ids[np.maximum(slot, 0)])
        return MinHashResult(keep=keep, match=match, similarity=sim)


def check_sets(sets: ShingleSets, n: int) -> ShingleSets:
    """``sets`` as contiguous (uint32 values, int64 offsets [n + 1]), or a ValueError saying what
    is wrong with them."""
    vals, off = np.ascontiguousarray(sets[0]), np.ascontiguousarray(sets[1])
    if (vals.dtype != np.uint32 or vals.ndim != 1 or off.dtype != np.int64
            or off.shape != (n + 1,) or off[0] != 0 or off[-1] != vals.shape[0]):
        raise ValueError(f"sets must be (uint32 values, int64 offsets [{n + 1}]) from "
                         f"signatures_and_sets, got {vals.dtype} {vals.shape} / {off.dtype} "
                         f"{off.shape}")
    return vals, off


def set_ranges(off: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Where the sets of documents ``idx`` lie in a values array with offsets ``off``: their
    (starts, lengths) there, and their offsets once concatenated in that order."""
    idx = np.asarray(idx, dtype=np.int64)
    starts = np.asarray(off[idx], dtype=np.int64)
    lens = np.asarray(off[idx + 1], dtype=np.int64) - starts
    new_off = np.zeros(idx.shape[0] + 1, dtype=np.int64)
    np.cumsum(lens, out=new_off[1:])
    return starts, lens, new_off


def take_sets(sets: ShingleSets, idx: np.ndarray) -> ShingleSets:
    """The shingle sets of documents ``idx`` (in that order), without a loop over documents."""
    vals, off = sets
    starts, lens, new_off = set_ranges(off, idx)
    pos = np.repeat(starts - new_off[:-1], lens) + np.arange(new_off[-1], dtype=np.int64)
    return vals[pos], new_off


def concat_sets(parts: Sequence[ShingleSets]) -> ShingleSets:
    """The shingle sets of consecutive batches as one (values, offsets) pair."""
    if not parts:
        return np.zeros(0, dtype=np.uint32), np.zeros(1, dtype=np.int64)
    vals = np.concatenate([p[0] for p in parts])
    offs = [np.zeros(1, dtype=np.int64)]
    base = 0
    for _, off in parts:
        offs.append(off[1:] + base)
        base += int(off[-1])
    return vals, np.concatenate(offs)
