"""Packing: variable-length token sequences into fixed-length rows of ``L`` tokens.

Two steps, so that the plan (O(documents) memory) is made once and rows are then materialised in
blocks straight from a memory-mapped token file:

1. :func:`plan` looks only at document lengths and decides, for every *piece* (a whole document or
   a chunk of one), its row, its offset in the row and its segment id.
2. :func:`fill_rows` copies the pieces of rows ``[row_lo, row_hi)`` into padded ``[n, L]`` arrays.

Modes (``--pack``):

- ``bfd`` (default): best-fit decreasing over windows of ``--pack-window`` consecutive documents:
  pieces longest first, each into the open row with the least room that still holds it. A document
  of at most ``L`` tokens is never split. A segment tree over remaining capacities makes each
  placement O(log L) (TRL's ``pack_dataset`` has the same idea but windows of 1,000 examples; the
  window size here only bounds what may share a row, not memory).
- ``concat``: Megatron/nanoGPT style: one stream cut every ``L`` tokens; no padding except in the
  last row, but documents are cut at row boundaries.
- ``pad``: one piece per row: the honest no-packing baseline.

Documents longer than ``L`` (``--long-docs``, ``bfd`` and ``pad``): ``split`` into ``L``-token
chunks (each a row of its own) plus a remainder that is packed like any document, or ``truncate``
to the first ``L`` tokens. Inside a row, pieces are in (document, start) order, segments 1..k,
padding only at the end. Rows are then shuffled with ``--seed`` so that a training run does not see
all the long documents first.

Cost: ``plan`` is O(pieces x log L) and holds six int64 per piece (about one piece per document;
``plan`` peaks at about twice that); ``fill_rows`` writes every output byte once. What it costs
on this project's machine, against TRL's ``pack_dataset`` and the memory-bandwidth floor, is in
``benchmarks/README.md`` ("Packing", from ``benchmarks/bench_pack.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from ..flags import option


def _kernels():  # type: ignore[no-untyped-def]
    """The numba kernels, imported on first use: a worker process that only unpickles a
    PackConfig must not pay numba's import."""
    from ..kernels import pack

    return pack

PackMode = Literal["bfd", "concat", "pad"]
LongPolicy = Literal["split", "truncate"]
_MODES = ("bfd", "concat", "pad")
_POLICIES = ("split", "truncate")


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


@dataclass(frozen=True)
class PackConfig:
    """How documents become rows; every field maps to a ``fastprep prepare`` flag."""

    seq_len: int = option(2048, "row length L in tokens")
    mode: PackMode = option(
        "bfd", "bfd: best-fit decreasing (documents never split unless longer than L); concat: "
        "concatenate and cut (pre-training); pad: one document per row (the baseline)",
        flag="--pack")
    long_policy: LongPolicy = option(
        "split", "documents longer than L: split into L-token chunks, or truncate",
        flag="--long-docs")
    window_docs: int = option(1_000_000, "BFD window in documents (what may share a row)",
                              flag="--pack-window")
    shuffle: bool = option(True, "shuffle rows with --seed after packing")
    seed: int = option(0, "row shuffle seed")

    def __post_init__(self) -> None:
        if not _is_int(self.seq_len) or self.seq_len < 1:
            raise ValueError(f"--seq-len must be a positive integer (tokens per row), "
                             f"got {self.seq_len!r}")
        if self.mode not in _MODES:
            raise ValueError(f"--pack must be one of {', '.join(_MODES)} (bfd: best-fit packing, "
                             f"concat: concatenate and cut, pad: one document per row), "
                             f"got {self.mode!r}")
        if self.long_policy not in _POLICIES:
            raise ValueError(f"--long-docs must be 'split' (keep every token, in L-token chunks) or "
                             f"'truncate' (keep the first L tokens), got {self.long_policy!r}")
        if not _is_int(self.window_docs) or self.window_docs < 1:
            raise ValueError(f"--pack-window must be a positive number of documents "
                             f"(e.g. 1000000), got {self.window_docs!r}")
        if not isinstance(self.shuffle, (bool, np.bool_)):
            raise ValueError(f"shuffle must be True or False, got {self.shuffle!r}")
        if not _is_int(self.seed) or self.seed < 0:
            raise ValueError(f"--seed must be a non-negative integer, got {self.seed!r}")


