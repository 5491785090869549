"""Work units and the per-task stage function: read -> map -> clean -> hash -> tokenize -> spill.

A task is a whole input file or, for large uncompressed JSON Lines files, a byte range of one
(split at line boundaries by the reader), with a deterministic index in input order. Tasks are
the unit of parallelism: ``fastprep prepare --workers N`` runs :func:`run_task` in N spawned
processes, each with a tokenizer thread pool of ``cores / N`` threads (one shared Rust pool
stops scaling past a few cores: measured ~1.45 of 2 cores here for ``encode_batch_fast``). The
parent merges results strictly in task order, so the output does not depend on N.

A task writes its token ids (and loss mask) to ``<work>/task-<index>.*.bin`` and returns only
small per-document arrays: lengths, 128-bit digests for exact deduplication, optional MinHash
signatures, kinds, line numbers and target-token counts (~40 bytes per document, plus 8 bytes per
MinHash permutation). Duplicates are decided by the parent in input order and masked out of
packing; their tokens were computed in vain, a cost bounded by the duplicate rate.
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from .quarantine import excerpt
from .read import Raw, file_kind, read_file, read_jsonl

if TYPE_CHECKING:
    from .prepare import PrepareConfig


@dataclass(frozen=True)
class Task:
    index: int
    file: int            # index into the sorted input file list
    path: str
    start: int = 0       # byte range of an uncompressed JSONL file; (0, None) = whole file
    end: int | None = None
    size: int = 0        # bytes, for largest-first scheduling and progress


def plan_tasks(files: list[str], target_bytes: int) -> list[Task]:
    """Whole files, with uncompressed JSON Lines files larger than 2 x target cut into ranges."""
    tasks: list[Task] = []
    for i, path in enumerate(files):
        size = os.path.getsize(path)
        low = path.lower()
        splittable = file_kind(path) == "jsonl" and not low.endswith((".gz", ".zst", ".zstd"))
        if splittable and size > 2 * target_bytes:
            n = -(-size // target_bytes)
            bounds = [size * k // n for k in range(n + 1)]
            for a, b in zip(bounds[:-1], bounds[1:]):
                tasks.append(Task(len(tasks), i, path, a, b, b - a))
        else:
            tasks.append(Task(len(tasks), i, path, 0, None, size))
    return tasks


class TaskStrictError(ValueError):
    """A bad record under --strict inside a task; the parent rewrites its line number globally."""

    def __init__(self, task: int, line: int, reason: str, detail: str) -> None:
        super().__init__(task, line, reason, detail)
        self.task, self.line, self.reason, self.detail = task, line, reason, detail


@dataclass
class TaskResult:
    task: Task
    n_lines: int                          # raw records (lines/rows) consumed, for global line numbers
    bad: list[tuple[int, str, str, Any]]  # (local line, reason, detail, excerpt)
    counts: Counter[str]
    lengths: np.ndarray                   # int64 [docs]
    lines: np.ndarray                     # int64 [docs], local line numbers
    kinds: np.ndarray                     # uint8 [docs]
    targets: np.ndarray                   # int64 [docs], target tokens per document
    digests: np.ndarray | None            # uint64 [docs, 2]
    signatures: np.ndarray | None         # MinHash signatures [docs, num_perm]
    set_values: np.ndarray | None         # uint32 shingle sets MinHash compares (verify="exact")
    set_offsets: np.ndarray | None        # int64 [docs + 1] into set_values
    ids_path: str
    mask_path: str | None                 # None when every document is plain text
    text_chars: int = 0
    seconds: dict[str, float] = field(default_factory=dict)


_STATE: dict[str, Any] = {}


def init_worker(threads: int, parent: int | None = None) -> None:
    """Process-pool initializer: size the Rust pool before tokenizers is first used here, and exit
    when the parent dies (a pool worker blocked on its queue would otherwise outlive a parent
    killed with SIGKILL, holding its task files and the terminal's pipes).

    ``parent`` is the pid of the process that started the pool. It must come from there: a
    parent killed while this worker was still starting (interpreter, imports: ~1 s) has already
    been replaced by the reaper by the time this runs, and a watch that took ``os.getppid()``
    here would wait for a change that never comes (the kill test found such orphans)."""
    import threading
    import time

    if parent is None:
        parent = os.getppid()
    if os.getppid() != parent:
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(0.5)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="fastprep-parent-watch", daemon=True).start()
    # numba's first compile or cache load in a process checks for a BLAS by importing
    # scipy.linalg: 0.3-0.4 s per worker where scipy is installed, ~20% of MinHash's fixed cost.
    # fastprep's kernels use no BLAS and this process runs only fastprep's tasks, so the import
    # is refused here (numba then records "no BLAS" and compiles everything else as before).
    sys.modules.setdefault("scipy.linalg", None)  # type: ignore[arg-type]
    if threads > 0:
        os.environ["RAYON_NUM_THREADS"] = str(threads)
        os.environ["NUMBA_NUM_THREADS"] = str(threads)  # MinHash signature kernels
    os.environ["TOKENIZERS_PARALLELISM"] = "true"


def _stages(cfg: PrepareConfig) -> dict[str, Any]:
    """Per-process stage objects, built once per configuration (tokenizer load, template compile)."""
    key = repr(cfg)
    if _STATE.get("key") != key:
        from .clean import Cleaner
        from .records import RecordMapper
        from .tokenize import Encoder, TokenizerBundle

        bundle = TokenizerBundle(cfg.tokenize)
        _STATE.clear()
        _STATE.update(key=key, mapper=RecordMapper(cfg.records), cleaner=Cleaner(cfg.clean),
                      encoder=Encoder(bundle), dtype=np.dtype(_ids_dtype(bundle.vocab_size)))
    return _STATE


def _ids_dtype(vocab: int) -> np.dtype:
    from .format import ids_dtype

    return ids_dtype(vocab)


def _raws(task: Task, cfg: PrepareConfig):
    if task.end is not None:
        return read_jsonl(task.path, task.file, cfg.read, task.start, task.end)
    return read_file(task.path, task.file, cfg.read)


def run_task(task: Task, cfg: PrepareConfig, work: str) -> TaskResult:
    """Process one task; safe to call in a worker process or inline."""
    import time

    from .dedupe import ExactDeduper
    from .records import RecordError, dedupe_key, similarity_text

    st = _stages(cfg)
    mapper, cleaner, encoder, dtype = st["mapper"], st["cleaner"], st["encoder"], st["dtype"]
    minhash_cfg = cfg.dedupe.minhash
    if minhash_cfg is not None:
        from .minhash import concat_sets, signatures_and_sets, take_sets
    ids_path, mask_path = _task_file(work, task, "ids.bin"), _task_file(work, task, "loss_mask.bin")
    # Private temporary names: an orphaned worker of a killed run may still be finishing the same
    # task; each writer renames complete files into place, and both write identical bytes.
    tag = f".{os.getpid()}.tmp"
    ids_tmp, mask_tmp = Path(f"{ids_path}{tag}"), Path(f"{mask_path}{tag}")
    bad: list[tuple[int, str, str, Any]] = []
    counts: Counter[str] = Counter()
    lengths: list[np.ndarray] = []
    lines: list[int] = []
    kinds: list[int] = []
    targets: list[np.ndarray] = []
    digests: list[np.ndarray] = []
    sigs: list[np.ndarray] = []
    seen: set[bytes] = set()  # digests of this task's documents (16 bytes + ~60 of set overhead)
    sets: list[tuple[np.ndarray, np.ndarray]] = []  # per batch, only for verify="exact"
    n_lines = 0
    text_chars = 0
    tokens_written = 0
    mask_f = None
    seconds: Counter[str] = Counter()

    def flush(docs: list) -> None:
        nonlocal tokens_written, mask_f
        if cfg.dedupe.exact:
            d = ExactDeduper.digests([dedupe_key(doc) for doc in docs])
            # Copies inside this task are dropped before tokenizing (tokenizing them would be
            # wasted work); the parent still removes copies across tasks, so the kept set is
            # the same first occurrences whatever the task boundaries.
            first = np.ones(len(docs), dtype=np.bool_)
            for i, key in enumerate(map(bytes, d)):
                if key in seen:
                    first[i] = False
                else:
                    seen.add(key)
            if not first.all():
                counts["exact_duplicates"] += int(len(docs) - first.sum())
                docs = [doc for doc, k in zip(docs, first) if k]
                d = d[first]
            digests.append(d)
            if not docs:
                return
        if minhash_cfg is not None:
            t = time.perf_counter()
            sig, batch_sets = signatures_and_sets([similarity_text(d) for d in docs], minhash_cfg)
            sigs.append(sig)
            if batch_sets is not None:
                sets.append(batch_sets)
            seconds["minhash_signatures"] += time.perf_counter() - t
        t = time.perf_counter()
        enc = encoder(docs)
        seconds["tokenize"] += time.perf_counter() - t
        if not enc.keep.all():
            for i, reason, detail in enc.errors:
                _bad(docs[i].line, reason, detail, "")
            keep = enc.keep
            if digests and cfg.dedupe.exact:
                digests[-1] = digests[-1][keep]
            if sigs:
                sigs[-1] = sigs[-1][keep]
            if sets:
                sets[-1] = take_sets(sets[-1], np.flatnonzero(keep))
            docs = [d for d, k in zip(docs, keep) if k]
        ids_f.write(enc.ids.astype(dtype, copy=False).tobytes())
        if enc.loss_mask is not None and mask_f is None:
            mask_f = open(mask_tmp, "wb")
            _write_ones(mask_f, tokens_written)
        if mask_f is not None:
            mask = enc.loss_mask if enc.loss_mask is not None else np.ones(len(enc.ids), np.uint8)
            mask_f.write(mask.tobytes())
            bounds = np.concatenate([[0], np.cumsum(enc.lengths)[:-1]]).astype(np.int64)
            targets.append(np.add.reduceat(mask.astype(np.int64), bounds) if len(mask) else
                           np.zeros(len(enc.lengths), np.int64))
        else:
            targets.append(enc.lengths.copy())
        tokens_written += len(enc.ids)
        lengths.append(enc.lengths)
        lines.extend(d.line for d in docs)
        kinds.extend(d.kind for d in docs)

    def _bad(line: int, reason: str, detail: str, excerpt: Any) -> None:
        if cfg.strict:
            raise TaskStrictError(task.index, line, reason, detail)
        bad.append((line, reason, detail, excerpt))

    batch: list = []
    size = 0
    with open(ids_tmp, "wb") as ids_f:
        try:
            t_read = time.perf_counter()
            raw: Raw
            for raw in _raws(task, cfg):
                n_lines += 1
                if raw.bad is not None:
                    if raw.bad.reason == "blank_line":
                        counts["blank_lines"] += 1
                    else:
                        counts["records_read"] += 1
                        _bad(raw.line, raw.bad.reason, raw.bad.detail, raw.bad.excerpt)
                    continue
                counts["records_read"] += 1
                if raw.repaired:
                    counts[f"repaired_{raw.repaired}"] += 1
                try:
                    doc = mapper(raw.value, raw.file, raw.line)
                    if cleaner(doc):
                        counts["repaired_cleaning"] += 1
                except RecordError as e:
                    _bad(raw.line, e.reason, e.detail, excerpt(raw.value))
                    continue
                n = _doc_chars(doc)
                text_chars += n
                size += n
                batch.append(doc)
                if size >= cfg.batch_bytes:
                    flush(batch)
                    batch, size = [], 0
            if batch:
                flush(batch)
            seconds["task"] = time.perf_counter() - t_read
            for f in (ids_f, mask_f):
                if f is not None:
                    f.flush()
                    os.fsync(f.fileno())
        finally:
            if mask_f is not None:
                mask_f.close()
    os.replace(ids_tmp, ids_path)
    if mask_f is not None:
        os.replace(mask_tmp, mask_path)
    res = TaskResult(
        task=task, n_lines=n_lines, bad=[(ln, r, d, excerpt(e)) for ln, r, d, e in bad],
        counts=counts,
        lengths=np.concatenate(lengths) if lengths else np.zeros(0, np.int64),
        lines=np.asarray(lines, dtype=np.int64), kinds=np.asarray(kinds, dtype=np.uint8),
        targets=np.concatenate(targets) if targets else np.zeros(0, np.int64),
        digests=(np.concatenate(digests) if digests else np.zeros((0, 2), np.uint64)) if cfg.dedupe.exact else None,
        signatures=(np.concatenate(sigs) if sigs else None) if minhash_cfg is not None else None,
        **_set_fields(concat_sets(sets) if minhash_cfg is not None and minhash_cfg.verify == "exact"
                      else None),
        ids_path=str(ids_path), mask_path=str(mask_path) if mask_f is not None else None,
        text_chars=text_chars, seconds=dict(seconds))
    save_result(res, work)
    return res


# ---- persistence: a finished task survives a crash of the run ------------------------------

def _task_file(work: str | Path, task: Task, suffix: str) -> Path:
    return Path(work) / f"task-{task.index:06d}.{suffix}"


_ARRAYS = ("lengths", "lines", "kinds", "targets", "digests", "signatures", "set_values",
           "set_offsets")


def _set_fields(sets: tuple[np.ndarray, np.ndarray] | None) -> dict[str, np.ndarray | None]:
    return {"set_values": None if sets is None else sets[0],
            "set_offsets": None if sets is None else sets[1]}


def save_result(res: TaskResult, work: str | Path) -> None:
    """Arrays to ``.npz`` (no pickle), the rest to ``.json``, each renamed into place; the JSON is
    written last, so its presence means the task's files are complete."""
    tag = f".{os.getpid()}.tmp"
    npz = _task_file(work, res.task, "meta.npz")
    with open(f"{npz}{tag}", "wb") as f:
        np.savez(f, **{k: getattr(res, k) for k in _ARRAYS if getattr(res, k) is not None})
        f.flush()
        os.fsync(f.fileno())
    os.replace(f"{npz}{tag}", npz)
    meta = {"n_lines": res.n_lines, "bad": res.bad, "counts": dict(res.counts),
            "has_mask": res.mask_path is not None,
            "text_chars": res.text_chars, "seconds": res.seconds,
            "task": [res.task.file, res.task.start, res.task.end]}
    done = _task_file(work, res.task, "json")
    with open(f"{done}{tag}", "wb") as f:
        f.write(orjson.dumps(meta))
        f.flush()
        os.fsync(f.fileno())
    os.replace(f"{done}{tag}", done)


def load_result(task: Task, work: str | Path, itemsize: int) -> TaskResult | None:
    """The saved result of ``task``, or None when absent or inconsistent (then it is rerun)."""
    done = _task_file(work, task, "json")
    try:
        meta = orjson.loads(done.read_bytes())
        if meta["task"] != [task.file, task.start, task.end]:
            return None
        with np.load(_task_file(work, task, "meta.npz"), allow_pickle=False) as z:
            arrays = {k: z[k] if k in z.files else None for k in _ARRAYS}
        ids_path = _task_file(work, task, "ids.bin")
        mask_path = _task_file(work, task, "loss_mask.bin") if meta["has_mask"] else None
        n_tokens = int(arrays["lengths"].sum())
        if ids_path.stat().st_size != n_tokens * itemsize:
            return None
        if mask_path is not None and mask_path.stat().st_size != n_tokens:
            return None
    except (OSError, ValueError, KeyError, orjson.JSONDecodeError):
        return None
    return TaskResult(task=task, n_lines=meta["n_lines"], bad=[tuple(b) for b in meta["bad"]],
                      counts=Counter(meta["counts"]), lengths=arrays["lengths"], lines=arrays["lines"],
                      kinds=arrays["kinds"], targets=arrays["targets"], digests=arrays["digests"],
                      signatures=arrays["signatures"], set_values=arrays["set_values"],
                      set_offsets=arrays["set_offsets"],
                      ids_path=str(ids_path), mask_path=str(mask_path) if mask_path else None,
                      text_chars=meta["text_chars"], seconds=meta["seconds"])


def _write_ones(f: Any, n: int) -> None:
    while n:
        k = min(n, 1 << 24)
        f.write(np.ones(k, np.uint8).tobytes())
        n -= k


def _doc_chars(doc: Any) -> int:
    if doc.kind == 0:
        return len(doc.text)
    if doc.kind == 1:
        return len(doc.prompt) + len(doc.completion)
    return sum(len(c) for _, c in doc.messages)
