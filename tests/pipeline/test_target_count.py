"""The manifest's ``target_tokens`` counts what training learns: positions whose previous token is
in the same document and whose loss mask is 1 (the loader's ``labels != -100``)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from conftest import make_texts, prep_config, write_jsonl
from fastprep.dataset.format import open_dataset
from fastprep.pipeline.run import prepare


def _reference(ds_path: Path) -> tuple[int, int]:
    """(targets by the labels rule, loss-mask ones) over every row, one position at a time."""
    ds = open_dataset(ds_path)
    targets = ones = 0
    for shard in ds.shards:
        seg = np.asarray(shard.arrays["segment_ids"])
        mask = np.asarray(shard.arrays["loss_mask"]) if "loss_mask" in shard.arrays else None
        for r in range(seg.shape[0]):
            for t in range(seg.shape[1]):
                m = 1 if mask is None else int(mask[r, t])
                ones += int(seg[r, t] != 0 and m == 1)
                if t > 0 and seg[r, t] != 0 and seg[r, t] == seg[r, t - 1] and m == 1:
                    targets += 1
    return targets, ones


def test_target_tokens_exclude_every_document_and_piece_start(tmp_path: Path,
                                                               tokenizer_dir: Path) -> None:
    """Bug caught: counting the loss mask's ones (68 where the loader trains on 64): the first
    token of a document, and of every piece of a split one, is never predicted."""
    texts = make_texts(60, seed=2, min_words=5, max_words=120)
    p = write_jsonl(tmp_path / "d.jsonl",
                    [{"text": t} for t in texts[:20]]
                    + [{"prompt": t[:25], "completion": t[25:]} for t in texts[20:40]]
                    + [{"messages": [{"role": "user", "content": t[:20]},
                                     {"role": "assistant", "content": t[20:]}]} for t in texts[40:]])
    stats = prepare(prep_config([p], tmp_path / "ds", tokenizer_dir, seq_len=48))
    assert stats.counts["documents_split"] > 0  # guard: pieces start inside documents too
    targets, ones = _reference(tmp_path / "ds")
    assert stats.counts["target_tokens"] == targets < ones
    if importlib.util.find_spec("torch") is not None:
        from fastprep.train.loader import PackedLoader, PackedRows

        loader = PackedLoader(PackedRows(tmp_path / "ds"), 4, shuffle=False, drop_last=False,
                              num_workers=0)
        assert sum(b["n_targets"] for b in loader) == targets


def test_target_tokens_of_plain_text(tmp_path: Path, tokenizer_dir: Path) -> None:
    """Without a loss mask every token of a piece but its first is a target."""
    p = write_jsonl(tmp_path / "d.jsonl", [{"text": t} for t in make_texts(40, seed=5)])
    stats = prepare(prep_config([p], tmp_path / "ds", tokenizer_dir, seq_len=64))
    pieces = sum(int(np.asarray(s.arrays["segment_ids"]).astype(np.int64).max(axis=1).sum())
                 for s in open_dataset(tmp_path / "ds").shards)  # segments are 1..k per row
    assert stats.counts["target_tokens"] == stats.counts["tokens_kept"] - pieces
    assert stats.counts["target_tokens"] == _reference(tmp_path / "ds")[0]
