"""Evaluation decontamination: drop training documents that share a word n-gram with any
evaluation document (GPT-3 / lm-eval-harness style, default n = 13 words).

Algorithm (kernels and the byte-level word rules in :mod:`fastprep.kernels.ngrams`):

1. Index, once per run (:meth:`NgramIndex.build`): the evaluation texts are read in batches;
   every word n-gram of every evaluation document is hashed to a 64-bit key; the distinct keys go
   into an open-addressing table (a power of two of slots, at most half full) whose value is the
   *first* evaluation document holding the n-gram, so the answer does not depend on batching.
   Evaluation documents with fewer than n words cannot match anything and are counted
   (``too_short``). Memory: the keys of the whole evaluation set while building (12 bytes per
   n-gram), then the table (12 bytes per slot) plus a bitset prefilter.
2. The index is one file (:meth:`NgramIndex.save`, written atomically) that every worker process
   memory-maps (:meth:`NgramIndex.load`): the pages live once in the page cache however many
   workers read them, and loading costs no rebuild.
3. Query (:meth:`NgramIndex.match`, the hot path): a batch of training texts becomes one UTF-8
   buffer; one pass over its bytes rolls the hash of the last n words and looks each n-gram up,
   stopping at a document's first hit. Training n-grams are never materialised.

A shared n-gram is a shared 64-bit key: two different n-grams get one key with probability
2**-64, so the expected number of spurious removals is (training n-grams) x (distinct evaluation
n-grams) / 2**64: 0.5 for 10**12 training n-grams (about 6 TB of prose) against 10**7. Measured
throughput and memory are in ``benchmarks/README.md`` ("Decontamination";
``benchmarks/bench_decontam.py``).
"""

from __future__ import annotations

import json
import numbers
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..flags import option
from ..io import AtomicFile
from .minhash import utf8_buffer

__all__ = ["DecontamConfig", "NgramIndex"]

MAGIC = b"FPNGRAM1"          # first 8 bytes of an index file; the 1 is the format version
FORMAT = "fastprep-ngram-index"
VERSION = 1
ALIGN = 64                   # arrays start on cache-line boundaries in the file
BATCH_CHARS = 8 << 20        # evaluation text per kernel call while building
BATCH_DOCS = 65536
_WORD = re.compile(rb"[A-Za-z0-9\x80-\xff]+")


def _kernels() -> Any:
    """The numba kernels, imported on first use: a process that only reads the config does not
    pay numba's import."""
    from ..kernels import ngrams

    return ngrams


@dataclass(frozen=True)
class DecontamConfig:
    """Which evaluation sets training documents must not overlap, and the n-gram length."""

    paths: tuple[str, ...] = option((), "evaluation files or folders (same readers as the "
                                    "input): training documents sharing a word n-gram with any "
                                    "of their documents are removed", flag="--decontaminate",
                                    cli=False)
    ngram: int = option(13, "decontamination n-gram length in words (13 as in GPT-3; word = a "
                        "run of ASCII letters/digits or non-ASCII bytes, lower-cased)",
                        flag="--decontaminate-ngram")

    def __post_init__(self) -> None:
        if isinstance(self.paths, (str, os.PathLike)) or not all(
                isinstance(p, (str, os.PathLike)) for p in self.paths):
            raise ValueError(f"--decontaminate takes evaluation file paths, got {self.paths!r}")
        object.__setattr__(self, "paths", tuple(str(p) for p in self.paths))
        if isinstance(self.ngram, bool) or not isinstance(self.ngram, numbers.Integral) \
                or self.ngram < 1:
            raise ValueError(f"--decontaminate-ngram must be a positive integer (words per "
                             f"n-gram, default 13), got {self.ngram!r}")

    @property
    def enabled(self) -> bool:
        """Whether any evaluation set was given."""
        return bool(self.paths)


def _batches(texts: Iterable[str]) -> Iterable[list[str]]:
    """Lists of at most BATCH_DOCS texts and about BATCH_CHARS characters."""
    batch: list[str] = []
    chars = 0
    for t in texts:
        batch.append(t)
        chars += len(t) if t is not None else 0
        if chars >= BATCH_CHARS or len(batch) >= BATCH_DOCS:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


