"""``fastprep prepare``: read -> clean -> dedupe (exact, then MinHash) -> tokenize -> pack -> write.

Data moves one way. Inputs are cut into tasks (:mod:`fastprep.tasks`: whole files, or byte ranges
of big JSONL files); worker processes (``--workers``, default one per core, each with a tokenizer
pool of cores/workers threads) read, clean, hash and tokenize a task and spill its token ids to
the work folder (``.fastprep-work``). The parent takes results strictly in task order: it
quarantines bad records with global line numbers, removes exact duplicates (first occurrence
kept) and near duplicates (MinHash LSH over signatures the workers computed), and appends the
task's tokens to one spill file, keeping only 8 bytes per document (its length) in memory.

After the last task the packer plans rows over the lengths (removed documents count as length 0,
so they produce no piece; :mod:`fastprep.pack`) and the rows are gathered from the token
spill block by block (positioned reads) into shards (:mod:`fastprep.write`). Peak memory is
bounded by the batch size, the block size and ~130 bytes per document (lengths, offsets, the
exact-dedupe table, the packing plan; measured: the driver's peak 217 -> 225 MiB for 4x the
text), not by the corpus size; streaming MinHash adds its index (~0.8 KB per kept document).

Same input + same config = same bytes, whatever the number of workers, task size or batch size:
input files are sorted, results merge in task order, deduplication keeps the first occurrence,
rows are shuffled with a fixed seed, and the manifest holds no timestamps, timings or
parallelism settings.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

import numpy as np

from . import __version__
from .clean import CleanConfig
from .dedupe import DedupeConfig, ExactDeduper
from .format import MANIFEST, ids_dtype, segment_dtype
from .pack import PackConfig, fill_rows, plan, row_buffers
from .progress import Progress
from .quarantine import Quarantine
from .ranges import read_ranges
from .read import ReadConfig, expand_paths, file_kind, file_sizes
from .records import KIND_NAMES, RecordConfig
from .executor import available_cores, runs_inline, task_results
from .tasks import Task, TaskResult, TaskStrictError, _write_ones, load_result, plan_tasks
from .tokenize import TokenizeConfig, TokenizerBundle
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
        every Rust thread busy).
    workers: worker processes (0: one per available core); the output is identical for any value.
    executor: ``local`` processes, or ``ray`` tasks (``ray_address``: ``auto`` for a running
        cluster, None to start a local Ray; ``ray_cpus_per_task`` CPUs and tokenizer threads per
        task). Output is identical either way; see :mod:`fastprep.executor`.
    task_bytes: input bytes per task (0: automatic, 1-64 MiB so each worker gets ~16 tasks).
    strict: stop at the first bad record with an error naming file, line and fix.
    overwrite: replace an existing dataset (or discard an interrupted run) in ``out``.
    resume: insist on resuming an interrupted run in ``out`` (refused when its configuration or
        inputs differ). Without it, an interrupted run with the same fingerprint is resumed
        automatically and one with a different fingerprint is discarded.
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
    workers: int = 0
    task_bytes: int = 0
    strict: bool = False
    overwrite: bool = False
    progress: bool | None = None
    resume: bool = False
    executor: Literal["local", "ray"] = "local"
    ray_address: str | None = None
    ray_cpus_per_task: int = 1

    def __post_init__(self) -> None:
        if not self.out:
            raise ValueError("--out is required")
        if self.shard_rows < 0:
            raise ValueError("--shard-rows must be >= 0 (0 = automatic)")
        if self.batch_bytes < 1:
            raise ValueError("--batch-bytes must be positive")
        if self.workers < 0:
            raise ValueError("--workers must be >= 0 (0 = one per core)")
        if self.executor not in ("local", "ray"):
            raise ValueError(f"--executor must be local or ray, not {self.executor!r}")
        if self.ray_cpus_per_task < 1:
            raise ValueError("--ray-cpus-per-task must be >= 1")
        if self.task_bytes < 0:
            raise ValueError("--task-bytes must be >= 0 (0 = automatic)")

    def manifest_config(self) -> dict[str, Any]:
        """The configuration that determines the output bytes: no output path, display flags or
        parallelism settings, which never change a byte."""
        d = dataclasses.asdict(self)
        for k in ("out", "overwrite", "progress", "workers", "task_bytes", "batch_bytes", "resume",
                  "executor", "ray_address", "ray_cpus_per_task"):
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
    notes: list[str] = field(default_factory=list)
    # MinHash method and its costs: "stream" (index_bytes, bytes_per_doc, sets_file_bytes) or
    # "shuffle" (partitions, candidate_pairs, verified_pairs, files_bytes); empty without MinHash
    near_dedupe: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"out": self.out, "counts": self.counts, "packing": self.packing, "seconds": self.seconds,
                "near_dedupe": self.near_dedupe, "notes": self.notes}


def _fingerprint(cfg: PrepareConfig, files: list[str], bundle: TokenizerBundle) -> str:
    """What the output depends on: configuration, code version, tokenizer, template and inputs
    (path, size, modification time). A resumed run must match it exactly."""
    import hashlib

    import orjson

    inputs = []
    for f in files:
        st = os.stat(f)
        inputs.append([f, st.st_size, st.st_mtime_ns])
    blob = orjson.dumps({"fastprep": __version__, "config": cfg.manifest_config(),
                         "tokenizer": bundle.sha256, "template": bundle.chat_template,
                         "inputs": inputs}, option=orjson.OPT_SORT_KEYS, default=str)
    return hashlib.sha256(blob).hexdigest()


def _clear(out: Path, names: list[str], keep: str | None = None) -> None:
    # The manifest goes first so the folder stops being a "finished dataset" before shards go.
    if MANIFEST in names:
        (out / MANIFEST).unlink()
    for n in names:
        p = out / n
        if n == MANIFEST or n == keep:
            continue
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink()


def _claim_out_dir(out: Path, cfg: PrepareConfig, fingerprint: str) -> tuple[int | None, list[str]]:
    """Make ``out`` ready. Returns the task size of an interrupted run to resume (None for a fresh
    start) and notes for the user."""
    notes: list[str] = []
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {out} exists and is not a folder")
    if not out.exists():
        if cfg.resume:
            raise OutputError(f"--resume: {out} holds no interrupted run")
        out.mkdir(parents=True)
        return None, notes
    names = os.listdir(out)
    foreign = [n for n in names if not n.startswith(_OWNED_PREFIXES)]
    if foreign:
        raise OutputError(f"--out {out} holds files fastprep did not write ({', '.join(sorted(foreign)[:3])}"
                          f"{', ...' if len(foreign) > 3 else ''}); choose an empty or new folder")
    if MANIFEST in names:
        if not cfg.overwrite:
            raise OutputError(f"--out {out} already holds a finished dataset; pass --overwrite to replace it")
        _clear(out, names)
        return None, notes
    state = None
    if WORK_DIR in names:
        try:
            import orjson

            state = orjson.loads((out / WORK_DIR / "state.json").read_bytes())
        except (OSError, ValueError):
            state = None
    if state is not None and state.get("fingerprint") == fingerprint and not cfg.overwrite and (
            not cfg.task_bytes or cfg.task_bytes == state.get("task_bytes")):
        _clear(out, names, keep=WORK_DIR)  # partial shards of the interrupted run go
        return int(state["task_bytes"]), notes
    if cfg.resume:
        why = ("its configuration, tokenizer or input files differ from this run's"
               if state is not None else "it left no resumable state")
        raise OutputError(f"--resume: cannot resume the run in {out}: {why}; run without --resume "
                          f"to start over")
    if names:
        notes.append(f"discarded an unfinished run in {out} (different configuration or inputs)")
    _clear(out, names)
    return None, notes


class _TokenSpill:
    """The tokens of every task, appended in task order into one file (plus a loss-mask file once
    any document needs one); per-document lengths stay in memory (8 bytes per document)."""

    def __init__(self, work: Path, dtype: np.dtype) -> None:
        self.dtype = dtype
        self.ids_path = work / "ids.bin"
        self.mask_path = work / "loss_mask.bin"
        self._ids = open(self.ids_path, "wb")  # rebuilt from the task files on every (re)run
        self._mask: Any = None
        self._lengths: list[np.ndarray] = []   # tokens per document, duplicates included
        self._planned: list[np.ndarray] = []   # the same with removed documents at 0
        self._dropped: list[np.ndarray] = []   # documents removed after their task was appended
        self.docs = 0
        self.tokens = 0

    def append_task(self, res: TaskResult, keep: np.ndarray) -> None:
        with open(res.ids_path, "rb") as f:
            shutil.copyfileobj(f, self._ids, 1 << 22)
        n_tokens = int(res.lengths.sum())
        if res.mask_path is not None and self._mask is None:
            # First task with a prompt or chat: from here on a mask is stored for every token,
            # all ones for the plain-text tokens before it.
            self._mask = open(self.mask_path, "wb")
            _write_ones(self._mask, self.tokens)
        if self._mask is not None:
            if res.mask_path is not None:
                with open(res.mask_path, "rb") as f:
                    shutil.copyfileobj(f, self._mask, 1 << 22)
            else:
                _write_ones(self._mask, n_tokens)
        self._lengths.append(res.lengths)
        self._planned.append(np.where(keep, res.lengths, 0))
        self.docs += len(res.lengths)
        self.tokens += n_tokens  # task files stay until the run succeeds: a crash resumes from them

    def drop(self, positions: np.ndarray) -> None:
        """Remove documents (global positions in append order) decided after their task, e.g.
        by the shuffle MinHash; their tokens stay in the spill but get no piece."""
        self._dropped.append(np.asarray(positions, dtype=np.int64))

    def finish(self) -> tuple[np.ndarray, np.ndarray, bool]:
        """(lengths, planned lengths, has_loss_mask); closes the files."""
        self.close()
        def cat(parts: list[np.ndarray]) -> np.ndarray:
            return np.concatenate(parts) if parts else np.zeros(0, np.int64)
        planned = cat(self._planned)
        planned[cat(self._dropped)] = 0
        lengths = cat(self._lengths)
        self._lengths, self._planned, self._dropped = [], [], []  # held once, by the caller
        return lengths, planned, self._mask is not None

    def close(self) -> None:
        self._ids.close()
        if self._mask is not None:
            self._mask.close()


def _needs_template(path: str) -> bool:
    return file_kind(path) in ("jsonl", "parquet")


def _near_method(cfg: PrepareConfig) -> str:
    m = cfg.dedupe.near_method
    return m if m != "auto" else ("shuffle" if cfg.executor == "ray" else "stream")


@dataclass(frozen=True)
class _Removed:
    positions: np.ndarray  # int64: spill positions of the removed near duplicates
    kinds: np.ndarray      # uint8: their record kinds
    targets: np.ndarray    # int64: their target tokens


class _NearShuffle:
    """MinHash by band shuffle (:mod:`fastprep.lsh_shuffle`) instead of the driver's index.

    Per task (after exact dedupe, so copies never form the quadratic buckets), the driver writes
    the documents' band keys into ``P`` partition files and their signatures or shingle sets
    into a memory-mapped store, both under the work folder (shared storage under Ray). After
    the last task, every partition's candidate pairs are found and verified in parallel (Ray
    tasks, or in-process without Ray) and the keep-first resolution gives exactly the streaming
    index's decision. The driver keeps 17 B per MinHash'd document (id, spill position, kind)
    plus 8 B for its target count, not the index's ~0.8 KB per kept document.
    """

    def __init__(self, cfg: PrepareConfig, work: Path, workers: int) -> None:
        self.cfg = cfg
        self.mh = cfg.dedupe.minhash
        self.dir = work / "near-shuffle"
        if self.dir.exists():  # a resumed run rewrites every task's files from its saved result
            shutil.rmtree(self.dir)
        self.dir.mkdir()
        # a few partitions per parallel slot, so a slow partition does not hold up the end
        self.partitions = max(2, 4 * workers)
        self._ids: list[np.ndarray] = []
        self._pos: list[np.ndarray] = []
        self._kinds: list[np.ndarray] = []
        self._targets: list[np.ndarray] = []
        self.stats: dict[str, Any] = {"method": "shuffle", "partitions": self.partitions}

    def add(self, res: TaskResult, idx: np.ndarray, doc_ids: np.ndarray, sets: Any, base: int) -> None:
        from .lsh_shuffle import partition_signatures, write_doc_store

        name = f"task-{res.task.index:06d}"
        sigs = res.signatures[idx]
        partition_signatures(sigs, doc_ids, self.mh, self.partitions, self.dir, name)
        exact = self.mh.verify == "exact"
        write_doc_store(self.dir / "store", name, doc_ids, None if exact else sigs,
                        sets if exact else None)
        self._ids.append(doc_ids)
        self._pos.append(base + idx)
        self._kinds.append(res.kinds[idx])
        self._targets.append(res.targets[idx])

    def resolve(self, report_f: IO[bytes] | None, files: list[str]) -> _Removed:
        from .lsh_shuffle import (
            FileStore,
            local_shuffle_dedupe,
            partition_files,
            ray_shuffle_dedupe,
        )

        def cat(parts: list[np.ndarray], dtype: Any) -> np.ndarray:
            return np.concatenate(parts) if parts else np.zeros(0, dtype)

        ids = cat(self._ids, np.int64)
        if not ids.size:
            return _Removed(np.zeros(0, np.int64), np.zeros(0, np.uint8), np.zeros(0, np.int64))
        by_partition = partition_files(self.dir, self.partitions)
        store = FileStore(self.dir / "store")
        if self.cfg.executor == "ray":
            removals = ray_shuffle_dedupe(by_partition, store, self.mh,
                                          num_cpus=self.cfg.ray_cpus_per_task)
        else:
            removals = local_shuffle_dedupe(by_partition, store, self.mh)
        self.stats.update(candidate_pairs=removals.candidates, verified_pairs=removals.verified,
                          files_bytes=sum(p.stat().st_size for p in self.dir.rglob("*") if p.is_file()))
        res = removals.result(ids)
        if report_f is not None:
            _report(report_f, files, ids, res)
        gone = ~res.keep
        return _Removed(cat(self._pos, np.int64)[gone], cat(self._kinds, np.uint8)[gone],
                        cat(self._targets, np.int64)[gone])


def _report(f: IO[bytes], files: list[str], doc_ids: np.ndarray, mh: Any) -> None:
    """One JSONL line per removed near duplicate: where it is, what it matched, how similar."""
    import orjson

    low = (1 << 40) - 1
    for i in np.flatnonzero(~mh.keep):
        d, m = int(doc_ids[i]), int(mh.match[i])
        f.write(orjson.dumps({"source": files[d >> 40], "line": d & low,
                              "matched_source": files[m >> 40], "matched_line": m & low,
                              "similarity": round(float(mh.similarity[i]), 4)}) + b"\n")


def _block_pieces(packing: Any, doc_offsets: np.ndarray, lo: int, hi: int
                  ) -> tuple[Any, np.ndarray, np.ndarray]:
    """The pieces of rows [lo, hi) as a plan of their own in which every piece is a document:
    piece ``i`` becomes document ``rank[i]``, its rank in spill order. Returns that plan and the
    spill offset and length of each of those documents, in that (ascending) order.

    Only the pieces' own tokens are read, never whole documents, so one block reads at most
    ``(hi - lo) x L`` tokens whatever the document lengths (a document split over many rows is
    read piece by piece, not once per block it reaches); pieces that continue one another in
    the spill merge into one read."""
    a, b = (int(k) for k in np.searchsorted(packing.piece_row, [lo, hi]))
    lens = packing.piece_len[a:b]
    spill = doc_offsets[packing.piece_doc[a:b]] + packing.piece_start[a:b]
    order = np.argsort(spill, kind="stable")
    rank = np.empty(b - a, dtype=np.int64)
    rank[order] = np.arange(b - a, dtype=np.int64)
    sub = dataclasses.replace(
        packing, piece_doc=rank, piece_start=np.zeros(b - a, np.int64), piece_len=lens,
        piece_row=packing.piece_row[a:b], piece_offset=packing.piece_offset[a:b],
        piece_segment=packing.piece_segment[a:b])
    return sub, spill[order], lens[order]


def _row_blocks(packing: Any, doc_offsets: np.ndarray, ids_path: Path, mask_path: Path | None,
                block: int, pad_id: int, ids_dt: np.dtype, seg_dt: np.dtype) -> Iterator[dict[str, np.ndarray]]:
    """The rows of ``packing``, ``block`` rows at a time, filled from the token spill (and the
    loss-mask spill when ``mask_path`` is given). Each yielded block is a view of buffers the
    next block overwrites: write it before asking for the next.

    Rows are shuffled, so a block needs pieces from all over the spill; they are read with
    positioned reads into one compact buffer rather than through a memory map, whose
    fault-around and read-ahead made the parent's RSS follow the spill size (measured: +72 MiB
    file-backed at 212 MB of text). The buffers (pieces read, rows filled) are allocated once:
    fresh ~8 MiB arrays per block left glibc's heap holding freed blocks (its mmap threshold
    rises after the first free), so the parent's peak grew with the number of blocks (measured
    119 -> 177 MiB anonymous for 4x the text, of which malloc_trim gave back 52 MiB at the end).
    """
    L = packing.seq_len
    rows_buf = row_buffers(block, L, ids_dt, seg_dt, loss_mask=mask_path is not None)
    ids_buf = np.empty(block * L, ids_dt)  # a block's pieces hold at most block x L tokens
    mask_buf = np.empty(block * L if mask_path is not None else 0, np.uint8)
    with open(ids_path, "rb") as ids_f, open(mask_path or os.devnull, "rb") as mask_f:
        for lo in range(0, packing.n_rows, block):
            hi = min(lo + block, packing.n_rows)
            sub, starts, lens = _block_pieces(packing, doc_offsets, lo, hi)
            tokens = read_ranges(ids_f, starts, lens, ids_buf)
            mask = read_ranges(mask_f, starts, lens, mask_buf) if mask_path is not None else None
            local = np.zeros(len(lens) + 1, dtype=np.int64)
            np.cumsum(lens, out=local[1:])
            yield fill_rows(sub, tokens, local, lo, hi, pad_id=pad_id, ids_dtype=ids_dt,
                            seg_dtype=seg_dt, loss_mask=mask, out=rows_buf)


def _warm_kernels(cfg: PrepareConfig, ids_dt: np.dtype, seg_dt: np.dtype) -> None:
    """Load the driver's numba kernels (numba's import plus their cache: ~1 s here) on tiny
    inputs of the real types: in a thread while the workers start, or before the tasks when they
    run in this process. Otherwise the load sits on the critical path: at the first result with
    exact dedupe, at packing without. A failure is ignored here: it resurfaces, with its real
    message, where the kernel is used."""
    try:
        if cfg.dedupe.exact:
            ExactDeduper().insert(np.zeros((1, 2), np.uint64))
        L = cfg.pack.seq_len
        lengths = np.array([L + 1, 1], np.int64)
        offsets = np.array([0, L + 1, L + 2], np.int64)
        packing = plan(lengths, cfg.pack)
        sub, _, lens = _block_pieces(packing, offsets, 0, packing.n_rows)
        local = np.zeros(len(lens) + 1, dtype=np.int64)
        np.cumsum(lens, out=local[1:])
        for mask in (None, np.ones(int(lens.sum()), np.uint8)):
            fill_rows(sub, np.zeros(int(lens.sum()), ids_dt), local, 0, packing.n_rows, pad_id=0,
                      ids_dtype=ids_dt, seg_dtype=seg_dt, loss_mask=mask,
                      out=row_buffers(packing.n_rows, L, ids_dt, seg_dt, loss_mask=mask is not None))
    except Exception:  # noqa: BLE001
        pass


def prepare(cfg: PrepareConfig) -> PrepareStats:
    """Run the whole preparation; return the statistics the CLI prints.

    Raises ``InputError``/``TokenizerError``/``OutputError``/``StrictError``/``ValueError`` with a
    one-line message for unusable inputs or configuration, ``OSError`` for disk failures; no
    manifest is written unless the run completes, so a failed run never looks finished.
    """
    t_start = time.perf_counter()
    files = expand_paths(cfg.read.paths)
    bundle = TokenizerBundle(cfg.tokenize)
    if any(_needs_template(f) for f in files) and cfg.records.shape in ("auto", "chat"):
        bundle.renderer  # compile the chat template now: a broken one is a config error
    L = cfg.pack.seq_len
    ids_dt, seg_dt = ids_dtype(bundle.vocab_size), segment_dtype(L)
    workers = cfg.workers or available_cores()
    out = Path(cfg.out)
    fingerprint = _fingerprint(cfg, files, bundle)
    resumed_task_bytes, notes = _claim_out_dir(out, cfg, fingerprint)
    work = out / WORK_DIR
    if resumed_task_bytes is not None:
        task_bytes = resumed_task_bytes  # the same cut into tasks, so finished tasks are reused
    else:
        total_bytes = sum(os.path.getsize(f) for f in files)
        # ~16 tasks per worker (1-64 MiB each): the last task runs alone while other workers
        # idle, so smaller tasks shorten that tail; per-task cost is a few file opens.
        task_bytes = cfg.task_bytes or int(min(64 << 20, max(1 << 20, total_bytes // (workers * 16) + 1)))
        work.mkdir()
        import orjson

        atomic_write_bytes(work / "state.json", orjson.dumps({"fingerprint": fingerprint,
                                                              "task_bytes": task_bytes}))
    tasks = plan_tasks(files, task_bytes)
    quarantine = Quarantine(out / "quarantine.jsonl", files, cfg.strict)
    progress = Progress(cfg.progress)
    spill = _TokenSpill(work, ids_dt)
    writer: ShardWriter | None = None
    report_f = None
    report_tmp: Path | None = None
    warm: threading.Thread | None = None
    try:
        exact = ExactDeduper() if cfg.dedupe.exact else None
        minhash = None
        near_shuffle: _NearShuffle | None = None
        if cfg.dedupe.minhash is not None:
            from .minhash import MinHashDeduper, take_sets

            shuffle = _near_method(cfg) == "shuffle"
            # stream: exact verification keeps the kept documents' shingle sets in a
            # memory-mapped file of the work folder (removed with it), not in the heap;
            # shuffle: the deduper only resolves the parameters, the work goes to NearShuffle
            minhash = MinHashDeduper(cfg.dedupe.minhash,
                                     sets_file=None if shuffle else work / "minhash-sets.u32")
            if shuffle:
                near_shuffle = _NearShuffle(cfg, work, workers)
            if cfg.dedupe.report:
                report_tmp = Path(cfg.dedupe.report).with_name(f".{Path(cfg.dedupe.report).name}.tmp")
                report_f = open(report_tmp, "wb")
        counts: Counter[str] = Counter()
        seconds: Counter[str] = Counter()
        kinds = np.zeros(len(KIND_NAMES), np.int64)
        target_tokens = 0
        text_chars = 0
        line_offset = [0] * len(files)  # lines consumed so far per file, for byte-range tasks

        t_tasks = time.perf_counter()
        done = {t.index for t in tasks if load_result(t, work, ids_dt.itemsize) is not None}
        if done:
            notes.append(f"resumed an interrupted run: {len(done)} of {len(tasks)} tasks were already done")

        def load(task: Task) -> TaskResult:
            r = load_result(task, work, ids_dt.itemsize)
            if r is None:
                raise RuntimeError(f"the saved result of task {task.index} ({task.path}) is missing "
                                   f"or inconsistent in {work}; was the folder changed during the run?")
            return r

        if runs_inline(cfg, workers, len(tasks) - len(done)):
            # tasks run here and call parallel numba kernels (MinHash signatures); numba's
            # workqueue threading layer aborts on parallel launches from two threads at once
            _warm_kernels(cfg, ids_dt, seg_dt)
        else:
            warm = threading.Thread(target=_warm_kernels, args=(cfg, ids_dt, seg_dt),
                                    name="fastprep-warm-kernels", daemon=True)
            warm.start()
        results = task_results(tasks, cfg, work, workers, done, load)
        while True:
            try:
                res = next(results)
            except StopIteration:
                break
            except TaskStrictError as e:
                t = tasks[e.task]
                raise quarantine.strict_error(t.file, line_offset[t.file] + e.line, e.reason, e.detail) from None
            f = res.task.file
            off = line_offset[f]
            line_offset[f] += res.n_lines
            for line, reason, detail, excerpt in res.bad:
                quarantine.add(f, off + line, reason, detail, excerpt)
            counts.update(res.counts)
            for k, v in res.seconds.items():
                seconds[k] += v
            keep = np.ones(len(res.lengths), dtype=np.bool_)
            if exact is not None and res.digests is not None:
                keep &= exact.insert(res.digests)
                counts["exact_duplicates"] += int(len(keep) - keep.sum())
            if minhash is not None and res.signatures is not None and keep.any():
                idx = np.flatnonzero(keep)
                doc_ids = (np.int64(f) << np.int64(40)) | (off + res.lines[idx])
                sets = (take_sets((res.set_values, res.set_offsets), idx)
                        if res.set_values is not None and res.set_offsets is not None else None)
                if near_shuffle is not None:  # decided after the last task, by the shuffle
                    near_shuffle.add(res, idx, doc_ids, sets, spill.docs)
                else:
                    mh = minhash.add(res.signatures[idx], doc_ids, sets)
                    keep[idx] = mh.keep
                    counts["near_duplicates"] += int(len(idx) - mh.keep.sum())
                    if report_f is not None:
                        _report(report_f, files, doc_ids, mh)
            kinds += np.bincount(res.kinds[keep], minlength=len(KIND_NAMES))
            target_tokens += int(res.targets[keep].sum())
            text_chars += res.text_chars
            spill.append_task(res, keep)
            progress.update(counts["records_read"], text_chars, spill.tokens)
        seconds["tasks_wall"] = time.perf_counter() - t_tasks
        if near_shuffle is not None:
            t = time.perf_counter()
            removed = near_shuffle.resolve(report_f, files)
            spill.drop(removed.positions)
            counts["near_duplicates"] += len(removed.positions)
            kinds -= np.bincount(removed.kinds, minlength=len(KIND_NAMES))
            target_tokens -= int(removed.targets.sum())
            seconds["minhash_shuffle"] = time.perf_counter() - t
        dedupe_out: dict[str, Any] = {"exact": cfg.dedupe.exact,
                                      "exact_index_bytes": exact.nbytes if exact else 0}
        # how near duplicates were found depends on the method, what was found does not: the
        # manifest holds the parameters, the run's stats the method's costs
        near_out: dict[str, Any] = {}
        if minhash is not None:
            dedupe_out["minhash"] = minhash.params()
            if near_shuffle is not None:
                near_out = near_shuffle.stats
            else:
                near_out = {"method": "stream", "index_bytes": minhash.nbytes,
                            "bytes_per_doc": round(minhash.bytes_per_doc, 1),
                            "sets_file_bytes": minhash.sets_file_bytes}
        # The indexes are done with: their per-document memory (exact: ~47 B, MinHash stream:
        # ~0.8 KB per kept document) must not add to the plan's in the packing phase.
        exact = minhash = near_shuffle = None

        # ---- pack -------------------------------------------------------------------------
        progress.message("packing")
        t = time.perf_counter()
        if warm is not None:
            warm.join()  # normally long done; never leave it compiling when the run ends
        lengths, planned, has_mask = spill.finish()
        doc_offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=doc_offsets[1:])
        del lengths
        packing = plan(planned, cfg.pack)  # removed duplicates have length 0: no piece
        del planned
        seconds["pack"] = time.perf_counter() - t

        # ---- write ------------------------------------------------------------------------
        progress.message("writing shards")
        t = time.perf_counter()
        dtypes = {"input_ids": ids_dt, "segment_ids": seg_dt}
        if has_mask:
            dtypes["loss_mask"] = np.dtype(np.uint8)
        shard_rows = cfg.shard_rows or max(1, (256 << 20) // (L * ids_dt.itemsize))
        writer = ShardWriter(out, L, dtypes, shard_rows)
        # ~4M tokens per block (2,048 rows at L = 2048), at most one shard
        for rows in _row_blocks(packing, doc_offsets, spill.ids_path,
                                spill.mask_path if has_mask else None,
                                max(1, min(shard_rows, (4 << 20) // L)), bundle.pad_id, ids_dt, seg_dt):
            writer.add(rows)
        atomic_write_bytes(out / "tokenizer.json", bundle.json_bytes)
        quarantine.close()
        if report_f is not None:
            report_f.close()
            os.replace(report_tmp, cfg.dedupe.report)
            report_f = None

        dropped = dict(sorted(quarantine.counts.items()))
        kept_docs = int(kinds.sum())
        count_out: dict[str, Any] = {
            "records_read": counts["records_read"],
            "records_kept": kept_docs,
            "dropped": dropped,
            "dropped_total": sum(dropped.values()),
            "exact_duplicates": counts["exact_duplicates"],
            "near_duplicates": counts["near_duplicates"],
            "blank_lines": counts["blank_lines"],
            "repaired": {k[len("repaired_"):]: v for k, v in sorted(counts.items()) if k.startswith("repaired_")},
            "documents_by_shape": {n: int(k) for n, k in zip(KIND_NAMES, kinds) if k},
            "documents_split": packing.docs_split,
            "documents_truncated": packing.docs_truncated,
            "tokens": packing.tokens_in,
            "tokens_kept": packing.tokens_kept,
            "tokens_dropped": packing.tokens_dropped,
            "target_tokens": target_tokens,
            "rows": packing.n_rows,
            "padding_tokens": packing.n_rows * L - packing.tokens_kept,
            "text_chars": text_chars,
        }
        pack_out = {"mode": cfg.pack.mode, "long_policy": cfg.pack.long_policy, "seq_len": L,
                    "efficiency": round(packing.efficiency, 6),
                    "dropped_token_share": round(packing.tokens_dropped / max(packing.tokens_in, 1), 6)}
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
        seconds["workers"] = workers
        progress.close()
        stats = PrepareStats(out=str(out), counts=count_out, packing=pack_out,
                             seconds={k: round(v, 3) for k, v in seconds.items()}, manifest=manifest,
                             notes=notes, near_dedupe=near_out)
        shutil.rmtree(work, ignore_errors=True)
        return stats
    except BaseException as e:
        if warm is not None:
            warm.join()  # a daemon thread inside numba must not meet the interpreter's exit
        progress.close()
        quarantine.abort()
        spill.close()
        if writer is not None:
            writer.abort()
        if report_f is not None:
            report_f.close()
        if isinstance(e, ValueError):
            # The input or configuration must change before a rerun: nothing worth resuming.
            shutil.rmtree(work, ignore_errors=True)
        # Otherwise (disk full, interrupt, crash) finished tasks stay in the work folder and the
        # next run with the same configuration and inputs resumes from them.
        raise
