"""The write stage's rows (fastprep.pipeline.rows): blocks read from the spill equal one whole fill."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fastprep.pipeline.rows import FileSource, block_pieces, row_blocks
from fastprep.stages.pack import PackConfig, fill_rows, plan


@pytest.mark.parametrize("mode,long_policy,mask", [("bfd", "split", True), ("bfd", "truncate", False),
                                                   ("concat", "split", True), ("pad", "split", False)])
def test_row_blocks_from_spill_equal_whole_fill(tmp_path: Path, mode: str, long_policy: str,
                                                mask: bool) -> None:
    """The write stage's block reader (pieces read from the spill files into reused buffers)
    gives exactly the rows of filling the whole plan from tokens in memory, whatever the block
    size; a block reads only its pieces' tokens (at most rows x L), even when documents much
    longer than L are split over rows all through the shuffled plan."""
    rng = np.random.default_rng(4)
    L = 32
    lengths = rng.integers(0, 50, 400)
    lengths[rng.choice(400, 6, replace=False)] = rng.integers(10 * L, 40 * L, 6)  # long documents
    lengths[::50] = 0  # removed duplicates: no piece
    offsets = np.zeros(lengths.size + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    tokens = rng.integers(0, 60_000, int(offsets[-1])).astype(np.uint16)
    loss = rng.integers(0, 2, tokens.size).astype(np.uint8) if mask else None
    (tmp_path / "ids.bin").write_bytes(tokens.tobytes())
    if mask:
        (tmp_path / "mask.bin").write_bytes(loss.tobytes())
    p = plan(lengths, PackConfig(seq_len=L, mode=mode, long_policy=long_policy))
    whole = fill_rows(p, tokens, offsets, 0, p.n_rows, pad_id=7, ids_dtype=np.uint16,
                      seg_dtype=np.uint16, loss_mask=loss)
    for block in (1, 5, 64, p.n_rows + 3):
        got = {k: [] for k in whole}
        source = FileSource(tmp_path / "ids.bin", tmp_path / "mask.bin" if mask else None)
        for rows in row_blocks(p, offsets, source, mask, block, 7,
                               np.dtype(np.uint16), np.dtype(np.uint16)):
            assert set(rows) == set(whole)
            for k, a in rows.items():
                got[k].append(a.copy())  # the next block overwrites the buffers
        for k in whole:
            assert np.array_equal(np.concatenate(got[k]), whole[k]), (block, k)
        for lo in range(0, p.n_rows, block):
            hi = min(lo + block, p.n_rows)
            _, starts, lens = block_pieces(p, offsets, lo, hi)
            assert lens.sum() <= (hi - lo) * L
            assert np.all(np.diff(starts) > 0)  # one forward pass through the spill
