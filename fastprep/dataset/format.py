"""The on-disk format: the contract between ``fastprep prepare`` and everything that reads its output.

One output folder is one dataset::

    ds/
      manifest.json                      written last, atomically: its presence means "finished"
      shard-00000.input_ids.bin          [rows, L] token ids, little-endian, padded with pad_id
      shard-00000.segment_ids.bin        [rows, L] the attention mask: 0 = padding, k = k-th document
      shard-00000.loss_mask.bin          [rows, L] uint8, 1 = training target (only when some tokens
                                          must not be learned: prompts, system and user turns)
      shard-00000.source.bin             [rows] uint8, the source of each row (only for a --mix:
                                          rows never mix sources; index into manifest mix.sources)
      tokenizer.json                     a copy of the tokenizer, so the dataset decodes on its own
      quarantine.jsonl                   every bad record: source, line, reason, excerpt
      documents.bin                      one record per kept document (DOCUMENT_DTYPE): tokens,
                                          characters, targets, kind, source, uses, split
      val/                               the validation set (--val-fraction / --val-docs): a
                                          dataset of its own, in this format

Every array file is a raw little-endian array that numpy alone can memory-map given the manifest
(``np.memmap(path, dtype, mode="r").reshape(rows, L)``), the way nanoGPT's ``train.bin`` works; no
header to parse, no pickle. Dtypes are the smallest that hold the values:

- ``input_ids``: uint16 when the vocabulary has at most 2**16 ids (every id < 65,536), else uint32.
- ``segment_ids``: uint16 when L < 2**16 (a row holds at most L documents), else uint32.
- ``loss_mask``: uint8 (0/1); absent for pure ``text`` datasets, where every real token is a target.
- ``source``: uint8 per row (a mix holds at most 255 sources); absent without ``--mix``.

Inside one row documents are contiguous from position 0, numbered 1, 2, 3... in order; padding
(segment 0) only at the row end. Everything else (attention_mask, position_ids, labels, cu_seqlens)
is derived at load time and never stored.

This module owns every file name of a dataset folder (and of the work folder a run keeps there
until it finishes) and the typed :class:`Manifest`. It only reads and validates; it never
imports torch, so ``inspect``/``verify`` and plain numpy users need nothing else.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

FORMAT_NAME = "fastprep-packed"
FORMAT_VERSION = 1
ARRAYS = ("input_ids", "segment_ids", "loss_mask", "source")
ROW_ARRAYS = ("source",)  # one value per row ([rows]); the others are [rows, L]

MANIFEST = "manifest.json"
TOKENIZER_FILE = "tokenizer.json"
QUARANTINE_FILE = "quarantine.jsonl"
DOCUMENTS_FILE = "documents.bin"
VAL_DIR = "val"                   # the validation set, a dataset of its own inside the folder
WORK_DIR = ".fastprep-work"       # a run's task results and spill, removed when it finishes
SHARD_PREFIX = "shard-"
# Names a (possibly interrupted) run may have left in its output folder, temporary names
# (a leading dot, see fastprep.io.temp_path) included; anything else belongs to someone else.
OWNED_PREFIXES = (SHARD_PREFIX, QUARANTINE_FILE, TOKENIZER_FILE, MANIFEST, WORK_DIR, DOCUMENTS_FILE,
                  "." + SHARD_PREFIX, "." + QUARANTINE_FILE, "." + TOKENIZER_FILE, "." + MANIFEST,
                  "." + DOCUMENTS_FILE)
OWNED_NAMES = (VAL_DIR,)  # whole names (a prefix "val" would claim a user's "validation.txt")

# documents.bin: one little-endian record per document kept after cleaning, dedupe and
# decontamination, in input order. tokens: its token count (BOS/EOS included); chars: characters
# of its cleaned text (clipped at 2**32 - 1); targets: tokens whose loss mask is 1; kind: index
# into fastprep.stages.records.KIND_NAMES; source: index into the manifest's mix.sources (0
# without a mix); uses: how often the training rows hold it (0: sampled out or in the
# validation set; 2 or more: repeated by the mix); split: 0 training, 1 validation.
DOCUMENT_DTYPE = np.dtype([("tokens", "<u4"), ("chars", "<u4"), ("targets", "<u4"),
                           ("kind", "u1"), ("source", "u1"), ("uses", "<u2"), ("split", "u1")])


class DatasetError(ValueError):
    """A dataset folder that is missing, unfinished, corrupt or inconsistent with its manifest."""


def ids_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits (vocab <= 2**16), else uint32: halves the file for most tokenizers."""
    return np.dtype("<u2") if vocab_size <= 1 << 16 else np.dtype("<u4")