@dataclass(frozen=True, eq=False)  # eq=False: field-wise == on arrays has no single truth value
class PackPlan:
    """Where every piece goes. One entry per piece, sorted by (row, offset); arrays are read-only."""

    piece_doc: np.ndarray      # int64, source document (0..n_docs-1, input order)
    piece_start: np.ndarray    # int64, first token of the piece inside its document
    piece_len: np.ndarray      # int64, tokens in the piece (>= 1)
    piece_row: np.ndarray      # int64, output row (after shuffle)
    piece_offset: np.ndarray   # int64, position of the piece's first token inside the row
    piece_segment: np.ndarray  # int64, segment id inside the row, 1..k
    n_rows: int
    tokens_in: int             # sum(lengths)
    tokens_kept: int           # sum(piece_len)
    docs_split: int            # documents cut into more than one piece
    docs_truncated: int        # documents that lost tokens (truncate policy)
    seq_len: int               # L: fill_rows needs it to shape rows
    # int64 [n_rows], the group (source) of every output row when packed by groups, else None
    row_group: np.ndarray | None = None

    @property
    def efficiency(self) -> float:
        """Real tokens / (rows x L): 1.0 means no padding at all."""
        return self.tokens_kept / (self.n_rows * self.seq_len) if self.n_rows else 0.0

    @property
    def tokens_dropped(self) -> int:
        return self.tokens_in - self.tokens_kept

    @property
    def padding(self) -> int:
        return self.n_rows * self.seq_len - self.tokens_kept

    def counts(self) -> dict[str, int]:
        """The manifest's packing counts (``counts`` section)."""
        return {"documents_split": self.docs_split, "documents_truncated": self.docs_truncated,
                "tokens": self.tokens_in, "tokens_kept": self.tokens_kept,
                "tokens_dropped": self.tokens_dropped, "rows": self.n_rows,
                "padding_tokens": self.padding}


def _as_lengths(lengths: npt.ArrayLike) -> np.ndarray:
    arr = np.asarray(lengths)
    if arr.ndim != 1:
        raise ValueError(f"lengths must be a 1-D array of token counts, got shape {arr.shape}")
    if arr.size and arr.dtype.kind not in "iu":
        raise ValueError(f"lengths must hold integers (token counts per document), got {arr.dtype}")
    arr = np.ascontiguousarray(arr, dtype=np.int64)  # one dtype: one compiled kernel
    if arr.size and arr.min() < 0:
        raise ValueError(f"lengths must be >= 0; document {int(arr.argmin())} has {int(arr.min())}")
    return arr


def _rows_for_pieces(lengths: np.ndarray, cfg: PackConfig
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int, int, int]:
    """Pieces in (doc, start) order with their pre-shuffle row: (doc, start, len, row, n_rows,
    docs_split, docs_truncated)."""
    kernels = _kernels()
    L = cfg.seq_len
    if cfg.mode == "concat":
        doc, start, size, row, n_split = kernels.concat_pieces(lengths, L)
        n_rows = int(row[-1]) + 1 if row.size else 0
        return doc, start, size, row, n_rows, int(n_split), 0
    doc, start, size, n_split, n_trunc = kernels.split_pieces(lengths, L, cfg.long_policy == "truncate")
    if cfg.mode == "pad":
        row, n_rows = np.arange(size.shape[0], dtype=np.int64), int(size.shape[0])
    else:
        row, n_rows = kernels.bfd_rows(size, doc, cfg.window_docs, L)
    return doc, start, size, row, int(n_rows), int(n_split), int(n_trunc)


def _row_order(n_rows: int, cfg: PackConfig) -> np.ndarray:
    """Output row j holds packed row ``permutation(n_rows)[j]``; empty means unshuffled."""
    if not cfg.shuffle or n_rows == 0:
        return np.zeros(0, np.int64)
    return np.random.default_rng(cfg.seed).permutation(n_rows).astype(np.int64, copy=False)


