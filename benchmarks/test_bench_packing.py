"""Packing: fastprep's plan + row filling against TRL ``pack_dataset``, both materialising rows.

Documents: ``bench_pack.py``'s seeded fine-tuning mixture of lengths (short chat turns and long
prose with a tail past L; ``--bench-pack-docs`` of them, L = 2048; tiny: 2,000 at L = 256),
token values ``position % 50000``. Two pairs of equal work, every token kept on both sides:

- ``bfd_split``: fastprep ``plan(mode="bfd", long_policy="split")`` + ``fill_rows`` of every row
  into ``[rows, L]`` uint16 ``input_ids`` and ``segment_ids`` (what the write stage gets) against
  TRL ``pack_dataset(strategy="bfd_split")`` (rows of ``input_ids`` + ``seq_lengths`` in an Arrow
  table). TRL's ``bfd`` is left out: it truncates every document longer than L, which is less
  work and loses tokens.
- ``wrapped``: fastprep ``mode="concat"`` (one stream cut every L tokens, rows shuffled) against
  TRL ``strategy="wrapped"``.

Timed: from the lengths and the token array (fastprep) or the ``datasets.Dataset`` of
``input_ids`` (TRL, built beforehand) to every row materialised in memory. Checked before
timing: fastprep drops no token; every piece of every row holds exactly its document's tokens
and segment id, the pieces of each document cover it once, padding is pad and segment 0; TRL's
rows hold the same multiset of tokens and (``bfd_split``) the same multiset of pieces, content
compared, as fastprep's plan; ``wrapped`` rows are the token stream in order.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from suite import BENCH_HINT, Bench, Sizes

pytestmark = pytest.mark.benchmark(group="packing")

FASTPREP_MODE = {"bfd_split": "bfd", "wrapped": "concat"}


@dataclass(frozen=True)
class Docs:
    lengths: np.ndarray     # int64 [n]
    offsets: np.ndarray     # int64 [n + 1]
    tokens: np.ndarray      # uint16 [tokens]: what fastprep fills rows from
    seq_len: int

    @property
    def n(self) -> int:
        return self.lengths.size

    @property
    def total(self) -> int:
        return int(self.offsets[-1])


@pytest.fixture(scope="module")
def docs(sizes: Sizes) -> Docs:
    from bench_pack import make_lengths

    lengths = make_lengths(sizes.pack_docs, seed=0)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    tokens = (np.arange(offsets[-1], dtype=np.int64) % 50_000).astype(np.uint16)
    return Docs(lengths, offsets, tokens, sizes.pack_seq_len)


def _sizes(docs: Docs) -> dict[str, Any]:
    return {"documents": docs.n, "tokens": docs.total, "seq_len": docs.seq_len}


def _cfg(pair: str, docs: Docs) -> Any:
    from fastprep.stages.pack import PackConfig

    return PackConfig(seq_len=docs.seq_len, mode=FASTPREP_MODE[pair], long_policy="split")  # type: ignore[arg-type]


def _piece_hashes(docs: Docs, p: Any) -> Counter[int]:
    """The content of every piece of a fastprep plan, hashed: what TRL's pieces must match."""
    src = docs.offsets[p.piece_doc] + p.piece_start
    return Counter(hash(docs.tokens[s:s + n].tobytes()) for s, n in zip(src.tolist(),
                                                                         p.piece_len.tolist()))


