"""Packing: kernels against their pure-Python twins, and the invariants every plan must hold.

The invariant checks run fill_rows over a synthetic token stream whose values encode
(document, position), so that every output token says where it came from.
"""

from __future__ import annotations

import math
from itertools import pairwise

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastprep.kernels import pack as kernels
from fastprep.stages.pack import PackConfig, PackPlan, fill_rows, plan, row_buffers

STRIDE = 1 << 20  # token value = doc * STRIDE + position; test documents are shorter than this
COMBOS = [("bfd", "split"), ("bfd", "truncate"), ("concat", "split"), ("pad", "split"),
          ("pad", "truncate")]
FEW = settings(max_examples=120, deadline=None)


@st.composite
def lengths_and_L(draw: st.DrawFn, max_docs: int = 40) -> tuple[np.ndarray, int]:
    """Small L, and lengths skewed short with some documents of up to 3L (so splits happen)."""
    L = draw(st.integers(1, 24))
    doc = st.one_of(st.integers(0, max(1, L // 2)), st.integers(0, 3 * L))
    return np.array(draw(st.lists(doc, max_size=max_docs)), np.int64), L


def realistic_lengths(rng: np.random.Generator, n: int, L: int) -> np.ndarray:
    """Many short chat turns plus long prose, some longer than L, some empty."""
    short = rng.lognormal(math.log(L / 8), 0.8, n)
    long = rng.lognormal(math.log(L / 1.5), 0.7, n)
    lengths = np.where(rng.random(n) < 0.7, short, long).astype(np.int64)
    lengths[rng.random(n) < 0.02] = 0
    return lengths


def doc_offsets(lengths: np.ndarray) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)


def encoded_tokens(lengths: np.ndarray) -> np.ndarray:
    offsets = doc_offsets(lengths)
    doc = np.repeat(np.arange(lengths.size, dtype=np.int64), lengths)
    return doc * STRIDE + (np.arange(offsets[-1], dtype=np.int64) - offsets[doc])


def materialise(p: PackPlan, lengths: np.ndarray, **kw: object) -> dict[str, np.ndarray]:
    return fill_rows(p, encoded_tokens(lengths), doc_offsets(lengths), 0, p.n_rows, pad_id=-1,
                     ids_dtype=np.int64, seg_dtype=np.int64, **kw)


def kept_per_doc(lengths: np.ndarray, cfg: PackConfig) -> np.ndarray:
    if cfg.mode != "concat" and cfg.long_policy == "truncate":
        return np.minimum(lengths, cfg.seq_len)
    return lengths


def check_invariants(lengths: np.ndarray, cfg: PackConfig) -> tuple[PackPlan, int]:
    """Assert every packing invariant; return the plan and how many rows hold > 1 document."""
    L = cfg.seq_len
    p = plan(lengths, cfg)
    out = materialise(p, lengths)
    ids, seg = out["input_ids"], out["segment_ids"]
    assert ids.shape == seg.shape == (p.n_rows, L)

    # plan arrays: sorted by (row, offset), pieces back to back from 0, segments 1..k, within L
    n = p.piece_len.size
    assert all(a.dtype == np.int64 and a.size == n for a in
               (p.piece_doc, p.piece_start, p.piece_row, p.piece_offset, p.piece_segment))
    assert np.all(p.piece_len >= 1)
    assert np.all(p.piece_offset + p.piece_len <= L)
    if n:
        new_row = np.r_[True, p.piece_row[1:] != p.piece_row[:-1]]
        assert np.all(np.diff(p.piece_row) >= 0)
        assert np.array_equal(np.unique(p.piece_row), np.arange(p.n_rows))  # no empty row
        assert np.all(p.piece_offset[new_row] == 0) and np.all(p.piece_segment[new_row] == 1)
        cont = ~new_row[1:]
        assert np.all((p.piece_offset[:-1] + p.piece_len[:-1])[cont] == p.piece_offset[1:][cont])
        assert np.all((p.piece_segment[:-1] + 1)[cont] == p.piece_segment[1:][cont])
        # inside a row: (doc, start) ascending, so each document at most once per row
        assert np.all((p.piece_doc[:-1] < p.piece_doc[1:])[cont])

    # rows: segment ids 1,1,..,2,2,..,k then only padding; pad id exactly where segment is 0
    real = seg != 0
    assert np.all(real[:, 0])  # no empty row, segment 1 starts at 0
    assert np.all(np.diff(real.astype(np.int8), axis=1) <= 0)  # padding only at the row end
    step = np.diff(seg, axis=1)[real[:, 1:]]
    assert np.all((step == 0) | (step == 1))
    assert np.array_equal(ids == -1, ~real)

    # tokens: inside a segment one document at consecutive positions
    same = (seg[:, 1:] == seg[:, :-1]) & real[:, 1:]
    assert np.all((ids[:, 1:] - ids[:, :-1])[same] == 1)
    # every kept token exactly once: the sorted output is exactly the expected stream
    kept = kept_per_doc(lengths, cfg)
    expected = np.concatenate([d * STRIDE + np.arange(k, dtype=np.int64)
                               for d, k in enumerate(kept)] + [np.zeros(0, np.int64)])
    assert np.array_equal(np.sort(ids[real]), expected)

    # counters
    assert p.tokens_in == int(lengths.sum()) and p.tokens_kept == int(kept.sum())
    assert p.tokens_dropped == p.tokens_in - p.tokens_kept
    assert p.efficiency == (p.tokens_kept / (p.n_rows * L) if p.n_rows else 0.0)
    assert p.efficiency == (real.sum() / real.size if p.n_rows else 0.0)
    long = int((lengths > L).sum())
    if cfg.mode == "concat" or cfg.long_policy == "split":
        assert p.tokens_kept == p.tokens_in and p.docs_truncated == 0
    else:
        assert p.docs_truncated == long and p.docs_split == 0
    if cfg.mode != "concat":
        assert p.docs_split == (long if cfg.long_policy == "split" else 0)
        # a document of at most L tokens is never split, and every piece starts at a multiple of L
        short = (lengths >= 1) & (lengths <= L)
        pieces = np.bincount(p.piece_doc, minlength=lengths.size)
        assert np.all(pieces[short] == 1)
        assert np.all(p.piece_start % L == 0)
    else:
        spans = np.bincount(p.piece_doc, minlength=lengths.size)
        assert p.docs_split == int((spans > 1).sum())
        assert int((real.sum(axis=1) < L).sum()) <= 1  # only the last row may be partial
    if cfg.mode == "pad":
        assert p.n_rows == n
    assert p.n_rows >= math.ceil(p.tokens_kept / L)
    return p, int((seg.max(axis=1) > 1).sum()) if p.n_rows else 0


# ------------------------------------------------------------------------------------------------
# kernels against their reference twins


@FEW
@given(lengths_and_L(), st.booleans())
def test_split_pieces_matches_reference(case: tuple[np.ndarray, int], truncate: bool) -> None:
    lengths, L = case
    got, want = kernels.split_pieces(lengths, L, truncate), kernels.split_pieces_reference(lengths, L, truncate)
    for g, w in zip(got[:3], want[:3], strict=True):
        assert np.array_equal(g, w)
    assert got[3:] == want[3:]


@FEW
@given(lengths_and_L())
def test_concat_pieces_matches_reference(case: tuple[np.ndarray, int]) -> None:
    lengths, L = case
    got, want = kernels.concat_pieces(lengths, L), kernels.concat_pieces_reference(lengths, L)
    for g, w in zip(got[:4], want[:4], strict=True):
        assert np.array_equal(g, w)
    assert got[4] == want[4]


@FEW
@given(lengths_and_L(max_docs=60), st.integers(1, 70), st.booleans())
def test_bfd_rows_matches_reference(case: tuple[np.ndarray, int], window: int, truncate: bool
                                    ) -> None:
    lengths, L = case
    doc, _, size, _, _ = kernels.split_pieces(lengths, L, truncate)
    row, n_rows = kernels.bfd_rows(size, doc, window, L)
    want_row, want_n = kernels.bfd_rows_reference(size, doc, window, L)
    assert n_rows == want_n
    assert np.array_equal(row, want_row)
    # quality: never below the lower bound; windows never share a row
    assert n_rows >= math.ceil(size.sum() / L)
    if size.size:
        assert np.all(np.bincount(row, weights=size, minlength=n_rows) <= L)
        assert all(len(set(doc[row == r] // window)) == 1 for r in range(n_rows))


@FEW
@given(st.integers(1, 12).flatmap(lambda r: st.tuples(
    st.just(r), st.lists(st.tuples(st.integers(0, r - 1), st.integers(1, 9)), max_size=40))))
def test_layout_rows_matches_reference(case: tuple[int, list[tuple[int, int]]]) -> None:
    n_rows, pieces = case
    row = np.array([r for r, _ in pieces], np.int64)
    size = np.array([s for _, s in pieces], np.int64)
    doc = np.arange(row.size, dtype=np.int64) // 2  # (doc, start) ascending, as plan() passes them
    start = (np.arange(row.size, dtype=np.int64) % 2) * 100
    for row_order in (np.zeros(0, np.int64), np.random.default_rng(n_rows).permutation(n_rows)):
        got = kernels.layout_rows(doc, start, size, row, n_rows, row_order)
        want = kernels.layout_rows_reference(doc, start, size, row, n_rows, row_order)
        for g, w in zip(got, want, strict=True):
            assert np.array_equal(g, w)
    grouped = np.sort(row)  # the concat/pad fast path: pieces already grouped by row
    none = np.zeros(0, np.int64)
    for g, w in zip(kernels.layout_rows(doc, start, size, grouped, n_rows, none),
                    kernels.layout_rows_reference(doc, start, size, grouped, n_rows, none), strict=True):
        assert np.array_equal(g, w)


@FEW
@given(lengths_and_L(), st.sampled_from(COMBOS), st.integers(0, 3), st.data())
def test_fill_rows_kernel_matches_reference(case: tuple[np.ndarray, int], combo: tuple[str, str],
                                            seed: int, data: st.DataObject) -> None:
    lengths, L = case
    p = plan(lengths, PackConfig(seq_len=L, mode=combo[0], long_policy=combo[1], seed=seed))
    lo = data.draw(st.integers(0, p.n_rows))
    hi = data.draw(st.integers(lo, p.n_rows))
    tokens = encoded_tokens(lengths)
    loss = (tokens % 3 == 0).astype(np.uint8)
    k_lo, k_hi = np.searchsorted(p.piece_row, [lo, hi])
    args = [a[k_lo:k_hi] for a in (p.piece_doc, p.piece_start, p.piece_len, p.piece_row,
                                    p.piece_offset, p.piece_segment)]
    outs = [(np.empty((hi - lo, L), np.int64), np.empty((hi - lo, L), np.uint16),
             np.empty((hi - lo, L), np.uint8)) for _ in range(2)]
    kernels.fill_rows(*args, lo, tokens, doc_offsets(lengths), loss, -1, *outs[0])
    kernels.fill_rows_reference(*args, lo, tokens, doc_offsets(lengths), loss, -1, *outs[1])
    for g, w in zip(*outs, strict=True):
        assert np.array_equal(g, w)


# ------------------------------------------------------------------------------------------------
# invariants of whole plans


@FEW
@given(lengths_and_L(), st.sampled_from(COMBOS), st.booleans(), st.integers(1, 50))
def test_invariants_hypothesis(case: tuple[np.ndarray, int], combo: tuple[str, str],
                               shuffle: bool, window: int) -> None:
    lengths, L = case
    check_invariants(lengths, PackConfig(seq_len=L, mode=combo[0], long_policy=combo[1],
                                         shuffle=shuffle, window_docs=window))


@pytest.mark.parametrize("mode,policy", COMBOS)
@pytest.mark.parametrize("L", [64, 257])
def test_invariants_realistic(mode: str, policy: str, L: int) -> None:
    rng = np.random.default_rng(L)
    lengths = realistic_lengths(rng, 3000, L)
    assert (lengths > L).sum() > 10 and (lengths == 0).sum() > 10  # the data exercises long docs
    p, multi = check_invariants(lengths, PackConfig(seq_len=L, mode=mode, long_policy=policy,
                                                    window_docs=1000, seed=3))
    if mode == "pad":
        assert multi == 0
    else:  # guard: the checks above saw real packing, not one document per row
        assert multi > p.n_rows // 2
    if mode == "bfd":
        assert p.efficiency > 0.97  # many short documents fill the gaps left by long ones
        assert p.efficiency > plan(lengths, PackConfig(seq_len=L, mode="pad",
                                                       long_policy=policy)).efficiency + 0.3


@FEW
@given(lengths_and_L(max_docs=60), st.booleans(), st.integers(1, 30))
def test_bfd_row_count_matches_reference(case: tuple[np.ndarray, int], truncate: bool,
                                         window: int) -> None:
    lengths, L = case
    cfg = PackConfig(seq_len=L, long_policy="truncate" if truncate else "split", window_docs=window)
    p = plan(lengths, cfg)
    doc, _, size, _, _ = kernels.split_pieces_reference(lengths, L, truncate)
    assert p.n_rows == kernels.bfd_rows_reference(size, doc, window, L)[1]
    assert p.n_rows >= math.ceil(p.tokens_kept / L)


def test_bfd_hand_example() -> None:
    # L=10. Longest first: 8(d6) new row A; 7(d3) new B; 6(d0) new C; 5(d5) fits none (room 2,3,4)
    # -> new D; 4(d1) -> C (room 4, exact); 3(d2) -> B; 2(d4) -> A. D keeps 5 tokens of padding.
    p = plan(np.array([6, 4, 3, 7, 2, 5, 8]), PackConfig(seq_len=10, shuffle=False))
    assert p.n_rows == 4 and p.tokens_kept == 35 and p.efficiency == 35 / 40
    assert p.piece_doc.tolist() == [4, 6, 2, 3, 0, 1, 5]
    assert p.piece_row.tolist() == [0, 0, 1, 1, 2, 2, 3]
    assert p.piece_offset.tolist() == [0, 2, 0, 3, 0, 6, 0]
    assert p.piece_segment.tolist() == [1, 2, 1, 2, 1, 2, 1]
    assert p.piece_len.tolist() == [2, 8, 3, 7, 6, 4, 5]


def test_bfd_hand_example_split_and_ties() -> None:
    # L=10: doc 0 (23 tokens) -> full chunks [0,10) and [10,20) in rows 0 and 1, remainder 3.
    # Then 6(d1) row 2 (room 4), 6(d2) row 3 (room 4), 3(d0 rem) ties between rows 2 and 3: the
    # row that reached room 4 last (row 3) wins -> room 1; 2(d3) -> row 2 (room 4 is the best fit).
    p = plan(np.array([23, 6, 6, 2]), PackConfig(seq_len=10, shuffle=False))
    assert p.n_rows == 4 and p.docs_split == 1
    assert list(zip(p.piece_row.tolist(), p.piece_doc.tolist(), p.piece_start.tolist(), strict=True)) == [
        (0, 0, 0), (1, 0, 10), (2, 1, 0), (2, 3, 0), (3, 0, 20), (3, 2, 0)]


def test_bfd_windows_never_share_rows() -> None:
    rng = np.random.default_rng(7)
    lengths = realistic_lengths(rng, 500, 128)
    p = plan(lengths, PackConfig(seq_len=128, window_docs=100, shuffle=False))
    per_window = sum(plan(lengths[w:w + 100], PackConfig(seq_len=128)).n_rows
                     for w in range(0, 500, 100))
    assert p.n_rows == per_window
    windows_per_row = [np.unique(p.piece_doc[p.piece_row == r] // 100).size for r in range(p.n_rows)]
    assert max(windows_per_row) == 1
    assert plan(lengths, PackConfig(seq_len=128, window_docs=500)).n_rows <= per_window


# ------------------------------------------------------------------------------------------------
# determinism, shuffle, edge cases


def _arrays(p: PackPlan) -> list[np.ndarray]:
    return [p.piece_doc, p.piece_start, p.piece_len, p.piece_row, p.piece_offset, p.piece_segment]


def test_deterministic_and_seed_changes_row_order() -> None:
    lengths = realistic_lengths(np.random.default_rng(1), 2000, 256)
    a, b = plan(lengths, PackConfig(seq_len=256, seed=5)), plan(lengths.copy(), PackConfig(
        seq_len=256, seed=5))
    assert all(np.array_equal(x, y) for x, y in zip(_arrays(a), _arrays(b), strict=True))
    c = plan(lengths, PackConfig(seq_len=256, seed=6))
    assert c.n_rows == a.n_rows and not np.array_equal(a.piece_doc, c.piece_doc)


@pytest.mark.parametrize("mode", ["bfd", "concat", "pad"])
def test_shuffle_is_the_documented_permutation(mode: str) -> None:
    lengths = realistic_lengths(np.random.default_rng(2), 800, 100)
    fixed = plan(lengths, PackConfig(seq_len=100, mode=mode, shuffle=False))
    mixed = plan(lengths, PackConfig(seq_len=100, mode=mode, seed=11))
    perm = np.random.default_rng(11).permutation(fixed.n_rows)
    assert not np.array_equal(perm, np.arange(fixed.n_rows))
    for name in ("input_ids", "segment_ids"):
        assert np.array_equal(materialise(mixed, lengths)[name],
                              materialise(fixed, lengths)[name][perm])


def test_plan_arrays_are_read_only() -> None:
    p = plan(np.array([3, 4]), PackConfig(seq_len=8))
    with pytest.raises(ValueError):
        p.piece_row[0] = 1


@pytest.mark.parametrize("mode,policy", COMBOS)
def test_empty_input(mode: str, policy: str) -> None:
    cfg = PackConfig(seq_len=16, mode=mode, long_policy=policy)
    for lengths in (np.zeros(0, np.int64), np.zeros(5, np.int64)):
        p = plan(lengths, cfg)
        assert p.n_rows == 0 and p.piece_len.size == 0 and p.efficiency == 0.0
        assert p.tokens_in == p.tokens_kept == 0
        out = fill_rows(p, np.zeros(0, np.int32), np.zeros(lengths.size + 1, np.int64), 0, 0,
                        pad_id=0, ids_dtype=np.uint16, seg_dtype=np.uint16)
        assert out["input_ids"].shape == out["segment_ids"].shape == (0, 16)


@pytest.mark.parametrize("mode,policy", COMBOS)
def test_zero_length_docs_produce_no_piece(mode: str, policy: str) -> None:
    lengths = np.array([0, 5, 0, 0, 3, 0, 12, 0])
    p, _ = check_invariants(lengths, PackConfig(seq_len=8, mode=mode, long_policy=policy))
    assert set(p.piece_doc.tolist()) == {1, 4, 6}


@pytest.mark.parametrize("mode,policy", COMBOS)
def test_seq_len_one(mode: str, policy: str) -> None:
    lengths = np.array([3, 0, 1, 2])
    p, multi = check_invariants(lengths, PackConfig(seq_len=1, mode=mode, long_policy=policy))
    assert multi == 0 and np.all(p.piece_len == 1) and p.efficiency == 1.0
    assert p.n_rows == (6 if mode == "concat" or policy == "split" else 3)


@pytest.mark.parametrize("mode,policy", COMBOS)
def test_loss_mask_propagates(mode: str, policy: str) -> None:
    rng = np.random.default_rng(4)
    lengths = realistic_lengths(rng, 300, 64)
    tokens = encoded_tokens(lengths)
    mask = rng.integers(0, 2, tokens.size).astype(np.uint8)
    p = plan(lengths, PackConfig(seq_len=64, mode=mode, long_policy=policy))
    out = materialise(p, lengths, loss_mask=mask)
    ids, lm = out["input_ids"], out["loss_mask"]
    assert lm.dtype == np.uint8 and lm.shape == ids.shape
    real = ids >= 0
    src = doc_offsets(lengths)[ids[real] // STRIDE] + ids[real] % STRIDE  # flat source index
    assert np.array_equal(lm[real], mask[src])
    assert np.all(lm[~real] == 0) and lm[real].sum() > 0
    assert "loss_mask" not in materialise(p, lengths)


def test_fill_rows_in_blocks_from_memmap(tmp_path) -> None:
    lengths = realistic_lengths(np.random.default_rng(5), 400, 128)
    tokens = (encoded_tokens(lengths) % 50_000).astype(np.uint32)
    path = tmp_path / "tokens.bin"
    tokens.tofile(path)
    mm = np.memmap(path, dtype=np.uint32, mode="r")
    offsets = doc_offsets(lengths)
    p = plan(lengths, PackConfig(seq_len=128))
    whole = fill_rows(p, tokens, offsets, 0, p.n_rows, pad_id=65535, ids_dtype=np.uint16,
                      seg_dtype=np.uint16)
    bounds = [0, 1, 1, 17, p.n_rows // 2, p.n_rows]
    blocks = [fill_rows(p, mm, offsets, lo, hi, pad_id=65535, ids_dtype=np.uint16,
                        seg_dtype=np.uint16) for lo, hi in pairwise(bounds)]
    for name in ("input_ids", "segment_ids"):
        assert whole[name].dtype == np.uint16
        assert np.array_equal(np.concatenate([b[name] for b in blocks]), whole[name])
    assert np.array_equal(whole["input_ids"] == 65535, whole["segment_ids"] == 0)


def test_large_blocks_same_bytes_from_aligned_outputs() -> None:
    """Outputs of 4 MiB or more start on a 2 MiB boundary (huge pages, see pack._empty_rows) and
    hold the same invariants and loss mask; small ones are plain arrays."""
    rng = np.random.default_rng(6)
    L = 256
    lengths = realistic_lengths(rng, 8000, L)
    p, _ = check_invariants(lengths, PackConfig(seq_len=L))  # int64 rows: > 4 MiB here
    assert p.n_rows * L * 8 >= 4 << 20
    tokens = encoded_tokens(lengths)
    mask = (rng.random(tokens.size) < 0.5).astype(np.uint8)
    out = materialise(p, lengths, loss_mask=mask)
    ids, lm = out["input_ids"], out["loss_mask"]
    assert ids.ctypes.data % (2 << 20) == 0
    for a in out.values():
        assert a.flags.c_contiguous and a.flags.writeable and a.shape == (p.n_rows, L)
    real = ids >= 0
    src = doc_offsets(lengths)[ids[real] // STRIDE] + ids[real] % STRIDE
    assert np.array_equal(lm[real], mask[src]) and np.all(lm[~real] == 0)
    # a small block (under 4 MiB) has the same rows
    small = fill_rows(p, tokens, doc_offsets(lengths), 0, 3, pad_id=-1, ids_dtype=np.int64,
                      seg_dtype=np.int64)
    assert small["input_ids"].shape == (3, L)
    assert np.array_equal(small["input_ids"], ids[:3])


@pytest.mark.parametrize("mode", ["bfd", "concat", "pad"])
def test_fill_rows_into_reused_buffers_equals_fresh(mode: str) -> None:
    """Blocks filled into one reused (dirty) buffer equal blocks filled into fresh arrays: every
    cell of the block's rows is rewritten, nothing of the previous block shows through."""
    rng = np.random.default_rng(11)
    L = 64
    lengths = realistic_lengths(rng, 500, L)
    p = plan(lengths, PackConfig(seq_len=L, mode=mode))
    tokens, offsets = encoded_tokens(lengths), doc_offsets(lengths)
    mask = (rng.random(tokens.size) < 0.5).astype(np.uint8)
    kw = {"pad_id": -1, "ids_dtype": np.int64, "seg_dtype": np.int32, "loss_mask": mask}
    block = 37
    bufs = row_buffers(block, L, np.int64, np.int32, loss_mask=True)
    for a in bufs.values():
        a[...] = 99  # garbage a fresh np.empty could hold too
    for lo in range(0, p.n_rows, block):
        hi = min(lo + block, p.n_rows)
        fresh = fill_rows(p, tokens, offsets, lo, hi, **kw)
        reused = fill_rows(p, tokens, offsets, lo, hi, out=bufs, **kw)
        assert set(reused) == set(fresh) == {"input_ids", "segment_ids", "loss_mask"}
        for name, a in reused.items():
            assert a.shape == (hi - lo, L) and np.shares_memory(a, bufs[name])
            assert np.array_equal(a, fresh[name]), name


def test_fill_rows_out_buffer_errors() -> None:
    lengths = np.array([5, 9, 3])
    p = plan(lengths, PackConfig(seq_len=16))
    tokens, offsets = encoded_tokens(lengths), doc_offsets(lengths)
    kw = {"pad_id": 0, "ids_dtype": np.uint16, "seg_dtype": np.uint16}
    bad = [row_buffers(p.n_rows - 1, 16, np.uint16, np.uint16),   # too few rows
           row_buffers(p.n_rows, 8, np.uint16, np.uint16),        # wrong L
           row_buffers(p.n_rows, 16, np.uint32, np.uint16),       # wrong ids dtype
           {"input_ids": np.zeros((p.n_rows, 16), np.uint16)}]    # segment_ids missing
    for out in bad:
        with pytest.raises(ValueError, match="out\\["):
            fill_rows(p, tokens, offsets, 0, p.n_rows, out=out, **kw)
    with pytest.raises(ValueError, match="loss_mask"):  # a mask to fill but no buffer for it
        fill_rows(p, tokens, offsets, 0, p.n_rows, loss_mask=np.ones(tokens.size, np.uint8),
                  out=row_buffers(p.n_rows, 16, np.uint16, np.uint16), **kw)


# ------------------------------------------------------------------------------------------------
# errors name the fix


@pytest.mark.parametrize("kwargs,flag", [
    ({"seq_len": 0}, "--seq-len"), ({"seq_len": 2.5}, "--seq-len"), ({"seq_len": True}, "--seq-len"),
    ({"mode": "ffd"}, "--pack"), ({"long_policy": "drop"}, "--long-docs"),
    ({"window_docs": 0}, "--pack-window"), ({"seed": -1}, "--seed")])
def test_config_errors_name_the_flag(kwargs: dict[str, object], flag: str) -> None:
    with pytest.raises(ValueError, match=flag):
        PackConfig(**kwargs)  # type: ignore[arg-type]


def test_bad_lengths_rejected() -> None:
    for bad in (np.array([3, -1]), np.array([[1, 2]]), np.array([1.5, 2.0])):
        with pytest.raises(ValueError, match="lengths"):
            plan(bad, PackConfig())


def test_fill_rows_errors() -> None:
    lengths = np.array([300, 5, 7])
    p = plan(lengths, PackConfig(seq_len=400, shuffle=False))
    tokens, offsets = encoded_tokens(lengths), doc_offsets(lengths)
    ok = {"pad_id": 0, "ids_dtype": np.int64, "seg_dtype": np.uint8}
    with pytest.raises(ValueError, match="out of range"):
        fill_rows(p, tokens, offsets, 0, p.n_rows + 1, **ok)
    with pytest.raises(ValueError, match="pad_id"):
        fill_rows(p, tokens, offsets, 0, 1, pad_id=70_000, ids_dtype=np.uint16, seg_dtype=np.uint8)
    with pytest.raises(ValueError, match="doc_offsets"):
        fill_rows(p, tokens, doc_offsets(np.array([300, 5, 6])), 0, 1, **ok)
    with pytest.raises(ValueError, match="loss_mask"):
        fill_rows(p, tokens, offsets, 0, 1, loss_mask=np.ones(3, np.uint8), **ok)
    many = plan(np.ones(300, np.int64), PackConfig(seq_len=300))
    with pytest.raises(ValueError, match="uint16"):
        fill_rows(many, np.zeros(300, np.int64), doc_offsets(np.ones(300, np.int64)), 0, 1, **ok)