def _frozen(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


def _grouped_pieces(lengths: np.ndarray, groups: np.ndarray, cfg: PackConfig
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int, int, int,
                               np.ndarray]:
    """Pieces of each group packed on their own (a row never mixes groups), groups in
    ascending order, each group's rows after the previous group's; plus each packed row's
    group."""
    parts: list[tuple[np.ndarray, ...]] = []
    row_group: list[np.ndarray] = []
    n_rows = n_split = n_trunc = 0
    for g in np.unique(groups).tolist():
        idx = np.flatnonzero(groups == g)
        doc, start, size, row, k, s, t = _rows_for_pieces(lengths[idx], cfg)
        parts.append((idx[doc], start, size, row + n_rows))
        row_group.append(np.full(k, g, np.int64))
        n_rows, n_split, n_trunc = n_rows + k, n_split + s, n_trunc + t
    if not parts:
        e = np.zeros(0, np.int64)
        return e, e, e, e, 0, 0, 0, e
    doc, start, size, row = (np.concatenate(c) for c in zip(*parts))
    return doc, start, size, row, n_rows, n_split, n_trunc, np.concatenate(row_group)


def plan(lengths: npt.ArrayLike, cfg: PackConfig, groups: npt.ArrayLike | None = None) -> PackPlan:
    """Plan the packing of documents with the given token counts (``>= 0``; empty documents produce
    no piece). Deterministic: same lengths and config, same plan.

    ``groups`` (one integer per document, e.g. its source): pack each group on its own, so
    every row holds documents of one group only (``row_group`` says which); rows of all groups
    are then shuffled together."""
    kernels = _kernels()
    lengths = _as_lengths(lengths)
    row_group = None
    if groups is None:
        doc, start, size, row, n_rows, n_split, n_trunc = _rows_for_pieces(lengths, cfg)
    else:
        g = np.asarray(groups, dtype=np.int64)
        if g.shape != lengths.shape:
            raise ValueError(f"groups must give one group per document: {g.shape} for "
                             f"{lengths.shape} lengths")
        doc, start, size, row, n_rows, n_split, n_trunc, row_group = _grouped_pieces(lengths, g, cfg)
    order = _row_order(n_rows, cfg)
    doc, start, size, row, offset, segment = kernels.layout_rows(doc, start, size, row, n_rows,
                                                                 order)
    if row_group is not None and order.size:
        row_group = row_group[order]  # output row j holds packed row order[j]
    return PackPlan(piece_doc=_frozen(doc), piece_start=_frozen(start), piece_len=_frozen(size),
                    piece_row=_frozen(row), piece_offset=_frozen(offset),
                    piece_segment=_frozen(segment), n_rows=n_rows, tokens_in=int(lengths.sum()),
                    tokens_kept=int(size.sum()), docs_split=n_split, docs_truncated=n_trunc,
                    seq_len=cfg.seq_len,
                    row_group=None if row_group is None else _frozen(row_group))


def _check_fill_args(p: PackPlan, tokens: np.ndarray, doc_offsets: np.ndarray, lo: int, hi: int,
                     loss_mask: np.ndarray | None, pad_id: int, ids_dtype: np.dtype,
                     seg_dtype: np.dtype, seg_max: int, doc_max: int) -> None:
    if not (_is_int(lo) and _is_int(hi) and 0 <= lo <= hi <= p.n_rows):
        raise ValueError(f"rows [{lo}, {hi}) out of range for a plan of {p.n_rows} rows")
    if tokens.ndim != 1 or tokens.dtype.kind not in "iu":
        raise ValueError(f"tokens must be a flat integer array, got {tokens.dtype} {tokens.shape}")
    if doc_offsets.ndim != 1 or doc_offsets.dtype.kind not in "iu":
        raise ValueError("doc_offsets must be a flat integer array of n_docs + 1 offsets")
    if doc_max >= 0 and doc_offsets.shape[0] < doc_max + 2:
        raise ValueError(f"doc_offsets has {doc_offsets.shape[0]} entries; the plan needs one per "
                         f"document plus one ({doc_max + 2})")
    if doc_offsets.size and (doc_offsets[0] < 0 or doc_offsets[-1] > tokens.shape[0]):
        raise ValueError(f"doc_offsets point outside tokens (0..{tokens.shape[0]})")
    if loss_mask is not None and (loss_mask.shape != tokens.shape or loss_mask.dtype != np.uint8):
        raise ValueError(f"loss_mask must be uint8 with the shape of tokens {tokens.shape}, got "
                         f"{loss_mask.dtype} {loss_mask.shape}")
    if ids_dtype.kind not in "iu" or not np.iinfo(ids_dtype).min <= pad_id <= np.iinfo(ids_dtype).max:
        raise ValueError(f"pad_id {pad_id} does not fit ids_dtype {ids_dtype}")
    if seg_dtype.kind not in "iu" or seg_max > np.iinfo(seg_dtype).max:
        raise ValueError(f"seg_dtype {seg_dtype} cannot hold segment id {seg_max}; use uint16 "
                         f"(any L < 65536) or uint32")


_HUGE_PAGE = 2 << 20


def _empty_rows(n: int, seq_len: int, dtype: np.dtype) -> np.ndarray:
    """``np.empty((n, seq_len), dtype)`` whose data starts on a 2 MiB boundary once it is 4 MiB
    or more.

    Every block's outputs are fresh memory, so their page faults are part of fill_rows's cost.
    numpy asks for transparent huge pages on large arrays, but glibc hands out big blocks from
    ``mmap`` at an address 16 bytes past a page, and the kernel only aligns mappings whose size
    is a multiple of 2 MiB: a 2048 x 2048 uint16 block (8 MiB) got ~500 4 KiB faults per array
    instead of 4 huge ones (the fault counts and times are in ``benchmarks/README.md``,
    "Component figures"). The over-allocation (< 2 MiB) is never
    touched, so it costs address space, not memory. The result is a C-contiguous view of a uint8
    buffer.
    """
    nbytes = n * seq_len * dtype.itemsize
    if nbytes < 2 * _HUGE_PAGE:
        return np.empty((n, seq_len), dtype)
    raw = np.empty(nbytes + _HUGE_PAGE, np.uint8)
    skip = -raw.ctypes.data % _HUGE_PAGE
    return raw[skip:skip + nbytes].view(dtype).reshape(n, seq_len)


def fill_rows(plan: PackPlan, tokens: np.ndarray, doc_offsets: np.ndarray, row_lo: int,
              row_hi: int, *, pad_id: int, ids_dtype: npt.DTypeLike, seg_dtype: npt.DTypeLike,
              loss_mask: np.ndarray | None = None,
              out: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Materialise rows ``[row_lo, row_hi)`` of ``plan``.

    Document ``d`` is ``tokens[doc_offsets[d]:doc_offsets[d+1]]`` (``tokens`` may be a read-only
    ``np.memmap``; ``loss_mask``, if given, is uint8 aligned with ``tokens``). Returns
    ``input_ids`` ``[n, L]`` ``ids_dtype`` padded with ``pad_id``, ``segment_ids`` ``[n, L]``
    ``seg_dtype`` (0 = padding), and ``loss_mask`` ``[n, L]`` uint8 (0 at padding) only when a
    loss mask was given. Cost: one numba pass over the block, O(n x L), writing every output
    byte once; the checks here are O(pieces of the block), so filling a large plan block by
    block costs no more than filling it at once.

    ``out`` (from :func:`row_buffers`, at least ``n`` rows): fill its first ``n`` rows and return
    views of them instead of allocating fresh arrays, so a loop over blocks reuses one block's
    memory (the returned views are overwritten by the next call).

    Rows are filled in parallel on numba's thread pool (``NUMBA_NUM_THREADS``). Under numba's
    ``workqueue`` threading layer (used when neither TBB nor OpenMP is available) a parallel
    kernel must not be launched from two threads at once: call it from one thread at a time.
    """
    kernels = _kernels()
    tokens = np.asarray(tokens)  # a memmap becomes a plain view of the same pages, no copy
    # int64 offsets: numba would mix uint64 + int64 into float64; a no-op for the usual int64
    doc_offsets = np.asarray(doc_offsets, dtype=np.int64)
    ids_dt, seg_dt = np.dtype(ids_dtype), np.dtype(seg_dtype)
    lo_k, hi_k = (int(k) for k in np.searchsorted(plan.piece_row, [row_lo, row_hi], side="left"))
    seg_max = int(plan.piece_segment[lo_k:hi_k].max()) if hi_k > lo_k else 0
    # only the block's documents are read (the whole plan's max was O(all pieces) per call)
    doc_max = int(plan.piece_doc[lo_k:hi_k].max()) if hi_k > lo_k else -1
    mask = None if loss_mask is None else np.asarray(loss_mask)
    _check_fill_args(plan, tokens, doc_offsets, row_lo, row_hi, mask, pad_id, ids_dt, seg_dt,
                     seg_max, doc_max)
    docs = plan.piece_doc[lo_k:hi_k]
    starts, sizes = plan.piece_start[lo_k:hi_k], plan.piece_len[lo_k:hi_k]
    if docs.size and np.any(starts + sizes > doc_offsets[docs + 1] - doc_offsets[docs]):
        raise ValueError("doc_offsets disagree with the lengths the plan was made from: a piece "
                         "runs past the end of its document")
    n, L = row_hi - row_lo, plan.seq_len
    if out is None:
        out = row_buffers(n, L, ids_dt, seg_dt, loss_mask=mask is not None)
    rows = _check_out(out, n, L, ids_dt, seg_dt, mask is not None)
    kernels.fill_rows(docs, starts, sizes, plan.piece_row[lo_k:hi_k], plan.piece_offset[lo_k:hi_k],
                plan.piece_segment[lo_k:hi_k], row_lo, tokens, doc_offsets,
                mask if mask is not None else np.zeros(0, np.uint8), int(pad_id),
                rows["input_ids"], rows["segment_ids"],
                rows["loss_mask"] if mask is not None else np.zeros((0, L), np.uint8))
    return rows


def row_buffers(n: int, seq_len: int, ids_dtype: npt.DTypeLike, seg_dtype: npt.DTypeLike, *,
                loss_mask: bool = False) -> dict[str, np.ndarray]:
    """Uninitialised ``[n, seq_len]`` output arrays for :func:`fill_rows` (``input_ids``,
    ``segment_ids`` and, with ``loss_mask``, ``loss_mask`` uint8); from 4 MiB up each starts on
    a 2 MiB boundary (see ``_empty_rows``)."""
    bufs = {"input_ids": _empty_rows(n, seq_len, np.dtype(ids_dtype)),
            "segment_ids": _empty_rows(n, seq_len, np.dtype(seg_dtype))}
    if loss_mask:
        bufs["loss_mask"] = _empty_rows(n, seq_len, np.dtype(np.uint8))
    return bufs


def _check_out(out: dict[str, np.ndarray], n: int, L: int, ids_dt: np.dtype, seg_dt: np.dtype,
               mask: bool) -> dict[str, np.ndarray]:
    """The first ``n`` rows of each buffer ``fill_rows`` writes, after checking they fit."""
    want = {"input_ids": ids_dt, "segment_ids": seg_dt}
    if mask:
        want["loss_mask"] = np.dtype(np.uint8)
    rows = {}
    for name, dt in want.items():
        a = out.get(name)
        if (a is None or a.dtype != dt or a.ndim != 2 or a.shape[0] < n or a.shape[1] != L
                or not a.flags.c_contiguous or not a.flags.writeable):
            got = "missing" if a is None else f"{a.dtype} {a.shape}"
            raise ValueError(f"out[{name!r}] must be a writable C-contiguous {dt} array of at "
                             f"least {n} rows x {L}, got {got}")
        rows[name] = a[:n]
    return rows
