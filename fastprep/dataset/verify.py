"""``fastprep verify``: a dataset's files agree with its manifest and its rows obey the format.

Checks, stopping at the first problem: the manifest and file sizes (:func:`fastprep.dataset.format.open_dataset`),
every file's SHA-256, token ids < vocab size, segment structure (each row starts with segment 1,
segments step by 0 or +1, padding only at the row end and only with the pad id), ``loss_mask`` in
{0, 1} and 0 at padding, ``source`` naming a source of the manifest's mix, the manifest's row
and token counts, ``documents.bin`` against its checksum and the rows (every training token of
it is in the rows, each source's tokens as its rows hold them), and a validation set in
``val/`` the same way. Vectorised numpy over blocks of rows: about the speed of reading the
files.
"""

from __future__ import annotations

import os

import numpy as np

from pathlib import Path

from .format import MANIFEST, VAL_DIR, DatasetError, PackedDataset, open_dataset, read_documents


def _check_block(name: str, lo: int, ids: np.ndarray, seg: np.ndarray, mask: np.ndarray | None,
                 vocab: int, pad_id: int) -> int:
    """Validate rows [lo, lo+n) of a shard; returns the number of real tokens."""
    def fail(what: str, where: np.ndarray) -> None:
        r = int(np.argwhere(where)[0][0])
        raise DatasetError(f"{name} row {lo + r}: {what}")

    if ids.size and int(ids.max()) >= vocab:
        fail(f"token id >= vocab size {vocab}", (ids >= vocab).any(axis=1))
    seg = seg.astype(np.int64)
    real = seg != 0
    if seg.shape[1]:
        fail_first = seg[:, 0] != 1
        if fail_first.any():
            fail("does not start with segment 1 (empty row or bad numbering)", fail_first)
        step = np.diff(seg, axis=1)
        # steps between two real tokens: a step out of padding is a gap, named by pad_inside
        bad_step = ((step != 0) & (step != 1) & real[:, 1:] & real[:, :-1]).any(axis=1)
        if bad_step.any():
            fail("segment ids do not step by 0 or +1", bad_step)
        pad_inside = (real[:, 1:] & ~real[:, :-1]).any(axis=1)
        if pad_inside.any():
            fail("padding before the end of the row", pad_inside)
        bad_pad = ((~real) & (ids != pad_id)).any(axis=1)
        if bad_pad.any():
            fail(f"padding position holds a token other than pad id {pad_id}", bad_pad)
    if mask is not None:
        bad_mask = (mask > 1).any(axis=1) | ((~real) & (mask != 0)).any(axis=1)
        if bad_mask.any():
            fail("loss_mask outside {0,1} or non-zero at padding", bad_mask)
    return int(real.sum())


def verify(path: str | os.PathLike[str], *, block_rows: int = 4096) -> PackedDataset:
    """Raise :class:`DatasetError` naming the first problem; return the opened dataset if sound."""
    ds = open_dataset(path, verify_checksums=True)
    m = ds.manifest
    vocab = m.vocab_size
    pad_id = ds.pad_id
    tokens = 0
    for shard in ds.shards:
        for lo in range(0, shard.rows, block_rows):
            hi = min(lo + block_rows, shard.rows)
            arr = shard.arrays
            tokens += _check_block(shard.name, lo, np.asarray(arr["input_ids"][lo:hi]),
                                   np.asarray(arr["segment_ids"][lo:hi]),
                                   np.asarray(arr["loss_mask"][lo:hi]) if "loss_mask" in arr else None,
                                   vocab, pad_id)
    if m.rows != ds.rows:
        raise DatasetError(f"{path}: manifest says {m.rows} rows, shards hold {ds.rows}")
    counts = m.counts
    if "tokens_kept" in counts and int(counts["tokens_kept"]) != tokens:
        raise DatasetError(f"{path}: manifest counts {counts['tokens_kept']} tokens, shards hold {tokens}")
    by_source = _check_sources(ds, block_rows)
    _check_documents(ds, by_source)
    val = Path(path) / VAL_DIR
    if (val / MANIFEST).is_file():
        verify(val, block_rows=block_rows)
    return ds


def _check_sources(ds: PackedDataset, block_rows: int) -> np.ndarray | None:
    """``source`` names a source of the mix; returns the real tokens per source."""
    if "source" not in ds.manifest.arrays:
        return None
    n = len(ds.manifest.source_names)
    tokens = np.zeros(n, np.int64)
    for shard in ds.shards:
        src, seg = shard.arrays["source"], shard.arrays["segment_ids"]
        for lo in range(0, shard.rows, block_rows):
            hi = min(lo + block_rows, shard.rows)
            s = np.asarray(src[lo:hi]).astype(np.int64)
            if s.size and int(s.max()) >= n:
                r = int(np.argmax(s >= n))
                raise DatasetError(f"{shard.name} row {lo + r}: source {int(s[r])}, the mix has "
                                   f"{n} sources")
            real = np.count_nonzero(np.asarray(seg[lo:hi]), axis=1)
            tokens += np.bincount(s, weights=real, minlength=n).astype(np.int64)
    return tokens


def _check_documents(ds: PackedDataset, by_source: np.ndarray | None) -> None:
    """documents.bin matches its checksum, and the tokens it says the training rows hold are
    the rows' tokens (in total and per source)."""
    docs = read_documents(ds, verify_checksum=True)
    if docs is None:
        return
    m = ds.manifest
    recipe_pack = m.recipe.get("pack", {})
    tokens = docs["tokens"].astype(np.int64)
    if recipe_pack.get("mode") != "concat" and recipe_pack.get("long_policy") == "truncate":
        tokens = np.minimum(tokens, m.seq_len)
    used = tokens * docs["uses"]
    if "tokens_kept" in m.counts and int(used.sum()) != int(m.counts["tokens_kept"]):
        raise DatasetError(f"{ds.path}: documents.bin puts {int(used.sum())} tokens into the "
                           f"training rows, the manifest counts {m.counts['tokens_kept']}")
    if by_source is not None:
        per = np.bincount(docs["source"], weights=used, minlength=by_source.size).astype(np.int64)
        if not np.array_equal(per[:by_source.size], by_source) or per.size > by_source.size:
            raise DatasetError(f"{ds.path}: documents.bin gives the sources {per.tolist()} "
                               f"training tokens, the rows' source array {by_source.tolist()}")