@dataclass(frozen=True, eq=False)
class NgramIndex:
    """The evaluation n-grams as a lookup table, built once, memory-mapped by every worker.

    >>> index = NgramIndex.build(eval_texts, n=13)
    >>> index.save(work / "decontam.idx")
    >>> index = NgramIndex.load(work / "decontam.idx")     # in each worker
    >>> hits = index.match(texts)                           # -1 = clean, else eval document
    """

    n: int
    keys: np.ndarray        # uint64 [2**k]: n-gram keys, 0 = empty slot
    values: np.ndarray      # int32 [2**k]: first evaluation document holding the key; -1 empty
    eval_docs: int          # documents indexed
    grams: int              # distinct n-grams
    too_short: int          # evaluation documents with fewer than n words (they cannot match)
    filter: np.ndarray      # uint64 [2**filter_bits / 64]: prefilter bitset (empty: none)
    filter_bits: int = 0

    def __post_init__(self) -> None:
        size = self.keys.shape[0]
        if (self.keys.dtype != np.uint64 or self.values.dtype != np.int32
                or self.keys.shape != self.values.shape or size < 1 or size & (size - 1)):
            raise ValueError(f"NgramIndex: keys must be uint64 and values int32 of one "
                             f"power-of-two length, got {self.keys.dtype} {self.keys.shape} / "
                             f"{self.values.dtype} {self.values.shape}")
        words = self.filter.shape[0]
        # the kernel reads the filter whenever filter_bits > 0: its size must match exactly
        if self.filter.dtype != np.uint64 or not (
                (self.filter_bits == 0 and words == 0)
                or (self.filter_bits >= 7 and words == 1 << (self.filter_bits - 6))):
            raise ValueError(f"NgramIndex: filter must be uint64 [2**(filter_bits - 6)] "
                             f"(filter_bits >= 7), or empty with filter_bits 0; got "
                             f"{self.filter.dtype} {self.filter.shape}, filter_bits "
                             f"{self.filter_bits}")
        if isinstance(self.n, bool) or not isinstance(self.n, numbers.Integral) or self.n < 1:
            raise ValueError(f"NgramIndex: n must be a positive integer, got {self.n!r}")

    # ---------------------------------------------------------------- building

    @classmethod
    def build(cls, texts: Iterable[str], n: int = 13, prefilter: bool = True) -> NgramIndex:
        """Index every word n-gram of ``texts`` (streamed in batches; memory is bounded by the
        evaluation set: 12 bytes per n-gram while building). The first document holding an
        n-gram is the one reported. ``prefilter=False`` leaves out the Bloom filter (same
        answers, slower queries; for tests and measurements)."""
        if isinstance(texts, (str, bytes)):
            raise TypeError("NgramIndex.build takes an iterable of documents, not one string: "
                            "wrap it in a list")
        DecontamConfig(ngram=n)  # the one validation of n
        k = _kernels()
        parts: list[np.ndarray] = []
        owners: list[np.ndarray] = []
        docs = too_short = 0
        for batch in _batches(texts):
            buf, off = utf8_buffer(batch)
            hashes, counts = k.ngram_hashes(buf, off, n)
            parts.append(hashes)
            owners.append(np.repeat(np.arange(docs, docs + len(batch), dtype=np.int64), counts))
            too_short += int(np.count_nonzero(counts == 0))
            docs += len(batch)
        if docs > np.iinfo(np.int32).max:
            raise ValueError(f"NgramIndex: at most {np.iinfo(np.int32).max} evaluation documents, "
                             f"got {docs}")
        hashes = np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint64)
        owner = (np.concatenate(owners) if owners else np.zeros(0, dtype=np.int64)).astype(np.int32)
        del parts, owners
        keys, values, grams = k.build_table(hashes, owner, k.table_bits(hashes.shape[0]))
        if k.table_bits(grams) < k.table_bits(hashes.shape[0]):  # many repeated n-grams
            used = keys != 0
            keys, values, grams = k.build_table(keys[used], values[used], k.table_bits(grams))
        fbits = k.filter_bits_for(grams) if prefilter else 0
        filt = k.build_filter(keys, fbits) if prefilter else np.zeros(0, dtype=np.uint64)
        return cls(n=int(n), keys=keys, values=values, eval_docs=docs, grams=int(grams),
                   too_short=too_short, filter=filt, filter_bits=fbits)

    # ---------------------------------------------------------------- file

    def header(self) -> dict[str, Any]:
        """The JSON header of the index file (without array positions)."""
        return {"format": FORMAT, "version": VERSION, "n": self.n, "eval_docs": self.eval_docs,
                "grams": self.grams, "too_short": self.too_short,
                "filter_bits": self.filter_bits}

    def save(self, path: str | os.PathLike[str]) -> None:
        """One file, complete or absent (:class:`fastprep.io.AtomicFile`): ``MAGIC``, the
        header length (uint64 LE), a JSON header, then the little-endian arrays ``keys``,
        ``values``, ``filter``, each at a 64-byte aligned offset the header records."""
        arrays = {"keys": self.keys, "values": self.values, "filter": self.filter}
        head = self.header()
        # the header's length decides where the arrays start: size it with the widest offset
        head["arrays"] = {name: [10**19, int(a.shape[0]), a.dtype.newbyteorder("<").str]
                          for name, a in arrays.items()}
        start = _align(len(MAGIC) + 8 + len(json.dumps(head)))
        pos = start
        for name, a in arrays.items():
            head["arrays"][name][0] = pos
            pos = _align(pos + a.nbytes)
        blob = json.dumps(head).encode()
        with AtomicFile(path) as f:
            f.write(MAGIC + len(blob).to_bytes(8, "little") + blob)
            written = len(MAGIC) + 8 + len(blob)
            for name, a in arrays.items():
                offset = head["arrays"][name][0]
                f.write(b"\0" * (offset - written))
                data = np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<"))
                f.write(memoryview(data).cast("B"))
                written = offset + data.nbytes

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> NgramIndex:
        """The index of :meth:`save`, its arrays memory-mapped read-only (shared page cache)."""
        path = Path(path)
        size = path.stat().st_size
        with open(path, "rb") as f:
            magic = f.read(len(MAGIC))
            length = int.from_bytes(f.read(8), "little")
            if magic != MAGIC or length > size:
                raise ValueError(f"{path}: not a fastprep n-gram index (rebuild it with "
                                 "NgramIndex.build(...).save(path))")
            head = json.loads(f.read(length))
        if head.get("format") != FORMAT or head.get("version") != VERSION:
            raise ValueError(f"{path}: index format {head.get('format')!r} version "
                             f"{head.get('version')!r}, expected {FORMAT} {VERSION}: rebuild it")
        arrays = {}
        for name, (offset, count, dtype) in head["arrays"].items():
            if offset + count * np.dtype(dtype).itemsize > size:
                raise ValueError(f"{path}: truncated index file ({name} ends past {size} bytes): "
                                 "rebuild it")
            arrays[name] = (np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=(count,))
                            if count else np.zeros(0, dtype=dtype))
        index = cls(n=int(head["n"]), keys=arrays["keys"], values=arrays["values"],
                    eval_docs=int(head["eval_docs"]), grams=int(head["grams"]),
                    too_short=int(head["too_short"]), filter=arrays["filter"],
                    filter_bits=int(head["filter_bits"]))
        # a probe stops at an empty slot: a table with none (a damaged file) would never return
        # (one pass over the keys, which also brings them into the shared page cache)
        if int(np.count_nonzero(index.keys)) != index.grams or 2 * index.grams > index.keys.shape[0]:
            raise ValueError(f"{path}: the table holds {np.count_nonzero(index.keys)} keys, the "
                             f"header says {index.grams} (at most half of "
                             f"{index.keys.shape[0]} slots): rebuild the index")
        return index

    # ---------------------------------------------------------------- queries

    def match(self, texts: Sequence[str]) -> np.ndarray:
        """int64 [len(texts)]: the evaluation document of each text's first (in text order)
        n-gram found in the index, -1 for a clean text. One pass over the UTF-8 bytes."""
        if len(texts) == 0:
            return np.zeros(0, dtype=np.int64)
        buf, off = utf8_buffer(texts)
        return _kernels().first_matches(buf, off, self.n, self.keys, self.values, self.filter,
                                        self.filter_bits)

    def first_gram(self, text: str) -> str | None:
        """The words of ``text``'s first n-gram found in the index, lower-cased and joined by
        single spaces (what matched, for a quarantine message); None for a clean text."""
        k = _kernels()
        data = text.encode("utf-8", "surrogatepass")
        hashes, _ = k.ngram_hashes(np.frombuffer(data, dtype=np.uint8) if data
                                   else np.zeros(1, dtype=np.uint8),
                                   np.array([0, len(data)], dtype=np.int64), self.n)
        hit = np.flatnonzero(k.table_find(self.keys, self.values, hashes) >= 0)
        if hit.shape[0] == 0:
            return None
        first = int(hit[0])
        words = _WORD.findall(data)[first:first + self.n]
        return b" ".join(words).lower().decode("utf-8", "replace")

    @property
    def nbytes(self) -> int:
        """Bytes of the lookup arrays (table and prefilter; what a worker maps)."""
        return int(self.keys.nbytes + self.values.nbytes + self.filter.nbytes)


def _align(pos: int) -> int:
    return (pos + ALIGN - 1) // ALIGN * ALIGN
