"""What a report reads: the manifest (typed fields and the sections the typed
:class:`~fastprep.dataset.format.Manifest` does not have yet), the memory-mapped rows block by
block, ``documents.bin`` (one record per kept document), the per-row source, a seeded sample of
rows decoded with the dataset's own ``tokenizer.json``, and the optional ``--flag-terms`` and
``--dedupe-report`` files.

Nothing here loads a whole array: rows are read in blocks of a bounded number of rows, sampled
rows by fancy indexing of the memory maps, so memory stays flat in dataset size.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..dataset import format as fmt
from ..dataset.format import PackedDataset, open_dataset, read_documents

NO_DOCUMENTS = "not available: prepared before fastprep wrote documents.bin"
NO_DOCUMENTS_VAL = ("not available: a validation set's documents are in its parent dataset's "
                    "documents.bin (report on the parent folder)")
NO_TOKENIZER = "not available: the dataset folder has no tokenizer.json to decode rows with"
BLOCK_ROWS = 8192  # rows per block of the full-array passes: ~32 MiB of segment ids at L=2048


class ReportError(ValueError):
    """An input of ``fastprep report`` that cannot be used (a one-line error, exit status 2)."""


@dataclass(frozen=True)
class ReportData:
    """A dataset as the report sees it. ``documents`` is None for datasets prepared before
    ``documents.bin`` existed; ``row_source`` is None when rows carry no source (one source,
    or a mix written without the per-row array)."""

    ds: PackedDataset
    raw: dict[str, Any]
    documents: np.ndarray | None
    sources: tuple[str, ...]
    row_source: np.ndarray | None

    def section(self, name: str) -> Any:
        """A manifest section by name: the typed field where the Manifest has one, else the
        parsed JSON (``mix``, ``documents`` and whatever newer runs add), else ``{}``."""
        if name in {f.name for f in dataclasses.fields(fmt.Manifest)}:
            return getattr(self.ds.manifest, name)
        return self.raw.get(name) or {}

    @property
    def no_documents(self) -> str:
        """Why the figures that need ``documents.bin`` are not available."""
        if (self.section("split") or {}).get("role") == "validation":
            return NO_DOCUMENTS_VAL
        return NO_DOCUMENTS

    @property
    def rows(self) -> int:
        return self.ds.rows

    @property
    def seq_len(self) -> int:
        return self.ds.seq_len


def open_report_data(path: str | os.PathLike[str]) -> ReportData:
    """Open the dataset (a :class:`DatasetError` names what is wrong) and what lies beside it."""
    ds = open_dataset(path)
    raw = json.loads((Path(path) / fmt.MANIFEST).read_text(encoding="utf-8"))
    return ReportData(ds=ds, raw=raw, documents=read_documents(ds),
                      sources=source_names(ds, ds.manifest.mix), row_source=row_sources(ds))


def source_names(ds: PackedDataset, mix: dict[str, Any]) -> tuple[str, ...]:
    """The names of ``mix.sources``; without mixing, one source named after the input(s)."""
    names = [str(s.get("name", f"source {i}")) for i, s in enumerate(mix.get("sources") or [])]
    if names:
        return tuple(names)
    inputs = [str(i.get("name", "")) for i in ds.manifest.inputs]
    if len(inputs) == 1:
        return (inputs[0],)
    return (f"all inputs ({len(inputs)} files)" if inputs else "input",)


def row_sources(ds: PackedDataset) -> np.ndarray | None:
    """The per-row ``source`` array (index into ``mix.sources``) of every shard, or None."""
    parts = []
    for shard in ds.shards:
        arr = shard.arrays.get("source")
        if arr is None:
            return None
        parts.append(np.asarray(arr, dtype=np.uint8).reshape(shard.rows))
    return np.concatenate(parts) if parts else None


def iter_blocks(ds: PackedDataset, arrays: tuple[str, ...],
                block_rows: int = BLOCK_ROWS) -> Iterator[dict[str, np.ndarray]]:
    """Every row once, in order, as blocks ``{array: [n, L]}`` of the arrays asked for (those
    the dataset has), read from the memory maps one block at a time."""
    for shard in ds.shards:
        for start in range(0, shard.rows, block_rows):
            yield {a: np.asarray(shard.arrays[a][start:start + block_rows])
                   for a in arrays if a in shard.arrays}


def sample_rows(n_rows: int, k: int, seed: int) -> np.ndarray:
    """Sorted row indices: all rows when ``k >= n_rows``, else ``k`` drawn without replacement
    by a seeded generator (the same rows for the same dataset size, ``k`` and seed)."""
    if k <= 0:
        raise ReportError(f"--sample-rows {k}: must be positive")
    if k >= n_rows:
        return np.arange(n_rows, dtype=np.int64)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n_rows, size=k, replace=False)).astype(np.int64)


def take_rows(ds: PackedDataset, rows: np.ndarray, arrays: tuple[str, ...]) -> dict[str, np.ndarray]:
    """``{array: [len(rows), L]}`` of the given sorted global row indices (one fancy index per
    shard of its memory map)."""
    out: dict[str, list[np.ndarray]] = {a: [] for a in arrays if a in ds.manifest.arrays}
    offset = 0
    for shard in ds.shards:
        lo, hi = np.searchsorted(rows, [offset, offset + shard.rows])
        if hi > lo:
            local = rows[lo:hi] - offset
            for a, parts in out.items():
                parts.append(np.asarray(shard.arrays[a][local]))
        offset += shard.rows
    L = ds.seq_len
    return {a: np.concatenate(v) if v else np.zeros((0, L), np.dtype(ds.manifest.dtypes[a]))
            for a, v in out.items()}


def segments(ids: np.ndarray, seg: np.ndarray) -> list[np.ndarray]:
    """The documents (pieces) of one row, in order: its real tokens split where the segment
    id changes (segments are contiguous from position 0, padding only at the end)."""
    real = int(np.count_nonzero(seg))
    cuts = np.flatnonzero(seg[1:real] != seg[:real - 1]) + 1
    return np.split(ids[:real], cuts) if real else []


def load_tokenizer(ds: PackedDataset) -> Any | None:
    """The dataset's own ``tokenizer.json`` as a ``tokenizers.Tokenizer``, or None."""
    path = ds.path / str(ds.manifest.tokenizer.get("file", fmt.TOKENIZER_FILE))
    if not path.is_file():
        return None
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(path))