def segment_dtype(seq_len: int) -> np.dtype:
    """A row holds at most ``seq_len`` documents, so uint16 suffices for any L < 2**16."""
    return np.dtype("<u2") if seq_len < 1 << 16 else np.dtype("<u4")


def shard_name(index: int) -> str:
    return f"{SHARD_PREFIX}{index:05d}"


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
class ShardInfo:
    """One shard of the manifest: its rows and, per array, its file name and SHA-256."""

    name: str
    rows: int
    files: dict[str, dict[str, str]]  # array -> {"file": name, "sha256": hex}


@dataclass(frozen=True)
class Manifest:
    """``manifest.json``, typed. The sections a run describes itself with (``recipe``,
    ``counts``, ``packing``, ``dedupe``, ``inputs``) stay plain JSON; what a reader needs to
    map the arrays is checked here."""

    seq_len: int
    arrays: tuple[str, ...]
    dtypes: dict[str, str]
    rows: int
    tokenizer: dict[str, Any]
    shards: tuple[ShardInfo, ...]
    fastprep_version: str = ""
    recipe: dict[str, Any] = field(default_factory=dict)
    inputs: list[dict[str, Any]] = field(default_factory=list)
    counts: dict[str, Any] = field(default_factory=dict)
    packing: dict[str, Any] = field(default_factory=dict)
    dedupe: dict[str, Any] = field(default_factory=dict)
    # optional sections, written only when a run has them: the mix's sources and what each
    # gave; the validation split; decontamination; the documents.bin file
    mix: dict[str, Any] = field(default_factory=dict)
    split: dict[str, Any] = field(default_factory=dict)
    decontamination: dict[str, Any] = field(default_factory=dict)
    documents: dict[str, Any] = field(default_factory=dict)
    format: str = FORMAT_NAME
    format_version: int = FORMAT_VERSION

    @property
    def vocab_size(self) -> int:
        return int(self.tokenizer["vocab_size"])

    @property
    def pad_id(self) -> int:
        return int(self.tokenizer["pad_id"])

    @property
    def has_loss_mask(self) -> bool:
        return "loss_mask" in self.arrays

    @property
    def source_names(self) -> list[str]:
        """The mix's source names, by the index the ``source`` array holds ([] without a mix)."""
        return [str(s["name"]) for s in self.mix.get("sources", [])]

    def shape(self, array: str, rows: int) -> tuple[int, ...]:
        """The shape of ``array`` in a shard of ``rows`` rows."""
        return (rows,) if array in ROW_ARRAYS else (rows, self.seq_len)

    def to_json(self) -> bytes:
        d = {"format": self.format, "format_version": self.format_version,
             "seq_len": self.seq_len, "arrays": list(self.arrays), "dtypes": self.dtypes,
             "rows": self.rows, "fastprep_version": self.fastprep_version,
             "tokenizer": self.tokenizer, "recipe": self.recipe, "inputs": self.inputs,
             "counts": self.counts, "packing": self.packing, "dedupe": self.dedupe}
        for key in _OPTIONAL:
            if getattr(self, key):
                d[key] = getattr(self, key)
        d["shards"] = [dataclasses.asdict(s) for s in self.shards]
        return (json.dumps(d, indent=2) + "\n").encode()

    @classmethod
    def from_json(cls, data: Any, where: str) -> Manifest:
        """Validate the parsed ``manifest.json``; a :class:`DatasetError` names what is wrong."""
        if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
            raise DatasetError(f"{where}: not a {FORMAT_NAME} manifest")
        if data.get("format_version") != FORMAT_VERSION:
            raise DatasetError(f"{where}: format version {data.get('format_version')!r}, this "
                               f"fastprep reads version {FORMAT_VERSION}; prepare the dataset again")
        for key in ("seq_len", "arrays", "dtypes", "shards", "tokenizer"):
            if key not in data:
                raise DatasetError(f"{where}: manifest lacks {key!r}")
        try:
            seq_len = int(data["seq_len"])
            arrays = tuple(data["arrays"])
            shards = tuple(ShardInfo(name=str(s["name"]), rows=int(s["rows"]),
                                     files={a: dict(s["files"][a]) for a in arrays})
                           for s in data["shards"])
            dtypes = {a: str(data["dtypes"][a]) for a in arrays}
            tokenizer = dict(data["tokenizer"])
            int(tokenizer["vocab_size"]), int(tokenizer["pad_id"])
        except (KeyError, TypeError, ValueError) as e:
            raise DatasetError(f"{where}: malformed manifest ({type(e).__name__}: {e})") from None
        if seq_len <= 0:
            raise DatasetError(f"{where}: seq_len {seq_len} must be positive")
        unknown = [a for a in arrays if a not in ARRAYS]
        if unknown or "input_ids" not in arrays or "segment_ids" not in arrays:
            raise DatasetError(f"{where}: manifest arrays {list(arrays)} must include input_ids "
                               f"and segment_ids and only {list(ARRAYS)}")
        optional = {k: data.get(k, {}) for k in _OPTIONAL}
        bad = [k for k, v in optional.items() if not isinstance(v, dict)]
        if bad:
            raise DatasetError(f"{where}: manifest section {bad[0]!r} must be an object")
        if "source" in arrays and not optional["mix"].get("sources"):
            raise DatasetError(f"{where}: a source array without mix.sources to name its values")
        return cls(seq_len=seq_len, arrays=arrays, dtypes=dtypes,
                   rows=int(data.get("rows", sum(s.rows for s in shards))), tokenizer=tokenizer,
                   shards=shards, fastprep_version=str(data.get("fastprep_version", "")),
                   recipe=dict(data.get("recipe", {})), inputs=list(data.get("inputs", [])),
                   counts=dict(data.get("counts", {})), packing=dict(data.get("packing", {})),
                   dedupe=dict(data.get("dedupe", {})), **optional)