def check_fastprep(docs: Docs, p: Any, rows: dict[str, np.ndarray]) -> None:
    """Nothing dropped; every piece holds its document's tokens and segment id; each document
    is covered once by its pieces; everything else is padding."""
    ids, seg = rows["input_ids"], rows["segment_ids"]
    L = docs.seq_len
    assert p.tokens_in == p.tokens_kept == docs.total and p.docs_truncated == 0
    assert ids.shape == seg.shape == (p.n_rows, L)
    assert int((seg != 0).sum()) == docs.total and not ids[seg == 0].any()
    src = docs.offsets[p.piece_doc] + p.piece_start
    for r, o, s, n, g in zip(p.piece_row.tolist(), p.piece_offset.tolist(), src.tolist(),
                             p.piece_len.tolist(), p.piece_segment.tolist()):
        assert np.array_equal(ids[r, o:o + n], docs.tokens[s:s + n]), f"row {r}: wrong tokens"
        assert (seg[r, o:o + n] == g).all(), f"row {r}: wrong segment id"
    order = np.lexsort((p.piece_start, p.piece_doc))
    d, st, ln = p.piece_doc[order], p.piece_start[order], p.piece_len[order]
    first = np.concatenate([[True], d[1:] != d[:-1]])
    prev_end = np.concatenate([[0], (st + ln)[:-1]])
    assert np.array_equal(np.unique(d), np.flatnonzero(docs.lengths > 0))
    assert np.all(np.where(first, st == 0, st == prev_end)), "pieces overlap or leave a gap"
    last = np.concatenate([d[1:] != d[:-1], [True]])
    assert np.array_equal((st + ln)[last], docs.lengths[d[last]]), "a document is not covered"


def check_trl(docs: Docs, pair: str, packed: Any) -> tuple[int, int]:
    """The same tokens as the input and, for bfd_split, the same pieces as fastprep's plan.
    Returns (rows, tokens kept)."""
    from fastprep.stages.pack import plan

    table = packed.with_format("arrow")[:]
    flat = table["input_ids"].combine_chunks().values.to_numpy().astype(np.uint16)
    assert flat.size == docs.total, f"TRL kept {flat.size} of {docs.total} tokens"
    assert np.array_equal(np.bincount(flat, minlength=1 << 16),
                          np.bincount(docs.tokens, minlength=1 << 16))
    if pair == "wrapped":
        assert np.array_equal(flat, docs.tokens), "wrapped rows are not the stream in order"
    else:
        lens = table["seq_lengths"].combine_chunks().values.to_numpy().astype(np.int64)
        starts = np.concatenate([[0], np.cumsum(lens)[:-1]])
        trl = Counter(hash(flat[s:s + n].tobytes()) for s, n in zip(starts.tolist(), lens.tolist()))
        assert trl == _piece_hashes(docs, plan(docs.lengths, _cfg(pair, docs))), \
            "TRL's pieces differ from fastprep's"
    return len(table), flat.size


@pytest.mark.parametrize("system", ["fastprep", "trl"])
@pytest.mark.parametrize("pair", ["bfd_split", "wrapped"])
def test_packing(bench: Bench, docs: Docs, pair: str, system: str) -> None:
    if system == "fastprep":
        from fastprep.stages.pack import fill_rows, plan

        cfg = _cfg(pair, docs)

        def run() -> tuple[Any, dict[str, np.ndarray]]:
            p = plan(docs.lengths, cfg)
            return p, fill_rows(p, docs.tokens, docs.offsets, 0, p.n_rows, pad_id=0,
                                ids_dtype=np.uint16, seg_dtype=np.uint16)

        def check(out: tuple[Any, dict[str, np.ndarray]]) -> None:
            check_fastprep(docs, *out)
            bench.info.update(rows=out[0].n_rows, efficiency=round(out[0].efficiency, 5),
                              documents_split=out[0].docs_split)
        bench(run, check, role="fastprep", pair=pair, mode=f"{cfg.mode}+{cfg.long_policy}",
              **_sizes(docs))
        return
    pytest.importorskip("datasets", reason=f"datasets is not installed: {BENCH_HINT}")
    trl = pytest.importorskip("trl", reason=f"trl is not installed: {BENCH_HINT}")
    import datasets

    from bench_pack import trl_dataset

    datasets.disable_progress_bars()
    ds = trl_dataset(docs.lengths, docs.tokens.astype(np.int32), docs.offsets)

    def run_trl() -> Any:
        return trl.pack_dataset(ds, docs.seq_len, strategy=pair)

    def check_t(packed: Any) -> None:
        rows, kept = check_trl(docs, pair, packed)
        bench.info.update(rows=rows, efficiency=round(kept / (rows * docs.seq_len), 5))
    bench(run_trl, check_t, role="peer", pair=pair, strategy=pair, trl=trl.__version__,
          **_sizes(docs))
