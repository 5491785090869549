"""Near-duplicate removal without a global index: band-partitioned shuffle, pair verification and
a keep-first resolution that gives exactly the result of the streaming :class:`MinHashDeduper`.

Why: the streaming index (:mod:`fastprep.minhash`) processes documents in input order in one
process and holds ~0.8 KB per kept document (2 KB with ``verify="signature"``) plus, with
``verify="exact"``, the kept shingle sets. At hundreds of millions of documents that is hundreds of GB in one place. This module computes
the same decision from a shuffle that partitions the work over a cluster (Ray tasks, or any
executor that runs :func:`dedupe_partition` per partition).

Pipeline (``n`` documents, ``B`` bands, ``P`` partitions, doc ids int64 increasing in input
order, e.g. ``(file << 40) | line``):

1. **Produce** (per worker task, next to signature computation): :func:`partition_band_keys`
   writes, for every partition ``p``, one ``.npy`` file (structured rows ``band uint32,
   key uint64, doc int64``, 20 B per row, no pickle) holding the rows whose key falls in ``p``
   (a multiply-shift of the key's high 32 bits: the keys are fmix64 outputs, so uniform), sorted by
   (band, key, doc). Every partition gets a file, even an empty one, so a consumer can tell a
   missing producer from an empty one. Writes are atomic (temporary file + ``os.replace``).
   The producer also writes what verification reads (:func:`write_doc_store`: ids, signatures
   and/or shingle sets, read back by :class:`FileStore`). Memory: the task's own ``n B``
   rows, 20 B each, plus the sort permutation.
2. **Candidates** (per partition): :func:`candidate_pairs` merges the partition's files and, for
   every run of equal (band, key), emits every pair (earlier doc ``j``, later doc ``i``); a pair
   found through several bands is emitted once. All pairs of a run are needed (see below).
   Memory: ``n B / P`` rows (20 B) plus 8 B per emitted pair and the sort of the pair keys.
3. **Verify** (same task): :func:`verify_pairs` fetches the signatures or shingle sets of the
   documents in those pairs through a *fetch* callable (:data:`Fetch`) and keeps the pairs with
   similarity >= threshold: exact Jaccard ``sim >= threshold`` (``verify="exact"``) or
   ``equal values >= need = max(1, ceil(threshold * K - 1e-9))`` (``verify="signature"``), the
   same float and integer rules as the streaming kernel (``lsh_dedupe_batch``), with the same
   Jaccard function. Memory: the fetched documents (4 K B signature, 4 B per shingle).
4. **Resolve** (driver): :func:`resolve_removals` walks the verified pairs in doc id order: ``i``
   is removed iff some verified partner ``j < i`` is kept; its match is the most similar kept
   verified partner, ties the earliest. Only documents that occur in a verified pair are touched;
   everything else is kept. Memory: 8 B per verified pair end plus 8 B per distinct document in
   them; near duplicates are a small fraction of a corpus, so this is far below the index.

Why it is equivalent to the streaming keep-first. The streaming index compares document ``i``
with every *kept* earlier document that shares at least one (band, key) with it, verifies each
such candidate with a function of the two documents only, removes ``i`` iff one verifies, and
reports the verified candidate with the highest similarity (float64 ``sim > best`` or equal and
earlier slot; slots are numbered in keep order, i.e. in input order). Step 2 emits every pair
``j < i`` sharing a (band, key), a superset of those candidates that also contains pairs whose
``j`` is removed; step 3 applies the same verification, so the verified partners of ``i`` that
are kept are exactly the streaming ones once ``keep[j]`` is known for all ``j < i``. Step 4
decides documents in increasing id order, so when ``i`` is decided every ``keep[j]``, ``j < i``,
is final and (by induction over the ids) equal to the streaming decision; it applies the same
maximum and tie rule on the same float64 similarities (cast to float32 only for the output,
as :class:`MinHashResult` does). Doc ids must increase in input order; pairs are verified
once per partition that finds them and then merged, so neither the number of partitions nor how
the input is split between producers can change the result (the tests check both).

Cases that need care:

- *Exact duplicates*: identical signatures share every band; the pair is emitted once per
  partition and merged. A group of ``m`` copies gives ``m (m - 1) / 2`` pairs (all copies match
  the first; similarity 1.0).
- *Empty documents* (no shingle) have the all-``0xFFFFFFFF`` signature, so they collide with each
  other and with nothing else; they verify as similarity 1.0 in both modes (two empty sets are
  identical), so only the first empty document is kept, as in the streaming index.
- *Ties*: with small shingle sets equal similarities are common; the earliest kept partner wins,
  compared on the float64 similarity (two pairs whose float32 similarities are equal may still
  differ in float64, and then the larger one wins, as in the streaming kernel).
- *More verification than streaming*: pairs whose earlier document is itself removed are verified
  too (the shuffle cannot know yet); a pair sharing bands that land in several partitions is
  verified in each (up to ``min(shared bands, P)`` times). Verification is cheap next to the
  shuffle, and the result does not depend on it.

Worst case. A run of ``m`` documents with one (band, key) expands to ``m (m - 1) / 2`` pairs: one
boilerplate text repeated 1M times is 5e11 pairs. The streaming index avoids that because it only
compares with *kept* documents; a shuffle without sequential state needs the whole run (whether
the first member is kept depends on pairs in other buckets). :func:`candidate_pairs` therefore
refuses a run longer than ``max_bucket`` (default 20,000: 2e8 pairs, 1.6 GB of pair keys) or a
partition with more than ``max_pairs`` pairs, with an error that names the bucket and the remedy
(remove exact duplicates first, which is what such buckets almost always are; more rows per band;
more partitions for ``max_pairs``; or the streaming index), instead of exhausting memory.
"""

