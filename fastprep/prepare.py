"""``fastprep prepare``: read -> clean -> dedupe (exact, then MinHash) -> tokenize -> pack -> write.

Data moves one way. The main thread reads, maps, cleans and deduplicates a batch of documents
(about ``batch_bytes`` of text) while a worker thread tokenizes the previous batch
(``encode_batch_fast`` releases the GIL and runs on the Rust thread pool), so reading overlaps
tokenizing. Token ids of kept documents are appended to a spill file in the output folder's work
directory (``.fastprep-work``), with only their lengths in memory (8 bytes per document). After
the last batch the packer plans rows over the lengths (:mod:`fastprep.pack`) and the rows are
gathered from the memory-mapped spill block by block into shards (:mod:`fastprep.write`). Peak
memory is thus bounded by the batch size, the block size and 8-30 bytes per document, not by
the corpus size.

Same input + same config = same bytes: input files are sorted, batches are processed in order,
deduplication keeps the first occurrence, and rows are shuffled with a fixed seed. The manifest
holds no timestamps or timings.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .clean import CleanConfig, Cleaner
from .dedupe import DedupeConfig, ExactDeduper
from .format import MANIFEST, ids_dtype, segment_dtype
from .pack import PackConfig, fill_rows, plan
from .quarantine import Quarantine
from .read import ReadConfig, expand_paths, file_sizes, read_all
from .records import KIND_NAMES, Doc, RecordConfig, RecordError, RecordMapper, dedupe_key, similarity_text
from .tokenize import Encoded, Encoder, TokenizeConfig, TokenizerBundle
from .progress import Progress
from .write import ShardWriter, atomic_write_bytes

WORK_DIR = ".fastprep-work"
# Files a previous (possibly interrupted) run may have left; anything else in the output folder
# belongs to someone else and is never deleted.
_OWNED_PREFIXES = ("shard-", ".shard-", "quarantine.jsonl", ".quarantine.jsonl", "tokenizer.json",
                   ".tokenizer.json", MANIFEST, f".{MANIFEST}", WORK_DIR)


class OutputError(ValueError):
    """The output folder cannot be used (holds a dataset or foreign files)."""


@dataclass(frozen=True)
class PrepareConfig:
    """Everything ``fastprep prepare`` does, one frozen dataclass per stage.

    out: the dataset folder to create.
    shard_rows: rows per shard; 0 chooses ~256 MiB of ``input_ids`` per shard.
    batch_bytes: text per tokenization batch (larger batches amortise per-call overhead and keep
        every Rust thread busy; each batch is held twice in memory at most).
    strict: stop at the first bad record with an error naming file, line and fix.
    overwrite: replace an existing dataset in ``out``.
    progress: show a progress line (None: only when stderr is a terminal).
    """

    read: ReadConfig
    tokenize: TokenizeConfig
    out: str
    records: RecordConfig = field(default_factory=RecordConfig)
    clean: CleanConfig = field(default_factory=CleanConfig)
    dedupe: DedupeConfig = field(default_factory=DedupeConfig)
    pack: PackConfig = field(default_factory=PackConfig)
    shard_rows: int = 0
    batch_bytes: int = 1 << 20
    strict: bool = False
    overwrite: bool = False
    progress: bool | None = None

    def __post_init__(self) -> None:
        if not self.out:
            raise ValueError("--out is required")
        if self.shard_rows < 0:
            raise ValueError("--shard-rows must be >= 0 (0 = automatic)")
        if self.batch_bytes < 1:
            raise ValueError("--batch-bytes must be positive")

    def manifest_config(self) -> dict[str, Any]:
        """The configuration that determines the output bytes (no output path, no display flags)."""
        d = dataclasses.asdict(self)
        for k in ("out", "overwrite", "progress"):
            d.pop(k)
        return d


@dataclass
class PrepareStats:
    """What a run did: the manifest's counts plus timings (timings never enter the manifest)."""

    out: str
    counts: dict[str, Any]
    packing: dict[str, Any]
    seconds: dict[str, float]
    manifest: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"out": self.out, "counts": self.counts, "packing": self.packing, "seconds": self.seconds}


