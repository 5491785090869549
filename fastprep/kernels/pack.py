"""Numba kernels of the packing stage (numpy in, numpy out, no I/O), each with a pure-Python twin.

A *piece* is a whole document or a chunk of one; packing assigns every piece a row, then lays the
pieces of each row out contiguously from offset 0. The kernels, in pipeline order:

- :func:`split_pieces`  - documents -> pieces for ``bfd``/``pad`` (split long documents into
  ``L``-token chunks plus a remainder, or keep only their first ``L`` tokens). O(pieces).
- :func:`concat_pieces` - documents -> pieces and rows for ``concat`` (one token stream cut every
  ``L`` tokens). O(pieces).
- :func:`bfd_rows`      - best-fit decreasing, one window of consecutive documents at a time.
  A window's pieces are put in (length descending, input order) by a stable counting sort,
  O(pieces + L); each piece then goes to the open row with the smallest remaining capacity that
  holds it. Open rows live in one LIFO bucket per remaining capacity 0..L (a linked list in two
  int64 arrays, so no Python objects), and a max segment tree over the capacities whose bucket is
  non-empty finds the smallest capacity >= the piece in O(log L). Rows are only ever touched
  through their bucket, so memory is O(pieces + L) whatever the window size.
- :func:`layout_rows`   - stable counting sort of pieces by packed row, then the rows emitted in
  shuffled order with offsets and 1-based segment ids. O(pieces + rows).
- :func:`fill_rows`     - copy the pieces of a block of rows out of the flat token array and pad
  the row ends. O(rows x L).

Cost grows linearly with the number of pieces; at tens of millions of pieces layout_rows's
shuffled block gather (cache misses on arrays larger than the caches) dominates. Timings per
kernel: ``benchmarks/README.md``, "Component figures".

Tie-breaking is part of the contract (the output must be byte-identical across runs): pieces of
equal length are placed in input order (document, then start), and among open rows with the same
remaining capacity the one that reached that capacity most recently wins (the bucket is a stack).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

# ----------------------------------------------------------------------------------------------
# documents -> pieces


@njit(cache=True, nogil=True)
def split_pieces(lengths: np.ndarray, seq_len: int, truncate: bool
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:
    """Pieces for ``bfd``/``pad``: (doc, start, len, docs_split, docs_truncated), in document order.

    A document of at most ``seq_len`` tokens is one piece. A longer one becomes ``len // seq_len``
    full pieces plus a remainder piece (``truncate=False``), or one piece of its first ``seq_len``
    tokens (``truncate=True``). Empty documents produce no piece.
    """
    n_docs = lengths.shape[0]
    n = 0
    for d in range(n_docs):  # first pass sizes the output exactly: no over-allocation at 10M docs
        x = lengths[d]
        if x <= 0:
            continue
        if x <= seq_len or truncate:
            n += 1
        else:
            n += (x + seq_len - 1) // seq_len
    doc = np.empty(n, np.int64)
    start = np.empty(n, np.int64)
    size = np.empty(n, np.int64)
    n_split = 0
    n_truncated = 0
    k = 0
    for d in range(n_docs):
        x = lengths[d]
        if x <= 0:
            continue
        if x > seq_len:
            if truncate:
                n_truncated += 1
                x = seq_len
            else:
                n_split += 1
        s = 0
        while s < x:
            take = min(seq_len, x - s)
            doc[k] = d
            start[k] = s
            size[k] = take
            k += 1
            s += take
    return doc, start, size, n_split, n_truncated


def split_pieces_reference(lengths: np.ndarray, seq_len: int, truncate: bool
                           ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:
    doc, start, size = [], [], []
    n_split = n_truncated = 0
    for d, x in enumerate(int(v) for v in lengths):
        if x <= 0:
            continue
        if x > seq_len and truncate:
            n_truncated += 1
            doc.append(d), start.append(0), size.append(seq_len)
            continue
        n_split += x > seq_len
        for s in range(0, x, seq_len):
            doc.append(d), start.append(s), size.append(min(seq_len, x - s))
    return (np.array(doc, np.int64), np.array(start, np.int64), np.array(size, np.int64),
            n_split, n_truncated)


@njit(cache=True, nogil=True)
def concat_pieces(lengths: np.ndarray, seq_len: int
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """Pieces for ``concat``: (doc, start, len, row, docs_split).

    All documents form one stream in input order, cut every ``seq_len`` tokens; a piece is the part
    of a document inside one row, and a document touching more than one row counts as split.
    """
    n_docs = lengths.shape[0]
    n = 0
    pos = 0
    for d in range(n_docs):
        x = lengths[d]
        if x > 0:
            n += (pos + x - 1) // seq_len - pos // seq_len + 1  # rows this document touches
            pos += x
    doc = np.empty(n, np.int64)
    start = np.empty(n, np.int64)
    size = np.empty(n, np.int64)
    row = np.empty(n, np.int64)
    n_split = 0
    k = 0
    pos = 0
    for d in range(n_docs):
        x = lengths[d]
        if x <= 0:
            continue
        first = k
        s = 0
        while s < x:
            take = min(x - s, seq_len - pos % seq_len)
            doc[k] = d
            start[k] = s
            size[k] = take
            row[k] = pos // seq_len
            k += 1
            s += take
            pos += take
        if k - first > 1:
            n_split += 1
    return doc, start, size, row, n_split


def concat_pieces_reference(lengths: np.ndarray, seq_len: int
                            ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    # Token by token: obviously right, hopelessly slow.
    stream = [(d, p) for d, x in enumerate(int(v) for v in lengths) for p in range(x)]
    doc, start, size, row = [], [], [], []
    for i, (d, p) in enumerate(stream):
        r = i // seq_len
        if row and row[-1] == r and doc[-1] == d:
            size[-1] += 1
        else:
            doc.append(d), start.append(p), size.append(1), row.append(r)
    n_split = sum(1 for d in set(doc) if doc.count(d) > 1)
    return (np.array(doc, np.int64), np.array(start, np.int64), np.array(size, np.int64),
            np.array(row, np.int64), n_split)


# ----------------------------------------------------------------------------------------------
# best-fit decreasing


@njit(cache=True, nogil=True)
def _window_ends(piece_doc: np.ndarray, window_docs: int) -> np.ndarray:
    """Exclusive end index of every non-empty window (pieces are in document order)."""
    n = piece_doc.shape[0]
    n_ends = 0
    for i in range(n):
        if i == n - 1 or piece_doc[i + 1] // window_docs != piece_doc[i] // window_docs:
            n_ends += 1
    ends = np.empty(n_ends, np.int64)
    k = 0
    for i in range(n):
        if i == n - 1 or piece_doc[i + 1] // window_docs != piece_doc[i] // window_docs:
            ends[k] = i + 1
            k += 1
    return ends


@njit(cache=True, nogil=True)
def _sort_window(piece_len: np.ndarray, lo: int, hi: int, seq_len: int, count: np.ndarray,
                 order: np.ndarray, need: np.ndarray) -> None:
    """order[lo:hi] = pieces lo..hi-1 by length descending, ties in input order (stable);
    need[lo:hi] = their lengths, so the placement loop reads lengths sequentially.

    A counting sort, O(m + L), for windows of m >= L/4 pieces; smaller windows use a stable
    comparison sort so that many tiny windows do not each pay for clearing L counters.
    """
    m = hi - lo
    if 4 * m < seq_len:
        idx = np.argsort(seq_len - piece_len[lo:hi], kind="mergesort")
        for j in range(m):
            order[lo + j] = lo + idx[j]
            need[lo + j] = piece_len[lo + idx[j]]
        return
    count[:] = 0
    for i in range(lo, hi):
        count[seq_len - piece_len[i] + 1] += 1
    for c in range(1, seq_len + 1):
        count[c] += count[c - 1]
    for i in range(lo, hi):
        key = seq_len - piece_len[i]
        at = lo + count[key]
        count[key] += 1
        order[at] = i
        need[at] = piece_len[i]


@njit(cache=True, nogil=True)
def _tree_set(tree: np.ndarray, leaves: int, cap: int, present: bool) -> None:
    """Mark capacity ``cap`` as having open rows (leaf = cap) or none (leaf = 0); fix the maxima."""
    node = leaves + cap
    tree[node] = cap if present else 0
    node >>= 1
    while node >= 1:
        best = max(tree[2 * node], tree[2 * node + 1])
        if tree[node] == best:  # ancestors already agree: stop early
            break
        tree[node] = best
        node >>= 1


@njit(cache=True, nogil=True)
def _tree_smallest_fit(tree: np.ndarray, leaves: int, need: int) -> int:
    """Smallest capacity >= ``need`` with an open row, or -1. A leaf's value is its own capacity,
    so "left subtree max >= need" means the leftmost fit is on the left: one root-to-leaf walk."""
    if tree[1] < need:
        return -1
    node = 1
    while node < leaves:
        node <<= 1
        if tree[node] < need:
            node += 1
    return node - leaves


@njit(cache=True, nogil=True)
def bfd_rows(piece_len: np.ndarray, piece_doc: np.ndarray, window_docs: int, seq_len: int
             ) -> tuple[np.ndarray, int]:
    """Best-fit decreasing: (row of every piece, number of rows).

    Pieces must be in document order; documents ``[w*window_docs, (w+1)*window_docs)`` form window
    ``w`` and windows never share a row. Rows are numbered in order of creation.
    """
    n = piece_len.shape[0]
    row = np.empty(n, np.int64)
    leaves = 1
    while leaves < seq_len + 1:
        leaves <<= 1
    tree = np.zeros(2 * leaves, np.int32)  # int32: the whole tree stays in L1/L2 cache
    head = np.full(seq_len + 1, -1, np.int64)  # head[c]: the row that last reached capacity c
    below = np.empty(n, np.int64)              # below[r]: the next row in r's bucket (rows <= pieces)
    order = np.empty(n, np.int64)
    sizes = np.empty(n, np.int64)
    count = np.empty(seq_len + 1, np.int64)
    n_rows = 0
    lo = 0
    # One window at a time: its arrays stay cache-resident, whatever the corpus size.
    for hi in _window_ends(piece_doc, window_docs):
        _sort_window(piece_len, lo, hi, seq_len, count, order, sizes)
        _close_all(tree, leaves, head)  # windows never share a row
        for j in range(lo, hi):
            need = sizes[j]
            cap = _tree_smallest_fit(tree, leaves, need)
            if cap < 0:
                r = n_rows
                n_rows += 1
                left = seq_len - need
            else:
                r = head[cap]
                head[cap] = below[r]
                if head[cap] < 0:
                    _tree_set(tree, leaves, cap, False)
                left = cap - need
            row[order[j]] = r
            if left > 0:  # a full row can take nothing more: it never enters a bucket
                below[r] = head[left]
                if head[left] < 0:
                    _tree_set(tree, leaves, left, True)
                head[left] = r
        lo = hi
    return row, n_rows


@njit(cache=True, nogil=True)
def _close_all(tree: np.ndarray, leaves: int, head: np.ndarray) -> None:
    # Only the non-empty buckets are visited, so tiny windows do not pay O(L) each.
    while tree[1] > 0:
        cap = _tree_smallest_fit(tree, leaves, 1)
        head[cap] = -1
        _tree_set(tree, leaves, cap, False)


def bfd_rows_reference(piece_len: np.ndarray, piece_doc: np.ndarray, window_docs: int,
                       seq_len: int) -> tuple[np.ndarray, int]:
    # Scan every open row for each piece; ties on capacity go to the row whose capacity changed
    # last (largest clock), which is what the kernel's per-capacity stacks give.
    n = len(piece_len)
    row = np.empty(n, np.int64)
    windows: dict[int, list[int]] = {}
    for i in range(n):
        windows.setdefault(int(piece_doc[i]) // window_docs, []).append(i)
    n_rows = 0
    clock = 0
    for w in sorted(windows):
        open_rows: list[list[int]] = []  # [row id, remaining capacity, clock of last change]
        for i in sorted(windows[w], key=lambda i: (-int(piece_len[i]), i)):
            need = int(piece_len[i])
            best = None
            for cand in open_rows:
                if cand[1] >= need and (best is None or (cand[1], -cand[2]) < (best[1], -best[2])):
                    best = cand
            if best is None:
                best = [n_rows, seq_len, 0]
                n_rows += 1
                open_rows.append(best)
            clock += 1
            best[1] -= need
            best[2] = clock
            row[i] = best[0]
    return row, n_rows


# ----------------------------------------------------------------------------------------------
# layout inside rows


@njit(cache=True, nogil=True)
def layout_rows(piece_doc: np.ndarray, piece_start: np.ndarray, piece_len: np.ndarray,
                piece_row: np.ndarray, n_rows: int, row_order: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(doc, start, len, row, offset, segment) sorted by output row, then offset.

    Output row ``j`` holds packed row ``row_order[j]`` (an empty ``row_order`` keeps packed order).
    Pieces must come in (doc, start) order: a stable counting sort by packed row keeps that order
    inside each row, which is the documented in-row order; pieces then sit back to back from
    offset 0, numbered 1..k. Rows are emitted as blocks in output order, so writes are sequential;
    ``concat`` and ``pad`` pieces are already grouped by row and skip the scatter.
    """
    n = piece_row.shape[0]
    first = np.zeros(n_rows + 1, np.int64)
    grouped = True
    for i in range(n):
        first[piece_row[i] + 1] += 1
        if i > 0 and piece_row[i] < piece_row[i - 1]:
            grouped = False
    for r in range(n_rows):
        first[r + 1] += first[r]
    # (doc, start, len) side by side, grouped by packed row: the shuffled read below then touches
    # one cache line per piece instead of three (it is the cost that dominates at 10M documents)
    packed = np.empty((n, 3), np.int64)
    fill = first[:n_rows].copy()
    for i in range(n):
        q = i
        if not grouped:
            r = piece_row[i]
            q = fill[r]
            fill[r] += 1
        packed[q, 0] = piece_doc[i]
        packed[q, 1] = piece_start[i]
        packed[q, 2] = piece_len[i]
    permuted = row_order.shape[0] > 0
    doc = np.empty(n, np.int64)
    start = np.empty(n, np.int64)
    size = np.empty(n, np.int64)
    row = np.empty(n, np.int64)
    offset = np.empty(n, np.int64)
    segment = np.empty(n, np.int64)
    k = 0
    for j in range(n_rows):
        r = row_order[j] if permuted else j
        at = 0
        for q in range(first[r], first[r + 1]):
            doc[k] = packed[q, 0]
            start[k] = packed[q, 1]
            size[k] = packed[q, 2]
            row[k] = j
            offset[k] = at
            segment[k] = q - first[r] + 1
            at += packed[q, 2]
            k += 1
    return doc, start, size, row, offset, segment


