"""``verify`` (fastprep.dataset.verify) catches every structural corruption it claims to, by name,
with the checksums re-signed.

A corruption that leaves the recorded SHA-256 stale is caught by the checksum whatever the
structural checks do, so a test built that way passes with every structural check deleted. Here
each corruption is written into the shard array, its file's SHA-256 recomputed and put back in
the manifest, and ``open_dataset(verify_checksums=True)`` is shown to accept the result: only the
structural check can still refuse it, and the message must name the problem, the shard and the
row (rows counted within the shard, across verify's blocks).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from fastprep import verify
from fastprep.dataset.format import (MANIFEST, DatasetError, ids_dtype, open_dataset,
                                     segment_dtype, sha256_file)
from fastprep.dataset.write import ShardWriter

L = 16
ROWS = 12
SHARD_ROWS = 8
PAD = 0
DOCS = (5, 4, 3)  # documents per row, then L - 12 = 4 padding positions


def make_dataset(path: Path, vocab: int = 100) -> Path:
    rng = np.random.default_rng(0)
    seg_row = np.concatenate([np.full(n, k, np.int64) for k, n in enumerate(DOCS, start=1)]
                             + [np.zeros(L - sum(DOCS), np.int64)])
    seg = np.tile(seg_row, (ROWS, 1))
    ids = np.where(seg != 0, rng.integers(1, min(vocab, 1 << 16), (ROWS, L)), PAD)
    if vocab > 1 << 16:
        ids[:, 0] = vocab - 1  # ids that need the wide dtype
    mask = ((seg != 0) & (np.roll(seg, 1, axis=1) == seg)).astype(np.uint8)
    path.mkdir(parents=True)
    w = ShardWriter(path, L, {"input_ids": ids_dtype(vocab), "segment_ids": segment_dtype(L),
                              "loss_mask": np.dtype(np.uint8)}, shard_rows=SHARD_ROWS)
    w.add({"input_ids": ids, "segment_ids": seg, "loss_mask": mask})
    w.finish(tokenizer={"sha256": "0" * 64, "vocab_size": vocab, "bos_id": None, "eos_id": None,
                        "pad_id": PAD},
             counts={"rows": ROWS, "tokens_kept": int((seg != 0).sum())})
    return path


def corrupt_and_resign(path: Path, shard: int, array: str,
                       edit: Callable[[dict[str, np.ndarray]], None]) -> None:
    """Apply ``edit`` to shard ``shard``'s arrays (copies, ``[rows, L]``), write ``array`` back
    and record its new SHA-256 in the manifest, as a careful forger would."""
    mpath = path / MANIFEST
    manifest = json.loads(mpath.read_text())
    entry = manifest["shards"][shard]
    arrays = {a: np.fromfile(path / info["file"], dtype=manifest["dtypes"][a]).reshape(entry["rows"], L)
              for a, info in entry["files"].items()}
    edit(arrays)
    f = path / entry["files"][array]["file"]
    f.write_bytes(np.ascontiguousarray(arrays[array], dtype=manifest["dtypes"][array]).tobytes())
    entry["files"][array]["sha256"] = sha256_file(f)
    mpath.write_text(json.dumps(manifest))


def _set(array: str, row: int, cols: slice | int, value: int | list[int]):
    def edit(a: dict[str, np.ndarray]) -> None:
        a[array][row, cols] = value
    return edit


def _pad_gap(a: dict[str, np.ndarray]) -> None:
    """The last two positions of the second document become padding (pad id, no loss,
    segment 0); the numbering stays 1, 2, 3: the only fault is the gap."""
    a["segment_ids"][3, 7:9] = 0
    a["input_ids"][3, 7:9] = PAD
    a["loss_mask"][3, 7:9] = 0


def _empty_row(a: dict[str, np.ndarray]) -> None:
    a["segment_ids"][3] = 0
    a["input_ids"][3] = PAD
    a["loss_mask"][3] = 0


# (corruption, array re-signed, edit of shard 1's row 3, the message verify must give)
CORRUPTIONS = [
    ("id >= vocab", "input_ids", _set("input_ids", 3, 2, 100), "token id >= vocab size 100"),
    ("segment skip 1 -> 3", "segment_ids", _set("segment_ids", 3, slice(5, 9), 3),
     "segment ids do not step by 0 or \\+1"),
    ("segment goes back", "segment_ids", _set("segment_ids", 3, slice(9, 12), 1),
     "segment ids do not step by 0 or \\+1"),
    ("first segment is not 1", "segment_ids", _set("segment_ids", 3, slice(0, 5), 2),
     "does not start with segment 1"),
    ("empty row", "segment_ids", _empty_row, "does not start with segment 1"),
    ("padding inside a row", "segment_ids", _pad_gap, "padding before the end of the row"),
    ("padding holds a token", "input_ids", _set("input_ids", 3, 14, 7),
     f"padding position holds a token other than pad id {PAD}"),
    ("loss mask on padding", "loss_mask", _set("loss_mask", 3, 13, 1),
     "loss_mask outside \\{0,1\\} or non-zero at padding"),
    ("loss mask not 0/1", "loss_mask", _set("loss_mask", 3, 2, 2),
     "loss_mask outside \\{0,1\\} or non-zero at padding"),
]


@pytest.mark.parametrize("name, array, edit, message", CORRUPTIONS, ids=[c[0] for c in CORRUPTIONS])
def test_structural_corruption_is_caught_with_checksums_resigned(tmp_path: Path, name: str,
                                                                 array: str, edit, message: str) -> None:
    ds = make_dataset(tmp_path / "ds")
    verify(ds, block_rows=2)  # guard: the pristine dataset is sound
    corrupt_and_resign(ds, 1, array, edit)
    # guard: the checksums agree, so the checksum check cannot be what refuses it
    open_dataset(ds, verify_checksums=True)
    with pytest.raises(DatasetError, match=f"shard-00001 row 3: {message}"):
        verify(ds, block_rows=2)  # row 3 of the shard is the second row of verify's second block


def test_id_past_a_uint32_vocabulary_is_caught(tmp_path: Path) -> None:
    ds = make_dataset(tmp_path / "ds", vocab=70_000)
    assert verify(ds).manifest.dtypes["input_ids"] == "<u4"  # guard: the wide dtype
    corrupt_and_resign(ds, 0, "input_ids", _set("input_ids", 5, 1, 70_000))
    open_dataset(ds, verify_checksums=True)
    with pytest.raises(DatasetError, match="shard-00000 row 5: token id >= vocab size 70000"):
        verify(ds)


@pytest.mark.parametrize("field, value, message", [
    ("rows", ROWS + 1, f"manifest says {ROWS + 1} rows, shards hold {ROWS}"),
    ("tokens_kept", 12 * ROWS - 1, f"manifest counts {12 * ROWS - 1} tokens, shards hold {12 * ROWS}"),
])
def test_manifest_counts_that_disagree_with_the_shards(tmp_path: Path, field: str, value: int,
                                                       message: str) -> None:
    ds = make_dataset(tmp_path / "ds")
    m = json.loads((ds / MANIFEST).read_text())
    if field == "rows":
        m["rows"] = value
    else:
        m["counts"]["tokens_kept"] = value
    (ds / MANIFEST).write_text(json.dumps(m))
    open_dataset(ds, verify_checksums=True)  # guard: files and checksums are fine
    with pytest.raises(DatasetError, match=message):
        verify(ds)
