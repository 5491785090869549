"""Token spills (fastprep.pipeline.spill) and atomic files (fastprep.io): the late loss mask
stays aligned with the ids, and nothing half-written is ever visible."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fastprep.io import AtomicFile, atomic_write_bytes, is_temp_name, read_ranges
from fastprep.pipeline.spill import RunSpill, TokenFiles


def test_mask_appears_late_with_ones_for_earlier_tokens(tmp_path: Path) -> None:
    """Bug caught: a mask file opened only at the first masked document, without the ones of
    the plain-text tokens before it, shifts every later mask bit onto the wrong token."""
    f = TokenFiles(tmp_path / "ids.bin", tmp_path / "mask.bin")
    f.append(np.arange(3, dtype=np.uint16), None)                 # text: no mask yet
    assert not f.has_mask
    f.append(np.arange(4, dtype=np.uint16), np.array([0, 0, 1, 1], np.uint8))
    f.append(np.arange(2, dtype=np.uint16), None)                 # text after the mask began
    assert not (tmp_path / "ids.bin").exists()  # nothing visible before the commit
    f.commit()
    assert np.fromfile(tmp_path / "ids.bin", np.uint16).tolist() == [0, 1, 2, 0, 1, 2, 3, 0, 1]
    assert np.fromfile(tmp_path / "mask.bin", np.uint8).tolist() == [1, 1, 1, 0, 0, 1, 1, 1, 1]


def test_run_spill_reads_task_files_as_one_stream(tmp_path: Path) -> None:
    tasks = []
    for i, (ids, mask) in enumerate([([5, 6], None), ([7], [0]), ([8, 9, 10], None)]):
        t = TokenFiles(tmp_path / f"t{i}.ids", tmp_path / f"t{i}.mask")
        t.append(np.array(ids, np.uint16), None if mask is None else np.array(mask, np.uint8))
        t.commit()
        tasks.append((np.array([len(ids)], np.int64), str(t.ids_path),
                      str(t.mask_path) if t.has_mask else None))
    spill = RunSpill()
    for n, (lengths, ids, mask) in enumerate(tasks):
        spill.append_task(lengths, np.array([n != 2]), ids, mask)
    lengths, planned = spill.finish()
    assert lengths.tolist() == [2, 1, 3] and planned.tolist() == [2, 1, 0] and spill.has_mask
    # the run's stream is the tasks' files back to back; a task without a mask file reads as
    # all targets (bug caught: mask bits of one task landing on another's tokens)
    ids, mask = spill.read(np.array([0, 2, 3]), np.array([2, 1, 3]), np.empty(10, np.uint16),
                           np.empty(10, np.uint8))
    assert ids.tolist() == [5, 6, 7, 8, 9, 10] and mask.tolist() == [1, 1, 0, 1, 1, 1]
    ids, mask = spill.read(np.array([1, 4]), np.array([1, 1]), np.empty(10, np.uint16), None)
    assert ids.tolist() == [6, 9] and mask is None
    spill.close()


def test_atomic_file_is_all_or_nothing(tmp_path: Path) -> None:
    target = tmp_path / "a.bin"
    atomic_write_bytes(target, b"old")
    with pytest.raises(RuntimeError):
        with AtomicFile(target) as f:
            f.write(b"new, half")
            raise RuntimeError("crash")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]  # the temporary file went too
    with AtomicFile(target) as f:
        assert is_temp_name(f.tmp.name) and f.tmp.parent == tmp_path
        f.write(b"new")
    assert target.read_bytes() == b"new"


def test_read_ranges_merges_adjacent_ranges(tmp_path: Path) -> None:
    data = np.arange(100, dtype=np.uint32)
    (tmp_path / "d.bin").write_bytes(data.tobytes())
    out = np.empty(20, np.uint32)
    with open(tmp_path / "d.bin", "rb") as f:
        got = read_ranges(f, np.array([3, 5, 50, 90]), np.array([2, 3, 1, 4]), out)
    assert got.tolist() == [3, 4, 5, 6, 7, 50, 90, 91, 92, 93]
    with open(tmp_path / "d.bin", "rb") as f, pytest.raises(OSError, match="shorter"):
        read_ranges(f, np.array([98]), np.array([5]), out)


@pytest.mark.parametrize("os_read", ["short", "no-preadv"])
def test_read_ranges_reads_on_after_short_reads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                os_read: str) -> None:
    """A positioned read may return fewer bytes than asked (bug caught: the rest of the range
    left as whatever the buffer held); without ``os.preadv`` the file is read the usual way."""
    import os

    data = np.arange(100, dtype=np.uint32)
    (tmp_path / "d.bin").write_bytes(data.tobytes())
    if os_read == "short":
        real = os.preadv
        monkeypatch.setattr(os, "preadv", lambda fd, bufs, at: real(fd, [bufs[0][:3]], at))
    else:
        monkeypatch.delattr(os, "preadv", raising=False)
    out = np.zeros(20, np.uint32)
    with open(tmp_path / "d.bin", "rb") as f:
        got = read_ranges(f, np.array([3, 5, 50, 90]), np.array([2, 3, 1, 4]), out)
    assert got.tolist() == [3, 4, 5, 6, 7, 50, 90, 91, 92, 93]
    with open(tmp_path / "d.bin", "rb") as f, pytest.raises(OSError, match="shorter"):
        read_ranges(f, np.array([98]), np.array([5]), out)


def test_direct_writes_are_exact_with_an_unaligned_tail(tmp_path: Path) -> None:
    """Shards go past the page cache in aligned blocks and the usual way for the rest (bug
    caught: a tail not a multiple of the block size rejected, or written twice)."""
    from fastprep.stages.pack import row_buffers

    bufs = row_buffers(2048, 2048, np.dtype(np.uint16), np.dtype(np.uint16))  # 2 MiB aligned
    block = bufs["input_ids"]
    block[:] = np.arange(block.size, dtype=np.uint16).reshape(block.shape)
    with AtomicFile(tmp_path / "s.bin", direct=True) as f:
        f.write(block.data)                # 8 MiB, aligned: direct
        f.write(block[:3, :5].copy().data)  # 30 bytes: the ordinary path
        f.write(block[1:2].data)           # aligned size, unaligned address once direct stopped
    got = np.fromfile(tmp_path / "s.bin", np.uint16)
    want = np.concatenate([block.ravel(), block[:3, :5].ravel(), block[1].ravel()])
    assert np.array_equal(got, want)
