"""The write stage's rows: a packing plan filled from the token spill, block by block.

Rows are shuffled, so a block needs pieces from all over the spill; they are read with
positioned reads (:func:`fastprep.io.read_ranges`) into one compact buffer rather than through a
memory map, whose fault-around and read-ahead made the driver's RSS follow the spill size. The
buffers (pieces read, rows filled) are allocated once per run: fresh multi-MiB arrays per block
left glibc's heap holding freed blocks (its mmap threshold rises after the first free), so the
driver's peak grew with the number of blocks (``benchmarks/README.md``, "driver memory").
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import numpy as np

from ..io import read_ranges
from ..stages.pack import PackConfig, PackPlan, fill_rows, plan, row_buffers


def block_pieces(packing: PackPlan, doc_offsets: np.ndarray, lo: int, hi: int
                 ) -> tuple[PackPlan, np.ndarray, np.ndarray]:
    """The pieces of rows [lo, hi) as a plan of their own in which every piece is a document:
    piece ``i`` becomes document ``rank[i]``, its rank in spill order. Returns that plan and the
    spill offset and length of each of those documents, in that (ascending) order.

    Only the pieces' own tokens are read, never whole documents, so one block reads at most
    ``(hi - lo) x L`` tokens whatever the document lengths (a document split over many rows is
    read piece by piece, not once per block it reaches); pieces that continue one another in
    the spill merge into one read."""
    a, b = (int(k) for k in np.searchsorted(packing.piece_row, [lo, hi]))
    lens = packing.piece_len[a:b]
    spill = doc_offsets[packing.piece_doc[a:b]] + packing.piece_start[a:b]
    order = np.argsort(spill, kind="stable")
    rank = np.empty(b - a, dtype=np.int64)
    rank[order] = np.arange(b - a, dtype=np.int64)
    sub = dataclasses.replace(
        packing, piece_doc=rank, piece_start=np.zeros(b - a, np.int64), piece_len=lens,
        piece_row=packing.piece_row[a:b], piece_offset=packing.piece_offset[a:b],
        piece_segment=packing.piece_segment[a:b])
    return sub, spill[order], lens[order]


def _fill_block(sub: PackPlan, tokens: np.ndarray, lens: np.ndarray, lo: int, hi: int,
                mask: np.ndarray | None, pad_id: int, ids_dt: np.dtype, seg_dt: np.dtype,
                out: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    local = np.zeros(len(lens) + 1, dtype=np.int64)
    np.cumsum(lens, out=local[1:])
    return fill_rows(sub, tokens, local, lo, hi, pad_id=pad_id, ids_dtype=ids_dt,
                     seg_dtype=seg_dt, loss_mask=mask, out=out)


class TokenSource(Protocol):
    def read(self, starts: np.ndarray, lens: np.ndarray, ids_out: np.ndarray,
             mask_out: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]: ...


class FileSource:
    """One flat spill file (and its mask file), as :class:`fastprep.pipeline.spill.RunSpill`
    reads many: for tests and tools."""

    def __init__(self, ids_path: Path, mask_path: Path | None) -> None:
        self.ids, self.mask = open(ids_path, "rb"), open(mask_path, "rb") if mask_path else None

    def read(self, starts: np.ndarray, lens: np.ndarray, ids_out: np.ndarray,
             mask_out: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
        ids = read_ranges(self.ids, starts, lens, ids_out)
        mask = read_ranges(self.mask, starts, lens, mask_out) if mask_out is not None and self.mask else None
        return ids, mask

    def close(self) -> None:
        self.ids.close()
        if self.mask is not None:
            self.mask.close()


def row_blocks(packing: PackPlan, doc_offsets: np.ndarray, source: TokenSource, masked: bool,
               block: int, pad_id: int, ids_dt: np.dtype, seg_dt: np.dtype, buffers: int = 1
               ) -> Iterator[dict[str, np.ndarray]]:
    """The rows of ``packing``, ``block`` rows at a time, filled from the token spill (with the
    loss mask when ``masked``). Each yielded block is a view of one of ``buffers`` row buffers,
    used in turn: a block is overwritten ``buffers`` blocks later, so with two the caller can
    write one block while the next is filled."""
    L = packing.seq_len
    rows_bufs = [row_buffers(block, L, ids_dt, seg_dt, loss_mask=masked) for _ in range(buffers)]
    ids_buf = np.empty(block * L, ids_dt)  # a block's pieces hold at most block x L tokens
    mask_buf = np.empty(block * L, np.uint8) if masked else None
    for k, lo in enumerate(range(0, packing.n_rows, block)):
        hi = min(lo + block, packing.n_rows)
        sub, starts, lens = block_pieces(packing, doc_offsets, lo, hi)
        tokens, mask = source.read(starts, lens, ids_buf, mask_buf)
        yield _fill_block(sub, tokens, lens, lo, hi, mask, pad_id, ids_dt, seg_dt,
                          rows_bufs[k % buffers])


def warm_kernels(pack: PackConfig, exact: bool, ids_dt: np.dtype, seg_dt: np.dtype) -> None:
    """Load the driver's numba kernels (numba's import plus their cache) on tiny inputs of the
    real types: in a thread while the workers start, or before the tasks when they run in this
    process. Otherwise the load sits on the critical path: at the first result with exact
    dedupe, at packing without. A failure is ignored here: it resurfaces, with its real
    message, where the kernel is used."""
    from ..dedupe.exact import ExactDeduper

    try:
        if exact:
            ExactDeduper().insert(np.zeros((1, 2), np.uint64))
        L = pack.seq_len
        lengths = np.array([L + 1, 1], np.int64)
        offsets = np.array([0, L + 1, L + 2], np.int64)
        packing = plan(lengths, pack)
        sub, _, lens = block_pieces(packing, offsets, 0, packing.n_rows)
        tokens = np.zeros(int(lens.sum()), ids_dt)
        for mask in (None, np.ones(int(lens.sum()), np.uint8)):
            out = row_buffers(packing.n_rows, L, ids_dt, seg_dt, loss_mask=mask is not None)
            _fill_block(sub, tokens, lens, 0, packing.n_rows, mask, 0, ids_dt, seg_dt, out)
    except Exception:  # noqa: BLE001
        pass
