"""The on-disk format: the contract between ``fastprep prepare`` and everything that reads its output.

One output folder is one dataset::

    ds/
      manifest.json                      written last, atomically: its presence means "finished"
      shard-00000.input_ids.bin          [rows, L] token ids, little-endian, padded with pad_id
      shard-00000.segment_ids.bin        [rows, L] the attention mask: 0 = padding, k = k-th document
      shard-00000.loss_mask.bin          [rows, L] uint8, 1 = training target (only when some tokens
                                          must not be learned: prompts, system and user turns)
      quarantine.jsonl                   every bad record: source, line, reason, excerpt

Every array file is a raw little-endian array that numpy alone can memory-map given the manifest
(``np.memmap(path, dtype, mode="r").reshape(rows, L)``), the way nanoGPT's ``train.bin`` works; no
header to parse, no pickle. Dtypes are the smallest that hold the values:

- ``input_ids``: uint16 when the vocabulary has at most 2**16 ids (every id < 65,536), else uint32.
- ``segment_ids``: uint16 when L < 2**16 (a row holds at most L documents), else uint32.
- ``loss_mask``: uint8 (0/1); absent for pure ``text`` datasets, where every real token is a target.

Inside one row documents are contiguous from position 0, numbered 1, 2, 3... in order; padding
(segment 0) only at the row end. Everything else (attention_mask, position_ids, labels, cu_seqlens)
is derived at load time and never stored.

This module only reads and validates; it never imports torch, so ``inspect``/``verify`` and plain
numpy users need nothing else.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

FORMAT_NAME = "fastprep-packed"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
ARRAYS = ("input_ids", "segment_ids", "loss_mask")


class DatasetError(ValueError):
    """A dataset folder that is missing, unfinished, corrupt or inconsistent with its manifest."""


def ids_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits (vocab <= 2**16), else uint32: halves the file for most tokenizers."""
    return np.dtype("<u2") if vocab_size <= 1 << 16 else np.dtype("<u4")


def segment_dtype(seq_len: int) -> np.dtype:
    """A row holds at most ``seq_len`` documents, so uint16 suffices for any L < 2**16."""
    return np.dtype("<u2") if seq_len < 1 << 16 else np.dtype("<u4")


def shard_file(shard: str, array: str) -> str:
    return f"{shard}.{array}.bin"


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _safe_child(root: Path, name: str) -> Path:
    """Resolve a file named in the manifest; refuse names that could escape the dataset folder."""
    if not isinstance(name, str) or not name or "/" in name or "\\" in name or name in (".", "..") \
            or name.startswith(".") or "\x00" in name:
        raise DatasetError(f"manifest names an unsafe file {name!r}: shard files must be plain "
                           f"names inside the dataset folder")
    path = (root / name).resolve()
    if path.parent != root.resolve():
        raise DatasetError(f"manifest file {name!r} resolves outside the dataset folder")
    return path


@dataclass(frozen=True)
class Shard:
    name: str
    rows: int
    arrays: dict[str, np.ndarray]  # read-only memmaps, shape [rows, L]


@dataclass(frozen=True)
class PackedDataset:
    """A validated dataset: its manifest and read-only memory maps of every shard (no copy in RAM)."""

    path: Path
    manifest: dict[str, Any]
    shards: tuple[Shard, ...]

    @property
    def seq_len(self) -> int:
        return int(self.manifest["seq_len"])

    @property
    def rows(self) -> int:
        return sum(s.rows for s in self.shards)

    @property
    def has_loss_mask(self) -> bool:
        return "loss_mask" in self.manifest["arrays"]

    @property
    def pad_id(self) -> int:
        return int(self.manifest["tokenizer"]["pad_id"])

    def row(self, index: int) -> dict[str, np.ndarray]:
        """One row by global index: {array name: [L] view}."""
        if not 0 <= index < self.rows:
            raise IndexError(f"row {index} out of range for a dataset of {self.rows} rows")
        for shard in self.shards:
            if index < shard.rows:
                return {k: v[index] for k, v in shard.arrays.items()}
            index -= shard.rows
        raise AssertionError("unreachable")


def read_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    root = Path(path)
    mpath = root / MANIFEST
    if not root.is_dir():
        raise DatasetError(f"{root}: no such dataset folder")
    if not mpath.is_file():
        raise DatasetError(f"{root}: no {MANIFEST}; the folder is not a finished fastprep dataset "
                           f"(an interrupted run never writes its manifest) - run `fastprep prepare` again")
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DatasetError(f"{mpath}: unreadable manifest ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise DatasetError(f"{mpath}: not a {FORMAT_NAME} manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise DatasetError(f"{mpath}: format version {manifest.get('format_version')!r}, this "
                           f"fastprep reads version {FORMAT_VERSION}; prepare the dataset again")
    for key in ("seq_len", "arrays", "dtypes", "shards", "tokenizer"):
        if key not in manifest:
            raise DatasetError(f"{mpath}: manifest lacks {key!r}")
    return manifest


def open_dataset(path: str | os.PathLike[str], *, verify_checksums: bool = False) -> PackedDataset:
    """Open and validate a dataset folder; raise :class:`DatasetError` naming the first problem.

    Checks the manifest, that every shard file exists with exactly ``rows * L * itemsize`` bytes, and
    (with ``verify_checksums``) each file's SHA-256 against the manifest.
    """
    root = Path(path)
    manifest = read_manifest(root)
    seq_len = int(manifest["seq_len"])
    if seq_len <= 0:
        raise DatasetError(f"{root}: seq_len {seq_len} must be positive")
    arrays = list(manifest["arrays"])
    unknown = [a for a in arrays if a not in ARRAYS]
    if unknown or "input_ids" not in arrays or "segment_ids" not in arrays:
        raise DatasetError(f"{root}: manifest arrays {arrays} must include input_ids and segment_ids "
                           f"and only {list(ARRAYS)}")
    dtypes = {a: np.dtype(manifest["dtypes"][a]) for a in arrays}
    shards = []
    for entry in manifest["shards"]:
        name, rows = entry["name"], int(entry["rows"])
        maps = {}
        for a in arrays:
            info = entry["files"][a]
            fpath = _safe_child(root, info["file"])
            expected = rows * seq_len * dtypes[a].itemsize
            try:
                size = fpath.stat().st_size
            except OSError:
                raise DatasetError(f"{root}: shard file {info['file']} is missing") from None
            if size != expected:
                raise DatasetError(f"{root}: {info['file']} holds {size} bytes, the manifest implies "
                                   f"{rows} rows x {seq_len} x {dtypes[a].itemsize} = {expected}")
            if verify_checksums and sha256_file(fpath) != info["sha256"]:
                raise DatasetError(f"{root}: {info['file']} fails its SHA-256 checksum (corrupt or changed)")
            maps[a] = (np.memmap(fpath, dtype=dtypes[a], mode="r", shape=(rows, seq_len))
                       if rows else np.zeros((0, seq_len), dtypes[a]))
        shards.append(Shard(name=name, rows=rows, arrays=maps))
    return PackedDataset(path=root, manifest=manifest, shards=tuple(shards))