from __future__ import annotations

import numbers
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..io import AtomicFile, read_ranges
from ..kernels import minhash as minhash_kernels
from ..kernels import shuffle as kernels
from .minhash import MinHashConfig, MinHashResult, ShingleSets, check_sets, set_ranges, take_sets

__all__ = [
    "ROW_DTYPE",
    "ArrayStore",
    "BucketTooLargeError",
    "Fetch",
    "FileStore",
    "Removals",
    "VerifiedPairs",
    "candidate_pairs",
    "dedupe_partition",
    "local_shuffle_dedupe",
    "merge_verified",
    "partition_band_keys",
    "partition_files",
    "partition_of",
    "partition_signatures",
    "ray_shuffle_dedupe",
    "resolve_keep_first",
    "resolve_removals",
    "verify_pairs",
    "write_doc_store",
]

# one shuffled row: (band, key, doc id); packed, 20 bytes; np.save/np.load without pickle
ROW_DTYPE = np.dtype([("band", "<u4"), ("key", "<u8"), ("doc", "<i8")])

DEFAULT_MAX_BUCKET = 20_000         # 2e8 pairs in one run
DEFAULT_MAX_PAIRS = 200_000_000     # per partition: 1.6 GB of pair keys, ~5 GB peak

# fetch(doc_ids sorted unique int64 [m]) -> (sigs uint32 [m, K] or None, sets or None), same order
Fetch = Callable[[np.ndarray], tuple[np.ndarray | None, ShingleSets | None]]

_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


class BucketTooLargeError(ValueError):
    """A (band, key) bucket or a partition would expand to too many candidate pairs."""


@dataclass(frozen=True)
class VerifiedPairs:
    """Verified pairs (later doc ``i``, earlier doc ``j`` < ``i``), sorted by (i, j), unique, with
    their float64 similarity (exact Jaccard or fraction of equal signature values).
    ``candidates`` counts the candidate pairs they were verified from (diagnostics)."""

    i: np.ndarray    # int64
    j: np.ndarray    # int64
    sim: np.ndarray  # float64
    candidates: int = 0

    def __len__(self) -> int:
        return int(self.i.shape[0])


@dataclass(frozen=True)
class Removals:
    """The keep-first decision in compact form: the removed documents (sorted by id), the kept
    document each one matched and the similarity; every other document is kept."""

    doc_id: np.ndarray      # int64, sorted
    match: np.ndarray       # int64: a kept doc id
    similarity: np.ndarray  # float32
    candidates: int = 0     # candidate pairs verified (over all partitions, before merging)
    verified: int = 0       # distinct verified pairs

    def result(self, doc_ids: np.ndarray) -> MinHashResult:
        """Per document of ``doc_ids`` (any order, e.g. one batch): keep, match, similarity,
        exactly as :meth:`MinHashDeduper.add` reports them."""
        doc_ids = np.asarray(doc_ids, dtype=np.int64)
        idx = np.searchsorted(self.doc_id, doc_ids)
        hit = idx < self.doc_id.shape[0]
        hit[hit] = self.doc_id[idx[hit]] == doc_ids[hit]
        keep = ~hit
        match = np.full(doc_ids.shape[0], -1, dtype=np.int64)
        sim = np.zeros(doc_ids.shape[0], dtype=np.float32)
        match[hit] = self.match[idx[hit]]
        sim[hit] = self.similarity[idx[hit]]
        return MinHashResult(keep=keep, match=match, similarity=sim)


# --------------------------------------------------------------------------------------------
# files


def _check_name(name: str) -> str:
    if not _NAME.match(name):
        raise ValueError(f"producer name must match {_NAME.pattern} (it names files), got {name!r}")
    return name


def _save_npy(path: Path, arr: np.ndarray) -> None:
    """np.save to ``path`` atomically: a reader sees the old file, the new one, or none."""
    with AtomicFile(path) as f:
        np.save(f.file, arr, allow_pickle=False)


def _partition_path(out_dir: Path, name: str, p: int, partitions: int) -> Path:
    return out_dir / f"{name}.part{p:05d}-of{partitions:05d}.npy"