def _claim_out_dir(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {out} exists and is not a folder")
    if not out.exists():
        out.mkdir(parents=True)
        return
    names = os.listdir(out)
    foreign = [n for n in names if not n.startswith(_OWNED_PREFIXES)]
    if foreign:
        raise OutputError(f"--out {out} holds files fastprep did not write ({', '.join(sorted(foreign)[:3])}"
                          f"{', ...' if len(foreign) > 3 else ''}); choose an empty or new folder")
    if MANIFEST in names and not overwrite:
        raise OutputError(f"--out {out} already holds a finished dataset; pass --overwrite to replace it")
    # Remove the manifest first so the folder stops being a "finished dataset" before shards go.
    if MANIFEST in names:
        (out / MANIFEST).unlink()
    for n in names:
        p = out / n
        if n == MANIFEST:
            continue
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink()


class _TokenSpill:
    """Token ids (and loss masks) of kept documents, appended to files; lengths kept in memory."""

    def __init__(self, work: Path, dtype: np.dtype) -> None:
        self.dtype = dtype
        self.ids_path = work / "ids.bin"
        self.mask_path = work / "loss_mask.bin"
        self._ids = open(self.ids_path, "wb")
        self._mask: Any = None
        self._lengths: list[np.ndarray] = []
        self.tokens = 0
        self.target_tokens = 0
        self.kinds: Counter[str] = Counter()

    def append(self, enc: Encoded) -> None:
        self._ids.write(enc.ids.astype(self.dtype, copy=False).tobytes())
        if enc.loss_mask is not None and self._mask is None:
            # First document with a prompt or chat: from here on a mask is stored for every token,
            # all ones for the plain-text documents before it.
            self._mask = open(self.mask_path, "wb")
            left = self.tokens
            while left:
                n = min(left, 1 << 24)
                self._mask.write(np.ones(n, np.uint8).tobytes())
                left -= n
            self.target_tokens = self.tokens
        if self._mask is not None:
            mask = enc.loss_mask if enc.loss_mask is not None else np.ones(len(enc.ids), np.uint8)
            self._mask.write(mask.tobytes())
            self.target_tokens += int(mask.sum())
        else:
            self.target_tokens += len(enc.ids)
        self._lengths.append(enc.lengths)
        self.tokens += len(enc.ids)

    def finish(self) -> tuple[np.ndarray, bool]:
        """(lengths, has_loss_mask); closes the files."""
        self._ids.close()
        if self._mask is not None:
            self._mask.close()
        lengths = np.concatenate(self._lengths) if self._lengths else np.zeros(0, np.int64)
        return lengths, self._mask is not None

    def close(self) -> None:
        self._ids.close()
        if self._mask is not None:
            self._mask.close()


def _excerpt(value: Any) -> str:
    if isinstance(value, str):
        return value[:200]
    try:
        import orjson

        return orjson.dumps(value, default=str)[:200].decode("utf-8", "replace")
    except TypeError:
        return repr(value)[:200]


def _doc_size(doc: Doc) -> int:
    if doc.kind == 0:
        return len(doc.text)
    if doc.kind == 1:
        return len(doc.prompt) + len(doc.completion)
    return sum(len(c) for _, c in doc.messages)


def prepare(cfg: PrepareConfig) -> PrepareStats:
    """Run the whole preparation; return the statistics the CLI prints.

    Raises ``InputError``/``TokenizerError``/``OutputError``/``StrictError``/``ValueError`` with a
    one-line message for unusable inputs or configuration, ``OSError`` for disk failures; no
    manifest is written unless the run completes, so a failed run never looks finished.
    """
    t_start = time.perf_counter()
    files = expand_paths(cfg.read.paths)
    bundle = TokenizerBundle(cfg.tokenize)
    L = cfg.pack.seq_len
    ids_dt, seg_dt = ids_dtype(bundle.vocab_size), segment_dtype(L)
    out = Path(cfg.out)
    _claim_out_dir(out, cfg.overwrite)
    work = out / WORK_DIR
    work.mkdir()
    quarantine = Quarantine(out / "quarantine.jsonl", files, cfg.strict)
    progress = Progress(cfg.progress)
    spill = _TokenSpill(work, ids_dt)
    writer: ShardWriter | None = None
    report_f = None
    try:
        mapper = RecordMapper(cfg.records)
        cleaner = Cleaner(cfg.clean)
        exact = ExactDeduper() if cfg.dedupe.exact else None
        minhash = None
        if cfg.dedupe.minhash is not None:
            from .minhash import MinHashDeduper

            minhash = MinHashDeduper(cfg.dedupe.minhash)
            if cfg.dedupe.report:
                report_tmp = Path(cfg.dedupe.report).with_name(f".{Path(cfg.dedupe.report).name}.tmp")
                report_f = open(report_tmp, "wb")
        encoder = Encoder(bundle)
        counts: Counter[str] = Counter()
        seconds: Counter[str] = Counter()
        text_bytes = 0

        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fastprep-tokenize")
        pending: list[tuple[list[Doc], Future[Encoded]]] = []

        def timed_encode(docs: list[Doc]) -> Encoded:
            t = time.perf_counter()
            enc = encoder(docs)
            seconds["tokenize"] += time.perf_counter() - t
            return enc

        def drain(limit: int) -> None:
            while len(pending) > limit:
                docs, fut = pending.pop(0)
                enc = fut.result()
                for i, reason, detail in enc.errors:
                    quarantine.add(docs[i].file, docs[i].line, reason, detail, "")
                for d, k in zip(docs, enc.keep):
                    if k:
                        counts[f"kept_{KIND_NAMES[d.kind]}"] += 1
                spill.append(enc)
                progress.update(counts["records_read"], text_bytes, spill.tokens)

        def submit(docs: list[Doc]) -> None:
            t = time.perf_counter()
            if exact is not None:
                new = exact([dedupe_key(d) for d in docs])
                counts["exact_duplicates"] += int(len(docs) - new.sum())
                docs = [d for d, k in zip(docs, new) if k]
            if minhash is not None and docs:
                ids = np.array([(d.file << 40) | d.line for d in docs], dtype=np.int64)
                res = minhash([similarity_text(d) for d in docs], ids)
                counts["near_duplicates"] += int(len(docs) - res.keep.sum())
                if report_f is not None:
                    import orjson

                    for d, k, m, s in zip(docs, res.keep, res.match, res.similarity):
                        if not k:
                            report_f.write(orjson.dumps({
                                "source": files[d.file], "line": d.line,
                                "matched_source": files[int(m) >> 40], "matched_line": int(m) & ((1 << 40) - 1),
                                "similarity": round(float(s), 4)}) + b"\n")
                docs = [d for d, k in zip(docs, res.keep) if k]
            seconds["dedupe"] += time.perf_counter() - t
            if docs:
                pending.append((docs, pool.submit(timed_encode, docs)))
            drain(1)  # keep one batch tokenizing while the next is read

        batch: list[Doc] = []
        batch_size = 0
        t_read = time.perf_counter()
        try:
            for raw in read_all(files, cfg.read):
                if raw.bad is not None:
                    if raw.bad.reason == "blank_line":
                        counts["blank_lines"] += 1
                        continue
                    counts["records_read"] += 1
                    quarantine.add(raw.file, raw.line, raw.bad.reason, raw.bad.detail, raw.bad.excerpt)
                    continue
                counts["records_read"] += 1
                if raw.repaired:
                    counts[f"repaired_{raw.repaired}"] += 1
                try:
                    doc = mapper(raw.value, raw.file, raw.line)
                    if cleaner(doc):
                        counts["repaired_cleaning"] += 1
                except RecordError as e:
                    quarantine.add(raw.file, raw.line, e.reason, e.detail, _excerpt(raw.value))
                    continue
                size = _doc_size(doc)
                text_bytes += size
                batch.append(doc)
                batch_size += size
                if batch_size >= cfg.batch_bytes:
                    submit(batch)
                    batch, batch_size = [], 0
            if batch:
                submit(batch)
            drain(0)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        seconds["read_clean_dedupe_tokenize"] = time.perf_counter() - t_read

        # ---- pack -------------------------------------------------------------------------
        progress.message("packing")
        t = time.perf_counter()
        lengths, has_mask = spill.finish()
        doc_offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=doc_offsets[1:])
        packing = plan(lengths, cfg.pack)
        seconds["pack"] = time.perf_counter() - t

        # ---- write ------------------------------------------------------------------------
        progress.message("writing shards")
        t = time.perf_counter()
        dtypes = {"input_ids": ids_dt, "segment_ids": seg_dt}
        if has_mask:
            dtypes["loss_mask"] = np.dtype(np.uint8)
        shard_rows = cfg.shard_rows or max(1, (256 << 20) // (L * ids_dt.itemsize))
        writer = ShardWriter(out, L, dtypes, shard_rows)
        block = max(1, min(shard_rows, (64 << 20) // (L * 4)))
        for lo in range(0, packing.n_rows, block):
            hi = min(lo + block, packing.n_rows)
            # A fresh map per block: pages touched by earlier blocks are released, so resident
            # memory stays at one block's worth however large the spill file grows.
            ids_map = np.memmap(spill.ids_path, dtype=ids_dt, mode="r") if spill.tokens else np.zeros(0, ids_dt)
            mask_map = np.memmap(spill.mask_path, dtype=np.uint8, mode="r") if has_mask and spill.tokens else None
            rows = fill_rows(packing, ids_map, doc_offsets, lo, hi, pad_id=bundle.pad_id,
                             ids_dtype=ids_dt, seg_dtype=seg_dt, loss_mask=mask_map)
            del ids_map, mask_map
            writer.add(rows)
        atomic_write_bytes(out / "tokenizer.json", bundle.json_bytes)
        quarantine.close()
        if report_f is not None:
            report_f.close()
            os.replace(report_tmp, cfg.dedupe.report)
            report_f = None

        dropped = dict(sorted(quarantine.counts.items()))
        kept_docs = int(len(lengths))
        count_out: dict[str, Any] = {
            "records_read": counts["records_read"],
            "records_kept": kept_docs,
            "dropped": dropped,
            "dropped_total": sum(dropped.values()),
            "exact_duplicates": counts["exact_duplicates"],
            "near_duplicates": counts["near_duplicates"],
            "blank_lines": counts["blank_lines"],
            "repaired": {k[len("repaired_"):]: v for k, v in sorted(counts.items()) if k.startswith("repaired_")},
            "documents_by_shape": {k[len("kept_"):]: v for k, v in sorted(counts.items()) if k.startswith("kept_")},
            "documents_split": packing.docs_split,
            "documents_truncated": packing.docs_truncated,
            "tokens": packing.tokens_in,
            "tokens_kept": packing.tokens_kept,
            "tokens_dropped": packing.tokens_dropped,
            "target_tokens": spill.target_tokens,
            "rows": packing.n_rows,
            "padding_tokens": packing.n_rows * L - packing.tokens_kept,
            "text_chars": text_bytes,
        }
        pack_out = {"mode": cfg.pack.mode, "long_policy": cfg.pack.long_policy, "seq_len": L,
                    "efficiency": round(packing.efficiency, 6),
                    "dropped_token_share": round(packing.tokens_dropped / max(packing.tokens_in, 1), 6)}
        dedupe_out: dict[str, Any] = {"exact": cfg.dedupe.exact,
                                      "exact_index_bytes": exact.nbytes if exact else 0}
        if minhash is not None:
            dedupe_out["minhash"] = minhash.params()
            dedupe_out["minhash_index_bytes"] = minhash.nbytes
            dedupe_out["minhash_bytes_per_doc"] = round(minhash.nbytes / max(minhash.docs_indexed, 1), 1)
        manifest = writer.finish({
            "fastprep_version": __version__,
            "tokenizer": {**bundle.describe(), "file": "tokenizer.json"},
            "config": cfg.manifest_config(),
            "inputs": file_sizes(files),
            "counts": count_out,
            "packing": pack_out,
            "dedupe": dedupe_out,
        })
        seconds["write"] = time.perf_counter() - t
        seconds["total"] = time.perf_counter() - t_start
        progress.close()
        stats = PrepareStats(out=str(out), counts=count_out, packing=pack_out,
                             seconds={k: round(v, 3) for k, v in seconds.items()}, manifest=manifest)
        return stats
    except BaseException:
        progress.close()
        quarantine.abort()
        spill.close()
        if writer is not None:
            writer.abort()
        if report_f is not None:
            report_f.close()
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