def layout_rows_reference(piece_doc: np.ndarray, piece_start: np.ndarray, piece_len: np.ndarray,
                          piece_row: np.ndarray, n_rows: int, row_order: np.ndarray
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray,
                                     np.ndarray]:
    # Sort by the documented key directly instead of relying on the input order.
    final = list(range(n_rows))
    if len(row_order):
        for j, r in enumerate(row_order):
            final[int(r)] = j
    key = [(final[int(r)], int(d), int(s)) for r, d, s in zip(piece_row, piece_doc, piece_start, strict=True)]
    order = sorted(range(len(key)), key=key.__getitem__)
    out: list[list[int]] = [[], [], [], [], [], []]
    prev, at, seg = -1, 0, 0
    for i in order:
        j = key[i][0]
        if j != prev:
            prev, at, seg = j, 0, 0
        seg += 1
        values = (piece_doc[i], piece_start[i], piece_len[i], j, at, seg)
        for col, v in zip(out, values, strict=True):
            col.append(int(v))
        at += int(piece_len[i])
    return tuple(np.array(col, np.int64) for col in out)  # type: ignore[return-value]


# ----------------------------------------------------------------------------------------------
# materialising rows


@njit(cache=True, nogil=True, parallel=True)
def fill_rows(piece_doc: np.ndarray, piece_start: np.ndarray, piece_len: np.ndarray,
              piece_row: np.ndarray, piece_offset: np.ndarray, piece_segment: np.ndarray,
              row_lo: int, tokens: np.ndarray, doc_offsets: np.ndarray, loss_src: np.ndarray,
              pad_id: int, out_ids: np.ndarray, out_seg: np.ndarray, out_loss: np.ndarray) -> None:
    """Write rows ``[row_lo, row_lo + len(out_ids))`` whose pieces (sorted by row, offset) are given.

    ``out_loss`` with zero rows means "no loss mask" (``loss_src`` is then ignored). Every output
    cell is written exactly once, so the outputs may come from ``np.empty``.

    Rows are independent, so they are spread over numba's threads (``prange``; each row finds its
    pieces by binary search on ``piece_row``). Each piece is one contiguous copy and one
    contiguous segment-id fill, and only the tail of a row after its last piece is padded: a
    single pass over the outputs. The copy goes through 1-D views with a plain ``a[t] = b[t]``
    loop, which LLVM vectorises; indexing the 2-D outputs (``out[i, off + t]``) with the id and
    segment stores interleaved in one loop did not vectorise and ran ~2.5x slower. Slice fills
    with a scalar of the output dtype compile to memset-like loops. What costs is the gather: a
    shuffled plan reads its pieces (~1.5 KB each) from all over the token array (software
    prefetch of the next pieces gained <10%, within this machine's noise, and copying in source
    order was slower: neither is used; one and two threads: ``benchmarks/README.md``).
    """
    n_out, seq_len = out_ids.shape
    with_loss = out_loss.shape[0] > 0
    pad = out_ids.dtype.type(pad_id)
    seg_pad = out_seg.dtype.type(0)
    loss_pad = out_loss.dtype.type(0)
    first = np.searchsorted(piece_row, np.arange(row_lo, row_lo + n_out + 1))
    for i in prange(n_out):
        ids_row = out_ids[i]
        seg_row = out_seg[i]
        end = 0
        for k in range(first[i], first[i + 1]):
            src = doc_offsets[piece_doc[k]] + piece_start[k]
            off = piece_offset[k]
            m = piece_len[k]
            dst = ids_row[off:off + m]
            got = tokens[src:src + m]
            for t in range(m):
                dst[t] = got[t]
            seg_row[off:off + m] = out_seg.dtype.type(piece_segment[k])
            if with_loss:
                dst_loss = out_loss[i, off:off + m]
                got_loss = loss_src[src:src + m]
                for t in range(m):
                    dst_loss[t] = got_loss[t]
            end = off + m
        if end < seq_len:
            ids_row[end:] = pad
            seg_row[end:] = seg_pad
            if with_loss:
                out_loss[i, end:] = loss_pad


def fill_rows_reference(piece_doc: np.ndarray, piece_start: np.ndarray, piece_len: np.ndarray,
                        piece_row: np.ndarray, piece_offset: np.ndarray, piece_segment: np.ndarray,
                        row_lo: int, tokens: np.ndarray, doc_offsets: np.ndarray,
                        loss_src: np.ndarray, pad_id: int, out_ids: np.ndarray, out_seg: np.ndarray,
                        out_loss: np.ndarray) -> None:
    out_ids[...] = pad_id
    out_seg[...] = 0
    out_loss[...] = 0
    for k in range(len(piece_row)):
        i = int(piece_row[k]) - row_lo
        if not 0 <= i < out_ids.shape[0]:
            continue
        src = int(doc_offsets[piece_doc[k]] + piece_start[k])
        for t in range(int(piece_len[k])):
            out_ids[i, piece_offset[k] + t] = tokens[src + t]
            out_seg[i, piece_offset[k] + t] = piece_segment[k]
            if out_loss.shape[0]:
                out_loss[i, piece_offset[k] + t] = loss_src[src + t]