def partition_of(keys: np.ndarray, partitions: int) -> np.ndarray:
    """Partition of each uint64 band key: ``((key >> 32) * P) >> 32``, uniform for hash keys."""
    keys = np.asarray(keys, dtype=np.uint64)
    return ((keys >> np.uint64(32)) * np.uint64(partitions)) >> np.uint64(32)


def partition_band_keys(keys: np.ndarray, doc_ids: np.ndarray, partitions: int,
                        out_dir: str | os.PathLike[str], name: str) -> list[Path]:
    """Producer side of the shuffle: write this task's (band, key, doc) rows, one file per
    partition (``{name}.partPPPPP-ofPPPPP.npy``, sorted by band, key, doc; empty partitions get
    an empty file). ``keys`` are uint64 [n, bands] from :func:`band_keys` (or
    :func:`minhash_signatures`), ``doc_ids`` int64 [n], unique across all producers. Returns
    the paths, indexed by partition."""
    keys = np.asarray(keys)
    doc_ids = np.asarray(doc_ids, dtype=np.int64)
    if keys.dtype != np.uint64 or keys.ndim != 2 or keys.shape[0] != doc_ids.shape[0] \
            or doc_ids.ndim != 1:
        raise ValueError(f"keys must be uint64 [n, bands] and doc_ids int64 [n], got {keys.dtype} "
                         f"{keys.shape} / {doc_ids.shape}")
    if not isinstance(partitions, numbers.Integral) or not 1 <= partitions < 2**31:
        raise ValueError(f"partitions must be an integer in [1, 2**31), got {partitions!r}")
    _check_name(name)
    partitions = int(partitions)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n, bands = keys.shape
    rows = np.empty(n * bands, dtype=ROW_DTYPE)
    rows["band"] = np.tile(np.arange(bands, dtype=np.uint32), n)
    rows["key"] = keys.reshape(-1)
    rows["doc"] = np.repeat(doc_ids, bands)
    part = partition_of(rows["key"], partitions)
    order = np.lexsort((rows["doc"], rows["key"], rows["band"], part))
    rows = rows[order]
    bounds = np.searchsorted(part[order], np.arange(partitions + 1, dtype=np.uint64))
    paths = []
    for p in range(partitions):
        path = _partition_path(out, name, p, partitions)
        _save_npy(path, rows[bounds[p]:bounds[p + 1]])
        paths.append(path)
    return paths


def partition_signatures(sigs: np.ndarray, doc_ids: np.ndarray, cfg: MinHashConfig,
                         partitions: int, out_dir: str | os.PathLike[str], name: str) -> list[Path]:
    """:func:`partition_band_keys` of the band keys of ``sigs`` under ``cfg``'s banding."""
    bands, rows = cfg.banding()
    sigs = np.ascontiguousarray(sigs)
    if sigs.dtype != np.uint32 or sigs.ndim != 2 or sigs.shape[1] != cfg.num_perm:
        raise ValueError(f"sigs must be uint32 [n, {cfg.num_perm}], got {sigs.dtype} {sigs.shape}")
    return partition_band_keys(minhash_kernels.band_keys(sigs, bands, rows), doc_ids, partitions, out_dir, name)


def partition_files(out_dir: str | os.PathLike[str], partitions: int) -> list[list[Path]]:
    """The producers' files of every partition (sorted by name), indexed by partition."""
    out = Path(out_dir)
    return [sorted(out.glob(f"*.part{p:05d}-of{partitions:05d}.npy")) for p in range(partitions)]


def _load_rows(path: str | os.PathLike[str]) -> np.ndarray:
    rows = np.load(path, allow_pickle=False)
    if rows.dtype != ROW_DTYPE or rows.ndim != 1:
        raise ValueError(f"{path}: not a band-key partition file (dtype {rows.dtype}, "
                         f"shape {rows.shape}; expected {ROW_DTYPE} [rows])")
    return rows


# --------------------------------------------------------------------------------------------
# candidate pairs


def _unique(a: np.ndarray) -> np.ndarray:
    """Sorted unique values: ``np.sort`` + a mask (numpy 2.4's ``np.unique`` was ~70x slower on
    millions of int64, ``benchmarks/README.md``)."""
    s = np.sort(a)
    if s.shape[0] < 2:
        return s
    first = np.empty(s.shape[0], dtype=np.bool_)
    first[0] = True
    np.not_equal(s[1:], s[:-1], out=first[1:])
    return s[first]