_OPTIONAL = ("mix", "split", "decontamination", "documents")


@dataclass(frozen=True)
class Shard:
    name: str
    rows: int
    arrays: dict[str, np.ndarray]  # read-only memmaps, shape [rows, L] ([rows] for ROW_ARRAYS)


@dataclass(frozen=True)
class PackedDataset:
    """A validated dataset: its manifest and read-only memory maps of every shard (no copy in RAM)."""

    path: Path
    manifest: Manifest
    shards: tuple[Shard, ...]

    @property
    def seq_len(self) -> int:
        return self.manifest.seq_len

    @property
    def rows(self) -> int:
        return sum(s.rows for s in self.shards)

    @property
    def has_loss_mask(self) -> bool:
        return self.manifest.has_loss_mask

    @property
    def pad_id(self) -> int:
        return self.manifest.pad_id

    def row(self, index: int) -> dict[str, np.ndarray]:
        """One row by global index: {array name: [L] view}."""
        if not 0 <= index < self.rows:
            raise IndexError(f"row {index} out of range for a dataset of {self.rows} rows")
        for shard in self.shards:
            if index < shard.rows:
                return {k: v[index] for k, v in shard.arrays.items()}
            index -= shard.rows
        raise AssertionError("unreachable")


def read_manifest(path: str | os.PathLike[str]) -> Manifest:
    root = Path(path)
    mpath = root / MANIFEST
    if not root.is_dir():
        raise DatasetError(f"{root}: no such dataset folder")
    if not mpath.is_file():
        raise DatasetError(f"{root}: no {MANIFEST}; the folder is not a finished fastprep dataset "
                           f"(an interrupted run never writes its manifest) - run `fastprep prepare` again")
    try:
        data = json.loads(mpath.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DatasetError(f"{mpath}: unreadable manifest ({e})") from None
    return Manifest.from_json(data, str(mpath))


def open_dataset(path: str | os.PathLike[str], *, verify_checksums: bool = False) -> PackedDataset:
    """Open and validate a dataset folder; raise :class:`DatasetError` naming the first problem.

    Checks the manifest, that every shard file exists with exactly ``rows * L * itemsize`` bytes, and
    (with ``verify_checksums``) each file's SHA-256 against the manifest.
    """
    root = Path(path)
    manifest = read_manifest(root)
    seq_len = manifest.seq_len
    dtypes = {a: np.dtype(manifest.dtypes[a]) for a in manifest.arrays}
    shards = []
    for entry in manifest.shards:
        maps = {}
        for a in manifest.arrays:
            info = entry.files[a]
            fpath = _safe_child(root, info["file"])
            shape = manifest.shape(a, entry.rows)
            expected = int(np.prod(shape)) * dtypes[a].itemsize
            try:
                size = fpath.stat().st_size
            except OSError:
                raise DatasetError(f"{root}: shard file {info['file']} is missing") from None
            if size != expected:
                dims = " x ".join(str(d) for d in (*shape, dtypes[a].itemsize))
                raise DatasetError(f"{root}: {info['file']} holds {size} bytes, the manifest implies "
                                   f"{dims} = {expected}")
            if verify_checksums and sha256_file(fpath) != info["sha256"]:
                raise DatasetError(f"{root}: {info['file']} fails its SHA-256 checksum (corrupt or changed)")
            maps[a] = (np.memmap(fpath, dtype=dtypes[a], mode="r", shape=shape)
                       if entry.rows else np.zeros(shape, dtypes[a]))
        shards.append(Shard(name=entry.name, rows=entry.rows, arrays=maps))
    return PackedDataset(path=root, manifest=manifest, shards=tuple(shards))


def read_documents(data: PackedDataset | str | os.PathLike[str], *,
                   verify_checksum: bool = False) -> np.ndarray | None:
    """The dataset's ``documents.bin`` as a read-only structured array of
    :data:`DOCUMENT_DTYPE` (memory-mapped), or None for a dataset prepared without one (before
    fastprep wrote it, or a validation set, whose documents are in its parent's file)."""
    root = data.path if isinstance(data, PackedDataset) else Path(data)
    manifest = data.manifest if isinstance(data, PackedDataset) else read_manifest(root)
    info = manifest.documents
    if not info:
        return None
    try:
        path, count = _safe_child(root, info["file"]), int(info["count"])
        dtype = np.dtype([(str(n), str(t)) for n, t in info["dtype"]])
    except (KeyError, TypeError, ValueError) as e:
        raise DatasetError(f"{root}: malformed manifest section 'documents' ({e})") from None
    if dtype != DOCUMENT_DTYPE:
        raise DatasetError(f"{root}: documents.bin has fields {dtype}, this fastprep reads "
                           f"{DOCUMENT_DTYPE}; prepare the dataset again")
    try:
        size = path.stat().st_size
    except OSError:
        raise DatasetError(f"{root}: {info['file']} is missing") from None
    if size != count * dtype.itemsize:
        raise DatasetError(f"{root}: {info['file']} holds {size} bytes, the manifest implies "
                           f"{count} documents x {dtype.itemsize} = {count * dtype.itemsize}")
    if verify_checksum and sha256_file(path) != info.get("sha256"):
        raise DatasetError(f"{root}: {info['file']} fails its SHA-256 checksum (corrupt or changed)")
    return np.memmap(path, dtype=dtype, mode="r", shape=(count,)) if count else np.zeros(0, dtype)