def decoded_rows(data: ReportData, tokenizer: Any, rows: np.ndarray,
                 chunk: int = 1024) -> Iterator[tuple[int, int, list[str]]]:
    """(row, source index, the text of each of its documents) for the given rows, decoded
    with special tokens skipped (BOS/EOS are not text), ``chunk`` rows per batch call."""
    for start in range(0, len(rows), chunk):
        part = rows[start:start + chunk]
        block = take_rows(data.ds, part, ("input_ids", "segment_ids"))
        pieces = [segments(i, s) for i, s in zip(block["input_ids"], block["segment_ids"])]
        flat = [p.tolist() for row in pieces for p in row]
        texts = tokenizer.decode_batch(flat, skip_special_tokens=True) if flat else []
        at = 0
        for r, row in zip(part.tolist(), pieces):
            src = int(data.row_source[r]) if data.row_source is not None else 0
            yield r, src, texts[at:at + len(row)]
            at += len(row)


def read_flag_terms(path: str | os.PathLike[str]) -> list[str]:
    """One term per line; blank lines and ``#`` comments are ignored; duplicates (ignoring
    case) are counted once. An unreadable or empty list is an error: a report that silently
    counted nothing would read as 'no term occurs'."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ReportError(f"--flag-terms {path}: cannot read it ({e})") from None
    terms: dict[str, str] = {}
    for line in lines:
        term = line.strip()
        if term and not term.startswith("#"):
            terms.setdefault(term.casefold(), term)
    if not terms:
        raise ReportError(f"--flag-terms {path}: no terms in it (one term per line; blank lines "
                          f"and lines starting with # are ignored)")
    return list(terms.values())


def read_dedupe_report(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The JSON lines ``prepare --dedupe-report`` wrote; a malformed line is an error naming it."""
    out = []
    try:
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ReportError(f"--dedupe-report {path}:{n}: not JSON ({e.msg})") from None
                if not isinstance(row, dict) or "matched_line" not in row or "line" not in row:
                    raise ReportError(f"--dedupe-report {path}:{n}: not a line of "
                                      f"`fastprep prepare --dedupe-report` (no line/matched_line)")
                out.append(row)
    except (OSError, UnicodeDecodeError) as e:
        raise ReportError(f"--dedupe-report {path}: cannot read it ({e})") from None
    return out