def _unique_inverse(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sorted unique values, index of each element of ``a`` in them)."""
    order = np.argsort(a, kind="stable")
    s = a[order]
    first = np.empty(s.shape[0], dtype=np.bool_)
    if s.shape[0]:
        first[0] = True
        np.not_equal(s[1:], s[:-1], out=first[1:])
    inv = np.empty(a.shape[0], dtype=np.int64)
    inv[order] = np.cumsum(first) - 1
    return s[first], inv


def _runs(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Starts and lengths of the runs of equal (band, key) in sorted rows."""
    n = rows.shape[0]
    if n == 0:
        z = np.zeros(0, dtype=np.int64)
        return z, z
    brk = np.empty(n, dtype=np.bool_)
    brk[0] = True
    brk[1:] = (rows["band"][1:] != rows["band"][:-1]) | (rows["key"][1:] != rows["key"][:-1])
    starts = np.flatnonzero(brk)
    lens = np.diff(np.append(starts, n))
    return starts, lens


def candidate_pairs(files: Sequence[str | os.PathLike[str]], *,
                    max_bucket: int = DEFAULT_MAX_BUCKET,
                    max_pairs: int | None = DEFAULT_MAX_PAIRS) -> tuple[np.ndarray, np.ndarray]:
    """All candidate pairs of one partition: ``(i_ids, j_ids)``, int64, ``j < i``, every pair of
    documents that share a (band, key) in these files, once (deduplicated over bands), sorted by
    (i, j).

    The expansion is quadratic in the bucket size: a run longer than ``max_bucket`` or more than
    ``max_pairs`` pairs in the partition (None: no limit) raises :class:`BucketTooLargeError`
    before anything is allocated. A doc id that appears twice in one (band, key) run (two
    producers given the same id) raises ``ValueError``."""
    parts = [_load_rows(f) for f in files]
    rows = np.concatenate(parts) if parts else np.zeros(0, dtype=ROW_DTYPE)
    if len(parts) > 1:  # each file is sorted; one sort of the concatenation merges them
        rows = rows[np.lexsort((rows["doc"], rows["key"], rows["band"]))]
    run_starts, run_lens = _runs(rows)
    doc = rows["doc"]
    same = np.zeros(rows.shape[0], dtype=np.bool_)
    if rows.shape[0] > 1:
        same[1:] = (doc[1:] == doc[:-1]) & (rows["band"][1:] == rows["band"][:-1]) \
            & (rows["key"][1:] == rows["key"][:-1])
    if same.any():
        k = int(np.flatnonzero(same)[0])
        raise ValueError(f"doc id {int(doc[k])} occurs twice in band {int(rows['band'][k])}: doc "
                         "ids must be unique across producers (e.g. (file << 40) | line)")
    multi = run_lens >= 2
    starts, lens = run_starts[multi], run_lens[multi]
    npairs = lens * (lens - 1) // 2
    total = int(npairs.sum())
    if lens.shape[0] and int(lens.max()) > max_bucket:
        r = int(np.argmax(lens))
        m = int(lens[r])
        s = int(starts[r])
        raise BucketTooLargeError(
            f"LSH bucket of {m:,} documents (band {int(rows['band'][s])}, key "
            f"{int(rows['key'][s]):#018x}, first doc id {int(doc[s])}) exceeds "
            f"max_bucket={max_bucket:,}: exact keep-first needs all {m * (m - 1) // 2:,} pairs of "
            f"a bucket (~{_gb(m * (m - 1) // 2)} GB). Such buckets are almost always one text "
            "repeated (or a shared template): remove exact duplicates first; or use more rows per "
            "band (--band-rows) so boilerplate collides less; or raise max_bucket if the memory is "
            "there; or use the streaming MinHashDeduper, which compares with kept documents only.")
    if max_pairs is not None and total > max_pairs:
        raise BucketTooLargeError(
            f"partition expands to {total:,} candidate pairs before the pairs repeated over "
            f"bands are merged (~{_gb(total)} GB) in "
            f"{lens.shape[0]:,} buckets (largest {int(lens.max()):,} documents), over "
            f"max_pairs={max_pairs:,}: use more partitions, remove exact duplicates first, or "
            "raise max_pairs if the memory is there")
    if total == 0:
        e = np.zeros(0, dtype=np.int64)
        return e, e
    # dense ranks of the documents in pairs, so a pair is one int64 code: one np.sort of the
    # codes instead of a lexsort of two id arrays (~25x slower); ranks
    # keep the id order, and each run is ascending
    in_pair = np.repeat(multi, run_lens)
    uniq, rank = _unique_inverse(doc[in_pair])
    full_rank = np.zeros(rows.shape[0], dtype=np.int64)
    full_rank[in_pair] = rank
    universe = int(uniq.shape[0])
    pair_off = np.zeros(lens.shape[0], dtype=np.int64)
    np.cumsum(npairs[:-1], out=pair_off[1:])
    codes = np.empty(total, dtype=np.int64)
    kernels.emit_pair_codes(full_rank, starts.astype(np.int64), lens.astype(np.int64), pair_off,
                     universe, codes)
    codes = _unique(codes)
    i_ids, j_ids = uniq[codes // universe], uniq[codes % universe]
    return i_ids, j_ids


def _gb(pairs: int) -> str:
    return f"{pairs * 24 / 1e9:,.1f}"  # 8 B code + sort scratch + 16 B of ids per pair


# --------------------------------------------------------------------------------------------
# document stores (what verification fetches)


def _check_store(doc_ids: np.ndarray, sigs: np.ndarray | None,
                 sets: ShingleSets | None) -> tuple[np.ndarray, np.ndarray | None,
                                                    ShingleSets | None]:
    doc_ids = np.asarray(doc_ids, dtype=np.int64)
    if doc_ids.ndim != 1 or (doc_ids.shape[0] > 1 and not (np.diff(doc_ids) > 0).all()):
        raise ValueError("doc_ids must be a strictly increasing int64 array (input order)")
    n = doc_ids.shape[0]
    if sigs is not None:
        sigs = np.ascontiguousarray(sigs)
        if sigs.dtype != np.uint32 or sigs.ndim != 2 or sigs.shape[0] != n:
            raise ValueError(f"sigs must be uint32 [{n}, K], got {sigs.dtype} {sigs.shape}")
    if sets is not None:
        sets = check_sets(sets, n)
    return doc_ids, sigs, sets


def _lookup(store_ids: np.ndarray, doc_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(positions in doc_ids found in store_ids, their indexes in store_ids)."""
    idx = np.searchsorted(store_ids, doc_ids)
    hit = idx < store_ids.shape[0]
    hit[hit] = store_ids[idx[hit]] == doc_ids[hit]
    where = np.flatnonzero(hit)
    return where, idx[where]


@dataclass(frozen=True, eq=False)
class ArrayStore:
    """In-memory :data:`Fetch`: documents ``doc_ids`` (strictly increasing) with their signatures
    and/or shingle sets (only what the verify mode reads is needed). Picklable, so it can be
    shipped to Ray tasks (put it in the object store once; it is then shared, not copied per
    task on one node)."""

    doc_ids: np.ndarray
    sigs: np.ndarray | None = None
    sets: ShingleSets | None = None

    def __post_init__(self) -> None:
        ids, sigs, sets = _check_store(self.doc_ids, self.sigs, self.sets)
        object.__setattr__(self, "doc_ids", ids)
        object.__setattr__(self, "sigs", sigs)
        object.__setattr__(self, "sets", sets)

    def __call__(self, doc_ids: np.ndarray) -> tuple[np.ndarray | None, ShingleSets | None]:
        doc_ids = np.asarray(doc_ids, dtype=np.int64)
        where, idx = _lookup(self.doc_ids, doc_ids)
        if where.shape[0] != doc_ids.shape[0]:
            missing = np.setdiff1d(doc_ids, doc_ids[where])[:5].tolist()
            raise KeyError(f"documents not in this store: {missing}")
        sigs = None if self.sigs is None else self.sigs[idx]
        sets = None if self.sets is None else take_sets(self.sets, idx)
        return sigs, sets


_STORE_PARTS = ("ids", "sigs", "setv", "seto")


def write_doc_store(out_dir: str | os.PathLike[str], name: str, doc_ids: np.ndarray,
                    sigs: np.ndarray | None = None, sets: ShingleSets | None = None) -> list[Path]:
    """Producer side of verification: write one task's doc ids (strictly increasing), signatures
    and/or shingle sets as ``{name}.store-{ids,sigs,setv,seto}.npy`` (atomic, no pickle) for
    :class:`FileStore`. The ids file is written last: it is what marks the store complete."""
    ids, sigs, sets = _check_store(doc_ids, sigs, sets)
    _check_name(name)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    arrays = {"sigs": sigs, "setv": None if sets is None else sets[0],
              "seto": None if sets is None else sets[1], "ids": ids}
    for part in ("sigs", "setv", "seto", "ids"):
        path = out / f"{name}.store-{part}.npy"
        if arrays[part] is not None:
            _save_npy(path, arrays[part])
            paths.append(path)
        elif path.exists():  # a stale file of an earlier run must not be read with new ids
            path.unlink()
    return paths


class _NpyFile:
    """A ``.npy`` array read with positioned reads (:func:`fastprep.ranges.read_ranges`), not
    memory-mapped: what a fetch reads stays in the page cache instead of this process's RSS, and
    no file stays open between fetches (a store per task: thousands of files)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            self.shape, fortran, self.dtype = read_header(f)
            self.offset = f.tell()
        if fortran or self.dtype.hasobject:
            raise ValueError(f"{path}: not a C-ordered plain array")

    def ranges(self, starts: np.ndarray, lens: np.ndarray) -> np.ndarray:
        """Elements ``[start, start + len)`` of the flattened array, concatenated."""
        out = np.empty(int(np.sum(lens)), dtype=self.dtype)
        with open(self.path, "rb") as f:
            return read_ranges(f, starts, lens, out, self.offset)

    def rows(self, idx: np.ndarray) -> np.ndarray:
        """Rows ``idx`` of a 2-D array."""
        width = int(self.shape[1])
        flat = self.ranges(np.asarray(idx, dtype=np.int64) * width, np.full(len(idx), width, np.int64))
        return flat.reshape(len(idx), width)


class FileStore:
    """:data:`Fetch` over the stores :func:`write_doc_store` wrote into ``out_dir`` (a folder all
    tasks can read). A fetch reads only the documents asked for: ids and set offsets (8 B per
    document each) are memory-mapped, signatures and shingle sets (the bulk: ~0.5-2 KB per
    document) are read with positioned reads, so the verifying process's RSS does not grow with
    the store (measured in ``prepare --near-method shuffle``: see ``benchmarks/README.md``).
    Picklable (only the folder travels); it opens the files on first use in each process."""

    def __init__(self, out_dir: str | os.PathLike[str]) -> None:
        self.out_dir = str(out_dir)
        self._stores: list[dict[str, Any]] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"out_dir": self.out_dir, "_stores": None}

    def _open(self) -> list[dict[str, Any]]:
        if self._stores is None:
            stores = []
            for ids_path in sorted(Path(self.out_dir).glob("*.store-ids.npy")):
                base = str(ids_path)[: -len("ids.npy")]
                st: dict[str, Any] = {}
                for part in _STORE_PARTS:
                    p = Path(base + part + ".npy")
                    if not p.exists():
                        st[part] = None
                    elif part in ("sigs", "setv"):
                        st[part] = _NpyFile(p)
                    else:
                        st[part] = np.load(p, mmap_mode="r", allow_pickle=False)
                ids = st["ids"]
                if ids is not None and ids.shape[0]:
                    st["lo"], st["hi"] = np.array(ids[0]), np.array(ids[-1])
                    stores.append(st)
            self._stores = stores
        return self._stores

    def __call__(self, doc_ids: np.ndarray) -> tuple[np.ndarray | None, ShingleSets | None]:
        doc_ids = np.asarray(doc_ids, dtype=np.int64)
        m = doc_ids.shape[0]
        found = np.zeros(m, dtype=np.int64)
        sig_parts: list[tuple[np.ndarray, np.ndarray]] = []
        set_parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        width = None
        lo, hi = (int(doc_ids.min()), int(doc_ids.max())) if m else (0, -1)
        for st in self._open():
            ids = st["ids"]
            assert ids is not None
            if m == 0 or hi < st["lo"] or lo > st["hi"]:  # this store holds another id range
                continue
            where, idx = _lookup(ids, doc_ids)
            if not where.shape[0]:
                continue
            found[where] += 1
            if st["sigs"] is not None:
                sig_parts.append((where, st["sigs"].rows(idx)))
                width = st["sigs"].shape[1]
            if st["setv"] is not None and st["seto"] is not None:
                starts, lens, off = set_ranges(st["seto"], idx)
                set_parts.append((where, st["setv"].ranges(starts, lens), off))
        if (found != 1).any():
            bad = doc_ids[found != 1][:5].tolist()
            raise KeyError(f"documents missing from (or in several of) the stores in "
                           f"{self.out_dir}: {bad}")
        sigs = None
        if sig_parts:
            sigs = np.empty((m, width), dtype=np.uint32)
            got = 0
            for where, s in sig_parts:
                sigs[where] = s
                got += where.shape[0]
            if got != m:
                raise KeyError(f"some stores in {self.out_dir} have no signatures")
        sets = None
        if set_parts:
            lens = np.zeros(m, dtype=np.int64)
            got = 0
            for where, _, off in set_parts:
                lens[where] = np.diff(off)
                got += where.shape[0]
            if got != m:
                raise KeyError(f"some stores in {self.out_dir} have no shingle sets")
            out_off = np.zeros(m + 1, dtype=np.int64)
            np.cumsum(lens, out=out_off[1:])
            vals = np.empty(out_off[-1], dtype=np.uint32)
            for where, v, off in set_parts:
                ln = np.diff(off)
                pos = np.repeat(out_off[where] - off[:-1], ln) + np.arange(off[-1], dtype=np.int64)
                vals[pos] = v
            sets = (vals, out_off)
        return sigs, sets


# --------------------------------------------------------------------------------------------
# verification


def verify_pairs(i_ids: np.ndarray, j_ids: np.ndarray, fetch: Fetch, cfg: MinHashConfig,
                 candidates: int | None = None) -> VerifiedPairs:
    """Keep the candidate pairs whose similarity reaches ``cfg.threshold`` (the streaming
    index's rule for ``cfg.verify``). ``fetch`` is called once, with the sorted unique ids of the
    documents in the pairs; it must return their signatures (``verify="signature"``) or shingle
    sets (``verify="exact"``) in that order. Pairs come back sorted by (i, j) if they went in so."""
    i_ids = np.asarray(i_ids, dtype=np.int64)
    j_ids = np.asarray(j_ids, dtype=np.int64)
    if i_ids.shape != j_ids.shape or i_ids.ndim != 1 or not (j_ids < i_ids).all():
        raise ValueError("pairs must be two int64 arrays of equal length with j < i")
    exact = cfg.verify == "exact"
    n_cand = i_ids.shape[0] if candidates is None else candidates
    if i_ids.shape[0] == 0:
        return VerifiedPairs(i_ids, j_ids, np.zeros(0, dtype=np.float64), n_cand)
    u = _unique(np.concatenate([i_ids, j_ids]))
    sigs, sets = fetch(u)
    if exact:
        if sets is None:
            raise ValueError("verify='exact' compares shingle sets: fetch must return them")
        vals, off = check_sets(sets, u.shape[0])
        sigs_arr = np.zeros((1, 1), dtype=np.uint32)
    else:
        if sigs is None:
            raise ValueError("verify='signature' compares signatures: fetch must return them")
        sigs_arr = np.ascontiguousarray(sigs)
        if sigs_arr.dtype != np.uint32 or sigs_arr.shape != (u.shape[0], cfg.num_perm):
            raise ValueError(f"fetch returned sigs {sigs_arr.dtype} {sigs_arr.shape}, expected "
                             f"uint32 [{u.shape[0]}, {cfg.num_perm}]")
        vals, off = np.zeros(0, dtype=np.uint32), np.zeros(1, dtype=np.int64)
    a = np.searchsorted(u, i_ids)
    b = np.searchsorted(u, j_ids)
    sim = np.empty(i_ids.shape[0], dtype=np.float64)
    ok = np.empty(i_ids.shape[0], dtype=np.bool_)
    kernels.verify_pairs(a, b, exact, float(cfg.threshold), cfg.signature_need(), sigs_arr, vals,
                         off, sim, ok)
    return VerifiedPairs(i_ids[ok], j_ids[ok], sim[ok], n_cand)


def dedupe_partition(files: Sequence[str | os.PathLike[str]], fetch: Fetch, cfg: MinHashConfig, *,
                     max_bucket: int = DEFAULT_MAX_BUCKET,
                     max_pairs: int | None = DEFAULT_MAX_PAIRS) -> VerifiedPairs:
    """The per-partition task: :func:`candidate_pairs` then :func:`verify_pairs`."""
    i_ids, j_ids = candidate_pairs(files, max_bucket=max_bucket, max_pairs=max_pairs)
    return verify_pairs(i_ids, j_ids, fetch, cfg)


def merge_verified(parts: Sequence[VerifiedPairs]) -> VerifiedPairs:
    """Verified pairs of all partitions as one set: a pair found in several partitions (its
    shared bands landed in different ones) is kept once; its similarity is the same in each."""
    cand = sum(p.candidates for p in parts)
    if not parts:
        e = np.zeros(0, dtype=np.int64)
        return VerifiedPairs(e, e, np.zeros(0, dtype=np.float64), 0)
    i = np.concatenate([p.i for p in parts])
    j = np.concatenate([p.j for p in parts])
    sim = np.concatenate([p.sim for p in parts])
    order = np.lexsort((j, i))
    i, j, sim = i[order], j[order], sim[order]
    first = np.ones(i.shape[0], dtype=np.bool_)
    first[1:] = (i[1:] != i[:-1]) | (j[1:] != j[:-1])
    return VerifiedPairs(i[first], j[first], sim[first], cand)


# --------------------------------------------------------------------------------------------
# keep-first resolution


def resolve_removals(verified_i: np.ndarray, verified_j: np.ndarray,
                     sims: np.ndarray) -> Removals:
    """The streaming keep-first decision over the verified-pair graph (pairs ``j < i``, any
    order, duplicates allowed if their similarities agree): documents in id order; ``i`` is
    removed iff a verified partner ``j < i`` is kept; its match is the kept partner with the
    highest similarity, ties the smallest id. Touches only the documents in pairs."""
    vi = np.asarray(verified_i, dtype=np.int64)
    vj = np.asarray(verified_j, dtype=np.int64)
    sim = np.asarray(sims, dtype=np.float64)
    if not (vi.shape == vj.shape == sim.shape) or vi.ndim != 1 or not (vj < vi).all():
        raise ValueError("verified pairs must be three arrays of equal length with j < i")
    if vi.shape[0] == 0:
        e = np.zeros(0, dtype=np.int64)
        return Removals(e, e, np.zeros(0, dtype=np.float32))
    u, inv = _unique_inverse(np.concatenate([vi, vj]))
    ri, rj = inv[: vi.shape[0]], inv[vi.shape[0]:]
    order = np.argsort(ri * u.shape[0] + rj)  # by (ri, rj); equal codes are equal pairs
    keep = np.ones(u.shape[0], dtype=np.bool_)
    best_j = np.full(u.shape[0], -1, dtype=np.int64)
    best_sim = np.zeros(u.shape[0], dtype=np.float64)
    kernels.resolve_pairs(ri[order], rj[order], sim[order], keep, best_j, best_sim)
    gone = ~keep
    return Removals(doc_id=u[gone], match=u[best_j[gone]],
                    similarity=best_sim[gone].astype(np.float32), verified=int(vi.shape[0]))


def resolve_keep_first(doc_ids_in_order: np.ndarray, verified_i: np.ndarray,
                       verified_j: np.ndarray, sims: np.ndarray) -> MinHashResult:
    """:func:`resolve_removals` as a per-document result for ``doc_ids_in_order`` (strictly
    increasing, containing every id of the pairs): what :class:`MinHashDeduper` returns for the
    same documents fed in that order."""
    ids = np.asarray(doc_ids_in_order, dtype=np.int64)
    if ids.ndim != 1 or (ids.shape[0] > 1 and not (np.diff(ids) > 0).all()):
        raise ValueError("doc_ids_in_order must be strictly increasing: keep-first compares doc "
                         "ids as input positions")
    removals = resolve_removals(verified_i, verified_j, sims)
    for name, arr in (("verified_i", verified_i), ("verified_j", verified_j)):
        arr = np.asarray(arr, dtype=np.int64)
        where, _ = _lookup(ids, arr)
        if where.shape[0] != arr.shape[0]:
            raise ValueError(f"{name} has doc ids that are not in doc_ids_in_order")
    return removals.result(ids)


# --------------------------------------------------------------------------------------------
# drivers


def _check_partitions(files_by_partition: Sequence[Sequence[str | os.PathLike[str]]]
                      ) -> list[list[str]]:
    if isinstance(files_by_partition, (str, os.PathLike)):
        raise TypeError("files_by_partition is a list (one per partition) of lists of files; "
                        "see partition_files(out_dir, partitions)")
    return [[str(f) for f in files] for files in files_by_partition]


def local_shuffle_dedupe(files_by_partition: Sequence[Sequence[str | os.PathLike[str]]],
                         fetch: Fetch, cfg: MinHashConfig, *,
                         max_bucket: int = DEFAULT_MAX_BUCKET,
                         max_pairs: int | None = DEFAULT_MAX_PAIRS) -> Removals:
    """The whole shuffle dedupe in this process, partition after partition (the reference path
    for :func:`ray_shuffle_dedupe`): per partition candidates + verification, then the merge and
    the keep-first resolution."""
    parts = [dedupe_partition(files, fetch, cfg, max_bucket=max_bucket, max_pairs=max_pairs)
             for files in _check_partitions(files_by_partition)]
    return _finish(parts)


def _finish(parts: Sequence[VerifiedPairs]) -> Removals:
    merged = merge_verified(parts)
    r = resolve_removals(merged.i, merged.j, merged.sim)
    return Removals(r.doc_id, r.match, r.similarity, candidates=merged.candidates,
                    verified=len(merged))


def _ray_partition(files: list[str], fetch: Fetch, cfg: MinHashConfig, max_bucket: int,
                   max_pairs: int | None) -> VerifiedPairs:
    return dedupe_partition(files, fetch, cfg, max_bucket=max_bucket, max_pairs=max_pairs)


def ray_shuffle_dedupe(files_by_partition: Sequence[Sequence[str | os.PathLike[str]]],
                       fetch: Fetch, cfg: MinHashConfig, *,
                       max_bucket: int = DEFAULT_MAX_BUCKET,
                       max_pairs: int | None = DEFAULT_MAX_PAIRS,
                       num_cpus: float = 1, max_retries: int = 2,
                       max_in_flight: int | None = None) -> Removals:
    """:func:`local_shuffle_dedupe` with one Ray task per partition (candidates + verification);
    the driver gathers the verified pairs (small: near duplicates only) and resolves them.

    The partition files and whatever ``fetch`` reads must be visible to every node (a shared
    file system; :class:`FileStore` ships only its folder name). ``fetch`` goes into the object
    store once. ``max_in_flight`` bounds submitted-but-unfinished tasks (default: all). Connects
    to a running Ray (``ray.init`` first to choose the cluster) or starts a local one. A task
    error (e.g. :class:`BucketTooLargeError`) is raised here as Ray's ``RayTaskError``, which is
    also an instance of the original exception type and carries its message."""
    import ray

    files = _check_partitions(files_by_partition)
    task = ray.remote(num_cpus=num_cpus, max_retries=max_retries)(_ray_partition)
    fetch_ref = ray.put(fetch)
    limit = len(files) if max_in_flight is None else max(1, int(max_in_flight))
    results: list[VerifiedPairs | None] = [None] * len(files)
    pending: dict[Any, int] = {}
    nxt = 0
    try:
        while nxt < len(files) or pending:
            while nxt < len(files) and len(pending) < limit:
                pending[task.remote(files[nxt], fetch_ref, cfg, max_bucket, max_pairs)] = nxt
                nxt += 1
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                results[pending.pop(ref)] = ray.get(ref)
    finally:
        for ref in pending:
            ray.cancel(ref)
    return _finish([r for r in results if r is not None])
