"""The typed manifest (fastprep.dataset.format): a round trip through JSON, and a clear error
for every structural problem a reader must refuse."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fastprep.dataset.format import (MANIFEST, OWNED_PREFIXES, DatasetError, Manifest,
                                     open_dataset, read_manifest)
from fastprep.dataset.write import ShardWriter
from fastprep.io import temp_path

TOK = {"sha256": "0" * 64, "vocab_size": 100, "bos_id": None, "eos_id": 1, "pad_id": 0}


def write(path: Path) -> Manifest:
    path.mkdir(exist_ok=True)
    w = ShardWriter(path, 4, {"input_ids": np.dtype("<u2"), "segment_ids": np.dtype("<u2")}, 2)
    w.add({"input_ids": np.arange(12, dtype=np.uint16).reshape(3, 4),
           "segment_ids": np.ones((3, 4), np.uint16)})
    return w.finish(tokenizer=TOK, recipe={"pack": {"seq_len": 4}}, counts={"rows": 3})


def test_manifest_round_trip(tmp_path: Path) -> None:
    m = write(tmp_path / "ds")
    assert [s.rows for s in m.shards] == [2, 1]
    back = read_manifest(tmp_path / "ds")
    assert back == m and back.vocab_size == 100 and back.pad_id == 0 and not back.has_loss_mask
    ds = open_dataset(tmp_path / "ds", verify_checksums=True)
    assert ds.rows == 3 and ds.row(2)["input_ids"].tolist() == [8, 9, 10, 11]


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.update(format="other"), "not a fastprep-packed manifest"),
    (lambda m: m.update(format_version=99), "format version 99"),
    (lambda m: m.pop("dtypes"), "lacks 'dtypes'"),
    (lambda m: m.update(seq_len=0), "must be positive"),
    (lambda m: m.update(arrays=["input_ids"]), "must include input_ids and segment_ids"),
    (lambda m: m["tokenizer"].pop("pad_id"), "malformed manifest"),
    (lambda m: m["shards"][0].update(rows="many"), "malformed manifest"),
    (lambda m: m["shards"][0]["files"]["input_ids"].update(file="../x.bin"), "unsafe file"),
])
def test_structural_problems_are_refused_by_name(tmp_path: Path, edit, message: str) -> None:
    write(tmp_path / "ds")
    p = tmp_path / "ds" / MANIFEST
    m = json.loads(p.read_text())
    edit(m)
    p.write_text(json.dumps(m))
    with pytest.raises(DatasetError, match=message):
        open_dataset(tmp_path / "ds")


def test_temporary_names_are_owned_names() -> None:
    """An interrupted run leaves temporary files; the output-folder check must treat them as
    fastprep's own (bug caught: a rerun refusing the folder as holding foreign files)."""
    for name in ("shard-00000.input_ids.bin", MANIFEST, "quarantine.jsonl", "tokenizer.json"):
        assert temp_path(Path("/x") / name).name.startswith(OWNED_PREFIXES)
